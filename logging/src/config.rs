//! What the logging component writes, decided purely from the inventory: budgets, the loopback
//! port of each sender's journal-remote instance, and every rendered file (templates in
//! `templates/files/logging/`).

use std::net::IpAddr;

use capstan_inventory::{Cluster, Host, Role};
use serde::Serialize;

use crate::pki::{CA_CERT, CLIENT_CERT, CLIENT_KEY, PKI_DIR, SERVER_PEM};

/// The aggregators' mutual-TLS port (systemd-journal-remote's registered HTTPS port).
pub const UPLOAD_PORT: u16 = 19532;
/// Sender number `i` (inventory order) is stored by the journal-remote instance on
/// `127.0.0.1:REMOTE_PORT_BASE + i`.
pub const REMOTE_PORT_BASE: u16 = 19600;

pub const UPLOAD_BINARY: &str = "/lib/systemd/systemd-journal-upload";
pub const REMOTE_BINARY: &str = "/lib/systemd/systemd-journal-remote";
pub const HAPROXY_BINARY: &str = "/usr/sbin/haproxy";
/// The Debian packages: every host uploads, `logging` hosts store (and terminate TLS with haproxy).
pub const UPLOAD_PACKAGES: &[&str] = &["systemd-journal-remote"];
pub const AGGREGATOR_PACKAGES: &[&str] = &["systemd-journal-remote", "haproxy"];

pub const JOURNALD_DROPIN: &str = "/etc/systemd/journald.conf.d/capstan-logging.conf";
pub const JOURNALD_DROPIN_DIR: &str = "/etc/systemd/journald.conf.d";
pub const JOURNALD_SERVICE: &str = "systemd-journald";
/// journald's persistent storage.
pub const JOURNAL_DIR: &str = "/var/log/journal";

/// The uploaders' system user (group `systemd-journal` reads the journal).
pub const UPLOAD_USER: &str = "capstan-journal-upload";
pub const UPLOAD_UNIT: &str = "capstan-journal-upload@.service";
pub const STATE_DIR_NAME: &str = "capstan-journal-upload";
pub const STATE_DIR: &str = "/var/lib/capstan-journal-upload";
pub const REMOTE_UNIT: &str = "capstan-journal-remote@.service";
/// Where the aggregators keep every sender's journal, one directory per sender (inventory name).
pub const REMOTE_DIR: &str = "/var/log/journal/remote";
pub const TLS_UNIT: &str = "capstan-logging-tls.service";
pub const TLS_SERVICE: &str = "capstan-logging-tls";
pub const HAPROXY_CONFIG: &str = "/etc/capstan/logging/haproxy.cfg";
pub const VACUUM_SCRIPT: &str = "/usr/local/lib/capstan/logging-vacuum.sh";
pub const VACUUM_SERVICE_UNIT: &str = "capstan-journal-vacuum.service";
pub const VACUUM_TIMER_UNIT: &str = "capstan-journal-vacuum.timer";
pub const VACUUM_INTERVAL: &str = "30s";
pub const LAG_SCRIPT: &str = "/usr/local/lib/capstan/logging-lag.sh";
pub const LAG_SERVICE_UNIT: &str = "capstan-logging-lag.service";
pub const LAG_TIMER_UNIT: &str = "capstan-logging-lag.timer";
pub const LAG_INTERVAL: &str = "30s";
pub const SCRIPT_DIR: &str = "/usr/local/lib/capstan";
pub const METRICS_FILE: &str = capstan_monitoring::textfile_path!("capstan_logging.prom");
/// Prometheus rules for the lag, next to Prometheus's configuration on `monitoring` hosts.
pub const ALERT_RULES_DIR: &str = "/etc/prometheus/rules";
pub const ALERT_RULES_FILE: &str = "/etc/prometheus/rules/capstan-logging.rules.yml";
/// Alert when the oldest unacknowledged entry is older than this.
pub const LAG_ALERT_SECONDS: u64 = 900;
/// How soon a stopped uploader is started again.
pub const UPLOAD_RESTART_SEC: &str = "10s";

