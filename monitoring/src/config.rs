//! What the monitoring component writes, decided purely from the inventory and the components'
//! scrape targets: Prometheus's configuration per replica, the alert rules, Alertmanager's
//! configuration, the units and the certificate expiry script. Templates are in
//! `templates/files/monitoring/`.

use std::net::IpAddr;

use capstan_inventory::{AlertReceiver, Cluster, Host, Role, SmtpSettings};
use capstan_provisioner::component::{Component, ScrapeTarget};
use serde::Serialize;

use crate::TEXTFILE_DIR;

pub const NODE_EXPORTER_PORT: u16 = 9100;
pub const PROMETHEUS_PORT: u16 = 9090;
pub const ALERTMANAGER_PORT: u16 = 9093;
/// Alertmanager's gossip (TCP and UDP) between the monitoring hosts.
pub const ALERTMANAGER_CLUSTER_PORT: u16 = 9094;

pub const BIN_DIR: &str = "/usr/local/bin";
pub const NODE_EXPORTER_BINARY: &str = "/usr/local/bin/node_exporter";
pub const PROMETHEUS_BINARY: &str = "/usr/local/bin/prometheus";
pub const CONFIG_DIR: &str = "/etc/prometheus";
pub const PROMETHEUS_CONFIG: &str = "/etc/prometheus/prometheus.yml";
pub const RULES_DIR: &str = "/etc/prometheus/rules";
/// capstan's alert rules (Prometheus loads every `*.yml` in [`RULES_DIR`]).
pub const RULES_FILE: &str = "/etc/prometheus/rules/capstan.yml";
pub const ALERTMANAGER_BINARY: &str = "/usr/local/bin/alertmanager";
pub const ALERTMANAGER_CONFIG_DIR: &str = "/etc/alertmanager";
pub const ALERTMANAGER_CONFIG: &str = "/etc/alertmanager/alertmanager.yml";
/// The SMTP relay's password (`smtp_auth_password_file`), 0640 root:alertmanager, when
/// `monitoring.smtp` names a `username`.
pub const SMTP_PASSWORD_FILE: &str = "/etc/alertmanager/smtp_password";
/// Alertmanager's silences and notification log.
pub const ALERTMANAGER_STORAGE: &str = "/var/lib/alertmanager";
/// Where Debian's Alertmanager build looks for its default notification templates
/// (`default.tmpl`, `email.tmpl`; upstream's binary embeds them); capstan writes its own there
/// ([`alertmanager_templates`]).
pub const DEBIAN_ALERTMANAGER_TEMPLATES: &str = "/usr/share/prometheus/alertmanager";
pub const CERT_EXPIRY_SCRIPT: &str = "/usr/local/lib/capstan/cert-expiry.sh";
/// Certificates capstan issues on hosts (etcd's, the Kubernetes PKI): their expiry is exported.
pub const CERTIFICATE_GLOBS: &[&str] = &["/etc/etcd/pki/*.crt", "/etc/kubernetes/pki/*.crt"];
/// The parent of [`TEXTFILE_DIR`] and of the default storage path.
pub const STATE_DIR: &str = "/var/lib/prometheus";

pub const NODE_EXPORTER_SERVICE: &str = "node_exporter";
pub const PROMETHEUS_SERVICE: &str = "prometheus";
pub const NODE_EXPORTER_UNIT: &str = "node_exporter.service";
pub const PROMETHEUS_UNIT: &str = "prometheus.service";
pub const ALERTMANAGER_SERVICE: &str = "alertmanager";
pub const ALERTMANAGER_UNIT: &str = "alertmanager.service";
pub const CERT_EXPIRY_SERVICE: &str = "capstan-cert-expiry.service";
pub const CERT_EXPIRY_TIMER: &str = "capstan-cert-expiry.timer";
/// Dedicated system users (no login, no home).
pub const NODE_EXPORTER_USER: &str = "node_exporter";
pub const PROMETHEUS_USER: &str = "prometheus";
pub const ALERTMANAGER_USER: &str = "alertmanager";

