//! `capstan backup create|list|verify|prune`: etcd snapshot + PKI + inventory, age-encrypted,
//! to S3 or a local directory (see docs/backup.md).

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use capstan_backup::metrics::{DEFAULT_METRICS_FILE, SCHEDULER_METRICS_FILE};
use capstan_backup::schedule::{
    check_calendar, environment_file, run_scheduled, InstalledBinary, RemovedUnit, RetentionConfig, RunOutcome,
    ScheduleConfig, BINARY_PATH, CONFIG_DIR, CONFIG_PATH, DRILL_CONFIG_PATH, ENVIRONMENT_PATH, INVENTORY_PATH,
    LOCAL_ENDPOINT, PKI_DIR, SERVICE_UNIT, TIMER_UNIT,
};
use capstan_backup::{
    parse_recipients_file, BackupError, BackupSummary, CreateRequest, Decision, Encryption, EtcdSource, Progress,
    ProgressFn, PruneOptions, Retention, S3Options, Store, StoreError, StoreUrl, VerifyReport, VerifyTarget,
    DEFAULT_INCOMPLETE_GRACE,
};
use capstan_etcd::client::EtcdTls;
use capstan_etcd::inspect::{fetch_ca, inspect_hosts, operator_endpoints, EtcdHost};
use capstan_etcd::pki::BACKUP_CLIENT_CN;
use capstan_inventory::Cluster;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{Absent, Command, Directory, File, OperationExt, Service, SystemdUnit};
use capstan_provisioner::pki::CertRequest;
use capstan_provisioner::report::{render_changes, render_summary};
use capstan_provisioner::runner::{self, HostOps, Mode, NoProgress, RunOptions, Runner};
use capstan_provisioner::transport::ExecOptions;

use crate::cli::{BackupCommand, BackupTargetArgs};
use crate::cmd_inventory::load;
use crate::output::{table, Failure, Output};

/// Progress lines on stderr every this many snapshot bytes.
const PROGRESS_STEP: u64 = 64 * 1024 * 1024;

pub fn run(cmd: BackupCommand, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    match cmd {
        BackupCommand::Create {
            target,
            recipients,
            recipients_file,
            no_encryption,
        } => {
            let cluster = load(inventory)?;
            let mut explicit = recipients;
            if let Some(file) = &recipients_file {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| Failure::new(format!("reading {}: {e}", file.display())))?;
                explicit.extend(parse_recipients_file(&text));
            }
            let encryption = encryption(&cluster, &explicit, no_encryption)?;
            let url = target_url(&target, Some(&cluster))?;
            runtime.block_on(create(&cluster, encryption, &url, &target, out))
        }
        BackupCommand::List { target } => {
            let cluster = optional_cluster(&target, inventory)?;
            let url = target_url(&target, cluster.as_ref())?;
            runtime.block_on(list(&url, &target, out))
        }
        BackupCommand::Verify { id, target, identity } => {
            let cluster = optional_cluster(&target, inventory)?;
            let url = target_url(&target, cluster.as_ref())?;
            let which = VerifyTarget::parse(&id).map_err(|e| {
                Failure::new(e.to_string())
                    .hint("pass a backup id from `capstan backup list`, or `latest`")
                    .code(2)
            })?;
            runtime.block_on(verify(&url, &target, &which, identity.as_deref(), out))
        }
        BackupCommand::Prune { target, dry_run } => {
            let cluster = load(inventory)?;
            let url = target_url(&target, Some(&cluster))?;
            let retention = cluster.backup.as_ref().map(|b| b.retention).unwrap_or_default();
            let options = PruneOptions {
                retention: Retention {
                    keep_last: retention.keep_last,
                    daily: retention.daily,
                    weekly: retention.weekly,
                    monthly: retention.monthly,
                },
                dry_run,
                incomplete_grace: DEFAULT_INCOMPLETE_GRACE,
            };
            runtime.block_on(prune(&url, &target, &options, out))
        }
        BackupCommand::Schedule {
            target,
            on_calendar,
            remove,
            dry_run,
        } => {
            let cluster = load(inventory)?;
            runtime.block_on(schedule(&cluster, &target, on_calendar, remove, dry_run, out))
        }
        BackupCommand::Run { config } => runtime.block_on(run_member(&config, out)),
    }
}

