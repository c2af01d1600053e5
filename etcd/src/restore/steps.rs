//! The remote helpers of a restore (run a step on a member, on all of them, run `apply`) and its
//! larger steps, each called once from `run`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use capstan_inventory::Cluster;

use super::ops::{Patient, Phases};
use super::run::Ctx;
use super::scripts::{
    detect_tool_script, kept_state_script, move_aside_script, parse_moved_aside, parse_tool, safety_snapshot_script,
    Marker, RestoreTool,
};
use super::{KeptBeforeRestore, OccupiedHost, RestoreError, RestoreInput, RestoreOptions, SAFETY_DIR};
use crate::apply::{apply, ApplyError, ApplyOptions};
use crate::config::PkiPaths;
use crate::inspect::{pki_paths, EtcdHost};
use crate::probe::{parse_bootstrap_values, probe_member};
use capstan_provisioner::hint::Hint;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{Command, Directory, File};
use capstan_provisioner::pki::CertificateAuthority;
use capstan_provisioner::runner::{HostOps, Mode};
use capstan_provisioner::transport::{ExecOptions, Transport};

pub(super) async fn run(
    t: &dyn Transport,
    step: &str,
    command: &str,
    timeout: Duration,
) -> Result<String, RestoreError> {
    let opts = ExecOptions {
        timeout,
        privileged: true,
    };
    let out = t.exec(command, &opts).await.map_err(|e| RestoreError::Remote {
        host: t.host().to_string(),
        step: step.to_string(),
        reason: e.to_string(),
    })?;
    if !out.success() {
        return Err(RestoreError::Remote {
            host: t.host().to_string(),
            step: step.to_string(),
            reason: format!(
                "exit {}: {}",
                out.exit_code.map_or_else(|| "by signal".into(), |c| c.to_string()),
                out.stderr_str().trim()
            ),
        });
    }
    Ok(out.stdout_str())
}

pub(super) fn transport(host: &EtcdHost) -> Arc<dyn Transport> {
    host.transport
        .clone()
        .expect("unreachable hosts are refused before this")
}

pub(super) async fn try_all<T>(
    futures: impl IntoIterator<Item = impl std::future::Future<Output = Result<T, RestoreError>>>,
) -> Result<Vec<T>, RestoreError> {
    futures::future::join_all(futures).await.into_iter().collect()
}

fn apply_options(options: &RestoreOptions, mode: Mode, input: &RestoreInput) -> Result<ApplyOptions, RestoreError> {
    let mut apply_options = ApplyOptions::new(mode);
    if mode == Mode::DryRun {
        // The CA step only planned to put the backed-up CA there: plan `apply` with it.
        apply_options.planned_ca = Some(CertificateAuthority::from_pem(&input.ca_cert_pem, &input.ca_key_pem)?);
    }
    apply_options.concurrency = options.concurrency;
    apply_options.progress = options.progress.clone();
    apply_options.out = options.out.clone().into();
    apply_options.ready_timeout = options.ready_timeout;
    Ok(apply_options)
}

/// `apply` in the restore's mode (a dry run plans it); its phase reports join the restore's.
pub(super) async fn run_apply(
    cluster: &Cluster,
    options: &RestoreOptions,
    input: &RestoreInput,
    phases: &mut Phases,
    stage: &'static str,
) -> Result<(), RestoreError> {
    let outcome = apply(cluster, apply_options(options, phases.mode(), input)?)
        .await
        .map_err(|e: ApplyError| RestoreError::Apply {
            stage,
            reason: match e.hint() {
                Some(hint) => format!("{e} (hint: {hint})"),
                None => e.to_string(),
            },
        })?;
    phases.extend(&format!("apply ({stage})"), outcome.reports.clone());
    if !outcome.success() {
        return Err(RestoreError::Apply {
            stage,
            reason: outcome
                .error
                .clone()
                .unwrap_or_else(|| format!("failed on {}", outcome.summary.failed_hosts().join(", "))),
        });
    }
    Ok(())
}