pub type RenderResult = Result<String, capstan_templates::TemplateError>;

/// The `logging` hosts, in inventory order.
pub fn aggregators(cluster: &Cluster) -> Vec<&Host> {
    cluster.hosts_with_role(Role::Logging).collect()
}

/// The uploader instance for `aggregator`.
pub fn upload_service(aggregator: &str) -> String {
    format!("capstan-journal-upload@{aggregator}")
}

pub fn upload_env_path(aggregator: &str) -> String {
    format!("{PKI_DIR}/upload-{aggregator}.env")
}

/// The journal-remote instance storing `sender`'s journal.
pub fn remote_service(sender: &str) -> String {
    format!("capstan-journal-remote@{sender}")
}

pub fn remote_env_path(sender: &str) -> String {
    format!("{PKI_DIR}/remote-{sender}.env")
}

/// `host:port` for a URL or a listen address (IPv6 in brackets).
pub fn host_port(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// The URL a host's uploader ships to on `aggregator`.
pub fn upload_url(aggregator: &Host) -> String {
    format!("https://{}", host_port(&aggregator.private_address, UPLOAD_PORT))
}

/// Each sender (every host) and the loopback port of its journal-remote instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sender {
    pub name: String,
    pub port: u16,
}

pub fn senders(cluster: &Cluster) -> Vec<Sender> {
    cluster
        .hosts
        .iter()
        .enumerate()
        .map(|(i, host)| Sender {
            name: host.name.clone(),
            port: REMOTE_PORT_BASE + i as u16,
        })
        .collect()
}

/// Each sender's share of an aggregator's budget, and the size at which its active file is rolled
/// over so vacuuming can reach it (a quarter of the share, at least 8 MiB).
pub fn per_sender_budget(cluster: &Cluster) -> (u64, u64) {
    let senders = cluster.hosts.len().max(1) as u64;
    let share = (u64::from(cluster.logging.aggregator_max_mib) / senders).max(16);
    (share, (share / 4).max(8))
}

/// journald's largest file: a sixteenth of the budget (journald deletes whole archived files),
/// between 8 and 128 MiB.
pub fn journal_file_mib(cluster: &Cluster) -> u64 {
    (u64::from(cluster.logging.journal_max_mib) / 16).clamp(8, 128)
}

pub fn journald_dropin(cluster: &Cluster) -> RenderResult {
    #[derive(Serialize)]
    struct Ctx {
        max_mib: u32,
        max_file_mib: u64,
    }
    capstan_templates::render(
        "logging/journald.conf",
        Ctx {
            max_mib: cluster.logging.journal_max_mib,
            max_file_mib: journal_file_mib(cluster),
        },
    )
}

pub fn upload_unit() -> RenderResult {
    #[derive(Serialize)]
    struct Ctx {
        config_dir: &'static str,
        upload_binary: &'static str,
        state_dir: &'static str,
        state_dir_name: &'static str,
        key: &'static str,
        cert: &'static str,
        ca: &'static str,
        user: &'static str,
        restart_sec: &'static str,
    }
    capstan_templates::render(
        "logging/capstan-journal-upload@.service",
        Ctx {
            config_dir: PKI_DIR,
            upload_binary: UPLOAD_BINARY,
            state_dir: STATE_DIR,
            state_dir_name: STATE_DIR_NAME,
            key: CLIENT_KEY,
            cert: CLIENT_CERT,
            ca: CA_CERT,
            user: UPLOAD_USER,
            restart_sec: UPLOAD_RESTART_SEC,
        },
    )
}

pub fn upload_env(aggregator: &Host) -> RenderResult {
    #[derive(Serialize)]
    struct Ctx<'a> {
        aggregator: &'a str,
        url: String,
    }
    capstan_templates::render(
        "logging/upload.env",
        Ctx {
            aggregator: &aggregator.name,
            url: upload_url(aggregator),
        },
    )
}

