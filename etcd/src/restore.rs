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

#![allow(clippy::result_large_err)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use capstan_inventory::Cluster;
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use serde::{Deserialize, Serialize};

use super::apply::{apply, ApplyError, ApplyOptions};
use super::client::{error_chain, poll_until, EtcdClient, EtcdEndpoint, EtcdError, EtcdTls, Timeouts};
use super::config::{DEFAULT_CONFIG_FILE, DEFAULT_PKI_DIR};
use super::inspect::{admin_tls, inspect_hosts, pki_paths, EtcdHost, InspectError};
use super::probe::{parse_bootstrap_values, probe_member};
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::pki::{CertificateAuthority, PkiError};
use capstan_provisioner::runner::{Mode, NoProgress, Progress};
use capstan_provisioner::transport::{ExecOptions, RemoteFile, Transport};
use capstan_provisioner::upload::{upload_file, UploadError};

/// Where snapshots are uploaded on the members (removed after a successful restore).
const STAGING_DIR: &str = "/var/lib/capstan-restore";
/// Where `--force` keeps safety snapshots of what was there before.
const SAFETY_DIR: &str = "/var/lib/capstan-safety";

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
    pub force: bool,
    pub bump_revision: Option<u64>,
    pub mark_compacted: bool,
    pub concurrency: usize,
    pub progress: Arc<dyn Progress>,
    /// Step lines for the operator.
    pub out: Box<dyn Write + Send>,
    pub ready_timeout: Duration,
}

impl RestoreOptions {
    pub fn new() -> RestoreOptions {
        RestoreOptions {
            force: false,
            bump_revision: None,
            mark_compacted: false,
            concurrency: capstan_provisioner::runner::DEFAULT_CONCURRENCY,
            progress: Arc::new(NoProgress),
            out: Box::new(std::io::stderr()),
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
    pub token: String,
    pub tool: String,
    pub members: Vec<MemberRestore>,
    pub steps: Vec<StepTiming>,
    pub notes: Vec<String>,
    pub verification: Verification,
    pub seconds: f64,
}

/// Per-member facts read after the restore.
#[derive(Debug, Clone, Serialize)]
pub struct MemberCheck {
    pub name: String,
    pub endpoint: String,
    pub healthy: bool,
    pub leader: bool,
    pub revision: Option<i64>,
    pub key_count: Option<i64>,
    pub hash_kv: Option<u32>,
    pub compact_revision: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub members: Vec<MemberCheck>,
    /// The revision the hashes and counts were compared at (the lowest member revision).
    pub compared_at_revision: Option<i64>,
    pub checks: Vec<Check>,
    pub ok: bool,
}

/// The marker next to a member's data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    backup_id: String,
    restored: bool,
}

fn marker_path(data_dir: &str) -> String {
    format!("{}.capstan-restore", data_dir.trim_end_matches('/'))
}

fn parse_marker(text: &str) -> Option<Marker> {
    serde_json::from_str(text.trim()).ok()
}

/// Which tool restores snapshots on a member, from `detect_tool_script`'s output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RestoreTool {
    command: String,
    name: &'static str,
    /// `snapshot restore` defines both `--bump-revision` and `--mark-compacted` (etcd 3.5.10+).
    bump_revision: bool,
}

/// Separates the tool's name from its `snapshot restore --help` text in the detection output.
const HELP_MARK: &str = "@@capstan:help";

/// Prints the tool's name, then its raw `snapshot restore --help`: support for the revision
/// flags is decided by `parse_tool` from that text, not by a remote grep.
fn detect_tool_script() -> String {
    format!(
        "if [ -x /usr/local/bin/etcdutl ]; then echo etcdutl; echo {HELP_MARK}; \
         /usr/local/bin/etcdutl snapshot restore --help 2>&1 || true; \
         elif [ -x /usr/local/bin/etcdctl ]; then echo etcdctl; echo {HELP_MARK}; \
         ETCDCTL_API=3 /usr/local/bin/etcdctl snapshot restore --help 2>&1 || true; \
         else echo none; fi"
    )
}

fn parse_tool(output: &str) -> Option<RestoreTool> {
    let (head, help) = output.split_once(HELP_MARK).unwrap_or((output, ""));
    let (command, name) = match head.trim() {
        "etcdutl" => ("/usr/local/bin/etcdutl".to_string(), "etcdutl"),
        "etcdctl" => ("ETCDCTL_API=3 /usr/local/bin/etcdctl".to_string(), "etcdctl"),
        _ => return None,
    };
    Some(RestoreTool {
        command,
        name,
        bump_revision: defines_flag(help, "--bump-revision") && defines_flag(help, "--mark-compacted"),
    })
}

/// Whether a cobra help text defines `flag` as an option: a line that starts (after indentation
/// and an optional `-x, ` short form) with the flag, followed by its type (etcdutl: `--flag int`),
/// default (etcdctl 3.4: `--flag=""`) or nothing. A mention elsewhere (a description, an
/// "unknown flag" error) does not count, so an unsupported tool is never taken for a supporting one.
fn defines_flag(help: &str, flag: &str) -> bool {
    help.lines().any(|line| {
        let line = line.trim_start();
        let bytes = line.as_bytes();
        let line = if bytes.len() > 4 && bytes[0] == b'-' && bytes[1] != b'-' && &line[2..4] == ", " {
            &line[4..]
        } else {
            line
        };
        line.strip_prefix(flag)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '=', '[']))
    })
}

