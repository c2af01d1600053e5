//! The report of a disaster-recovery drill: what was restored where, every check, RTO and RPO;
//! rendered as JSON (serde), Markdown and Prometheus textfile metrics.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The textfile collector file drills write (node-exporter's `--collector.textfile.directory`).
pub const DRILL_METRICS_FILE: &str = "capstan_drill.prom";
/// Written by every member each time the drill timer fires, leader or not (like the backup
/// scheduler's file): when it ran and the schedule's interval, which the drill-stale alert doubles.
pub const DRILL_SCHEDULER_METRICS_FILE: &str = "capstan_drill_scheduler.prom";

#[cfg(test)]
mod paths {
    #[test]
    fn the_schedule_removes_the_files_it_names() {
        assert_eq!(
            capstan_monitoring::textfile_path!("capstan_drill.prom"),
            format!("{}/{}", capstan_monitoring::TEXTFILE_DIR, super::DRILL_METRICS_FILE)
        );
        assert_eq!(
            capstan_monitoring::textfile_path!("capstan_drill_scheduler.prom"),
            format!(
                "{}/{}",
                capstan_monitoring::TEXTFILE_DIR,
                super::DRILL_SCHEDULER_METRICS_FILE
            )
        );
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrillCheck {
    pub name: String,
    /// Passed; never true for a skipped check.
    pub ok: bool,
    /// Why it failed, what it saw, or (skipped) what the drill target lacks to run it.
    pub detail: String,
    /// Not run: the drill target cannot have what the check needs (`detail` names it).
    #[serde(default)]
    pub skipped: bool,
}

impl DrillCheck {
    /// A check that ran.
    pub fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> DrillCheck {
        DrillCheck {
            name: name.into(),
            ok,
            detail: detail.into(),
            skipped: false,
        }
    }

    /// A check that could not run, with what is missing.
    pub fn skipped(name: impl Into<String>, missing: impl Into<String>) -> DrillCheck {
        DrillCheck {
            name: name.into(),
            ok: false,
            detail: missing.into(),
            skipped: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrillStep {
    pub step: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrillReport {
    pub backup_id: String,
    pub cluster: String,
    /// When the backup was taken (RFC 3339).
    pub backup_created: String,
    pub backup_revision: i64,
    pub etcd_version: String,
    pub member_count: usize,
    /// Where it was restored: `lab <name>` or an inventory path.
    pub target: String,
    /// When the drill started (RFC 3339).
    pub started: String,
    /// Restore start → cluster healthy and verified; `None` when it never got there.
    pub rto_seconds: Option<f64>,
    /// Backup creation → drill start: the data a disaster now would lose.
    pub rpo_seconds: Option<f64>,
    /// The store revision of the restored cluster (lowest member).
    pub restored_revision: Option<i64>,
    pub total_seconds: f64,
    pub steps: Vec<DrillStep>,
    pub checks: Vec<DrillCheck>,
    /// Why the drill stopped early, when it did.
    pub failure: Option<String>,
    pub notes: Vec<String>,
    pub kept: bool,
    pub success: bool,
}

impl DrillReport {
    /// Success: no early failure and every check that ran passed (and at least one ran). Skipped
    /// checks do not fail the drill, but they are never counted as passed: the report and the
    /// metrics show each, with what was missing.
    pub fn settle(&mut self) {
        self.success = self.failure.is_none()
            && self.checks.iter().any(|c| !c.skipped)
            && self.checks.iter().all(|c| c.ok || c.skipped);
    }

    /// How many checks did not run.
    pub fn skipped(&self) -> usize {
        self.checks.iter().filter(|c| c.skipped).count()
    }
}

pub fn now_utc() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// Seconds from `created` (RFC 3339) to `at`; `None` when `created` doesn't parse.
pub fn rpo_seconds(created: &str, at: OffsetDateTime) -> Option<f64> {
    let created = OffsetDateTime::parse(created, &Rfc3339).ok()?;
    Some((at - created).as_seconds_f64().max(0.0))
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |s| format!("{s:.1} s"))
}

pub fn render_markdown(report: &DrillReport) -> String {
    let mut md = String::new();
    let verdict = match (report.success, report.skipped()) {
        (true, 0) => "PASSED".to_string(),
        (true, n) => format!("PASSED, {n} check(s) SKIPPED"),
        (false, _) => "FAILED".to_string(),
    };
    md.push_str(&format!("# capstan DR drill: {verdict}\n\n"));
    md.push_str("| | |\n|---|---|\n");
    let rows = [
        ("backup", report.backup_id.clone()),
        ("cluster", report.cluster.clone()),
        ("backup taken", report.backup_created.clone()),
        ("backup revision", report.backup_revision.to_string()),
        ("etcd version", report.etcd_version.clone()),
        ("members", report.member_count.to_string()),
        ("restored into", report.target.clone()),
        ("drill started", report.started.clone()),
        ("RTO (restore → healthy and verified)", seconds(report.rto_seconds)),
        ("RPO (backup age at drill time)", seconds(report.rpo_seconds)),
        (
            "restored revision",
            report
                .restored_revision
                .map_or_else(|| "n/a".to_string(), |r| r.to_string()),
        ),
        ("total drill time", seconds(Some(report.total_seconds))),
        ("target kept", if report.kept { "yes" } else { "no" }.to_string()),
    ];
    for (key, value) in rows {
        md.push_str(&format!("| {key} | {} |\n", value.replace('|', "\\|")));
    }
    if let Some(failure) = &report.failure {
        md.push_str(&format!("\n**Failure:** {failure}\n"));
    }
    md.push_str("\n## Checks\n\n| check | result | detail |\n|---|---|---|\n");
    for check in &report.checks {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            check.name.replace('|', "\\|"),
            match (check.ok, check.skipped) {
                (true, _) => "ok",
                (false, true) => "SKIPPED",
                (false, false) => "FAILED",
            },
            check.detail.replace('|', "\\|")
        ));
    }
    if !report.steps.is_empty() {
        md.push_str("\n## Steps\n\n| step | seconds |\n|---|---|\n");
        for step in &report.steps {
            md.push_str(&format!("| {} | {:.1} |\n", step.step, step.seconds));
        }
    }
    if !report.notes.is_empty() {
        md.push_str("\n## Notes\n\n");
        for note in &report.notes {
            md.push_str(&format!("- {note}\n"));
        }
    }
    md
}

/// Prometheus text exposition of the drill's outcome.
pub fn prometheus_text(report: &DrillReport, finished_unix: i64) -> String {
    let cluster = report.cluster.replace('\\', "\\\\").replace('"', "\\\"");
    let mut text = String::new();
    text.push_str("# HELP capstan_drill_last_run_timestamp_seconds When the last DR drill finished.\n");
    text.push_str("# TYPE capstan_drill_last_run_timestamp_seconds gauge\n");
    text.push_str(&format!(
        "capstan_drill_last_run_timestamp_seconds{{cluster=\"{cluster}\"}} {finished_unix}\n"
    ));
    text.push_str("# HELP capstan_drill_success Whether the last DR drill passed every check (1) or not (0).\n");
    text.push_str("# TYPE capstan_drill_success gauge\n");
    text.push_str(&format!(
        "capstan_drill_success{{cluster=\"{cluster}\"}} {}\n",
        u8::from(report.success)
    ));
    text.push_str("# HELP capstan_drill_checks_skipped Checks the last DR drill could not run (the report names what was missing).\n");
    text.push_str("# TYPE capstan_drill_checks_skipped gauge\n");
    text.push_str(&format!(
        "capstan_drill_checks_skipped{{cluster=\"{cluster}\"}} {}\n",
        report.skipped()
    ));
    if let Some(rto) = report.rto_seconds {
        text.push_str("# HELP capstan_drill_rto_seconds Restore start to healthy and verified, in the last drill.\n");
        text.push_str("# TYPE capstan_drill_rto_seconds gauge\n");
        text.push_str(&format!(
            "capstan_drill_rto_seconds{{cluster=\"{cluster}\"}} {rto:.3}\n"
        ));
    }
    if let Some(rpo) = report.rpo_seconds {
        text.push_str("# HELP capstan_drill_rpo_seconds Age of the restored backup at drill time.\n");
        text.push_str("# TYPE capstan_drill_rpo_seconds gauge\n");
        text.push_str(&format!(
            "capstan_drill_rpo_seconds{{cluster=\"{cluster}\"}} {rpo:.3}\n"
        ));
    }
    text
}

/// The drill scheduler's textfile ([`DRILL_SCHEDULER_METRICS_FILE`]): when this member's timer ran,
/// and the schedule's interval (from systemd's calendar), absent when it could not be had.
pub fn scheduler_text(cluster: &str, member: &str, run_at: i64, interval: Option<f64>) -> String {
    let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let label = format!("{{cluster=\"{}\",member=\"{}\"}}", escape(cluster), escape(member));
    let mut text = format!(
        "# HELP capstan_drill_scheduler_last_run_timestamp_seconds Unix time this member's drill timer last ran.\n\
         # TYPE capstan_drill_scheduler_last_run_timestamp_seconds gauge\n\
         capstan_drill_scheduler_last_run_timestamp_seconds{label} {run_at}\n"
    );
    if let Some(interval) = interval {
        text.push_str(&format!(
            "# HELP capstan_drill_schedule_interval_seconds Seconds between two firings of the drill timer.\n\
             # TYPE capstan_drill_schedule_interval_seconds gauge\n\
             capstan_drill_schedule_interval_seconds{label} {}\n",
            interval.round() as i64
        ));
    }
    text
}

/// Writes `contents` to `dir/name` atomically (temp file, fsync, rename), so the collector
/// never reads a half-written file.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8], mode: u32) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map(|_| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DrillReport {
        DrillReport {
            backup_id: "20261128T041500Z-3f9a".into(),
            cluster: "demo".into(),
            backup_created: "2026-11-28T04:15:00Z".into(),
            backup_revision: 10_042,
            etcd_version: "3.5.1".into(),
            member_count: 3,
            target: "lab drill-3f9a".into(),
            started: "2026-11-28T05:15:00Z".into(),
            rto_seconds: Some(42.5),
            rpo_seconds: rpo_seconds("2026-11-28T04:15:00Z", time::macros::datetime!(2026-11-28 05:15:00 UTC)),
            restored_revision: Some(10_042),
            total_seconds: 80.0,
            steps: vec![DrillStep {
                step: "restore".into(),
                seconds: 40.0,
            }],
            checks: vec![
                DrillCheck::new("same hash-kv on every member", true, "a, a, a"),
                DrillCheck::new("key app/config exists", false, "0 keys"),
            ],
            failure: None,
            notes: vec![],
            kept: false,
            success: true,
        }
    }

    #[test]
    fn one_failed_check_fails_the_drill() {
        let mut report = sample();
        report.settle();
        assert!(!report.success);
        report.checks.pop();
        report.settle();
        assert!(report.success);
        report.failure = Some("lab up failed".into());
        report.settle();
        assert!(!report.success);
        report.failure = None;
        report.checks.clear();
        report.settle();
        assert!(!report.success, "a drill that checked nothing did not pass");
    }

    #[test]
    fn skipped_checks_show_but_neither_pass_nor_fail_the_drill() {
        let mut report = sample();
        report.checks.pop();
        report.checks.push(DrillCheck::skipped(
            "kubernetes: API ready",
            "no control plane: tarballs missing",
        ));
        report.settle();
        assert!(report.success);
        let md = render_markdown(&report);
        assert!(
            md.starts_with("# capstan DR drill: PASSED, 1 check(s) SKIPPED\n"),
            "{md}"
        );
        assert!(
            md.contains("| kubernetes: API ready | SKIPPED | no control plane: tarballs missing |"),
            "{md}"
        );
        let metrics = prometheus_text(&report, 1);
        assert!(
            metrics.contains("capstan_drill_checks_skipped{cluster=\"demo\"} 1\n"),
            "{metrics}"
        );
        // Only skipped checks: nothing was verified, so the drill did not pass.
        report.checks.retain(|c| c.skipped);
        report.settle();
        assert!(!report.success);
    }

    #[test]
    fn rpo_is_the_backup_age() {
        assert_eq!(sample().rpo_seconds, Some(3600.0));
        assert_eq!(rpo_seconds("yesterday", OffsetDateTime::UNIX_EPOCH), None);
    }

    #[test]
    fn markdown_and_metrics_show_the_outcome() {
        let mut report = sample();
        report.settle();
        let md = render_markdown(&report);
        assert!(md.starts_with("# capstan DR drill: FAILED\n"), "{md}");
        assert!(md.contains("| RTO (restore → healthy and verified) | 42.5 s |"), "{md}");
        assert!(md.contains("| RPO (backup age at drill time) | 3600.0 s |"), "{md}");
        assert!(md.contains("| key app/config exists | FAILED | 0 keys |"), "{md}");
        let metrics = prometheus_text(&report, 1_800_000_000);
        assert!(
            metrics.contains("capstan_drill_success{cluster=\"demo\"} 0\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("capstan_drill_rto_seconds{cluster=\"demo\"} 42.500\n"),
            "{metrics}"
        );
        assert!(metrics.contains("capstan_drill_last_run_timestamp_seconds{cluster=\"demo\"} 1800000000\n"));
    }

    #[test]
    fn the_scheduler_file_gives_the_interval() {
        let text = scheduler_text("demo", "m\"1", 1_800_000_000, Some(86_400.0));
        assert!(
            text.contains(
                "capstan_drill_scheduler_last_run_timestamp_seconds{cluster=\"demo\",member=\"m\\\"1\"} 1800000000\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("capstan_drill_schedule_interval_seconds{cluster=\"demo\",member=\"m\\\"1\"} 86400\n"),
            "{text}"
        );
        assert!(!scheduler_text("demo", "m1", 1, None).contains("interval"));
    }

    #[test]
    fn textfile_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_atomic(dir.path(), DRILL_METRICS_FILE, b"a 1\n", 0o644).unwrap();
        write_atomic(dir.path(), DRILL_METRICS_FILE, b"a 2\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }
}
