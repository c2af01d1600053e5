//! `capstan restore`: a backup onto the inventory's etcd hosts. See docs/restore.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use capstan_backup::restore::{fetch_decrypted, resolve, FetchedBackup};
use capstan_backup::state::{default_revision_bump, StateRestore};
use capstan_backup::{BackupId, Store};
use capstan_etcd::restore::{restore as restore_etcd, RestoreInput, RestoreOptions, RestoreOutcome};
use capstan_inventory::Cluster;
use capstan_provisioner::component::PhaseReport;
use capstan_provisioner::lock::LockMode;
use capstan_provisioner::report::RunReport;
use capstan_provisioner::report::{render_changes, render_summary};
use capstan_provisioner::runner::Mode;

use crate::cli::RestoreArgs;
use crate::commands::backup::{open, parse_which, target_url};
use crate::commands::inventory::load;
use crate::commands::lock::locked_unless_dry_run;
use crate::format::{changes_or_none, header, or_dash, table, yes_no};
use crate::output::{Failure, Output};

pub fn restore(args: RestoreArgs, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    let cluster = load(inventory)?;
    let url = target_url(&args.target, Some(&cluster))?;
    let which = parse_which(&args.from)?;
    let options = restore_options(&args, out);
    options
        .validate()
        .map_err(|e| Failure::new(e.to_string()).maybe_hint(e.hint()).code(2))?;
    let runtime = tokio::runtime::Runtime::new()?;
    let dry_run = args.dry_run;
    let work = async {
        let store = open(&url, &args.target).await?;
        let id = resolve(&store, &which).await.map_err(|e| Failure::of(&e))?;
        let work = private_tempdir()?;
        let started = Instant::now();
        out.status(format!(
            "==> restore: downloading, verifying and decrypting backup {id}"
        ));
        let fetched = fetch(&store, &id, args.identity.as_deref(), work.path()).await?;
        let fetch_seconds = started.elapsed().as_secs_f64();
        let outcome = run_restore(&cluster, &fetched, options).await?;
        let total = started.elapsed().as_secs_f64();
        if args.dry_run {
            return print_plan(&outcome, total, out);
        }
        print_outcome(&outcome, fetch_seconds, total, out)?;
        if outcome.verification.ok {
            out.status(format!("restored backup {id} in {total:.1}s: verified"));
            Ok(ExitCode::SUCCESS)
        } else {
            let failed: Vec<String> = outcome
                .verification
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{} ({})", c.name, c.detail))
                .collect();
            Err(Failure::new(format!("restore verification failed: {}", failed.join("; ")))
                .hint("check the members with `capstan status`; running the same restore again continues where it stopped")
                .into())
        }
    };
    runtime.block_on(locked_unless_dry_run(dry_run, &cluster, LockMode::Fence, out, work))
}

pub(crate) fn restore_options(args: &RestoreArgs, out: &Output) -> RestoreOptions {
    let mut options = RestoreOptions::new();
    options.force = args.force;
    options.bump_revision = args.bump_revision;
    options.mark_compacted = args.mark_compacted;
    options.mode = if args.dry_run { Mode::DryRun } else { Mode::Apply };
    options.progress = out.progress();
    // Restore's step lines, and (once etcd::restore hands its reporter on instead of stderr) the
    // lines of the applies it runs: all silent with -q.
    options.out = out.reporter();
    options
}

/// The restore: components' units that use etcd stopped first, etcd restored, then the
/// components' backed-up state put back and their units started (`capstan_backup::state`).
pub(crate) async fn run_restore(
    cluster: &Cluster,
    fetched: &FetchedBackup,
    mut options: RestoreOptions,
) -> anyhow::Result<RestoreOutcome> {
    let components = crate::components::ALL;
    if options.bump_revision.is_none() {
        if let Some(bump) = default_revision_bump(cluster, components) {
            options.bump_revision = Some(bump);
            options.mark_compacted = true;
        }
    }
    let out = options.out.clone();
    let state = StateRestore::connect(
        cluster,
        components,
        &fetched.state,
        options.mode,
        options.progress.clone(),
    )
    .await
    .map_err(|e| Failure::of(&e))?;
    out.line(format_args!("==> restore: components' state: {}", state.describe()));
    for ignored in &state.ignored {
        out.line(format_args!(
            "    note: no enabled component declares {ignored}: left out"
        ));
    }
    let result = restore_state_around_etcd(cluster, fetched, options, &state).await;
    state.close().await;
    result
}