pub fn remote_unit() -> RenderResult {
    #[derive(Serialize)]
    struct Ctx {
        config_dir: &'static str,
        remote_binary: &'static str,
        remote_dir: &'static str,
    }
    capstan_templates::render(
        "logging/capstan-journal-remote@.service",
        Ctx {
            config_dir: PKI_DIR,
            remote_binary: REMOTE_BINARY,
            remote_dir: REMOTE_DIR,
        },
    )
}

pub fn remote_env(sender: &Sender) -> RenderResult {
    #[derive(Serialize)]
    struct Ctx<'a> {
        sender: &'a str,
        port: u16,
    }
    capstan_templates::render(
        "logging/remote.env",
        Ctx {
            sender: &sender.name,
            port: sender.port,
        },
    )
}

/// Where an aggregator's TLS listener binds: its private address when that is an IP address,
/// every address otherwise.
pub fn tls_listen(host: &Host) -> String {
    match host.private_address.parse::<IpAddr>() {
        Ok(_) => host_port(&host.private_address, UPLOAD_PORT),
        Err(_) => format!(":{UPLOAD_PORT}"),
    }
}

pub fn haproxy_config(host: &Host, senders: &[Sender]) -> RenderResult {
    #[derive(Serialize)]
    struct Ctx<'a> {
        listen: String,
        server_pem: &'static str,
        ca: &'static str,
        senders: &'a [Sender],
    }
    capstan_templates::render(
        "logging/haproxy.cfg",
        Ctx {
            listen: tls_listen(host),
            server_pem: SERVER_PEM,
            ca: CA_CERT,
            senders,
        },
    )
}

pub fn tls_unit() -> RenderResult {
    #[derive(Serialize)]
    struct Ctx {
        haproxy: &'static str,
        config: &'static str,
    }
    capstan_templates::render(
        "logging/capstan-logging-tls.service",
        Ctx {
            haproxy: HAPROXY_BINARY,
            config: HAPROXY_CONFIG,
        },
    )
}

pub fn vacuum_script(cluster: &Cluster) -> RenderResult {
    #[derive(Serialize)]
    struct Ctx {
        budget_mib: u32,
        per_host_mib: u64,
        roll_mib: u64,
        remote_dir: &'static str,
    }
    let (per_host_mib, roll_mib) = per_sender_budget(cluster);
    capstan_templates::render(
        "logging/vacuum.sh",
        Ctx {
            budget_mib: cluster.logging.aggregator_max_mib,
            per_host_mib,
            roll_mib,
            remote_dir: REMOTE_DIR,
        },
    )
}

/// A oneshot service running `script`, and its timer every `interval`: (service, timer).
pub fn timer_units(
    name: &str,
    script: &str,
    interval: &str,
) -> Result<(String, String), capstan_templates::TemplateError> {
    #[derive(Serialize)]
    struct Service<'a> {
        script: &'a str,
    }
    #[derive(Serialize)]
    struct Timer<'a> {
        interval: &'a str,
    }
    Ok((
        capstan_templates::render(&format!("logging/{name}.service"), Service { script })?,
        capstan_templates::render(&format!("logging/{name}.timer"), Timer { interval })?,
    ))
}

pub fn lag_script(cluster: &Cluster) -> RenderResult {
    #[derive(Serialize)]
    struct Ctx {
        metrics_file: &'static str,
        state_dir: &'static str,
        aggregators: Vec<String>,
    }
    capstan_templates::render(
        "logging/lag.sh",
        Ctx {
            metrics_file: METRICS_FILE,
            state_dir: STATE_DIR,
            aggregators: aggregators(cluster).iter().map(|h| h.name.clone()).collect(),
        },
    )
}

