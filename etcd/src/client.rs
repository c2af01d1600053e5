//! An mTLS etcd v3 client for what capstan does with etcd: membership changes, per-member status
//! and health, and small reads/writes.
//!
//! Wraps the `etcd-client` crate; none of its types appear in this module's public API, so the
//! rest of capstan (and the CLI's JSON output) depends only on the plain structs below.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, MemberAddOptions, TlsOptions};
use serde::Serialize;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("invalid etcd endpoint `{endpoint}`: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("no etcd endpoints given")]
    NoEndpoints,
    #[error("connecting to etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        #[source]
        source: BoxError,
    },
    #[error("etcd {operation} via {target}: {source}")]
    Rpc {
        operation: &'static str,
        target: String,
        #[source]
        source: BoxError,
    },
    #[error("etcd {operation} via {target} timed out after {after:?}")]
    Timeout {
        operation: &'static str,
        target: String,
        after: Duration,
    },
    #[error("etcd {operation} via {target}: unexpected response: {detail}")]
    UnexpectedResponse {
        operation: &'static str,
        target: String,
        detail: String,
    },
}

/// A client URL of one member, `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EtcdEndpoint(String);

impl EtcdEndpoint {
    /// Parse `https://host:port`. capstan only talks to etcd over TLS, so `http://` is refused.
    pub fn parse(url: &str) -> Result<Self, EtcdError> {
        let invalid = |reason: &str| EtcdError::InvalidEndpoint {
            endpoint: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| invalid("must start with https://"))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| invalid("missing :port"))?;
        if host.is_empty() || rest.contains('/') {
            return Err(invalid("expected https://host:port"));
        }
        match port.parse::<u16>() {
            Ok(p) if p != 0 => Ok(EtcdEndpoint(format!("https://{host}:{port}"))),
            _ => Err(invalid("port must be 1-65535")),
        }
    }

    /// `https://host:port`, bracketing IPv6 addresses.
    pub fn https(host: &str, port: u16) -> Self {
        match host.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => EtcdEndpoint(format!("https://[{ip}]:{port}")),
            Err(_) => EtcdEndpoint(format!("https://{host}:{port}")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EtcdEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The CA that signed the members' server certificates, and the client identity presented to
/// them. `Debug` never prints the key.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_cert_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("client_key_pem", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
    /// Health probes are short: a member that cannot serve a linearizable read this quickly is
    /// reported unhealthy rather than holding up `capstan status`.
    pub health: Duration,
    /// How long membership changes are retried while etcd answers "unhealthy cluster".
    pub reconfig_settle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(10),
            health: Duration::from_secs(3),
            reconfig_settle: Duration::from_secs(20),
        }
    }
}

/// A cluster member as etcd lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// etcd's member id (hex in etcdctl output).
    #[serde(serialize_with = "serialize_hex_id")]
    pub id: u64,
    /// Empty for a member that was added but has not started yet.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

fn serialize_hex_id<S: serde::Serializer>(id: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{id:x}"))
}

impl From<&etcd_client::Member> for Member {
    fn from(member: &etcd_client::Member) -> Self {
        Member {
            id: member.id(),
            name: member.name().to_string(),
            peer_urls: member.peer_urls().to_vec(),
            client_urls: member.client_urls().to_vec(),
            is_learner: member.is_learner(),
        }
    }
}

/// The result of `member add`: the new member's id and the `initial-cluster` value its config
/// must use (with `initial-cluster-state: existing`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberAdded {
    #[serde(serialize_with = "serialize_hex_id")]
    pub id: u64,
    pub initial_cluster: String,
    pub members: Vec<Member>,
}

/// One member's view of itself, from the maintenance Status RPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub endpoint: EtcdEndpoint,
    #[serde(serialize_with = "serialize_hex_id")]
    pub id: u64,
    pub name: String,
    pub version: String,
    pub db_size: i64,
    pub leader: bool,
    pub raft_index: u64,
    pub raft_term: u64,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointHealth {
    pub endpoint: EtcdEndpoint,
    pub healthy: bool,
    pub took_ms: u64,
    pub error: Option<String>,
}

/// One endpoint's row in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointReport {
    pub endpoint: EtcdEndpoint,
    pub health: EndpointHealth,
    pub status: Option<MemberStatus>,
    pub status_error: Option<String>,
}

/// Everything `capstan status` shows about etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub members: Vec<Member>,
    pub endpoints: Vec<EndpointReport>,
    /// Member ids that claim leadership; exactly one in a healthy cluster.
    #[serde(serialize_with = "serialize_hex_ids")]
    pub leaders: Vec<u64>,
    /// Every endpoint healthy and exactly one leader.
    pub healthy: bool,
}

