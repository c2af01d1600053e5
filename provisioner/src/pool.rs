//! Connections to many hosts, opened in parallel with a bound.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::ssh::{SshTarget, SshTransport};
use crate::transport::{Transport, TransportError};

/// How many hosts are connected to at once by default.
pub const DEFAULT_CONNECT_PARALLELISM: usize = 32;

/// Open connections by host name.
#[derive(Default)]
pub struct Connections {
    hosts: BTreeMap<String, Arc<dyn Transport>>,
    /// Bastion connections shared by the hosts behind them.
    bastions: Vec<Arc<SshTransport>>,
}

impl Connections {
    /// Connects to every target, at most `parallelism` at a time. Returns the
    /// open connections and, separately, the error of each host that failed;
    /// one host failing never stops the others.
    pub async fn connect(targets: &[SshTarget], parallelism: usize) -> (Connections, BTreeMap<String, TransportError>) {
        let parallelism = parallelism.max(1);
        let mut failures = BTreeMap::new();

        // One connection per distinct bastion, shared by every host behind it.
        let mut bastion_targets: BTreeMap<String, SshTarget> = BTreeMap::new();
        for target in targets {
            if let Some(bastion) = &target.bastion {
                bastion_targets
                    .entry(bastion.connection_key())
                    .or_insert_with(|| (**bastion).clone());
            }
        }
        let bastion_results: Vec<(String, Result<SshTransport, TransportError>)> = stream::iter(bastion_targets)
            .map(|(key, bastion)| async move { (key, SshTransport::connect(&bastion).await) })
            .buffer_unordered(parallelism)
            .collect()
            .await;
        let mut bastions: BTreeMap<String, Result<Arc<SshTransport>, TransportError>> = BTreeMap::new();
        for (key, result) in bastion_results {
            bastions.insert(key, result.map(Arc::new));
        }

        let bastions_ref = &bastions;
        let results: Vec<(String, Result<SshTransport, TransportError>)> = stream::iter(targets)
            .map(|target| async move {
                let via = match &target.bastion {
                    None => None,
                    Some(bastion) => match bastions_ref.get(&bastion.connection_key()) {
                        Some(Ok(shared)) => Some(shared.clone()),
                        Some(Err(error)) => return (target.name.clone(), Err(bastion_failure(&target.name, error))),
                        None => None,
                    },
                };
                (target.name.clone(), SshTransport::connect_via(target, via).await)
            })
            .buffer_unordered(parallelism)
            .collect()
            .await;

        let mut connections = Connections::default();
        for (name, result) in results {
            match result {
                Ok(transport) => {
                    connections.hosts.insert(name, Arc::new(transport));
                }
                Err(error) => {
                    failures.insert(name, error);
                }
            }
        }
        connections.bastions = bastions.into_values().filter_map(Result::ok).collect();
        (connections, failures)
    }

    /// Adds a connection made elsewhere (e.g. a local transport).
    pub fn insert(&mut self, host: impl Into<String>, transport: Arc<dyn Transport>) {
        self.hosts.insert(host.into(), transport);
    }

    pub fn get(&self, host: &str) -> Option<Arc<dyn Transport>> {
        self.hosts.get(host).cloned()
    }

    pub fn hosts(&self) -> impl Iterator<Item = (&str, &Arc<dyn Transport>)> {
        self.hosts.iter().map(|(name, t)| (name.as_str(), t))
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Closes every host connection, then the bastions they went through.
    pub async fn close_all(&self) {
        futures::future::join_all(self.hosts.values().map(|t| t.close())).await;
        futures::future::join_all(self.bastions.iter().map(|b| b.close())).await;
    }
}

/// The error of a host whose bastion failed: same kind (so the hint fits),
/// attributed to the host, naming the bastion.
fn bastion_failure(host: &str, bastion_error: &TransportError) -> TransportError {
    let host = host.to_string();
    match bastion_error {
        TransportError::Connect {
            host: bastion,
            addr,
            reason,
        } => TransportError::Connect {
            host,
            addr: addr.clone(),
            reason: format!("bastion {bastion}: {reason}"),
        },
        TransportError::Auth {
            host: bastion,
            user,
            reason,
        } => TransportError::Auth {
            host,
            user: user.clone(),
            reason: format!("on bastion {bastion}: {reason}"),
        },
        TransportError::HostKey { host: bastion, reason } => TransportError::HostKey {
            host,
            reason: format!("bastion {bastion}: {reason}"),
        },
        TransportError::Timeout {
            host: bastion,
            secs,
            command,
        } => TransportError::Timeout {
            host,
            secs: *secs,
            command: format!("{command} (on bastion {bastion})"),
        },
        TransportError::Other { host: bastion, reason } => TransportError::Other {
            host,
            reason: format!("bastion {bastion}: {reason}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bastion_failures_keep_their_kind_and_hint() {
        let error = TransportError::HostKey {
            host: "jump".into(),
            reason: "HOST KEY CHANGED".into(),
        };
        let mapped = bastion_failure("node-1", &error);
        assert!(
            matches!(&mapped, TransportError::HostKey { host, reason } if host == "node-1" && reason.contains("jump"))
        );
        assert_eq!(mapped.hint(), error.hint());
        let error = TransportError::Auth {
            host: "jump".into(),
            user: "ops".into(),
            reason: "rejected".into(),
        };
        assert!(bastion_failure("node-1", &error)
            .to_string()
            .starts_with("node-1: authentication failed for user ops"));
    }
}
