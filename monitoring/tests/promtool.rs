//! What monitoring renders, checked by the real tools: the Prometheus configuration of a sample
//! cluster (etcd's and monitoring's own scrape targets, two replicas) by `promtool check config`,
//! the alert rules by `promtool check rules` and `promtool test rules` (input series for every
//! shipped alert: fires when it should, silent when it should not), Alertmanager's configuration by
//! `amtool check-config`; a broken file of each kind is rejected. Needs promtool and amtool
//! (Debian's `prometheus` and `prometheus-alertmanager`; scripts/setup.sh installs them without
//! starting the services); skips naming what is missing.

#[path = "../../provisioner/tests/support/require.rs"]
mod require;

use std::path::Path;
use std::process::Command;

use capstan_etcd::EtcdComponent;
use capstan_kubernetes::monitoring::{monitoring_request, AUTHENTICATED_JOBS, VERIFIED_JOBS};
use capstan_kubernetes::KubernetesComponent;
use capstan_monitoring::apply::replica_configs;
use capstan_monitoring::config::{scrape_jobs, scrape_targets};
use capstan_monitoring::credentials::{apply_to_jobs, ComponentCredential, TLS_DIR};
use capstan_monitoring::MonitoringComponent;
use capstan_provisioner::component::Component;
use capstan_provisioner::component::ScrapeCredentials;
use capstan_provisioner::pki::CertificateAuthority;
use require::{require, tool};

static COMPONENTS: &[&dyn Component] = &[&EtcdComponent, &MonitoringComponent { sources: components }];

fn components() -> &'static [&'static dyn Component] {
    COMPONENTS
}

fn cluster() -> capstan_inventory::Cluster {
    cluster_with("monitoring: {retention_days: 7}\n")
}

fn cluster_with(monitoring: &str) -> capstan_inventory::Cluster {
    let text = format!(
        "cluster: {{name: demo}}\nssh: {{agent: true}}\nhosts:\n\
        - {{name: e1, address: 10.0.0.11, roles: [etcd, monitoring]}}\n\
        - {{name: e2, address: 10.0.0.12, private_address: 192.168.0.12, roles: [etcd, monitoring]}}\n\
        - {{name: e3, address: 10.0.0.13, roles: [etcd]}}\n\
        - {{name: n1, address: 10.0.0.21, roles: [node]}}\n{monitoring}"
    );
    capstan_inventory::parse_str(&text, "inventory.yaml", Path::new("/inv")).unwrap()
}

fn promtool_check(path: &Path) -> (bool, String) {
    run("promtool", &["check", "config"], path)
}

/// `tool args... path`: (success, stdout + stderr).
fn run(tool: &str, args: &[&str], path: &Path) -> (bool, String) {
    let output = Command::new(tool).args(args).arg(path).output().unwrap();
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
    assert_eq!(
        names,
        [("etcd", 3), ("node", 4), ("prometheus", 2), ("alertmanager", 2)]
    );
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

const RULES_TEST: &str = include_str!("data/rules_test.yml");

/// The rendered rules with every annotation removed (promtool compares annotations too; the
/// tests are about when alerts fire and with which labels).
fn without_annotations(rules: &str) -> String {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(rules).unwrap();
    for group in doc["groups"].as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            rule.as_mapping_mut().unwrap().remove("annotations");
        }
    }
    serde_yaml::to_string(&doc).unwrap()
}