impl ClusterStatus {
    /// `endpoint (error)` for every endpoint that failed its health check.
    pub fn unhealthy(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .filter(|e| !e.health.healthy)
            .map(|e| format!("{} ({})", e.endpoint, e.health.error.clone().unwrap_or_default()))
            .collect()
    }
}

/// Runs `probe` every `interval` until it returns `Ok` or `timeout` has passed since the start;
/// then the error is the last probe's reason.
pub async fn poll_until<T, F, Fut>(timeout: Duration, interval: Duration, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(reason) if Instant::now() >= deadline => return Err(reason),
            Err(_) => tokio::time::sleep(interval).await,
        }
    }
}

fn serialize_hex_ids<S: serde::Serializer>(ids: &[u64], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(ids.iter().map(|id| format!("{id:x}")))
}

/// The key read by health probes. It need not exist: a linearizable read of a missing key still
/// goes through raft consensus, which is what "healthy" means.
const HEALTH_PROBE_KEY: &[u8] = b"health";

/// A connection to an etcd cluster over mTLS.
#[derive(Clone)]
pub struct EtcdClient {
    endpoints: Vec<EtcdEndpoint>,
    tls: EtcdTls,
    timeouts: Timeouts,
    inner: Client,
}

impl fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoints", &self.endpoints)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl EtcdClient {
    /// Connect to the cluster through `endpoints` (requests are balanced across them).
    pub async fn connect(endpoints: &[EtcdEndpoint], tls: &EtcdTls) -> Result<Self, EtcdError> {
        Self::connect_with(endpoints, tls, Timeouts::default()).await
    }

    pub async fn connect_with(
        endpoints: &[EtcdEndpoint],
        tls: &EtcdTls,
        timeouts: Timeouts,
    ) -> Result<Self, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let inner = open(endpoints, tls, timeouts).await?;
        Ok(EtcdClient {
            endpoints: endpoints.to_vec(),
            tls: tls.clone(),
            timeouts,
            inner,
        })
    }

    pub fn endpoints(&self) -> &[EtcdEndpoint] {
        &self.endpoints
    }

    /// The underlying client, for this crate's other etcd users (the cluster lock).
    pub(crate) fn raw(&self) -> Client {
        self.inner.clone()
    }

    fn target(&self) -> String {
        join_endpoints(&self.endpoints)
    }

    /// A client pinned to one member, for per-member questions (status, health).
    async fn pinned(&self, endpoint: &EtcdEndpoint, timeouts: Timeouts) -> Result<Client, EtcdError> {
        open(std::slice::from_ref(endpoint), &self.tls, timeouts).await
    }

    pub async fn member_list(&self) -> Result<Vec<Member>, EtcdError> {
        let mut client = self.inner.clone();
        let response = call(
            "member list",
            self.target(),
            self.timeouts.request,
            client.member_list(),
        )
        .await?;
        Ok(response.members().iter().map(Member::from).collect())
    }

    /// Add a voting member named `name` with `peer_urls`. The member must then be started with
    /// `initial-cluster-state: existing` and the returned `initial_cluster`.
    pub async fn member_add(&self, name: &str, peer_urls: &[String]) -> Result<MemberAdded, EtcdError> {
        let operation = "member add";
        let response = self
            .reconfigure(operation, |mut client| async move {
                client.member_add(peer_urls, Some(MemberAddOptions::new())).await
            })
            .await?;
        let added = response.member().ok_or_else(|| EtcdError::UnexpectedResponse {
            operation,
            target: self.target(),
            detail: "no member in the response".to_string(),
        })?;
        let id = added.id();
        let members: Vec<Member> = response.member_list().iter().map(Member::from).collect();
        // Members that have not started yet (including the one just added) have no name yet.
        let initial_cluster = members
            .iter()
            .flat_map(|member| {
                let member_name = if member.id == id { name } else { member.name.as_str() };
                member.peer_urls.iter().map(move |url| format!("{member_name}={url}"))
            })
            .collect::<Vec<_>>()
            .join(",");
        Ok(MemberAdded {
            id,
            initial_cluster,
            members,
        })
    }

    /// Remove member `id`; returns the remaining members.
    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>, EtcdError> {
        let response = self
            .reconfigure(
                "member remove",
                |mut client| async move { client.member_remove(id).await },
            )
            .await?;
        Ok(response.members().iter().map(Member::from).collect())
    }

    /// Run a membership change. With strict reconfiguration checks, etcd refuses membership
    /// changes until every member has been connected for a few seconds ("unhealthy cluster"); a
    /// freshly started or just-changed cluster hits this, so that answer (and only that one) is
    /// retried for up to [`Timeouts::reconfig_settle`].
    async fn reconfigure<T, F, Fut>(&self, operation: &'static str, request: F) -> Result<T, EtcdError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.timeouts.reconfig_settle;
        loop {
            match tokio::time::timeout(self.timeouts.request, request(self.inner.clone())).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(source)) if is_unhealthy_cluster(&source) && Instant::now() < deadline => {
                    tracing::debug!(
                        operation,
                        "etcd refused the membership change while the cluster settles; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(Err(source)) => {
                    return Err(EtcdError::Rpc {
                        operation,
                        target: self.target(),
                        source: Box::new(source),
                    })
                }
                Err(_) => {
                    return Err(EtcdError::Timeout {
                        operation,
                        target: self.target(),
                        after: self.timeouts.request,
                    })
                }
            }
        }
    }

    /// The Status RPC answered by the member at `endpoint`.
    pub async fn status(&self, endpoint: &EtcdEndpoint) -> Result<MemberStatus, EtcdError> {
        let mut client = self.pinned(endpoint, self.timeouts).await?;
        let target = endpoint.to_string();
        let status = call("status", target.clone(), self.timeouts.request, client.status()).await?;
        let id = status
            .header()
            .map(|header| header.member_id())
            .ok_or_else(|| EtcdError::UnexpectedResponse {
                operation: "status",
                target: target.clone(),
                detail: "no response header".to_string(),
            })?;
        let members = call("member list", target, self.timeouts.request, client.member_list()).await?;
        let name = members
            .members()
            .iter()
            .find(|m| m.id() == id)
            .map(|m| m.name().to_string())
            .unwrap_or_default();
        Ok(MemberStatus {
            endpoint: endpoint.clone(),
            id,
            name,
            version: status.version().to_string(),
            db_size: status.db_size(),
            leader: status.leader() == id,
            raft_index: status.raft_index(),
            raft_term: status.raft_term(),
            errors: status.errors().to_vec(),
        })
    }

    /// A linearizable read through `endpoint`, bounded by the health timeout. Never fails: an
    /// unreachable or quorum-less member is reported as unhealthy with the reason.
    pub async fn health(&self, endpoint: &EtcdEndpoint) -> EndpointHealth {
        let started = Instant::now();
        let timeouts = Timeouts {
            request: self.timeouts.health,
            ..self.timeouts
        };
        let result = async {
            let mut client = self.pinned(endpoint, timeouts).await?;
            call(
                "health probe",
                endpoint.to_string(),
                timeouts.health,
                client.get(HEALTH_PROBE_KEY, None),
            )
            .await
        }
        .await;
        EndpointHealth {
            endpoint: endpoint.clone(),
            healthy: result.is_ok(),
            took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            error: result.err().map(|e| error_chain(&e)),
        }
    }

    /// Members, plus health and status of every endpoint this client was given, queried
    /// concurrently.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, EtcdError> {
        let members = self.member_list().await?;
        let reports = futures::future::join_all(self.endpoints.iter().map(|endpoint| async move {
            let (health, status) = futures::join!(self.health(endpoint), self.status(endpoint));
            let (status, status_error) = match status {
                Ok(status) => (Some(status), None),
                Err(e) => (None, Some(error_chain(&e))),
            };
            EndpointReport {
                endpoint: endpoint.clone(),
                health,
                status,
                status_error,
            }
        }))
        .await;
        let mut leaders: Vec<u64> = reports
            .iter()
            .filter_map(|r| r.status.as_ref())
            .filter(|s| s.leader)
            .map(|s| s.id)
            .collect();
        leaders.sort_unstable();
        leaders.dedup();
        let healthy = leaders.len() == 1 && reports.iter().all(|r| r.health.healthy);
        Ok(ClusterStatus {
            members,
            endpoints: reports,
            leaders,
            healthy,
        })
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> Result<(), EtcdError> {
        let mut client = self.inner.clone();
        call(
            "put",
            self.target(),
            self.timeouts.request,
            client.put(key, value, None),
        )
        .await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, EtcdError> {
        let mut client = self.inner.clone();
        let response = call("get", self.target(), self.timeouts.request, client.get(key, None)).await?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Every key under `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<StoredValue>, EtcdError> {
        let mut client = self.inner.clone();
        let options = etcd_client::GetOptions::new().with_prefix();
        let response = call(
            "get",
            self.target(),
            self.timeouts.request,
            client.get(prefix, Some(options)),
        )
        .await?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| StoredValue {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision(),
            })
            .collect())
    }
}

/// A key, its value and the revision that last changed it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredValue {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

impl fmt::Debug for StoredValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be secrets (or ciphertext): only their size.
        f.debug_struct("StoredValue")
            .field("key", &self.key)
            .field("size", &self.value.len())
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

async fn open(endpoints: &[EtcdEndpoint], tls: &EtcdTls, timeouts: Timeouts) -> Result<Client, EtcdError> {
    let tls_options = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_cert_pem))
        .identity(Identity::from_pem(&tls.client_cert_pem, &tls.client_key_pem));
    let options = ConnectOptions::new()
        .with_tls(tls_options)
        .with_connect_timeout(timeouts.connect)
        .with_timeout(timeouts.request);
    let reachable = accepting(endpoints, timeouts.connect).await;
    let urls: Vec<&str> = reachable.iter().map(EtcdEndpoint::as_str).collect();
    Client::connect(urls, Some(options))
        .await
        .map_err(|source| EtcdError::Connect {
            endpoints: join_endpoints(endpoints),
            source: Box::new(source),
        })
}

/// The endpoints that accept a TCP connection within `limit` (all of them when none does, so the
/// error names them). The client balances requests over its endpoints without retrying on
/// another one, so a stopped member would otherwise fail a share of every run's requests.
async fn accepting(endpoints: &[EtcdEndpoint], limit: Duration) -> Vec<EtcdEndpoint> {
    if endpoints.len() < 2 {
        return endpoints.to_vec();
    }
    let checks = endpoints.iter().map(|endpoint| async move {
        let address = endpoint
            .as_str()
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, rest)| rest);
        let address = address.trim_end_matches('/');
        let open = tokio::time::timeout(limit, tokio::net::TcpStream::connect(address)).await;
        matches!(open, Ok(Ok(_)))
    });
    let open = futures::future::join_all(checks).await;
    let reachable: Vec<EtcdEndpoint> = endpoints
        .iter()
        .zip(open)
        .filter(|(_, open)| *open)
        .map(|(endpoint, _)| endpoint.clone())
        .collect();
    if reachable.is_empty() {
        endpoints.to_vec()
    } else {
        reachable
    }
}

async fn call<T>(
    operation: &'static str,
    target: String,
    limit: Duration,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(EtcdError::Rpc {
            operation,
            target,
            source: Box::new(source),
        }),
        Err(_) => Err(EtcdError::Timeout {
            operation,
            target,
            after: limit,
        }),
    }
}

fn is_unhealthy_cluster(error: &etcd_client::Error) -> bool {
    // etcd's ErrUnhealthy, sent with gRPC code Unavailable.
    matches!(error, etcd_client::Error::GRpcStatus(status) if status.message().contains("unhealthy cluster"))
}

fn join_endpoints(endpoints: &[EtcdEndpoint]) -> String {
    endpoints.iter().map(EtcdEndpoint::as_str).collect::<Vec<_>>().join(",")
}

/// An error and its sources on one line; tonic's top-level messages alone ("transport error")
/// don't say what went wrong.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_strictly() {
        assert_eq!(
            EtcdEndpoint::parse("https://10.0.0.1:2379").unwrap().as_str(),
            "https://10.0.0.1:2379"
        );
        assert_eq!(
            EtcdEndpoint::parse("https://[fd00::1]:2379/").unwrap().as_str(),
            "https://[fd00::1]:2379"
        );
        for (bad, reason) in [
            ("http://10.0.0.1:2379", "must start with https://"),
            ("https://10.0.0.1", "missing :port"),
            ("https://10.0.0.1:0", "port must be 1-65535"),
            ("https://:2379", "expected https://host:port"),
            ("https://h:2379/v3", "expected https://host:port"),
        ] {
            let err = EtcdEndpoint::parse(bad).unwrap_err();
            assert!(err.to_string().contains(reason), "{bad}: {err}");
        }
    }

    #[test]
    fn https_endpoint_brackets_ipv6() {
        assert_eq!(EtcdEndpoint::https("fd00::1", 2379).as_str(), "https://[fd00::1]:2379");
        assert_eq!(EtcdEndpoint::https("demo-1", 2379).as_str(), "https://demo-1:2379");
    }

    #[test]
    fn tls_debug_redacts_key() {
        let tls = EtcdTls {
            ca_cert_pem: "CA".into(),
            client_cert_pem: "CERT".into(),
            client_key_pem: "-----BEGIN PRIVATE KEY-----".into(),
        };
        assert!(!format!("{tls:?}").contains("PRIVATE"));
    }
}
