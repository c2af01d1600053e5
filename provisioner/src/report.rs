//! What a run did, per host and per operation: serialisable for `--json`,
//! renderable as a summary table and as a list of changes with diffs.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use console::Style;
use serde::{Serialize, Serializer};

use crate::runner::Mode;

/// Where library code writes its lines for the operator (steps, notes, warnings). The caller
/// hands one in; library code never writes to stderr itself. Clones share one writer, so the lines
/// of nested steps (restore → apply) stay in order, and a quiet caller silences all of them with
/// one [`Reporter::sink`].
#[derive(Clone)]
pub struct Reporter(Arc<Mutex<Box<dyn std::io::Write + Send>>>);

impl Reporter {
    pub fn new(out: impl std::io::Write + Send + 'static) -> Reporter {
        Reporter(Arc::new(Mutex::new(Box::new(out))))
    }
    pub fn stderr() -> Reporter {
        Reporter::new(std::io::stderr())
    }
    /// Reports nothing (`-q`, or a caller that only wants the result).
    pub fn sink() -> Reporter {
        Reporter::new(std::io::sink())
    }
    /// One line. Best effort: a closed stderr must not fail a run.
    pub fn line(&self, text: impl std::fmt::Display) {
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = std::io::Write::write_all(&mut *out, format!("{text}\n").as_bytes());
    }
}

impl std::io::Write for Reporter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

