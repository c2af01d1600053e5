//! Operations: desired state compared with probed remote state.
//!
//! An [`Operation`] probes the host (a command plus a pure parser), compares
//! with what it wants and returns a [`Plan`]: the changes, each with the
//! [`Step`]s that would make it. An empty plan means "already as desired".
//! Applying runs the steps; a dry run shows them. Because both come from the
//! same plan, re-running after an apply yields an empty plan by construction.

pub mod apply_batch;
mod artifact_op;
mod command;
mod diff;
mod fact;
mod file;
pub mod handlers;
mod package;
pub mod probe_batch;
pub mod shell;
mod systemd;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::artifact::ArtifactError;
use crate::transport::{ExecOptions, ExecOutput, RemoteFile, Transport, TransportError};

pub use artifact_op::Artifact;
pub use command::Command;
pub use diff::{render_file_diff, DIFF_LIMIT_BYTES};
pub use fact::{parse_path_state, path_state_command, PathKind, PathState, CHECKSUM_DIR};
pub use file::{plan_file, plan_path_attributes, Absent, DesiredFile, Directory, File, Template};
pub use package::{apt_source_file, missing_packages, Package, APT_SOURCE_FILE};
pub use systemd::{
    parse_service_state, plan_service, ActiveState, DaemonReload, EnablementState, RemovedUnit, Restart, Service,
    ServiceState, SystemdUnit, SYSTEMD_UNIT_DIR,
};

/// Bytes to write to a remote file, held in memory or streamed from a local file.
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Arc<[u8]>),
    LocalFile(PathBuf),
}

/// One thing to do on the host to carry out a change.
#[derive(Debug, Clone)]
pub enum Step {
    /// A shell command, run privileged.
    Run(String),
    /// Stream `content` into a temp file beside `file.path`, verify its
    /// sha256, set mode/owner, then rename it over the target (atomic).
    WriteFile {
        file: RemoteFile,
        content: Content,
        sha256: String,
        size: u64,
        /// Shown without size or checksum.
        sensitive: bool,
    },
}

impl Step {
    /// How the step reads in a dry run: the command, or what gets written.
    pub fn display(&self) -> String {
        match self {
            Step::Run(command) => command.clone(),
            Step::WriteFile {
                file, sensitive: true, ..
            } => {
                format!("write {} (sensitive, mode {:04o})", file.path, file.mode)
            }
            Step::WriteFile { file, sha256, size, .. } => {
                format!(
                    "write {} ({size} bytes, sha256 {}, mode {:04o})",
                    file.path,
                    short_sha(sha256),
                    file.mode
                )
            }
        }
    }
}

/// One difference between desired and actual state.
#[derive(Debug, Clone)]
pub struct Change {
    /// One line, e.g. "create /etc/app/app.conf".
    pub summary: String,
    /// A unified diff or a one-line description of a content change.
    pub diff: Option<String>,
    pub steps: Vec<Step>,
}

/// What an operation would do. Empty = nothing to do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
}

impl Plan {
    pub fn unchanged() -> Plan {
        Plan::default()
    }
    pub fn single(change: Change) -> Plan {
        Plan { changes: vec![change] }
    }
    pub fn is_unchanged(&self) -> bool {
        self.changes.is_empty()
    }

    /// Carry out every step in order; stops at the first failing step.
    pub async fn apply(&self, t: &dyn Transport) -> Result<(), OpError> {
        for change in &self.changes {
            for step in &change.steps {
                execute_step(t, step).await?;
            }
        }
        Ok(())
    }
}

/// Follow-up work an operation asks for when (and only when) it changed something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Trigger {
    /// systemd must re-read unit files before units are used.
    DaemonReload,
    /// Restart this service once, after the host's op list.
    Restart(String),
}

