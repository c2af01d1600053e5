//! `capstan restore` and `capstan drill` on real lab machines running real etcd, with backups in a
//! local directory (file://) encrypted with a real age identity (Debian's `age-keygen`).
//! Needs root, the lab prerequisites, the artifact mirror, `age-keygen` and `etcdctl` (Debian's
//! etcd-client, for leases); skips with a message naming what is missing. Test names contain
//! `lab` so nextest's lab group bounds concurrency.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use capstan_etcd::client::{EtcdClient, EtcdEndpoint, EtcdTls, Timeouts};
use capstan_lab::{Lab, LabGuard, UpOptions};
use serde_json::Value;

mod support;
use support::{
    lab, lab_inventory, mirror, mirror_and_version, mirror_etcd, remote, require, run_capstan, tool, Need, Run, MIRROR,
};

const KEYS: usize = 10_000;

/// What every test here needs.
fn needs() -> [Need; 4] {
    [
        lab(),
        mirror(),
        tool("age-keygen", "age"),
        tool("etcdctl", "etcd-client"),
    ]
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

fn write_inventory(lab: &Lab, path: &Path, hosts: usize, version: &str) {
    write_inventory_of(lab, path, 0..hosts, version);
}

/// An inventory of the lab's machines `machines` (so one lab can hold an old and a new cluster).
fn write_inventory_of(lab: &Lab, path: &Path, machines: std::ops::Range<usize>, version: &str) {
    let yaml = lab_inventory(lab, &lab.name, &lab.machines[machines], &mirror_and_version(version));
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
    if !require(&needs()) {
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

/// (d) A 3-member backup restored into a 5-member inventory, the restore killed twice on the
/// way: re-running converges and all five members hold the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_restore_three_member_backup_into_five() {
    if !require(&needs()) {
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
    // Interrupted twice (SIGKILL, nothing cleaned up): in the middle of installing etcd, and
    // when the data dirs are restored but etcd is not started yet. Re-running converges.
    let restore_args = [
        "restore",
        "--from",
        "latest",
        "--identity",
        identity.to_str().unwrap(),
        "--target",
        &target,
    ];
    // Interrupted (Ctrl-C) once, killed outright once: the decrypted backup an interrupted run
    // holds is removed at once; a killed run's by the next restore.
    let mut killed_pids = Vec::new();
    for (step, delay, signal) in [
        (
            "installing etcd and configuring members",
            Duration::from_millis(1500),
            libc::SIGINT,
        ),
        ("starting etcd on every member", Duration::ZERO, libc::SIGKILL),
    ] {
        let (reached, pid) = killed_at(&fresh_inventory, &restore_args, step, delay, signal);
        assert!(reached, "the restore never reached `{step}`");
        let left = private_dirs_of(pid);
        if signal == libc::SIGINT {
            assert!(
                left.is_empty(),
                "an interrupted restore left its decrypted backup: {left:?}"
            );
        } else {
            assert!(!left.is_empty(), "a killed restore cannot clean up");
            killed_pids.push(pid);
        }
    }
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
    for pid in killed_pids {
        let left = private_dirs_of(pid);
        assert!(
            left.is_empty(),
            "the next restore removes a killed one's decrypted backup: {left:?}"
        );
    }
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

/// Runs `capstan -i inventory args...` and kills it (SIGKILL) `delay` after its progress on
/// stderr first shows `step`. Whether the step was reached.
/// The restore's private directories (`$TMPDIR/capstan-restore-<pid>-*`) of process `pid`.
fn private_dirs_of(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("capstan-restore-{pid}-")))
        })
        .collect()
}