/// `--force`: keeps everything that is there. Safety snapshots of every running member first, while
/// the old cluster is whole (a failure here has stopped nothing); then each host's data dir and
/// config are moved aside and its PKI copied. Returns what was kept, per host (nothing in a dry
/// run, which only shows the commands).
pub(super) async fn keep_previous_state(
    ctx: &mut Ctx,
    hosts: &[EtcdHost],
    occupied: &[OccupiedHost],
    data_dir: &str,
    marker_file: &str,
) -> Result<Vec<(String, KeptBeforeRestore)>, RestoreError> {
    let mut kept: Vec<(String, KeptBeforeRestore)> = Vec::new();
    let since = Instant::now();
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let occupants: Vec<&EtcdHost> = occupied
        .iter()
        .filter_map(|o| hosts.iter().find(|h| h.name() == o.host))
        .collect();
    ctx.say(&format!(
        "--force: keeping the previous etcd state of {} host(s) (safety snapshots into {SAFETY_DIR})",
        occupants.len()
    ));
    let pki = pki_paths();
    let snapshot_of = |h: &EtcdHost| format!("{SAFETY_DIR}/{}-{stamp}.db", h.name());
    let snapshots = occupants
        .iter()
        .map(|h| {
            HostOps::new(Patient::wrap(transport(h), Duration::from_secs(600))).with(Command::new(
                &format!("safety snapshot {} (etcdctl snapshot save)", snapshot_of(h)),
                &safety_snapshot_script(&pki, &snapshot_of(h)),
            ))
        })
        .collect();
    ctx.phases.run("safety snapshots", snapshots).await?;
    let data_dir_trimmed = data_dir.trim_end_matches('/').to_string();
    let moves = occupants
        .iter()
        .map(|h| {
            HostOps::new(transport(h)).with(Command::new(
                &format!("stop etcd and move {data_dir_trimmed} and its config aside (.before-restore-{stamp})"),
                &move_aside_script(&data_dir_trimmed, marker_file, stamp),
            ))
        })
        .collect();
    ctx.phases.run("move the previous state aside", moves).await?;
    if ctx.phases.dry_run() {
        ctx.step("safety snapshots", since);
        return Ok(kept);
    }
    let moved = try_all(occupants.iter().map(|h| {
        let script = kept_state_script(&snapshot_of(h), stamp);
        async move {
            run(
                transport(h).as_ref(),
                "reading what was kept",
                &script,
                Duration::from_secs(30),
            )
            .await
        }
    }))
    .await?;
    for (host, moved) in occupants.iter().zip(moved) {
        let snapshot = moved.lines().any(|l| l.trim() == "saved").then(|| snapshot_of(host));
        let kept_here = parse_moved_aside(&moved, &data_dir_trimmed, stamp, snapshot);
        ctx.say(&format!(
            "{}: safety snapshot {}, previous data dir kept as {}",
            host.name(),
            kept_here
                .safety_snapshot
                .as_deref()
                .unwrap_or("none (etcd was not running)"),
            kept_here.data_dir
        ));
        if kept_here.safety_snapshot.is_none() {
            ctx.note(format!(
                "{}: etcd was not running, so no safety snapshot was taken; the previous data dir is kept as {}",
                host.name(),
                kept_here.data_dir
            ));
        }
        kept.push((host.name().to_string(), kept_here));
    }
    ctx.step("safety snapshots", since);
    Ok(kept)
}

/// The ops that put the backed-up CA on every member, so `apply` issues member certificates from
/// it, and the marker that says this host's data is this restore's.
pub(super) fn ca_and_marker_ops(
    hosts: &[EtcdHost],
    markers: &[Option<Marker>],
    input: &RestoreInput,
    marker_file: &str,
    pki: &PkiPaths,
) -> Vec<HostOps> {
    let prepared = Marker {
        backup_id: input.backup_id.clone(),
        restored: false,
    };
    let pki_dir = pki
        .ca_file
        .rsplit_once('/')
        .map(|(d, _)| d)
        .unwrap_or("/etc/etcd/pki")
        .to_string();
    hosts
        .iter()
        .zip(markers)
        .map(|(h, marker)| {
            let mut ops = HostOps::new(transport(h))
                .with(Directory::new(&pki_dir).mode(0o700))
                .with(
                    File::new(&pki.ca_file, input.ca_cert_pem.as_bytes())
                        .mode(0o644)
                        .owner("root")
                        .group("root"),
                )
                .with(
                    File::new(&crate::probe::ca_key_path(pki), input.ca_key_pem.as_bytes())
                        .mode(0o600)
                        .owner("root")
                        .group("root")
                        .sensitive(true),
                );
            if marker.as_ref().is_none_or(|m| m.backup_id != prepared.backup_id) {
                ops.push(marker_op(marker_file, &prepared));
            }
            ops
        })
        .collect()
}

