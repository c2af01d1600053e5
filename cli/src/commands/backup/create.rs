//! `capstan backup create`: take a backup now; prints the backup id.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use capstan_backup::access::operator_access;
use capstan_backup::{parse_recipients_file, CreateRequest, Encryption, Progress, ProgressFn};
use capstan_inventory::Cluster;

use super::{open, target_url};
use crate::cli::BackupTargetArgs;
use crate::format::human_bytes;
use crate::output::{Failure, Output};

/// Progress lines on stderr every this many snapshot bytes.
const PROGRESS_STEP: u64 = 64 * 1024 * 1024;

pub(crate) struct CreateArgs {
    pub target: BackupTargetArgs,
    pub recipients: Vec<String>,
    pub recipients_file: Option<PathBuf>,
    pub no_encryption: bool,
}

impl CreateArgs {
    /// The inventory's backup target and recipients, nothing from the command line.
    pub(crate) fn from_inventory() -> CreateArgs {
        CreateArgs {
            target: BackupTargetArgs {
                target: None,
                s3_path_style: false,
            },
            recipients: Vec::new(),
            recipients_file: None,
            no_encryption: false,
        }
    }
}

pub(crate) async fn create(cluster: &Cluster, args: &CreateArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let manifest = take(cluster, args, out).await?;
    println!("{}", manifest.id);
    Ok(ExitCode::SUCCESS)
}

/// The backup a Kubernetes upgrade takes before its first change
/// ([`capstan_kubernetes::upgrade_apply::set_pre_upgrade_backup`]): `backup create` to the
/// inventory's target with its recipients; the backup's id.
pub(crate) fn pre_upgrade_backup(cluster: Cluster) -> capstan_kubernetes::upgrade_apply::BackupFuture {
    let args = CreateArgs::from_inventory();
    let handle = tokio::runtime::Handle::current();
    // The backup's future is run on a blocking thread of the same runtime: the upgrade's own
    // future must stay `Send`, whatever the backup's is.
    Box::pin(async move {
        tokio::task::spawn_blocking(move || {
            let out = Output::new(crate::cli::OutputFormat::Text, 0, true);
            handle
                .block_on(take(&cluster, &args, &out))
                .map(|manifest| manifest.id.to_string())
                .map_err(|e| format!("{e:#}"))
        })
        .await
        .map_err(|e| e.to_string())?
    })
}

async fn take(cluster: &Cluster, args: &CreateArgs, out: &Output) -> anyhow::Result<capstan_backup::Manifest> {
    let mut explicit = args.recipients.clone();
    if let Some(file) = &args.recipients_file {
        let text =
            std::fs::read_to_string(file).map_err(|e| Failure::new(format!("reading {}: {e}", file.display())))?;
        explicit.extend(parse_recipients_file(&text));
    }
    let encryption = encryption(cluster, &explicit, args.no_encryption)?;
    let url = target_url(&args.target, Some(cluster))?;
    let inventory = std::fs::read(&cluster.source_path)
        .map_err(|e| Failure::new(format!("reading {}: {e}", cluster.source_path.display())))?;
    let access = operator_access(cluster).await.map_err(|e| Failure::of(&e))?;
    let state = capstan_backup::state::collect(cluster, crate::components::ALL)
        .await
        .map_err(|e| Failure::of(&e))?;
    for component in &state.not_installed {
        out.status(format!(
            "note: {component} is not installed yet: none of its state is in this backup"
        ));
    }
    let store = open(&url, &args.target).await?;
    out.status(format!("backing up etcd of cluster {} to {url}", cluster.name));
    let started = Instant::now();
    let request = CreateRequest {
        cluster_name: cluster.name.clone(),
        source: access.source,
        encryption,
        pki_files: access.pki_files,
        inventory,
        state: state.entries,
        pushed_state: None,
        progress: progress(out),
    };
    let manifest = capstan_backup::create(&store, request)
        .await
        .map_err(|e| Failure::of(&e))?;
    let elapsed = started.elapsed().as_secs_f64();
    let size = manifest.stored_size();
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
    Ok(manifest)
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
    Encryption::from_args(&recipients, no_encryption).map_err(|e| Failure::of(&e).into())
}

/// Snapshot progress on stderr every [`PROGRESS_STEP`] bytes (none with `-q`).
fn progress(out: &Output) -> Option<ProgressFn> {
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
