//! The restore itself, step by step (the steps are numbered as in the module docs of `restore`).

use std::time::{Duration, Instant};

use capstan_inventory::Cluster;

use super::ops::{Patient, Phases, UploadedFile};
use super::scripts::{expected_tool, marker_path, parse_marker, restore_script, Marker};
use super::steps::{
    agreed_bootstrap_values, ca_and_marker_ops, detect_tool, keep_previous_state, run, run_apply, transport, try_all,
};
use super::verify::{verify_members, wait_healthy, Verification};
use super::{
    KeptBeforeRestore, MemberRestore, OccupiedHost, RestoreError, RestoreInput, RestoreOptions, RestoreOutcome,
    StepTiming, STAGING_DIR,
};
use crate::apply::merge_reports;
use crate::client::EtcdEndpoint;
use crate::config::initial_cluster;
use crate::inspect::{admin_tls, inspect_hosts, pki_paths, EtcdHost};
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{Absent, Command, OpError};
use capstan_provisioner::pki::CertificateAuthority;
use capstan_provisioner::report::Reporter;
use capstan_provisioner::runner::{HostOps, Mode};
use capstan_provisioner::transport::RemoteFile;

pub(super) struct Ctx {
    started: Instant,
    steps: Vec<StepTiming>,
    notes: Vec<String>,
    /// What a dry run leaves out (it depends on changes the dry run does not make).
    not_run: Vec<String>,
    out: Reporter,
    pub(super) phases: Phases,
}

impl Ctx {
    pub(super) fn say(&mut self, line: &str) {
        self.out.line(format_args!("==> restore: {line}"));
    }
    pub(super) fn note(&mut self, line: String) {
        self.out.line(format_args!("    note: {line}"));
        self.notes.push(line);
    }
    /// A dry run skips a step that needs the outcome of earlier changes; says what would run.
    pub(super) fn would(&mut self, line: &str) {
        self.out.line(format_args!("==> restore: dry run: would {line}"));
        self.not_run.push(line.to_string());
    }
    pub(super) fn step(&mut self, step: &str, since: Instant) {
        self.steps.push(StepTiming {
            step: step.to_string(),
            seconds: since.elapsed().as_secs_f64(),
        });
    }
}

