//! `capstan apply` (and `plan`, the same path as a dry run) for etcd.
//!
//! A run first inspects every etcd host (one probe each), reads the CA from the members, decides
//! what the cluster needs and refuses unsafe changes before touching anything. Then ordered phases
//! run: bootstrap (no member has data yet), rolling converge of existing members, scale up one
//! member at a time, scale down one member at a time, and a final health check.
//!
//! Settings that only matter for a member's first start (`initial-cluster*`) are written when a
//! member is created and reused from its own config afterwards, so re-applying (or scaling other
//! members) never rewrites an initialised member's config and never restarts it.
//!
//! A change of `versions.etcd` is a rolling upgrade (or patch downgrade): decided and refused in
//! [`super::upgrade`] before anything changes, then carried out by the converge phase one member at
//! a time, followers first and the leader last, each gated on the member answering again and
//! running the new version.
//!
//! Layout: this file holds the run's state and [`apply`] itself; `plan` inspects and decides
//! (nothing changes there), `quorum` holds the pure membership arithmetic, and one file per phase
//! carries it out: `bootstrap`, `converge`, `scale` (up and down) and `verify`, dispatched from
//! `phases`, with the helpers they share in `run`.

// Errors carry whole messages (names, versions, what is available); a run produces a handful.
#![allow(clippy::result_large_err)]

mod bootstrap;
mod converge;
mod phases;
mod plan;
mod quorum;
mod run;
mod scale;
mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_inventory::Cluster;
use serde::Serialize;

use crate::client::{EtcdError, EtcdTls, Member as ListedMember};
use crate::config::{ConfigError, MemberSettings};
use crate::inspect::{EtcdHost, InspectError};
use crate::probe::BootstrapValues;
use crate::upgrade::{UpgradePlan, UpgradeRefusal};
use capstan_provisioner::hint::Hint;
use capstan_provisioner::ops::OpError;
use capstan_provisioner::phases::{PhaseContext, PhaseError, PhaseOutcome, PhaseRunner};
use capstan_provisioner::pki::{CertificateAuthority, IssuedCert, PkiError};
use capstan_provisioner::releases::{ReleaseError, ResolvedArtifact};
use capstan_provisioner::report::RunReport;
use capstan_provisioner::runner::{Mode, NoProgress, Progress, RunOptions, Runner};
use capstan_provisioner::transport::Transport;

pub use quorum::check_quorum;

pub(crate) const SERVICE: &str = "etcd";
pub(crate) const BIN_DIR: &str = "/usr/local/bin";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("cannot reach etcd host(s) {}: {detail}", hosts.join(", "))]
    Unreachable {
        hosts: Vec<String>,
        detail: String,
        hint: Option<&'static str>,
    },
    #[error("refusing to change the cluster: {reason}")]
    Refused { reason: String, hint: String },
    #[error("refusing to change the etcd version: {0}")]
    Upgrade(UpgradeRefusal),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Op(#[from] OpError),
}

impl Hint for ApplyError {
    fn hint(&self) -> Option<String> {
        match self {
            ApplyError::Unreachable { hint, .. } => Some(
                hint.unwrap_or("every host with role etcd must be reachable over SSH; check it with `capstan check`")
                    .to_string(),
            ),
            ApplyError::Refused { hint, .. } => Some(hint.clone()),
            ApplyError::Upgrade(refusal) => Some(refusal.hint()),
            ApplyError::Release(ReleaseError::UnpinnedVersion { .. }) => {
                Some("set versions.etcd to a pinned version, or point artifacts.mirror at a mirror that has it".into())
            }
            ApplyError::Release(ReleaseError::NotOnMirror { .. }) => Some(
                "pick a version the mirror has, or add the tarball and its line in SHA256SUMS to the mirror".into(),
            ),
            ApplyError::Etcd(_) => Some("check the members with `capstan status`".into()),
            _ => None,
        }
    }
}

/// How to run.
pub struct ApplyOptions {
    pub mode: Mode,
    pub concurrency: usize,
    pub progress: Arc<dyn Progress>,
    /// Phase headers and membership steps.
    pub out: Box<dyn Write + Send>,
    /// How long members get to become healthy after a start or restart.
    pub ready_timeout: Duration,
    /// The CA the members will hold when this run applies, used instead of reading (or
    /// generating) one: a restore's dry run plans with the backed-up CA it has not put there.
    pub planned_ca: Option<CertificateAuthority>,
}