/// Runs capstan until its stderr shows `step`, waits `delay`, sends it `signal`; returns whether
/// the step was reached, and the process id.
fn killed_at(inventory: &Path, args: &[&str], step: &str, delay: Duration, signal: i32) -> (bool, u32) {
    use std::io::BufRead;
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .arg("-i")
        .arg(inventory)
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run capstan");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut reached = false;
    // Read to the end: the child may still write after the signal (what it removed).
    for line in std::io::BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if !reached && line.contains(step) {
            reached = true;
            std::thread::sleep(delay);
            // SAFETY: signalling our own child, which has not been waited for.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }
    let status = child.wait().expect("wait for capstan");
    if reached && signal == libc::SIGINT {
        assert_eq!(status.code(), Some(130), "an interrupted restore exits 130: {status:?}");
    } else if reached {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(signal), "{status:?}");
    }
    // A killed run's lock would expire by itself within its lease time; the operator who killed
    // it removes it at once.
    capstan_ok(Some(inventory), &["unlock", "--force"], &[]);
    eprintln!(
        "capstan {} killed at `{step}` (+{delay:?}) after {:.1}s",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    (reached, child.id())
}

/// The revision in the manifest of the newest backup under a file:// target directory.
fn newest_backup_revision(backups: &Path) -> i64 {
    let mut ids: Vec<PathBuf> = std::fs::read_dir(backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    ids.sort();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(ids.last().expect("a backup").join("manifest.json")).unwrap())
            .unwrap();
    manifest["revision"].as_i64().unwrap()
}

/// Reads `key` through `endpoints`, retrying while the members start (up to 60 s).
async fn get_when_up(tls: &EtcdTls, endpoints: &[EtcdEndpoint], key: &str) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(5),
        ..Timeouts::default()
    };
    loop {
        let last = match EtcdClient::connect_with(endpoints, tls, timeouts).await {
            Ok(etcd) => match etcd.get(key).await {
                Ok(value) => return value,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < deadline, "etcd did not answer within 60s: {last}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `restore --force` onto a live cluster holding newer data: a safety snapshot of every member
/// (valid, newer than the backup, holding the newer keys) and the previous data dir, config and
/// PKI are kept and named in the output; the backup's keys come back and the newer ones are gone.
/// `--bump-revision` with etcd 3.5.1 is noted as unsupported (text and JSON) and not applied.
/// Then the documented rollback brings the newer keys back, `apply` accepts the rolled-back
/// cluster, and a second `--force` restore (text output) names what it kept in its table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_restore_force_onto_live_cluster_and_roll_back() {
    if !require(&needs()) {
        return;
    }
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_identity(work.path());
    let backups = work.path().join("backups");
    let target = format!("file://{}", backups.display());
    let guard = LabGuard::up(UpOptions::new(unique("rfo"), 3)).expect("lab up");
    let lab = guard.lab().clone();
    let inventory = work.path().join("live.yaml");
    write_inventory(&lab, &inventory, 3, "3.5.1");
    capstan_ok(Some(&inventory), &["apply"], &[]);
    let creds = credentials(&inventory, &work.path().join("creds"));
    let etcd = client(&creds.tls, &creds.endpoints).await;
    let key_a = |i: usize| format!("force/a{i:03}");
    let key_b = |i: usize| format!("force/b{i:03}");
    for i in 0..50 {
        etcd.put(&key_a(i), &value(i)).await.unwrap();
    }
    capstan_ok(
        Some(&inventory),
        &["backup", "create", "--target", &target, "-r", &recipient],
        &[],
    );
    let backup_revision = newest_backup_revision(&backups);
    for i in 0..20 {
        etcd.put(&key_b(i), &value(i)).await.unwrap();
    }
    drop(etcd);

    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--from",
            "latest",
            "--identity",
            identity.to_str().unwrap(),
            "--target",
            &target,
            "--force",
        ];
        args.extend_from_slice(extra);
        capstan_ok(Some(&inventory), &args, &[])
    };
    let forced = restore(&["--bump-revision", "1000", "--mark-compacted", "--output", "json"]);
    let report: Value = serde_json::from_str(&forced.stdout).unwrap();
    let outcome = &report["outcome"];
    assert_eq!(outcome["verification"]["ok"], true, "{report:#}");
    eprintln!("--force restore steps: {}", outcome["steps"]);
    let notes: Vec<&str> = outcome["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("--bump-revision 1000") && n.contains("not supported") && n.contains("3.5.10")),
        "{notes:?}"
    );
    assert!(forced.stderr.contains("not supported"), "{}", forced.stderr);
    for member in outcome["verification"]["members"].as_array().unwrap() {
        let revision = member["revision"].as_i64().unwrap();
        assert!(
            revision >= backup_revision && revision < backup_revision + 1000,
            "not bumped: revision {revision}, backup {backup_revision}"
        );
    }

    // What was kept, per host: named in the output, and really there.
    let mut kept_paths = BTreeMap::new();
    for member in outcome["members"].as_array().unwrap() {
        let host = member["host"].as_str().unwrap();
        let kept = &member["before_restore"];
        let snapshot = kept["safety_snapshot"].as_str().expect("a safety snapshot").to_string();
        let data_dir = kept["data_dir"].as_str().unwrap().to_string();
        assert!(
            snapshot.starts_with(&format!("/var/lib/capstan-safety/{host}-")),
            "{snapshot}"
        );
        assert!(data_dir.starts_with("/var/lib/etcd.before-restore-"), "{data_dir}");
        assert!(
            forced.stderr.contains(&snapshot),
            "stderr names {snapshot}:\n{}",
            forced.stderr
        );
        assert!(
            forced.stderr.contains(&data_dir),
            "stderr names {data_dir}:\n{}",
            forced.stderr
        );
        assert_eq!(remote(&lab, host, &format!("stat -c %a {snapshot}")), "600");
        let status: Value = serde_json::from_str(&remote(
            &lab,
            host,
            &format!("/usr/local/bin/etcdutl snapshot status -w json {snapshot}"),
        ))
        .unwrap();
        assert!(
            status["revision"].as_i64().unwrap() > backup_revision,
            "{host}: safety snapshot {status} not newer than the backup (revision {backup_revision})"
        );
        // The newer keys' bytes are in the snapshot's bbolt file (etcd stores each key in its value).
        let hits = remote(&lab, host, &format!("grep -c -a -F {} {snapshot} || true", key_b(7)));
        assert_ne!(hits, "0", "{host}: {} not in the safety snapshot", key_b(7));
        assert_eq!(
            remote(&lab, host, &format!("test -d {data_dir}/member && echo kept")),
            "kept"
        );
        kept_paths.insert(
            host.to_string(),
            (
                data_dir,
                kept["config"].as_str().expect("config kept").to_string(),
                kept["pki_dir"].as_str().expect("pki kept").to_string(),
            ),
        );
    }
    let etcd = client(&creds.tls, &creds.endpoints).await;
    assert_eq!(
        etcd.get(&key_a(49)).await.unwrap().as_deref(),
        Some(value(49).as_slice())
    );
    for i in 0..20 {
        assert_eq!(
            etcd.get(&key_b(i)).await.unwrap(),
            None,
            "{} survived the restore",
            key_b(i)
        );
    }
    drop(etcd);

    // Roll back as docs/restore.md says: stop every member, put the kept state back, start all.
    for m in &lab.machines {
        remote(&lab, &m.name, "systemctl stop etcd");
    }
    for (host, (data_dir, config, pki)) in &kept_paths {
        remote(
            &lab,
            host,
            &format!(
                "set -e; rm -rf /var/lib/etcd; mv {data_dir} /var/lib/etcd; mv {config} /etc/etcd/etcd.conf.yml; \
                 rm -rf /etc/etcd/pki; mv {pki} /etc/etcd/pki; rm -f /var/lib/etcd.capstan-restore"
            ),
        );
    }
    for m in &lab.machines {
        remote(&lab, &m.name, "systemctl start --no-block etcd");
    }
    assert_eq!(
        get_when_up(&creds.tls, &creds.endpoints, &key_b(19)).await.as_deref(),
        Some(value(19).as_slice()),
        "the rollback brings the newer keys back"
    );
    // The previous data still holds the restore's own lock key (taken before it was moved aside).
    let unlocked = capstan_ok(Some(&inventory), &["unlock", "--force"], &[]);
    assert!(
        unlocked.stdout.contains("restore") || unlocked.stderr.contains("restore"),
        "{}{}",
        unlocked.stdout,
        unlocked.stderr
    );
    capstan_ok(Some(&inventory), &["apply"], &[]);
    let etcd = client(&creds.tls, &creds.endpoints).await;
    assert_eq!(etcd.get(&key_a(0)).await.unwrap().as_deref(), Some(value(0).as_slice()));
    assert_eq!(etcd.member_list().await.unwrap().len(), 3);
    drop(etcd);

    // A second --force restore over the rolled-back cluster; the text output's table names what it kept.
    let again = restore(&[]);
    assert!(again.stdout.contains("PREVIOUS DATA DIR"), "{}", again.stdout);
    for m in &lab.machines {
        assert!(
            again.stdout.contains(&format!("/var/lib/capstan-safety/{}-", m.name)),
            "{}",
            again.stdout
        );
    }
    assert!(
        again.stdout.contains("/var/lib/etcd.before-restore-"),
        "{}",
        again.stdout
    );
    let etcd = client(&creds.tls, &creds.endpoints).await;
    assert_eq!(etcd.get(&key_b(0)).await.unwrap(), None);
    assert_eq!(etcd.get(&key_a(0)).await.unwrap().as_deref(), Some(value(0).as_slice()));
    eprintln!("force + rollback test took {:.1}s", started.elapsed().as_secs_f64());
}

