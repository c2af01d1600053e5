//! The remote helpers of a restore (run a step on a member, on all of them, run `apply`) and its
//! larger steps, each called once from `run`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use capstan_inventory::Cluster;

use super::run::Ctx;
use super::scripts::{
    detect_tool_script, move_aside_script, parse_moved_aside, parse_tool, safety_snapshot_script, Marker, RestoreTool,
};
use super::{KeptBeforeRestore, OccupiedHost, RestoreError, RestoreInput, RestoreOptions, SAFETY_DIR};
use crate::apply::{apply, ApplyError, ApplyOptions};
use crate::config::PkiPaths;
use crate::inspect::{pki_paths, EtcdHost};
use crate::probe::{parse_bootstrap_values, probe_member};
use capstan_provisioner::hint::Hint;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::runner::Mode;
use capstan_provisioner::transport::{ExecOptions, RemoteFile, Transport};
use capstan_provisioner::upload::upload_file;

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

fn apply_options(options: &RestoreOptions) -> ApplyOptions {
    let mut apply_options = ApplyOptions::new(Mode::Apply);
    apply_options.concurrency = options.concurrency;
    apply_options.progress = options.progress.clone();
    apply_options.out = Box::new(std::io::stderr());
    apply_options.ready_timeout = options.ready_timeout;
    apply_options
}

pub(super) async fn run_apply(
    cluster: &Cluster,
    options: &RestoreOptions,
    stage: &'static str,
) -> Result<(), RestoreError> {
    let outcome = apply(cluster, apply_options(options))
        .await
        .map_err(|e: ApplyError| RestoreError::Apply {
            stage,
            reason: match e.hint() {
                Some(hint) => format!("{e} (hint: {hint})"),
                None => e.to_string(),
            },
        })?;
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
/// config are moved aside and its PKI copied. Returns what was kept, per host.
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
    let snapshots = try_all(occupants.iter().map(|h| {
        let snapshot = format!("{SAFETY_DIR}/{}-{stamp}.db", h.name());
        let script = safety_snapshot_script(&pki, &snapshot);
        async move {
            let saved = run(
                transport(h).as_ref(),
                "safety snapshot (etcdctl snapshot save)",
                &script,
                Duration::from_secs(600),
            )
            .await?;
            Ok(saved.lines().any(|l| l.trim() == "saved").then_some(snapshot))
        }
    }))
    .await?;
    let data_dir_trimmed = data_dir.trim_end_matches('/').to_string();
    let moved = try_all(occupants.iter().map(|h| {
        let script = move_aside_script(&data_dir_trimmed, marker_file, stamp);
        async move {
            run(
                transport(h).as_ref(),
                "moving the previous etcd state aside",
                &script,
                Duration::from_secs(120),
            )
            .await
        }
    }))
    .await?;
    for ((host, snapshot), moved) in occupants.iter().zip(snapshots).zip(moved) {
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

/// Puts the backed-up CA on every member, so `apply` issues member certificates from it, and the
/// marker that says this host's data is this restore's.
pub(super) async fn put_ca_and_markers(
    hosts: &[EtcdHost],
    markers: &[Option<Marker>],
    input: &RestoreInput,
    marker_file: &str,
    pki: &PkiPaths,
) -> Result<(), RestoreError> {
    let prepared = Marker {
        backup_id: input.backup_id.clone(),
        restored: false,
    };
    try_all(hosts.iter().zip(markers).map(|(h, marker)| {
        let prepared = &prepared;
        async move {
            let t = transport(h);
            let pki_dir = pki
                .ca_file
                .rsplit_once('/')
                .map(|(d, _)| d)
                .unwrap_or("/etc/etcd/pki")
                .to_string();
            run(
                t.as_ref(),
                "creating the PKI dir",
                &format!("mkdir -p {0} && chmod 700 {0}", quote(&pki_dir)),
                Duration::from_secs(30),
            )
            .await?;
            for (path, pem, mode) in [
                (&pki.ca_file, &input.ca_cert_pem, 0o644),
                (&crate::probe::ca_key_path(pki), &input.ca_key_pem, 0o600),
            ] {
                let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(pem.as_bytes()));
                let file = RemoteFile {
                    path: path.clone(),
                    mode,
                    owner: Some("root".into()),
                    group: Some("root".into()),
                };
                upload_file(t.as_ref(), pem.as_bytes(), &sha, &file).await?;
            }
            if marker.as_ref().is_none_or(|m| m.backup_id != prepared.backup_id) {
                let json = serde_json::to_string(prepared).unwrap_or_default();
                run(
                    t.as_ref(),
                    "writing the restore marker",
                    &format!(
                        "mkdir -p -- \"$(dirname {0})\" && printf '%s\\n' {1} > {0}",
                        quote(marker_file),
                        quote(&json)
                    ),
                    Duration::from_secs(30),
                )
                .await?;
            }
            Ok(())
        }
    }))
    .await?;
    Ok(())
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