/// The shell script that replaces `data_dir` with the restored snapshot and marks it.
#[allow(clippy::too_many_arguments)] // one command line's arguments, spelled out
fn restore_script(
    tool: &RestoreTool,
    snapshot: &str,
    data_dir: &str,
    name: &str,
    initial_cluster: &str,
    token: &str,
    peer_url: &str,
    bump: Option<(u64, bool)>,
    marker: &Marker,
) -> String {
    let data_dir = data_dir.trim_end_matches('/');
    let staging = format!("{data_dir}.restoring");
    let mut restore = format!(
        "{} snapshot restore {} --name {} --initial-cluster {} --initial-cluster-token {} \
         --initial-advertise-peer-urls {} --data-dir {}",
        tool.command,
        quote(snapshot),
        quote(name),
        quote(initial_cluster),
        quote(token),
        quote(peer_url),
        quote(&staging)
    );
    if let Some((revisions, mark_compacted)) = bump {
        restore.push_str(&format!(" --bump-revision {revisions}"));
        if mark_compacted {
            restore.push_str(" --mark-compacted");
        }
    }
    let marker_file = marker_path(data_dir);
    let marker_json = serde_json::to_string(marker).unwrap_or_default();
    format!(
        "set -e\nrm -rf -- {staging_q}\n{restore} >/dev/null\nrm -rf -- {data_q}\nmv -- {staging_q} {data_q}\n\
         chmod 700 {data_q}\nprintf '%s\\n' {marker_q} > {marker_tmp}\nmv -- {marker_tmp} {marker_file_q}\n",
        staging_q = quote(&staging),
        data_q = quote(data_dir),
        marker_q = quote(&marker_json),
        marker_tmp = quote(&format!("{marker_file}.tmp")),
        marker_file_q = quote(&marker_file),
    )
}

/// Saves a snapshot of the local member to `snapshot` (0600) and prints `saved`, when etcd runs.
fn safety_snapshot_script(pki: &super::config::PkiPaths, snapshot: &str) -> String {
    format!(
        "set -e\nmkdir -p -m 0700 {SAFETY_DIR}\n\
         if systemctl is-active -q etcd; then\n  ETCDCTL_API=3 /usr/local/bin/etcdctl --endpoints https://127.0.0.1:2379 \
         --cacert {ca} --cert {cert} --key {key} --command-timeout 300s snapshot save {snap} >/dev/null\n  \
         chmod 600 {snap}\n  echo saved\nfi\n",
        ca = quote(&pki.ca_file),
        cert = quote(&pki.peer_cert_file),
        key = quote(&pki.peer_key_file),
        snap = quote(snapshot),
    )
}

/// Stops etcd and moves the data dir and config aside (suffix `.before-restore-<stamp>`), copies
/// the PKI dir, removes the restore marker; prints what it kept (`config`, `pki`).
fn move_aside_script(data_dir: &str, marker_file: &str, stamp: u64) -> String {
    let suffix = format!(".before-restore-{stamp}");
    format!(
        "set -e\nsystemctl stop etcd 2>/dev/null || true\nmv -- {dd} {dd_kept}\n\
         if [ -e {config} ]; then mv -- {config} {config_kept}; echo config; fi\n\
         if [ -d {pki} ]; then rm -rf -- {pki_kept}; cp -a -- {pki} {pki_kept}; echo pki; fi\n\
         rm -f -- {marker}\n",
        dd = quote(data_dir),
        dd_kept = quote(&format!("{data_dir}{suffix}")),
        config = quote(DEFAULT_CONFIG_FILE),
        config_kept = quote(&format!("{DEFAULT_CONFIG_FILE}{suffix}")),
        pki = quote(DEFAULT_PKI_DIR),
        pki_kept = quote(&format!("{DEFAULT_PKI_DIR}{suffix}")),
        marker = quote(marker_file),
    )
}

fn parse_moved_aside(output: &str, data_dir: &str, stamp: u64, safety_snapshot: Option<String>) -> KeptBeforeRestore {
    let suffix = format!(".before-restore-{stamp}");
    let said = |word: &str| output.lines().any(|l| l.trim() == word);
    KeptBeforeRestore {
        safety_snapshot,
        data_dir: format!("{data_dir}{suffix}"),
        config: said("config").then(|| format!("{DEFAULT_CONFIG_FILE}{suffix}")),
        pki_dir: said("pki").then(|| format!("{DEFAULT_PKI_DIR}{suffix}")),
    }
}

struct Ctx {
    started: Instant,
    steps: Vec<StepTiming>,
    notes: Vec<String>,
    out: Box<dyn Write + Send>,
}

impl Ctx {
    fn say(&mut self, line: &str) {
        let _ = writeln!(self.out, "==> restore: {line}");
    }
    fn note(&mut self, line: String) {
        let _ = writeln!(self.out, "    note: {line}");
        self.notes.push(line);
    }
    fn step(&mut self, step: &str, since: Instant) {
        self.steps.push(StepTiming {
            step: step.to_string(),
            seconds: since.elapsed().as_secs_f64(),
        });
    }
}

async fn run(t: &dyn Transport, step: &str, command: &str, timeout: Duration) -> Result<String, RestoreError> {
    let opts = ExecOptions {
        timeout,
        privileged: true,
    };
    let out = t.exec(command, &opts).await.map_err(|e| RestoreError::Remote {
        host: t.host().to_string(),
        step: step.to_string(),
        reason: e.to_string(),
    })?;
    if !out.success() {
        return Err(RestoreError::Remote {
            host: t.host().to_string(),
            step: step.to_string(),
            reason: format!(
                "exit {}: {}",
                out.exit_code.map_or_else(|| "by signal".into(), |c| c.to_string()),
                out.stderr_str().trim()
            ),
        });
    }
    Ok(out.stdout_str())
}

