//! The Prometheus configuration rendered for a sample cluster (etcd's and monitoring's own scrape
//! targets, two replicas) is accepted by the real `promtool check config`, and a broken one is
//! rejected. Needs promtool (Debian's `prometheus` package; scripts/setup.sh installs it without
//! starting the service); skips naming what is missing.

#[path = "../../provisioner/tests/support/require.rs"]
mod require;

use std::path::Path;
use std::process::Command;

use capstan_etcd::EtcdComponent;
use capstan_monitoring::apply::replica_configs;
use capstan_monitoring::config::{scrape_jobs, scrape_targets};
use capstan_monitoring::MonitoringComponent;
use capstan_provisioner::component::Component;
use require::{require, tool};

static COMPONENTS: &[&dyn Component] = &[&EtcdComponent, &MonitoringComponent { sources: components }];

fn components() -> &'static [&'static dyn Component] {
    COMPONENTS
}

fn cluster() -> capstan_inventory::Cluster {
    let text = "cluster: {name: demo}\nssh: {agent: true}\nhosts:\n\
        - {name: e1, address: 10.0.0.11, roles: [etcd, monitoring]}\n\
        - {name: e2, address: 10.0.0.12, private_address: 192.168.0.12, roles: [etcd, monitoring]}\n\
        - {name: e3, address: 10.0.0.13, roles: [etcd]}\n\
        - {name: n1, address: 10.0.0.21, roles: [node]}\n\
        monitoring: {retention_days: 7}\n";
    capstan_inventory::parse_str(text, "inventory.yaml", Path::new("/inv")).unwrap()
}

fn promtool_check(path: &Path) -> (bool, String) {
    let output = Command::new("promtool")
        .args(["check", "config"])
        .arg(path)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn promtool_accepts_every_replicas_config() {
    if !require(&[tool("promtool", "prometheus")]) {
        return;
    }
    let cluster = cluster();
    let jobs = scrape_jobs(&scrape_targets(&cluster, COMPONENTS)).unwrap();
    let names: Vec<(&str, usize)> = jobs.iter().map(|j| (j.name.as_str(), j.targets.len())).collect();
    assert_eq!(names, [("etcd", 3), ("node", 4), ("prometheus", 2)]);
    let configs = replica_configs(&cluster, &jobs).unwrap();
    assert_eq!(configs.keys().collect::<Vec<_>>(), ["e1", "e2"]);
    let dir = std::env::temp_dir().join(format!("capstan-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (replica, text) in &configs {
        assert!(text.contains("192.168.0.12:2381"), "{text}");
        let path = dir.join(format!("{replica}.yml"));
        std::fs::write(&path, text).unwrap();
        let (ok, said) = promtool_check(&path);
        assert!(ok, "promtool rejected {replica}'s config:\n{said}\n{text}");
    }
    // The check can fail: a scrape timeout longer than the interval is refused.
    let broken = configs["e1"].replace("scrape_timeout: \"10s\"", "scrape_timeout: \"20s\"");
    assert_ne!(broken, configs["e1"]);
    let path = dir.join("broken.yml");
    std::fs::write(&path, broken).unwrap();
    let (ok, said) = promtool_check(&path);
    assert!(!ok, "promtool accepted a broken config: {said}");
    std::fs::remove_dir_all(&dir).unwrap();
}
