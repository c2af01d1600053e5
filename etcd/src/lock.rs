//! The cluster lock's etcd store: lease-backed keys under `/capstan/lock/`, so a holder that dies
//! frees the lock when its lease runs out, and scheduled jobs on the members (which reach their
//! local etcd, not the operator's hosts) see it. The engine's
//! [`capstan_provisioner::lock::ClusterLock`] holds it beside its host lock file.
//!
//! Keys, all on the holder's lease: `cluster` (the holder, JSON) for every exclusive holder,
//! `fence` beside it for [`LockMode::Fence`], `shared/<token>` for each shared holder. Every
//! decision is one transaction: a change takes `cluster` only if absent; a fence takes `cluster`
//! and `fence` only if `cluster` is absent, then backs out if a shared holder was already there; a
//! shared holder registers only if `fence` is absent.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::lock::{LockError, LockHolder, LockMode, LockStore};
use capstan_provisioner::pki::CertificateAuthority;
use capstan_provisioner::ssh::SshTransport;
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::Transport;
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::Mutex;

use crate::client::EtcdEndpoint;
use crate::client::{error_chain, EtcdClient, Timeouts};
use crate::config::DEFAULT_CLIENT_PORT;
use crate::inspect::{admin_tls, read_ca_over};

pub const LOCK_PREFIX: &str = "/capstan/lock/";
const CLUSTER_KEY: &str = "/capstan/lock/cluster";
const FENCE_KEY: &str = "/capstan/lock/fence";
const SHARED_PREFIX: &str = "/capstan/lock/shared/";

/// The lock in the cluster's etcd.
pub struct EtcdLockStore {
    client: Client,
    target: String,
    /// The lease of this process's lock, once taken.
    lease: Mutex<Option<i64>>,
}

/// Why there is no etcd store to lock in (the run then locks on its host store only).
#[derive(Debug)]
pub struct NoEtcdLock(pub String);

impl EtcdLockStore {
    pub fn new(client: &EtcdClient) -> EtcdLockStore {
        EtcdLockStore {
            client: client.raw(),
            target: client
                .endpoints()
                .iter()
                .map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join(","),
            lease: Mutex::new(None),
        }
    }

    /// The store of `cluster`'s etcd, when a member has the CA and the members answer within a
    /// few seconds; otherwise why not (no etcd hosts, etcd not installed yet, members down).
    ///
    /// Cheap on purpose, since every changing run takes the lock: the CA comes from one member
    /// over SSH (`connected`, the host the caller already holds a connection to, when it is an etcd
    /// host; else the first etcd hosts that accept one), and the client's endpoints are every etcd
    /// host, of which the client keeps those that accept a connection.
    pub async fn for_cluster(
        cluster: &Cluster,
        connected: Option<(&str, Arc<dyn Transport>)>,
    ) -> Result<EtcdLockStore, NoEtcdLock> {
        let limit = Duration::from_secs(5);
        let hosts: Vec<&Host> = cluster.hosts_with_role(Role::Etcd).collect();
        if hosts.is_empty() {
            return Err(NoEtcdLock("the inventory has no etcd hosts".into()));
        }
        let ca = first_ca(&hosts, connected, limit).await?;
        let tls = admin_tls(&ca).map_err(|e| NoEtcdLock(e.to_string()))?;
        let endpoints: Vec<_> = hosts
            .iter()
            .map(|h| EtcdEndpoint::https(&h.address, DEFAULT_CLIENT_PORT))
            .collect();
        let timeouts = Timeouts {
            connect: Duration::from_secs(3),
            request: limit,
            ..Timeouts::default()
        };
        let client = EtcdClient::connect_with(&endpoints, &tls, timeouts)
            .await
            .map_err(|e| NoEtcdLock(error_chain(&e)))?;
        let store = EtcdLockStore::new(&client);
        let mut raw = store.client.clone();
        match tokio::time::timeout(limit, raw.get(CLUSTER_KEY, None)).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(NoEtcdLock(format!("etcd does not answer: {e}"))),
            Err(_) => Err(NoEtcdLock(format!("etcd does not answer within {}s", limit.as_secs()))),
        }
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> LockError {
        LockError::Store {
            store: self.describe(),
            reason: format!("{what}: {e}"),
        }
    }

