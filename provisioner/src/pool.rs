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
        let mut bastions: BTreeMap<String, Result<Arc<SshTransport>, String>> = BTreeMap::new();
        for (key, result) in bastion_results {
            bastions.insert(key, result.map(Arc::new).map_err(|e| e.to_string()));
        }

        let bastions_ref = &bastions;
        let results: Vec<(String, Result<SshTransport, TransportError>)> = stream::iter(targets)
            .map(|target| async move {
                let via = match &target.bastion {
                    None => None,
                    Some(bastion) => match bastions_ref.get(&bastion.connection_key()) {
                        Some(Ok(shared)) => Some(shared.clone()),
                        Some(Err(reason)) => {
                            let error = TransportError::Connect {
                                host: target.name.clone(),
                                addr: format!("{}:{}", target.address, target.port),
                                reason: format!("via bastion: {reason}"),
                            };
                            return (target.name.clone(), Err(error));
                        }
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
