//! Monitoring on real lab machines: three etcd members, two of them also `monitoring`. After one
//! apply, both Prometheus replicas (each with its own `replica` label) report every target up:
//! node_exporter on every machine, every etcd member's metrics listener on its private address,
//! and both Prometheus servers. A second apply changes nothing.
//!
//! Needs root, the lab prerequisites, curl and the artifact mirror with etcd, Prometheus and
//! node_exporter; skips with a message naming what is missing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use capstan_lab::{Lab, LabGuard, UpOptions};
use serde_json::Value;

mod support;
use support::{capstan_ok, changed, json, lab, mirror, mirror_and_version, mirror_etcd, remote, require, Need, MIRROR};

const ETCD: &str = "3.5.1";

/// Prometheus and node_exporter in the artifact mirror (the inventory's default versions).
fn mirror_monitoring() -> Need {
    let sums = std::fs::read_to_string(Path::new(MIRROR).join("SHA256SUMS")).unwrap_or_default();
    for part in [
        format!(
            "prometheus-{}.linux-amd64",
            capstan_inventory::DEFAULT_PROMETHEUS_VERSION
        ),
        format!(
            "node_exporter-{}.linux-amd64",
            capstan_inventory::DEFAULT_NODE_EXPORTER_VERSION
        ),
    ] {
        if !sums.contains(&part) {
            return Err(format!("artifact mirror {MIRROR} lacks {part} (run scripts/setup.sh)"));
        }
    }
    Ok(())
}

fn curl() -> Need {
    match Command::new("curl").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("curl missing (apt-get install curl; scripts/setup.sh)".into()),
    }
}

/// Three etcd members; the first two also run Prometheus.
fn inventory(lab: &Lab) -> String {
    let mut yaml = format!(
        "cluster:\n  name: {}\nssh:\n  user: root\n  identity_file: {:?}\n  known_hosts: strict\n  known_hosts_file: {:?}\n{}\
         monitoring:\n  retention_days: 2\nhosts:\n",
        lab.name,
        lab.key_path.display().to_string(),
        lab.known_hosts_path.display().to_string(),
        mirror_and_version(ETCD),
    );
    for (i, m) in lab.machines.iter().enumerate() {
        let roles = if i < 2 { "[etcd, monitoring]" } else { "[etcd]" };
        yaml.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: {roles}\n",
            m.name, m.ip
        ));
    }
    yaml
}

fn get(url: &str) -> Option<Value> {
    let output = Command::new("curl")
        .args(["-sf", "--max-time", "5", url])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// (job, instance, health) of every active target.
fn targets(prometheus: &str) -> Vec<(String, String, String)> {
    let Some(answer) = get(&format!("http://{prometheus}:9090/api/v1/targets?state=active")) else {
        return Vec::new();
    };
    let mut targets: Vec<(String, String, String)> = answer["data"]["activeTargets"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (s(&t["labels"]["job"]), s(&t["labels"]["instance"]), s(&t["health"]))
        })
        .collect();
    targets.sort();
    targets
}

#[test]
fn both_replicas_scrape_every_target_and_a_second_apply_changes_nothing() {
    if !require(&[lab(), mirror(), mirror_etcd(&[ETCD]), mirror_monitoring(), curl()]) {
        return;
    }
    let started = Instant::now();
    let guard = LabGuard::up(UpOptions::new("mon-lab", 3)).expect("lab up");
    let lab = guard.lab();
    let dir = tempfile::tempdir().unwrap();
    let inventory_path = dir.path().join("inventory.yaml");
    std::fs::write(&inventory_path, inventory(lab)).unwrap();
    let ips: Vec<String> = lab.machines.iter().map(|m| m.ip.to_string()).collect();
    let lab_up = started.elapsed();

    let first = json(&capstan_ok(&inventory_path, &["apply", "--output", "json"]));
    assert!(changed(&first) > 0);
    let applied = started.elapsed();

    let mut expected: Vec<(String, String, String)> = Vec::new();
    for ip in &ips {
        expected.push(("etcd".into(), format!("{ip}:2381"), "up".into()));
        expected.push(("node".into(), format!("{ip}:9100"), "up".into()));
    }
    for ip in &ips[..2] {
        expected.push(("prometheus".into(), format!("{ip}:9090"), "up".into()));
    }
    expected.sort();
    for (i, replica) in ips[..2].iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = targets(replica);
        while seen != expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(2));
            seen = targets(replica);
        }
        assert_eq!(seen, expected, "replica {replica}: targets not all up");
        // The replicas differ in their `replica` external label: the machine's name.
        let config = get(&format!("http://{replica}:9090/api/v1/status/config")).expect("config");
        let yaml = config["data"]["yaml"].as_str().unwrap();
        let name = &lab.machines[i].name;
        assert!(yaml.contains(&format!("replica: {name}")), "{yaml}");
        assert_eq!(
            remote(lab, name, "stat -c '%a %U' /var/lib/prometheus/data"),
            "750 prometheus"
        );
    }
    let all_up = started.elapsed();
    // The third machine runs no Prometheus.
    assert_eq!(
        remote(lab, &lab.machines[2].name, "systemctl is-active prometheus || true"),
        "inactive"
    );

    let again = json(&capstan_ok(&inventory_path, &["apply", "--output", "json"]));
    assert_eq!(changed(&again), 0, "{again:#}");

    for m in &lab.machines[..2] {
        eprintln!(
            "{}: RSS prometheus {} KiB, node_exporter {} KiB",
            m.name,
            remote(lab, &m.name, "ps -o rss= -C prometheus"),
            remote(lab, &m.name, "ps -o rss= -C node_exporter"),
        );
    }
    eprintln!(
        "monitoring lab test: lab up {:.1}s, apply {:.1}s, all targets up {:.1}s, total {:.1}s",
        lab_up.as_secs_f64(),
        (applied - lab_up).as_secs_f64(),
        (all_up - applied).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