impl ApplyOptions {
    pub fn new(mode: Mode) -> ApplyOptions {
        ApplyOptions {
            mode,
            concurrency: capstan_provisioner::runner::DEFAULT_CONCURRENCY,
            progress: Arc::new(NoProgress),
            out: Box::new(std::io::stderr()),
            ready_timeout: Duration::from_secs(120),
            planned_ca: None,
        }
    }
}

pub use capstan_provisioner::component::PhaseReport;

/// What a run did (or, as a plan, would do).
#[derive(Debug, Clone, Serialize)]
pub struct ApplyOutcome {
    pub mode: Mode,
    pub phases: Vec<PhaseOutcome>,
    pub reports: Vec<PhaseReport>,
    /// Every phase's records merged per host: what the summary table shows.
    pub summary: RunReport,
    pub error: Option<String>,
    #[serde(skip)]
    pub hint: Option<String>,
}

impl ApplyOutcome {
    pub fn success(&self) -> bool {
        self.error.is_none() && self.summary.success()
    }
}

/// Merge reports host by host (first appearance order), summing counts and times.
pub fn merge_reports(mode: Mode, reports: &[PhaseReport], elapsed: Duration) -> RunReport {
    let reports: Vec<&RunReport> = reports.iter().map(|r| &r.report).collect();
    RunReport::merged(mode, &reports, elapsed)
}

/// One inventory etcd member and what this run writes for it.
struct DesiredMember {
    host: EtcdHost,
    transport: Arc<dyn Transport>,
    has_data: bool,
    /// Replacement certificates, when the ones on the host no longer fit.
    server: Option<IssuedCert>,
    peer: Option<IssuedCert>,
    /// The host's current bootstrap values (reused while it is initialised).
    existing_values: Option<BootstrapValues>,
    artifact: ResolvedArtifact,
    tarball_members: Vec<String>,
}

impl DesiredMember {
    fn name(&self) -> &str {
        self.host.name()
    }
}

/// Membership as found, and what changes.
enum Membership {
    /// No member has data: all start together.
    Bootstrap,
    Existing {
        listed: Vec<ListedMember>,
        /// Inventory indices already members.
        current: Vec<usize>,
        /// Inventory indices to add, in order; with the id when already added but never started.
        add: Vec<(usize, Option<u64>)>,
        /// Members to remove, unhealthy ones first.
        remove: Vec<ListedMember>,
        healthy: BTreeSet<u64>,
    },
}

struct EtcdRun {
    cluster_name: String,
    members: Vec<DesiredMember>,
    settings: MemberSettings,
    ca: CertificateAuthority,
    tls: EtcdTls,
    token: String,
    membership: Membership,
    /// The version change of this run, when `versions.etcd` differs from what members run.
    upgrade: Option<UpgradePlan>,
    /// Members that were not healthy when the run started.
    down_at_start: BTreeSet<String>,
    /// What to do about a failure in the middle of a rollout (replaces the generic hint).
    failure_hint: Mutex<Option<String>>,
    /// Connections to hosts of members being removed that are still in the inventory.
    cleanup: BTreeMap<String, Arc<dyn Transport>>,
    reports: Mutex<Vec<PhaseReport>>,
    ready_timeout: Duration,
    /// Lines for the operator (phase details).
    notes: Mutex<Box<dyn Write + Send>>,
}

#[derive(Clone, Copy)]
enum StepKind {
    Bootstrap,
    Converge,
    ScaleUp,
    ScaleDown,
    Verify,
}

struct EtcdPhase(StepKind);

fn failed(phase: &str, reason: impl std::fmt::Display) -> PhaseError {
    PhaseError::Failed {
        phase: phase.to_string(),
        reason: reason.to_string(),
    }
}

