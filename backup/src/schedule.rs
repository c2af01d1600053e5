//! Scheduled backups on the etcd members (`capstan backup schedule` installs them; the
//! timer's service runs `capstan backup run --config FILE`).
//!
//! Every member's timer fires; each run asks its local etcd whether this member is the
//! leader and only the leader takes the backup, so N members produce one backup per interval
//! without a lock. The trade-off: with an unhealthy leader (or none), nobody backs up, which
//! the exported `capstan_backup_last_success_timestamp_seconds` shows as staleness.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use capstan_etcd::client::{error_chain, EtcdClient, EtcdEndpoint, EtcdTls};
use capstan_etcd::lock::EtcdLockStore;
use capstan_etcd::pki::BACKUP_CLIENT_CN;
use capstan_provisioner::artifact::sha256_file;
use capstan_provisioner::hint::Hint;
use capstan_provisioner::lock::{ClusterLock, LockHolder, LockMode, LockStore, DEFAULT_LOCK_TTL};
use capstan_provisioner::ops::{
    parse_path_state, path_state_command, plan_file, run_checked, Content, DesiredFile, OpError, Operation, Plan,
};
use capstan_provisioner::pki::{CertRequest, CertificateAuthority};
use capstan_provisioner::report::Reporter;
use capstan_provisioner::transport::{RemoteFile, Transport};
use serde::{Deserialize, Serialize};

use crate::metrics::{previous_success, render, render_scheduler, write_atomic, BackupMetrics, SCHEDULER_METRICS_FILE};
use crate::{
    create, open_store, prune, BackupError, Encryption, EtcdSource, Manifest, PruneOptions, PruneReport, Retention,
    S3Options, StoreUrl, DEFAULT_INCOMPLETE_GRACE,
};

/// Where `capstan backup schedule` installs things on each member.
pub const BINARY_PATH: &str = "/usr/local/bin/capstan";
pub const CONFIG_DIR: &str = "/etc/capstan";
pub const CONFIG_PATH: &str = "/etc/capstan/backup.yaml";
pub const ENVIRONMENT_PATH: &str = "/etc/capstan/backup.env";
pub const INVENTORY_PATH: &str = "/etc/capstan/inventory.yaml";
pub const SERVICE_UNIT: &str = "capstan-backup.service";
pub const TIMER_UNIT: &str = "capstan-backup.timer";
pub const LOCAL_ENDPOINT: &str = "https://127.0.0.1:2379";
pub const PKI_DIR: &str = "/etc/etcd/pki";

/// Where `capstan drill schedule` installs things on each member (next to the backup schedule;
/// both share the binary, which goes only when neither config is left).
pub const DRILL_CONFIG_PATH: &str = "/etc/capstan/drill.yaml";
pub const DRILL_ENVIRONMENT_PATH: &str = "/etc/capstan/drill.env";
pub const DRILL_IDENTITY_PATH: &str = "/etc/capstan/drill-identity.txt";
/// The drill hosts' inventory, SSH key and known_hosts.
pub const DRILL_DIR: &str = "/etc/capstan/drill";
pub const DRILL_INVENTORY_PATH: &str = "/etc/capstan/drill/inventory.yaml";
pub const DRILL_SSH_KEY_PATH: &str = "/etc/capstan/drill/id";
pub const DRILL_KNOWN_HOSTS_PATH: &str = "/etc/capstan/drill/known_hosts";
/// Reports of scheduled drills: `latest.json` and `latest.md`.
pub const DRILL_REPORT_DIR: &str = "/var/lib/capstan/drills";
pub const DRILL_SERVICE_UNIT: &str = "capstan-drill.service";
pub const DRILL_TIMER_UNIT: &str = "capstan-drill.timer";
/// The artifact cache of scheduled drills (a service has no HOME).
pub const DRILL_CACHE_DIR: &str = "/var/cache/capstan/artifacts";

/// The operator's environment variables that are copied into the members' root-only
/// environment file (S3 credentials and endpoint).
pub const S3_ENVIRONMENT: [&str; 5] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
];

