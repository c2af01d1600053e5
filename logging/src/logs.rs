//! `capstan logs`: reading the journals back, merged by time across hosts.
//!
//! The first reachable `logging` host answers from its stored journals (`journalctl --file` over
//! every sender's directory, so journalctl itself merges them by time); when no host has the
//! `logging` role or none is reachable, each host's own journal is read over SSH and the entries
//! are merged here. Either way the caller is told which source answered ([`LogSource`]).
//!
//! Following (`-f`) polls every [`FOLLOW_POLL`]: an aggregator receives entries late (a sender
//! that was cut off sends hours-old entries when it returns), so each poll re-reads the last
//! [`FOLLOW_WINDOW`] by entry time and prints the entries it has not printed yet (by cursor).
//! Entries that reach the aggregator later than that are not shown while following; a query with
//! `--since` shows them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use capstan_inventory::{Cluster, Host};
use capstan_provisioner::hint::Hint;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::pool::Connections;
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::{ExecOptions, Transport};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{aggregators, REMOTE_DIR};

/// Entries shown when neither `--since` nor `--lines` limits a query.
pub const DEFAULT_LINES: usize = 500;
pub const FOLLOW_POLL: Duration = Duration::from_secs(2);
pub const FOLLOW_WINDOW: Duration = Duration::from_secs(60);

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Inventory host names; all hosts when empty.
    pub hosts: Vec<String>,
    /// systemd units (`journalctl -u`); every unit when empty.
    pub units: Vec<String>,
    /// journalctl time specifications (`2026-12-01 10:00`, `-1h`, `@1764583200`, ...).
    pub since: Option<String>,
    pub until: Option<String>,
    /// A regular expression on the message (`journalctl -g`).
    pub grep: Option<String>,
    /// The last N entries (of all hosts together).
    pub lines: Option<usize>,
    pub follow: bool,
}

/// Where the entries came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogSource {
    /// A `logging` host's stored journals.
    Aggregator { host: String },
    /// Each host's own journal, because no aggregator could answer.
    Hosts { reason: String, unreachable: Vec<String> },
}

impl std::fmt::Display for LogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogSource::Aggregator { host } => write!(f, "aggregator {host} ({REMOTE_DIR})"),
            LogSource::Hosts { reason, unreachable } if unreachable.is_empty() => {
                write!(f, "the hosts' own journals ({reason})")
            }
            LogSource::Hosts { reason, unreachable } => write!(
                f,
                "the hosts' own journals ({reason}); unreachable, not shown: {}",
                unreachable.join(", ")
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("unknown host(s) {}: not in the inventory", .0.join(", "))]
    UnknownHosts(Vec<String>),
    #[error("--follow cannot be combined with --until")]
    FollowUntil,
    #[error("no host could be read: {0}")]
    NothingReachable(String),
    #[error("{host}: journalctl failed: {detail}")]
    Journalctl { host: String, detail: String },
}

impl Hint for LogsError {
    fn hint(&self) -> Option<String> {
        match self {
            LogsError::UnknownHosts(_) => Some("--host takes inventory host names".into()),
            LogsError::NothingReachable(_) => Some("check SSH access with `capstan check`".into()),
            LogsError::Journalctl { .. } => {
                Some("check the --since/--until/--grep values (journalctl's syntax)".into())
            }
            LogsError::FollowUntil => None,
        }
    }
}

/// One journal entry: its fields as journalctl's JSON gives them, plus `host`, the sender.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub realtime_us: u64,
    pub host: String,
    pub fields: Map<String, Value>,
}

impl LogEntry {
    /// One line of `journalctl -o json`; `host` when the entry does not name its host.
    pub fn parse(line: &str, host: &str) -> Option<LogEntry> {
        let Value::Object(mut fields) = serde_json::from_str::<Value>(line).ok()? else {
            return None;
        };
        let realtime_us = field_text(&fields, "__REALTIME_TIMESTAMP")?.parse().ok()?;
        let host = field_text(&fields, "_HOSTNAME").unwrap_or_else(|| host.to_string());
        fields.insert("host".into(), Value::String(host.clone()));
        Some(LogEntry {
            realtime_us,
            host,
            fields,
        })
    }

    pub fn cursor(&self) -> Option<String> {
        field_text(&self.fields, "__CURSOR")
    }

