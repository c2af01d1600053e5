//! The cluster lock: one run at a time changes a cluster.
//!
//! Every command that changes a cluster (apply, restore, reset, schedule installs) takes a
//! [`ClusterLock`] first and holds it for the whole run; a second run fails at once with
//! [`LockError::Held`], naming the holder (user, machine, command, since when). The lock lives in
//! one or more [`LockStore`]s, taken in order and all held: [`HostFileLock`], a lock file on the
//! first reachable host (the engine's own, works before any datastore exists), and any store a
//! component provides through this trait (a lease-backed key in the cluster's datastore, which
//! scheduled jobs on the members can see). Each store expires a holder that stopped renewing
//! (`ttl`), so a killed run frees the lock by itself; while the run lasts a background task renews
//! every store every `ttl / 3`.
//!
//! Modes: [`LockMode::Change`] (apply, schedule installs) excludes other changes but lets
//! [`LockMode::Shared`] holders (scheduled backups) run beside it; [`LockMode::Fence`] (restore,
//! reset) excludes both.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::hint::Hint;
use crate::report::Reporter;
use crate::ssh::shell_quote;
use crate::transport::{ExecOptions, Transport, TransportError};

/// How long a holder that stopped renewing keeps the lock.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);

/// The lock file on the host store. Under `/run`: gone with a reboot, never in a host's
/// persistent trees.
pub const HOST_LOCK_DIR: &str = "/run/capstan";
pub const HOST_LOCK_FILE: &str = "/run/capstan/cluster.lock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// A change to the cluster: excludes other changes, not shared holders.
    Change,
    /// A change during which nothing else may run, shared holders included (restore, reset).
    Fence,
    /// A job that may run beside a change but never beside a fence (scheduled backups).
    Shared,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Change => "change",
            LockMode::Fence => "fence",
            LockMode::Shared => "shared",
        }
    }

    fn parse(text: &str) -> LockMode {
        match text {
            "fence" => LockMode::Fence,
            "shared" => LockMode::Shared,
            _ => LockMode::Change,
        }
    }
}

/// Who holds (or wants) the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// Identifies one run; renewals and release only touch the holder's own lock.
    pub token: String,
    pub user: String,
    pub machine: String,
    /// The command line, e.g. `capstan apply --only etcd`.
    pub command: String,
    pub pid: u32,
    pub mode: LockMode,
    /// Unix seconds.
    pub since: u64,
}

impl LockHolder {
    /// This process, running `command`, in `mode`.
    pub fn this_process(command: &str, mode: LockMode) -> LockHolder {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let pid = std::process::id();
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let user = ["SUDO_USER", "USER", "LOGNAME"]
            .iter()
            .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "unknown".into());
        LockHolder {
            token: format!("{pid:x}-{:x}", now.as_nanos()),
            user: one_line(&user),
            machine: one_line(&machine),
            command: one_line(command),
            pid,
            mode,
            since: now.as_secs(),
        }
    }

    /// `alice on laptop (pid 42) running "capstan apply" since 2026-12-01 12:40:03 UTC`
    pub fn describe(&self, now: SystemTime) -> String {
        let ago = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(self.since))
            .unwrap_or(0);
        format!(
            "{} on {} (pid {}) running `{}` since {} ({} ago)",
            self.user,
            self.machine,
            self.pid,
            self.command,
            utc(self.since),
            short_duration(ago)
        )
    }

    /// `key=value` lines, the host lock file's format.
    fn to_lines(&self) -> String {
        format!(
            "token={}\nmode={}\nuser={}\nmachine={}\ncommand={}\npid={}\nsince={}\n",
            self.token,
            self.mode.as_str(),
            self.user,
            self.machine,
            self.command,
            self.pid,
            self.since
        )
    }

    /// A holder from [`Self::to_lines`]' format (the host lock file); `None` without a token.
    pub fn from_lines(text: &str) -> Option<LockHolder> {
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
                .map(str::to_string)
        };
        Some(LockHolder {
            token: field("token")?,
            user: field("user").unwrap_or_default(),
            machine: field("machine").unwrap_or_default(),
            command: field("command").unwrap_or_default(),
            pid: field("pid").and_then(|p| p.parse().ok()).unwrap_or(0),
            mode: LockMode::parse(&field("mode").unwrap_or_default()),
            since: field("since").and_then(|s| s.parse().ok()).unwrap_or(0),
        })
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn utc(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|_| unix.to_string())
}