/// `/etc/capstan/backup.yaml`: everything one scheduled run needs, except secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub cluster: String,
    /// This member's inventory name (logs and metrics).
    pub member: String,
    /// `s3://bucket/prefix` or `file:///path`.
    pub target: String,
    #[serde(default)]
    pub s3_path_style: bool,
    /// age recipients; scheduled backups are always encrypted.
    pub recipients: Vec<String>,
    pub retention: RetentionConfig,
    /// The inventory stored into each backup.
    pub inventory: PathBuf,
    pub pki_dir: PathBuf,
    pub local_endpoint: String,
    pub metrics_file: PathBuf,
    /// The hosts holding components' state ([`crate::state_push`]): the newest of their pushes
    /// goes into each backup, and a backup fails while none of them has pushed.
    #[serde(default)]
    pub state_hosts: Vec<String>,
}

/// `/etc/capstan/drill.yaml`: everything one scheduled drill needs, except secrets (the age
/// identity and the drill hosts' SSH key are separate root-only files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillScheduleConfig {
    pub cluster: String,
    /// This member's inventory name (logs).
    pub member: String,
    /// Where the backups are: `s3://bucket/prefix` or `file:///path`.
    pub target: String,
    #[serde(default)]
    pub s3_path_style: bool,
    pub identity: PathBuf,
    /// The inventory of the hosts each drill restores into.
    pub drill_inventory: PathBuf,
    #[serde(default)]
    pub expect_keys: Vec<String>,
    /// Report base path (`.json` and `.md` are added).
    pub report: PathBuf,
    pub pki_dir: PathBuf,
    pub local_endpoint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    pub keep_last: u32,
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
    #[serde(default)]
    pub monthly: u32,
}

impl From<capstan_inventory::Retention> for RetentionConfig {
    fn from(r: capstan_inventory::Retention) -> RetentionConfig {
        RetentionConfig {
            keep_last: r.keep_last,
            daily: r.daily,
            weekly: r.weekly,
            monthly: r.monthly,
        }
    }
}