    pub fn message(&self) -> String {
        field_text(&self.fields, "MESSAGE").unwrap_or_default()
    }

    /// `2026-12-01T12:42:05.495094Z host identifier[pid]: message`.
    pub fn text_line(&self) -> String {
        let identifier = field_text(&self.fields, "SYSLOG_IDENTIFIER")
            .or_else(|| field_text(&self.fields, "_COMM"))
            .or_else(|| field_text(&self.fields, "_SYSTEMD_UNIT"))
            .unwrap_or_else(|| "-".into());
        let pid = field_text(&self.fields, "_PID")
            .or_else(|| field_text(&self.fields, "SYSLOG_PID"))
            .map(|pid| format!("[{pid}]"))
            .unwrap_or_default();
        format!(
            "{} {} {identifier}{pid}: {}",
            rfc3339_micros(self.realtime_us),
            self.host,
            self.message()
        )
    }

    /// The entry as JSON: journalctl's fields plus `host`.
    pub fn json(&self) -> Value {
        Value::Object(self.fields.clone())
    }
}

/// A field as text: journalctl gives binary-safe values as arrays of bytes.
fn field_text(fields: &Map<String, Value>, name: &str) -> Option<String> {
    match fields.get(name)? {
        Value::String(text) => Some(text.clone()),
        Value::Array(bytes) => {
            let bytes: Vec<u8> = bytes.iter().filter_map(|b| b.as_u64().map(|b| b as u8)).collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        other => Some(other.to_string()),
    }
}

/// Microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn rfc3339_micros(us: u64) -> String {
    let secs = us / 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        us % 1_000_000
    )
}

/// journalctl's arguments for `query` (JSON output), with `since` replacing the query's.
pub fn journalctl_args(query: &LogQuery, since: Option<&str>, lines: Option<usize>) -> String {
    let mut args = vec!["--output=json".to_string(), "--no-pager".into(), "--quiet".into()];
    for unit in &query.units {
        args.push(format!("--unit={}", quote(unit)));
    }
    if let Some(since) = since.or(query.since.as_deref()) {
        args.push(format!("--since={}", quote(since)));
    }
    if let Some(until) = &query.until {
        args.push(format!("--until={}", quote(until)));
    }
    if let Some(grep) = &query.grep {
        args.push(format!("--grep={}", quote(grep)));
    }
    if let Some(lines) = lines {
        args.push(format!("--lines={lines}"));
    }
    args.join(" ")
}

/// The command an aggregator runs: journalctl over every stored journal file of `senders`.
pub fn aggregator_command(senders: &[&str], args: &str) -> String {
    let dirs: Vec<String> = senders.iter().map(|s| quote(&format!("{REMOTE_DIR}/{s}"))).collect();
    format!(
        "set --; for d in {}; do for f in \"$d\"/*.journal \"$d\"/*.journal~; do \
         [ -e \"$f\" ] && set -- \"$@\" \"--file=$f\"; done; done; \
         [ $# -gt 0 ] || exit 0; exec journalctl \"$@\" {args}",
        dirs.join(" ")
    )
}

/// The entries of journalctl's output, in time order.
pub fn parse_entries(stdout: &str, host: &str) -> Vec<LogEntry> {
    stdout.lines().filter_map(|line| LogEntry::parse(line, host)).collect()
}

/// Entries of several sources merged by time (stable: ties keep each source's order).
pub fn merge(mut entries: Vec<LogEntry>) -> Vec<LogEntry> {
    entries.sort_by_key(|e| e.realtime_us);
    entries
}

/// The last `n` entries.
fn tail(mut entries: Vec<LogEntry>, n: Option<usize>) -> Vec<LogEntry> {
    if let Some(n) = n {
        let skip = entries.len().saturating_sub(n);
        entries.drain(..skip);
    }
    entries
}

async fn journalctl(t: &dyn Transport, command: &str) -> Result<String, LogsError> {
    let output = t
        .exec(command, &ExecOptions::default())
        .await
        .map_err(|e| LogsError::Journalctl {
            host: t.host().to_string(),
            detail: e.to_string(),
        })?;
    // journalctl exits 1 without a word when --grep matched nothing.
    if output.success() || (output.exit_code == Some(1) && output.stderr_str().trim().is_empty()) {
        return Ok(output.stdout_str());
    }
    Err(LogsError::Journalctl {
        host: t.host().to_string(),
        detail: output.stderr_str().trim().to_string(),
    })
}