/// One lab of six machines holds both clusters: the old one on the first three, the fresh one on
/// the last three (one boot instead of two). Returns the lab and the two inventories.
fn six_machine_lab(work: &Path, prefix: &str, version: &str) -> (LabGuard, PathBuf, PathBuf) {
    let guard = LabGuard::up(UpOptions::new(unique(prefix), 6)).expect("lab up");
    let old = work.join("old.yaml");
    let fresh = work.join("fresh.yaml");
    write_inventory_of(guard.lab(), &old, 0..3, version);
    write_inventory_of(guard.lab(), &fresh, 3..6, version);
    (guard, old, fresh)
}

/// The etcd versions in the artifact mirror, from its SHA256SUMS.
fn mirror_etcd_versions() -> Vec<(u32, u32, u32)> {
    let sums = std::fs::read_to_string(Path::new(MIRROR).join("SHA256SUMS")).unwrap_or_default();
    let mut versions: Vec<(u32, u32, u32)> = sums
        .lines()
        .filter_map(|l| l.split("etcd-io/etcd/releases/download/v").nth(1))
        .filter_map(|rest| rest.split('/').next())
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??, parts.next()??))
        })
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

/// A six-machine lab: etcd `version` on machines 1–3 holding `keys` known keys, backed up
/// (age-encrypted, file://); machines 4–6 are the fresh restore target.
struct BackedUp {
    guard: LabGuard,
    fresh_inventory: PathBuf,
    identity: PathBuf,
    target: String,
    old: Creds,
}