fn alert_names(rules: &str) -> std::collections::BTreeSet<String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(rules).unwrap();
    doc["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .map(|r| r["alert"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn promtool_checks_and_tests_every_shipped_alert() {
    if !require(&[tool("promtool", "prometheus")]) {
        return;
    }
    let rules = capstan_monitoring::config::alert_rules(&cluster()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capstan.yml");
    std::fs::write(&path, &rules).unwrap();
    let (ok, said) = run("promtool", &["check", "rules"], &path);
    assert!(ok, "promtool check rules:\n{said}\n{rules}");

    // Every rule has its runbook, summary and description and a severity.
    let doc: serde_yaml::Value = serde_yaml::from_str(&rules).unwrap();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            for key in ["runbook", "summary", "description"] {
                assert!(
                    rule["annotations"][key].as_str().is_some_and(|t| !t.is_empty()),
                    "{name}: no {key}"
                );
            }
            assert!(rule["labels"]["severity"].as_str().is_some(), "{name}: no severity");
        }
    }

    // Every alert has a firing case and a silent one in the test input.
    let tests: serde_yaml::Value = serde_yaml::from_str(RULES_TEST).unwrap();
    let mut fires = std::collections::BTreeSet::new();
    let mut silent = std::collections::BTreeSet::new();
    for group in tests["tests"].as_sequence().unwrap() {
        for case in group["alert_rule_test"].as_sequence().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_string();
            match case["exp_alerts"].as_sequence().map(|a| a.is_empty()) {
                Some(false) => fires.insert(name),
                _ => silent.insert(name),
            };
        }
    }
    let alerts = alert_names(&rules);
    assert_eq!(alerts.len(), 19, "{alerts:?}");
    let missing_fire: Vec<_> = alerts.difference(&fires).collect();
    assert!(missing_fire.is_empty(), "no firing case for {missing_fire:?}");
    // The Watchdog always fires: it has no silent case.
    let missing_silent: Vec<_> = alerts
        .iter()
        .filter(|a| *a != "Watchdog" && !silent.contains(*a))
        .collect();
    assert!(missing_silent.is_empty(), "no silent case for {missing_silent:?}");

    std::fs::write(&path, without_annotations(&rules)).unwrap();
    let test_path = dir.path().join("rules_test.yml");
    std::fs::write(&test_path, RULES_TEST).unwrap();
    let (ok, said) = run("promtool", &["test", "rules"], &test_path);
    assert!(ok, "promtool test rules:\n{said}");

    // The tests can fail: with every `for:` at an hour, nothing fires when the input says it should.
    let slow = capstan_monitoring::config::alert_rules(&cluster_with("monitoring: {alert_for: 1h}\n")).unwrap();
    std::fs::write(&path, without_annotations(&slow)).unwrap();
    let (ok, _) = run("promtool", &["test", "rules"], &test_path);
    assert!(!ok, "promtool test rules passed with every alert delayed an hour");
    // And a broken expression fails the check.
    std::fs::write(&path, rules.replace("vector(1)", "vector(1")).unwrap();
    let (ok, _) = run("promtool", &["check", "rules"], &path);
    assert!(!ok, "promtool accepted a broken rule");
}

