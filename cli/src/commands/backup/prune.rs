//! `capstan backup prune`: delete backups outside the inventory's retention policy (and
//! incomplete ones); never the newest complete backup.

use std::process::ExitCode;

use capstan_backup::{Decision, PruneOptions, StoreUrl, DEFAULT_INCOMPLETE_GRACE};
use capstan_inventory::Cluster;

use super::open;
use crate::cli::BackupTargetArgs;
use crate::output::{Failure, Output};

pub(super) async fn prune(
    cluster: &Cluster,
    url: &StoreUrl,
    args: &BackupTargetArgs,
    dry_run: bool,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let options = PruneOptions {
        retention: cluster.backup.as_ref().map(|b| b.retention).unwrap_or_default().into(),
        dry_run,
        incomplete_grace: DEFAULT_INCOMPLETE_GRACE,
    };
    let store = open(url, args).await?;
    let report = capstan_backup::prune(&store, &options)
        .await
        .map_err(|e| Failure::of(&e))?;
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