/// list and verify need the inventory only for the target.
fn optional_cluster(target: &BackupTargetArgs, inventory: Option<&Path>) -> anyhow::Result<Option<Cluster>> {
    if target.target.is_some() && inventory.is_none() {
        return Ok(None);
    }
    load(inventory).map(Some)
}

pub(crate) fn target_url(args: &BackupTargetArgs, cluster: Option<&Cluster>) -> anyhow::Result<StoreUrl> {
    let text = match (&args.target, cluster.and_then(|c| c.backup.as_ref())) {
        (Some(url), _) => url.clone(),
        (None, Some(settings)) => settings.target.to_string(),
        (None, None) => {
            return Err(Failure::new("no backup target")
                .hint("pass --target s3://bucket/prefix or file:///path, or set backup.target in the inventory")
                .code(2)
                .into())
        }
    };
    StoreUrl::parse(&text).map_err(|e| Failure::new(e.to_string()).code(2).into())
}

fn encryption(cluster: &Cluster, explicit: &[String], no_encryption: bool) -> anyhow::Result<Encryption> {
    // --no-encryption overrides the inventory's recipients, but not ones given alongside it.
    let recipients: Vec<String> = if !explicit.is_empty() || no_encryption {
        explicit.to_vec()
    } else {
        cluster
            .backup
            .as_ref()
            .map(|b| b.recipients.clone())
            .unwrap_or_default()
    };
    Encryption::from_args(&recipients, no_encryption).map_err(|e| backup_failure(e).into())
}

pub(crate) async fn open(url: &StoreUrl, args: &BackupTargetArgs) -> anyhow::Result<Arc<dyn Store>> {
    let options = S3Options {
        path_style: args.s3_path_style,
        ..S3Options::default()
    };
    capstan_backup::open_store(url, &options)
        .await
        .map_err(|e| backup_failure(BackupError::Store(e)).into())
}

/// A user-facing failure with a hint where there is something to do.
pub(crate) fn backup_failure(error: BackupError) -> Failure {
    let hint = match &error {
        BackupError::NoRecipients => Some(
            "pass --recipient age1... (age-keygen prints one; keep its identity file offline), set \
             backup.recipients in the inventory, or say --no-encryption",
        ),
        BackupError::WrongIdentity { .. } | BackupError::Identity { .. } => {
            Some("pass the age identity whose public key is one of the backup's recipients")
        }
        BackupError::NoCompleteBackup { .. } | BackupError::NotFound { .. } => {
            Some("`capstan backup list` shows the backups in the target")
        }
        BackupError::Incomplete { .. } => Some("pick a complete backup from `capstan backup list`"),
        BackupError::Store(StoreError::Io { store, .. }) if store.starts_with("s3://") => Some(
            "check the AWS credentials (environment, ~/.aws, instance role), AWS_ENDPOINT_URL and, for \
             MinIO/Ceph-style servers, --s3-path-style",
        ),
        BackupError::Snapshot { .. } | BackupError::Etcd(_) => Some("check `capstan status`: is etcd healthy?"),
        _ => None,
    };
    let failure = Failure::new(error.to_string());
    match hint {
        Some(hint) => failure.hint(hint),
        None => failure,
    }
}