/// Where a query reads from, once connected.
enum Reader {
    Aggregator {
        transport: Arc<dyn Transport>,
        senders: Vec<String>,
    },
    Hosts(Vec<(String, Arc<dyn Transport>)>),
}

impl Reader {
    async fn read(
        &self,
        query: &LogQuery,
        since: Option<&str>,
        lines: Option<usize>,
    ) -> Result<Vec<LogEntry>, LogsError> {
        let args = journalctl_args(query, since, lines);
        match self {
            Reader::Aggregator { transport, senders } => {
                let senders: Vec<&str> = senders.iter().map(String::as_str).collect();
                let stdout = journalctl(transport.as_ref(), &aggregator_command(&senders, &args)).await?;
                Ok(merge(parse_entries(&stdout, transport.host())))
            }
            Reader::Hosts(hosts) => {
                let command = format!("journalctl {args}");
                let outputs = futures::future::join_all(hosts.iter().map(|(name, t)| {
                    let command = command.clone();
                    async move {
                        journalctl(t.as_ref(), &command)
                            .await
                            .map(|out| parse_entries(&out, name))
                    }
                }))
                .await;
                let mut all = Vec::new();
                for output in outputs {
                    all.extend(output?);
                }
                Ok(merge(all))
            }
        }
    }
}

fn selected_hosts<'c>(cluster: &'c Cluster, query: &LogQuery) -> Result<Vec<&'c Host>, LogsError> {
    let unknown: Vec<String> = query
        .hosts
        .iter()
        .filter(|name| !cluster.hosts.iter().any(|h| &h.name == *name))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(LogsError::UnknownHosts(unknown));
    }
    Ok(cluster
        .hosts
        .iter()
        .filter(|h| query.hosts.is_empty() || query.hosts.contains(&h.name))
        .collect())
}

/// Connects to the first reachable aggregator, or else to the selected hosts themselves.
async fn connect(cluster: &Cluster, selected: &[&Host]) -> Result<(Reader, LogSource, Vec<Connections>), LogsError> {
    let mut opened = Vec::new();
    let mut failed = BTreeMap::new();
    let senders: Vec<String> = selected.iter().map(|h| h.name.clone()).collect();
    for aggregator in aggregators(cluster) {
        let (conns, failures) = Connections::connect(&[ssh_target(aggregator)], 1).await;
        if let Some(transport) = conns.get(&aggregator.name) {
            let source = LogSource::Aggregator {
                host: aggregator.name.clone(),
            };
            opened.push(conns);
            return Ok((Reader::Aggregator { transport, senders }, source, opened));
        }
        failed.extend(failures.into_iter().map(|(h, e)| (h, e.to_string())));
    }
    let reason = match failed.is_empty() {
        true => "no host has the logging role".to_string(),
        false => format!("no logging host reachable: {}", join_failures(&failed)),
    };
    let targets: Vec<_> = selected.iter().map(|h| ssh_target(h)).collect();
    let (conns, failures) = Connections::connect(&targets, 16).await;
    let hosts: Vec<(String, Arc<dyn Transport>)> = selected
        .iter()
        .filter_map(|h| conns.get(&h.name).map(|t| (h.name.clone(), t)))
        .collect();
    if hosts.is_empty() {
        let failures: BTreeMap<String, String> = failures.into_iter().map(|(h, e)| (h, e.to_string())).collect();
        conns.close_all().await;
        return Err(LogsError::NothingReachable(join_failures(&failures)));
    }
    let source = LogSource::Hosts {
        reason,
        unreachable: failures.keys().cloned().collect(),
    };
    opened.push(conns);
    Ok((Reader::Hosts(hosts), source, opened))
}

