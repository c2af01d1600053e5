//! Monitoring's client credential for Kubernetes' metrics, on a real lab machine: with a
//! control-plane host (whose cluster CA the API endpoint makes) and a monitoring host, `apply`
//! gives Prometheus a `CN=capstan-monitoring` certificate signed by that CA (key 0600, owned by
//! the prometheus user), the Kubernetes jobs a `tls_config` that verifies the server (no
//! `insecure_skip_verify`), and the real `promtool` on the host
//! accepts the configuration; a second apply keeps the certificate (0 changed). kube binaries
//! cannot run here: that the API server authorizes the user is the e2e test's. Needs root, the
//! lab prerequisites, the artifact mirror and `openssl`; skips naming what is missing.

use std::path::Path;
use std::process::Command;

use capstan_lab::{LabGuard, UpOptions};

mod support;
use support::{capstan_ok, changed, json, mirror, remote, require, tool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_monitoring_gets_a_kubernetes_client_certificate() {
    if !require(&[support::lab(), mirror(), tool("openssl", "openssl")]) {
        return;
    }
    let mut options = UpOptions::new(format!("kmo{}", std::process::id() % 10000), 1);
    options.roles = ["etcd", "control_plane", "monitoring"].map(String::from).to_vec();
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.yaml");
    options.inventory_out = Some(inventory.clone());
    let guard = LabGuard::up(options).expect("lab up");
    let lab = guard.lab();
    let host = lab.machines[0].name.clone();
    let only = ["apply", "--only", "etcd,endpoint,monitoring", "--output", "json"];
    let first = json(&capstan_ok(&inventory, &only));
    assert!(changed(&first) > 0);

    let tls = "/etc/prometheus/tls/kubernetes";
    assert_eq!(
        remote(lab, &host, &format!("stat -c '%a %U %G' {tls}/client.key")),
        "600 prometheus prometheus"
    );
    assert_eq!(
        remote(lab, &host, &format!("stat -c '%a %U %G' {tls}")),
        "750 root prometheus"
    );
    // Signed by the cluster CA the control plane holds, for the monitoring user.
    let local = |name: &str, path: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, remote(lab, &host, &format!("cat {path}")) + "\n").unwrap();
        file
    };
    let ca = local("ca.crt", capstan_kubernetes::paths::CA_CERT);
    let cert = local("client.crt", &format!("{tls}/client.crt"));
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca)
        .arg(&cert)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let subject = String::from_utf8_lossy(&subject.stdout).to_string();
    assert!(subject.contains("CN = capstan-monitoring"), "{subject}");

    let config = remote(lab, &host, "cat /etc/prometheus/prometheus.yml");
    assert_eq!(config.matches("tls_config:").count(), 3, "{config}");
    // Every control-plane job verifies the server against the cluster CA.
    assert_eq!(config.matches("insecure_skip_verify: false").count(), 3, "{config}");
    assert!(!config.contains("insecure_skip_verify: true"), "{config}");
    assert!(config.contains(&format!("key_file: \"{tls}/client.key\"")), "{config}");
    remote(
        lab,
        &host,
        "/usr/local/bin/promtool check config /etc/prometheus/prometheus.yml",
    );

    let before = remote(lab, &host, &format!("sha256sum {tls}/client.crt"));
    let again = json(&capstan_ok(&inventory, &only));
    assert_eq!(changed(&again), 0, "{again:#}");
    assert_eq!(remote(lab, &host, &format!("sha256sum {tls}/client.crt")), before);
    assert!(Path::new(&inventory).exists());
}
