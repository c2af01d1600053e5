//! Shared by `apply`, `status` and `credentials`: the inventory's etcd hosts, SSH connections to
//! them, their probed state, and the cluster CA read from the members (the PKI lives there, not
//! on the operator machine).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use capstan_inventory::{Cluster, Host, Role};

use super::client::{EtcdEndpoint, EtcdTls};
use super::config::{ClusterMember, MemberSettings, PkiPaths, DEFAULT_CLIENT_PORT, DEFAULT_PKI_DIR};
use super::pki::ADMIN_CLIENT_CN;
use super::probe::{ca_key_path, probe_member_and_versions, MemberProbe};
use super::upgrade::VersionFacts;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::OpError;
use capstan_provisioner::pki::{CertRequest, CertificateAuthority, PkiError};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::{ExecOptions, Transport, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("the inventory has no host with role `etcd`")]
    NoEtcdHosts,
    #[error("{0}")]
    Op(#[from] OpError),
    #[error("{host}: the CA on this member is unusable: {source}")]
    BadCa { host: String, source: PkiError },
    #[error("no reachable etcd member has the cluster CA ({pki_dir}/ca.crt and ca.key)")]
    NoCa { pki_dir: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// An inventory etcd host: where it is, how it is reached, and (when reachable) its state.
#[derive(Clone)]
pub struct EtcdHost {
    pub host: Host,
    pub transport: Option<Arc<dyn Transport>>,
    pub connect_error: Option<String>,
    pub connect_hint: Option<&'static str>,
    pub probe: Option<MemberProbe>,
    /// Installed and running etcd versions, read in the same round trip as `probe`.
    pub versions: Option<VersionFacts>,
    pub probe_error: Option<String>,
}

impl EtcdHost {
    pub fn name(&self) -> &str {
        &self.host.name
    }

    /// How the other members see it.
    pub fn member(&self) -> ClusterMember {
        ClusterMember::new(self.host.name.clone(), self.host.private_address.clone())
    }

    /// What the operator (this machine) connects to: the inventory `address`.
    pub fn operator_endpoint(&self) -> EtcdEndpoint {
        EtcdEndpoint::https(&self.host.address, DEFAULT_CLIENT_PORT)
    }
}

/// Per-member settings from the inventory (data dir) with capstan's defaults.
pub fn member_settings(cluster: &Cluster) -> MemberSettings {
    MemberSettings {
        data_dir: cluster.etcd.data_dir.display().to_string(),
        ..MemberSettings::default()
    }
}

pub fn pki_paths() -> PkiPaths {
    PkiPaths::under(DEFAULT_PKI_DIR)
}

/// Connects to every etcd host (and probes it), at most `parallelism` at a time. With
/// `connect_timeout`, the inventory's SSH connect timeout is capped (status must not hang).
pub async fn inspect_hosts(
    cluster: &Cluster,
    parallelism: usize,
    connect_timeout: Option<Duration>,
) -> Result<(Vec<EtcdHost>, Connections), InspectError> {
    let hosts: Vec<Host> = cluster.hosts_with_role(Role::Etcd).cloned().collect();
    if hosts.is_empty() {
        return Err(InspectError::NoEtcdHosts);
    }
    let targets: Vec<_> = hosts
        .iter()
        .map(|h| {
            let mut target = ssh_target(h);
            if let Some(cap) = connect_timeout {
                target.connect_timeout = target.connect_timeout.min(cap);
            }
            target
        })
        .collect();
    let (conns, mut failures) = Connections::connect(&targets, parallelism).await;
    let settings = member_settings(cluster);
    let pki = pki_paths();
    let probes = futures::future::join_all(hosts.iter().map(|h| {
        let transport = conns.get(&h.name);
        let settings = &settings;
        let pki = &pki;
        async move {
            match transport {
                Some(t) => {
                    Some(probe_member_and_versions(t.as_ref(), &settings.data_dir, pki, settings.metrics_port).await)
                }
                None => None,
            }
        }
    }))
    .await;
    let etcd_hosts = hosts
        .into_iter()
        .zip(probes)
        .map(|(host, probe)| {
            let (probe, versions, probe_error) = match probe {
                Some(Ok((p, v))) => (Some(p), v, None),
                Some(Err(e)) => (None, None, Some(e.to_string())),
                None => (None, None, None),
            };
            let failure = failures.remove(&host.name);
            EtcdHost {
                transport: conns.get(&host.name),
                connect_hint: failure.as_ref().and_then(TransportError::hint),
                connect_error: failure.map(|e| e.to_string()),
                probe,
                versions,
                probe_error,
                host,
            }
        })
        .collect();
    Ok((etcd_hosts, conns))
}

/// Reads the CA from `host` ([`read_ca_over`]; the key is never logged, kept in memory only).
pub async fn read_ca(host: &EtcdHost) -> Result<CertificateAuthority, InspectError> {
    let (Some(t), Some(_)) = (&host.transport, &host.probe) else {
        return Err(InspectError::NoCa {
            pki_dir: DEFAULT_PKI_DIR.into(),
        });
    };
    read_ca_over(t.as_ref(), host.name()).await
}

/// Reads the CA certificate and key from the member `host` reached over `transport`, in one
/// command (the key is never logged; kept in memory only). [`InspectError::NoCa`] when the member
/// has not both files (etcd not installed yet).
pub async fn read_ca_over(transport: &dyn Transport, host: &str) -> Result<CertificateAuthority, InspectError> {
    let pki = pki_paths();
    let (cert, key) = (quote(&pki.ca_file), quote(&ca_key_path(&pki)));
    // NUL separates the two files: it cannot occur in PEM.
    let command = format!("test -f {cert} -a -f {key} || exit 3; cat -- {cert} && printf '\\0' && cat -- {key}");
    let output = transport
        .exec(&command, &ExecOptions::default())
        .await
        .map_err(OpError::from)?;
    if output.exit_code == Some(3) {
        return Err(InspectError::NoCa {
            pki_dir: DEFAULT_PKI_DIR.into(),
        });
    }
    let bad = |why: &str| InspectError::BadCa {
        host: host.to_string(),
        source: PkiError::InvalidCaCertificate(why.into()),
    };
    if !output.success() {
        // stderr only; stdout (the key) is never part of an error.
        return Err(InspectError::Op(OpError::CommandFailed {
            host: host.to_string(),
            command,
            status: format!("{:?}", output.exit_code),
            stderr: output.stderr_str().trim().to_string(),
        }));
    }
    let split = output
        .stdout
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| bad("unreadable CA files"))?;
    let cert = std::str::from_utf8(&output.stdout[..split]).map_err(|_| bad("the CA certificate is not text"))?;
    let key = std::str::from_utf8(&output.stdout[split + 1..]).map_err(|_| bad("the CA key is not text"))?;
    CertificateAuthority::from_pem(cert, key).map_err(|source| InspectError::BadCa {
        host: host.to_string(),
        source,
    })
}

/// The first member (inventory order) that has both CA files.
pub fn ca_holder(hosts: &[EtcdHost]) -> Option<&EtcdHost> {
    hosts
        .iter()
        .find(|h| h.probe.as_ref().is_some_and(|p| p.ca_cert.is_some() && p.has_ca_key))
}

/// The CA from the first member that has it.
pub async fn fetch_ca(hosts: &[EtcdHost]) -> Result<CertificateAuthority, InspectError> {
    match ca_holder(hosts) {
        Some(holder) => read_ca(holder).await,
        None => Err(InspectError::NoCa {
            pki_dir: DEFAULT_PKI_DIR.into(),
        }),
    }
}

/// A fresh in-memory admin client identity for talking to the cluster.
pub fn admin_tls(ca: &CertificateAuthority) -> Result<EtcdTls, PkiError> {
    let issued = ca.issue(&CertRequest::client(ADMIN_CLIENT_CN))?;
    Ok(EtcdTls {
        ca_cert_pem: ca.cert_pem().to_string(),
        client_cert_pem: issued.cert_pem,
        client_key_pem: issued.key_pem,
    })
}

/// Operator endpoints by member name.
pub fn operator_endpoints(hosts: &[EtcdHost]) -> BTreeMap<String, EtcdEndpoint> {
    hosts
        .iter()
        .map(|h| (h.name().to_string(), h.operator_endpoint()))
        .collect()
}
