//! What the monitoring component writes, decided purely from the inventory and the components'
//! scrape targets: Prometheus's configuration per replica and both units. Templates are in
//! `templates/files/monitoring/`.

use std::net::IpAddr;

use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::component::{Component, ScrapeTarget};
use serde::Serialize;

use crate::TEXTFILE_DIR;

pub const NODE_EXPORTER_PORT: u16 = 9100;
pub const PROMETHEUS_PORT: u16 = 9090;

pub const BIN_DIR: &str = "/usr/local/bin";
pub const NODE_EXPORTER_BINARY: &str = "/usr/local/bin/node_exporter";
pub const PROMETHEUS_BINARY: &str = "/usr/local/bin/prometheus";
pub const CONFIG_DIR: &str = "/etc/prometheus";
pub const PROMETHEUS_CONFIG: &str = "/etc/prometheus/prometheus.yml";
/// The parent of [`TEXTFILE_DIR`] and of the default storage path.
pub const STATE_DIR: &str = "/var/lib/prometheus";

pub const NODE_EXPORTER_SERVICE: &str = "node_exporter";
pub const PROMETHEUS_SERVICE: &str = "prometheus";
pub const NODE_EXPORTER_UNIT: &str = "node_exporter.service";
pub const PROMETHEUS_UNIT: &str = "prometheus.service";
/// Dedicated system users (no login, no home).
pub const NODE_EXPORTER_USER: &str = "node_exporter";
pub const PROMETHEUS_USER: &str = "prometheus";

pub const SCRAPE_INTERVAL: &str = "15s";
pub const SCRAPE_TIMEOUT: &str = "10s";
pub const EVALUATION_INTERVAL: &str = "15s";

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

/// The monitoring component's own targets: node_exporter on every host, Prometheus on each
/// monitoring host (each replica scrapes both).
pub fn own_targets(cluster: &Cluster) -> Vec<ScrapeTarget> {
    let node = cluster.hosts.iter().map(|host| ScrapeTarget {
        job: "node".into(),
        address: host_port(&host.private_address, NODE_EXPORTER_PORT),
        scheme: "http",
        path: "/metrics",
    });
    let prometheus = prometheus_hosts(cluster).into_iter().map(|host| ScrapeTarget {
        job: "prometheus".into(),
        address: host_port(&host.private_address, PROMETHEUS_PORT),
        scheme: "http",
        path: "/metrics",
    });
    node.chain(prometheus).collect()
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
        },
    )
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
}