/// Writes `marker` to `marker_file`, unless it already names the same backup.
fn marker_op(marker_file: &str, marker: &Marker) -> Command {
    let json = serde_json::to_string(marker).unwrap_or_default();
    let id = serde_json::to_string(&marker.backup_id).unwrap_or_default();
    Command::new(
        &format!("write the restore marker {marker_file} (backup {})", marker.backup_id),
        &format!(
            "mkdir -p -- \"$(dirname {0})\" && printf '%s\\n' {1} > {0}",
            quote(marker_file),
            quote(&json)
        ),
    )
    .unless(&format!(
        "grep -qF -- {} {} 2>/dev/null",
        quote(&format!("\"backup_id\":{id}")),
        quote(marker_file)
    ))
}

/// The initial cluster and token `apply` wrote (and keeps), which the restore must use: the same on
/// every member, or an error.
pub(super) async fn agreed_bootstrap_values(
    hosts: &[EtcdHost],
    data_dir: &str,
    pki: &PkiPaths,
) -> Result<(String, String), RestoreError> {
    let probes = try_all(hosts.iter().map(|h| async move {
        probe_member(transport(h).as_ref(), data_dir, pki)
            .await
            .map_err(|e| RestoreError::Remote {
                host: h.name().to_string(),
                step: "probing the member".into(),
                reason: e.to_string(),
            })
    }))
    .await?;
    let values: Vec<_> = probes
        .iter()
        .zip(hosts)
        .map(|(p, h)| {
            (
                h.name().to_string(),
                p.config.as_deref().and_then(parse_bootstrap_values),
            )
        })
        .collect();
    let missing: Vec<&str> = values
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(RestoreError::InconsistentConfig {
            detail: format!("no capstan config on {}", missing.join(", ")),
        });
    }
    let first = values[0].1.clone().expect("checked");
    if let Some((name, _)) = values.iter().find(|(_, v)| {
        v.as_ref().is_some_and(|v| {
            v.initial_cluster_token != first.initial_cluster_token || v.initial_cluster != first.initial_cluster
        })
    }) {
        return Err(RestoreError::InconsistentConfig {
            detail: format!("{name} differs from {}", values[0].0),
        });
    }
    Ok((first.initial_cluster_token.clone(), first.initial_cluster.clone()))
}

/// The tool that restores snapshots, asked of every member (a mixed install must not pass for a
/// supporting one): the same everywhere, with the revision flags only when all support them.
pub(super) async fn detect_tool(cluster: &Cluster, hosts: &[EtcdHost]) -> Result<RestoreTool, RestoreError> {
    let tools = try_all(hosts.iter().map(|h| async move {
        let output = run(
            transport(h).as_ref(),
            "detecting the restore tool",
            &detect_tool_script(),
            Duration::from_secs(30),
        )
        .await?;
        parse_tool(&output).ok_or_else(|| RestoreError::Remote {
            host: h.name().to_string(),
            step: "detecting the restore tool".into(),
            reason: "neither /usr/local/bin/etcdutl nor /usr/local/bin/etcdctl is installed".into(),
        })
    }))
    .await?;
    if let Some((i, other)) = tools.iter().enumerate().find(|(_, t)| t.name != tools[0].name) {
        return Err(RestoreError::Remote {
            host: hosts[i].name().to_string(),
            step: "detecting the restore tool".into(),
            reason: format!(
                "it has {} but {} has {}; run `capstan apply` so every member runs etcd {}",
                other.name,
                hosts[0].name(),
                tools[0].name,
                cluster.versions.etcd
            ),
        });
    }
    let mut tool = tools[0].clone();
    tool.bump_revision = tools.iter().all(|t| t.bump_revision);
    Ok(tool)
}