/// How to reach etcd and what PKI to back up: the CA is read over SSH from the first
/// reachable member that holds it and a short-lived `capstan-backup` client certificate is
/// issued in memory; the snapshot sources are the members reachable over SSH (inventory
/// addresses), so a backup works while any CA holder is up.
async fn etcd_access(cluster: &Cluster) -> anyhow::Result<(EtcdSource, Vec<(String, Vec<u8>)>)> {
    let (hosts, connections) = inspect_hosts(cluster, 8, None).await.map_err(inspect_failure)?;
    let ca = fetch_ca(&hosts).await;
    connections.close_all().await;
    let ca = ca.map_err(|e| {
        let unreachable = unreachable_hosts(&hosts);
        let mut message = e.to_string();
        if !unreachable.is_empty() {
            message.push_str(&format!(" (unreachable: {})", unreachable.join(", ")));
        }
        Failure::new(message).hint("run `capstan apply` first, or bring a member holding the CA back")
    })?;
    let client = ca
        .issue(&CertRequest::client(BACKUP_CLIENT_CN))
        .map_err(|e| Failure::new(format!("issuing the backup client certificate: {e}")))?;
    let reachable: Vec<EtcdHost> = hosts.iter().filter(|h| h.transport.is_some()).cloned().collect();
    let source = EtcdSource {
        endpoints: operator_endpoints(&reachable).into_values().collect(),
        tls: EtcdTls {
            ca_cert_pem: ca.cert_pem().to_string(),
            client_cert_pem: client.cert_pem,
            client_key_pem: client.key_pem,
        },
    };
    let pki_files = vec![
        ("ca.crt".to_string(), ca.cert_pem().as_bytes().to_vec()),
        ("ca.key".to_string(), ca.key_pem().as_bytes().to_vec()),
    ];
    Ok((source, pki_files))
}

pub(crate) fn inspect_failure(e: capstan_etcd::inspect::InspectError) -> Failure {
    Failure::new(e.to_string()).hint("give at least one host the etcd role and run `capstan apply`")
}

fn unreachable_hosts(hosts: &[EtcdHost]) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| h.transport.is_none())
        .map(|h| match &h.connect_error {
            Some(e) => format!("{} ({e})", h.name()),
            None => h.name().to_string(),
        })
        .collect()
}

fn stderr_progress(out: &Output) -> Option<ProgressFn> {
    if out.quiet {
        return None;
    }
    let next = Arc::new(AtomicU64::new(PROGRESS_STEP));
    Some(Arc::new(move |p: &Progress| {
        if p.bytes >= next.load(Ordering::Relaxed) || p.remaining == 0 {
            next.store(p.bytes + PROGRESS_STEP, Ordering::Relaxed);
            eprintln!(
                "snapshot from {} (attempt {}): {} received, {} to go",
                p.endpoint,
                p.attempt,
                human_bytes(p.bytes),
                human_bytes(p.remaining)
            );
        }
    }))
}

async fn create(
    cluster: &Cluster,
    encryption: Encryption,
    url: &StoreUrl,
    args: &BackupTargetArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let inventory = std::fs::read(&cluster.source_path)
        .map_err(|e| Failure::new(format!("reading {}: {e}", cluster.source_path.display())))?;
    let (source, pki_files) = etcd_access(cluster).await?;
    let store = open(url, args).await?;
    out.status(format!("backing up etcd of cluster {} to {url}", cluster.name));
    let started = Instant::now();
    let request = CreateRequest {
        cluster_name: cluster.name.clone(),
        source,
        encryption,
        pki_files,
        inventory,
        progress: stderr_progress(out),
    };
    let manifest = capstan_backup::create(&store, request).await.map_err(backup_failure)?;
    let elapsed = started.elapsed().as_secs_f64();
    let size = manifest.stored_size();
    println!("{}", manifest.id);
    out.status(format!(
        "backup {} complete: {} ({}) at revision {} from {} in {elapsed:.1}s ({}/s)",
        manifest.id,
        human_bytes(size),
        if manifest.encrypted {
            "encrypted"
        } else {
            "NOT encrypted"
        },
        manifest.revision,
        manifest.source_member,
        human_bytes((size as f64 / elapsed.max(0.001)) as u64)
    ));
    Ok(ExitCode::SUCCESS)
}