/// A unit of desired state on one host.
#[async_trait]
pub trait Operation: Send + Sync {
    /// Short human description, e.g. "file /etc/hosts".
    fn describe(&self) -> String;
    /// Probe the host and compute the changes. Must not modify the host.
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError>;
    /// The read-only commands `plan` runs on an unchanged host (privileged, through
    /// [`run_checked`] or `exec` with default options), so that the runner can run the probes of
    /// a host's whole list in one round trip ([`probe_batch`]) before planning. Commands
    /// missing here still work (`plan` runs them itself); listed commands must never change
    /// the host.
    fn probes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Follow-up work to queue when the plan was not empty.
    fn triggers(&self) -> Vec<Trigger> {
        Vec::new()
    }
    /// True when the op's plan depends only on state that no *other* op of a host's list changes
    /// (its own path(s), its own packages), and its steps change nothing another op plans from.
    /// The runner may then plan it before the changes of the self-contained ops before it are
    /// applied, and apply their steps together in one exec ([`apply_batch`]); ops that are not
    /// self-contained are planned only after everything before them is applied.
    ///
    /// So: files, directories, removals, artifacts, unit files and packages are; commands (their
    /// checks may read anything), services (their state follows unit files and packages) and
    /// handlers are not. Two self-contained ops may still meet on a path (the same file twice, a
    /// file inside a removed tree): each lists its paths in [`Operation::footprint`], and the
    /// runner applies what is queued before planning an op whose footprint meets a queued
    /// change's. A package's files are not in its footprint: a list must not manage a path after
    /// a `Package` that installs it. Wrappers delegate both.
    fn self_contained(&self) -> bool {
        false
    }
    /// What a self-contained op plans from and changes on the host (see
    /// [`Operation::self_contained`]).
    fn footprint(&self) -> Vec<Footprint> {
        Vec::new()
    }
}

/// A remote path a self-contained op plans from and changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Footprint {
    /// The path itself (making it may make its missing parents, which changes no plan of theirs:
    /// `mkdir -p` leaves an existing directory as it is, and a directory op sets its attributes
    /// either way).
    Path(String),
    /// The path and everything under it (a removal).
    Tree(String),
}

impl Footprint {
    /// Whether an op with this footprint may plan differently once an op with `other` is applied:
    /// the same path, or one at or under the other's removed tree.
    pub fn meets(&self, other: &Footprint) -> bool {
        let within =
            |path: &str, tree: &str| path == tree || path.strip_prefix(tree).is_some_and(|rest| rest.starts_with('/'));
        match (self, other) {
            (Footprint::Path(a), Footprint::Path(b)) => a == b,
            (Footprint::Path(a), Footprint::Tree(t)) | (Footprint::Tree(t), Footprint::Path(a)) => within(a, t),
            (Footprint::Tree(a), Footprint::Tree(b)) => within(a, b) || within(b, a),
        }
    }
}

/// Wraps an operation to restart services when it changed something.
pub struct Notifying<O> {
    inner: O,
    services: Vec<String>,
}

#[async_trait]
impl<O: Operation> Operation for Notifying<O> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        self.inner.plan(t).await
    }
    fn probes(&self) -> Vec<String> {
        self.inner.probes()
    }
    fn self_contained(&self) -> bool {
        self.inner.self_contained()
    }
    fn footprint(&self) -> Vec<Footprint> {
        self.inner.footprint()
    }
    fn triggers(&self) -> Vec<Trigger> {
        let mut triggers = self.inner.triggers();
        triggers.extend(self.services.iter().cloned().map(Trigger::Restart));
        triggers
    }
}

/// `op.notify(["app"])`: restart app at the end of the host's list if `op` changed.
pub trait OperationExt: Operation + Sized {
    fn notify<I, S>(self, services: I) -> Notifying<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Notifying {
            inner: self,
            services: services.into_iter().map(Into::into).collect(),
        }
    }
}

