//! Restoring an etcd snapshot onto the inventory's etcd hosts (`capstan restore`), and checking
//! the restored cluster.
//!
//! The restore reuses `apply` for everything but the data: the backed-up CA is put on the members
//! first, so `apply` installs binaries, issues member certificates for the new addresses from that
//! CA, writes configs and units and bootstraps an empty cluster (with a fresh token). Then every
//! member's data dir is replaced by `snapshot restore` of the same file, with that config's
//! initial cluster and token, so the configs `apply` keeps on later runs match the data. A second
//! `apply` converges (it should change nothing) and the result is verified.
//!
//! Re-running converges: a marker next to the data dir (`<data_dir>.capstan-restore`) records the
//! backup id and whether the member was restored; marked members are never restored twice, and
//! their data is never mistaken for someone else's.
//!
//! Every change on a member is an operation run phase by phase through the engine's runner (and
//! `apply` runs in the restore's mode), so a dry run (`RestoreOptions::mode`) goes through the same
//! code, prints every change and changes nothing; what needs the outcome of those changes (health
//! gate, converge, verification) is named instead of run. Reads (inspection, markers, configs, tool
//! detection) run as plain commands in both modes.
//!
//! Layout: the types and options here; the steps in order in `run` (with the larger ones and the
//! remote helpers in `steps`); the phases and the restore's own ops in `ops`; the pure scripts,
//! markers and tool detection in `scripts`; and the checks of the restored cluster in `verify`.

#![allow(clippy::result_large_err)]

mod ops;
mod run;
mod scripts;
mod steps;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::apply::PhaseReport;
use crate::client::EtcdError;
use crate::inspect::InspectError;
use capstan_provisioner::pki::PkiError;
use capstan_provisioner::report::{Reporter, RunReport};
use capstan_provisioner::runner::{Mode, NoProgress, Progress};
use capstan_provisioner::upload::UploadError;

pub use run::restore;
pub use verify::{check_keys, verify_members, wait_healthy, Check, KeyCheck, MemberCheck, Verification};

