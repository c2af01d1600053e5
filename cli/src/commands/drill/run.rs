//! `capstan drill`: a restore into a throwaway target, verified, with an RTO/RPO report (also
//! what a scheduled drill runs on the leading member). See docs/restore.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use capstan_backup::drill_report::{
    now_utc, prometheus_text, render_markdown, rfc3339, rpo_seconds, unix_now, write_atomic, DrillCheck, DrillReport,
    DrillStep, DRILL_METRICS_FILE,
};
use capstan_backup::restore::{manifest_of, resolve, FetchedBackup};
use capstan_backup::Manifest;
use capstan_etcd::client::EtcdEndpoint;
use capstan_etcd::config::DEFAULT_CLIENT_PORT;
use capstan_etcd::inspect::admin_tls;
use capstan_etcd::inspect::inspect_hosts;
use capstan_etcd::restore::{check_keys, RestoreOptions};
use capstan_inventory::Cluster;
use capstan_lab::UpOptions;
use capstan_provisioner::cluster_plan::ClusterPlan;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{Absent, Command, Service};
use capstan_provisioner::pki::CertificateAuthority;
use capstan_provisioner::runner::{HostOps, Mode, NoProgress, RunOptions, Runner};

use crate::cli::{BackupTargetArgs, DrillArgs, RestoreArgs};
use crate::commands::backup::{open, parse_which, target_url};
use crate::commands::inventory::load;
use crate::commands::restore::{fetch, private_tempdir, restore_options, run_restore, PrivateDir};
use crate::output::{Failure, Output};

/// The etcd unit `capstan apply` installs.
const ETCD_SERVICE: &str = "etcd";

/// Where a drill restores to.
enum DrillTarget {
    /// A fresh lab, torn down afterwards unless kept.
    Lab {
        name: String,
        inventory: PathBuf,
        _dir: PrivateDir,
    },
    Inventory(PathBuf),
}