impl<O: Operation + Sized> OperationExt for O {}

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{host}: `{command}` failed ({status}): {stderr}")]
    CommandFailed {
        host: String,
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{host}: cannot understand the probe output for {what}: {reason}")]
    Probe { host: String, what: String, reason: String },
    #[error("{host}: {path} is {found}, expected {expected}")]
    Conflict {
        host: String,
        path: String,
        found: String,
        expected: String,
    },
    #[error("{host}: {reason}")]
    Refused { host: String, reason: String },
    #[error("invalid operation: {0}")]
    Invalid(String),
    #[error("template {name}: {reason}")]
    Template { name: String, reason: String },
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("cannot read local file {path}: {source}")]
    LocalRead { path: String, source: std::io::Error },
}

/// Longest stderr excerpt kept in an error message.
const STDERR_EXCERPT: usize = 2000;

/// Run `command` and turn a non-zero exit into [`OpError::CommandFailed`].
pub async fn run_checked(t: &dyn Transport, command: &str) -> Result<ExecOutput, OpError> {
    let output = t.exec(command, &ExecOptions::default()).await?;
    ensure_success(t.host(), command, output)
}

fn ensure_success(host: &str, command: &str, output: ExecOutput) -> Result<ExecOutput, OpError> {
    if output.success() {
        return Ok(output);
    }
    let status = match output.exit_code {
        Some(code) => format!("exit {code}"),
        None => "killed by a signal".to_string(),
    };
    let mut stderr = output.stderr_str().trim().to_string();
    if stderr.len() > STDERR_EXCERPT {
        let mut cut = STDERR_EXCERPT;
        while !stderr.is_char_boundary(cut) {
            cut -= 1;
        }
        stderr.truncate(cut);
        stderr.push('…');
    }
    Err(OpError::CommandFailed {
        host: host.to_string(),
        command: command.to_string(),
        status,
        stderr,
    })
}

async fn execute_step(t: &dyn Transport, step: &Step) -> Result<(), OpError> {
    match step {
        Step::Run(command) => run_checked(t, command).await.map(|_| ()),
        Step::WriteFile {
            file,
            content,
            sha256,
            size,
            ..
        } => {
            let command = write_file_command(file, sha256, *size);
            // Large uploads over slow links need more than the default budget.
            let opts = ExecOptions {
                timeout: std::time::Duration::from_secs(1800),
                ..ExecOptions::default()
            };
            let output = match content {
                Content::Bytes(bytes) => {
                    let mut reader: &[u8] = bytes;
                    t.exec_with_stdin(&command, &mut reader, &opts).await?
                }
                Content::LocalFile(path) => {
                    let mut reader = tokio::fs::File::open(path).await.map_err(|source| OpError::LocalRead {
                        path: path.display().to_string(),
                        source,
                    })?;
                    t.exec_with_stdin(&command, &mut reader, &opts).await?
                }
            };
            ensure_success(t.host(), &format!("write {}", file.path), output).map(|_| ())
        }
    }
}

/// The remote side of [`Step::WriteFile`]: temp file beside the target,
/// checksum check, attributes, atomic rename. The temp file never outlives a failure. A large
/// file's checksum is remembered ([`fact::CHECKSUM_DIR`]) so later probes need not read it again.
pub fn write_file_command(file: &RemoteFile, sha256: &str, size: u64) -> String {
    use shell::quote;
    let (dir, name) = split_parent(&file.path);
    let mut script = format!(
        "set -e; d={dir}; mkdir -p -- \"$d\"; tmp=$(mktemp \"$d\"/{tmpl}); trap 'rm -f -- \"$tmp\"' EXIT; \
         cat > \"$tmp\"; sum=$({hash}); \
         if [ \"$sum\" != {sha} ]; then echo \"content of {shown} arrived corrupted: sha256 $sum, expected {sha}\" >&2; exit 1; fi; \
         chmod {mode:04o} \"$tmp\"; ",
        dir = quote(dir),
        tmpl = quote(&format!(".{name}.capstan-XXXXXX")),
        sha = sha256,
        shown = file.path.replace(['"', '$', '`', '\\'], "_"),
        mode = file.mode,
        hash = shell::remote_sha256("< \"$tmp\"", Some(size)),
    );
    if let Some(chown) = chown_spec(file.owner.as_deref(), file.group.as_deref()) {
        script.push_str(&format!("chown {} \"$tmp\"; ", quote(&chown)));
    }
    script.push_str(&format!("mv -f -- \"$tmp\" {}; trap - EXIT", quote(&file.path)));
    if size >= fact::REMEMBER_CHECKSUM_FROM {
        script.push_str("; ");
        script.push_str(&fact::remember_checksum_command(&file.path, sha256));
    }
    script
}

