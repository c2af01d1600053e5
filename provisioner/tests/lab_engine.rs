//! The engine end to end on real lab machines: SSH with strict host keys, facts, and operations
//! (template file, directory, artifact, systemd unit + service with a restart handler) that change
//! things on the first run, report 0 changed on the second, and change nothing in a dry run.
//! Needs root and the lab prerequisites; skips with a message naming what is missing.

use std::path::Path;
use std::sync::Arc;

use capstan_lab::{LabGuard, UpOptions};
use capstan_provisioner::facts::{gather_host_facts, FactCache};
use capstan_provisioner::ops::{
    apt_source_file, Artifact, Directory, File, OperationExt, Package, Service, SystemdUnit,
};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::report::RunReport;
use capstan_provisioner::runner::{HostOps, Mode, NoProgress, RunOptions, Runner};
use capstan_provisioner::ssh::SshTransport;
use capstan_provisioner::targets::ssh_targets;
use capstan_provisioner::transport::{ExecOptions, Transport, TransportError};

#[path = "support/require.rs"]
mod require;
use require::{need, require};

/// The ops one host gets: every kind the engine has.
fn host_ops(
    transport: Arc<dyn Transport>,
    cluster: &str,
    marker: &str,
    artifact_dir: &Path,
    apt_source: &str,
) -> HostOps {
    let motd = capstan_templates::render("lab/motd", serde_json::json!({ "cluster": cluster })).unwrap();
    let unit = capstan_templates::render(
        "lab/test-unit.service",
        serde_json::json!({ "description": "capstan engine test", "marker": marker }),
    )
    .unwrap();
    let tarball = artifact_dir.join("tool.tar.gz");
    let sha = hex_sha256(&std::fs::read(&tarball).unwrap());
    HostOps::new(transport)
        // A Debian package from the site's (here: the lab's) own apt repository.
        .with(apt_source_file(apt_source))
        .with(Package::new(["iptables"]).from_source(Some(apt_source)))
        .with(Directory::new("/etc/capstan-test").mode(0o750))
        .with(File::new("/etc/capstan-test/motd", motd.into_bytes()).mode(0o644))
        .with(
            Artifact::new(&format!("file://{}", tarball.display()), &sha, "/usr/local/bin")
                .unwrap()
                .mode(0o755)
                .extract(["tool/capstan-test-tool"])
                .unwrap(),
        )
        .with(
            SystemdUnit::new("capstan-test.service", unit)
                .unwrap()
                .notify(["capstan-test"]),
        )
        .with(Service::new("capstan-test").unwrap().enabled(true).running(true))
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A small tar.gz with one executable, laid out like an upstream release tarball.
fn make_artifact(dir: &Path) {
    let file = std::fs::File::create(dir.join("tool.tar.gz")).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let body = b"#!/bin/sh\necho capstan-test-tool 1.0\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append_data(&mut header, "tool/capstan-test-tool", &body[..])
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

async fn run(
    runner: &Runner,
    conns: &Connections,
    cluster: &capstan_inventory::Cluster,
    marker: &str,
    dir: &Path,
) -> RunReport {
    let apt_source = cluster
        .artifacts
        .apt_source
        .as_deref()
        .expect("the lab inventory names its apt repository");
    let lists = conns
        .hosts()
        .map(|(_, t)| host_ops(t.clone(), &cluster.name, marker, dir, apt_source))
        .collect();
    runner.run(lists).await
}

async fn sh(t: &dyn Transport, cmd: &str) -> String {
    let out = t.exec(cmd, &ExecOptions::default()).await.unwrap();
    assert!(out.success(), "{cmd}: {}", out.stderr_str());
    out.stdout_str().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_engine_converges_and_is_idempotent() {
    let apt_repo = capstan_lab::Paths::from_env().default_apt_repo_dir().join("Packages");
    let repo_missing = if apt_repo.is_file() {
        Ok(())
    } else {
        Err(format!(
            "no {} (scripts/setup.sh builds it with lab/mirror/build-debs.sh)",
            apt_repo.display()
        ))
    };
    if !require(&[
        need("lab prerequisites missing", capstan_lab::check_prerequisites()),
        need("lab apt repository missing", repo_missing),
    ]) {
        return;
    }
    let guard = LabGuard::up(UpOptions::new(format!("eng-{}", std::process::id()), 3)).expect("lab up");
    let lab = guard.lab().clone();
    let cluster = capstan_inventory::load(&lab.inventory_path).expect("lab inventory is valid");
    let targets = ssh_targets(&cluster);
    let (conns, failures) = Connections::connect(&targets, 32).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(conns.len(), 3);

    // Facts describe the machines the lab booted.
    let cache = FactCache::new();
    for machine in &lab.machines {
        let t = conns.get(&machine.name).unwrap();
        let facts = gather_host_facts(t.as_ref(), &cache).await.unwrap();
        assert_eq!(facts.hostname, machine.name);
        assert_eq!(facts.init, "systemd");
        assert_eq!(facts.os_id, "debian");
        assert!(
            facts.addresses.iter().any(|a| a.to_string() == machine.ip),
            "{:?}",
            facts.addresses
        );
    }

    let work = tempfile::tempdir().unwrap();
    make_artifact(work.path());
    let apply = Runner::new(
        RunOptions {
            mode: Mode::Apply,
            concurrency: 32,
        },
        Arc::new(NoProgress),
    );
    let dry = Runner::new(
        RunOptions {
            mode: Mode::DryRun,
            concurrency: 32,
        },
        Arc::new(NoProgress),
    );

    // First run: everything changes, the service runs.
    let first = run(&apply, &conns, &cluster, "one", work.path()).await;
    assert!(first.success(), "{first:#?}");
    for host in &first.hosts {
        // apt source, package, directory, file, artifact, unit, service; plus the notified restart.
        assert!(host.changed >= 7, "{}: {host:#?}", host.host);
    }
    let t1 = conns.get(&lab.machines[0].name).unwrap();
    assert_eq!(sh(t1.as_ref(), "systemctl is-active capstan-test").await, "active");
    assert_eq!(
        sh(t1.as_ref(), "/usr/local/bin/capstan-test-tool").await,
        "capstan-test-tool 1.0"
    );
    assert_eq!(sh(t1.as_ref(), "stat -c %a /etc/capstan-test").await, "750");
    assert!(sh(t1.as_ref(), "iptables --version").await.starts_with("iptables v"));
    let pid_before = sh(t1.as_ref(), "systemctl show -p MainPID --value capstan-test").await;

    // Second run: nothing to do, nothing restarted.
    let second = run(&apply, &conns, &cluster, "one", work.path()).await;
    assert!(second.success(), "{second:#?}");
    assert_eq!(second.totals().changed, 0, "{second:#?}");
    assert_eq!(
        sh(t1.as_ref(), "systemctl show -p MainPID --value capstan-test").await,
        pid_before
    );

    // Drift on one host plus a new desired unit: the dry run reports both and changes nothing.
    sh(t1.as_ref(), "echo tampered > /etc/capstan-test/motd").await;
    let planned = run(&dry, &conns, &cluster, "two", work.path()).await;
    assert!(planned.success(), "{planned:#?}");
    let host1 = planned.hosts.iter().find(|h| h.host == lab.machines[0].name).unwrap();
    let diffs: Vec<String> = host1
        .ops
        .iter()
        .flat_map(|o| o.changes.iter().filter_map(|c| c.diff.clone()))
        .collect();
    assert!(diffs.iter().any(|d| d.contains("-tampered")), "{diffs:#?}");
    assert!(
        diffs.iter().any(|d| d.contains("+Environment=CAPSTAN_MARKER=two")),
        "{diffs:#?}"
    );
    assert_eq!(sh(t1.as_ref(), "cat /etc/capstan-test/motd").await, "tampered");
    assert!(!sh(t1.as_ref(), "cat /etc/systemd/system/capstan-test.service")
        .await
        .contains("=two"));
    assert_eq!(
        sh(t1.as_ref(), "systemctl show -p MainPID --value capstan-test").await,
        pid_before
    );

    // Applying it converges: the handler restarts the service because its unit changed.
    let third = run(&apply, &conns, &cluster, "two", work.path()).await;
    assert!(third.success(), "{third:#?}");
    assert_ne!(
        sh(t1.as_ref(), "systemctl show -p MainPID --value capstan-test").await,
        pid_before
    );
    assert_eq!(sh(t1.as_ref(), "cat /etc/capstan-test/motd").await.lines().count(), 1);
    let fourth = run(&apply, &conns, &cluster, "two", work.path()).await;
    assert_eq!(fourth.totals().changed, 0, "{fourth:#?}");
    conns.close_all().await;

    // A host whose key differs from the recorded one is refused.
    let mut target = targets[0].clone();
    let forged = work.path().join("known_hosts");
    let other_key = std::fs::read_to_string(&lab.known_hosts_path)
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("{},", lab.machines[1].ip)))
        .and_then(|l| {
            l.split_once(' ')
                .map(|(_, key)| format!("{},{} {key}", lab.machines[0].ip, lab.machines[0].name))
        })
        .expect("known_hosts line of machine 2");
    std::fs::write(&forged, format!("{other_key}\n")).unwrap();
    target.known_hosts_file = forged;
    match SshTransport::connect(&target).await {
        Err(TransportError::HostKey { reason, .. }) => assert!(reason.contains("SHA256:"), "{reason}"),
        Err(other) => panic!("expected a host key error, got {other}"),
        Ok(_) => panic!("connected despite a changed host key"),
    }

    let dir = lab.dir.clone();
    drop(guard);
    assert!(!dir.exists(), "lab state dir left behind");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.to_str().unwrap()), "mounts left behind");
    let links = std::process::Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&format!("{}:", lab.bridge)),
        "bridge left behind"
    );
}