async fn backed_up_six(work: &Path, prefix: &str, version: &str, keys: usize) -> BackedUp {
    let (identity, recipient) = age_identity(work);
    let target = format!("file://{}", work.join("backups").display());
    let (guard, old_inventory, fresh_inventory) = six_machine_lab(work, prefix, version);
    capstan_ok(Some(&old_inventory), &["apply"], &[]);
    let old = credentials(&old_inventory, &work.join("old-creds"));
    let etcd = client(&old.tls, &old.endpoints).await;
    for i in 0..keys {
        etcd.put(&key(i), &value(i)).await.unwrap();
    }
    drop(etcd);
    capstan_ok(
        Some(&old_inventory),
        &["backup", "create", "--target", &target, "-r", &recipient],
        &[],
    );
    BackedUp {
        guard,
        fresh_inventory,
        identity,
        target,
        old,
    }
}

/// etcd 3.4.23 (no etcdutl: `etcdctl snapshot restore`): a cluster with keys, a backup, a restore
/// into three other machines on 3.4.23; every key identical on every member, members on the new
/// addresses running 3.4.23, verification passed; `--bump-revision` noted as unsupported by etcdctl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_restore_etcd_3_4_with_etcdctl() {
    if !require(&needs()) {
        return;
    }
    if !require(&[mirror_etcd(&["3.4.23"])]) {
        return;
    }
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let BackedUp {
        guard,
        fresh_inventory,
        identity,
        target,
        old,
    } = backed_up_six(work.path(), "r34", "3.4.23", 300).await;
    let lab = guard.lab().clone();
    for m in &lab.machines[0..3] {
        capstan_lab::stop(&lab.name, &m.name).unwrap();
    }

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
            "--bump-revision",
            "1000",
            "--mark-compacted",
            "--output",
            "json",
        ],
        &[],
    );
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let outcome = &report["outcome"];
    assert_eq!(outcome["verification"]["ok"], true, "{report:#}");
    assert_eq!(outcome["tool"], "etcdctl", "{report:#}");
    let notes = outcome["notes"].to_string();
    assert!(notes.contains("not supported by etcdctl of etcd 3.4.23"), "{notes}");
    let counts: Vec<i64> = outcome["verification"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key_count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, vec![300; 3], "{report:#}");

    let fresh_endpoints: Vec<EtcdEndpoint> = lab.machines[3..6]
        .iter()
        .map(|m| EtcdEndpoint::https(&m.ip, 2379))
        .collect();
    for (m, endpoint) in lab.machines[3..6].iter().zip(&fresh_endpoints) {
        let pinned = client(&old.tls, std::slice::from_ref(endpoint)).await;
        let mut wrong = 0;
        for i in 0..300 {
            if pinned.get(&key(i)).await.unwrap().as_deref() != Some(value(i).as_slice()) {
                wrong += 1;
            }
        }
        assert_eq!(wrong, 0, "{endpoint}: {wrong} of 300 keys differ");
        let members = pinned.member_list().await.unwrap();
        assert_eq!(members.len(), 3);
        assert!(
            members
                .iter()
                .any(|mm| mm.name == m.name && mm.peer_urls == vec![format!("https://{}:2380", m.ip)]),
            "{members:?}"
        );
        let version = remote(&lab, &m.name, "/usr/local/bin/etcd --version | head -n1");
        assert!(version.contains("3.4.23"), "{}: {version}", m.name);
        assert_eq!(
            remote(&lab, &m.name, "test -e /usr/local/bin/etcdutl && echo yes || echo no"),
            "no",
            "3.4 has no etcdutl"
        );
    }
    eprintln!("etcd 3.4 restore test took {:.1}s", started.elapsed().as_secs_f64());
}

