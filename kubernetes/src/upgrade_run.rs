//! Running a Kubernetes upgrade: observe → decide ([`crate::upgrade::next_step`]) → do one step →
//! observe again, until everything runs the target. Every loop reads the state afresh from the
//! hosts and the API, so a stopped run resumes where it stopped.
//!
//! Two hooks keep this independent of how hosts are changed and of how operators are kept apart:
//! - [`HostUpgrades`]: the host side (versions running on each host, the backup, swapping binaries
//!   and restarting units through the ops engine, an API server's own `/readyz`), implemented by
//!   the `upgrade` phase of `capstan apply` ([`crate::upgrade_apply`]);
//! - [`UpgradeLock`]: the cluster-wide operation lock, taken before the first step and released at
//!   the end; inside `capstan apply` it is the lock the command holds for the whole run
//!   ([`crate::upgrade_apply::ApplyLock`]).
//!
//! The API side is [`KubeClient`]. None of this runs without a real cluster: the end-to-end test
//! (real release binaries, `CAPSTAN_KUBE_ARTIFACTS`) exercises it.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::client::KubeClient;
use crate::skew::{KubeComponent, KubeVersion, Refusal, Running};
use crate::upgrade::{after_failure, next_step, NextStep, NodeStep, NodeView, Observed};

/// The host side of an upgrade.
#[async_trait]
pub trait HostUpgrades: Sync {
    /// Every Kubernetes component's version on every host (installed binaries).
    async fn running(&self) -> Result<Vec<Running>, String>;
    /// Take a backup before the first change; returns its id.
    async fn backup(&self) -> Result<String, String>;
    /// Swap kube-apiserver on `host` to the target and restart it.
    async fn upgrade_api_server(&self, host: &str) -> Result<(), String>;
    /// `host`'s own API server answers `/readyz` (its port 6444, not the endpoint).
    async fn api_server_ready(&self, host: &str, timeout: Duration) -> Result<(), String>;
    /// Swap `components` (controller-manager, scheduler) on `host` and restart them.
    async fn upgrade_control_plane(&self, host: &str, components: &[KubeComponent]) -> Result<(), String>;
    /// Swap kubelet and kube-proxy on `host` and restart them.
    async fn upgrade_node(&self, host: &str) -> Result<(), String>;
}

/// The lock that keeps two operators from upgrading one cluster at once.
#[async_trait]
pub trait UpgradeLock: Sync {
    /// Taken before the first step; an error names who holds it.
    async fn acquire(&self, operation: &str) -> Result<(), String>;
    async fn release(&self);
}

#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    pub target: String,
    /// Inventory order of the hosts, and which are control-plane hosts.
    pub order: Vec<String>,
    pub control_plane: Vec<String>,
    /// Nodes upgraded at once.
    pub batch_size: usize,
    pub drain_timeout: Duration,
    pub ready_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("refusing the upgrade: {0}")]
    Refused(Refusal),
    #[error("the upgrade lock: {0}")]
    Lock(String),
    #[error("{0}")]
    Step(String),
    #[error("{step} did not take effect (the next run would repeat it): the hosts still report the old version")]
    NoProgress { step: String },
}

impl UpgradeError {
    pub fn hint(&self) -> Option<String> {
        match self {
            UpgradeError::Refused(r) => r.hint(),
            UpgradeError::Lock(_) => Some("wait for the other operation to finish".into()),
            UpgradeError::Step(_) | UpgradeError::NoProgress { .. } => {
                Some("fix the cause and run the upgrade again: it continues where it stopped".into())
            }
        }
    }
}

/// What a run did, step by step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpgradeReport {
    pub steps: Vec<String>,
    pub backup: Option<String>,
}

