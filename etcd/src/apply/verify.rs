//! The verify phase: every member healthy with one leader, and after a version change every member
//! on the target version (and the cluster version raised, for a minor upgrade).

use std::time::Duration;

use super::{failed, EtcdRun};
use crate::client::poll_until;
use crate::upgrade::{probe_versions, Version};
use capstan_provisioner::phases::PhaseError;

impl EtcdRun {
    pub(super) async fn verify(&self, phase: &str) -> Result<(), PhaseError> {
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.wait_cluster_ready(&all, &[], self.ready_timeout)
            .await
            .map_err(|e| failed(phase, e))?;
        self.say(&format!("{} members healthy, one leader", all.len()));
        if let Some(upgrade) = &self.upgrade {
            if upgrade.moves_cluster_version() {
                self.wait_cluster_version(upgrade.target, self.ready_timeout)
                    .await
                    .map_err(|e| failed(phase, e))?;
            }
            if let Some(cluster) = self.cluster_version().await {
                self.say(&format!(
                    "every member runs etcd {}; cluster version {cluster}",
                    upgrade.target
                ));
            }
        }
        Ok(())
    }

    /// The cluster version, read from the members' metrics (the first that answers).
    async fn cluster_version(&self) -> Option<crate::upgrade::MinorLine> {
        for member in &self.members {
            let port = self.settings.metrics_port;
            if let Ok(facts) = probe_versions(member.transport.as_ref(), crate::config::DEFAULT_ETCD_BINARY, port).await
            {
                if facts.cluster.is_some() {
                    return facts.cluster;
                }
            }
        }
        None
    }

    /// After a minor upgrade of every member, the leader raises the cluster version by itself
    /// (it checks the members' versions every few seconds); wait for that.
    async fn wait_cluster_version(&self, target: Version, timeout: Duration) -> Result<(), String> {
        poll_until(timeout, Duration::from_secs(1), || async {
            match self.cluster_version().await {
                Some(found) if found == target.line() => Ok(()),
                found => Err(found.map(|c| c.to_string()).unwrap_or_else(|| "unknown".into())),
            }
        })
        .await
        .map_err(|found| {
            format!(
                "every member runs etcd {target}, but the cluster version is still {found} after {}s",
                timeout.as_secs()
            )
        })
    }
}