impl From<RetentionConfig> for Retention {
    fn from(r: RetentionConfig) -> Retention {
        Retention {
            keep_last: r.keep_last,
            daily: r.daily,
            weekly: r.weekly,
            monthly: r.monthly,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid value for {name} in the environment file: control characters are not allowed")]
    EnvironmentValue { name: String },
    #[error("invalid OnCalendar expression {calendar:?}: {reason}")]
    Calendar { calendar: String, reason: String },
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the etcd CA in {dir}: {reason}")]
    Ca { dir: String, reason: String },
    #[error("asking the local etcd member ({endpoint}) whether it leads: {reason}")]
    Leader { endpoint: String, reason: String },
    #[error("not backing up now: {reason}")]
    Lock { reason: String },
    #[error("components' state: {0}")]
    StatePush(#[from] crate::state_push::PushError),
    #[error(transparent)]
    Backup(#[from] BackupError),
}

impl Hint for ScheduleError {
    fn hint(&self) -> Option<String> {
        match self {
            ScheduleError::Backup(e) => e.hint(),
            ScheduleError::StatePush(e) => e.hint(),
            _ => None,
        }
    }
}

/// The environment file (systemd `EnvironmentFile=` syntax): each variable of
/// [`S3_ENVIRONMENT`] that `lookup` has, double-quoted.
pub fn environment_file(lookup: impl Fn(&str) -> Option<String>) -> Result<String, ScheduleError> {
    let mut text = String::from("# Managed by capstan: S3 settings for capstan-backup.service (root only).\n");
    for name in S3_ENVIRONMENT {
        let Some(value) = lookup(name).filter(|v| !v.is_empty()) else {
            continue;
        };
        if value.chars().any(char::is_control) {
            return Err(ScheduleError::EnvironmentValue { name: name.into() });
        }
        let quoted = value.replace('\\', "\\\\").replace('"', "\\\"");
        text.push_str(&format!("{name}=\"{quoted}\"\n"));
    }
    Ok(text)
}

/// Cheap syntax check of an `OnCalendar` value before it goes into a unit file (systemd
/// itself validates the expression; the installer also runs `systemd-analyze calendar`).
pub fn check_calendar(calendar: &str) -> Result<(), ScheduleError> {
    let invalid = |reason: &str| ScheduleError::Calendar {
        calendar: calendar.to_string(),
        reason: reason.to_string(),
    };
    if calendar.trim().is_empty() {
        return Err(invalid("it is empty"));
    }
    if calendar.chars().any(char::is_control) {
        return Err(invalid("it contains control characters"));
    }
    Ok(())
}

/// What one scheduled run did.
#[derive(Debug)]
pub enum RunOutcome {
    /// Another member leads; it takes the backup.
    NotLeader,
    BackedUp {
        manifest: Box<Manifest>,
        prune: PruneReport,
        elapsed_secs: f64,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, ScheduleError> {
    std::fs::read(path).map_err(|source| ScheduleError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The member's CA (from its own PKI dir) and a fresh in-memory `capstan-backup` identity.
/// Files backed up as the cluster's PKI, by name.
type PkiFiles = Vec<(String, Vec<u8>)>;

fn local_access(pki_dir: &Path) -> Result<(EtcdTls, PkiFiles), ScheduleError> {
    let dir = pki_dir.display().to_string();
    let cert = read(&pki_dir.join("ca.crt"))?;
    let key = read(&pki_dir.join("ca.key"))?;
    let ca_error = |reason: String| ScheduleError::Ca {
        dir: dir.clone(),
        reason,
    };
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| ca_error("not PEM text".into()));
    let ca = CertificateAuthority::from_pem(&text(&cert)?, &text(&key)?).map_err(|e| ca_error(e.to_string()))?;
    let client = ca
        .issue(&CertRequest::client(BACKUP_CLIENT_CN))
        .map_err(|e| ca_error(e.to_string()))?;
    let tls = EtcdTls {
        ca_cert_pem: ca.cert_pem().to_string(),
        client_cert_pem: client.cert_pem,
        client_key_pem: client.key_pem,
    };
    Ok((tls, vec![("ca.crt".into(), cert), ("ca.key".into(), key)]))
}

/// Whether the local member leads, and every member's client URLs (snapshot sources).
async fn leadership(local_endpoint: &str, tls: &EtcdTls) -> Result<(bool, Vec<EtcdEndpoint>), ScheduleError> {
    let leader_error = |reason: String| ScheduleError::Leader {
        endpoint: local_endpoint.to_string(),
        reason,
    };
    let local = EtcdEndpoint::parse(local_endpoint).map_err(|e| leader_error(e.to_string()))?;
    let client = EtcdClient::connect(std::slice::from_ref(&local), tls)
        .await
        .map_err(|e| leader_error(error_chain(&e)))?;
    let status = client.status(&local).await.map_err(|e| leader_error(error_chain(&e)))?;
    if !status.leader {
        return Ok((false, Vec::new()));
    }
    let members = client.member_list().await.map_err(|e| leader_error(error_chain(&e)))?;
    let mut endpoints = Vec::new();
    for url in members.iter().filter(|m| !m.is_learner).flat_map(|m| &m.client_urls) {
        endpoints.push(EtcdEndpoint::parse(url).map_err(|e| leader_error(e.to_string()))?);
    }
    if endpoints.is_empty() {
        endpoints.push(local);
    }
    Ok((true, endpoints))
}

/// When the backup timer fires next, asked of this member's systemd (`None` outside a timer).
/// While the timer's own service runs (which is when this is asked) systemd names no next
/// elapse, so the timer's interval from `attempt` stands in: the staleness alerts need it.
fn next_run(attempt: f64) -> Option<f64> {
    next_timer_run().or_else(|| timer_interval(TIMER_UNIT).map(|interval| attempt + interval))
}

fn next_timer_run() -> Option<f64> {
    let output = std::process::Command::new("systemctl")
        .args([
            "show",
            "--timestamp=unix",
            "--property=NextElapseUSecRealtime",
            "--value",
        ])
        .arg(TIMER_UNIT)
        .output()
        .ok()?;
    crate::metrics::parse_next_elapse(&String::from_utf8_lossy(&output.stdout))
}

/// The interval of `timer`'s calendar (seconds between its next two elapses), from systemd itself:
/// the timer's `OnCalendar` expression (`TimersCalendar`), then `systemd-analyze calendar
/// --iterations=2` in UTC. Works while the timer's service runs (when systemd names no next elapse).
pub fn timer_interval(timer: &str) -> Option<f64> {
    let shown = std::process::Command::new("systemctl")
        .args(["show", "--property=TimersCalendar", "--value", timer])
        .output()
        .ok()?;
    let expression = calendar_of(&String::from_utf8_lossy(&shown.stdout))?;
    let analyzed = std::process::Command::new("systemd-analyze")
        .args(["calendar", "--iterations=2", &expression])
        .env("TZ", "UTC")
        .output()
        .ok()?;
    calendar_interval(&String::from_utf8_lossy(&analyzed.stdout))
}

/// The expression in `{ OnCalendar=*-*-* *:*:00/30 ; next_elapse=... }` (systemctl's
/// `TimersCalendar`).
fn calendar_of(timers_calendar: &str) -> Option<String> {
    let start = timers_calendar.find("OnCalendar=")? + "OnCalendar=".len();
    let rest = &timers_calendar[start..];
    let expression = rest[..rest.find(" ;").unwrap_or(rest.len())].trim();
    (!expression.is_empty()).then(|| expression.to_string())
}

/// Seconds between `Next elapse:` and `Iter. #2:` in `systemd-analyze calendar --iterations=2`
/// output printed in UTC (`Tue 2026-12-01 16:39:30 UTC`).
fn calendar_interval(output: &str) -> Option<f64> {
    let at = |label: &str| -> Option<i64> {
        let line = output.lines().find(|l| l.trim_start().starts_with(label))?;
        let text = line.trim_start()[label.len()..].trim();
        let mut parts = text.split_whitespace();
        let (_weekday, date, clock, zone) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if zone != "UTC" {
            return None;
        }
        let date = time::Date::parse(date, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
        let clock = time::Time::parse(clock, time::macros::format_description!("[hour]:[minute]:[second]")).ok()?;
        Some(time::PrimitiveDateTime::new(date, clock).assume_utc().unix_timestamp())
    };
    let interval = at("Iter. #2:")? - at("Next elapse:")?;
    (interval > 0).then_some(interval as f64)
}

/// One scheduled run on a member: leader check, backup, prune. Every member writes the
/// scheduler metrics (timer ran, led or not); the leader also the backup's (success or failure).
/// Warnings (metrics not written) go to `report`.
pub async fn run_scheduled(config: &ScheduleConfig, report: &Reporter) -> Result<RunOutcome, ScheduleError> {
    let started = Instant::now();
    let attempt = unix_now();
    let (tls, pki_files) = local_access(&config.pki_dir)?;
    let (leader, endpoints) = leadership(&config.local_endpoint, &tls).await?;
    let scheduler_file = config
        .metrics_file
        .with_file_name(Path::new(SCHEDULER_METRICS_FILE).file_name().unwrap_or_default());
    if let Err(e) = write_atomic(
        &scheduler_file,
        &render_scheduler(&config.cluster, &config.member, attempt, leader, next_run(attempt)),
    ) {
        report.line(format_args!(
            "warning: writing metrics to {}: {e}",
            scheduler_file.display()
        ));
    }
    if !leader {
        return Ok(RunOutcome::NotLeader);
    }
    let result = match shared_lock(config, &endpoints, &tls, report).await {
        Ok(lock) => {
            let result = backup_and_prune(config, tls, pki_files, endpoints).await;
            for error in lock.release().await {
                report.line(format_args!("warning: releasing the shared cluster lock: {error}"));
            }
            result
        }
        Err(e) => Err(e),
    };
    let elapsed_secs = started.elapsed().as_secs_f64();
    let previous = std::fs::read_to_string(&config.metrics_file).unwrap_or_default();
    let (previous_at, previous_size) = previous_success(&previous);
    let metrics = match &result {
        Ok((manifest, _)) => BackupMetrics {
            cluster: config.cluster.clone(),
            last_success: Some(attempt),
            last_attempt: attempt,
            last_duration_secs: elapsed_secs,
            last_size_bytes: Some(manifest.stored_size()),
            last_result_ok: true,
        },
        Err(_) => BackupMetrics {
            cluster: config.cluster.clone(),
            last_success: previous_at,
            last_attempt: attempt,
            last_duration_secs: elapsed_secs,
            last_size_bytes: previous_size,
            last_result_ok: false,
        },
    };
    if let Err(e) = write_atomic(&config.metrics_file, &render(&metrics)) {
        // Metrics are secondary: a full disk must not turn a good backup into a failed run.
        tracing::warn!("writing metrics to {}: {e}", config.metrics_file.display());
        report.line(format_args!(
            "warning: writing metrics to {}: {e}",
            config.metrics_file.display()
        ));
    }
    let (manifest, prune) = result?;
    Ok(RunOutcome::BackedUp {
        manifest: Box::new(manifest),
        prune,
        elapsed_secs,
    })
}

/// The cluster lock's shared form: a scheduled backup runs beside an `apply`, never during a
/// restore or reset (which hold the lock's fence).
async fn shared_lock(
    config: &ScheduleConfig,
    endpoints: &[EtcdEndpoint],
    tls: &EtcdTls,
    report: &Reporter,
) -> Result<ClusterLock, ScheduleError> {
    let client = EtcdClient::connect(endpoints, tls)
        .await
        .map_err(|e| ScheduleError::Lock {
            reason: error_chain(&e),
        })?;
    let holder = LockHolder::this_process(
        &format!("capstan backup run (scheduled, on {})", config.member),
        LockMode::Shared,
    );
    let store: Arc<dyn LockStore> = Arc::new(EtcdLockStore::new(&client));
    ClusterLock::acquire(vec![store], holder, DEFAULT_LOCK_TTL, report.clone())
        .await
        .map_err(|e| ScheduleError::Lock { reason: e.to_string() })
}

/// Whether the etcd member at `local_endpoint` (reached with a client certificate from the CA in
/// `pki_dir`) is the leader: how scheduled drills pick the one member that runs each drill.
pub async fn local_member_leads(pki_dir: &Path, local_endpoint: &str) -> Result<bool, ScheduleError> {
    let (tls, _) = local_access(pki_dir)?;
    Ok(leadership(local_endpoint, &tls).await?.0)
}

async fn backup_and_prune(
    config: &ScheduleConfig,
    tls: EtcdTls,
    pki_files: PkiFiles,
    endpoints: Vec<EtcdEndpoint>,
) -> Result<(Manifest, PruneReport), ScheduleError> {
    let encryption = Encryption::from_args(&config.recipients, false)?;
    let inventory = read(&config.inventory)?;
    let url = StoreUrl::parse(&config.target).map_err(BackupError::Store)?;
    let options = S3Options {
        path_style: config.s3_path_style,
        ..S3Options::default()
    };
    let store = open_store(&url, &options).await.map_err(BackupError::Store)?;
    // Other hosts' component state, as they pushed it into etcd (still encrypted).
    let pushed_state = if config.state_hosts.is_empty() {
        None
    } else {
        let client = EtcdClient::connect(&endpoints, &tls)
            .await
            .map_err(|e| crate::state_push::PushError::Etcd {
                endpoints: endpoints.iter().map(EtcdEndpoint::as_str).collect::<Vec<_>>().join(","),
                reason: error_chain(&e),
            })?;
        Some(crate::state_push::fetch_newest(&client, &config.state_hosts).await?)
    };
    let request = crate::CreateRequest {
        cluster_name: config.cluster.clone(),
        source: EtcdSource { endpoints, tls },
        encryption,
        pki_files,
        inventory,
        // A member reads only its own files; the state hosts push theirs into etcd.
        state: Vec::new(),
        pushed_state,
        progress: None,
    };
    let manifest = create(&store, request).await?;
    let report = prune(
        &Arc::clone(&store),
        &PruneOptions {
            retention: config.retention.into(),
            dry_run: false,
            incomplete_grace: DEFAULT_INCOMPLETE_GRACE,
        },
    )
    .await?;
    Ok((manifest, report))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as f64)
        .unwrap_or(0.0)
}

/// The running capstan executable installed on a member, streamed from the local file (not
/// held in memory) and skipped when the member's copy has the same sha256.
pub struct InstalledBinary {
    desired: DesiredFile,
}

impl InstalledBinary {
    pub fn new(local: &Path, remote_path: &str) -> Result<InstalledBinary, OpError> {
        let (sha256, size) = sha256_file(local)?;
        Ok(InstalledBinary {
            desired: DesiredFile {
                file: RemoteFile {
                    path: remote_path.to_string(),
                    mode: 0o755,
                    owner: Some("root".into()),
                    group: Some("root".into()),
                },
                content: Content::LocalFile(local.to_path_buf()),
                sha256,
                size,
                sensitive: false,
            },
        })
    }
}

#[async_trait]
impl Operation for InstalledBinary {
    fn describe(&self) -> String {
        format!("binary {}", self.desired.file.path)
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        let output = run_checked(t, &path_state_command(&self.desired.file.path)).await?;
        let state = parse_path_state(&output.stdout_str()).map_err(|reason| OpError::Probe {
            host: t.host().to_string(),
            what: self.desired.file.path.clone(),
            reason,
        })?;
        plan_file(t.host(), &self.desired, None, &state, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_file_quotes_and_skips_unset() {
        let vars = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIA\"x\\y".to_string()),
            "AWS_ENDPOINT_URL" => Some("http://10.0.0.1:9000".to_string()),
            "AWS_REGION" => Some(String::new()),
            _ => None,
        };
        let text = environment_file(vars).unwrap();
        assert_eq!(
            text.lines().skip(1).collect::<Vec<_>>(),
            vec![
                "AWS_ACCESS_KEY_ID=\"AKIA\\\"x\\\\y\"",
                "AWS_ENDPOINT_URL=\"http://10.0.0.1:9000\""
            ]
        );
        let bad = environment_file(|_| Some("a\nb".to_string())).unwrap_err();
        assert!(bad.to_string().contains("AWS_ACCESS_KEY_ID"), "{bad}");
        assert!(!bad.to_string().contains("a\nb"), "the value must not be echoed");
    }

    #[test]
    fn calendars_are_checked() {
        assert!(check_calendar("*-*-* 02:00:00").is_ok());
        assert!(check_calendar("*:*:0/20").is_ok());
        assert!(check_calendar(" ").is_err());
        assert!(check_calendar("daily\nExecStart=/bin/sh").is_err());
    }

    #[test]
    fn retention_converts() {
        let r: Retention = RetentionConfig {
            keep_last: 3,
            daily: 1,
            weekly: 2,
            monthly: 4,
        }
        .into();
        assert_eq!((r.keep_last, r.daily, r.weekly, r.monthly), (3, 1, 2, 4));
    }
}

#[cfg(test)]
mod calendar_tests {
    #[test]
    fn the_interval_is_between_the_next_two_elapses() {
        let every_30s = "  Original form: *:*:0/30\nNormalized form: *-*-* *:*:00/30\n    Next elapse: Tue 2026-12-01 16:39:30 UTC\n       From now: 17s left\n       Iter. #2: Tue 2026-12-01 16:40:00 UTC\n       From now: 47s left\n";
        assert_eq!(super::calendar_interval(every_30s), Some(30.0));
        let weekly = "    Next elapse: Sun 2026-12-06 04:00:00 UTC\n       Iter. #2: Sun 2026-12-13 04:00:00 UTC\n";
        assert_eq!(super::calendar_interval(weekly), Some(7.0 * 86400.0));
        assert_eq!(super::calendar_interval("    Next elapse: never\n"), None);
        assert_eq!(
            super::calendar_interval(
                "    Next elapse: Sun 2026-12-06 04:00:00 CET\n       Iter. #2: Sun 2026-12-13 04:00:00 CET\n"
            ),
            None
        );
        assert_eq!(
            super::calendar_of("{ OnCalendar=*-*-* *:*:00/30 ; next_elapse=Tue 2026-12-01 16:40:30 UTC }").as_deref(),
            Some("*-*-* *:*:00/30")
        );
        assert_eq!(super::calendar_of(""), None);
    }
}