fn transport(host: &EtcdHost) -> Arc<dyn Transport> {
    host.transport
        .clone()
        .expect("unreachable hosts are refused before this")
}

async fn try_all<T>(
    futures: impl IntoIterator<Item = impl std::future::Future<Output = Result<T, RestoreError>>>,
) -> Result<Vec<T>, RestoreError> {
    futures::future::join_all(futures).await.into_iter().collect()
}

fn apply_options(options: &RestoreOptions) -> ApplyOptions {
    let mut apply_options = ApplyOptions::new(Mode::Apply);
    apply_options.concurrency = options.concurrency;
    apply_options.progress = options.progress.clone();
    apply_options.out = Box::new(std::io::stderr());
    apply_options.ready_timeout = options.ready_timeout;
    apply_options
}

async fn run_apply(cluster: &Cluster, options: &RestoreOptions, stage: &'static str) -> Result<(), RestoreError> {
    let outcome = apply(cluster, apply_options(options))
        .await
        .map_err(|e: ApplyError| RestoreError::Apply {
            stage,
            reason: match e.hint() {
                Some(hint) => format!("{e} (hint: {hint})"),
                None => e.to_string(),
            },
        })?;
    if !outcome.success() {
        return Err(RestoreError::Apply {
            stage,
            reason: outcome
                .error
                .clone()
                .unwrap_or_else(|| format!("failed on {}", outcome.summary.failed_hosts().join(", "))),
        });
    }
    Ok(())
}