/// The supported path of `--bump-revision N --mark-compacted` (etcd 3.5.10 or newer): the restored
/// revision is at least the backup's + N and the revisions before it read as compacted. Runs only
/// when the artifact mirror has such a release; says which is missing otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_restore_bump_revision_supported() {
    if !require(&needs()) {
        return;
    }
    let versions = mirror_etcd_versions();
    let Some(&(major, minor, patch)) = versions.iter().rev().find(|v| **v >= (3, 5, 10)) else {
        let has: Vec<String> = versions.iter().map(|(a, b, c)| format!("{a}.{b}.{c}")).collect();
        require(&[Err(format!(
            "needs etcd 3.5.10 or newer (the first release whose `etcdutl snapshot restore` has \
             --bump-revision/--mark-compacted) in the artifact mirror {MIRROR}; it has: {}",
            has.join(", ")
        ))]);
        return;
    };
    let version = format!("{major}.{minor}.{patch}");
    let work = tempfile::tempdir().unwrap();
    let BackedUp {
        guard,
        fresh_inventory,
        identity,
        target,
        old,
    } = backed_up_six(work.path(), "rbr", &version, 100).await;
    let lab = guard.lab().clone();
    let backup_revision = newest_backup_revision(&work.path().join("backups"));
    const BUMP: i64 = 1_000_000;
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
            "--bump-revision",
            &BUMP.to_string(),
            "--mark-compacted",
            "--output",
            "json",
        ],
        &[],
    );
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let outcome = &report["outcome"];
    assert_eq!(outcome["verification"]["ok"], true, "{report:#}");
    assert!(!outcome["notes"].to_string().contains("not supported"), "{report:#}");
    for member in outcome["verification"]["members"].as_array().unwrap() {
        assert!(
            member["revision"].as_i64().unwrap() >= backup_revision + BUMP,
            "{report:#}"
        );
    }
    let fresh: Vec<&str> = lab.machines[3..6].iter().map(|m| m.ip.as_str()).collect();
    let endpoints = fresh
        .iter()
        .map(|ip| format!("https://{ip}:2379"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        etcdctl(&old, &endpoints, &["get", &key(42), "--print-value-only"]),
        String::from_utf8(value(42)).unwrap()
    );
    let compacted = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--cacert")
        .arg(old.dir.join("ca.crt"))
        .arg("--cert")
        .arg(old.dir.join("client.crt"))
        .arg("--key")
        .arg(old.dir.join("client.key"))
        .args([
            "--endpoints",
            &endpoints,
            "get",
            &key(42),
            "--rev",
            &backup_revision.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&compacted.stderr).contains("compacted"),
        "the pre-restore revisions read as compacted: {}",
        String::from_utf8_lossy(&compacted.stderr)
    );
}

