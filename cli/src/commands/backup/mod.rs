//! `capstan backup create|list|verify|prune|schedule`: etcd snapshot + PKI + inventory,
//! age-encrypted, to S3 or a local directory (see docs/backup.md). One module per subcommand;
//! here the dispatch and what they (and restore and drill) share: the target and its store.

pub(crate) mod create;
mod list;
mod prune;
mod schedule;
mod verify;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use capstan_backup::{S3Options, Store, StoreUrl, VerifyTarget};
use capstan_inventory::Cluster;
use capstan_provisioner::lock::LockMode;

use crate::cli::{BackupCommand, BackupTargetArgs};
use crate::commands::inventory::load;
use crate::commands::lock::locked_unless_dry_run;
use crate::output::{Failure, Output};

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
            let args = create::CreateArgs {
                target,
                recipients,
                recipients_file,
                no_encryption,
            };
            runtime.block_on(create::create(&cluster, &args, out))
        }
        BackupCommand::List { target } => {
            let cluster = optional_cluster(&target, inventory)?;
            let url = target_url(&target, cluster.as_ref())?;
            runtime.block_on(list::list(&url, &target, out))
        }
        BackupCommand::Verify { id, target, identity } => {
            let cluster = optional_cluster(&target, inventory)?;
            let url = target_url(&target, cluster.as_ref())?;
            runtime.block_on(verify::verify(&url, &target, &id, identity.as_deref(), out))
        }
        BackupCommand::Prune { target, dry_run } => {
            let cluster = load(inventory)?;
            let url = target_url(&target, Some(&cluster))?;
            runtime.block_on(prune::prune(&cluster, &url, &target, dry_run, out))
        }
        BackupCommand::Schedule {
            target,
            on_calendar,
            remove,
            dry_run,
        } => {
            let cluster = load(inventory)?;
            let work = schedule::schedule(&cluster, &target, on_calendar, remove, dry_run, out);
            runtime.block_on(locked_unless_dry_run(dry_run, &cluster, LockMode::Change, out, work))
        }
        BackupCommand::Run { config } => runtime.block_on(schedule::run_member(&config, out)),
        BackupCommand::PushState { config } => runtime.block_on(schedule::push_state(&config, out)),
    }
}

/// list and verify need the inventory only for the target.
fn optional_cluster(target: &BackupTargetArgs, inventory: Option<&Path>) -> anyhow::Result<Option<Cluster>> {
    if target.target.is_some() && inventory.is_none() {
        return Ok(None);
    }
    load(inventory).map(Some)
}

/// The backup target: `--target`, else the inventory's `backup.target`.
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

pub(crate) async fn open(url: &StoreUrl, args: &BackupTargetArgs) -> anyhow::Result<Arc<dyn Store>> {
    let options = S3Options {
        path_style: args.s3_path_style,
        ..S3Options::default()
    };
    capstan_backup::open_store(url, &options)
        .await
        .map_err(|e| Failure::of(&e).into())
}

/// `--from` / the backup id argument: an id, or `latest`.
pub(crate) fn parse_which(text: &str) -> anyhow::Result<VerifyTarget> {
    VerifyTarget::parse(text).map_err(|e| {
        Failure::new(e.to_string())
            .hint("pass a backup id from `capstan backup list`, or `latest`")
            .code(2)
            .into()
    })
}
