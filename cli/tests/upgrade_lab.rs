//! etcd version changes through `capstan plan|apply` on real lab machines running real etcd:
//! a patch upgrade under a continuous writer, the refusals, a member failing mid-rollout and its
//! patch rollback, and the 3.4 → 3.5 minor upgrade. Needs root, the lab prerequisites and the
//! artifact mirror (3.4.23, 3.5.0, 3.5.1); skips with a message naming what is missing.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_etcd::client::{EtcdClient, EtcdEndpoint, EtcdTls, Timeouts};
use capstan_lab::{Lab, LabGuard, UpOptions};
use serde_json::Value;

mod support;
use support::{
    changed, etcd_pids, json, lab, lab_inventory, mirror_and_version, mirror_etcd, remote, require, run_capstan, Run,
};

fn capstan(inventory: &Path, args: &[&str]) -> Run {
    run_capstan(Some(inventory), args, &[])
}

fn capstan_ok(inventory: &Path, args: &[&str]) -> Run {
    let run = capstan(inventory, args);
    assert_eq!(
        run.code, 0,
        "capstan {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    run
}

/// The cluster version a member sees, from its metrics listener (independent of capstan's code).
fn cluster_version(lab: &Lab, host: &str) -> String {
    remote(
        lab,
        host,
        "exec 3<>/dev/tcp/127.0.0.1/2381; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; \
         grep '^etcd_cluster_version.* 1$' <&3 | sed 's/.*cluster_version=\"\\([^\"]*\\)\".*/\\1/'",
    )
}

fn write_inventory(lab: &Lab, path: &Path, version: &str) {
    std::fs::write(
        path,
        lab_inventory(lab, &lab.name, &lab.machines, &mirror_and_version(version)),
    )
    .unwrap();
}

fn status(inventory: &Path) -> Value {
    let run = capstan(inventory, &["status", "--timeout", "3", "--output", "json"]);
    let value = json(&run);
    assert_eq!(run.code, 0, "{value:#}");
    value
}

fn versions(status: &Value) -> Vec<String> {
    status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["version"].as_str().unwrap_or("-").to_string())
        .collect()
}

fn leader_and_term(status: &Value) -> (String, u64) {
    let rows = status["members"].as_array().unwrap();
    let leader = rows.iter().find(|r| r["leader"] == true).expect("a leader");
    let term = rows.iter().filter_map(|r| r["raft_term"].as_u64()).max().unwrap();
    (leader["name"].as_str().unwrap().to_string(), term)
}

fn credentials(inventory: &Path, dir: &Path) -> (EtcdTls, Vec<EtcdEndpoint>) {
    capstan_ok(inventory, &["etcd", "credentials", "--out", dir.to_str().unwrap()]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let endpoints = read("endpoints")
        .trim()
        .split(',')
        .map(|e| EtcdEndpoint::parse(e).unwrap())
        .collect();
    let tls = EtcdTls {
        ca_cert_pem: read("ca.crt"),
        client_cert_pem: read("client.crt"),
        client_key_pem: read("client.key"),
    };
    (tls, endpoints)
}

async fn client(tls: &EtcdTls, endpoints: &[EtcdEndpoint]) -> EtcdClient {
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(3),
        ..Timeouts::default()
    };
    EtcdClient::connect_with(endpoints, tls, timeouts).await.unwrap()
}

/// Writes `upgrade/NNNNN` keys until stopped; returns the keys etcd acknowledged and how many
/// writes failed (failures are allowed while a member restarts; lost acknowledged writes are not).
fn spawn_writer(
    tls: EtcdTls,
    endpoints: Vec<EtcdEndpoint>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, usize)> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut failed = 0;
        let mut etcd = client(&tls, &endpoints).await;
        let mut n = 0u32;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let key = format!("upgrade/{n:05}");
            match etcd.put(&key, key.as_bytes()).await {
                Ok(()) => acked.push(key),
                Err(_) => {
                    failed += 1;
                    // A fresh connection picks a member that is up.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Ok(fresh) = EtcdClient::connect_with(
                        &endpoints,
                        &tls,
                        Timeouts {
                            connect: Duration::from_secs(2),
                            request: Duration::from_secs(3),
                            ..Timeouts::default()
                        },
                    )
                    .await
                    {
                        etcd = fresh;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (acked, failed)
    })
}