/// What the restore may touch on a member, listed with sizes, mtimes, modes and owners; plus
/// which entries /var/lib and /etc hold, and whether etcd is active.
fn member_state(lab: &Lab, host: &str) -> String {
    remote(
        lab,
        host,
        "{ find /etc/etcd /var/lib/etcd /var/lib/etcd.capstan-restore /var/lib/etcd.restoring /var/lib/capstan-restore \
         /var/lib/capstan-safety /usr/local/bin /etc/systemd/system -printf '%p %y %s %T@ %m %u:%g\\n' 2>/dev/null; \
         find /var/lib /etc -maxdepth 1 -printf '%p\\n'; } | sort; \
         echo \"etcd: $(systemctl is-active etcd 2>/dev/null; true)\"",
    )
}

/// `capstan restore --dry-run` into fresh machines goes through the restore's phases, prints the
/// changes a restore makes there (the CA, the snapshot upload, the `etcdutl snapshot restore`, etcd
/// started) and what it would run after them, exits 0 and changes nothing on the members: their
/// files, units and binaries are identical before and after and etcd is not running. The real
/// restore right after it then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_restore_dry_run_changes_nothing() {
    if !require(&needs()) {
        return;
    }
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let BackedUp {
        guard,
        fresh_inventory,
        identity,
        target,
        ..
    } = backed_up_six(work.path(), "rdr", "3.5.1", 50).await;
    let lab = guard.lab().clone();
    for m in &lab.machines[0..3] {
        capstan_lab::stop(&lab.name, &m.name).unwrap();
    }
    let fresh: Vec<&str> = lab.machines[3..6].iter().map(|m| m.name.as_str()).collect();
    let states = || -> Vec<String> { fresh.iter().map(|h| member_state(&lab, h)).collect() };
    let before = states();
    for state in &before {
        assert!(state.ends_with("etcd: inactive"), "{state}");
    }
    let restore = |extra: &[&str]| -> Run {
        let mut args = vec!["restore", "--from", "latest", "--identity", identity.to_str().unwrap()];
        args.extend(["--target", &target]);
        args.extend(extra);
        capstan_ok(Some(&fresh_inventory), &args, &[])
    };

    let text = restore(&["--dry-run"]);
    eprintln!("restore --dry-run printed:\n{}", text.stdout);
    for host in &fresh {
        assert!(
            text.stdout.contains(&format!("{host} (")),
            "changes of {host}:\n{}",
            text.stdout
        );
    }
    for expected in [
        "create /etc/etcd/pki/ca.crt",
        "/snapshot.db",
        "etcdutl snapshot restore /var/lib/capstan-restore/",
        "--initial-advertise-peer-urls",
        "start etcd (all members together)",
        "systemctl start --no-block etcd",
        "then: would wait up to",
        "then: would run capstan apply again to converge",
    ] {
        assert!(text.stdout.contains(expected), "{expected:?} in:\n{}", text.stdout);
    }
    assert!(text.stderr.contains("nothing was changed"), "{}", text.stderr);
    assert_eq!(states(), before, "a dry run changed the members");

    let run = restore(&["--dry-run", "--output", "json"]);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let outcome = &report["outcome"];
    assert_eq!(outcome["mode"], "dry_run", "{report:#}");
    assert_eq!(outcome["tool"], "etcdutl", "{report:#}");
    for member in outcome["members"].as_array().unwrap() {
        assert_eq!(member["action"], "would restore", "{report:#}");
    }
    let phases: Vec<&str> = outcome["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["phase"].as_str().unwrap())
        .collect();
    for phase in [
        "backed-up CA and restore markers",
        "upload the snapshot",
        "stop the members",
        "restore the data dirs",
        "start the members",
    ] {
        assert!(phases.contains(&phase), "{phase} in {phases:?}");
    }
    assert!(phases.iter().any(|p| p.starts_with("apply (install): ")), "{phases:?}");
    let hosts = outcome["summary"]["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{report:#}");
    for host in hosts {
        assert_eq!(host["failed"], 0, "{report:#}");
        assert!(host["changed"].as_u64().unwrap() > 0, "{report:#}");
    }
    assert_eq!(states(), before, "a dry run (JSON) changed the members");

    // The real restore right after it.
    let restored = restore(&["--output", "json"]);
    let report: Value = serde_json::from_str(&restored.stdout).unwrap();
    assert_eq!(report["outcome"]["verification"]["ok"], true, "{report:#}");
    assert_eq!(report["outcome"]["mode"], "apply", "{report:#}");
    let counts: Vec<i64> = report["outcome"]["verification"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key_count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, vec![50; 3], "{report:#}");
    eprintln!("restore dry-run test took {:.1}s", started.elapsed().as_secs_f64());
}