/// Converge the inventory's etcd hosts (or, in [`Mode::DryRun`], show what that would change).
/// `Err` means nothing was changed (inspection failed or the change was refused); a failure
/// during the phases is reported in [`ApplyOutcome::error`].
pub async fn apply(cluster: &Cluster, mut options: ApplyOptions) -> Result<ApplyOutcome, ApplyError> {
    let started = Instant::now();
    let mode = options.mode;
    let (mut run, conns) = plan::prepare(cluster, &options).await?;
    let out = std::mem::replace(&mut options.out, Box::new(std::io::sink()));
    let (header_out, notes_out) = split_writer(out);
    run.notes = Mutex::new(notes_out);
    {
        let mut notes = run.notes.lock().unwrap_or_else(|p| p.into_inner());
        let _ = match &run.membership {
            Membership::Bootstrap => writeln!(
                notes,
                "etcd {} on {} hosts: no member has data yet, bootstrapping (token {})",
                cluster.versions.etcd,
                run.members.len(),
                run.token
            ),
            Membership::Existing {
                listed,
                add,
                remove,
                healthy,
                ..
            } => writeln!(
                notes,
                "etcd cluster of {} members ({} healthy): {} to add, {} to remove",
                listed.len(),
                healthy.len(),
                add.len(),
                remove.len()
            ),
        };
        if let Some(upgrade) = &run.upgrade {
            let leader = upgrade
                .leader
                .as_deref()
                .filter(|l| upgrade.member(l).is_some())
                .map(|l| format!(", the leader ({l}) last"))
                .unwrap_or_default();
            let _ = writeln!(
                notes,
                "etcd version change {} on {} of {} members: one at a time{leader}, each must be healthy on the new \
                 version before the next{}",
                upgrade.summary(),
                upgrade.members.len(),
                run.members.len(),
                match upgrade.cluster_version {
                    Some(c) => format!(" (cluster version {c})"),
                    None => String::new(),
                }
            );
        }
    }
    let runner = Runner::new(
        RunOptions {
            mode,
            concurrency: options.concurrency,
        },
        options.progress.clone(),
    );
    let ctx = PhaseContext::with_output(run, runner, header_out);
    let phases = PhaseRunner::new()
        .phase(EtcdPhase(StepKind::Bootstrap))
        .phase(EtcdPhase(StepKind::Converge))
        .phase(EtcdPhase(StepKind::ScaleUp))
        .phase(EtcdPhase(StepKind::ScaleDown))
        .phase(EtcdPhase(StepKind::Verify));
    let result = phases.run(&ctx).await;
    let cleanup: Vec<Arc<dyn Transport>> = ctx.state.cleanup.values().cloned().collect();
    futures::future::join_all(cleanup.iter().map(|t| t.close())).await;
    conns.close_all().await;
    let reports = ctx.state.reports.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let summary = merge_reports(mode, &reports, started.elapsed());
    let rollout_hint = ctx.state.failure_hint.lock().unwrap_or_else(|p| p.into_inner()).take();
    let hint = result.error.as_ref().map(|_| {
        rollout_hint.unwrap_or_else(|| {
            "run `capstan status` to see the members' state; fix the cause and run `capstan apply` again (it resumes)"
                .to_string()
        })
    });
    Ok(ApplyOutcome {
        mode,
        phases: result.phases,
        reports,
        summary,
        error: result.error.map(|e| e.to_string()),
        hint,
    })
}

/// Two handles writing to the same sink.
fn split_writer(out: Box<dyn Write + Send>) -> (Box<dyn Write + Send>, Box<dyn Write + Send>) {
    let shared = Arc::new(Mutex::new(out));
    (Box::new(SharedWriter(shared.clone())), Box::new(SharedWriter(shared)))
}

struct SharedWriter(Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_provisioner::report::{HostReport, OpRecord, OpStatus};

    #[test]
    fn reports_merge_per_host() {
        let rec = |status| OpRecord {
            op: "x".into(),
            status,
            changes: vec![],
            error: None,
            elapsed: Duration::from_secs(1),
        };
        let report = |hosts: Vec<(&str, OpStatus)>| RunReport {
            mode: Mode::Apply,
            hosts: hosts
                .into_iter()
                .map(|(h, s)| {
                    let mut r = HostReport::new(h);
                    r.push(rec(s));
                    r.elapsed = Duration::from_secs(1);
                    r
                })
                .collect(),
            elapsed: Duration::from_secs(1),
        };
        let merged = merge_reports(
            Mode::Apply,
            &[
                PhaseReport {
                    phase: "a".into(),
                    report: report(vec![("n1", OpStatus::Ok), ("n2", OpStatus::Changed)]),
                },
                PhaseReport {
                    phase: "b".into(),
                    report: report(vec![("n2", OpStatus::Ok), ("n3", OpStatus::Failed)]),
                },
            ],
            Duration::from_secs(3),
        );
        let rows: Vec<(String, usize, usize, usize)> = merged
            .hosts
            .iter()
            .map(|h| (h.host.clone(), h.ok, h.changed, h.failed))
            .collect();
        assert_eq!(
            rows,
            [
                ("n1".to_string(), 1, 0, 0),
                ("n2".to_string(), 1, 1, 0),
                ("n3".to_string(), 0, 0, 1)
            ]
        );
        assert_eq!(merged.hosts[1].elapsed, Duration::from_secs(2));
    }
}