/// 3.5.0 → 3.5.1 under writes; refusals change nothing; a member failing mid-rollout stops it
/// and is rolled back with a patch downgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_etcd_patch_upgrade_refusals_and_rollback() {
    if !require(&[lab(), mirror_etcd(&["3.4.23", "3.5.0", "3.5.1"])]) {
        return;
    }
    let guard = LabGuard::up(UpOptions::new(format!("up{}", std::process::id() % 10000), 3)).expect("lab up");
    let lab = guard.lab().clone();
    let work = tempfile::tempdir().unwrap();
    let inventory = work.path().join("inventory.yaml");
    let hosts: Vec<&str> = lab.machines.iter().map(|m| m.name.as_str()).collect();
    write_inventory(&lab, &inventory, "3.5.0");
    capstan_ok(&inventory, &["apply"]);
    assert_eq!(versions(&status(&inventory)), ["3.5.0"; 3]);

    // Plan: one line per member, followers first, the leader last; nothing changes.
    write_inventory(&lab, &inventory, "3.5.1");
    let before = status(&inventory);
    let (leader, term) = leader_and_term(&before);
    let pids = etcd_pids(&lab, &hosts);
    // Per host (`-v`): the grouped form lists a change once for all hosts.
    let plan = capstan_ok(&inventory, &["plan", "-v"]);
    assert_eq!(
        plan.stdout.matches("etcd 3.5.0 → 3.5.1 (patch upgrade").count(),
        3,
        "{}",
        plan.stdout
    );
    // Changes are listed under host headers: the last host named before the leader's step is it.
    let at = plan
        .stdout
        .find("step 3 of 3, leader: last")
        .unwrap_or_else(|| panic!("no leader step:\n{}", plan.stdout));
    let named_last = hosts.iter().max_by_key(|h| plan.stdout[..at].rfind(*h)).unwrap();
    assert_eq!(*named_last, leader, "{}", plan.stdout);
    assert_eq!(etcd_pids(&lab, &hosts), pids, "plan restarted etcd");

    // Apply under a continuous writer.
    let (tls, endpoints) = credentials(&inventory, &work.path().join("creds"));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(tls.clone(), endpoints.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let apply = capstan_ok(&inventory, &["apply"]);
    let upgrade_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, failed) = writer.await.unwrap();
    eprintln!(
        "patch upgrade of 3 members: {:.1}s; {} writes acknowledged, {failed} failed meanwhile",
        upgrade_time.as_secs_f64(),
        acked.len()
    );
    assert!(acked.len() > 20, "the writer barely wrote: {}", acked.len());
    // Rollout order: the leader is upgraded last.
    let order: Vec<usize> = hosts
        .iter()
        .map(|h| {
            apply
                .stderr
                .find(&format!("{h}: healthy again on etcd 3.5.1"))
                .unwrap_or_else(|| panic!("{h} not upgraded:\n{}", apply.stderr))
        })
        .collect();
    let leader_at = order[hosts.iter().position(|h| *h == leader).unwrap()];
    assert!(
        order.iter().all(|&at| at <= leader_at),
        "leader not last:\n{}",
        apply.stderr
    );
    let after = status(&inventory);
    assert_eq!(versions(&after), ["3.5.1"; 3], "{after:#}");
    let (_, term_after) = leader_and_term(&after);
    assert!(
        term_after <= term + 1,
        "more than one election: term {term} → {term_after}"
    );
    let etcd = client(&tls, &endpoints).await;
    for key in &acked {
        assert_eq!(
            etcd.get(key).await.unwrap().as_deref(),
            Some(key.as_bytes()),
            "acknowledged write {key} lost"
        );
    }
    let again = capstan_ok(&inventory, &["apply", "--output", "json"]);
    assert_eq!(changed(&json(&again)), 0, "{}", again.stdout);

    // Refused before anything changes: a minor downgrade...
    let pids = etcd_pids(&lab, &hosts);
    write_inventory(&lab, &inventory, "3.4.23");
    for command in ["plan", "apply"] {
        let refused = capstan(&inventory, &[command]);
        assert_ne!(refused.code, 0);
        assert!(
            refused
                .stderr
                .contains("3.4.23 would be a downgrade across minor versions (3.5 → 3.4)")
                && refused.stderr.contains("hint:")
                && refused.stderr.contains("capstan restore"),
            "{}",
            refused.stderr
        );
    }
    assert_eq!(etcd_pids(&lab, &hosts), pids, "a refused downgrade restarted etcd");
    assert_eq!(versions(&status(&inventory)), ["3.5.1"; 3]);

    // ...and any version change while a member is down.
    remote(&lab, hosts[2], "systemctl stop etcd");
    write_inventory(&lab, &inventory, "3.5.0");
    let refused = capstan(&inventory, &["apply"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains(&format!("but {} is not healthy", hosts[2])),
        "{}",
        refused.stderr
    );
    assert_eq!(
        etcd_pids(&lab, &hosts[..2]),
        pids[..2],
        "a refused change restarted etcd"
    );
    assert_eq!(
        remote(&lab, hosts[0], "/usr/local/bin/etcd --version | head -n1"),
        "etcd Version: 3.5.1"
    );
    remote(&lab, hosts[2], "systemctl start etcd");

    // A member that fails on the new version stops the rollout; the others stay as they were.
    let leader = leader_and_term(&status(&inventory)).0;
    let first = *hosts.iter().find(|h| **h != leader).unwrap();
    remote(
        &lab,
        first,
        "mkdir -p /etc/systemd/system/etcd.service.d && \
         printf '[Service]\\nExecStartPre=/bin/false\\n' > /etc/systemd/system/etcd.service.d/broken.conf && \
         systemctl daemon-reload",
    );
    let pids = etcd_pids(&lab, &hosts);
    let failed = capstan(&inventory, &["apply"]);
    assert_ne!(failed.code, 0);
    assert!(
        failed.stderr.contains(first)
            && failed.stderr.contains("the rollout stopped at")
            && failed.stderr.contains("set versions.etcd back to 3.5.1"),
        "{}",
        failed.stderr
    );
    for (host, pid) in hosts.iter().zip(&pids) {
        if *host != first {
            assert_eq!(
                &etcd_pids(&lab, &[host])[0],
                pid,
                "{host} was touched after {first} failed"
            );
            assert_eq!(
                remote(&lab, host, "/usr/local/bin/etcd --version | head -n1"),
                "etcd Version: 3.5.1"
            );
        }
    }
    // Repaired, the same inventory (3.5.0) goes on from the stopped member: a patch downgrade.
    remote(
        &lab,
        first,
        "rm /etc/systemd/system/etcd.service.d/broken.conf && systemctl daemon-reload",
    );
    let started = Instant::now();
    capstan_ok(&inventory, &["apply"]);
    eprintln!(
        "patch downgrade 3.5.1 → 3.5.0 of 3 members: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(versions(&status(&inventory)), ["3.5.0"; 3]);
    for key in acked.iter().step_by(10) {
        assert_eq!(etcd.get(key).await.unwrap().as_deref(), Some(key.as_bytes()));
    }
    drop(guard);
}

/// The real minor upgrade: 3.4.23 → 3.5.1; the cluster version moves to 3.5 once all run 3.5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_etcd_minor_upgrade_34_to_35() {
    if !require(&[lab(), mirror_etcd(&["3.4.23", "3.5.0", "3.5.1"])]) {
        return;
    }
    let guard = LabGuard::up(UpOptions::new(format!("um{}", std::process::id() % 10000), 3)).expect("lab up");
    let lab = guard.lab().clone();
    let work = tempfile::tempdir().unwrap();
    let inventory = work.path().join("inventory.yaml");
    let hosts: Vec<&str> = lab.machines.iter().map(|m| m.name.as_str()).collect();
    write_inventory(&lab, &inventory, "3.4.23");
    capstan_ok(&inventory, &["apply"]);
    assert_eq!(cluster_version(&lab, hosts[0]), "3.4");
    let (tls, endpoints) = credentials(&inventory, &work.path().join("creds"));
    client(&tls, &endpoints)
        .await
        .put("minor/before", b"3.4")
        .await
        .unwrap();

    write_inventory(&lab, &inventory, "3.5.1");
    let plan = capstan_ok(&inventory, &["plan"]);
    assert_eq!(
        plan.stdout.matches("etcd 3.4.23 → 3.5.1 (minor upgrade").count(),
        3,
        "{}",
        plan.stdout
    );
    let started = Instant::now();
    let apply = capstan_ok(&inventory, &["apply"]);
    eprintln!(
        "minor upgrade 3.4.23 → 3.5.1 of 3 members: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(apply.stderr.contains("cluster version 3.5"), "{}", apply.stderr);
    assert_eq!(versions(&status(&inventory)), ["3.5.1"; 3]);
    for host in &hosts {
        assert_eq!(cluster_version(&lab, host), "3.5", "{host}");
        assert_eq!(remote(&lab, host, "test -x /usr/local/bin/etcdutl && echo yes"), "yes");
    }
    let etcd = client(&tls, &endpoints).await;
    assert_eq!(etcd.get("minor/before").await.unwrap().as_deref(), Some(&b"3.4"[..]));
    let again = capstan_ok(&inventory, &["apply", "--output", "json"]);
    assert_eq!(changed(&json(&again)), 0, "{}", again.stdout);
    drop(guard);
}