fn short_duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the cluster is locked by {}{}", .holder.describe(SystemTime::now()), where_(.store))]
    Held { holder: LockHolder, store: String },
    #[error("a scheduled job holds the cluster's shared lock: {}{}", .holder.describe(SystemTime::now()), where_(.store))]
    SharedHeld { holder: LockHolder, store: String },
    #[error("the lock in {store} was lost (it expired and was taken or removed)")]
    Lost { store: String },
    #[error("{store}: {reason}")]
    Store { store: String, reason: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
}

fn where_(store: &str) -> String {
    format!(" (lock in {store})")
}

impl Hint for LockError {
    fn hint(&self) -> Option<String> {
        match self {
            LockError::Held { .. } => Some(
                "wait for that run to finish and try again; a run that died frees the lock by itself within 30s; \
                 if you are sure no run is active, `capstan unlock --force` removes the lock"
                    .into(),
            ),
            LockError::SharedHeld { .. } => {
                Some("a scheduled backup is running; try again when it has finished (usually within minutes)".into())
            }
            LockError::Lost { .. } => Some("another run may have started; check it before retrying".into()),
            LockError::Store { .. } => None,
            LockError::Transport(e) => Hint::hint(e),
        }
    }
}

/// One place the lock lives. Implementations keep their own expiry (`ttl` from the last acquire
/// or renew) so a holder that died frees it by itself.
#[async_trait]
pub trait LockStore: Send + Sync {
    /// Where, for messages: `etcd key /x` or `host1:/run/capstan/cluster.lock`.
    fn describe(&self) -> String;
    /// Take the lock for `holder` (in `holder.mode`) or fail with [`LockError::Held`] /
    /// [`LockError::SharedHeld`] at once. Never waits for another holder.
    async fn acquire(&self, holder: &LockHolder, ttl: Duration) -> Result<(), LockError>;
    /// Extend `holder`'s lock by `ttl`; [`LockError::Lost`] if it is no longer the holder's.
    async fn renew(&self, holder: &LockHolder, ttl: Duration) -> Result<(), LockError>;
    /// Release `holder`'s lock (nothing when it holds none).
    async fn release(&self, holder: &LockHolder) -> Result<(), LockError>;
    /// Remove the lock whoever holds it; the holders it overrode.
    async fn break_lock(&self) -> Result<Vec<LockHolder>, LockError>;
}

/// A lock held in every store, renewed in the background until [`ClusterLock::release`].
pub struct ClusterLock {
    stores: Vec<Arc<dyn LockStore>>,
    holder: LockHolder,
    renewer: tokio::task::JoinHandle<()>,
}

impl ClusterLock {
    /// Take the lock in each store in order; on a refusal, release the ones taken and fail.
    /// Renewal problems are reported on `out` (a lock that cannot be renewed expires, so the run
    /// goes on but says so).
    pub async fn acquire(
        stores: Vec<Arc<dyn LockStore>>,
        holder: LockHolder,
        ttl: Duration,
        out: Reporter,
    ) -> Result<ClusterLock, LockError> {
        for (taken, store) in stores.iter().enumerate() {
            if let Err(error) = store.acquire(&holder, ttl).await {
                for store in &stores[..taken] {
                    let _ = store.release(&holder).await;
                }
                return Err(error);
            }
        }
        let renewer = tokio::spawn(renew_loop(stores.clone(), holder.clone(), ttl, out));
        Ok(ClusterLock {
            stores,
            holder,
            renewer,
        })
    }

    pub fn holder(&self) -> &LockHolder {
        &self.holder
    }

    /// Where the lock is held, e.g. for "locked (…)".
    pub fn stores(&self) -> Vec<String> {
        self.stores.iter().map(|s| s.describe()).collect()
    }

