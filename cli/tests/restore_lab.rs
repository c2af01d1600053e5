//! `capstan restore` and `capstan drill` on real lab machines running real etcd, with backups in a
//! local directory (file://) encrypted with a real age identity (Debian's `age-keygen`).
//! Needs root, the lab prerequisites, the artifact mirror, `age-keygen` and `etcdctl` (Debian's
//! etcd-client, for leases); skips with a message naming what is missing. Test names contain
//! `lab` so nextest's lab group bounds concurrency.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use capstan_lab::{Lab, LabGuard, UpOptions};
use capstan_provisioner::etcd::client::{EtcdClient, EtcdEndpoint, EtcdTls, Timeouts};
use serde_json::Value;

mod support;
use support::{run_capstan, Run};

const MIRROR: &str = "/var/cache/capstan/mirror";
const KEYS: usize = 10_000;

fn missing() -> Option<String> {
    if let Err(e) = capstan_lab::check_prerequisites() {
        return Some(format!("lab prerequisites missing: {e}"));
    }
    if !Path::new(MIRROR).join("SHA256SUMS").is_file() {
        return Some(format!(
            "artifact mirror missing: {MIRROR}/SHA256SUMS (run scripts/setup.sh)"
        ));
    }
    for tool in ["age-keygen", "etcdctl"] {
        if Command::new(tool).arg("--version").output().is_err() && Command::new(tool).arg("version").output().is_err()
        {
            return Some(format!("{tool} not installed (apt-get install age etcd-client)"));
        }
    }
    None
}