pub const SCRAPE_INTERVAL: &str = "15s";
pub const SCRAPE_TIMEOUT: &str = "10s";
pub const EVALUATION_INTERVAL: &str = "15s";
/// Alertmanager's grouping: wait for more alerts of a new group, between updates of a group, and
/// before repeating an unchanged one.
pub const GROUP_WAIT: &str = "30s";
pub const GROUP_INTERVAL: &str = "5m";
pub const REPEAT_INTERVAL: &str = "4h";
/// The receiver of alerts no inventory receiver asked for.
pub const BLACKHOLE_RECEIVER: &str = "capstan-unrouted";

pub type RenderResult = Result<String, capstan_templates::TemplateError>;

/// `host:port` for a URL or a listen address (IPv6 in brackets).
pub fn host_port(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// Where a service listens: the host's private address when it is an IP address (so metrics are
/// not offered on every interface), otherwise every address.
pub fn listen_address(host: &Host, port: u16) -> String {
    match host.private_address.parse::<IpAddr>() {
        Ok(_) => host_port(&host.private_address, port),
        Err(_) => format!(":{port}"),
    }
}

/// The hosts running Prometheus, in inventory order.
pub fn prometheus_hosts(cluster: &Cluster) -> Vec<&Host> {
    cluster.hosts_with_role(Role::Monitoring).collect()
}

/// The monitoring component's own targets: node_exporter on every host, Prometheus and
/// Alertmanager on each monitoring host (each replica scrapes all of them).
pub fn own_targets(cluster: &Cluster) -> Vec<ScrapeTarget> {
    let node = cluster.hosts.iter().map(|host| ScrapeTarget {
        job: "node".into(),
        address: host_port(&host.private_address, NODE_EXPORTER_PORT),
        scheme: "http",
        path: "/metrics",
    });
    let on_monitoring = |job: &str, port: u16| {
        let job = job.to_string();
        prometheus_hosts(cluster).into_iter().map(move |host| ScrapeTarget {
            job: job.clone(),
            address: host_port(&host.private_address, port),
            scheme: "http",
            path: "/metrics",
        })
    };
    node.chain(on_monitoring("prometheus", PROMETHEUS_PORT))
        .chain(on_monitoring("alertmanager", ALERTMANAGER_PORT))
        .collect()
}

/// Every target of the components the inventory enables, in component order, duplicates dropped.
pub fn scrape_targets(cluster: &Cluster, components: &[&dyn Component]) -> Vec<ScrapeTarget> {
    let mut targets: Vec<ScrapeTarget> = Vec::new();
    for component in components.iter().filter(|c| c.enabled(cluster)) {
        for target in component.scrape_targets(cluster) {
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
    }
    targets
}

/// One `scrape_configs` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScrapeJob {
    pub name: String,
    pub scheme: &'static str,
    pub path: &'static str,
    pub targets: Vec<String>,
    /// The client credential presented to the targets ([`crate::credentials`]), when they ask.
    pub tls: Option<crate::credentials::JobTls>,
}

/// Targets grouped into jobs by name, in first-seen order. A job's targets must share scheme and
/// path (each Prometheus job has one of each).
pub fn scrape_jobs(targets: &[ScrapeTarget]) -> Result<Vec<ScrapeJob>, String> {
    let mut jobs: Vec<ScrapeJob> = Vec::new();
    for target in targets {
        match jobs.iter_mut().find(|job| job.name == target.job) {
            Some(job) if (job.scheme, job.path) != (target.scheme, target.path) => {
                return Err(format!(
                    "scrape job `{}`: target {} uses {}://…{} but the job's others use {}://…{}",
                    job.name, target.address, target.scheme, target.path, job.scheme, job.path
                ))
            }
            Some(job) => job.targets.push(target.address.clone()),
            None => jobs.push(ScrapeJob {
                name: target.job.clone(),
                scheme: target.scheme,
                path: target.path,
                targets: vec![target.address.clone()],
                tls: None,
            }),
        }
    }
    Ok(jobs)
}

#[derive(Serialize)]
struct PrometheusConfig<'a> {
    cluster: &'a str,
    replica: &'a str,
    scrape_interval: &'a str,
    scrape_timeout: &'a str,
    evaluation_interval: &'a str,
    jobs: &'a [ScrapeJob],
    rules_glob: String,
    alertmanagers: Vec<String>,
}