    /// Stop renewing and release every store (last taken first). Errors are returned only
    /// for the record: an unreleased lock expires by itself.
    pub async fn release(self) -> Vec<LockError> {
        self.renewer.abort();
        let mut errors = Vec::new();
        for store in self.stores.iter().rev() {
            if let Err(e) = store.release(&self.holder).await {
                errors.push(e);
            }
        }
        errors
    }
}

impl fmt::Debug for ClusterLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterLock")
            .field("holder", &self.holder)
            .field("stores", &self.stores())
            .finish()
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

async fn renew_loop(stores: Vec<Arc<dyn LockStore>>, holder: LockHolder, ttl: Duration, out: Reporter) {
    let every = (ttl / 3).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        for store in &stores {
            if let Err(e) = store.renew(&holder, ttl).await {
                out.line(format_args!("warning: renewing the cluster lock: {e}"));
            }
        }
    }
}

/// Break the lock in every store; what each overrode.
pub async fn break_locks(stores: &[Arc<dyn LockStore>]) -> Vec<(String, Result<Vec<LockHolder>, LockError>)> {
    let mut results = Vec::new();
    for store in stores {
        results.push((store.describe(), store.break_lock().await));
    }
    results
}

/// The lock as a file on one host, taken under `flock` so two runs never both see it free. The
/// expiry is written in the host's own clock, so clocks of operator machines do not matter.
pub struct HostFileLock {
    transport: Arc<dyn Transport>,
}

impl HostFileLock {
    pub fn new(transport: Arc<dyn Transport>) -> HostFileLock {
        HostFileLock { transport }
    }

    async fn run(&self, script: String, stdin: &[u8]) -> Result<String, LockError> {
        let mut input = stdin;
        let output = self
            .transport
            .exec_with_stdin(&script, &mut input, &short_exec())
            .await?;
        if !output.success() {
            return Err(LockError::Store {
                store: self.describe(),
                reason: output.stderr_str().trim().to_string(),
            });
        }
        Ok(output.stdout_str())
    }

    async fn take(&self, holder: &LockHolder, ttl: Duration, renewing: bool) -> Result<(), LockError> {
        let output = self.run(take_script(holder, ttl), holder.to_lines().as_bytes()).await?;
        match parse_take(&output) {
            TakeOutcome::Taken => Ok(()),
            TakeOutcome::Held(_) if renewing => Err(LockError::Lost { store: self.describe() }),
            TakeOutcome::Held(other) => Err(LockError::Held {
                holder: other,
                store: self.describe(),
            }),
            TakeOutcome::Unreadable(text) => Err(LockError::Store {
                store: self.describe(),
                reason: format!("unexpected answer: {}", text.trim()),
            }),
        }
    }
}

fn short_exec() -> ExecOptions {
    ExecOptions {
        timeout: Duration::from_secs(20),
        privileged: true,
    }
}

/// Lock the directory itself (no guard file to leave behind), then read, decide, write.
fn locked(body: &str) -> String {
    format!(
        "set -eu\nmkdir -p -m 0700 {dir}\nexec 9<{dir}\nflock -w 10 9\nf={file}\nnow=$(date +%s)\n\
         field() {{ sed -n \"s/^$1=//p\" \"$f\" 2>/dev/null || true; }}\n{body}",
        dir = HOST_LOCK_DIR,
        file = HOST_LOCK_FILE
    )
}