pub(super) fn drill(args: DrillArgs, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    // The backup target may come from --target or from the (source) inventory.
    let source = if args.target.target.is_some() && inventory.is_none() {
        None
    } else {
        Some(load(inventory)?)
    };
    let url = target_url(&args.target, source.as_ref())?;
    let which = parse_which(&args.from)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let drill_started = now_utc();
    let started = Instant::now();

    let (store, manifest) = runtime.block_on(async {
        let store = open(&url, &args.target).await?;
        let id = resolve(&store, &which).await.map_err(|e| Failure::of(&e))?;
        let manifest = manifest_of(&store, &id).await.map_err(|e| Failure::of(&e))?;
        anyhow::Ok((store, manifest))
    })?;

    let mut report = DrillReport {
        backup_id: manifest.id.to_string(),
        cluster: manifest.cluster.clone(),
        backup_created: manifest.created.clone(),
        backup_revision: manifest.revision,
        etcd_version: manifest.etcd_version.clone(),
        member_count: manifest.member_count,
        target: String::new(),
        started: rfc3339(drill_started),
        rto_seconds: None,
        rpo_seconds: rpo_seconds(&manifest.created, drill_started),
        restored_revision: None,
        total_seconds: 0.0,
        steps: Vec::new(),
        checks: Vec::new(),
        failure: None,
        notes: Vec::new(),
        kept: args.keep,
        success: false,
    };

    // Download, verify and decrypt first: a bad backup fails the drill before any target exists.
    // RTO counts from here (fetch + restore + verification), not the lab's boot.
    let rto_started = Instant::now();
    let work = private_tempdir()?;
    out.status(format!(
        "==> drill: downloading, verifying and decrypting backup {}",
        manifest.id
    ));
    let fetched = match runtime.block_on(fetch(&store, &manifest.id, args.identity.as_deref(), work.path())) {
        Ok(fetched) => {
            report.checks.push(DrillCheck::new(
                "backup downloads, decrypts and matches its manifest",
                true,
                format!(
                    "{} bytes of snapshot; sha256 {} and etcd's own hash verified",
                    fetched.snapshot_size, fetched.snapshot_sha256
                ),
            ));
            Some(fetched)
        }
        Err(e) => {
            let reason = failure_text(&e);
            report.checks.push(DrillCheck::new(
                "backup downloads, decrypts and matches its manifest",
                false,
                reason.clone(),
            ));
            report.failure = Some(reason);
            None
        }
    };
    let fetch_seconds = rto_started.elapsed().as_secs_f64();
    report.steps.push(DrillStep {
        step: "download, verify, decrypt".into(),
        seconds: fetch_seconds,
    });

    let target = match &fetched {
        None => None,
        Some(fetched) => {
            let backed_up = backed_up_cluster(fetched, &mut report);
            match prepare_target(&args, &manifest, backed_up.as_ref(), out, &mut report) {
                Ok(target) => Some(target),
                Err(e) => {
                    report.failure = Some(format!("bringing up the drill target: {}", failure_text(&e)));
                    None
                }
            }
        }
    };
    if let (Some(target), Some(fetched)) = (&target, &fetched) {
        let inventory_path = match target {
            DrillTarget::Lab { inventory, .. } => inventory.clone(),
            DrillTarget::Inventory(path) => path.clone(),
        };
        let expect_keys = merged_keys(&args.expect_keys, source.as_ref());
        let result = runtime.block_on(drill_restore(
            &args,
            &expect_keys,
            fetched,
            fetch_seconds,
            &inventory_path,
            out,
            &mut report,
        ));
        if let Err(e) = result {
            report.failure = Some(failure_text(&e));
        }
    }
    drop(work);
    // Tear down (also after a failure) unless --keep.
    if let Some(DrillTarget::Lab { name, .. }) = &target {
        if args.keep {
            report
                .notes
                .push(format!("lab {name} kept: `capstan lab down {name}` removes it"));
        } else {
            let since = Instant::now();
            out.status(format!("==> drill: tearing down lab {name}"));
            if let Err(e) = capstan_lab::down(name) {
                report.notes.push(format!("tearing down lab {name} failed: {e}"));
            }
            report.steps.push(DrillStep {
                step: "tear down".into(),
                seconds: since.elapsed().as_secs_f64(),
            });
        }
    }
    if let Some(DrillTarget::Inventory(path)) = &target {
        if args.keep {
            report.notes.push(format!(
                "etcd kept running with the restored data on the hosts of {}",
                path.display()
            ));
        } else {
            let since = Instant::now();
            out.status(format!("==> drill: wiping etcd on the hosts of {}", path.display()));
            if let Err(e) = runtime.block_on(wipe_inventory_target(path)) {
                report
                    .notes
                    .push(format!("wiping the drill hosts failed: {}", failure_text(&e)));
            }
            report.steps.push(DrillStep {
                step: "wipe drill hosts".into(),
                seconds: since.elapsed().as_secs_f64(),
            });
        }
    }
    report.total_seconds = started.elapsed().as_secs_f64();
    report.settle();
    finish_drill(&args, &report, out)
}

/// Stop etcd and remove its data on the hosts of an inventory drill target: they hold a copy of
/// the cluster's data, and the next drill should find empty hosts (no `--force` safety copies).
async fn wipe_inventory_target(path: &Path) -> anyhow::Result<()> {
    let cluster = load(Some(path))?;
    let (hosts, connections) = inspect_hosts(&cluster, 8, None)
        .await
        .map_err(|e| Failure::new(e.to_string()))?;
    let data_dir = cluster
        .etcd
        .data_dir
        .display()
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let moved_aside = format!("{}.before-restore-*", quote(&data_dir));
    let mut plans = Vec::new();
    let mut unreachable = Vec::new();
    for host in &hosts {
        let Some(transport) = host.transport.clone() else {
            unreachable.push(host.name().to_string());
            continue;
        };
        let mut ops = HostOps::new(transport);
        ops.push(Service::new(ETCD_SERVICE)?.enabled(false).running(false));
        ops.push(Absent::new(&data_dir));
        ops.push(Absent::new(&format!("{data_dir}.capstan-restore")));
        ops.push(
            Command::new(
                "remove data dirs moved aside by restores",
                &format!("rm -rf -- {moved_aside}"),
            )
            .unless(&format!("! ls -d -- {moved_aside} >/dev/null 2>&1")),
        );
        plans.push(ops);
    }
    let report = Runner::new(
        RunOptions {
            mode: Mode::Apply,
            ..RunOptions::default()
        },
        Arc::new(NoProgress),
    )
    .run(plans)
    .await;
    connections.close_all().await;
    let mut failed: Vec<String> = report.failed_hosts().into_iter().map(str::to_string).collect();
    failed.extend(unreachable);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(format!("could not wipe {}", failed.join(", "))).into())
    }
}