/// Restore `input` onto the inventory's etcd hosts; see the module docs for the steps.
pub async fn restore(
    cluster: &Cluster,
    input: &RestoreInput,
    options: RestoreOptions,
) -> Result<RestoreOutcome, RestoreError> {
    options.validate()?;
    let out = options.out.clone();
    let mut ctx = Ctx {
        started: Instant::now(),
        steps: Vec::new(),
        notes: Vec::new(),
        not_run: Vec::new(),
        out,
        phases: Phases::new(options.mode, options.concurrency, options.progress.clone()),
    };
    let dry_run = options.mode == Mode::DryRun;
    if dry_run {
        ctx.say("dry run: the members are inspected and every change is shown; nothing is changed");
    }
    let data_dir = cluster.etcd.data_dir.display().to_string();
    let marker_file = marker_path(&data_dir);

    // 1. Inspect: reachability, data, markers.
    let since = Instant::now();
    ctx.say(&format!(
        "inspecting {} etcd host(s)",
        cluster.hosts_with_role(capstan_inventory::Role::Etcd).count()
    ));
    let (hosts, _conns) = inspect_hosts(cluster, options.concurrency, None).await?;
    let failed: Vec<&EtcdHost> = hosts
        .iter()
        .filter(|h| h.transport.is_none() || h.probe.is_none())
        .collect();
    if !failed.is_empty() {
        return Err(RestoreError::Unreachable {
            hosts: failed.iter().map(|h| h.name().to_string()).collect(),
            detail: failed
                .iter()
                .map(|h| {
                    h.connect_error
                        .clone()
                        .or_else(|| h.probe_error.clone())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    let markers = try_all(hosts.iter().map(|h| {
        let marker_file = marker_file.clone();
        async move {
            let text = run(
                transport(h).as_ref(),
                "reading the restore marker",
                &format!("cat -- {} 2>/dev/null || true", quote(&marker_file)),
                Duration::from_secs(30),
            )
            .await?;
            Ok(parse_marker(&text))
        }
    }))
    .await?;
    let ours = |m: &Option<Marker>| m.as_ref().is_some_and(|m| m.backup_id == input.backup_id);
    let occupied: Vec<OccupiedHost> = hosts
        .iter()
        .zip(&markers)
        .filter(|(h, m)| h.probe.as_ref().is_some_and(|p| p.has_data) && !ours(m))
        .map(|(h, m)| OccupiedHost {
            host: h.name().to_string(),
            running: h.probe.as_ref().is_some_and(|p| p.active),
            restored_from: m.as_ref().map(|m| m.backup_id.clone()),
        })
        .collect();
    ctx.step("inspect", since);

    // 2. Refuse, or (with --force) keep everything that is there: safety snapshots of every
    //    running member first, while the old cluster is whole (a failure here has stopped
    //    nothing); then each host's data dir and config are moved aside and its PKI copied.
    let kept: Vec<(String, KeptBeforeRestore)> = if occupied.is_empty() {
        Vec::new()
    } else {
        if !options.force {
            return Err(RestoreError::Occupied(occupied));
        }
        keep_previous_state(&mut ctx, &hosts, &occupied, &data_dir, &marker_file).await?
    };

    // 3. The backed-up CA on every member, so `apply` issues member certificates from it; and
    //    the marker that says this host's data is this restore's.
    let since = Instant::now();
    ctx.say("putting the backed-up CA on every member");
    let pki = pki_paths();
    let ca_ops = ca_and_marker_ops(&hosts, &markers, input, &marker_file, &pki);
    ctx.phases.run("backed-up CA and restore markers", ca_ops).await?;
    let mut restored_before: Vec<bool> = markers
        .iter()
        .map(|m| m.as_ref().is_some_and(|m| m.backup_id == input.backup_id && m.restored))
        .collect();
    // A marker written by --force's clearing was removed with the data: those hosts start over.
    for (host, restored) in hosts.iter().zip(restored_before.iter_mut()) {
        if occupied.iter().any(|o| o.host == host.name()) {
            *restored = false;
        }
    }
    ctx.step("ca", since);

    // 4. Binaries, certificates, configs and units through `apply`, which bootstraps an empty
    //    cluster with a fresh token. Skipped once any member holds restored data (a re-run).
    if !restored_before.iter().any(|r| *r) {
        let since = Instant::now();
        // Data of an earlier, interrupted attempt (its empty bootstrap) is worthless: start clean.
        let leftovers: Vec<&EtcdHost> = hosts
            .iter()
            .zip(&markers)
            .filter(|(h, m)| ours(m) && h.probe.as_ref().is_some_and(|p| p.has_data))
            .map(|(h, _)| h)
            .collect();
        let clear = leftovers
            .into_iter()
            .map(|host| {
                HostOps::new(transport(host)).with(Command::new(
                    &format!("clear an interrupted attempt's data ({data_dir})"),
                    &format!(
                        "systemctl stop etcd 2>/dev/null || true; rm -rf -- {}",
                        quote(data_dir.trim_end_matches('/'))
                    ),
                ))
            })
            .collect::<Vec<_>>();
        if !clear.is_empty() {
            ctx.phases.run("clear an interrupted attempt", clear).await?;
        }
        ctx.say("installing etcd and configuring members (capstan apply)");
        run_apply(cluster, &options, input, &mut ctx.phases, "install").await?;
        ctx.step("install (apply)", since);
    } else {
        ctx.say("members already hold restored data from an earlier run: continuing with the others");
    }

    // 5. The initial cluster and token `apply` wrote (and keeps): the restore must use the same.
    let since = Instant::now();
    let (token, initial_cluster) = match agreed_bootstrap_values(&hosts, &data_dir, &pki).await {
        Ok(values) => values,
        // `apply` only planned the configs it writes: use what it would write.
        Err(RestoreError::InconsistentConfig { .. }) if dry_run => {
            let members: Vec<_> = hosts.iter().map(EtcdHost::member).collect();
            (
                "<the token capstan apply writes>".to_string(),
                initial_cluster(&members),
            )
        }
        Err(e) => return Err(e),
    };
    let tool = match expected_tool(&cluster.versions.etcd).filter(|_| dry_run) {
        // The binaries a dry run would install are not there to ask.
        Some(tool) => tool,
        None => detect_tool(cluster, &hosts).await?,
    };
    let bump = match options.bump() {
        Some(n) if tool.bump_revision => Some((n, options.mark_compacted)),
        Some(n) => {
            ctx.note(format!(
                "--bump-revision {n} --mark-compacted is not supported by {} of etcd {} (it needs etcd 3.5.10 \
                 or newer): restored without it, so the revision is the backup's",
                tool.name, cluster.versions.etcd
            ));
            None
        }
        None => None,
    };

    // 6. Upload the snapshot, stop every member, restore the ones not yet restored.
    let todo: Vec<usize> = (0..hosts.len()).filter(|i| !restored_before[*i]).collect();
    let remote_snapshot = format!("{STAGING_DIR}/{}/snapshot.db", input.backup_id);
    ctx.say(&format!(
        "uploading the snapshot to {} member(s) and restoring with {} (token {token})",
        todo.len(),
        tool.name
    ));
    let uploads = todo
        .iter()
        .map(|&i| {
            let dest = RemoteFile {
                path: remote_snapshot.clone(),
                mode: 0o600,
                owner: Some("root".into()),
                group: Some("root".into()),
            };
            let upload = UploadedFile::new(&input.snapshot_path, &input.snapshot_sha256, dest).map_err(|e| {
                RestoreError::Remote {
                    host: hosts[i].name().to_string(),
                    step: "reading the local snapshot".into(),
                    reason: match e {
                        OpError::LocalRead { source, .. } => format!("{}: {source}", input.snapshot_path.display()),
                        other => other.to_string(),
                    },
                }
            })?;
            Ok(HostOps::new(transport(&hosts[i])).with(upload))
        })
        .collect::<Result<Vec<_>, RestoreError>>()?;
    ctx.phases.run("upload the snapshot", uploads).await?;
    ctx.step("upload snapshot", since);

    let since = Instant::now();
    // Members are stopped only when some still need restoring (a finished restore re-run
    // restarts nothing).
    if !todo.is_empty() {
        let stops = hosts
            .iter()
            .map(|h| HostOps::new(transport(h)).with(Command::new("stop etcd", "systemctl stop etcd")))
            .collect();
        ctx.phases.run("stop the members", stops).await?;
    }
    let restored_marker = Marker {
        backup_id: input.backup_id.clone(),
        restored: true,
    };
    let restores = todo
        .iter()
        .map(|&i| {
            let host = &hosts[i];
            let script = restore_script(
                &tool,
                &remote_snapshot,
                &data_dir,
                host.name(),
                &initial_cluster,
                &token,
                &host.member().peer_url(),
                bump,
                &restored_marker,
            );
            // A large snapshot takes longer to restore than the engine's default command budget.
            HostOps::new(Patient::wrap(transport(host), Duration::from_secs(1800))).with(Command::new(
                &format!(
                    "restore the snapshot into {data_dir} ({} snapshot restore) and mark it restored",
                    tool.name
                ),
                &script,
            ))
        })
        .collect();
    ctx.phases.run("restore the data dirs", restores).await?;
    ctx.step("restore data dirs", since);

    // 7. Start every member together (a lone member would wait for quorum) and wait for health.
    let since = Instant::now();
    ctx.say("starting etcd on every member");
    let starts = hosts
        .iter()
        .map(|h| {
            HostOps::new(transport(h)).with(
                Command::new(
                    "start etcd (all members together)",
                    "systemctl enable -q etcd && systemctl start --no-block etcd",
                )
                .unless("systemctl is-enabled -q etcd && systemctl is-active -q etcd"),
            )
        })
        .collect();
    ctx.phases.run("start the members", starts).await?;
    let endpoints: Vec<EtcdEndpoint> = hosts.iter().map(EtcdHost::operator_endpoint).collect();
    let names: Vec<String> = hosts.iter().map(|h| h.name().to_string()).collect();
    let bumped_by = bump.map_or(0, |(n, _)| i64::try_from(n).unwrap_or(i64::MAX));
    let minimum = input.manifest_revision.saturating_add(bumped_by);
    let verification = if dry_run {
        ctx.would(&format!(
            "wait up to {}s for the {} members to become healthy",
            options.ready_timeout.as_secs(),
            hosts.len()
        ));
        ctx.would("run capstan apply again to converge (it should change nothing)");
        ctx.would(&format!(
            "verify every member (health, leader, revision at least {minimum}, key counts, hashes) and then \
             remove {STAGING_DIR}/{}",
            input.backup_id
        ));
        Verification {
            members: Vec::new(),
            compared_at_revision: None,
            checks: Vec::new(),
            ok: false,
        }
    } else {
        let ca = CertificateAuthority::from_pem(&input.ca_cert_pem, &input.ca_key_pem)?;
        let tls = admin_tls(&ca)?;
        wait_healthy(&endpoints, &tls, hosts.len(), options.ready_timeout).await?;
        ctx.step("start and health gate", since);

        // 8. `apply` again: finds initialised members whose configs match; it should change nothing.
        let since = Instant::now();
        ctx.say("converging with capstan apply");
        run_apply(cluster, &options, input, &mut ctx.phases, "converge").await?;
        ctx.step("converge (apply)", since);

        // 9. Verify, then remove the uploaded snapshots.
        let since = Instant::now();
        ctx.say("verifying");
        let verification = verify_members(&names, &endpoints, &tls, minimum).await;
        ctx.step("verify", since);
        if verification.ok {
            let staging = format!("{STAGING_DIR}/{}", input.backup_id);
            let removals = hosts
                .iter()
                .map(|h| HostOps::new(transport(h)).with(Absent::new(&staging)))
                .collect();
            // Best effort: a leftover snapshot does not fail a verified restore.
            let _ = ctx.phases.run("remove the uploaded snapshot", removals).await;
        }
        verification
    };

    let members = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| MemberRestore {
            host: h.name().to_string(),
            action: match (restored_before[i], dry_run) {
                (true, _) => "already restored",
                (false, false) => "restored",
                (false, true) => "would restore",
            }
            .to_string(),
            before_restore: kept.iter().find(|(n, _)| n == h.name()).map(|(_, k)| k.clone()),
        })
        .collect();
    let reports = ctx.phases.into_reports();
    let seconds = ctx.started.elapsed();
    Ok(RestoreOutcome {
        backup_id: input.backup_id.clone(),
        mode: options.mode,
        token,
        tool: tool.name.to_string(),
        members,
        steps: ctx.steps,
        notes: ctx.notes,
        not_run: ctx.not_run,
        verification,
        summary: merge_reports(options.mode, &reports, seconds),
        reports,
        seconds: seconds.as_secs_f64(),
    })
}