async fn list(url: &StoreUrl, args: &BackupTargetArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let store = open(url, args).await?;
    let backups = capstan_backup::list(&store).await.map_err(backup_failure)?;
    if out.json() {
        out.print_json(&backups)?;
    } else {
        print!("{}", render_list(&backups, SystemTime::now()));
    }
    Ok(ExitCode::SUCCESS)
}

fn render_list(backups: &[BackupSummary], now: SystemTime) -> String {
    let mut rows = vec![["ID", "AGE", "SIZE", "REVISION", "ENCRYPTED", "COMPLETE"]
        .map(String::from)
        .to_vec()];
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for backup in backups.iter().rev() {
        let age = (now - backup.id.timestamp().unix_timestamp()).max(0);
        rows.push(vec![
            backup.id.to_string(),
            human_age(age),
            human_bytes(backup.size),
            backup.revision.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            backup
                .encrypted
                .map(|e| if e { "yes" } else { "NO" }.to_string())
                .unwrap_or_else(|| "-".into()),
            if backup.complete { "yes" } else { "no" }.into(),
        ]);
    }
    table(&rows)
}

async fn verify(
    url: &StoreUrl,
    args: &BackupTargetArgs,
    which: &VerifyTarget,
    identity: Option<&Path>,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let store = open(url, args).await?;
    let report = capstan_backup::verify(&store, which, identity)
        .await
        .map_err(backup_failure)?;
    if out.json() {
        out.print_json(&report)?;
    } else {
        print!("{}", render_verify(&report));
    }
    if report.ok() {
        return Ok(ExitCode::SUCCESS);
    }
    Err(Failure::new(format!(
        "backup {} failed verification ({} problems; see above)",
        report.id,
        report.problems.len()
    ))
    .into())
}

fn render_verify(report: &VerifyReport) -> String {
    let mut text = String::new();
    for object in &report.objects {
        let problems: Vec<_> = report.problems.iter().filter(|p| p.object == object.name).collect();
        let mut checked = vec!["stored sha256"];
        if object.plaintext_checked {
            checked.push("plaintext sha256");
        }
        if object.etcd_hash_checked {
            checked.push("etcd snapshot hash");
        }
        let verdict = if problems.is_empty() { "ok" } else { "FAILED" };
        text.push_str(&format!("{}: {verdict} ({})\n", object.name, checked.join(", ")));
        for problem in problems {
            text.push_str(&format!(
                "  {}: expected {}, got {}\n",
                problem.check, problem.expected, problem.actual
            ));
        }
    }
    for note in &report.notes {
        text.push_str(&format!("note: {note}\n"));
    }
    text.push_str(&format!(
        "backup {}: {}\n",
        report.id,
        match (report.ok(), report.plaintext_checked) {
            (true, true) => "verified",
            (true, false) => "stored objects intact (contents NOT verified: not decrypted)",
            (false, _) => "CORRUPTED",
        }
    ));
    text
}

async fn prune(
    url: &StoreUrl,
    args: &BackupTargetArgs,
    options: &PruneOptions,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let store = open(url, args).await?;
    let report = capstan_backup::prune(&store, options).await.map_err(backup_failure)?;
    if out.json() {
        out.print_json(&report)?;
    } else {
        let verb = if report.dry_run { "would delete" } else { "deleted" };
        for entry in &report.backups {
            match &entry.decision {
                Decision::Keep(reasons) => println!("keep    {}  ({})", entry.id, reasons.join(", ")),
                Decision::Delete(reason) => println!("{verb:<7} {}  ({reason})", entry.id),
            }
        }
        for upload in &report.aborted_uploads {
            let verb = if report.dry_run { "would abort" } else { "aborted" };
            println!("{verb} unfinished upload {}", upload.name);
        }
    }
    out.status(format!(
        "{} of {} backups {}",
        report.deleted().count(),
        report.backups.len(),
        if report.dry_run {
            "would be deleted (dry run)"
        } else {
            "deleted"
        }
    ));
    Ok(ExitCode::SUCCESS)
}