/// The roles of a drill lab's machines: etcd, and every role that holds a component's backed-up
/// state in the source cluster (`control_plane` for Kubernetes), so the state goes back onto
/// hosts of the same kind and the component's checks can run there.
fn lab_roles(source: Option<&Cluster>) -> Vec<String> {
    let mut roles = vec!["etcd".to_string()];
    if let Some(source) = source {
        for component in crate::components::ALL.iter().filter(|c| c.enabled(source)) {
            for file in component.state_files(source) {
                if !roles.iter().any(|r| r == file.role) {
                    roles.push(file.role.to_string());
                }
            }
        }
    }
    roles
}

/// The lab's own inventory, with the backup's etcd version and the source cluster's Kubernetes
/// version (what the restored data was written by).
fn drill_lab_inventory(lab_yaml: &str, manifest: &Manifest, source: Option<&Cluster>) -> anyhow::Result<String> {
    use serde_yaml::{Mapping, Value};
    let mut doc: Value = serde_yaml::from_str(lab_yaml)?;
    let map = doc
        .as_mapping_mut()
        .ok_or_else(|| Failure::new("the lab's inventory is not a mapping"))?;
    let section = |map: &mut Mapping, key: &str| -> Option<Mapping> {
        match map.get(key) {
            Some(Value::Mapping(m)) => Some(m.clone()),
            _ => None,
        }
    };
    let mut versions = section(map, "versions").unwrap_or_default();
    versions.insert("etcd".into(), manifest.etcd_version.clone().into());
    map.insert("versions".into(), Value::Mapping(versions));
    if let Some(source) = source.filter(|s| {
        s.hosts
            .iter()
            .any(|h| h.has_role(capstan_inventory::Role::ControlPlane))
    }) {
        let mut kubernetes = section(map, "kubernetes").unwrap_or_default();
        kubernetes.insert("version".into(), source.kubernetes.version.clone().into());
        map.insert("kubernetes".into(), Value::Mapping(kubernetes));
    }
    Ok(serde_yaml::to_string(&doc)?)
}

/// The cluster the backup was taken of (its stored inventory), when it still parses here.
fn backed_up_cluster(fetched: &FetchedBackup, report: &mut DrillReport) -> Option<Cluster> {
    let text = String::from_utf8_lossy(&fetched.inventory_yaml);
    match capstan_inventory::parse_str(&text, "inventory.yaml (from the backup)", Path::new("/")) {
        Ok(cluster) => Some(cluster),
        Err(e) => {
            report.notes.push(format!(
                "the backup's inventory does not parse here ({}): the drill target gets only the etcd role",
                e.to_string().lines().next().unwrap_or_default()
            ));
            None
        }
    }
}

fn prepare_target(
    args: &DrillArgs,
    manifest: &Manifest,
    source: Option<&Cluster>,
    out: &Output,
    report: &mut DrillReport,
) -> anyhow::Result<DrillTarget> {
    if args.drill_target != "lab" {
        let path = PathBuf::from(&args.drill_target);
        if !path.is_file() {
            return Err(Failure::new(format!("--drill-target {}: no such inventory file", path.display()))
                .hint("pass `lab` (a fresh local lab) or the path of an inventory whose etcd hosts may be overwritten")
                .code(2)
                .into());
        }
        report.target = format!("inventory {}", path.display());
        return Ok(DrillTarget::Inventory(path));
    }
    let since = Instant::now();
    let short: String = manifest.id.as_str().rsplit('-').next().unwrap_or("0000").to_string();
    let name = format!("drill-{short}-{}", std::process::id() % 10000);
    report.target = format!("lab {name}");
    out.status(format!(
        "==> drill: bringing up lab {name} ({} machines, etcd {})",
        manifest.member_count.max(1),
        manifest.etcd_version
    ));
    let mut options = UpOptions::new(name.clone(), manifest.member_count.max(1));
    options.progress = out.lab_progress();
    options.roles = lab_roles(source);
    let lab = match capstan_lab::up(options) {
        Ok(lab) => lab,
        Err(e) => {
            // A half-made lab is removed here: nothing else knows its name.
            let _ = capstan_lab::down(&name);
            return Err(Failure::new(format!("lab up {name}: {e}")).into());
        }
    };
    let dir = private_tempdir()?;
    let inventory = dir.path().join("inventory.yaml");
    capstan_lab::write_inventory(&lab, &inventory).map_err(|e| Failure::new(format!("lab {name}: {e}")))?;
    let yaml = drill_lab_inventory(&std::fs::read_to_string(&inventory)?, manifest, source)?;
    std::fs::write(&inventory, yaml)?;
    report.steps.push(DrillStep {
        step: "lab up".into(),
        seconds: since.elapsed().as_secs_f64(),
    });
    Ok(DrillTarget::Lab {
        name,
        inventory,
        _dir: dir,
    })
}

