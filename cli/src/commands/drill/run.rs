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
            report.checks.push(DrillCheck {
                name: "backup downloads, decrypts and matches its manifest".into(),
                ok: true,
                detail: format!(
                    "{} bytes of snapshot; sha256 {} and etcd's own hash verified",
                    fetched.snapshot_size, fetched.snapshot_sha256
                ),
            });
            Some(fetched)
        }
        Err(e) => {
            let reason = failure_text(&e);
            report.checks.push(DrillCheck {
                name: "backup downloads, decrypts and matches its manifest".into(),
                ok: false,
                detail: reason.clone(),
            });
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
        Some(_) => match prepare_target(&args, &manifest, out, &mut report) {
            Ok(target) => Some(target),
            Err(e) => {
                report.failure = Some(format!("bringing up the drill target: {}", failure_text(&e)));
                None
            }
        },
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

fn prepare_target(
    args: &DrillArgs,
    manifest: &Manifest,
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
    let mirror = lab
        .artifact_mirror
        .as_ref()
        .map(|m| {
            format!(
                "artifacts:\n  mirror: {}\n",
                json_str(&format!("file://{}", m.display()))
            )
        })
        .unwrap_or_default();
    let mut yaml = format!(
        "cluster:\n  name: {}\nssh:\n  user: root\n  identity_file: {}\n  known_hosts: strict\n  known_hosts_file: {}\nhosts:\n",
        json_str(&name),
        json_str(&lab.key_path.display().to_string()),
        json_str(&lab.known_hosts_path.display().to_string())
    );
    for m in &lab.machines {
        yaml.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: [etcd]\n",
            m.name, m.ip
        ));
    }
    yaml.push_str(&mirror);
    yaml.push_str(&format!("versions:\n  etcd: {}\n", json_str(&manifest.etcd_version)));
    if lab.machines.len() % 2 == 0 {
        yaml.push_str("etcd:\n  allow_even_members: true\n");
    }
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

fn json_str(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{text}\""))
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
        report.checks.push(DrillCheck {
            name: check.name.clone(),
            ok: check.ok,
            detail: check.detail.clone(),
        });
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
            report.checks.push(DrillCheck {
                name: format!("key {} exists", key.key),
                ok: key.ok,
                detail: match key.error {
                    Some(error) => error,
                    None => format!("{} key(s)", key.found),
                },
            });
        }
    }
    for component in crate::components::ALL.iter().filter(|c| c.enabled(&cluster)) {
        for check in component.drill_checks(&cluster).await {
            report.checks.push(DrillCheck {
                name: format!("{}: {}", component.name(), check.name),
                ok: check.ok,
                detail: check.detail,
            });
        }
    }
    Ok(())
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