/// Restore `input` onto the inventory's etcd hosts; see the module docs for the steps.
pub async fn restore(
    cluster: &Cluster,
    input: &RestoreInput,
    mut options: RestoreOptions,
) -> Result<RestoreOutcome, RestoreError> {
    options.validate()?;
    let out = std::mem::replace(&mut options.out, Box::new(std::io::sink()));
    let mut ctx = Ctx {
        started: Instant::now(),
        steps: Vec::new(),
        notes: Vec::new(),
        out,
    };
    let data_dir = cluster.etcd.data_dir.display().to_string();
    let marker_file = marker_path(&data_dir);

    // 1. Inspect: reachability, data, markers.
    let since = Instant::now();
    ctx.say(&format!(
        "inspecting {} etcd host(s)",
        cluster.hosts_with_role(capstan_inventory::Role::Etcd).count()
    ));
    let (hosts, _conns) = inspect_hosts(cluster, options.concurrency, None).await?;
    let failed: Vec<&EtcdHost> = hosts
        .iter()
        .filter(|h| h.transport.is_none() || h.probe.is_none())
        .collect();
    if !failed.is_empty() {
        return Err(RestoreError::Unreachable {
            hosts: failed.iter().map(|h| h.name().to_string()).collect(),
            detail: failed
                .iter()
                .map(|h| {
                    h.connect_error
                        .clone()
                        .or_else(|| h.probe_error.clone())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    let markers = try_all(hosts.iter().map(|h| {
        let marker_file = marker_file.clone();
        async move {
            let text = run(
                transport(h).as_ref(),
                "reading the restore marker",
                &format!("cat -- {} 2>/dev/null || true", quote(&marker_file)),
                Duration::from_secs(30),
            )
            .await?;
            Ok(parse_marker(&text))
        }
    }))
    .await?;
    let ours = |m: &Option<Marker>| m.as_ref().is_some_and(|m| m.backup_id == input.backup_id);
    let occupied: Vec<OccupiedHost> = hosts
        .iter()
        .zip(&markers)
        .filter(|(h, m)| h.probe.as_ref().is_some_and(|p| p.has_data) && !ours(m))
        .map(|(h, m)| OccupiedHost {
            host: h.name().to_string(),
            running: h.probe.as_ref().is_some_and(|p| p.active),
            restored_from: m.as_ref().map(|m| m.backup_id.clone()),
        })
        .collect();
    ctx.step("inspect", since);

    // 2. Refuse, or (with --force) keep everything that is there: safety snapshots of every
    //    running member first, while the old cluster is whole (a failure here has stopped
    //    nothing); then each host's data dir and config are moved aside and its PKI copied.
    let mut kept: Vec<(String, KeptBeforeRestore)> = Vec::new();
    if !occupied.is_empty() {
        if !options.force {
            return Err(RestoreError::Occupied(occupied));
        }
        let since = Instant::now();
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let occupants: Vec<&EtcdHost> = occupied
            .iter()
            .filter_map(|o| hosts.iter().find(|h| h.name() == o.host))
            .collect();
        ctx.say(&format!(
            "--force: keeping the previous etcd state of {} host(s) (safety snapshots into {SAFETY_DIR})",
            occupants.len()
        ));
        let pki = pki_paths();
        let snapshots = try_all(occupants.iter().map(|h| {
            let snapshot = format!("{SAFETY_DIR}/{}-{stamp}.db", h.name());
            let script = safety_snapshot_script(&pki, &snapshot);
            async move {
                let saved = run(
                    transport(h).as_ref(),
                    "safety snapshot (etcdctl snapshot save)",
                    &script,
                    Duration::from_secs(600),
                )
                .await?;
                Ok(saved.lines().any(|l| l.trim() == "saved").then_some(snapshot))
            }
        }))
        .await?;
        let data_dir_trimmed = data_dir.trim_end_matches('/').to_string();
        let moved = try_all(occupants.iter().map(|h| {
            let script = move_aside_script(&data_dir_trimmed, &marker_file, stamp);
            async move {
                run(
                    transport(h).as_ref(),
                    "moving the previous etcd state aside",
                    &script,
                    Duration::from_secs(120),
                )
                .await
            }
        }))
        .await?;
        for ((host, snapshot), moved) in occupants.iter().zip(snapshots).zip(moved) {
            let kept_here = parse_moved_aside(&moved, &data_dir_trimmed, stamp, snapshot);
            ctx.say(&format!(
                "{}: safety snapshot {}, previous data dir kept as {}",
                host.name(),
                kept_here
                    .safety_snapshot
                    .as_deref()
                    .unwrap_or("none (etcd was not running)"),
                kept_here.data_dir
            ));
            if kept_here.safety_snapshot.is_none() {
                ctx.note(format!(
                    "{}: etcd was not running, so no safety snapshot was taken; the previous data dir is kept as {}",
                    host.name(),
                    kept_here.data_dir
                ));
            }
            kept.push((host.name().to_string(), kept_here));
        }
        ctx.step("safety snapshots", since);
    }

    // 3. The backed-up CA on every member, so `apply` issues member certificates from it; and
    //    the marker that says this host's data is this restore's.
    let since = Instant::now();
    ctx.say("putting the backed-up CA on every member");
    let pki = pki_paths();
    let prepared = Marker {
        backup_id: input.backup_id.clone(),
        restored: false,
    };
    try_all(hosts.iter().zip(&markers).map(|(h, marker)| {
        let pki = &pki;
        let marker_file = &marker_file;
        let prepared = &prepared;
        async move {
            let t = transport(h);
            let pki_dir = pki
                .ca_file
                .rsplit_once('/')
                .map(|(d, _)| d)
                .unwrap_or("/etc/etcd/pki")
                .to_string();
            run(
                t.as_ref(),
                "creating the PKI dir",
                &format!("mkdir -p {0} && chmod 700 {0}", quote(&pki_dir)),
                Duration::from_secs(30),
            )
            .await?;
            for (path, pem, mode) in [
                (&pki.ca_file, &input.ca_cert_pem, 0o644),
                (&super::probe::ca_key_path(pki), &input.ca_key_pem, 0o600),
            ] {
                let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(pem.as_bytes()));
                let file = RemoteFile {
                    path: path.clone(),
                    mode,
                    owner: Some("root".into()),
                    group: Some("root".into()),
                };
                upload_file(t.as_ref(), pem.as_bytes(), &sha, &file).await?;
            }
            if marker.as_ref().is_none_or(|m| m.backup_id != prepared.backup_id) {
                let json = serde_json::to_string(prepared).unwrap_or_default();
                run(
                    t.as_ref(),
                    "writing the restore marker",
                    &format!(
                        "mkdir -p -- \"$(dirname {0})\" && printf '%s\\n' {1} > {0}",
                        quote(marker_file),
                        quote(&json)
                    ),
                    Duration::from_secs(30),
                )
                .await?;
            }
            Ok(())
        }
    }))
    .await?;
    let mut restored_before: Vec<bool> = markers
        .iter()
        .map(|m| m.as_ref().is_some_and(|m| m.backup_id == input.backup_id && m.restored))
        .collect();
    // A marker written by --force's clearing was removed with the data: those hosts start over.
    for (host, restored) in hosts.iter().zip(restored_before.iter_mut()) {
        if occupied.iter().any(|o| o.host == host.name()) {
            *restored = false;
        }
    }
    ctx.step("ca", since);

    // 4. Binaries, certificates, configs and units through `apply`, which bootstraps an empty
    //    cluster with a fresh token. Skipped once any member holds restored data (a re-run).
    if !restored_before.iter().any(|r| *r) {
        let since = Instant::now();
        // Data of an earlier, interrupted attempt (its empty bootstrap) is worthless: start clean.
        let leftovers: Vec<&EtcdHost> = hosts
            .iter()
            .zip(&markers)
            .filter(|(h, m)| ours(m) && h.probe.as_ref().is_some_and(|p| p.has_data))
            .map(|(h, _)| h)
            .collect();
        for host in leftovers {
            run(
                transport(host).as_ref(),
                "clearing an interrupted attempt's data",
                &format!(
                    "systemctl stop etcd 2>/dev/null || true; rm -rf -- {}",
                    quote(data_dir.trim_end_matches('/'))
                ),
                Duration::from_secs(120),
            )
            .await?;
        }
        ctx.say("installing etcd and configuring members (capstan apply)");
        run_apply(cluster, &options, "install").await?;
        ctx.step("install (apply)", since);
    } else {
        ctx.say("members already hold restored data from an earlier run: continuing with the others");
    }

    // 5. The initial cluster and token `apply` wrote (and keeps): the restore must use the same.
    let since = Instant::now();
    let probes = try_all(hosts.iter().map(|h| {
        let data_dir = &data_dir;
        let pki = &pki;
        async move {
            probe_member(transport(h).as_ref(), data_dir, pki)
                .await
                .map_err(|e| RestoreError::Remote {
                    host: h.name().to_string(),
                    step: "probing the member".into(),
                    reason: e.to_string(),
                })
        }
    }))
    .await?;
    let values: Vec<_> = probes
        .iter()
        .zip(&hosts)
        .map(|(p, h)| {
            (
                h.name().to_string(),
                p.config.as_deref().and_then(parse_bootstrap_values),
            )
        })
        .collect();
    let missing: Vec<&str> = values
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(RestoreError::InconsistentConfig {
            detail: format!("no capstan config on {}", missing.join(", ")),
        });
    }
    let first = values[0].1.clone().expect("checked");
    if let Some((name, _)) = values.iter().find(|(_, v)| {
        v.as_ref().is_some_and(|v| {
            v.initial_cluster_token != first.initial_cluster_token || v.initial_cluster != first.initial_cluster
        })
    }) {
        return Err(RestoreError::InconsistentConfig {
            detail: format!("{name} differs from {}", values[0].0),
        });
    }
    let token = first.initial_cluster_token.clone();
    let initial_cluster = first.initial_cluster.clone();

    // Every member is asked (a mixed install must not pass for a supporting one).
    let tools = try_all(hosts.iter().map(|h| async move {
        let output = run(
            transport(h).as_ref(),
            "detecting the restore tool",
            &detect_tool_script(),
            Duration::from_secs(30),
        )
        .await?;
        parse_tool(&output).ok_or_else(|| RestoreError::Remote {
            host: h.name().to_string(),
            step: "detecting the restore tool".into(),
            reason: "neither /usr/local/bin/etcdutl nor /usr/local/bin/etcdctl is installed".into(),
        })
    }))
    .await?;
    if let Some((i, other)) = tools.iter().enumerate().find(|(_, t)| t.name != tools[0].name) {
        return Err(RestoreError::Remote {
            host: hosts[i].name().to_string(),
            step: "detecting the restore tool".into(),
            reason: format!(
                "it has {} but {} has {}; run `capstan apply` so every member runs etcd {}",
                other.name,
                hosts[0].name(),
                tools[0].name,
                cluster.versions.etcd
            ),
        });
    }
    let mut tool = tools[0].clone();
    tool.bump_revision = tools.iter().all(|t| t.bump_revision);
    let bump = match options.bump() {
        Some(n) if tool.bump_revision => Some((n, options.mark_compacted)),
        Some(n) => {
            ctx.note(format!(
                "--bump-revision {n} --mark-compacted is not supported by {} of etcd {} (it needs etcd 3.5.10 \
                 or newer): restored without it, so the revision is the backup's",
                tool.name, cluster.versions.etcd
            ));
            None
        }
        None => None,
    };

    // 6. Upload the snapshot, stop every member, restore the ones not yet restored.
    let todo: Vec<usize> = (0..hosts.len()).filter(|i| !restored_before[*i]).collect();
    let remote_snapshot = format!("{STAGING_DIR}/{}/snapshot.db", input.backup_id);
    ctx.say(&format!(
        "uploading the snapshot to {} member(s) and restoring with {} (token {token})",
        todo.len(),
        tool.name
    ));
    let all_hosts = &hosts;
    try_all(todo.iter().map(|&i| {
        let remote_snapshot = &remote_snapshot;
        async move {
            let hosts = all_hosts;
            let t = transport(&hosts[i]);
            let file = tokio::fs::File::open(&input.snapshot_path)
                .await
                .map_err(|e| RestoreError::Remote {
                    host: hosts[i].name().to_string(),
                    step: "reading the local snapshot".into(),
                    reason: format!("{}: {e}", input.snapshot_path.display()),
                })?;
            let dest = RemoteFile {
                path: remote_snapshot.clone(),
                mode: 0o600,
                owner: Some("root".into()),
                group: Some("root".into()),
            };
            upload_file(
                t.as_ref(),
                tokio::io::BufReader::new(file),
                &input.snapshot_sha256,
                &dest,
            )
            .await?;
            Ok(())
        }
    }))
    .await?;
    ctx.step("upload snapshot", since);

    let since = Instant::now();
    // Members are stopped only when some still need restoring (a finished restore re-run
    // restarts nothing).
    if !todo.is_empty() {
        try_all(hosts.iter().map(|h| async move {
            run(
                transport(h).as_ref(),
                "stopping etcd",
                "systemctl stop etcd",
                Duration::from_secs(120),
            )
            .await
            .map(|_| ())
        }))
        .await?;
    }
    let restored_marker = Marker {
        backup_id: input.backup_id.clone(),
        restored: true,
    };
    try_all(todo.iter().map(|&i| {
        let host = &hosts[i];
        let script = restore_script(
            &tool,
            &remote_snapshot,
            &data_dir,
            host.name(),
            &initial_cluster,
            &token,
            &host.member().peer_url(),
            bump,
            &restored_marker,
        );
        async move {
            run(
                transport(host).as_ref(),
                "snapshot restore",
                &script,
                Duration::from_secs(1800),
            )
            .await
            .map(|_| ())
        }
    }))
    .await?;
    ctx.step("restore data dirs", since);

    // 7. Start every member together (a lone member would wait for quorum) and wait for health.
    let since = Instant::now();
    ctx.say("starting etcd on every member");
    try_all(hosts.iter().map(|h| async move {
        run(
            transport(h).as_ref(),
            "starting etcd",
            "systemctl enable -q etcd && systemctl start --no-block etcd",
            Duration::from_secs(60),
        )
        .await
        .map(|_| ())
    }))
    .await?;
    let ca = CertificateAuthority::from_pem(&input.ca_cert_pem, &input.ca_key_pem)?;
    let tls = admin_tls(&ca)?;
    let endpoints: Vec<EtcdEndpoint> = hosts.iter().map(EtcdHost::operator_endpoint).collect();
    wait_healthy(&endpoints, &tls, hosts.len(), options.ready_timeout).await?;
    ctx.step("start and health gate", since);

    // 8. `apply` again: finds initialised members whose configs match; it should change nothing.
    let since = Instant::now();
    ctx.say("converging with capstan apply");
    run_apply(cluster, &options, "converge").await?;
    ctx.step("converge (apply)", since);

    // 9. Verify, then remove the uploaded snapshots.
    let since = Instant::now();
    ctx.say("verifying");
    let names: Vec<String> = hosts.iter().map(|h| h.name().to_string()).collect();
    let bumped_by = bump.map_or(0, |(n, _)| i64::try_from(n).unwrap_or(i64::MAX));
    let minimum = input.manifest_revision.saturating_add(bumped_by);
    let verification = verify_members(&names, &endpoints, &tls, minimum).await;
    ctx.step("verify", since);
    if verification.ok {
        let staging = format!("{STAGING_DIR}/{}", input.backup_id);
        for h in &hosts {
            let _ = run(
                transport(h).as_ref(),
                "removing the uploaded snapshot",
                &format!("rm -rf -- {}", quote(&staging)),
                Duration::from_secs(60),
            )
            .await;
        }
    }

    let members = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| MemberRestore {
            host: h.name().to_string(),
            action: if restored_before[i] {
                "already restored"
            } else {
                "restored"
            }
            .to_string(),
            before_restore: kept.iter().find(|(n, _)| n == h.name()).map(|(_, k)| k.clone()),
        })
        .collect();
    Ok(RestoreOutcome {
        backup_id: input.backup_id.clone(),
        token,
        tool: tool.name.to_string(),
        members,
        steps: ctx.steps,
        notes: ctx.notes,
        verification,
        seconds: ctx.started.elapsed().as_secs_f64(),
    })
}

fn short_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(5),
        health: Duration::from_secs(2),
        reconfig_settle: Duration::from_secs(30),
    }
}