fn capstan(inventory: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Run {
    run_capstan(inventory, args, env)
}

fn capstan_ok(inventory: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Run {
    let run = capstan(inventory, args, env);
    assert_eq!(
        run.code, 0,
        "capstan {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    run
}

fn remote(lab: &Lab, host: &str, command: &str) -> String {
    let output = capstan_lab::ssh_command(&lab.name, host, Some(command))
        .unwrap()
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{host}: {command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn write_inventory(lab: &Lab, path: &Path, hosts: usize, version: &str) {
    let mut yaml = format!(
        "cluster:\n  name: {}\nssh:\n  user: root\n  identity_file: {:?}\n  known_hosts: strict\n  known_hosts_file: {:?}\nhosts:\n",
        lab.name,
        lab.key_path.display().to_string(),
        lab.known_hosts_path.display().to_string()
    );
    for m in lab.machines.iter().take(hosts) {
        yaml.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: [etcd]\n",
            m.name, m.ip
        ));
    }
    yaml.push_str(&format!(
        "artifacts:\n  mirror: \"file://{MIRROR}\"\nversions:\n  etcd: \"{version}\"\n"
    ));
    std::fs::write(path, yaml).unwrap();
}

struct Creds {
    dir: PathBuf,
    tls: EtcdTls,
    endpoints: Vec<EtcdEndpoint>,
}

fn credentials(inventory: &Path, dir: &Path) -> Creds {
    capstan_ok(
        Some(inventory),
        &["etcd", "credentials", "--out", dir.to_str().unwrap()],
        &[],
    );
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    Creds {
        dir: dir.to_path_buf(),
        tls: EtcdTls {
            ca_cert_pem: read("ca.crt"),
            client_cert_pem: read("client.crt"),
            client_key_pem: read("client.key"),
        },
        endpoints: read("endpoints")
            .trim()
            .split(',')
            .map(|e| EtcdEndpoint::parse(e).unwrap())
            .collect(),
    }
}

async fn client(tls: &EtcdTls, endpoints: &[EtcdEndpoint]) -> EtcdClient {
    let timeouts = Timeouts {
        connect: Duration::from_secs(3),
        request: Duration::from_secs(10),
        ..Timeouts::default()
    };
    EtcdClient::connect_with(endpoints, tls, timeouts).await.unwrap()
}

fn key(i: usize) -> String {
    format!("restore-test/k{i:05}")
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(i % 97)).into_bytes()
}

async fn write_keys(etcd: &EtcdClient) {
    let started = Instant::now();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(200) {
        let mut puts = tokio::task::JoinSet::new();
        for &i in chunk {
            let etcd = etcd.clone();
            puts.spawn(async move { etcd.put(&key(i), &value(i)).await });
        }
        while let Some(result) = puts.join_next().await {
            result.unwrap().unwrap();
        }
    }
    eprintln!("wrote {KEYS} keys in {:.1}s", started.elapsed().as_secs_f64());
}

/// Every key read back through `etcd` must equal what was written.
async fn assert_keys(etcd: &EtcdClient) {
    let mut wrong = Vec::new();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(200) {
        let mut gets = tokio::task::JoinSet::new();
        for &i in chunk {
            let etcd = etcd.clone();
            gets.spawn(async move { (i, etcd.get(&key(i)).await.unwrap()) });
        }
        while let Some(result) = gets.join_next().await {
            let (i, got) = result.unwrap();
            if got.as_deref() != Some(value(i).as_slice()) {
                wrong.push(i);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {KEYS} keys differ, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

fn etcdctl(creds: &Creds, endpoints: &str, args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--dial-timeout", "5s", "--command-timeout", "10s", "--cacert"])
        .arg(creds.dir.join("ca.crt"))
        .arg("--cert")
        .arg(creds.dir.join("client.crt"))
        .arg("--key")
        .arg(creds.dir.join("client.key"))
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An age identity made by Debian's age-keygen; returns (identity file, recipient).
fn age_identity(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("backup-identity.txt");
    let out = Command::new("age-keygen").arg("-o").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("age-keygen").arg("-y").arg(&path).output().unwrap();
    (path, String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id() % 10000)
}

/// A 3-member cluster with 10,000 keys and leased keys, backed up; then: restore onto the live
/// cluster is refused; the cluster is "lost" (machines stopped) and restored into three new
/// machines with other addresses; every key is identical and an old admin certificate works;
/// re-running the restore converges; a drill on the backup passes and reports; a drill on a
/// corrupted copy fails naming the broken object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_restore_into_new_machines_and_drill() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_identity(work.path());
    let backups = work.path().join("backups");
    let target = format!("file://{}", backups.display());

    // The original cluster.
    let source = LabGuard::up(UpOptions::new(unique("rsa"), 3)).expect("lab up");
    let source_lab = source.lab().clone();
    let source_inventory = work.path().join("source.yaml");
    write_inventory(&source_lab, &source_inventory, 3, "3.5.1");
    capstan_ok(Some(&source_inventory), &["apply"], &[]);
    let old = credentials(&source_inventory, &work.path().join("old-creds"));
    let etcd = client(&old.tls, &old.endpoints).await;
    write_keys(&etcd).await;
    let endpoints_text = std::fs::read_to_string(old.dir.join("endpoints")).unwrap();
    let granted = etcdctl(&old, endpoints_text.trim(), &["lease", "grant", "3600"]);
    let lease = granted.split_whitespace().nth(1).expect("lease id").to_string();
    for i in 0..3 {
        etcdctl(
            &old,
            endpoints_text.trim(),
            &["put", &format!("--lease={lease}"), &format!("leased/{i}"), "held"],
        );
    }
    capstan_ok(
        Some(&source_inventory),
        &["backup", "create", "--target", &target, "-r", &recipient],
        &[],
    );

    // (c) Restoring onto the live cluster without --force is refused and changes nothing.
    let pids_before: Vec<String> = source_lab
        .machines
        .iter()
        .map(|m| remote(&source_lab, &m.name, "systemctl show -p MainPID --value etcd"))
        .collect();
    let refused = capstan(
        Some(&source_inventory),
        &[
            "restore",
            "--from",
            "latest",
            "--identity",
            identity.to_str().unwrap(),
            "--target",
            &target,
        ],
        &[],
    );
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(refused.stderr.contains("refusing to restore"), "{}", refused.stderr);
    assert!(refused.stderr.contains("runs etcd with data"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--force"),
        "the hint names --force: {}",
        refused.stderr
    );
    let pids_after: Vec<String> = source_lab
        .machines
        .iter()
        .map(|m| remote(&source_lab, &m.name, "systemctl show -p MainPID --value etcd"))
        .collect();
    assert_eq!(pids_before, pids_after, "no member was restarted");
    assert_eq!(
        remote(
            &source_lab,
            &source_lab.machines[0].name,
            "test -e /var/lib/etcd.capstan-restore && echo marked || echo clean"
        ),
        "clean"
    );
    assert_eq!(etcd.get(&key(42)).await.unwrap().as_deref(), Some(value(42).as_slice()));
    drop(etcd);

    // The disaster: every original machine goes away.
    for m in &source_lab.machines {
        capstan_lab::stop(&source_lab.name, &m.name).unwrap();
    }

    // (a) Restore into three new machines with other addresses.
    let fresh = LabGuard::up(UpOptions::new(unique("rsb"), 3)).expect("lab up");
    let fresh_lab = fresh.lab().clone();
    let fresh_inventory = work.path().join("fresh.yaml");
    write_inventory(&fresh_lab, &fresh_inventory, 3, "3.5.1");
    let old_ips: Vec<&str> = source_lab.machines.iter().map(|m| m.ip.as_str()).collect();
    assert!(fresh_lab.machines.iter().all(|m| !old_ips.contains(&m.ip.as_str())));
    let restore_args = [
        "restore",
        "--from",
        "latest",
        "--identity",
        identity.to_str().unwrap(),
        "--target",
        &target,
        "--output",
        "json",
    ];
    let started = Instant::now();
    let restored = capstan_ok(Some(&fresh_inventory), &restore_args, &[]);
    eprintln!(
        "RESTORE (3 members, {KEYS} keys) took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let report: Value = serde_json::from_str(&restored.stdout).unwrap();
    let outcome = &report["outcome"];
    assert_eq!(outcome["verification"]["ok"], true, "{report:#}");
    assert_eq!(outcome["tool"], "etcdutl");
    let hashes: Vec<&Value> = outcome["verification"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["hash_kv"])
        .collect();
    assert!(hashes.iter().all(|h| *h == hashes[0] && !h.is_null()), "{hashes:?}");
    let counts: Vec<i64> = outcome["verification"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key_count"].as_i64().unwrap())
        .collect();
    assert!(counts.iter().all(|c| *c == (KEYS + 3) as i64), "{counts:?}");
    eprintln!("restore steps: {}", outcome["steps"]);

    // Old admin certificate (issued before the disaster), new addresses.
    let new_endpoints: Vec<EtcdEndpoint> = fresh_lab
        .machines
        .iter()
        .map(|m| EtcdEndpoint::https(&m.ip, 2379))
        .collect();
    let etcd = client(&old.tls, &new_endpoints).await;
    assert_keys(&etcd).await;
    for endpoint in &new_endpoints {
        let pinned = client(&old.tls, std::slice::from_ref(endpoint)).await;
        assert_eq!(
            pinned.get(&key(KEYS - 1)).await.unwrap().as_deref(),
            Some(value(KEYS - 1).as_slice())
        );
    }
    let joined: Vec<&str> = new_endpoints.iter().map(EtcdEndpoint::as_str).collect();
    let leased = etcdctl(&old, &joined.join(","), &["get", "leased/", "--prefix", "--keys-only"]);
    assert_eq!(leased.lines().filter(|l| !l.is_empty()).count(), 3, "{leased}");
    let members = etcd.member_list().await.unwrap();
    let names: BTreeMap<String, Vec<String>> = members.iter().map(|m| (m.name.clone(), m.peer_urls.clone())).collect();
    for m in &fresh_lab.machines {
        assert_eq!(
            names.get(&m.name),
            Some(&vec![format!("https://{}:2380", m.ip)]),
            "{names:?}"
        );
    }

    // Re-running converges: nothing restored again, nothing restarted.
    let pids = |lab: &Lab| -> Vec<String> {
        lab.machines
            .iter()
            .map(|m| remote(lab, &m.name, "systemctl show -p MainPID --value etcd"))
            .collect()
    };
    let before = pids(&fresh_lab);
    let again = capstan_ok(Some(&fresh_inventory), &restore_args, &[]);
    let again: Value = serde_json::from_str(&again.stdout).unwrap();
    for member in again["outcome"]["members"].as_array().unwrap() {
        assert_eq!(member["action"], "already restored", "{again:#}");
    }
    assert_eq!(pids(&fresh_lab), before, "a converged restore restarts nothing");
    drop(etcd);
    drop(fresh);
    drop(source);

    // (b) A drill on the latest backup passes and writes its report and metrics.
    let report_base = work.path().join("drill");
    let textfile = work.path().join("textfile");
    let textfile_env = textfile.to_str().unwrap().to_string();
    let started = Instant::now();
    let drill = capstan(
        None,
        &[
            "drill",
            "--from",
            "latest",
            "--target",
            &target,
            "--identity",
            identity.to_str().unwrap(),
            "--report",
            report_base.to_str().unwrap(),
            "--expect-key",
            &key(7),
            "--expect-key",
            "leased/*",
        ],
        &[("CAPSTAN_TEXTFILE_DIR", &textfile_env)],
    );
    eprintln!("DRILL total {:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(
        drill.code, 0,
        "drill failed\nstdout:\n{}\nstderr:\n{}",
        drill.stdout, drill.stderr
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(work.path().join("drill.json")).unwrap()).unwrap();
    assert_eq!(json["success"], true, "{json:#}");
    assert!(json["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(json["rpo_seconds"].as_f64().unwrap() >= 0.0);
    assert!(json["restored_revision"].as_i64().unwrap() >= json["backup_revision"].as_i64().unwrap());
    eprintln!(
        "DRILL RTO {:.1}s, total {:.1}s",
        json["rto_seconds"].as_f64().unwrap(),
        json["total_seconds"].as_f64().unwrap()
    );
    let checks = json["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == format!("key {} exists", key(7)) && c["ok"] == true),
        "{checks:?}"
    );
    let md = std::fs::read_to_string(work.path().join("drill.md")).unwrap();
    assert!(md.starts_with("# capstan DR drill: PASSED"), "{md}");
    let metrics = std::fs::read_to_string(textfile.join("capstan_drill.prom")).unwrap();
    assert!(metrics.contains("capstan_drill_success{cluster=\""), "{metrics}");
    assert!(metrics.contains("} 1\n"), "{metrics}");
    assert!(metrics.contains("capstan_drill_rto_seconds"), "{metrics}");
    let drill_lab = json["target"].as_str().unwrap().trim_start_matches("lab ").to_string();
    assert!(
        capstan_lab::get(&drill_lab).is_err(),
        "the drill lab {drill_lab} was torn down"
    );

    // A drill on a corrupted copy fails and names why (and brings up no lab).
    let corrupt_dir = work.path().join("corrupt");
    let id = json["backup_id"].as_str().unwrap();
    std::fs::create_dir_all(corrupt_dir.join(id)).unwrap();
    for entry in std::fs::read_dir(backups.join(id)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), corrupt_dir.join(id).join(entry.file_name())).unwrap();
    }
    let snapshot = corrupt_dir.join(id).join("snapshot.db.age");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&snapshot, bytes).unwrap();
    let corrupt_target = format!("file://{}", corrupt_dir.display());
    let bad = capstan(
        None,
        &[
            "drill",
            "--from",
            id,
            "--target",
            &corrupt_target,
            "--identity",
            identity.to_str().unwrap(),
            "--report",
            work.path().join("bad").to_str().unwrap(),
        ],
        &[("CAPSTAN_TEXTFILE_DIR", &textfile_env)],
    );
    assert_ne!(bad.code, 0, "{}", bad.stdout);
    assert!(
        bad.stderr.contains("snapshot.db.age"),
        "names the object: {}",
        bad.stderr
    );
    assert!(bad.stderr.contains("stored sha256"), "names the check: {}", bad.stderr);
    let bad_json: Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("bad.json")).unwrap()).unwrap();
    assert_eq!(bad_json["success"], false);
    let metrics = std::fs::read_to_string(textfile.join("capstan_drill.prom")).unwrap();
    assert!(
        metrics.contains("capstan_drill_success{cluster=\"") && metrics.contains("} 0\n"),
        "{metrics}"
    );
}

/// (d) A 3-member backup restored into a 5-member inventory: all five members hold the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_restore_three_member_backup_into_five() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_identity(work.path());
    let target = format!("file://{}", work.path().join("backups").display());
    let source = LabGuard::up(UpOptions::new(unique("r5a"), 3)).expect("lab up");
    let source_inventory = work.path().join("source.yaml");
    write_inventory(source.lab(), &source_inventory, 3, "3.5.1");
    capstan_ok(Some(&source_inventory), &["apply"], &[]);
    let old = credentials(&source_inventory, &work.path().join("old-creds"));
    let etcd = client(&old.tls, &old.endpoints).await;
    for i in 0..100 {
        etcd.put(&key(i), &value(i)).await.unwrap();
    }
    capstan_ok(
        Some(&source_inventory),
        &["backup", "create", "--target", &target, "-r", &recipient],
        &[],
    );
    drop(etcd);
    drop(source);

    let fresh = LabGuard::up(UpOptions::new(unique("r5b"), 5)).expect("lab up");
    let fresh_inventory = work.path().join("fresh.yaml");
    write_inventory(fresh.lab(), &fresh_inventory, 5, "3.5.1");
    let run = capstan_ok(
        Some(&fresh_inventory),
        &[
            "restore",
            "--from",
            "latest",
            "--identity",
            identity.to_str().unwrap(),
            "--target",
            &target,
            "--output",
            "json",
        ],
        &[],
    );
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let members = report["outcome"]["verification"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 5, "{report:#}");
    assert_eq!(report["outcome"]["verification"]["ok"], true, "{report:#}");
    for endpoint in fresh.lab().machines.iter().map(|m| EtcdEndpoint::https(&m.ip, 2379)) {
        let pinned = client(&old.tls, std::slice::from_ref(&endpoint)).await;
        assert_eq!(
            pinned.get(&key(99)).await.unwrap().as_deref(),
            Some(value(99).as_slice()),
            "{endpoint}"
        );
        assert_eq!(pinned.member_list().await.unwrap().len(), 5);
    }
}
