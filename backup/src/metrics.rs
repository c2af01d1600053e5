//! Prometheus textfile metrics for scheduled backups, read by node-exporter's textfile
//! collector. Rendering and parsing are pure; [`write_atomic`] is the only IO.

use std::io::Write;
use std::path::Path;

/// The scheduled backups' metrics, in the monitoring component's textfile directory.
pub const DEFAULT_METRICS_FILE: &str = capstan_monitoring::textfile_path!("capstan_backup.prom");

/// The outcome of one scheduled backup attempt, as exported.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupMetrics {
    pub cluster: String,
    /// Unix seconds of the last successful backup (carried over from the previous file on failure).
    pub last_success: Option<f64>,
    pub last_attempt: f64,
    pub last_duration_secs: f64,
    /// Stored bytes of the last successful backup.
    pub last_size_bytes: Option<u64>,
    pub last_result_ok: bool,
}

/// Written by every scheduled run, leader or not, next to [`DEFAULT_METRICS_FILE`]: shows that
/// each member's timer fires and which member led.
pub const SCHEDULER_METRICS_FILE: &str = capstan_monitoring::textfile_path!("capstan_backup_scheduler.prom");

/// The scheduler textfile: when this member's timer last ran capstan, whether it led, and when
/// the timer fires next (`next_run`, from systemd; the alert rules take `next - last` as the
/// schedule's interval).
pub fn render_scheduler(cluster: &str, member: &str, run_at: f64, leader: bool, next_run: Option<f64>) -> String {
    let label = format!(
        "{{cluster=\"{}\",member=\"{}\"}}",
        escape_label(cluster),
        escape_label(member)
    );
    let mut text = format!(
        "# HELP capstan_backup_scheduler_last_run_timestamp_seconds Unix time this member's backup timer last ran.\n\
         # TYPE capstan_backup_scheduler_last_run_timestamp_seconds gauge\n\
         capstan_backup_scheduler_last_run_timestamp_seconds{label} {}\n\
         # HELP capstan_backup_scheduler_leader 1 if this member was the etcd leader (and so took the backup) at its last run.\n\
         # TYPE capstan_backup_scheduler_leader gauge\n\
         capstan_backup_scheduler_leader{label} {}\n",
        number(run_at),
        u8::from(leader)
    );
    if let Some(next) = next_run {
        text.push_str(&format!(
            "# HELP capstan_backup_scheduler_next_run_timestamp_seconds Unix time this member's backup timer fires next.\n\
             # TYPE capstan_backup_scheduler_next_run_timestamp_seconds gauge\n\
             capstan_backup_scheduler_next_run_timestamp_seconds{label} {}\n",
            number(next)
        ));
    }
    text
}

const LAST_SUCCESS: &str = "capstan_backup_last_success_timestamp_seconds";
const LAST_SIZE: &str = "capstan_backup_last_size_bytes";

/// The textfile: HELP/TYPE lines and one sample per metric, labelled with the cluster.
pub fn render(metrics: &BackupMetrics) -> String {
    let label = format!("{{cluster=\"{}\"}}", escape_label(&metrics.cluster));
    let mut text = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{label} {value}\n"
        ));
    };
    if let Some(at) = metrics.last_success {
        gauge(
            LAST_SUCCESS,
            "Unix time of the last successful capstan backup.",
            number(at),
        );
    }
    gauge(
        "capstan_backup_last_attempt_timestamp_seconds",
        "Unix time of the last capstan backup attempt on this member.",
        number(metrics.last_attempt),
    );
    gauge(
        "capstan_backup_last_duration_seconds",
        "Duration of the last capstan backup attempt.",
        number(metrics.last_duration_secs),
    );
    if let Some(size) = metrics.last_size_bytes {
        gauge(
            LAST_SIZE,
            "Stored size of the last successful capstan backup.",
            size.to_string(),
        );
    }
    gauge(
        "capstan_backup_last_result",
        "1 if the last capstan backup attempt succeeded, 0 if it failed.",
        u8::from(metrics.last_result_ok).to_string(),
    );
    text
}