/// `capstan backup schedule [--remove] [--dry-run]`: converge every etcd member to "timer
/// installed" (or "nothing installed") through the ops engine, so a re-run changes nothing.
async fn schedule(
    cluster: &Cluster,
    target: &BackupTargetArgs,
    on_calendar: Option<String>,
    remove: bool,
    dry_run: bool,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let inputs = if remove {
        None
    } else {
        Some(install_inputs(cluster, target, on_calendar)?)
    };
    if let Some(InstallInputs {
        url: StoreUrl::File { path },
        ..
    }) = &inputs
    {
        out.status(format!(
            "warning: {} is a directory on each member: scheduled backups land on whichever member leads at the time; \
             use S3, or a shared mount (e.g. NFS) at that path on every member",
            path.display()
        ));
    }
    let (hosts, connections) = reachable_members(cluster, "the timer").await?;
    let plans = match inputs {
        None => Ok(removal_ops(&hosts)),
        Some(inputs) => install_ops(cluster, target, inputs, &hosts).await,
    };
    let plans = match plans {
        Ok(plans) => plans,
        Err(e) => {
            connections.close_all().await;
            return Err(e);
        }
    };
    let what = if remove {
        "backup schedule removal"
    } else {
        "backup schedule"
    };
    let rerun = "capstan backup schedule";
    let code = converge_members(plans, dry_run, what, rerun, out).await;
    connections.close_all().await;
    code
}

/// Every etcd member, connected; an error naming the unreachable ones (`what` gets installed
/// on every member, so a partial install is refused).
pub(crate) async fn reachable_members(
    cluster: &Cluster,
    what: &str,
) -> anyhow::Result<(Vec<EtcdHost>, capstan_provisioner::pool::Connections)> {
    let (hosts, connections) = inspect_hosts(cluster, 8, None).await.map_err(inspect_failure)?;
    let unreachable = unreachable_hosts(&hosts);
    if !unreachable.is_empty() {
        connections.close_all().await;
        return Err(
            Failure::new(format!("etcd members unreachable over SSH: {}", unreachable.join(", ")))
                .hint(format!(
                    "every etcd member gets {what}; run `capstan check` and try again when all are up"
                ))
                .into(),
        );
    }
    Ok((hosts, connections))
}

/// Run member plans (apply, or dry run with diffs), print the summary, exit status.
pub(crate) async fn converge_members(
    plans: Vec<HostOps>,
    dry_run: bool,
    what: &str,
    rerun: &str,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let progress = if out.quiet {
        Arc::new(NoProgress) as Arc<dyn runner::Progress>
    } else {
        runner::stderr_progress()
    };
    let runner = Runner::new(
        RunOptions {
            mode: if dry_run { Mode::DryRun } else { Mode::Apply },
            ..RunOptions::default()
        },
        progress,
    );
    let report = runner.run(plans).await;
    if out.json() {
        out.print_json(&serde_json::json!({ "dry_run": dry_run, "summary": &report }))?;
    } else {
        if dry_run || out.verbose > 0 {
            print!("{}", render_changes(&report, out.color, false));
        }
        print!("{}", render_summary(&report, out.color));
    }
    let totals = report.totals();
    out.status(format!(
        "{what}{} in {:.1}s: {} ok, {} {}, {} failed",
        if dry_run { " (dry run, nothing changed)" } else { "" },
        report.elapsed.as_secs_f64(),
        totals.ok,
        totals.changed,
        if dry_run { "would change" } else { "changed" },
        totals.failed
    ));
    if report.success() {
        return Ok(ExitCode::SUCCESS);
    }
    Err(Failure::new(format!("failed on {}", report.failed_hosts().join(", ")))
        .hint(format!("see the errors above; fix them and run `{rerun}` again"))
        .into())
}

