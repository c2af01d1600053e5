//! `capstan backup schedule [--remove] [--dry-run]`: converge every etcd member to "timer
//! installed" (or "nothing installed"), and `capstan backup run`, what that timer runs on a member.
//! The installation is `capstan_backup::schedule_install`; this resolves the flags and prints.

use std::path::Path;
use std::process::ExitCode;

use capstan_backup::schedule::{run_scheduled, RunOutcome, ScheduleConfig};
use capstan_backup::schedule_install::{
    install_backup_schedule, remove_schedule, BackupInstall, Schedule, StateHolders,
};
use capstan_backup::state_push::{run_push, PushConfig, PushOutcome};
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
        let state = StateHolders::of(cluster, crate::components::ALL);
        let report = remove_schedule(cluster, Schedule::Backup, &state, mode, out.progress())
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
    let install = BackupInstall::new(cluster, on_calendar, url, target.s3_path_style, crate::components::ALL)
        .map_err(Failure::from)?;
    if let Some(path) = install.local_directory() {
        out.status(format!(
            "warning: {} is a directory on each member: scheduled backups land on whichever member leads at the time; \
             use S3, or a shared mount (e.g. NFS) at that path on every member",
            path.display()
        ));
    }
    if !install.state().is_empty() {
        out.status(format!(
            "components' state is pushed to etcd by {} for the scheduled backups",
            install.state().host_names().join(", ")
        ));
    }
    let report = install_backup_schedule(cluster, &install, mode, out.progress())
        .await
        .map_err(Failure::from)?;
    out.finish_run(&report, dry_run, "backup schedule", "capstan backup schedule")
}

/// `capstan backup push-state --config FILE` on a host holding components' state (what its
/// push service runs): the state into etcd when it changed. Never prints the files' content.
pub(super) async fn push_state(config_path: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let config = PushConfig::load(config_path).map_err(|e| Failure::of(&e))?;
    let (result, warning) = run_push(&config).await;
    if let Some(warning) = warning {
        out.status(format!("warning: {warning}"));
    }
    match result.map_err(|e| Failure::of(&e))? {
        PushOutcome::Written { files, plaintext } => out.status(format!(
            "{}: pushed {files} state file(s) ({} bytes, sha256 {}) to etcd",
            config.host, plaintext.size, plaintext.sha256
        )),
        PushOutcome::Unchanged { files } => out.status(format!(
            "{}: etcd already holds this state ({files} file(s)); nothing written",
            config.host
        )),
    }
    Ok(ExitCode::SUCCESS)
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
        Err(capstan_backup::schedule::ScheduleError::StatePush(e)) => Err(Failure::new(format!(
            "{}: scheduled backup not taken: {e}",
            config.member
        ))
        .maybe_hint(capstan_provisioner::hint::Hint::hint(&e))
        .into()),
        Err(e) => Err(Failure::new(format!("{}: {e}", config.member)).into()),
    }
}