/// Runs the upgrade to `options.target` under `lock`. `api` is the cluster's API once it answers
/// (the node steps need it); `say` gets a line per step.
pub async fn upgrade(
    hosts: &dyn HostUpgrades,
    api: &KubeClient,
    lock: &dyn UpgradeLock,
    options: &UpgradeOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Result<UpgradeReport, UpgradeError> {
    lock.acquire(&format!("upgrade Kubernetes to {}", options.target))
        .await
        .map_err(UpgradeError::Lock)?;
    let result = run(hosts, api, options, say).await;
    lock.release().await;
    result
}

async fn observe(hosts: &dyn HostUpgrades, api: &KubeClient) -> Result<Observed, UpgradeError> {
    let running = hosts.running().await.map_err(UpgradeError::Step)?;
    // Before the API answers (all API servers down), no node can be judged: the host steps come
    // first anyway.
    let nodes = api.nodes().await.unwrap_or_default();
    Ok(Observed { running, nodes })
}

async fn run(
    hosts: &dyn HostUpgrades,
    api: &KubeClient,
    options: &UpgradeOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Result<UpgradeReport, UpgradeError> {
    let mut report = UpgradeReport::default();
    let target = KubeVersion::parse(&options.target).ok_or_else(|| {
        UpgradeError::Refused(Refusal::InvalidTarget {
            text: options.target.clone(),
        })
    })?;
    let mut previous: Option<NextStep> = None;
    loop {
        let observed = observe(hosts, api).await?;
        let step = next_step(
            &observed,
            &options.target,
            &options.order,
            &options.control_plane,
            options.batch_size,
        )
        .map_err(UpgradeError::Refused)?;
        if previous.as_ref() == Some(&step) && !matches!(step, NextStep::FinishNode { .. }) {
            return Err(UpgradeError::NoProgress {
                step: format!("{step:?}"),
            });
        }
        let line = match &step {
            NextStep::Done => {
                say(&format!("every component runs {target}"));
                return Ok(report);
            }
            NextStep::Backup => {
                say("backing up before the first change");
                let id = hosts
                    .backup()
                    .await
                    .map_err(|e| UpgradeError::Step(format!("the backup: {e}")))?;
                report.backup = Some(id.clone());
                format!("backup {id}")
            }
            NextStep::ApiServer { host } => {
                say(&format!("kube-apiserver on {host} → {target}"));
                hosts
                    .upgrade_api_server(host)
                    .await
                    .map_err(|e| UpgradeError::Step(format!("kube-apiserver on {host}: {e}")))?;
                hosts
                    .api_server_ready(host, options.ready_timeout)
                    .await
                    .map_err(|e| UpgradeError::Step(format!("kube-apiserver on {host} is not ready: {e}")))?;
                format!("kube-apiserver on {host}")
            }
            NextStep::ControlPlane { host, components } => {
                let names: Vec<&str> = components.iter().map(|c| c.name()).collect();
                say(&format!("{} on {host} → {target}", names.join(" and ")));
                hosts
                    .upgrade_control_plane(host, components)
                    .await
                    .map_err(|e| UpgradeError::Step(format!("{} on {host}: {e}", names.join(", "))))?;
                format!("{} on {host}", names.join(" and "))
            }
            NextStep::Uncordon { node } => {
                api.uncordon(node)
                    .await
                    .map_err(|e| failed(node, NodeStep::Uncordon, None, &e.to_string()))?;
                format!("uncordon {node}")
            }
            NextStep::FinishNode { node } => {
                say(&format!("finishing node {node} (left by an earlier run)"));
                upgrade_nodes(
                    hosts,
                    api,
                    std::slice::from_ref(node),
                    &target,
                    options,
                    &observed.nodes,
                )
                .await?;
                format!("node {node}")
            }
            NextStep::Nodes { batch } => {
                say(&format!("nodes {} → {target}", batch.join(", ")));
                upgrade_nodes(hosts, api, batch, &target, options, &observed.nodes).await?;
                format!("nodes {}", batch.join(", "))
            }
        };
        report.steps.push(line);
        previous = Some(step);
    }
}

fn failed(node: &str, step: NodeStep, view: Option<&NodeView>, reason: &str) -> UpgradeError {
    UpgradeError::Step(after_failure(node, step, view, reason).explanation)
}

/// Cordon → drain → upgrade → Ready → uncordon for every node of `batch`; on a failure, every
/// node of the batch capstan cordoned is uncordoned before the error is returned.
async fn upgrade_nodes(
    hosts: &dyn HostUpgrades,
    api: &KubeClient,
    batch: &[String],
    target: &KubeVersion,
    options: &UpgradeOptions,
    known: &[NodeView],
) -> Result<(), UpgradeError> {
    let outcome = async {
        // A node the API does not know (kubelet never registered) has nothing to cordon or drain.
        let registered: Vec<&String> = batch.iter().filter(|n| known.iter().any(|k| &k.name == *n)).collect();
        for node in &registered {
            api.cordon(node, target)
                .await
                .map_err(|e| (node.to_string(), NodeStep::Cordon, e.to_string()))?;
        }
        for node in &registered {
            api.drain(node, options.drain_timeout)
                .await
                .map_err(|e| (node.to_string(), NodeStep::Drain, e.to_string()))?;
        }
        for node in batch {
            hosts
                .upgrade_node(node)
                .await
                .map_err(|e| (node.clone(), NodeStep::Upgrade, e))?;
        }
        for node in batch {
            api.wait_node_ready(node, target, options.ready_timeout)
                .await
                .map_err(|e| (node.clone(), NodeStep::WaitReady, e.to_string()))?;
        }
        for node in &registered {
            api.uncordon(node)
                .await
                .map_err(|e| (node.to_string(), NodeStep::Uncordon, e.to_string()))?;
        }
        Ok::<(), (String, NodeStep, String)>(())
    }
    .await;
    let Err((node, step, reason)) = outcome else {
        return Ok(());
    };
    // Read the node again: whether capstan's cordon is on it decides what to undo.
    let views = api.nodes().await.unwrap_or_default();
    let view = views.iter().find(|v| v.name == node);
    let decision = after_failure(&node, step, view, &reason);
    for other in batch {
        if views.iter().any(|v| &v.name == other && v.cordoned_for.is_some()) {
            let _ = api.uncordon(other).await;
        }
    }
    Err(UpgradeError::Step(decision.explanation))
}