fn join_failures(failures: &BTreeMap<String, String>) -> String {
    failures
        .iter()
        .map(|(h, e)| format!("{h}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Runs `query`: tells `on_source` where it reads from, then hands every entry to `on_entry` in
/// time order. With `follow`, keeps polling until the process is stopped.
pub async fn read_logs(
    cluster: &Cluster,
    query: &LogQuery,
    on_source: &mut dyn FnMut(&LogSource),
    on_entry: &mut dyn FnMut(&LogEntry),
) -> Result<(), LogsError> {
    if query.follow && query.until.is_some() {
        return Err(LogsError::FollowUntil);
    }
    let selected = selected_hosts(cluster, query)?;
    let (reader, source, connections) = connect(cluster, &selected).await?;
    on_source(&source);
    let result = run(&reader, query, on_entry).await;
    for conns in connections {
        conns.close_all().await;
    }
    result
}

async fn run(reader: &Reader, query: &LogQuery, on_entry: &mut dyn FnMut(&LogEntry)) -> Result<(), LogsError> {
    let lines = query.lines.or((query.since.is_none()).then_some(DEFAULT_LINES));
    let started_us = now_us();
    let first = tail(reader.read(query, None, lines).await?, lines);
    let mut last_us = first.last().map(|e| e.realtime_us).unwrap_or(started_us);
    let mut seen: HashSet<String> = HashSet::new();
    for entry in &first {
        seen.extend(entry.cursor());
        on_entry(entry);
    }
    if !query.follow {
        return Ok(());
    }
    let window = FOLLOW_WINDOW.as_micros() as u64;
    loop {
        tokio::time::sleep(FOLLOW_POLL).await;
        let from_us = last_us.max(started_us).saturating_sub(window);
        let since = format!("@{}.{:06}", from_us / 1_000_000, from_us % 1_000_000);
        for entry in reader.read(query, Some(&since), None).await? {
            let Some(cursor) = entry.cursor() else { continue };
            if seen.insert(cursor) {
                last_us = last_us.max(entry.realtime_us);
                on_entry(&entry);
            }
        }
        // Forget what has left the window for good.
        if seen.len() > 100_000 {
            seen.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"_HOSTNAME":"lgdev-3","MESSAGE":"hello","SYSLOG_IDENTIFIER":"capstantest","_PID":"460","__CURSOR":"s=1;i=7a","__REALTIME_TIMESTAMP":"1796128925495094"}"#;

    #[test]
    fn entries_parse_and_print() {
        let entry = LogEntry::parse(LINE, "fallback").unwrap();
        assert_eq!(entry.host, "lgdev-3");
        assert_eq!(entry.cursor().as_deref(), Some("s=1;i=7a"));
        assert_eq!(
            entry.text_line(),
            "2026-12-01T12:42:05.495094Z lgdev-3 capstantest[460]: hello"
        );
        assert_eq!(entry.json()["host"], "lgdev-3");
        let binary = r#"{"MESSAGE":[104,105],"__REALTIME_TIMESTAMP":"0"}"#;
        let entry = LogEntry::parse(binary, "h1").unwrap();
        assert_eq!((entry.host.as_str(), entry.message().as_str()), ("h1", "hi"));
        assert!(LogEntry::parse("not json", "h").is_none());
        assert_eq!(rfc3339_micros(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
    }

    #[test]
    fn entries_merge_by_time() {
        let line = |host: &str, t: u64| format!(r#"{{"_HOSTNAME":"{host}","__REALTIME_TIMESTAMP":"{t}"}}"#);
        let a = parse_entries(&format!("{}\n{}\n", line("a", 1), line("a", 5)), "a");
        let b = parse_entries(&format!("{}\n{}\n", line("b", 3), line("b", 7)), "b");
        let merged: Vec<String> = merge([a, b].concat()).iter().map(|e| e.host.clone()).collect();
        assert_eq!(merged, ["a", "b", "a", "b"]);
        let last = tail(merge(parse_entries(&line("x", 1), "x")), Some(0));
        assert!(last.is_empty());
    }

    #[test]
    fn commands_quote_the_query() {
        let query = LogQuery {
            units: vec!["etcd.service".into()],
            since: Some("-1h".into()),
            grep: Some("a b".into()),
            ..LogQuery::default()
        };
        assert_eq!(
            journalctl_args(&query, None, Some(10)),
            "--output=json --no-pager --quiet --unit=etcd.service --since=-1h --grep='a b' --lines=10"
        );
        assert!(journalctl_args(&query, Some("@5.000001"), None).contains("--since=@5.000001"));
        let command = aggregator_command(&["h1", "h 2"], "--output=json");
        assert!(
            command.starts_with("set --; for d in /var/log/journal/remote/h1 '/var/log/journal/remote/h 2'; do"),
            "{command}"
        );
        assert!(command.ends_with("exec journalctl \"$@\" --output=json"), "{command}");
    }
}
