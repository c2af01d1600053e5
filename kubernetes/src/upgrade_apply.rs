//! A Kubernetes version change through `capstan apply` (the same user model as etcd's: change
//! `kubernetes.version` in the inventory, `capstan plan`, `capstan apply`).
//!
//! At inspection ([`inspect_versions`]) every host's installed binaries report their versions;
//! when some differ from the inventory's, the whole rollout is checked against the skew policy
//! ([`crate::upgrade::upgrade_order`]) and refused before anything changes. Otherwise the run
//! gets an `upgrade` phase before the others: in a plan it lists the order (backup, each API
//! server with its `/readyz`, controller-managers and schedulers, node batches with cordon →
//! drain → upgrade → Ready → uncordon); in an apply it runs [`crate::upgrade_run::upgrade`] with
//! the host side through the ops engine ([`OpsUpgrades`]: the Artifact op for the binaries,
//! restarts as its handlers) under the cluster lock `capstan apply` holds ([`ApplyLock`]). The
//! regular phases run after it and find the binaries in place.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::component::ComponentError;
use capstan_provisioner::lock::{LockHolder, HOST_LOCK_FILE};
use capstan_provisioner::phases::{Phase, PhaseContext, PhaseError};
use capstan_provisioner::report::{ChangeRecord, HostReport, OpRecord, OpStatus, RunReport};
use capstan_provisioner::runner::{HostOps, Mode};
use capstan_provisioner::ssh::SshTransport;
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::{ExecOptions, Transport};

use crate::apply::{binaries_op, refuse, Binaries, KubeRun, APISERVER, KUBELET, KUBE_PROXY};
use crate::probe::HostProbe;
use crate::skew::{KubeComponent, Running};
use crate::upgrade::{upgrade_order, OrderedStep};
use crate::upgrade_facts::host_versions;
use crate::upgrade_run::{upgrade, HostUpgrades, UpgradeLock, UpgradeOptions};

pub(crate) const PHASE: &str = "upgrade";

/// Nodes upgraded at once.
pub const NODE_BATCH: usize = 1;
/// How long a drain may take before the upgrade stops and explains.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an API server or a node may take to be ready after its restart.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The backup an upgrade takes before its first change, provided by the command line (which
/// owns the backup code and the inventory's backup target); the backup's id.
pub type BackupFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
pub type BackupHook = fn(Cluster) -> BackupFuture;

static PRE_UPGRADE_BACKUP: OnceLock<BackupHook> = OnceLock::new();

/// Set once, at start-up, by the program that runs `apply`. Without it an upgrade stops at its
/// first step (the backup), before any change.
pub fn set_pre_upgrade_backup(hook: BackupHook) {
    let _ = PRE_UPGRADE_BACKUP.set(hook);
}

/// What the versions the hosts run mean for this run.
pub(crate) struct Versions {
    /// Some control-plane host has kube-apiserver installed.
    pub(crate) api_server_installed: bool,
    /// The upgrade to run, when installed components run another version.
    pub(crate) work: Option<UpgradeWork>,
}

pub(crate) struct UpgradeWork {
    pub(crate) target: String,
    pub(crate) order: Vec<OrderedStep>,
    hosts: Vec<String>,
    control_plane: Vec<String>,
}

/// Every host's installed versions; the upgrade they call for, refused (before anything changes)
/// when the skew policy does not allow it.
pub(crate) async fn inspect_versions(
    cluster: &Cluster,
    probed: &[(Host, Arc<dyn Transport>, HostProbe)],
) -> Result<Versions, ComponentError> {
    let found = futures::future::join_all(probed.iter().map(|(host, transport, _)| {
        host_versions(
            transport.as_ref(),
            host.has_role(Role::ControlPlane),
            crate::pki::runs_kubelet(host),
        )
    }))
    .await;
    let mut running: Vec<Running> = Vec::new();
    for versions in found {
        running.extend(versions.map_err(|e| refuse(format!("reading the installed versions: {e}"), None))?);
    }
    let target = &cluster.kubernetes.version;
    let hosts: Vec<String> = probed.iter().map(|(h, _, _)| h.name.clone()).collect();
    let control_plane: Vec<String> = probed
        .iter()
        .filter(|(h, _, _)| h.has_role(Role::ControlPlane))
        .map(|(h, _, _)| h.name.clone())
        .collect();
    let order = upgrade_order(&running, target, &hosts, &control_plane, NODE_BATCH).map_err(|refusal| {
        refuse(
            format!("refusing to change Kubernetes to {target}: {refusal}"),
            refusal.hint().as_deref(),
        )
    })?;
    Ok(Versions {
        api_server_installed: running.iter().any(|r| r.component == KubeComponent::ApiServer),
        work: (!order.is_empty()).then(|| UpgradeWork {
            target: target.clone(),
            order,
            hosts,
            control_plane,
        }),
    })
}