#[test]
fn amtool_accepts_the_alertmanager_config() {
    if !require(&[tool("amtool", "prometheus-alertmanager")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alertmanager.yml");
    let with_receivers = cluster_with(
        "monitoring:\n  smtp: {smarthost: 'mail.example.com:587', from: alerts@example.com}\n  receivers:\n\
         \x20   - {name: hook, webhooks: ['http://10.0.0.9:9999/alerts', 'https://hooks.example.com/x']}\n\
         \x20   - {name: mail, emails: [ops@example.com, oncall@example.com], severities: [critical]}\n\
         \x20   - {name: deadman, webhooks: ['https://deadman.example.com/ping'], severities: [none]}\n",
    );
    // SMTP authentication: the username and the password file on the hosts, never the password.
    let with_auth = cluster_with(
        "monitoring:\n  smtp: {smarthost: 'mail.example.com:587', from: alerts@example.com, username: alerts, password_env: CAPSTAN_PROMTOOL_SMTP}\n\
         \x20 receivers:\n    - {name: mail, emails: [ops@example.com]}\n",
    );
    for cluster in [cluster(), with_receivers, with_auth.clone()] {
        let config = capstan_monitoring::config::alertmanager_config(&cluster).unwrap();
        std::fs::write(&path, &config).unwrap();
        let (ok, said) = run("amtool", &["check-config"], &path);
        assert!(ok, "amtool check-config:\n{said}\n{config}");
        assert!(said.contains("receivers"), "{said}");
        let auth = cluster.monitoring.smtp.as_ref().and_then(|s| s.auth.as_ref()).is_some();
        assert_eq!(config.contains("smtp_auth_password_file:"), auth, "{config}");
    }
    // Alertmanager refuses a password given both inline and as a file: the file is the only way.
    let config = capstan_monitoring::config::alertmanager_config(&with_auth).unwrap();
    std::fs::write(
        &path,
        config.replace(
            "  smtp_auth_username:",
            "  smtp_auth_password: x\n  smtp_auth_username:",
        ),
    )
    .unwrap();
    let (ok, said) = run("amtool", &["check-config"], &path);
    assert!(!ok, "amtool accepted an inline password next to the file: {said}");
    // capstan's notification templates parse (amtool loads the files `templates:` names).
    let mut names = Vec::new();
    for (name, text) in capstan_monitoring::config::alertmanager_templates().unwrap() {
        std::fs::write(dir.path().join(name), text).unwrap();
        names.push(format!("{:?}", dir.path().join(name).display().to_string()));
    }
    let templates = dir.path().join("email.tmpl");
    let config = capstan_monitoring::config::alertmanager_config(&cluster()).unwrap();
    std::fs::write(&path, format!("{config}\ntemplates: [{}]\n", names.join(", "))).unwrap();
    let (ok, said) = run("amtool", &["check-config"], &path);
    assert!(
        ok && said.contains("templates"),
        "amtool check-config with capstan's templates:\n{said}"
    );
    std::fs::write(&templates, "{{ define \"x\" }}{{ .Broken ").unwrap();
    let (ok, _) = run("amtool", &["check-config"], &path);
    assert!(!ok, "amtool accepted a broken template");
    // A route to a receiver that does not exist is refused.
    let config = capstan_monitoring::config::alertmanager_config(&cluster()).unwrap();
    std::fs::write(
        &path,
        config.replace("receiver: \"capstan-unrouted\"", "receiver: \"nobody\""),
    )
    .unwrap();
    let (ok, said) = run("amtool", &["check-config"], &path);
    assert!(!ok, "amtool accepted a route to a missing receiver: {said}");
}

static WITH_KUBERNETES: &[&dyn Component] = &[
    &EtcdComponent,
    &KubernetesComponent,
    &MonitoringComponent {
        sources: with_kubernetes,
    },
];

fn with_kubernetes() -> &'static [&'static dyn Component] {
    WITH_KUBERNETES
}

/// Kubernetes' scrape jobs with monitoring's client credential: every HTTPS job of the Kubernetes
/// component gets a `tls_config` (CA, client certificate and key; the server verified against the
/// cluster CA, which signs every one's serving certificate), kube-proxy's plain HTTP job none. promtool also checks
/// that the files it names exist, so the check runs on a copy with the credential directory moved
/// to a temporary one; without the key it is refused.
#[test]
fn promtool_accepts_kubernetes_jobs_with_client_credentials() {
    if !require(&[tool("promtool", "prometheus")]) {
        return;
    }
    let cluster = kube_cluster();
    let ca = CertificateAuthority::generate("kubernetes").unwrap();
    let issued = ca.issue(&monitoring_request()).unwrap();
    let credential = ComponentCredential {
        component: "kubernetes",
        credentials: ScrapeCredentials {
            jobs: AUTHENTICATED_JOBS.iter().map(|j| j.to_string()).collect(),
            verified_jobs: VERIFIED_JOBS.iter().map(|j| j.to_string()).collect(),
            ca_cert_pem: ca.cert_pem().to_string(),
            issued: Some((issued.cert_pem.clone(), issued.key_pem.clone())),
        },
    };
    let mut jobs = scrape_jobs(&scrape_targets(&cluster, WITH_KUBERNETES)).unwrap();
    apply_to_jobs(&mut jobs, std::slice::from_ref(&credential));
    let tls: Vec<(&str, Option<bool>)> = jobs
        .iter()
        .map(|j| (j.name.as_str(), j.tls.as_ref().map(|t| t.insecure_skip_verify)))
        .collect();
    for (job, skip) in [
        ("kube-apiserver", Some(false)),
        ("kube-controller-manager", Some(false)),
        ("kube-scheduler", Some(false)),
        ("kubelet", Some(false)),
        ("kube-proxy", None),
        ("etcd", None),
    ] {
        assert!(tls.contains(&(job, skip)), "{job}: {tls:?}");
    }
    let configs = replica_configs(&cluster, &jobs).unwrap();
    let text = &configs["c1"];
    assert!(
        text.contains("cert_file: \"/etc/prometheus/tls/kubernetes/client.crt\""),
        "{text}"
    );
    assert!(text.contains("192.168.0.12:10259"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    let files = tls_dir.join("kubernetes");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(files.join("client.crt"), &issued.cert_pem).unwrap();
    std::fs::write(files.join("client.key"), &issued.key_pem).unwrap();
    let moved = text.replace(TLS_DIR, tls_dir.to_str().unwrap());
    assert_ne!(&moved, text);
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, &moved).unwrap();
    let (ok, said) = promtool_check(&path);
    assert!(ok, "promtool rejected the config:\n{said}\n{moved}");

    // promtool reads the files: without the key, the same config is refused.
    std::fs::remove_file(files.join("client.key")).unwrap();
    let (ok, said) = promtool_check(&path);
    assert!(!ok, "promtool accepted a config whose key is missing: {said}");
}

fn kube_cluster() -> capstan_inventory::Cluster {
    let text = "cluster: {name: demo}\nssh: {agent: true}\nhosts:\n\
        - {name: c1, address: 10.0.0.11, roles: [etcd, control_plane, monitoring]}\n\
        - {name: c2, address: 10.0.0.12, private_address: 192.168.0.12, roles: [control_plane, node]}\n\
        - {name: n1, address: 10.0.0.21, roles: [node]}\n";
    capstan_inventory::parse_str(text, "inventory.yaml", Path::new("/inv")).unwrap()
}