async fn restore_state_around_etcd(
    cluster: &Cluster,
    fetched: &FetchedBackup,
    options: RestoreOptions,
    state: &StateRestore,
) -> anyhow::Result<RestoreOutcome> {
    let mut reports = vec![(
        "stop the units that use etcd",
        state.stop_units().await.map_err(|e| Failure::of(&e))?,
    )];
    let mut outcome = restore_etcd_only(cluster, fetched, options).await?;
    let back = state.put_back_and_start().await.map_err(|e| Failure::of(&e))?;
    reports.extend(
        ["put the components' state back", "start the units again"]
            .into_iter()
            .zip(back),
    );
    for (phase, report) in reports {
        outcome.reports.push(PhaseReport {
            phase: phase.to_string(),
            report,
        });
    }
    let refs: Vec<&RunReport> = outcome.reports.iter().map(|r| &r.report).collect();
    outcome.summary = RunReport::merged(outcome.mode, &refs, outcome.summary.elapsed);
    Ok(outcome)
}

async fn restore_etcd_only(
    cluster: &Cluster,
    fetched: &FetchedBackup,
    options: RestoreOptions,
) -> anyhow::Result<RestoreOutcome> {
    let input = RestoreInput {
        backup_id: fetched.manifest.id.to_string(),
        snapshot_path: fetched.snapshot_path.clone(),
        snapshot_sha256: fetched.snapshot_sha256.clone(),
        ca_cert_pem: fetched.ca_cert_pem.clone(),
        ca_key_pem: fetched.ca_key_pem.clone(),
        manifest_revision: fetched.manifest.revision,
    };
    restore_etcd(cluster, &input, options)
        .await
        .map_err(|e| Failure::new(e.to_string()).maybe_hint(e.hint()).into())
}

fn print_outcome(outcome: &RestoreOutcome, fetch_seconds: f64, total: f64, out: &Output) -> anyhow::Result<()> {
    if out.json() {
        let value = serde_json::json!({
            "outcome": outcome,
            "fetch_seconds": fetch_seconds,
            "total_seconds": total,
        });
        return out.print_json(&value);
    }
    let mut rows = vec![header(&[
        "MEMBER", "ACTION", "HEALTHY", "LEADER", "REVISION", "KEYS", "HASH-KV",
    ])];
    for (member, check) in outcome.members.iter().zip(&outcome.verification.members) {
        rows.push(vec![
            member.host.clone(),
            member.action.clone(),
            yes_no(check.healthy),
            yes_no(check.leader),
            or_dash(check.revision),
            or_dash(check.key_count),
            or_dash(check.hash_kv.map(|h| format!("{h:08x}"))),
        ]);
    }
    print!("{}", table(&rows));
    println!();
    let kept: Vec<_> = outcome
        .members
        .iter()
        .filter_map(|m| m.before_restore.as_ref().map(|k| (m.host.as_str(), k)))
        .collect();
    if !kept.is_empty() {
        println!("--force kept the previous etcd state (to roll back, see \"Rolling back a --force restore\" in docs/restore.md):");
        let mut rows = vec![header(&[
            "HOST",
            "SAFETY SNAPSHOT",
            "PREVIOUS DATA DIR",
            "PREVIOUS CONFIG",
            "PREVIOUS PKI",
        ])];
        for (host, k) in kept {
            rows.push(vec![
                host.to_string(),
                or_dash(k.safety_snapshot.as_ref()),
                k.data_dir.clone(),
                or_dash(k.config.as_ref()),
                or_dash(k.pki_dir.as_ref()),
            ]);
        }
        print!("{}", table(&rows));
        println!();
    }
    let mut checks = vec![header(&["CHECK", "RESULT", "DETAIL"])];
    for check in &outcome.verification.checks {
        checks.push(vec![
            check.name.clone(),
            if check.ok { "ok" } else { "FAILED" }.into(),
            check.detail.clone(),
        ]);
    }
    print!("{}", table(&checks));
    println!();
    let mut steps = vec![header(&["STEP", "SECONDS"])];
    steps.push(vec!["download, verify, decrypt".into(), format!("{fetch_seconds:.1}")]);
    for step in &outcome.steps {
        steps.push(vec![step.step.clone(), format!("{:.1}", step.seconds)]);
    }
    steps.push(vec!["total".into(), format!("{total:.1}")]);
    print!("{}", table(&steps));
    for note in &outcome.notes {
        println!("note: {note}");
    }
    Ok(())
}