/// A step that is not a host op (the backup, an order line of a plan) as a report record.
fn note(host: &str, op: &str, summary: String, mode: Mode, result: Result<(), String>, elapsed: Duration) -> RunReport {
    let mut report = HostReport::new(host);
    report.push(OpRecord {
        op: op.to_string(),
        status: if result.is_ok() {
            OpStatus::Changed
        } else {
            OpStatus::Failed
        },
        changes: vec![ChangeRecord {
            summary,
            diff: None,
            commands: Vec::new(),
        }],
        error: result.err(),
        elapsed,
    });
    report.elapsed = elapsed;
    RunReport {
        mode,
        hosts: vec![report],
        elapsed,
    }
}

/// The host side of the upgrade through the ops engine: each swap is the Artifact op of the
/// release tarball limited to the binaries swapped, notifying their services (restarted by the
/// engine's handlers once the binary changed), reported in this phase.
struct OpsUpgrades<'a> {
    ctx: &'a PhaseContext<KubeRun>,
}

impl OpsUpgrades<'_> {
    async fn swap(&self, host: &str, services: &[&'static str]) -> Result<(), String> {
        let state = &self.ctx.state;
        let h = state
            .hosts
            .iter()
            .find(|h| h.name == host)
            .ok_or_else(|| format!("{host} is not a Kubernetes host of this run"))?;
        let node = services.contains(&KUBELET) || services.contains(&KUBE_PROXY);
        let (binaries, dir): (&Binaries, &str) = if node {
            (&state.node, "kubernetes/node/bin")
        } else {
            (&state.server, "kubernetes/server/bin")
        };
        let members: Vec<String> = services.iter().map(|s| format!("{dir}/{s}")).collect();
        let mut ops = HostOps::new(h.transport.clone());
        ops.ops.push(binaries_op(binaries, members, services));
        self.ctx
            .run_ops(PHASE, vec![ops], Mode::Apply)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl HostUpgrades for OpsUpgrades<'_> {
    async fn running(&self) -> Result<Vec<Running>, String> {
        let mut running = Vec::new();
        for h in &self.ctx.state.hosts {
            running.extend(host_versions(h.transport.as_ref(), h.control_plane, h.node).await?);
        }
        Ok(running)
    }

    async fn backup(&self) -> Result<String, String> {
        let state = &self.ctx.state;
        let host = state.api.report_host().to_string();
        let started = Instant::now();
        let result = match PRE_UPGRADE_BACKUP.get() {
            Some(hook) => hook(state.cluster.clone()).await,
            None => Err("this program has no backup to take before an upgrade".to_string()),
        };
        let summary = match &result {
            Ok(id) => format!("backup {id} before the first change"),
            Err(_) => "backup before the first change".to_string(),
        };
        self.ctx.record(
            PHASE,
            note(
                &host,
                "upgrade backup",
                summary,
                Mode::Apply,
                result.as_ref().map(|_| ()).map_err(Clone::clone),
                started.elapsed(),
            ),
        );
        result
    }

    async fn upgrade_api_server(&self, host: &str) -> Result<(), String> {
        self.swap(host, &[APISERVER]).await
    }

    async fn api_server_ready(&self, host: &str, timeout: Duration) -> Result<(), String> {
        let state = &self.ctx.state;
        let address = state
            .hosts
            .iter()
            .find(|h| h.name == host)
            .map(|h| h.address.clone())
            .ok_or_else(|| format!("{host} is not a Kubernetes host of this run"))?;
        let url = own_api_server_url(&address);
        let client = state.api.client(&url).await?;
        client.wait_ready(timeout).await.map_err(|e| format!("{url}: {e}"))
    }

    async fn upgrade_control_plane(&self, host: &str, components: &[KubeComponent]) -> Result<(), String> {
        let services: Vec<&'static str> = components.iter().map(|c| c.name()).collect();
        self.swap(host, &services).await
    }

    async fn upgrade_node(&self, host: &str) -> Result<(), String> {
        self.swap(host, &[KUBELET, KUBE_PROXY]).await
    }
}

/// An API server's own port on `address` (not the endpoint): what its `/readyz` gate asks.
pub fn own_api_server_url(address: &str) -> String {
    let port = capstan_endpoint::config::APISERVER_PORT;
    match address.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("https://[{address}]:{port}"),
        Err(_) => format!("https://{address}:{port}"),
    }
}