/// `prometheus.yml` of the replica on `replica` (a monitoring host's name).
pub fn prometheus_config(cluster: &Cluster, replica: &str, jobs: &[ScrapeJob]) -> RenderResult {
    capstan_templates::render(
        "monitoring/prometheus.yml",
        PrometheusConfig {
            cluster: &cluster.name,
            replica,
            scrape_interval: SCRAPE_INTERVAL,
            scrape_timeout: SCRAPE_TIMEOUT,
            evaluation_interval: EVALUATION_INTERVAL,
            jobs,
            rules_glob: format!("{RULES_DIR}/*.yml"),
            alertmanagers: prometheus_hosts(cluster)
                .iter()
                .map(|host| host_port(&host.private_address, ALERTMANAGER_PORT))
                .collect(),
        },
    )
}

#[derive(Serialize)]
struct Rules<'a> {
    alert_for: Option<&'a str>,
}

/// capstan's alert rules ([`RULES_FILE`]); `monitoring.alert_for`, when set, replaces every
/// rule's own `for:`.
pub fn alert_rules(cluster: &Cluster) -> RenderResult {
    capstan_templates::render(
        "monitoring/rules.yml",
        Rules {
            alert_for: cluster.monitoring.alert_for.as_deref(),
        },
    )
}

#[derive(Serialize)]
struct AlertmanagerConfig<'a> {
    smtp: Option<&'a SmtpSettings>,
    /// `(username, password file on the hosts)`; the password itself never enters the config.
    smtp_auth: Option<(&'a str, &'a str)>,
    receivers: &'a [AlertReceiver],
    blackhole: &'a str,
    group_wait: &'a str,
    group_interval: &'a str,
    repeat_interval: &'a str,
}

/// `alertmanager.yml`, the same on every monitoring host: a route per inventory receiver,
/// matching the severities it asked for (`continue`, so several receivers can get an alert).
pub fn alertmanager_config(cluster: &Cluster) -> RenderResult {
    capstan_templates::render(
        "monitoring/alertmanager.yml",
        AlertmanagerConfig {
            smtp: cluster.monitoring.smtp.as_ref(),
            smtp_auth: cluster
                .monitoring
                .smtp
                .as_ref()
                .and_then(|smtp| smtp.auth.as_ref())
                .map(|auth| (auth.username.as_str(), SMTP_PASSWORD_FILE)),
            receivers: &cluster.monitoring.receivers,
            blackhole: BLACKHOLE_RECEIVER,
            group_wait: GROUP_WAIT,
            group_interval: GROUP_INTERVAL,
            repeat_interval: REPEAT_INTERVAL,
        },
    )
}

/// capstan's email subject and body for Alertmanager: (file name, text) in
/// [`DEBIAN_ALERTMANAGER_TEMPLATES`].
pub fn alertmanager_templates() -> Result<Vec<(&'static str, String)>, capstan_templates::TemplateError> {
    Ok(vec![
        (
            "default.tmpl",
            capstan_templates::render("monitoring/alertmanager-default.tmpl", ())?,
        ),
        (
            "email.tmpl",
            capstan_templates::render("monitoring/alertmanager-email.tmpl", ())?,
        ),
    ])
}

#[derive(Serialize)]
struct AlertmanagerUnit<'a> {
    name: &'a str,
    user: &'a str,
    binary: &'a str,
    config: &'a str,
    storage_path: &'a str,
    listen: String,
    cluster_listen: String,
    /// ` --cluster.advertise-address=…` when the host listens everywhere (a name, not an
    /// address): gossip must advertise one.
    advertise_flag: String,
    /// ` --cluster.peer=…` for every other monitoring host.
    peer_flags: String,
}