/// For options that still take a `Box<dyn Write + Send>`: `options.out = reporter.into()`.
impl From<Reporter> for Box<dyn std::io::Write + Send> {
    fn from(reporter: Reporter) -> Self {
        Box::new(reporter)
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}

fn as_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    /// Already as desired.
    Ok,
    /// Changed (or, in a dry run, would change).
    Changed,
    Failed,
    /// Not run because an earlier op on the host failed.
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangeRecord {
    pub summary: String,
    pub diff: Option<String>,
    /// What ran (or would run), as shown to the user; never file contents.
    pub commands: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpRecord {
    pub op: String,
    pub status: OpStatus,
    pub changes: Vec<ChangeRecord>,
    pub error: Option<String>,
    #[serde(serialize_with = "as_secs", rename = "elapsed_secs")]
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub host: String,
    pub ok: usize,
    pub changed: usize,
    pub failed: usize,
    pub skipped: usize,
    #[serde(serialize_with = "as_secs", rename = "elapsed_secs")]
    pub elapsed: Duration,
    pub ops: Vec<OpRecord>,
}

impl HostReport {
    pub fn new(host: &str) -> HostReport {
        HostReport {
            host: host.to_string(),
            ok: 0,
            changed: 0,
            failed: 0,
            skipped: 0,
            elapsed: Duration::ZERO,
            ops: Vec::new(),
        }
    }
    pub fn push(&mut self, record: OpRecord) {
        match record.status {
            OpStatus::Ok => self.ok += 1,
            OpStatus::Changed => self.changed += 1,
            OpStatus::Failed => self.failed += 1,
            OpStatus::Skipped => self.skipped += 1,
        }
        self.ops.push(record);
    }
    pub fn success(&self) -> bool {
        self.failed == 0
    }
    pub fn failures(&self) -> impl Iterator<Item = &OpRecord> {
        self.ops.iter().filter(|op| op.status == OpStatus::Failed)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub mode: Mode,
    pub hosts: Vec<HostReport>,
    #[serde(serialize_with = "as_secs", rename = "elapsed_secs")]
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub ok: usize,
    pub changed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl RunReport {
    /// Several reports (phases, components) merged host by host, in first-appearance order,
    /// summing counts and times.
    pub fn merged(mode: Mode, reports: &[&RunReport], elapsed: Duration) -> RunReport {
        let mut hosts: Vec<HostReport> = Vec::new();
        for report in reports {
            for host in &report.hosts {
                let index = match hosts.iter().position(|h| h.host == host.host) {
                    Some(i) => i,
                    None => {
                        hosts.push(HostReport::new(&host.host));
                        hosts.len() - 1
                    }
                };
                let merged = &mut hosts[index];
                for op in &host.ops {
                    merged.push(op.clone());
                }
                merged.elapsed += host.elapsed;
            }
        }
        RunReport { mode, hosts, elapsed }
    }

    pub fn success(&self) -> bool {
        self.hosts.iter().all(HostReport::success)
    }
    pub fn failed_hosts(&self) -> Vec<&str> {
        self.hosts
            .iter()
            .filter(|h| !h.success())
            .map(|h| h.host.as_str())
            .collect()
    }
    pub fn totals(&self) -> Totals {
        self.hosts.iter().fold(Totals::default(), |t, h| Totals {
            ok: t.ok + h.ok,
            changed: t.changed + h.changed,
            failed: t.failed + h.failed,
            skipped: t.skipped + h.skipped,
        })
    }
}

fn style(color: bool, style: Style) -> Style {
    style.force_styling(color)
}

fn format_duration(d: Duration) -> String {
    if d.as_secs() >= 60 {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The host / ok / changed / failed / time table, then one line per failure.
pub fn render_summary(report: &RunReport, color: bool) -> String {
    let changed_label = match report.mode {
        Mode::Apply => "CHANGED",
        Mode::DryRun => "TO CHANGE",
    };
    let width = report.hosts.iter().map(|h| h.host.len()).chain([5]).max().unwrap_or(5);
    let yellow = style(color, Style::new().yellow());
    let red = style(color, Style::new().red().bold());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:>4}  {:>9}  {:>6}  {:>7}  {:>7}",
        "HOST", "OK", changed_label, "FAILED", "SKIPPED", "TIME"
    );
    let row =
        |out: &mut String, name: &str, ok: usize, changed: usize, failed: usize, skipped: usize, time: Duration| {
            // Pad before styling so escape codes do not break the alignment.
            let changed = format!("{changed:>9}");
            let failed = format!("{failed:>6}");
            let changed = if changed.trim() != "0" {
                yellow.apply_to(changed).to_string()
            } else {
                changed
            };
            let failed = if failed.trim() != "0" {
                red.apply_to(failed).to_string()
            } else {
                failed
            };
            let _ = writeln!(
                out,
                "{name:<width$}  {ok:>4}  {changed}  {failed}  {skipped:>7}  {:>7}",
                format_duration(time)
            );
        };
    for h in &report.hosts {
        row(&mut out, &h.host, h.ok, h.changed, h.failed, h.skipped, h.elapsed);
    }
    let t = report.totals();
    row(&mut out, "TOTAL", t.ok, t.changed, t.failed, t.skipped, report.elapsed);
    for h in &report.hosts {
        for failure in h.failures() {
            let message = failure.error.as_deref().unwrap_or("failed");
            let _ = writeln!(out, "{} {}: {}: {message}", red.apply_to("error:"), h.host, failure.op);
        }
    }
    out
}

/// A unified diff, each line indented and (when `color`) coloured: headers bold, additions
/// green, removals red, hunk headers cyan.
pub fn write_styled_diff(out: &mut String, diff: &str, indent: &str, color: bool) {
    let bold = style(color, Style::new().bold());
    let green = style(color, Style::new().green());
    let red = style(color, Style::new().red());
    let cyan = style(color, Style::new().cyan());
    for line in diff.lines() {
        let styled = if line.starts_with("+++") || line.starts_with("---") {
            bold.apply_to(line).to_string()
        } else if line.starts_with('+') {
            green.apply_to(line).to_string()
        } else if line.starts_with('-') {
            red.apply_to(line).to_string()
        } else if line.starts_with("@@") {
            cyan.apply_to(line).to_string()
        } else {
            line.to_string()
        };
        let _ = writeln!(out, "{indent}{styled}");
    }
}

/// Every change per host (what a dry run shows), with diffs and optionally
/// the commands. Diff lines are coloured when `color`.
pub fn render_changes(report: &RunReport, color: bool, show_commands: bool) -> String {
    let bold = style(color, Style::new().bold());
    let verb = match report.mode {
        Mode::Apply => "changed",
        Mode::DryRun => "would change",
    };
    let mut out = String::new();
    for h in &report.hosts {
        let changes: Vec<&ChangeRecord> = h.ops.iter().flat_map(|op| &op.changes).collect();
        if changes.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{} ({} {verb})", bold.apply_to(&h.host), changes.len());
        for change in changes {
            let _ = writeln!(out, "  ~ {}", change.summary);
            if let Some(diff) = &change.diff {
                write_styled_diff(&mut out, diff, "      ", color);
            }
            if show_commands {
                for command in &change.commands {
                    // A script's further lines stay indented under its `$`.
                    let mut lines = command.lines();
                    let _ = writeln!(out, "      $ {}", lines.next().unwrap_or_default());
                    for line in lines {
                        let _ = writeln!(out, "        {line}");
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn reporter_clones_share_one_writer_in_order() {
        let captured = Captured::default();
        let reporter = Reporter::new(captured.clone());
        let nested = reporter.clone();
        reporter.line("==> restore: installing");
        nested.line("==> [1/5] bootstrap");
        let mut boxed: Box<dyn std::io::Write + Send> = nested.into();
        boxed.write_all(b"    3 members healthy\n").unwrap();
        assert_eq!(
            String::from_utf8(captured.0.lock().unwrap().clone()).unwrap(),
            "==> restore: installing\n==> [1/5] bootstrap\n    3 members healthy\n"
        );
    }

    fn report() -> RunReport {
        let mut a = HostReport::new("node-1");
        a.push(OpRecord {
            op: "file /a".into(),
            status: OpStatus::Ok,
            changes: vec![],
            error: None,
            elapsed: Duration::ZERO,
        });
        a.push(OpRecord {
            op: "file /b".into(),
            status: OpStatus::Changed,
            changes: vec![ChangeRecord {
                summary: "update /b".into(),
                diff: Some("--- /b (remote)\n+++ /b (desired)\n@@ -1 +1 @@\n-x\n+y\n".into()),
                commands: vec!["write /b".into()],
            }],
            error: None,
            elapsed: Duration::ZERO,
        });
        a.elapsed = Duration::from_millis(1500);
        let mut b = HostReport::new("node-2");
        b.push(OpRecord {
            op: "file /a".into(),
            status: OpStatus::Failed,
            changes: vec![],
            error: Some("permission denied".into()),
            elapsed: Duration::ZERO,
        });
        b.push(OpRecord {
            op: "file /b".into(),
            status: OpStatus::Skipped,
            changes: vec![],
            error: None,
            elapsed: Duration::ZERO,
        });
        RunReport {
            mode: Mode::DryRun,
            hosts: vec![a, b],
            elapsed: Duration::from_secs(2),
        }
    }

    #[test]
    fn summary_table() {
        let expected = "\
HOST      OK  TO CHANGE  FAILED  SKIPPED     TIME
node-1     1          1       0        0     1.5s
node-2     0          0       1        1     0.0s
TOTAL      1          1       1        1     2.0s
error: node-2: file /a: permission denied
";
        assert_eq!(render_summary(&report(), false), expected);
    }

    #[test]
    fn changes_listing() {
        let expected = "\
node-1 (1 would change)
  ~ update /b
      --- /b (remote)
      +++ /b (desired)
      @@ -1 +1 @@
      -x
      +y
      $ write /b
";
        assert_eq!(render_changes(&report(), false, true), expected);
        assert!(render_changes(&report(), true, false).contains("\u{1b}["));
    }

    #[test]
    fn scripts_stay_indented_under_their_dollar() {
        let mut report = report();
        report.hosts[0].ops[1].changes[0].commands = vec!["set -e\nrm -rf -- /x\nmv -- /y /x".into()];
        assert!(render_changes(&report, false, true)
            .ends_with("      $ set -e\n        rm -rf -- /x\n        mv -- /y /x\n"));
    }

    #[test]
    fn json_shape() {
        let json = serde_json::to_value(report()).unwrap();
        assert_eq!(json["mode"], "dry_run");
        assert_eq!(json["hosts"][1]["ops"][0]["status"], "failed");
        assert_eq!(json["hosts"][0]["elapsed_secs"], 1.5);
    }
}
