//! `capstan drill schedule`: disaster-recovery drills on a calendar. A systemd timer on every
//! etcd member of the cluster; when it fires, only the etcd leader drills (like scheduled
//! backups), restoring the latest backup into dedicated drill hosts (another inventory), then
//! wiping them. Reports and Prometheus textfile metrics stay on the member. See docs/restore.md.
//! The installation is `capstan_backup::schedule_install`; this resolves the flags and prints.

use std::path::Path;
use std::process::ExitCode;

use capstan_backup::drill_report::{scheduler_text, unix_now, write_atomic, DRILL_SCHEDULER_METRICS_FILE};
use capstan_backup::schedule::{local_member_leads, timer_interval, DrillScheduleConfig, DRILL_TIMER_UNIT};
use capstan_backup::schedule_install::{install_drill_schedule, remove_schedule, DrillInstall, Schedule};
use capstan_provisioner::lock::LockMode;
use capstan_provisioner::runner::Mode;

use super::run::{drill, merged_keys};
use crate::cli::{BackupTargetArgs, DrillArgs, DrillCommand, DrillScheduleArgs};
use crate::commands::backup::{open, target_url};
use crate::commands::inventory::load;
use crate::commands::lock::locked_unless_dry_run;
use crate::output::{Failure, Output};

pub(super) fn run(command: DrillCommand, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    match command {
        DrillCommand::Schedule(args) => schedule(args, inventory, out),
        DrillCommand::Run { config } => run_member(&config, out),
    }
}

fn schedule(args: DrillScheduleArgs, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    let cluster = load(inventory)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mode = if args.dry_run { Mode::DryRun } else { Mode::Apply };
    if args.remove {
        let work = async {
            remove_schedule(&cluster, Schedule::Drill, &Default::default(), mode, out.progress())
                .await
                .map_err(|e| anyhow::Error::from(Failure::from(e)))
        };
        let report = runtime.block_on(locked_unless_dry_run(
            args.dry_run,
            &cluster,
            LockMode::Change,
            out,
            work,
        ))?;
        return out.finish_run(
            &report,
            args.dry_run,
            "drill schedule removal",
            "capstan drill schedule --remove",
        );
    }
    let required = |flag: &str| Failure::new(format!("{flag} is required (unless --remove)")).code(2);
    let on_calendar = args.on_calendar.clone().ok_or_else(|| required("--on-calendar"))?;
    let identity = args.identity.clone().ok_or_else(|| required("--identity"))?;
    let drill_path = args.drill_target.clone().ok_or_else(|| required("--drill-target"))?;
    let drill_cluster = load(Some(&drill_path))?;
    let url = target_url(&args.target, Some(&cluster))?;
    let install = DrillInstall::new(
        &cluster,
        on_calendar,
        url,
        args.target.s3_path_style,
        &identity,
        &drill_path,
        &drill_cluster,
        merged_keys(&args.expect_keys, Some(&cluster)),
    )
    .map_err(Failure::from)?;
    if let Some(path) = install.local_directory() {
        out.status(format!(
            "warning: {} is a directory on each member: a scheduled drill reads the backups in the leading \
             member's own copy of it; use S3, or a shared mount (e.g. NFS) at that path on every member",
            path.display()
        ));
    }
    let work = async {
        let store = open(install.target(), &args.target).await?;
        install
            .check_identity_opens_latest(&store)
            .await
            .map_err(Failure::from)?;
        let report = install_drill_schedule(&cluster, &install, mode, out.progress())
            .await
            .map_err(Failure::from)?;
        out.finish_run(&report, args.dry_run, "drill schedule", "capstan drill schedule")
    };
    runtime.block_on(locked_unless_dry_run(
        args.dry_run,
        &cluster,
        LockMode::Change,
        out,
        work,
    ))
}

/// `capstan drill run --config FILE` on a member (the timer's service): the leader drills the
/// latest backup into the drill hosts; the others exit 0 at once.
fn run_member(config_path: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| Failure::new(format!("reading {}: {e}", config_path.display())))?;
    let config: DrillScheduleConfig = serde_yaml::from_str(&text).map_err(|e| {
        Failure::new(format!("{}: {e}", config_path.display())).hint("run `capstan drill schedule` again")
    })?;
    // Every member, leader or not: the timer fired, and the schedule's interval (for the drill-stale alert).
    let scheduler = scheduler_text(
        &config.cluster,
        &config.member,
        unix_now(),
        timer_interval(DRILL_TIMER_UNIT),
    );
    let textfile_dir = super::run::textfile_dir();
    if let Err(e) = write_atomic(&textfile_dir, DRILL_SCHEDULER_METRICS_FILE, scheduler.as_bytes(), 0o644) {
        out.status(format!(
            "warning: could not write metrics to {}: {e}",
            textfile_dir.join(DRILL_SCHEDULER_METRICS_FILE).display()
        ));
    }
    let leads = tokio::runtime::Runtime::new()?
        .block_on(local_member_leads(&config.pki_dir, &config.local_endpoint))
        .map_err(|e| Failure::new(format!("{}: {e}", config.member)))?;
    if !leads {
        out.status(format!(
            "{}: not the etcd leader; the leader runs this drill",
            config.member
        ));
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(dir) = config.report.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Failure::new(format!("creating {}: {e}", dir.display())))?;
    }
    out.status(format!(
        "{}: the etcd leader; drilling the latest backup",
        config.member
    ));
    let args = DrillArgs {
        command: None,
        from: "latest".into(),
        target: BackupTargetArgs {
            target: Some(config.target.clone()),
            s3_path_style: config.s3_path_style,
        },
        identity: Some(config.identity.clone()),
        drill_target: config.drill_inventory.display().to_string(),
        report: Some(config.report.clone()),
        expect_keys: config.expect_keys.clone(),
        keep: false,
    };
    drill(args, None, out)
}