/// Where snapshots are uploaded on the members (removed after a successful restore).
pub(crate) const STAGING_DIR: &str = "/var/lib/capstan-restore";
/// Where `--force` keeps safety snapshots of what was there before.
pub(crate) const SAFETY_DIR: &str = "/var/lib/capstan-safety";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    InvalidOptions(String),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("cannot reach etcd host(s) {}: {detail}", hosts.join(", "))]
    Unreachable { hosts: Vec<String>, detail: String },
    #[error("refusing to restore: {}", describe_occupied(.0))]
    Occupied(Vec<OccupiedHost>),
    #[error("{host}: {step}: {reason}")]
    Remote { host: String, step: String, reason: String },
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error("apply ({stage}) failed: {reason}")]
    Apply { stage: &'static str, reason: String },
    #[error("the members' configs disagree on the initial cluster or token ({detail}); run `capstan apply` first or restore again with --force")]
    InconsistentConfig { detail: String },
    #[error("the restored cluster did not become healthy within {}s: {detail}", .after.as_secs())]
    NotHealthy { after: Duration, detail: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

impl RestoreError {
    pub fn hint(&self) -> Option<String> {
        match self {
            RestoreError::InvalidOptions(_) => Some(
                "pass --bump-revision N (N > 0) together with --mark-compacted, or neither: etcd accepts them \
                 only together"
                    .into(),
            ),
            RestoreError::Occupied(_) => Some(
                "restore onto empty hosts, or pass --force to replace that data (a safety snapshot of it is \
                 taken first, into /var/lib/capstan-safety on each host)"
                    .into(),
            ),
            RestoreError::Unreachable { .. } => {
                Some("every etcd host must be reachable; check with `capstan check`".into())
            }
            RestoreError::NotHealthy { .. } | RestoreError::Remote { .. } | RestoreError::Apply { .. } => {
                Some("fix the cause, then run the same restore again: it continues where it stopped".into())
            }
            _ => None,
        }
    }
}

/// A host that holds etcd data from something other than this restore.
#[derive(Debug, Clone, Serialize)]
pub struct OccupiedHost {
    pub host: String,
    pub running: bool,
    /// The backup an earlier restore put there, if any.
    pub restored_from: Option<String>,
}

fn describe_occupied(hosts: &[OccupiedHost]) -> String {
    let parts: Vec<String> = hosts
        .iter()
        .map(|h| {
            let what = if h.running {
                "runs etcd with data"
            } else {
                "has etcd data"
            };
            match &h.restored_from {
                Some(id) => format!("{} {what} (restored from backup {id})", h.host),
                None => format!("{} {what}", h.host),
            }
        })
        .collect();
    parts.join("; ")
}

/// What to restore: the plaintext snapshot on this machine and the backed-up CA.
pub struct RestoreInput {
    pub backup_id: String,
    pub snapshot_path: PathBuf,
    pub snapshot_sha256: String,
    pub ca_cert_pem: String,
    /// Never logged.
    pub ca_key_pem: String,
    /// The manifest's revision: the restored store must be at least this new.
    pub manifest_revision: i64,
}

pub struct RestoreOptions {
    /// `Mode::DryRun` inspects the members and shows every change the restore would make, through
    /// the same phases and ops, and changes nothing.
    pub mode: Mode,
    pub force: bool,
    pub bump_revision: Option<u64>,
    pub mark_compacted: bool,
    pub concurrency: usize,
    pub progress: Arc<dyn Progress>,
    /// Step lines for the operator.
    /// Step lines, and those of the applies the restore runs (a sink with `-q`).
    pub out: Reporter,
    pub ready_timeout: Duration,
}

impl RestoreOptions {
    pub fn new() -> RestoreOptions {
        RestoreOptions {
            mode: Mode::Apply,
            force: false,
            bump_revision: None,
            mark_compacted: false,
            concurrency: capstan_provisioner::runner::DEFAULT_CONCURRENCY,
            progress: Arc::new(NoProgress),
            out: Reporter::stderr(),
            ready_timeout: Duration::from_secs(120),
        }
    }
}

impl RestoreOptions {
    /// etcd's `snapshot restore` (3.5.10+) refuses `--bump-revision N` without `--mark-compacted`
    /// and the reverse, so both or neither; checked before anything is downloaded or changed.
    pub fn validate(&self) -> Result<(), RestoreError> {
        match (self.bump_revision.filter(|n| *n > 0), self.mark_compacted) {
            (Some(n), false) => Err(RestoreError::InvalidOptions(format!(
                "--bump-revision {n} needs --mark-compacted"
            ))),
            (None, true) => Err(RestoreError::InvalidOptions(
                "--mark-compacted needs --bump-revision N with N > 0".into(),
            )),
            _ => Ok(()),
        }
    }

    fn bump(&self) -> Option<u64> {
        self.bump_revision.filter(|n| *n > 0)
    }
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    pub step: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberRestore {
    pub host: String,
    /// `restored`, or `already restored` (an earlier run did it).
    pub action: String,
    /// What `--force` kept of this host's previous etcd (to roll back with; see docs/restore.md).
    pub before_restore: Option<KeptBeforeRestore>,
}

/// Where `--force` put a host's previous etcd state before restoring over it.
#[derive(Debug, Clone, Serialize)]
pub struct KeptBeforeRestore {
    /// `etcdctl snapshot save` of the running member, taken before any member was stopped;
    /// none when etcd was not running there.
    pub safety_snapshot: Option<String>,
    /// The previous data dir, moved aside whole (member id, WAL and all).
    pub data_dir: String,
    /// The previous etcd config, moved aside.
    pub config: Option<String>,
    /// A copy of the previous PKI dir (the restore puts the backed-up CA in its place).
    pub pki_dir: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    pub backup_id: String,
    pub mode: Mode,
    pub token: String,
    pub tool: String,
    pub members: Vec<MemberRestore>,
    pub steps: Vec<StepTiming>,
    pub notes: Vec<String>,
    /// A dry run's steps that need the outcome of changes it does not make (health gate,
    /// converge, verification): what would run.
    pub not_run: Vec<String>,
    /// Not checked in a dry run (empty, not ok).
    pub verification: Verification,
    /// Every phase's changes (in a dry run: what would change), the restore's and its `apply`'s.
    pub reports: Vec<PhaseReport>,
    /// The phases' records merged per host.
    pub summary: RunReport,
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_revision_and_mark_compacted_go_together() {
        let with = |bump: Option<u64>, mark: bool| RestoreOptions {
            bump_revision: bump,
            mark_compacted: mark,
            ..RestoreOptions::new()
        };
        assert!(with(None, false).validate().is_ok());
        assert!(with(Some(0), false).validate().is_ok());
        assert!(with(Some(1000), true).validate().is_ok());
        let err = with(Some(1000), false).validate().unwrap_err();
        assert_eq!(err.to_string(), "--bump-revision 1000 needs --mark-compacted");
        assert!(err.hint().unwrap().contains("together"));
        let err = with(None, true).validate().unwrap_err();
        assert!(
            err.to_string().contains("--mark-compacted needs --bump-revision"),
            "{err}"
        );
        assert!(with(Some(0), true).validate().is_err());
    }
}
