//! `capstan backup schedule [--remove] [--dry-run]`: converge every etcd member to "timer
//! installed" (or "nothing installed"), and `capstan backup run`, what that timer runs on a member.
//! The installation is `capstan_backup::schedule_install`; this resolves the flags and prints.

use std::path::Path;
use std::process::ExitCode;

use capstan_backup::schedule::{run_scheduled, RunOutcome, ScheduleConfig};
use capstan_backup::schedule_install::{install_backup_schedule, remove_schedule, BackupInstall, Schedule};
use capstan_inventory::Cluster;
use capstan_provisioner::runner::Mode;

use super::target_url;
use crate::cli::BackupTargetArgs;
use crate::format::human_bytes;
use crate::output::{Failure, Output};

pub(super) async fn schedule(
    cluster: &Cluster,
    target: &BackupTargetArgs,
    on_calendar: Option<String>,
    remove: bool,
    dry_run: bool,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
    if remove {
        let report = remove_schedule(cluster, Schedule::Backup, mode, out.progress())
            .await
            .map_err(Failure::from)?;
        return out.finish_run(&report, dry_run, "backup schedule removal", "capstan backup schedule");
    }
    let on_calendar = on_calendar
        .or_else(|| cluster.backup.as_ref().and_then(|b| b.schedule.clone()))
        .ok_or_else(|| {
            Failure::new("no backup schedule")
                .hint("pass --on-calendar '*-*-* 02:00:00' (systemd OnCalendar syntax) or set backup.schedule")
                .code(2)
        })?;
    let url = target_url(target, Some(cluster))?;
    let install = BackupInstall::new(cluster, on_calendar, url, target.s3_path_style).map_err(Failure::from)?;
    if let Some(path) = install.local_directory() {
        out.status(format!(
            "warning: {} is a directory on each member: scheduled backups land on whichever member leads at the time; \
             use S3, or a shared mount (e.g. NFS) at that path on every member",
            path.display()
        ));
    }
    // The timer runs on the etcd members, which cannot read other hosts' component state: say so
    // rather than let scheduled backups look complete (docs/kubernetes.md, "Backups and drills").
    for component in crate::components::ALL.iter().filter(|c| c.enabled(cluster)) {
        let files = component.state_files(cluster);
        if let Some(first) = files.first() {
            out.status(format!(
                "warning: scheduled backups do not carry {}'s state ({} file(s) on the {} hosts, e.g. {}); \
                 take `capstan backup create` from this machine after those change (new cluster, key rotation)",
                component.name(),
                files.len(),
                first.role,
                first.path
            ));
        }
    }
    let report = install_backup_schedule(cluster, &install, mode, out.progress())
        .await
        .map_err(Failure::from)?;
    out.finish_run(&report, dry_run, "backup schedule", "capstan backup schedule")
}

/// `capstan backup run --config FILE` on a member (the timer's service). Exit 0 when this
/// member is not the leader or the backup succeeded; non-zero (a failed unit) otherwise.
pub(super) async fn run_member(config_path: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| Failure::new(format!("reading {}: {e}", config_path.display())))?;
    let config: ScheduleConfig = serde_yaml::from_str(&text).map_err(|e| {
        Failure::new(format!("{}: {e}", config_path.display())).hint("run `capstan backup schedule` again")
    })?;
    match run_scheduled(&config, &out.reporter()).await {
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
        Err(capstan_backup::schedule::ScheduleError::Backup(e)) => Err(Failure::of(&e).into()),
        Err(e) => Err(Failure::new(format!("{}: {e}", config.member)).into()),
    }
}