/// `--dry-run`: every change the restore would make, per host with its commands (like `capstan
/// plan`), then what it would run after them.
fn print_plan(outcome: &RestoreOutcome, total: f64, out: &Output) -> anyhow::Result<ExitCode> {
    if out.json() {
        out.print_json(&serde_json::json!({ "outcome": outcome, "total_seconds": total }))?;
    } else {
        let changes = render_changes(&outcome.summary, out.color, true);
        print!("{}", changes_or_none(changes));
        println!();
        print!("{}", render_summary(&outcome.summary, out.color));
        for line in &outcome.not_run {
            println!("then: would {line}");
        }
        for note in &outcome.notes {
            println!("note: {note}");
        }
    }
    let totals = outcome.summary.totals();
    out.status(format!(
        "restore plan for backup {} in {total:.1}s: {} ok, {} to change; nothing was changed",
        outcome.backup_id, totals.ok, totals.changed
    ));
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn fetch(
    store: &Arc<dyn Store>,
    id: &BackupId,
    identity: Option<&Path>,
    dir: &Path,
) -> anyhow::Result<FetchedBackup> {
    fetch_decrypted(store, id, identity, dir)
        .await
        .map_err(|e| Failure::of(&e).into())
}

/// Name prefix of the private directories under the temp dir: `capstan-restore-<pid>-<nanos>`.
const PRIVATE_PREFIX: &str = "capstan-restore-";

/// Private directories that exist now, for the signal handler to remove.
static LIVE_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A 0700 directory under the temp dir (for the plaintext snapshot); removed when dropped, and
/// when the process is interrupted (SIGINT, SIGTERM). One left by a process killed outright
/// (SIGKILL, a crash) is removed by the next restore or drill.
pub(crate) struct PrivateDir(PathBuf);

impl PrivateDir {
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Ok(mut live) = LIVE_DIRS.lock() {
            live.retain(|p| p != &self.0);
        }
    }
}

/// On SIGINT or SIGTERM: remove every live private directory (decrypted backups), then exit
/// as a process killed by that signal would (130, 143). Installed once, on a thread of its own
/// (callers may or may not be inside a runtime).
fn remove_on_interrupt() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let (ready, registered) = std::sync::mpsc::channel();
        // Its own thread and runtime: callers may be inside a runtime (which cannot block on
        // another) or not.
        std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                let _ = ready.send(());
                return;
            };
            let code = runtime.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let handlers = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
                let _ = ready.send(());
                let (Ok(mut interrupt), Ok(mut terminate)) = handlers else {
                    return None;
                };
                Some(tokio::select! {
                    _ = interrupt.recv() => 130,
                    _ = terminate.recv() => 143,
                })
            });
            let Some(code) = code else { return };
            let dirs = LIVE_DIRS.lock().map(|live| live.clone()).unwrap_or_default();
            // Everything first: a closed stderr may end the process at the first message.
            for dir in &dirs {
                let _ = std::fs::remove_dir_all(dir);
            }
            for dir in &dirs {
                eprintln!("interrupted: removed the decrypted backup in {}", dir.display());
            }
            std::process::exit(code);
        });
        // Handlers are in place before the first decrypted byte is written.
        let _ = registered.recv_timeout(std::time::Duration::from_secs(5));
    });
}

/// Private directories in `temp` left by processes that no longer run (killed outright), which
/// hold decrypted backups. A directory whose pid runs again (reused) is left alone.
fn stale_private_dirs(temp: &Path, running: impl Fn(u32) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid: u32 = name.strip_prefix(PRIVATE_PREFIX)?.split('-').next()?.parse().ok()?;
            let owned = entry.metadata().ok().is_some_and(|m| m.is_dir());
            (owned && !running(pid)).then(|| entry.path())
        })
        .collect()
}

pub(crate) fn private_tempdir() -> anyhow::Result<PrivateDir> {
    use std::os::unix::fs::DirBuilderExt;
    let temp = std::env::temp_dir();
    for stale in stale_private_dirs(&temp, |pid| Path::new(&format!("/proc/{pid}")).exists()) {
        if std::fs::remove_dir_all(&stale).is_ok() {
            tracing::warn!(
                "removed {}: a decrypted backup left by an interrupted restore or drill",
                stale.display()
            );
        }
    }
    remove_on_interrupt();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let path = temp.join(format!("{PRIVATE_PREFIX}{}-{nanos:08x}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .map_err(|e| Failure::new(format!("creating {}: {e}", path.display())))?;
    if let Ok(mut live) = LIVE_DIRS.lock() {
        live.push(path.clone());
    }
    Ok(PrivateDir(path))
}

#[cfg(test)]
mod private_dir_tests {
    use super::*;

    #[test]
    fn stale_dirs_are_those_of_processes_that_are_gone() {
        let temp = tempfile::tempdir().unwrap();
        for name in [
            "capstan-restore-100-0000abcd",
            "capstan-restore-200-0000abcd",
            "capstan-restore-x-1",
            "other-300",
        ] {
            std::fs::create_dir(temp.path().join(name)).unwrap();
        }
        // A file with the prefix is not one of ours.
        std::fs::write(temp.path().join("capstan-restore-400-0000abcd"), b"").unwrap();
        let stale = stale_private_dirs(temp.path(), |pid| pid == 200);
        assert_eq!(stale, [temp.path().join("capstan-restore-100-0000abcd")]);
    }
}