/// Waits until `expected` members are listed, every endpoint is healthy and there is one leader.
pub async fn wait_healthy(
    endpoints: &[EtcdEndpoint],
    tls: &EtcdTls,
    expected: usize,
    limit: Duration,
) -> Result<(), RestoreError> {
    poll_until(limit, Duration::from_millis(500), || async {
        let client = EtcdClient::connect_with(endpoints, tls, short_timeouts())
            .await
            .map_err(|e| error_chain(&e))?;
        let status = client.cluster_status().await.map_err(|e| error_chain(&e))?;
        if status.healthy && status.members.len() == expected {
            return Ok(());
        }
        let unhealthy = status.unhealthy();
        Err(format!(
            "{} member(s) listed, {} leader(s), unhealthy: {}",
            status.members.len(),
            status.leaders.len(),
            if unhealthy.is_empty() {
                "none".into()
            } else {
                unhealthy.join(", ")
            }
        ))
    })
    .await
    .map_err(|detail| RestoreError::NotHealthy { after: limit, detail })
}

async fn pinned(endpoint: &EtcdEndpoint, tls: &EtcdTls) -> Result<Client, String> {
    let tls_options = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_cert_pem))
        .identity(Identity::from_pem(&tls.client_cert_pem, &tls.client_key_pem));
    let options = ConnectOptions::new()
        .with_tls(tls_options)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(60));
    Client::connect([endpoint.as_str()], Some(options))
        .await
        .map_err(|e| error_chain(&e))
}