/// The calendar: `--on-calendar`, else the inventory's `backup.schedule`.
fn calendar(cluster: &Cluster, flag: Option<String>) -> anyhow::Result<String> {
    let calendar = flag
        .or_else(|| cluster.backup.as_ref().and_then(|b| b.schedule.clone()))
        .ok_or_else(|| {
            Failure::new("no backup schedule")
                .hint("pass --on-calendar '*-*-* 02:00:00' (systemd OnCalendar syntax) or set backup.schedule")
                .code(2)
        })?;
    check_calendar(&calendar).map_err(|e| Failure::new(e.to_string()).code(2))?;
    Ok(calendar)
}

/// Let one member's systemd judge the calendar expression before it goes into a unit.
pub(crate) async fn validate_calendar_on(host: &EtcdHost, calendar: &str) -> anyhow::Result<()> {
    let Some(transport) = &host.transport else {
        return Ok(());
    };
    let command = format!("systemd-analyze calendar -- {}", quote(calendar));
    let output = transport
        .exec(&command, &ExecOptions::default())
        .await
        .map_err(|e| Failure::new(format!("{}: checking the calendar: {e}", host.name())))?;
    if output.success() {
        return Ok(());
    }
    let detail = output.stderr_str().trim().to_string();
    Err(
        Failure::new(format!("invalid OnCalendar expression {calendar:?}: {detail}"))
            .hint("see `man systemd.time` (CALENDAR EVENTS), e.g. '*-*-* 02:00:00' or 'hourly'")
            .code(2)
            .into(),
    )
}

/// What install needs from the inventory and flags, checked before connecting anywhere.
struct InstallInputs {
    on_calendar: String,
    url: StoreUrl,
    recipients: Vec<String>,
}

fn install_inputs(
    cluster: &Cluster,
    target: &BackupTargetArgs,
    on_calendar: Option<String>,
) -> anyhow::Result<InstallInputs> {
    let on_calendar = calendar(cluster, on_calendar)?;
    let url = target_url(target, Some(cluster))?;
    // Scheduled backups are always encrypted: the timer has nobody to say --no-encryption.
    let recipients = cluster
        .backup
        .as_ref()
        .map(|b| b.recipients.clone())
        .unwrap_or_default();
    Encryption::from_args(&recipients, false).map_err(|e| {
        Failure::new(format!("scheduled backups: {e}"))
            .hint("set backup.recipients in the inventory (age-keygen prints a recipient; keep the identity offline)")
    })?;
    Ok(InstallInputs {
        on_calendar,
        url,
        recipients,
    })
}