    /// One try at the mode's transaction under `lease`: `Ok(None)` taken, `Ok(Some(holder))` held.
    async fn try_take(&self, holder: &LockHolder, lease: i64) -> Result<Option<LockHolder>, LockError> {
        let value = serde_json::to_vec(holder).map_err(|e| self.error("encoding the holder", e))?;
        let put = |key: &str| TxnOp::put(key, value.clone(), Some(PutOptions::new().with_lease(lease)));
        let absent = |key: &str| Compare::create_revision(key, CompareOp::Equal, 0);
        let txn = match holder.mode {
            LockMode::Change => Txn::new()
                .when([absent(CLUSTER_KEY)])
                .and_then([put(CLUSTER_KEY)])
                .or_else([TxnOp::get(CLUSTER_KEY, None)]),
            LockMode::Fence => Txn::new()
                .when([absent(CLUSTER_KEY)])
                .and_then([put(CLUSTER_KEY), put(FENCE_KEY)])
                .or_else([TxnOp::get(CLUSTER_KEY, None)]),
            LockMode::Shared => Txn::new()
                .when([absent(FENCE_KEY)])
                .and_then([put(&format!("{SHARED_PREFIX}{}", holder.token))])
                .or_else([TxnOp::get(CLUSTER_KEY, None)]),
        };
        let mut client = self.client.clone();
        let response = client.txn(txn).await.map_err(|e| self.error("lock transaction", e))?;
        if response.succeeded() {
            return Ok(None);
        }
        let current = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        Ok(Some(decode(current.as_deref())))
    }

    /// Keep `lease` alive once; `false` when etcd no longer has it.
    async fn lease_alive(&self, client: &mut Client, lease: i64) -> Result<bool, LockError> {
        let gone =
            |e: &etcd_client::Error| matches!(e, etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found"));
        let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
            Ok(pair) => pair,
            Err(e) if gone(&e) => return Ok(false),
            Err(e) => return Err(self.error("keeping the lease alive", e)),
        };
        keeper
            .keep_alive()
            .await
            .map_err(|e| self.error("keeping the lease alive", e))?;
        match stream.message().await {
            Ok(answer) => Ok(answer.is_some_and(|a| a.ttl() > 0)),
            Err(e) if gone(&e) => Ok(false),
            Err(e) => Err(self.error("keeping the lease alive", e)),
        }
    }

    /// Whether `holder`'s own key is there.
    async fn holds(&self, holder: &LockHolder) -> Result<bool, LockError> {
        let key = match holder.mode {
            LockMode::Shared => format!("{SHARED_PREFIX}{}", holder.token),
            LockMode::Change | LockMode::Fence => CLUSTER_KEY.to_string(),
        };
        let mut client = self.client.clone();
        let response = client
            .get(key, None)
            .await
            .map_err(|e| self.error("reading the lock", e))?;
        Ok(response
            .kvs()
            .first()
            .is_some_and(|kv| decode(Some(kv.value())).token == holder.token))
    }