/// The cluster lock of the `capstan apply` this upgrade runs in: the command takes it (change
/// mode: the host lock file on the inventory's first reachable host, and a lease in etcd) before
/// any component converges and holds it to the end, so a second operator's `apply` is refused,
/// naming the holder, before it inspects anything. The upgrade does not take it twice; it checks
/// that the lock file names this process, and refuses to change anything otherwise (an upgrade
/// started by a program that did not take the lock).
pub struct ApplyLock {
    pub cluster: Cluster,
}

/// This machine's name as lock records carry it.
fn this_machine() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether the host lock file's `text` names this process; the refusal names who it names.
pub fn held_by_this_process(text: &str, store: &str, operation: &str) -> Result<(), String> {
    match LockHolder::from_lines(text) {
        Some(holder) if holder.pid == std::process::id() && holder.machine == this_machine() => Ok(()),
        Some(holder) => Err(format!(
            "{operation} needs this run to hold the cluster lock, but {store} is held by {}",
            holder.describe(std::time::SystemTime::now())
        )),
        None => Err(format!(
            "{operation} needs this run to hold the cluster lock, but {store} holds none"
        )),
    }
}

#[async_trait]
impl UpgradeLock for ApplyLock {
    async fn acquire(&self, operation: &str) -> Result<(), String> {
        let mut errors = Vec::new();
        // The store `capstan apply` uses: the first host (inventory order) that accepts SSH.
        for host in &self.cluster.hosts {
            let transport = match SshTransport::connect(&ssh_target(host)).await {
                Ok(t) => t,
                Err(e) => {
                    errors.push(format!("{}: {e}", host.name));
                    continue;
                }
            };
            let read = transport
                .exec(
                    &format!("cat {HOST_LOCK_FILE} 2>/dev/null || true"),
                    &ExecOptions::default(),
                )
                .await;
            transport.close().await;
            let text = read.map_err(|e| format!("{}: reading {HOST_LOCK_FILE}: {e}", host.name))?;
            return held_by_this_process(
                &text.stdout_str(),
                &format!("{}:{HOST_LOCK_FILE}", host.name),
                operation,
            );
        }
        Err(format!(
            "cannot check the cluster lock: no host reachable ({})",
            errors.join("; ")
        ))
    }
    /// `capstan apply` releases it at its end.
    async fn release(&self) {}
}

pub(crate) struct UpgradePhase;

impl UpgradePhase {
    #[allow(clippy::result_large_err)] // the engine's phase error, as every phase returns it
    fn work(ctx: &PhaseContext<KubeRun>) -> Result<&UpgradeWork, PhaseError> {
        ctx.state
            .upgrade
            .as_ref()
            .ok_or_else(|| PhaseError::failed(PHASE, "no upgrade to run"))
    }
}

#[async_trait]
impl Phase<KubeRun> for UpgradePhase {
    fn name(&self) -> String {
        PHASE.into()
    }

    async fn should_run(&self, ctx: &PhaseContext<KubeRun>) -> Result<bool, PhaseError> {
        Ok(ctx.state.upgrade.is_some())
    }