async fn install_ops(
    cluster: &Cluster,
    target: &BackupTargetArgs,
    inputs: InstallInputs,
    hosts: &[EtcdHost],
) -> anyhow::Result<Vec<HostOps>> {
    let InstallInputs {
        on_calendar,
        url,
        recipients,
    } = inputs;
    if let Some(first) = hosts.first() {
        validate_calendar_on(first, &on_calendar).await?;
    }
    let environment = environment_file(|name| std::env::var(name).ok()).map_err(|e| Failure::new(e.to_string()))?;
    let executable =
        std::env::current_exe().map_err(|e| Failure::new(format!("finding the running capstan executable: {e}")))?;
    let inventory = std::fs::read(&cluster.source_path)
        .map_err(|e| Failure::new(format!("reading {}: {e}", cluster.source_path.display())))?;
    let retention = cluster.backup.as_ref().map(|b| b.retention).unwrap_or_default();
    let context = serde_json::json!({
        "cluster_name": cluster.name,
        "binary": BINARY_PATH,
        "config_file": CONFIG_PATH,
        "environment_file": ENVIRONMENT_PATH,
        "on_calendar": on_calendar,
        "service": SERVICE_UNIT,
    });
    let render = |name: &str| capstan_templates::render(name, &context).map_err(|e| Failure::new(e.to_string()));
    let service_unit = render("backup/capstan-backup.service")?;
    let timer_unit = render("backup/capstan-backup.timer")?;
    let op_failure = |e: capstan_provisioner::ops::OpError| Failure::new(e.to_string());

    let mut plans = Vec::new();
    for host in hosts {
        let Some(transport) = host.transport.clone() else {
            continue;
        };
        let config = ScheduleConfig {
            cluster: cluster.name.clone(),
            member: host.name().to_string(),
            target: url.to_string(),
            s3_path_style: target.s3_path_style,
            recipients: recipients.clone(),
            retention: RetentionConfig {
                keep_last: retention.keep_last,
                daily: retention.daily,
                weekly: retention.weekly,
                monthly: retention.monthly,
            },
            inventory: INVENTORY_PATH.into(),
            pki_dir: PKI_DIR.into(),
            local_endpoint: LOCAL_ENDPOINT.into(),
            metrics_file: DEFAULT_METRICS_FILE.into(),
        };
        let config_yaml = format!(
            "# Managed by capstan (`capstan backup schedule`); changes here are overwritten.\n{}",
            serde_yaml::to_string(&config).map_err(|e| Failure::new(format!("rendering {CONFIG_PATH}: {e}")))?
        );
        let mut ops = HostOps::new(transport);
        ops.push(Directory::new(CONFIG_DIR).mode(0o700).owner("root").group("root"));
        ops.push(InstalledBinary::new(&executable, BINARY_PATH).map_err(op_failure)?);
        ops.push(
            File::new(CONFIG_PATH, config_yaml)
                .mode(0o600)
                .owner("root")
                .group("root"),
        );
        ops.push(
            File::new(ENVIRONMENT_PATH, environment.clone())
                .mode(0o600)
                .owner("root")
                .group("root")
                .sensitive(true),
        );
        ops.push(
            File::new(INVENTORY_PATH, inventory.clone())
                .mode(0o600)
                .owner("root")
                .group("root")
                .sensitive(true),
        );
        push_timer_units(&mut ops, (SERVICE_UNIT, &service_unit), (TIMER_UNIT, &timer_unit))?;
        plans.push(ops);
    }
    Ok(plans)
}

fn removal_ops(hosts: &[EtcdHost]) -> Vec<HostOps> {
    schedule_removal_ops(
        hosts,
        (SERVICE_UNIT, TIMER_UNIT),
        &[
            CONFIG_PATH,
            ENVIRONMENT_PATH,
            INVENTORY_PATH,
            DEFAULT_METRICS_FILE,
            SCHEDULER_METRICS_FILE,
        ],
        DRILL_CONFIG_PATH,
    )
}

/// Uninstall a schedule from every member: stop and remove its units, remove `paths`, and the
/// shared binary and directory unless the other schedule (`other_config`) still uses them.
pub(crate) fn schedule_removal_ops(
    hosts: &[EtcdHost],
    (service, timer): (&str, &str),
    paths: &[&str],
    other_config: &str,
) -> Vec<HostOps> {
    let mut plans = Vec::new();
    for host in hosts {
        let Some(transport) = host.transport.clone() else {
            continue;
        };
        let mut ops = HostOps::new(transport);
        push_timer_removal(&mut ops, service, timer);
        for path in paths {
            ops.push(Absent::new(path));
        }
        push_shared_removal(&mut ops, other_config);
        plans.push(ops);
    }
    plans
}

/// A schedule's oneshot service and its timer, the timer enabled and running (and restarted when
/// its unit changes).
pub(crate) fn push_timer_units(
    ops: &mut HostOps,
    (service, service_unit): (&str, &str),
    (timer, timer_unit): (&str, &str),
) -> Result<(), Failure> {
    let op_failure = |e: capstan_provisioner::ops::OpError| Failure::new(e.to_string());
    ops.push(SystemdUnit::new(service, service_unit).map_err(op_failure)?);
    ops.push(SystemdUnit::new(timer, timer_unit).map_err(op_failure)?.notify([timer]));
    ops.push(Service::new(timer).map_err(op_failure)?.enabled(true).running(true));
    Ok(())
}