fn failure_text(e: &anyhow::Error) -> String {
    match e.downcast_ref::<Failure>() {
        Some(f) => f.message.clone(),
        None => format!("{e:#}"),
    }
}

/// The keys every drill checks: `--expect-key` flags, then the inventory's `drill.expect_keys`.
pub(crate) fn merged_keys(flags: &[String], cluster: Option<&Cluster>) -> Vec<String> {
    let mut keys = flags.to_vec();
    for key in cluster.map(|c| c.drill.expect_keys.as_slice()).unwrap_or_default() {
        if !keys.contains(key) {
            keys.push(key.clone());
        }
    }
    keys
}

async fn drill_restore(
    args: &DrillArgs,
    expect_keys: &[String],
    fetched: &FetchedBackup,
    fetch_seconds: f64,
    inventory: &Path,
    out: &Output,
    report: &mut DrillReport,
) -> anyhow::Result<()> {
    let cluster = load(Some(inventory))?;
    let restore_started = Instant::now();
    let options = RestoreOptions {
        // The target is throwaway by definition (a fresh lab or an inventory named for this).
        force: true,
        ..restore_options(
            &RestoreArgs {
                from: args.from.clone(),
                target: BackupTargetArgs {
                    target: None,
                    s3_path_style: false,
                },
                identity: None,
                force: true,
                bump_revision: None,
                mark_compacted: false,
                dry_run: false,
            },
            out,
        )
    };
    let outcome = run_restore(&cluster, fetched, options).await?;
    for step in &outcome.steps {
        report.steps.push(DrillStep {
            step: format!("restore: {}", step.step),
            seconds: step.seconds,
        });
    }
    report.notes.extend(outcome.notes.iter().cloned());
    for check in &outcome.verification.checks {
        report
            .checks
            .push(DrillCheck::new(check.name.clone(), check.ok, check.detail.clone()));
    }
    report.restored_revision = outcome.verification.compared_at_revision;
    if outcome.verification.ok {
        report.rto_seconds = Some(fetch_seconds + restore_started.elapsed().as_secs_f64());
    }

    if !expect_keys.is_empty() {
        let ca = CertificateAuthority::from_pem(&fetched.ca_cert_pem, &fetched.ca_key_pem)?;
        let tls = admin_tls(&ca)?;
        let endpoints: Vec<EtcdEndpoint> = cluster
            .hosts_with_role(capstan_inventory::Role::Etcd)
            .map(|h| EtcdEndpoint::https(&h.address, DEFAULT_CLIENT_PORT))
            .collect();
        for key in check_keys(&endpoints, &tls, expect_keys).await {
            report.checks.push(DrillCheck::new(
                format!("key {} exists", key.key),
                key.ok,
                match key.error {
                    Some(error) => error,
                    None => format!("{} key(s)", key.found),
                },
            ));
        }
    }
    component_checks(&cluster, fetched, out, report).await;
    Ok(())
}

