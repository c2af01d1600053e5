//! `capstan apply|plan|status|etcd credentials` on real lab machines running real etcd.
//! Needs root and the lab prerequisites (and the artifact mirror); skips with a message naming
//! what is missing. Test names start with `lab_` so nextest's lab group bounds concurrency.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_etcd::client::{EtcdClient, EtcdEndpoint, EtcdTls, Timeouts};
use capstan_lab::{Lab, LabGuard, UpOptions};
use serde_json::Value;

mod support;
use support::{changed, etcd_pids, json, lab, mirror, remote, require, run_capstan, Run};

const MIRROR: &str = "/var/cache/capstan/mirror";

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

/// The lab's inventory with only `etcd_hosts` in the etcd role (the others are `node`s, spare machines
/// for scaling: tests that use them run `--only etcd`, the nodes component is not what they test).
fn write_inventory(lab: &Lab, path: &Path, etcd_hosts: &[&str], version: &str) {
    let mut yaml = format!(
        "cluster:\n  name: {}\nssh:\n  user: root\n  identity_file: {:?}\n  known_hosts: strict\n  known_hosts_file: {:?}\nhosts:\n",
        lab.name,
        lab.key_path.display().to_string(),
        lab.known_hosts_path.display().to_string()
    );
    for m in &lab.machines {
        let role = if etcd_hosts.contains(&m.name.as_str()) {
            "etcd"
        } else {
            "node"
        };
        yaml.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: [{role}]\n",
            m.name, m.ip
        ));
    }
    yaml.push_str(&format!(
        "artifacts:\n  mirror: \"file://{MIRROR}\"\nversions:\n  etcd: \"{version}\"\n"
    ));
    std::fs::write(path, yaml).unwrap();
}

/// Admin credentials as `capstan etcd credentials` writes them.
fn credentials(inventory: &Path, dir: &Path) -> (EtcdTls, Vec<EtcdEndpoint>) {
    let run = capstan_ok(inventory, &["etcd", "credentials", "--out", dir.to_str().unwrap()]);
    assert!(run.stdout.contains("etcdctl --cacert"), "{}", run.stdout);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.join("client.key")), 0o600);
    assert_eq!(mode(dir.to_path_buf()), 0o700);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let endpoints = read("endpoints")
        .trim()
        .split(',')
        .map(|e| EtcdEndpoint::parse(e).unwrap())
        .collect();
    (
        EtcdTls {
            ca_cert_pem: read("ca.crt"),
            client_cert_pem: read("client.crt"),
            client_key_pem: read("client.key"),
        },
        endpoints,
    )
}

async fn client(tls: &EtcdTls, endpoints: &[EtcdEndpoint]) -> EtcdClient {
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(5),
        ..Timeouts::default()
    };
    EtcdClient::connect_with(endpoints, tls, timeouts).await.unwrap()
}