/// Revision, key count and HashKV of every member, compared at the lowest member revision;
/// health and leadership from the cluster; revision at least `minimum_revision`.
pub async fn verify_members(
    names: &[String],
    endpoints: &[EtcdEndpoint],
    tls: &EtcdTls,
    minimum_revision: i64,
) -> Verification {
    let mut members: Vec<MemberCheck> = names
        .iter()
        .zip(endpoints)
        .map(|(name, endpoint)| MemberCheck {
            name: name.clone(),
            endpoint: endpoint.to_string(),
            healthy: false,
            leader: false,
            revision: None,
            key_count: None,
            hash_kv: None,
            compact_revision: None,
            error: None,
        })
        .collect();
    let mut checks = Vec::new();
    let mut listed = 0;
    let mut leaders = 0;
    match EtcdClient::connect_with(endpoints, tls, short_timeouts()).await {
        Ok(client) => match client.cluster_status().await {
            Ok(status) => {
                listed = status.members.len();
                leaders = status.leaders.len();
                for (member, report) in members.iter_mut().zip(&status.endpoints) {
                    member.healthy = report.health.healthy;
                    member.leader = report.status.as_ref().is_some_and(|s| s.leader);
                    if !report.health.healthy {
                        member.error = report.health.error.clone();
                    }
                }
            }
            Err(e) => checks.push(Check {
                name: "cluster status".into(),
                ok: false,
                detail: error_chain(&e),
            }),
        },
        Err(e) => checks.push(Check {
            name: "cluster status".into(),
            ok: false,
            detail: error_chain(&e),
        }),
    }

    let mut clients = Vec::new();
    for (member, endpoint) in members.iter_mut().zip(endpoints) {
        match pinned(endpoint, tls).await {
            Ok(mut client) => {
                let all = GetOptions::new().with_all_keys().with_count_only().with_serializable();
                match client.get("", Some(all)).await {
                    Ok(response) => member.revision = response.header().map(|h| h.revision()),
                    Err(e) => member.error = Some(error_chain(&e)),
                }
                clients.push(Some(client));
            }
            Err(e) => {
                member.error = Some(e);
                clients.push(None);
            }
        }
    }
    let compared_at = members.iter().filter_map(|m| m.revision).min();
    if let Some(revision) = compared_at {
        for (member, client) in members.iter_mut().zip(clients.iter_mut()) {
            let Some(client) = client else { continue };
            let at = GetOptions::new()
                .with_all_keys()
                .with_count_only()
                .with_serializable()
                .with_revision(revision);
            match client.get("", Some(at)).await {
                Ok(response) => member.key_count = Some(response.count()),
                Err(e) => member.error = Some(error_chain(&e)),
            }
            match client.hash_kv(revision).await {
                Ok(response) => {
                    member.hash_kv = Some(response.hash());
                    member.compact_revision = Some(response.compact_version());
                }
                Err(e) => member.error = Some(error_chain(&e)),
            }
        }
    }

    let all_healthy = members.iter().all(|m| m.healthy);
    checks.push(Check {
        name: "every member healthy".into(),
        ok: all_healthy && listed == names.len(),
        detail: format!(
            "{} of {} healthy, {listed} listed",
            members.iter().filter(|m| m.healthy).count(),
            names.len()
        ),
    });
    checks.push(Check {
        name: "one leader".into(),
        ok: leaders == 1,
        detail: format!("{leaders} leader(s)"),
    });
    let low = members.iter().filter_map(|m| m.revision).min();
    checks.push(Check {
        name: "revision at least the backup's".into(),
        ok: low.is_some_and(|r| r >= minimum_revision) && members.iter().all(|m| m.revision.is_some()),
        detail: format!(
            "lowest member revision {}, backup revision {minimum_revision}",
            low.map_or_else(|| "unknown".into(), |r| r.to_string())
        ),
    });
    let same = |values: Vec<Option<String>>| -> (bool, String) {
        let ok = values.iter().all(Option::is_some) && values.windows(2).all(|w| w[0] == w[1]);
        let shown: Vec<String> = values.into_iter().map(|v| v.unwrap_or_else(|| "?".into())).collect();
        (ok, shown.join(", "))
    };
    let (ok, detail) = same(members.iter().map(|m| m.key_count.map(|c| c.to_string())).collect());
    checks.push(Check {
        name: "same key count on every member".into(),
        ok,
        detail,
    });
    let (ok, detail) = same(members.iter().map(|m| m.hash_kv.map(|h| format!("{h:08x}"))).collect());
    checks.push(Check {
        name: "same hash-kv on every member".into(),
        ok,
        detail: match compared_at {
            Some(r) => format!("{detail} (at revision {r})"),
            None => detail,
        },
    });
    let ok = checks.iter().all(|c| c.ok);
    Verification {
        members,
        compared_at_revision: compared_at,
        checks,
        ok,
    }
}