/// Stop a schedule's timer and service and remove both units.
fn push_timer_removal(ops: &mut HostOps, service: &str, timer: &str) {
    // Unit names are constants that pass validation; a failure here is a bug.
    if let Ok(timer) = Service::new(timer) {
        ops.push(timer.enabled(false).running(false));
    }
    if let Ok(service) = Service::new(service) {
        ops.push(service.running(false));
    }
    ops.push(RemovedUnit::new(timer));
    ops.push(RemovedUnit::new(service));
}

/// The binary and /etc/capstan are shared by the backup and drill schedules: the binary goes
/// when the other schedule's config (`other_config`) is absent too, the directory when empty.
fn push_shared_removal(ops: &mut HostOps, other_config: &str) {
    let binary = quote(BINARY_PATH);
    ops.push(
        Command::new(&format!("remove {BINARY_PATH}"), &format!("rm -f -- {binary}"))
            .unless(&format!("[ ! -e {binary} ] || [ -e {} ]", quote(other_config))),
    );
    let dir = quote(CONFIG_DIR);
    ops.push(
        Command::new(
            &format!("remove empty directory {CONFIG_DIR}"),
            &format!("rmdir -- {dir}"),
        )
        .unless(&format!("[ ! -d {dir} ] || [ -n \"$(ls -A -- {dir})\" ]")),
    );
}

/// `capstan backup run --config FILE` on a member (the timer's service). Exit 0 when this
/// member is not the leader or the backup succeeded; non-zero (a failed unit) otherwise.
async fn run_member(config_path: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| Failure::new(format!("reading {}: {e}", config_path.display())))?;
    let config: ScheduleConfig = serde_yaml::from_str(&text).map_err(|e| {
        Failure::new(format!("{}: {e}", config_path.display())).hint("run `capstan backup schedule` again")
    })?;
    match run_scheduled(&config).await {
        Ok(RunOutcome::NotLeader) => {
            out.status(format!(
                "{}: not the etcd leader; the leader takes this backup",
                config.member
            ));
            Ok(ExitCode::SUCCESS)
        }
        Ok(RunOutcome::BackedUp {
            manifest,
            prune,
            elapsed_secs,
        }) => {
            println!("{}", manifest.id);
            out.status(format!(
                "{}: backup {} complete: {} at revision {} from {} in {elapsed_secs:.1}s; prune deleted {} of {}",
                config.member,
                manifest.id,
                human_bytes(manifest.stored_size()),
                manifest.revision,
                manifest.source_member,
                prune.deleted().count(),
                prune.backups.len()
            ));
            Ok(ExitCode::SUCCESS)
        }
        Err(capstan_backup::schedule::ScheduleError::Backup(e)) => Err(backup_failure(e).into()),
        Err(e) => Err(Failure::new(format!("{}: {e}", config.member)).into()),
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn human_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_backup::BackupId;

    #[test]
    fn list_shows_newest_first_with_ages() {
        let id = BackupId::parse("20261128T041500Z-3f9a").unwrap();
        let backups = vec![BackupSummary {
            id: id.clone(),
            created: "2026-11-28T04:15:00Z".into(),
            size: 3 * 1024 * 1024,
            revision: Some(42),
            encrypted: Some(true),
            complete: true,
            cluster: Some("demo".into()),
            problem: None,
        }];
        let now =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(id.timestamp().unix_timestamp() as u64 + 7300);
        assert_eq!(
            render_list(&backups, now),
            "ID                     AGE  SIZE     REVISION  ENCRYPTED  COMPLETE\n\
             20261128T041500Z-3f9a  2h   3.0 MiB  42        yes        yes\n"
        );
    }
}