/// `owner`, `owner:group` or `:group` for chown, or None when neither is managed.
pub(crate) fn chown_spec(owner: Option<&str>, group: Option<&str>) -> Option<String> {
    match (owner, group) {
        (None, None) => None,
        (Some(o), None) => Some(o.to_string()),
        (None, Some(g)) => Some(format!(":{g}")),
        (Some(o), Some(g)) => Some(format!("{o}:{g}")),
    }
}

/// Parent directory and file name of an absolute path ("/a/b" → ("/a", "b"), "/a" → ("/", "a")).
pub(crate) fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (".", path),
    }
}

/// Remote paths must be absolute, normalised and not the root itself.
pub(crate) fn validate_remote_path(path: &str) -> Result<(), OpError> {
    let invalid = |why: &str| Err(OpError::Invalid(format!("remote path {path:?} {why}")));
    if !path.starts_with('/') {
        return invalid("is not absolute");
    }
    if path == "/" {
        return invalid("is the root directory");
    }
    if path.ends_with('/') {
        return invalid("ends with '/'");
    }
    if path.contains('\0') || path.contains('\n') {
        return invalid("contains a NUL or newline");
    }
    if path
        .split('/')
        .skip(1)
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return invalid("is not normalised (empty, '.' or '..' component)");
    }
    Ok(())
}

pub(crate) fn short_sha(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_are_validated() {
        for (path, ok) in [
            ("/etc/app/app.conf", true),
            ("/a", true),
            ("etc/x", false),
            ("/", false),
            ("/etc/", false),
            ("/etc//x", false),
            ("/etc/../x", false),
            ("/etc/./x", false),
        ] {
            assert_eq!(validate_remote_path(path).is_ok(), ok, "{path}");
        }
    }

    #[test]
    fn parents_are_split() {
        assert_eq!(split_parent("/a/b/c"), ("/a/b", "c"));
        assert_eq!(split_parent("/a"), ("/", "a"));
    }

    #[test]
    fn footprints_meet_on_a_path_or_in_a_removed_tree() {
        use Footprint::{Path, Tree};
        let p = |s: &str| Path(s.to_string());
        let t = |s: &str| Tree(s.to_string());
        for (a, b, meet) in [
            (p("/etc/a"), p("/etc/a"), true),
            (p("/etc/a"), p("/etc/b"), false),
            // A directory and a file in it: making either leaves the other's plan as it was.
            (p("/etc/d"), p("/etc/d/x"), false),
            (p("/etc/d/x"), t("/etc/d"), true),
            (p("/etc/d"), t("/etc/d"), true),
            (p("/etc/dx"), t("/etc/d"), false),
            (p("/etc"), t("/etc/d"), false),
            (t("/etc/d"), t("/etc/d/sub"), true),
            (t("/etc/d"), t("/etc/e"), false),
        ] {
            assert_eq!(a.meets(&b), meet, "{a:?} {b:?}");
            assert_eq!(b.meets(&a), meet, "{b:?} {a:?}");
        }
    }

    #[test]
    fn chown_specs() {
        assert_eq!(chown_spec(None, None), None);
        assert_eq!(chown_spec(Some("app"), None).as_deref(), Some("app"));
        assert_eq!(chown_spec(None, Some("app")).as_deref(), Some(":app"));
        assert_eq!(chown_spec(Some("root"), Some("app")).as_deref(), Some("root:app"));
    }
}