fn status_json(inventory: &Path) -> (i32, Value) {
    let run = capstan(inventory, &["status", "--timeout", "3", "--output", "json"]);
    let value = json(&run);
    (run.code, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_etcd_apply_is_idempotent_survives_a_member_down() {
    if !require(&[lab(), mirror()]) {
        return;
    }
    let guard = LabGuard::up(UpOptions::new(format!("ea{}", std::process::id() % 10000), 3)).expect("lab up");
    let lab = guard.lab().clone();
    let work = tempfile::tempdir().unwrap();
    let inventory = work.path().join("inventory.yaml");
    let hosts: Vec<&str> = lab.machines.iter().map(|m| m.name.as_str()).collect();
    write_inventory(&lab, &inventory, &hosts, "3.5.1");

    // Plan on fresh machines: shows the files it would create, changes nothing.
    let plan = capstan_ok(&inventory, &["plan"]);
    assert!(plan.stdout.contains("would change"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("+initial-cluster-state: \"new\""),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("PRIVATE KEY"), "a key leaked into the plan");
    assert_eq!(
        remote(&lab, hosts[0], "test -e /etc/etcd/etcd.conf.yml && echo yes || echo no"),
        "no"
    );

    // First apply bootstraps a healthy 3-member cluster.
    let started = Instant::now();
    let first = capstan_ok(&inventory, &["apply", "--output", "json"]);
    eprintln!("first apply: {:.1}s", started.elapsed().as_secs_f64());
    let outcome = json(&first);
    assert!(changed(&outcome) >= 30, "{outcome:#}");
    assert!(first.stderr.contains("==> [1/5] etcd: bootstrap"), "{}", first.stderr);
    assert_eq!(
        remote(
            &lab,
            hosts[0],
            "stat -c %a /etc/etcd/pki/ca.key /etc/etcd/pki/server.key"
        ),
        "600\n600"
    );

    // Operator access over mTLS with the credentials capstan writes.
    let (tls, endpoints) = credentials(&inventory, &work.path().join("creds"));
    assert_eq!(endpoints.len(), 3);
    let etcd = client(&tls, &endpoints).await;
    etcd.put("capstan/lab", b"hello").await.unwrap();
    for endpoint in &endpoints {
        let pinned = client(&tls, std::slice::from_ref(endpoint)).await;
        assert_eq!(
            pinned.get("capstan/lab").await.unwrap().as_deref(),
            Some(&b"hello"[..]),
            "{endpoint}"
        );
    }
    let members = etcd.member_list().await.unwrap();
    let names: BTreeSet<String> = members.iter().map(|m| m.name.clone()).collect();
    assert_eq!(names, hosts.iter().map(|h| h.to_string()).collect());

    // A client without a certificate is refused (Debian's etcdctl, trusting the CA).
    let creds = work.path().join("creds");
    let anonymous = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--dial-timeout", "3s", "--command-timeout", "5s", "--cacert"])
        .arg(creds.join("ca.crt"))
        .arg("--endpoints")
        .arg(endpoints[0].as_str())
        .args(["get", "capstan/lab"])
        .output();
    match anonymous {
        Ok(out) => assert!(!out.status.success(), "etcd answered a client without certificate"),
        Err(e) => eprintln!("etcdctl not installed, skipping the anonymous-client check: {e}"),
    }
    // Positive control: the same etcdctl with the admin certificate reads the key.
    if let Ok(out) = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--dial-timeout", "3s", "--cacert"])
        .arg(creds.join("ca.crt"))
        .arg("--cert")
        .arg(creds.join("client.crt"))
        .arg("--key")
        .arg(creds.join("client.key"))
        .arg("--endpoints")
        .arg(endpoints[0].as_str())
        .args(["get", "capstan/lab", "--print-value-only"])
        .output()
    {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    }

    // Second apply: nothing changes, nothing restarts.
    let pids = etcd_pids(&lab, &hosts);
    let started = Instant::now();
    let second = capstan_ok(&inventory, &["apply", "--output", "json"]);
    eprintln!("no-op re-apply (3 members): {:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(changed(&json(&second)), 0, "{}", second.stdout);
    assert_eq!(etcd_pids(&lab, &hosts), pids, "etcd was restarted by a no-op apply");
    let plan = capstan_ok(&inventory, &["plan"]);
    assert!(plan.stdout.starts_with("no changes"), "{}", plan.stdout);

    // Status: all healthy, one leader, certificate expiry known.
    let (code, status) = status_json(&inventory);
    assert_eq!(code, 0, "{status:#}");
    let rows = status["members"].as_array().unwrap();
    assert_eq!(rows.iter().filter(|r| r["leader"] == true).count(), 1, "{status:#}");
    assert!(rows
        .iter()
        .all(|r| r["version"] == "3.5.1" && r["cert_days_left"].as_i64() > Some(300)));

    // Drift: a member's config edited by hand is restored, and only that member restarts.
    remote(
        &lab,
        hosts[1],
        "sed -i 's/snapshot-count: 10000/snapshot-count: 5/' /etc/etcd/etcd.conf.yml",
    );
    let plan = capstan_ok(&inventory, &["plan"]);
    assert!(
        plan.stdout.contains("-snapshot-count: 5") && plan.stdout.contains("+snapshot-count: 10000"),
        "{}",
        plan.stdout
    );
    let fix = capstan_ok(&inventory, &["apply"]);
    assert!(fix.stderr.contains("healthy again"), "{}", fix.stderr);
    let after = etcd_pids(&lab, &hosts);
    assert_eq!(
        (after[0] == pids[0], after[1] == pids[1], after[2] == pids[2]),
        (true, false, true)
    );

    // One machine down: writes still succeed, status says which member is down.
    capstan_lab::stop(&lab.name, hosts[2]).unwrap();
    // The client may first try its connection to the stopped member; like etcdctl, retry then.
    let mut attempts = 0;
    while let Err(e) = etcd.put("capstan/while-down", b"1").await {
        attempts += 1;
        assert!(attempts < 5, "writes fail with one member down: {e}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (code, status) = status_json(&inventory);
    assert_ne!(code, 0, "{status:#}");
    let down = &status["members"][2];
    assert_eq!(
        (down["name"].as_str(), down["healthy"].as_bool()),
        (Some(hosts[2]), Some(false)),
        "{status:#}"
    );
    assert_eq!(status["members"][0]["healthy"], true);
    let text = capstan(&inventory, &["status", "--timeout", "3"]);
    assert_ne!(text.code, 0);
    assert!(
        text.stderr
            .contains(&format!("unhealthy or unreachable member(s): {}", hosts[2])),
        "{}",
        text.stderr
    );
    assert!(text.stderr.contains("hint:"), "{}", text.stderr);

    // Back up: apply converges and the cluster is healthy, the write made meanwhile is there.
    capstan_lab::start(&lab.name, hosts[2]).unwrap();
    capstan_ok(&inventory, &["apply"]);
    let (code, status) = status_json(&inventory);
    assert_eq!(code, 0, "{status:#}");
    let pinned = client(&tls, &endpoints[2..]).await;
    assert_eq!(
        pinned.get("capstan/while-down").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_etcd_scales_up_and_down_without_losing_writes() {
    if !require(&[lab(), mirror()]) {
        return;
    }
    let guard = LabGuard::up(UpOptions::new(format!("es{}", std::process::id() % 10000), 5)).expect("lab up");
    let lab = guard.lab().clone();
    let work = tempfile::tempdir().unwrap();
    let inventory = work.path().join("inventory.yaml");
    let hosts: Vec<&str> = lab.machines.iter().map(|m| m.name.as_str()).collect();
    write_inventory(&lab, &inventory, &hosts[..3], "3.5.1");
    capstan_ok(&inventory, &["apply", "--only", "etcd"]);

    // Credentials for all five machines' endpoints (the writer follows the membership).
    write_inventory(&lab, &inventory, &hosts, "3.5.1");
    let plan = capstan_ok(&inventory, &["plan", "--only", "etcd"]);
    assert!(
        plan.stdout.contains(&format!("add member {}", hosts[3])),
        "{}",
        plan.stdout
    );
    write_inventory(&lab, &inventory, &hosts[..3], "3.5.1");
    let (tls, _) = credentials(&inventory, &work.path().join("creds"));
    let all_endpoints: Vec<EtcdEndpoint> = lab.machines.iter().map(|m| EtcdEndpoint::https(&m.ip, 2379)).collect();

    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acked, stop, tls, endpoints) = (acked.clone(), stop.clone(), tls.clone(), all_endpoints.clone());
        tokio::spawn(async move {
            let etcd = client(&tls, &endpoints).await;
            let mut key = 0u64;
            let mut failures = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match etcd.put(&format!("writer/{key:08}"), key.to_string().as_bytes()).await {
                    Ok(()) => {
                        acked.lock().unwrap().push(key);
                        key += 1;
                    }
                    Err(_) => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        })
    };

    // Grow 3 → 5, one member at a time.
    write_inventory(&lab, &inventory, &hosts, "3.5.1");
    let grow = capstan_ok(&inventory, &["apply", "--only", "etcd"]);
    assert_eq!(
        grow.stderr.matches("joined and caught up").count(),
        2,
        "{}",
        grow.stderr
    );
    let (code, status) = status_json(&inventory);
    assert_eq!(
        (code, status["members"].as_array().unwrap().len()),
        (0, 5),
        "{status:#}"
    );

    // Shrink 5 → 3 by removing two of the original members.
    write_inventory(&lab, &inventory, &hosts[2..], "3.5.1");
    let shrink = capstan_ok(&inventory, &["apply", "--only", "etcd"]);
    assert!(
        shrink.stderr.contains(&format!("remove member {}", hosts[0])),
        "{}",
        shrink.stderr
    );
    let (code, status) = status_json(&inventory);
    assert_eq!(
        (code, status["members"].as_array().unwrap().len()),
        (0, 3),
        "{status:#}"
    );
    assert_eq!(remote(&lab, hosts[0], "systemctl is-enabled etcd || true"), "disabled");
    assert_eq!(
        remote(&lab, hosts[0], "test -e /var/lib/etcd && echo yes || echo no"),
        "no"
    );

    // A change that would lose quorum is refused before anything changes: with one of three
    // members down, adding a member (quorum 3 of 4 while it joins) is not safe.
    capstan_lab::stop(&lab.name, hosts[3]).unwrap();
    write_inventory(&lab, &inventory, &[hosts[0], hosts[2], hosts[4]], "3.5.1");
    let refused = capstan(&inventory, &["apply", "--only", "etcd"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("refusing to change the cluster: adding a member to 3 members of which 2 are healthy"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("hint:"), "{}", refused.stderr);
    assert_eq!(remote(&lab, hosts[0], "systemctl is-active etcd || true"), "inactive");
    capstan_lab::start(&lab.name, hosts[3]).unwrap();
    // etcd comes back on its own (the unit is enabled); wait for it before reading through it.
    write_inventory(&lab, &inventory, &hosts[2..], "3.5.1");
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_json(&inventory).0 != 0 {
        assert!(
            Instant::now() < deadline,
            "the cluster did not recover after the member came back"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let failures = writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "writer: {} acknowledged writes, {failures} failed attempts",
        acked.len()
    );
    assert!(acked.len() > 50, "the writer barely ran: {}", acked.len());
    let remaining: Vec<EtcdEndpoint> = all_endpoints[2..].to_vec();
    let etcd = client(&tls, &remaining).await;
    for key in &acked {
        // Transport errors are retried; a missing key (Ok(None)) is a lost write.
        let mut attempt = 0;
        let value = loop {
            match etcd.get(&format!("writer/{key:08}")).await {
                Ok(value) => break value,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    eprintln!("read of {key} failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("reading {key}: {e}"),
            }
        };
        assert_eq!(
            value.as_deref(),
            Some(key.to_string().as_bytes()),
            "acknowledged write {key} lost"
        );
    }
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_etcd_34_without_etcdutl() {
    if !require(&[lab(), mirror()]) {
        return;
    }
    let guard = LabGuard::up(UpOptions::new(format!("e4{}", std::process::id() % 10000), 3)).expect("lab up");
    let lab = guard.lab().clone();
    let work = tempfile::tempdir().unwrap();
    let inventory = work.path().join("inventory.yaml");
    let hosts: Vec<&str> = lab.machines.iter().map(|m| m.name.as_str()).collect();
    write_inventory(&lab, &inventory, &hosts, "3.4.23");
    capstan_ok(&inventory, &["apply"]);
    let second = capstan_ok(&inventory, &["apply", "--output", "json"]);
    assert_eq!(changed(&json(&second)), 0, "{}", second.stdout);
    let (code, status) = status_json(&inventory);
    assert_eq!(code, 0, "{status:#}");
    assert!(
        status["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["version"] == "3.4.23"),
        "{status:#}"
    );
    assert_eq!(
        remote(&lab, hosts[0], "test -e /usr/local/bin/etcdutl && echo yes || echo no"),
        "no"
    );

    // A version the mirror lacks is refused with the list of what it has.
    write_inventory(&lab, &inventory, &hosts, "3.5.21");
    let missing = capstan(&inventory, &["plan"]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("it has: 3.5.1, 3.5.0, 3.4.23"),
        "{}",
        missing.stderr
    );
    drop(guard);
}