    /// The order, one record per step on the host it changes.
    async fn dry_run(&self, ctx: &PhaseContext<KubeRun>) -> Result<(), PhaseError> {
        let work = Self::work(ctx)?;
        for (index, step) in work.order.iter().enumerate() {
            let summary = format!("step {} of {}: {}", index + 1, work.order.len(), step.summary);
            ctx.say(&format!("    {}: [would change] {summary}", step.host));
            ctx.record(
                PHASE,
                note(
                    &step.host,
                    &format!("upgrade {}", step.op),
                    summary,
                    Mode::DryRun,
                    Ok(()),
                    Duration::ZERO,
                ),
            );
        }
        Ok(())
    }

    async fn run(&self, ctx: &PhaseContext<KubeRun>) -> Result<(), PhaseError> {
        let work = Self::work(ctx)?;
        let api = ctx
            .state
            .api
            .client(&ctx.state.api.endpoint)
            .await
            .map_err(|e| PhaseError::failed(PHASE, e))?;
        let options = UpgradeOptions {
            target: work.target.clone(),
            order: work.hosts.clone(),
            control_plane: work.control_plane.clone(),
            batch_size: NODE_BATCH,
            drain_timeout: DRAIN_TIMEOUT,
            ready_timeout: READY_TIMEOUT,
        };
        let hosts = OpsUpgrades { ctx };
        let say = |line: &str| ctx.say(&format!("    {line}"));
        let lock = ApplyLock {
            cluster: ctx.state.cluster.clone(),
        };
        match upgrade(&hosts, &api, &lock, &options, &say).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let hint = e.hint().map(|h| format!(" ({h})")).unwrap_or_default();
                Err(PhaseError::failed(PHASE, format!("{e}{hint}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_provisioner::lock::LockMode;

    #[test]
    fn own_api_server_is_port_6444_of_the_host() {
        assert_eq!(own_api_server_url("10.0.0.11"), "https://10.0.0.11:6444");
        assert_eq!(own_api_server_url("fd00::11"), "https://[fd00::11]:6444");
    }

    #[test]
    fn the_upgrade_runs_only_under_this_process_lock() {
        let mine = LockHolder::this_process("capstan apply", LockMode::Change);
        let lines = |h: &LockHolder| {
            format!(
                "token={}\nmode=change\nuser={}\nmachine={}\ncommand={}\npid={}\nsince={}\nexpires=0\n",
                h.token, h.user, h.machine, h.command, h.pid, h.since
            )
        };
        assert_eq!(
            held_by_this_process(&lines(&mine), "cp1:/run/capstan/cluster.lock", "the upgrade"),
            Ok(())
        );
        let other = LockHolder {
            pid: mine.pid + 1,
            command: "capstan apply --only kubernetes".into(),
            ..mine.clone()
        };
        let refused = held_by_this_process(&lines(&other), "cp1:/run/capstan/cluster.lock", "the upgrade").unwrap_err();
        assert!(
            refused.starts_with(
                "the upgrade needs this run to hold the cluster lock, but cp1:/run/capstan/cluster.lock is held by"
            ) && refused.contains(&format!("(pid {})", other.pid))
                && refused.contains("capstan apply --only kubernetes"),
            "{refused}"
        );
        let none = held_by_this_process("", "cp1:/run/capstan/cluster.lock", "the upgrade").unwrap_err();
        assert!(none.ends_with("holds none"), "{none}");
    }

    #[test]
    fn a_plan_note_is_one_change_and_a_failed_step_one_failure() {
        let planned = note(
            "cp1",
            "upgrade backup",
            "backup".into(),
            Mode::DryRun,
            Ok(()),
            Duration::ZERO,
        );
        assert_eq!(planned.totals().changed, 1);
        let failed = note(
            "cp1",
            "upgrade backup",
            "backup".into(),
            Mode::Apply,
            Err("no target".into()),
            Duration::ZERO,
        );
        assert_eq!((failed.totals().failed, failed.failed_hosts()), (1, vec!["cp1"]));
    }
}
