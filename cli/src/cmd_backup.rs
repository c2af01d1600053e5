//! `capstan backup create|list|verify|prune`: etcd snapshot + PKI + inventory, age-encrypted,
//! to S3 or a local directory (see docs/backup.md).

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use capstan_backup::{
    parse_recipients_file, BackupError, BackupSummary, CreateRequest, Decision, Encryption, EtcdSource, Progress,
    ProgressFn, PruneOptions, Retention, S3Options, Store, StoreError, StoreUrl, VerifyReport, VerifyTarget,
    DEFAULT_INCOMPLETE_GRACE,
};
use capstan_inventory::{Cluster, Role};
use capstan_provisioner::etcd::client::{EtcdEndpoint, EtcdTls};
use capstan_provisioner::etcd::config::DEFAULT_CLIENT_PORT;
use capstan_provisioner::pki::{CertRequest, CertificateAuthority, BACKUP_CLIENT_CN};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::ExecOptions;

use crate::cli::{BackupCommand, BackupTargetArgs};
use crate::cmd_inventory::load;
use crate::output::{table, Failure, Output};

/// The CA files on etcd members, backed up as the cluster's PKI.
const CA_FILES: [(&str, &str); 2] = [("ca.crt", "/etc/etcd/pki/ca.crt"), ("ca.key", "/etc/etcd/pki/ca.key")];

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
        BackupCommand::Schedule { target, on_calendar, remove } => schedule(target, on_calendar, remove, inventory, out),
    }
}

fn schedule(
    _target: BackupTargetArgs,
    _on_calendar: Option<String>,
    _remove: bool,
    _inventory: Option<&Path>,
    _out: &Output,
) -> anyhow::Result<ExitCode> {
    Err(Failure::new("backup schedule is not available yet").into())
}

/// list and verify need the inventory only for the target.
fn optional_cluster(target: &BackupTargetArgs, inventory: Option<&Path>) -> anyhow::Result<Option<Cluster>> {
    if target.target.is_some() && inventory.is_none() {
        return Ok(None);
    }
    load(inventory).map(Some)
}

fn target_url(args: &BackupTargetArgs, cluster: Option<&Cluster>) -> anyhow::Result<StoreUrl> {
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

async fn open(url: &StoreUrl, args: &BackupTargetArgs) -> anyhow::Result<Arc<dyn Store>> {
    let options = S3Options {
        path_style: args.s3_path_style,
        ..S3Options::default()
    };
    capstan_backup::open_store(url, &options)
        .await
        .map_err(|e| backup_failure(BackupError::Store(e)).into())
}

/// A user-facing failure with a hint where there is something to do.
fn backup_failure(error: BackupError) -> Failure {
    let hint = match &error {
        BackupError::NoRecipients => Some(
            "pass --recipient age1... (age-keygen prints one; keep its identity file offline), set \
             backup.recipients in the inventory, or say --no-encryption",
        ),
        BackupError::WrongIdentity { .. } => Some("pass the identity file of one of the recipients listed"),
        BackupError::NoCompleteBackup { .. } | BackupError::NotFound { .. } => {
            Some("`capstan backup list` shows the backups in the target")
        }
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

/// How to reach etcd and what PKI to back up: the CA is read over SSH from the first etcd
/// member (inventory order) and a short-lived `capstan-backup` client certificate is issued
/// in memory; endpoints are the members' inventory addresses.
async fn etcd_access(cluster: &Cluster) -> anyhow::Result<(EtcdSource, Vec<(String, Vec<u8>)>)> {
    let members: Vec<_> = cluster.hosts_with_role(Role::Etcd).collect();
    let Some(first) = members.first() else {
        return Err(Failure::new("the inventory has no etcd hosts")
            .hint("give at least one host the etcd role")
            .code(2)
            .into());
    };
    let (connections, failures) = Connections::connect(&[ssh_target(first)], 1).await;
    if let Some(error) = failures.into_values().next() {
        let failure = Failure::new(format!("reading the etcd CA: {error}"));
        return Err(match error.hint() {
            Some(hint) => failure.hint(hint),
            None => failure,
        }
        .into());
    }
    let transport = connections.get(&first.name).expect("connected above");
    let mut pki_files = Vec::new();
    for (name, path) in CA_FILES {
        let output = transport
            .exec(&format!("cat {path}"), &ExecOptions::default())
            .await
            .map_err(|e| Failure::new(format!("reading {path} on {}: {e}", first.name)))?;
        if !output.success() {
            connections.close_all().await;
            return Err(Failure::new(format!(
                "reading {path} on {}: {}",
                first.name,
                output.stderr_str().trim()
            ))
            .hint("run `capstan apply` first: backups need the cluster's etcd CA")
            .into());
        }
        pki_files.push((name.to_string(), output.stdout));
    }
    connections.close_all().await;
    let text = |index: usize| String::from_utf8_lossy(&pki_files[index].1).into_owned();
    let ca = CertificateAuthority::from_pem(&text(0), &text(1))
        .map_err(|e| Failure::new(format!("the etcd CA on {}: {e}", first.name)))?;
    let client = ca
        .issue(&CertRequest::client(BACKUP_CLIENT_CN))
        .map_err(|e| Failure::new(format!("issuing the backup client certificate: {e}")))?;
    let source = EtcdSource {
        endpoints: members
            .iter()
            .map(|h| EtcdEndpoint::https(&h.address, DEFAULT_CLIENT_PORT))
            .collect(),
        tls: EtcdTls {
            ca_cert_pem: ca.cert_pem().to_string(),
            client_cert_pem: client.cert_pem,
            client_key_pem: client.key_pem,
        },
    };
    Ok((source, pki_files))
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