/// Print `HELD` and the file when someone else holds an unexpired lock that `mode` conflicts with;
/// otherwise write the holder's lines from stdin (shared holders write nothing) and print `TAKEN`.
fn take_script(holder: &LockHolder, ttl: Duration) -> String {
    let token = shell_quote(&holder.token);
    let shared = holder.mode == LockMode::Shared;
    let conflicts = if shared {
        "[ \"$(field mode)\" = fence ]"
    } else {
        "true"
    };
    let write = if shared {
        "cat >/dev/null\n".to_string()
    } else {
        format!(
            "cat > \"$f.tmp\"\necho \"expires=$((now + {ttl}))\" >> \"$f.tmp\"\nchmod 0600 \"$f.tmp\"\nmv \"$f.tmp\" \"$f\"\n",
            ttl = ttl.as_secs().max(1)
        )
    };
    locked(&format!(
        "if [ -f \"$f\" ]; then\n  exp=$(field expires)\n  if [ \"${{exp:-0}}\" -gt \"$now\" ] && [ \"$(field token)\" != {token} ] && {conflicts}; then\n    cat >/dev/null\n    echo HELD\n    cat \"$f\"\n    exit 0\n  fi\nfi\n{write}echo TAKEN\n"
    ))
}

#[derive(Debug, PartialEq, Eq)]
enum TakeOutcome {
    Taken,
    Held(LockHolder),
    Unreadable(String),
}

fn parse_take(output: &str) -> TakeOutcome {
    if let Some(rest) = output.strip_prefix("HELD\n") {
        return match LockHolder::from_lines(rest) {
            Some(holder) => TakeOutcome::Held(holder),
            None => TakeOutcome::Unreadable(output.to_string()),
        };
    }
    if output.trim_end().ends_with("TAKEN") {
        return TakeOutcome::Taken;
    }
    TakeOutcome::Unreadable(output.to_string())
}

#[async_trait]
impl LockStore for HostFileLock {
    fn describe(&self) -> String {
        format!("{}:{HOST_LOCK_FILE}", self.transport.host())
    }

    async fn acquire(&self, holder: &LockHolder, ttl: Duration) -> Result<(), LockError> {
        self.take(holder, ttl, false).await
    }

    async fn renew(&self, holder: &LockHolder, ttl: Duration) -> Result<(), LockError> {
        if holder.mode == LockMode::Shared {
            return Ok(());
        }
        self.take(holder, ttl, true).await
    }

    async fn release(&self, holder: &LockHolder) -> Result<(), LockError> {
        let token = shell_quote(&holder.token);
        self.run(
            locked(&format!(
                "if [ -f \"$f\" ] && [ \"$(field token)\" = {token} ]; then rm -f \"$f\"; fi\necho RELEASED\n"
            )),
            b"",
        )
        .await
        .map(|_| ())
    }

    async fn break_lock(&self) -> Result<Vec<LockHolder>, LockError> {
        let output = self
            .run(
                locked("if [ -f \"$f\" ]; then echo HELD; cat \"$f\"; rm -f \"$f\"; fi\n"),
                b"",
            )
            .await?;
        Ok(match parse_take(&output) {
            TakeOutcome::Held(holder) => vec![holder],
            _ => Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> LockHolder {
        LockHolder {
            token: "2a-17".into(),
            user: "alice".into(),
            machine: "laptop".into(),
            command: "capstan apply --only etcd".into(),
            pid: 42,
            mode: LockMode::Change,
            since: 1_796_128_803,
        }
    }

    #[test]
    fn holder_round_trips_through_the_file_format() {
        let text = format!("{}expires=1796128833\n", holder().to_lines());
        assert_eq!(LockHolder::from_lines(&text), Some(holder()));
        assert_eq!(parse_take(&format!("HELD\n{text}")), TakeOutcome::Held(holder()));
        assert_eq!(parse_take("TAKEN\n"), TakeOutcome::Taken);
        assert!(matches!(parse_take("HELD\ngarbage\n"), TakeOutcome::Unreadable(_)));
    }

    #[test]
    fn holder_reads_as_who_where_what_since() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_128_803 + 125);
        assert_eq!(
            holder().describe(now),
            "alice on laptop (pid 42) running `capstan apply --only etcd` since 2026-12-01 12:40:03 UTC (2m5s ago)"
        );
    }

    #[test]
    fn one_line_fields() {
        let mut h = LockHolder::this_process("capstan apply\nrm -rf /", LockMode::Fence);
        assert_eq!(h.command, "capstan apply rm -rf /");
        h.since = 0;
        assert!(h.to_lines().lines().count() == 7);
    }
}