/// The Prometheus rules monitoring loads when it is enabled.
pub fn alert_rules() -> RenderResult {
    #[derive(Serialize)]
    struct Ctx {
        lag_alert_seconds: u64,
    }
    capstan_templates::render(
        "logging/alerts.rules.yml",
        Ctx {
            lag_alert_seconds: LAG_ALERT_SECONDS,
        },
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_cluster(extra: &str) -> Cluster {
        let text = format!(
            "cluster: {{name: demo}}\nssh: {{agent: true}}\nhosts:\n\
             - {{name: e1, address: 10.0.0.11, roles: [etcd, logging]}}\n\
             - {{name: e2, address: 10.0.0.12, private_address: 192.168.0.12, roles: [node]}}\n\
             - {{name: n1, address: 10.0.0.21, roles: [node, logging]}}\n{extra}"
        );
        capstan_inventory::parse_str(&text, "inventory.yaml", std::path::Path::new("/inv")).unwrap()
    }

    #[test]
    fn budgets_come_from_the_inventory() {
        let cluster = sample_cluster("logging: {journal_max_mib: 512, aggregator_max_mib: 300}\n");
        let dropin = journald_dropin(&cluster).unwrap();
        assert!(
            dropin.contains("Storage=persistent\nSystemMaxUse=512M\nSystemMaxFileSize=32M\n"),
            "{dropin}"
        );
        assert_eq!(per_sender_budget(&cluster), (100, 25));
        let script = vacuum_script(&cluster).unwrap();
        assert!(script.contains("--vacuum-size=100M"), "{script}");
        assert!(script.contains("-gt $((25 * 1024 * 1024))"), "{script}");
        let defaults = sample_cluster("");
        assert_eq!(defaults.logging.journal_max_mib, 2048);
        assert_eq!(journal_file_mib(&defaults), 128);
    }

    #[test]
    fn every_sender_has_its_own_backend_and_port() {
        let cluster = sample_cluster("");
        let senders = senders(&cluster);
        assert_eq!(
            senders.iter().map(|s| (s.name.as_str(), s.port)).collect::<Vec<_>>(),
            [("e1", 19600), ("e2", 19601), ("n1", 19602)]
        );
        let config = haproxy_config(&cluster.hosts[0], &senders).unwrap();
        assert!(config.contains("bind 10.0.0.11:19532 ssl crt /etc/capstan/logging/aggregator.pem ca-file /etc/capstan/logging/ca.crt verify required"), "{config}");
        assert!(config.contains("use_backend sender_%[ssl_c_s_dn(CN)]"), "{config}");
        assert!(
            config.contains("backend sender_e2\n    server journal_remote 127.0.0.1:19601\n"),
            "{config}"
        );
        assert_eq!(remote_env(&senders[2]).unwrap().lines().last(), Some("PORT=19602"));
    }

    #[test]
    fn uploads_go_to_each_aggregators_private_address() {
        let cluster = sample_cluster("");
        let names: Vec<&str> = aggregators(&cluster).iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["e1", "n1"]);
        assert_eq!(upload_url(&cluster.hosts[1]), "https://192.168.0.12:19532");
        let env = upload_env(&cluster.hosts[0]).unwrap();
        assert!(env.ends_with("URL=https://10.0.0.11:19532\n"), "{env}");
        let unit = upload_unit().unwrap();
        for line in [
            "Restart=always",
            "StartLimitIntervalSec=0",
            "WatchdogSec=3min",
            "--save-state=/var/lib/capstan-journal-upload/%i.state --url=${URL}",
        ] {
            assert!(unit.contains(line), "{line}: {unit}");
        }
        let lag = lag_script(&cluster).unwrap();
        assert!(lag.contains("/var/lib/capstan-journal-upload/n1.state"), "{lag}");
        assert!(
            lag.contains("/var/lib/prometheus/node-exporter/capstan_logging.prom"),
            "{lag}"
        );
    }

    #[test]
    fn alert_rules_keep_prometheus_templating() {
        let rules = alert_rules().unwrap();
        assert!(rules.contains("capstan_logging_upload_lag_seconds > 900"), "{rules}");
        assert!(rules.contains("{{ $labels.aggregator }}"), "{rules}");
    }
}