/// Alertmanager on `host`, gossiping with every other monitoring host.
pub fn alertmanager_unit(cluster: &Cluster, host: &Host) -> RenderResult {
    let cluster_listen = listen_address(host, ALERTMANAGER_CLUSTER_PORT);
    let advertise_flag = if cluster_listen.starts_with(':') {
        format!(
            " --cluster.advertise-address={}",
            host_port(&host.address, ALERTMANAGER_CLUSTER_PORT)
        )
    } else {
        String::new()
    };
    capstan_templates::render(
        "monitoring/alertmanager.service",
        AlertmanagerUnit {
            name: &host.name,
            user: ALERTMANAGER_USER,
            binary: ALERTMANAGER_BINARY,
            config: ALERTMANAGER_CONFIG,
            storage_path: ALERTMANAGER_STORAGE,
            listen: listen_address(host, ALERTMANAGER_PORT),
            cluster_listen: if cluster_listen.starts_with(':') {
                format!("0.0.0.0{cluster_listen}")
            } else {
                cluster_listen
            },
            advertise_flag,
            peer_flags: prometheus_hosts(cluster)
                .into_iter()
                .filter(|peer| peer.name != host.name)
                .map(|peer| {
                    format!(
                        " --cluster.peer={}",
                        host_port(&peer.private_address, ALERTMANAGER_CLUSTER_PORT)
                    )
                })
                .collect(),
        },
    )
}

#[derive(Serialize)]
struct CertExpiry<'a> {
    textfile_dir: &'a str,
    globs: &'a [&'a str],
    script: &'a str,
}

/// The certificate expiry script and its oneshot service and hourly timer: (script, service, timer).
pub fn cert_expiry_files() -> Result<(String, String, String), capstan_templates::TemplateError> {
    let values = CertExpiry {
        textfile_dir: TEXTFILE_DIR,
        globs: CERTIFICATE_GLOBS,
        script: CERT_EXPIRY_SCRIPT,
    };
    Ok((
        capstan_templates::render("monitoring/capstan-cert-expiry.sh", &values)?,
        capstan_templates::render("monitoring/capstan-cert-expiry.service", &values)?,
        capstan_templates::render("monitoring/capstan-cert-expiry.timer", &values)?,
    ))
}

/// Prometheus's retention flag value.
pub fn retention(cluster: &Cluster) -> String {
    format!("{}d", cluster.monitoring.retention_days)
}

#[derive(Serialize)]
struct PrometheusUnit<'a> {
    replica: &'a str,
    user: &'a str,
    binary: &'a str,
    config: &'a str,
    storage_path: String,
    retention: String,
    listen: String,
}

pub fn prometheus_unit(cluster: &Cluster, host: &Host) -> RenderResult {
    capstan_templates::render(
        "monitoring/prometheus.service",
        PrometheusUnit {
            replica: &host.name,
            user: PROMETHEUS_USER,
            binary: PROMETHEUS_BINARY,
            config: PROMETHEUS_CONFIG,
            storage_path: cluster.monitoring.storage_path.display().to_string(),
            retention: retention(cluster),
            listen: listen_address(host, PROMETHEUS_PORT),
        },
    )
}

#[derive(Serialize)]
struct NodeExporterUnit<'a> {
    user: &'a str,
    binary: &'a str,
    listen: String,
    textfile_dir: &'a str,
}

pub fn node_exporter_unit(host: &Host) -> RenderResult {
    capstan_templates::render(
        "monitoring/node_exporter.service",
        NodeExporterUnit {
            user: NODE_EXPORTER_USER,
            binary: NODE_EXPORTER_BINARY,
            listen: listen_address(host, NODE_EXPORTER_PORT),
            textfile_dir: TEXTFILE_DIR,
        },
    )
}