/// The components' part of a drill, after etcd's: their restored state files compared with the
/// backup, then (where the target can have them) their software installed with the restored
/// state by the same plan as `capstan apply`, and their own checks; checks a target cannot run
/// are reported as skipped with what is missing.
async fn component_checks(cluster: &Cluster, fetched: &FetchedBackup, out: &Output, report: &mut DrillReport) {
    let components = crate::components::ALL;
    report
        .checks
        .extend(capstan_backup::state::verify_restored(cluster, components, &fetched.state).await);
    let enabled: Vec<_> = components.iter().filter(|c| c.enabled(cluster)).collect();
    // Components whose state was backed up run on top of it: install them before their checks.
    let needs_install = enabled
        .iter()
        .any(|c| c.installs() && !c.state_files(cluster).is_empty() && c.drill_skip(cluster).is_none());
    let mut installed = true;
    if needs_install {
        let since = Instant::now();
        out.status("==> drill: installing the components on the restored state (as `capstan apply`)");
        let result = match ClusterPlan::new(components, cluster, &[]) {
            Ok(plan) => plan
                .run(cluster, &out.run_context(Mode::Apply, 8))
                .await
                .map_err(|e| e.message),
            Err(e) => Err(e.to_string()),
        };
        let (ok, detail) = match result {
            Ok(outcome) if outcome.success() => (true, "every enabled component converged".to_string()),
            Ok(outcome) => (
                false,
                outcome
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("failed on {}", outcome.summary.failed_hosts().join(", "))),
            ),
            Err(message) => (false, message),
        };
        installed = ok;
        report.checks.push(DrillCheck::new(
            "components installed on the restored state",
            ok,
            detail,
        ));
        report.steps.push(DrillStep {
            step: "install components".into(),
            seconds: since.elapsed().as_secs_f64(),
        });
    }
    for component in enabled {
        if let Some(skip) = component.drill_skip(cluster) {
            for check in &skip.checks {
                report.checks.push(DrillCheck::skipped(
                    format!("{}: {check}", component.name()),
                    skip.missing.clone(),
                ));
            }
            continue;
        }
        if !installed && !component.state_files(cluster).is_empty() {
            continue;
        }
        for check in component.drill_checks(cluster).await {
            report.checks.push(DrillCheck::new(
                format!("{}: {}", component.name(), check.name),
                check.ok,
                check.detail,
            ));
        }
    }
}

/// node_exporter's textfile directory (`CAPSTAN_TEXTFILE_DIR` overrides it, for tests).
pub(super) fn textfile_dir() -> PathBuf {
    std::env::var_os("CAPSTAN_TEXTFILE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(capstan_monitoring::TEXTFILE_DIR))
}

fn finish_drill(args: &DrillArgs, report: &DrillReport, out: &Output) -> anyhow::Result<ExitCode> {
    let markdown = render_markdown(report);
    if let Some(base) = &args.report {
        let json_path = with_suffix(base, "json");
        let md_path = with_suffix(base, "md");
        std::fs::write(&json_path, serde_json::to_vec_pretty(report)?)
            .map_err(|e| Failure::new(format!("writing {}: {e}", json_path.display())))?;
        std::fs::write(&md_path, &markdown).map_err(|e| Failure::new(format!("writing {}: {e}", md_path.display())))?;
        out.status(format!("report: {} and {}", json_path.display(), md_path.display()));
    }
    let textfile_dir = textfile_dir();
    let metrics = prometheus_text(report, unix_now());
    match write_atomic(&textfile_dir, DRILL_METRICS_FILE, metrics.as_bytes(), 0o644) {
        Ok(path) => out.status(format!("metrics: {}", path.display())),
        Err(e) => out.status(format!(
            "warning: could not write metrics to {}: {e}",
            textfile_dir.join(DRILL_METRICS_FILE).display()
        )),
    }
    if out.json() {
        out.print_json(report)?;
    } else {
        print!("{markdown}");
    }
    if report.success {
        return Ok(ExitCode::SUCCESS);
    }
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    let reason = match (&report.failure, failed.is_empty()) {
        (Some(failure), _) => failure.clone(),
        (None, false) => failed.join("; "),
        (None, true) => "no check ran".to_string(),
    };
    Err(
        Failure::new(format!("drill of backup {} FAILED: {reason}", report.backup_id))
            .hint("the report above lists every check; fix the backup or the cause and drill again")
            .into(),
    )
}

fn with_suffix(base: &Path, extension: &str) -> PathBuf {
    let stem = match base.extension().and_then(|e| e.to_str()) {
        Some("json") | Some("md") => base.with_extension(""),
        _ => base.to_path_buf(),
    };
    let mut name = stem.into_os_string();
    name.push(format!(".{extension}"));
    PathBuf::from(name)
}