/// What a failed attempt carries over from the previous file: (last success time, last size).
pub fn previous_success(text: &str) -> (Option<f64>, Option<u64>) {
    let sample = |name: &str| {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find(|line| line.split(['{', ' ']).next() == Some(name))
            .and_then(|line| line.rsplit(' ').next())
            .map(str::to_string)
    };
    (
        sample(LAST_SUCCESS).and_then(|v| v.parse().ok()),
        sample(LAST_SIZE).and_then(|v| v.parse().ok()),
    )
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Write `text` to `path` so the collector never reads a half-written file: a temp file in
/// the same directory, fsynced, then renamed over the target. Mode 0644 (node-exporter runs
/// as its own user).
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(ok: bool) -> BackupMetrics {
        BackupMetrics {
            cluster: "demo".into(),
            last_success: Some(1_700_000_000.0),
            last_attempt: 1_700_000_100.0,
            last_duration_secs: 2.5,
            last_size_bytes: Some(4096),
            last_result_ok: ok,
        }
    }

    #[test]
    fn renders_textfile_format() {
        let text = render(&metrics(true));
        assert!(text.contains("capstan_backup_last_success_timestamp_seconds{cluster=\"demo\"} 1700000000\n"));
        assert!(text.contains("capstan_backup_last_attempt_timestamp_seconds{cluster=\"demo\"} 1700000100\n"));
        assert!(text.contains("capstan_backup_last_duration_seconds{cluster=\"demo\"} 2.500\n"));
        assert!(text.contains("capstan_backup_last_size_bytes{cluster=\"demo\"} 4096\n"));
        assert!(text.contains("capstan_backup_last_result{cluster=\"demo\"} 1\n"));
        assert!(text.contains("# TYPE capstan_backup_last_result gauge\n"));
        assert!(render(&metrics(false)).contains("capstan_backup_last_result{cluster=\"demo\"} 0\n"));
    }

    #[test]
    fn never_succeeded_has_no_success_sample() {
        let mut m = metrics(false);
        m.last_success = None;
        m.last_size_bytes = None;
        let text = render(&m);
        assert!(!text.contains("last_success"), "{text}");
        assert!(!text.contains("last_size"), "{text}");
    }

    #[test]
    fn scheduler_metrics_name_the_member() {
        let text = render_scheduler("demo", "demo-2", 1_700_000_000.0, false, Some(1_700_003_600.0));
        assert!(text.contains(
            "capstan_backup_scheduler_last_run_timestamp_seconds{cluster=\"demo\",member=\"demo-2\"} 1700000000\n"
        ));
        assert!(text.contains("capstan_backup_scheduler_leader{cluster=\"demo\",member=\"demo-2\"} 0\n"));
        assert!(text.contains("_next_run_timestamp_seconds{cluster=\"demo\",member=\"demo-2\"} 1700003600\n"));
        let without_next = render_scheduler("demo", "demo-1", 1.0, true, None);
        assert!(without_next.contains("_leader{cluster=\"demo\",member=\"demo-1\"} 1\n"));
        assert!(!without_next.contains("next_run"), "{without_next}");
    }

    #[test]
    fn failed_attempts_carry_the_last_success_over() {
        let text = render(&metrics(true));
        assert_eq!(previous_success(&text), (Some(1_700_000_000.0), Some(4096)));
        assert_eq!(previous_success(""), (None, None));
        assert_eq!(previous_success("garbage\n"), (None, None));
    }

    #[test]
    fn writes_atomically_with_mode_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/capstan_backup.prom");
        write_atomic(&path, "a 1\n").unwrap();
        write_atomic(&path, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}

/// `systemctl show --timestamp=unix` of a timer's `NextElapseUSecRealtime` (`@1733058000`) as
/// Unix seconds; `None` for an empty or unset value.
pub fn parse_next_elapse(stdout: &str) -> Option<f64> {
    let value = stdout.trim().strip_prefix('@')?;
    value.parse::<f64>().ok().filter(|v| *v > 0.0)
}

#[cfg(test)]
mod next_elapse_tests {
    #[test]
    fn parses_systemds_unix_timestamps() {
        assert_eq!(super::parse_next_elapse("@1733058000\n"), Some(1_733_058_000.0));
        assert_eq!(super::parse_next_elapse("\n"), None);
        assert_eq!(super::parse_next_elapse("n/a"), None);
    }
}