/// A shell command creating system user `name` (no home, no login), and the check that it exists.
pub fn system_user(name: &str) -> (String, String) {
    (
        format!(
            "useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {name}"
        ),
        format!("id -u {name} >/dev/null 2>&1"),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Three etcd hosts (one with a separate private address), two of them monitoring, one node.
    pub(crate) fn sample_cluster(extra: &str) -> Cluster {
        let text = format!(
            "cluster: {{name: demo}}\nssh: {{agent: true}}\nhosts:\n\
             - {{name: e1, address: 10.0.0.11, roles: [etcd, monitoring]}}\n\
             - {{name: e2, address: 10.0.0.12, private_address: 192.168.0.12, roles: [etcd, monitoring]}}\n\
             - {{name: e3, address: 10.0.0.13, roles: [etcd]}}\n\
             - {{name: n1, address: 10.0.0.21, roles: [node]}}\n{extra}"
        );
        capstan_inventory::parse_str(&text, "inventory.yaml", std::path::Path::new("/inv")).unwrap()
    }

    fn target(job: &str, address: &str) -> ScrapeTarget {
        ScrapeTarget {
            job: job.into(),
            address: address.into(),
            scheme: "http",
            path: "/metrics",
        }
    }

    #[test]
    fn own_targets_are_node_exporter_everywhere_and_each_prometheus() {
        let cluster = sample_cluster("");
        let addresses: Vec<String> = own_targets(&cluster)
            .iter()
            .map(|t| format!("{} {}", t.job, t.address))
            .collect();
        assert_eq!(
            addresses,
            [
                "node 10.0.0.11:9100",
                "node 192.168.0.12:9100",
                "node 10.0.0.13:9100",
                "node 10.0.0.21:9100",
                "prometheus 10.0.0.11:9090",
                "prometheus 192.168.0.12:9090",
                "alertmanager 10.0.0.11:9093",
                "alertmanager 192.168.0.12:9093",
            ]
        );
    }

    #[test]
    fn targets_group_into_jobs_and_a_mixed_job_is_refused() {
        let jobs = scrape_jobs(&[
            target("node", "a:9100"),
            target("etcd", "a:2381"),
            target("node", "b:9100"),
        ])
        .unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].targets, ["a:9100", "b:9100"]);
        let mut tls = target("node", "c:9100");
        tls.scheme = "https";
        let error = scrape_jobs(&[target("node", "a:9100"), tls]).unwrap_err();
        assert!(error.contains("scrape job `node`"), "{error}");
    }

    #[test]
    fn listen_on_the_private_address_or_everywhere_for_names() {
        let cluster = sample_cluster("");
        assert_eq!(listen_address(&cluster.hosts[1], 9100), "192.168.0.12:9100");
        let mut named = cluster.hosts[0].clone();
        named.private_address = "e1.internal".into();
        assert_eq!(listen_address(&named, 9100), ":9100");
        named.private_address = "fd00::1".into();
        assert_eq!(listen_address(&named, 9090), "[fd00::1]:9090");
    }

    #[test]
    fn replicas_differ_only_in_the_replica_label() {
        let cluster = sample_cluster("");
        let jobs = scrape_jobs(&own_targets(&cluster)).unwrap();
        let one = prometheus_config(&cluster, "e1", &jobs).unwrap();
        let two = prometheus_config(&cluster, "e2", &jobs).unwrap();
        let differing: Vec<(&str, &str)> = one.lines().zip(two.lines()).filter(|(a, b)| a != b).collect();
        assert_eq!(differing, [("    replica: \"e1\"", "    replica: \"e2\"")]);
    }

    #[test]
    fn units_carry_the_inventory_settings() {
        let cluster = sample_cluster("monitoring: {retention_days: 30, storage_path: /srv/prometheus}\n");
        let unit = prometheus_unit(&cluster, &cluster.hosts[1]).unwrap();
        assert!(unit.contains("--storage.tsdb.path=/srv/prometheus "), "{unit}");
        assert!(unit.contains("--storage.tsdb.retention.time=30d "), "{unit}");
        assert!(unit.contains("--web.listen-address=192.168.0.12:9090"), "{unit}");
        assert!(unit.contains("User=prometheus"), "{unit}");
        let unit = node_exporter_unit(&cluster.hosts[0]).unwrap();
        assert!(
            unit.contains("--collector.textfile.directory=/var/lib/prometheus/node-exporter"),
            "{unit}"
        );
        assert!(unit.contains("User=node_exporter"), "{unit}");
    }

    #[test]
    fn every_replica_alerts_every_alertmanager_without_its_replica_label() {
        let cluster = sample_cluster("");
        let config = prometheus_config(&cluster, "e1", &[]).unwrap();
        assert!(
            config.contains("targets: [\"10.0.0.11:9093\", \"192.168.0.12:9093\"]"),
            "{config}"
        );
        assert!(config.contains("regex: replica"), "{config}");
        assert!(config.contains("- \"/etc/prometheus/rules/*.yml\""), "{config}");
    }

    #[test]
    fn alertmanagers_gossip_with_each_other() {
        let cluster = sample_cluster("");
        let unit = alertmanager_unit(&cluster, &cluster.hosts[1]).unwrap();
        assert!(unit.contains("--web.listen-address=192.168.0.12:9093"), "{unit}");
        assert!(unit.contains("--cluster.listen-address=192.168.0.12:9094"), "{unit}");
        assert!(unit.contains(" --cluster.peer=10.0.0.11:9094\n"), "{unit}");
        assert!(!unit.contains("--cluster.peer=192.168.0.12"), "{unit}");
        assert!(!unit.contains("advertise"), "{unit}");
        let mut named = cluster.clone();
        named.hosts[0].private_address = "e1.internal".into();
        let unit = alertmanager_unit(&named, &named.hosts[0]).unwrap();
        assert!(
            unit.contains("--cluster.listen-address=0.0.0.0:9094 --cluster.advertise-address=10.0.0.11:9094"),
            "{unit}"
        );
    }

    #[test]
    fn receivers_route_by_severity() {
        let cluster = sample_cluster(
            "monitoring:\n  smtp: {smarthost: 'mail:587', from: am@example.com}\n  receivers:\n\
             \x20   - {name: hook, webhooks: ['http://10.0.0.1:9999/']}\n\
             \x20   - {name: mail, emails: [ops@example.com], severities: [critical]}\n",
        );
        let config = alertmanager_config(&cluster).unwrap();
        assert!(config.contains("smtp_smarthost: \"mail:587\""), "{config}");
        assert!(config.contains("- \"severity=~\\\"critical|warning\\\"\""), "{config}");
        assert!(config.contains("- \"severity=~\\\"critical\\\"\""), "{config}");
        assert!(config.contains("- to: \"ops@example.com\""), "{config}");
        assert!(!config.contains("smtp_auth"), "{config}");
        let none = alertmanager_config(&sample_cluster("")).unwrap();
        assert!(!none.contains("smtp"), "{none}");
        assert!(none.contains("receiver: \"capstan-unrouted\""), "{none}");
    }

    #[test]
    fn smtp_authentication_names_the_password_file_only() {
        let cluster = sample_cluster(
            "monitoring:\n  smtp: {smarthost: 'mail:587', from: am@example.com, username: alerts, password_env: CAPSTAN_TEST_SMTP}\n\
             \x20 receivers:\n    - {name: mail, emails: [ops@example.com]}\n",
        );
        let config = alertmanager_config(&cluster).unwrap();
        assert!(config.contains("smtp_auth_username: \"alerts\""), "{config}");
        assert!(
            config.contains(&format!("smtp_auth_password_file: \"{SMTP_PASSWORD_FILE}\"")),
            "{config}"
        );
        assert!(!config.contains("CAPSTAN_TEST_SMTP"), "{config}");
    }

    #[test]
    fn alert_for_replaces_every_rules_wait() {
        let own = alert_rules(&sample_cluster("")).unwrap();
        assert!(own.contains("for: \"10m\"") && own.contains("for: \"3m\""), "{own}");
        let short = alert_rules(&sample_cluster("monitoring: {alert_for: 10s}\n")).unwrap();
        let waits: Vec<&str> = short.lines().filter(|l| l.trim_start().starts_with("for:")).collect();
        assert!(!waits.is_empty());
        assert!(waits.iter().all(|l| l.trim() == "for: \"10s\""), "{waits:?}");
        // Prometheus's own templating survives minijinja.
        assert!(short.contains("{{ $labels.instance }}"), "{short}");
    }
}