    /// Shared holders registered now (a fence backs out when there is one).
    async fn shared_holders(&self) -> Result<Vec<LockHolder>, LockError> {
        let mut client = self.client.clone();
        let response = client
            .get(SHARED_PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.error("reading shared holders", e))?;
        Ok(response.kvs().iter().map(|kv| decode(Some(kv.value()))).collect())
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, LockError> {
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(|e| self.error("granting a lease", e))?;
        Ok(lease.id())
    }

    async fn revoke(&self, lease: i64) {
        let mut client = self.client.clone();
        let _ = client.lease_revoke(lease).await;
    }

    /// Take the lock under a new lease; the lease is revoked again unless it was taken.
    async fn take(&self, holder: &LockHolder, ttl: Duration) -> Result<Option<LockHolder>, LockError> {
        let lease = self.grant(ttl).await?;
        match self.try_take(holder, lease).await {
            Ok(None) => {}
            other => {
                self.revoke(lease).await;
                return other;
            }
        }
        if holder.mode == LockMode::Fence {
            let shared = self.shared_holders().await;
            if let Some(first) = shared.as_ref().ok().and_then(|s| s.first().cloned()) {
                self.revoke(lease).await;
                return Err(LockError::SharedHeld {
                    holder: first,
                    store: self.describe(),
                });
            }
            if let Err(e) = shared {
                self.revoke(lease).await;
                return Err(e);
            }
        }
        *self.lease.lock().await = Some(lease);
        Ok(None)
    }
}

/// A holder from a key's value; a value capstan cannot read is still someone's lock.
fn decode(value: Option<&[u8]>) -> LockHolder {
    value
        .and_then(|v| serde_json::from_slice(v).ok())
        .unwrap_or_else(|| LockHolder {
            token: String::new(),
            user: "unknown".into(),
            machine: "unknown".into(),
            command: "(unreadable lock record)".into(),
            pid: 0,
            mode: LockMode::Change,
            since: 0,
        })
}

/// How many reachable etcd hosts [`EtcdLockStore::for_cluster`] asks for the CA before it gives up
/// (every member holds it; on a first apply none does, and asking all would cost a connection each).
const CA_HOSTS_ASKED: usize = 3;

/// The cluster CA from `connected` when it is an etcd host, else from the first etcd hosts (in
/// inventory order) that accept an SSH connection within `limit`.
async fn first_ca(
    hosts: &[&Host],
    connected: Option<(&str, Arc<dyn Transport>)>,
    limit: Duration,
) -> Result<CertificateAuthority, NoEtcdLock> {
    let mut asked = 0;
    let mut last = None;
    let mut tried = None;
    if let Some((name, transport)) = connected {
        if hosts.iter().any(|h| h.name == name) {
            asked += 1;
            tried = Some(name.to_string());
            match read_ca_over(transport.as_ref(), name).await {
                Ok(ca) => return Ok(ca),
                Err(e) => last = Some(e.to_string()),
            }
        }
    }
    for host in hosts {
        if asked >= CA_HOSTS_ASKED {
            break;
        }
        if tried.as_deref() == Some(host.name.as_str()) {
            continue;
        }
        let mut target = ssh_target(host);
        target.connect_timeout = target.connect_timeout.min(limit);
        let transport = match SshTransport::connect(&target).await {
            Ok(transport) => transport,
            Err(e) => {
                last = Some(format!("{}: {e}", host.name));
                continue;
            }
        };
        asked += 1;
        let ca = read_ca_over(&transport, &host.name).await;
        transport.close().await;
        match ca {
            Ok(ca) => return Ok(ca),
            Err(e) => last = Some(e.to_string()),
        }
    }
    Err(NoEtcdLock(last.unwrap_or_else(|| "no etcd host reachable".into())))
}

#[async_trait]
impl LockStore for EtcdLockStore {
    fn describe(&self) -> String {
        format!("etcd {CLUSTER_KEY} via {}", self.target)
    }

    async fn acquire(&self, holder: &LockHolder, ttl: Duration) -> Result<(), LockError> {
        match self.take(holder, ttl).await? {
            None => Ok(()),
            Some(other) => Err(LockError::Held {
                holder: other,
                store: self.describe(),
            }),
        }
    }

    /// Keep the lease alive; when it is gone (etcd was restored from a snapshot, or the lease ran
    /// out while etcd was unreachable), take the lock again under a new one if it is free. A key
    /// removed by `unlock --force` under a live lease is [`LockError::Lost`], not taken again.
    async fn renew(&self, holder: &LockHolder, ttl: Duration) -> Result<(), LockError> {
        let lease = *self.lease.lock().await;
        if let Some(lease) = lease {
            let mut client = self.client.clone();
            if self.lease_alive(&mut client, lease).await? {
                // The lease lives; the key may still have been removed (`capstan unlock --force`):
                // then the lock is lost, and not taken again behind the operator's back.
                return match self.holds(holder).await? {
                    true => Ok(()),
                    false => Err(LockError::Lost { store: self.describe() }),
                };
            }
        }
        match self.take(holder, ttl).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) | Err(LockError::SharedHeld { .. }) => Err(LockError::Lost { store: self.describe() }),
            Err(e) => Err(e),
        }
    }

    async fn release(&self, _holder: &LockHolder) -> Result<(), LockError> {
        if let Some(lease) = self.lease.lock().await.take() {
            let mut client = self.client.clone();
            client
                .lease_revoke(lease)
                .await
                .map_err(|e| self.error("revoking the lease", e))?;
        }
        Ok(())
    }

    async fn break_lock(&self) -> Result<Vec<LockHolder>, LockError> {
        let mut client = self.client.clone();
        let removed = client
            .delete(LOCK_PREFIX, Some(DeleteOptions::new().with_prefix().with_prev_key()))
            .await
            .map_err(|e| self.error("removing the lock", e))?;
        let mut holders: Vec<LockHolder> = removed
            .prev_kvs()
            .iter()
            .filter(|kv| kv.key() != FENCE_KEY.as_bytes())
            .map(|kv| decode(Some(kv.value())))
            .collect();
        holders.dedup();
        Ok(holders)
    }
}