/// Whether each key exists (a trailing `*` means: some key has this prefix).
#[derive(Debug, Clone, Serialize)]
pub struct KeyCheck {
    pub key: String,
    pub found: i64,
    pub ok: bool,
    pub error: Option<String>,
}

pub async fn check_keys(endpoints: &[EtcdEndpoint], tls: &EtcdTls, keys: &[String]) -> Vec<KeyCheck> {
    let mut results = Vec::new();
    let client = match EtcdClient::connect_with(endpoints, tls, short_timeouts()).await {
        Ok(_) => pinned(&endpoints[0], tls).await,
        Err(e) => Err(error_chain(&e)),
    };
    for key in keys {
        let (name, prefix) = match key.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (key.as_str(), false),
        };
        let result = match &client {
            Ok(client) => {
                let mut client = client.clone();
                let mut options = GetOptions::new().with_count_only();
                if prefix {
                    options = if name.is_empty() {
                        options.with_all_keys()
                    } else {
                        options.with_prefix()
                    };
                }
                client
                    .get(name, Some(options))
                    .await
                    .map(|r| r.count())
                    .map_err(|e| error_chain(&e))
            }
            Err(e) => Err(e.clone()),
        };
        results.push(match result {
            Ok(found) => KeyCheck {
                key: key.clone(),
                found,
                ok: found > 0,
                error: None,
            },
            Err(error) => KeyCheck {
                key: key.clone(),
                found: 0,
                ok: false,
                error: Some(error),
            },
        });
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `etcdutl snapshot restore --help` of etcd 3.5.1 (from the lab mirror's tarball).
    const ETCDUTL_3_5_1_HELP: &str = "Usage:
  etcdutl snapshot restore <filename> --data-dir {output dir} [options] [flags]

Flags:
      --data-dir string                      Path to the output data directory
  -h, --help                                 help for restore
      --initial-advertise-peer-urls string   List of this member's peer URLs to advertise to the rest of the cluster (default \"http://localhost:2380\")
      --initial-cluster string               Initial cluster configuration for restore bootstrap (default \"default=http://localhost:2380\")
      --initial-cluster-token string         Initial cluster token for the etcd cluster during restore bootstrap (default \"etcd-cluster\")
      --name string                          Human-readable name for this member (default \"default\")
      --skip-hash-check                      Ignore snapshot integrity hash value (required if copied from data directory)
      --wal-dir string                       Path to the WAL directory (use --data-dir if none given)

Global Flags:
  -w, --write-out string   set the output format (fields, json, protobuf, simple, table) (default \"simple\")
";

    /// The flag lines etcd 3.5.10 added (cobra's layout; the rest as in 3.5.1).
    const ADDED_IN_3_5_10: &str = "      --bump-revision uint                   How much to increase the latest revision after restore
      --mark-compacted                       Mark the latest revision after restore as the point of scheduled compaction (required if --bump-revision > 0, disallowed otherwise)
";

    /// `ETCDCTL_API=3 etcdctl snapshot restore --help` of etcd 3.4.23 (Debian's etcd-client), abridged.
    const ETCDCTL_3_4_23_HELP: &str = "OPTIONS:
      --data-dir=\"\"\t\t\t\t\t\tPath to the data directory
  -h, --help[=false]\t\t\t\t\t\thelp for restore
      --name=\"default\"\t\t\t\t\t\tHuman-readable name for this member
      --skip-hash-check[=false]\t\t\t\t\tIgnore snapshot integrity hash value (required if copied from data directory)
";

    fn detected(name: &str, help: &str) -> String {
        format!("{name}\n{HELP_MARK}\n{help}")
    }

    #[test]
    fn tool_detection_reads_the_flags_from_the_help_text() {
        let old = parse_tool(&detected("etcdutl", ETCDUTL_3_5_1_HELP)).unwrap();
        assert_eq!(old.command, "/usr/local/bin/etcdutl");
        assert!(!old.bump_revision, "etcd 3.5.1 has no --bump-revision");
        let with = ETCDUTL_3_5_1_HELP.replace("      --data-dir", &format!("{ADDED_IN_3_5_10}      --data-dir"));
        assert!(parse_tool(&detected("etcdutl", &with)).unwrap().bump_revision);
        let ctl = parse_tool(&detected("etcdctl", ETCDCTL_3_4_23_HELP)).unwrap();
        assert_eq!(ctl.name, "etcdctl");
        assert!(!ctl.bump_revision);
        assert!(ctl.command.starts_with("ETCDCTL_API=3 "));
        assert_eq!(parse_tool("none\n"), None);
        assert_eq!(parse_tool(""), None);
    }

    #[test]
    fn a_mere_mention_of_the_flags_is_not_support() {
        for help in [
            // Only one of the two flags.
            "      --bump-revision uint   How much to increase the latest revision\n",
            // Errors and descriptions that name them.
            "Error: unknown flag: --bump-revision\nError: unknown flag: --mark-compacted\n",
            "      --skip-hash-check   see --bump-revision and --mark-compacted\n",
            // Another flag that merely starts with the same letters.
            "      --bump-revision-by uint   x\n      --mark-compacted-at int   y\n",
            // The tool could not even run.
            "sh: 1: /usr/local/bin/etcdutl: Exec format error\n",
        ] {
            let tool = parse_tool(&detected("etcdutl", help)).unwrap();
            assert!(!tool.bump_revision, "wrongly supported for:\n{help}");
        }
        // etcdctl 3.4's `--flag=default` layout, when a release has them.
        let ctl = "      --bump-revision=0\t\tHow much\n      --mark-compacted[=false]\t\tMark\n";
        assert!(parse_tool(&detected("etcdctl", ctl)).unwrap().bump_revision);
    }

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

    #[test]
    fn force_keeps_the_previous_state_under_one_suffix() {
        let script = move_aside_script("/var/lib/etcd", "/var/lib/etcd.capstan-restore", 1700000000);
        assert!(script.starts_with("set -e\n"), "{script}");
        let stop_at = script.find("systemctl stop etcd").unwrap();
        let move_at = script
            .find("mv -- /var/lib/etcd /var/lib/etcd.before-restore-1700000000")
            .unwrap();
        assert!(stop_at < move_at, "{script}");
        assert!(script.contains("mv -- /etc/etcd/etcd.conf.yml /etc/etcd/etcd.conf.yml.before-restore-1700000000"));
        assert!(script.contains("cp -a -- /etc/etcd/pki /etc/etcd/pki.before-restore-1700000000"));
        let kept = parse_moved_aside("config\npki\n", "/var/lib/etcd", 1700000000, Some("/s.db".into()));
        assert_eq!(kept.data_dir, "/var/lib/etcd.before-restore-1700000000");
        assert_eq!(
            kept.config.as_deref(),
            Some("/etc/etcd/etcd.conf.yml.before-restore-1700000000")
        );
        assert_eq!(kept.pki_dir.as_deref(), Some("/etc/etcd/pki.before-restore-1700000000"));
        let bare = parse_moved_aside("", "/var/lib/etcd", 1, None);
        assert_eq!((bare.config, bare.pki_dir), (None, None));
    }

    #[test]
    fn markers_round_trip_and_garbage_is_no_marker() {
        let marker = Marker {
            backup_id: "20261128T041500Z-3f9a".into(),
            restored: true,
        };
        let text = serde_json::to_string(&marker).unwrap();
        assert_eq!(parse_marker(&format!("{text}\n")), Some(marker));
        assert_eq!(parse_marker(""), None);
        assert_eq!(parse_marker("not json"), None);
        assert_eq!(marker_path("/var/lib/etcd/"), "/var/lib/etcd.capstan-restore");
    }

    #[test]
    fn restore_script_uses_the_new_cluster_and_swaps_atomically() {
        let tool = RestoreTool {
            command: "/usr/local/bin/etcdutl".into(),
            name: "etcdutl",
            bump_revision: true,
        };
        let marker = Marker {
            backup_id: "20261128T041500Z-3f9a".into(),
            restored: true,
        };
        let script = restore_script(
            &tool,
            "/var/lib/capstan-restore/x/snapshot.db",
            "/var/lib/etcd",
            "new-1",
            "new-1=https://10.0.0.1:2380,new-2=https://10.0.0.2:2380",
            "demo-0badcafe",
            "https://10.0.0.1:2380",
            Some((1000, true)),
            &marker,
        );
        assert!(script.contains("--name new-1"), "{script}");
        assert!(script.contains("--initial-cluster-token demo-0badcafe"), "{script}");
        assert!(script.contains("--data-dir /var/lib/etcd.restoring"), "{script}");
        assert!(script.contains("--bump-revision 1000 --mark-compacted"), "{script}");
        let restore_at = script.find("snapshot restore").unwrap();
        let swap_at = script.find("mv -- /var/lib/etcd.restoring /var/lib/etcd").unwrap();
        let mark_at = script.find("/var/lib/etcd.capstan-restore.tmp").unwrap();
        assert!(
            restore_at < swap_at && swap_at < mark_at,
            "restore, then swap, then mark:\n{script}"
        );
        assert!(script.starts_with("set -e\n"));
    }
}
