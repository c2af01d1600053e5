//! The etcd member configuration file and systemd unit, as data plus rendering.
//!
//! [`MemberConfig`] holds every value the `etcd/etcd.conf.yml` template prints, already computed
//! (URLs, the initial-cluster string), so the template stays a flat list of keys and the logic is
//! tested here. The file only uses keys that etcd 3.4 and 3.5 read the same way.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

pub const DEFAULT_CLIENT_PORT: u16 = 2379;
pub const DEFAULT_PEER_PORT: u16 = 2380;
pub const DEFAULT_METRICS_PORT: u16 = 2381;
pub const DEFAULT_CONFIG_FILE: &str = "/etc/etcd/etcd.conf.yml";
pub const DEFAULT_PKI_DIR: &str = "/etc/etcd/pki";
pub const DEFAULT_ETCD_BINARY: &str = "/usr/local/bin/etcd";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/etcd";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("`{0}` is not a member of the etcd cluster")]
    UnknownMember(String),
    #[error("etcd member `{0}` is listed twice")]
    DuplicateMember(String),
    #[error("etcd member name must not be empty")]
    EmptyMemberName,
    #[error("etcd member `{name}` has an empty address")]
    EmptyAddress { name: String },
    #[error("etcd member `{name}` uses port 0 for {what}")]
    ZeroPort { name: String, what: &'static str },
    #[error("the initial cluster token must not be empty")]
    EmptyToken,
    #[error(transparent)]
    Render(#[from] capstan_templates::TemplateError),
}

/// One member as the other members see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMember {
    pub name: String,
    /// The member's private address (IP or DNS name): what peers and clients connect to.
    pub address: String,
    pub client_port: u16,
    pub peer_port: u16,
}

impl ClusterMember {
    /// A member on the default ports.
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Self {
        ClusterMember {
            name: name.into(),
            address: address.into(),
            client_port: DEFAULT_CLIENT_PORT,
            peer_port: DEFAULT_PEER_PORT,
        }
    }

    pub fn peer_url(&self) -> String {
        https_url(&self.address, self.peer_port)
    }

    pub fn client_url(&self) -> String {
        https_url(&self.address, self.client_port)
    }

    /// The address etcd binds to. etcd only binds IP addresses, so a member known by DNS name
    /// listens on all interfaces.
    fn listen_ip(&self) -> IpAddr {
        self.address.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::EmptyMemberName);
        }
        if self.address.is_empty() {
            return Err(ConfigError::EmptyAddress {
                name: self.name.clone(),
            });
        }
        for (port, what) in [(self.client_port, "the client port"), (self.peer_port, "the peer port")] {
            if port == 0 {
                return Err(ConfigError::ZeroPort {
                    name: self.name.clone(),
                    what,
                });
            }
        }
        Ok(())
    }
}

pub fn host_for_url(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host.to_string(),
    }
}

fn https_url(host: &str, port: u16) -> String {
    format!("https://{}:{port}", host_for_url(host))
}

fn http_url(host: &str, port: u16) -> String {
    format!("http://{}:{port}", host_for_url(host))
}

/// `name=peer-url,...` as etcd's `initial-cluster` wants it.
pub fn initial_cluster(members: &[ClusterMember]) -> String {
    members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Where the certificates live on a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PkiPaths {
    pub ca_file: String,
    pub server_cert_file: String,
    pub server_key_file: String,
    pub peer_cert_file: String,
    pub peer_key_file: String,
}

impl PkiPaths {
    /// The standard file names under `dir` (capstan uses [`DEFAULT_PKI_DIR`]).
    pub fn under(dir: &str) -> Self {
        let dir = dir.trim_end_matches('/');
        PkiPaths {
            ca_file: format!("{dir}/ca.crt"),
            server_cert_file: format!("{dir}/server.crt"),
            server_key_file: format!("{dir}/server.key"),
            peer_cert_file: format!("{dir}/peer.crt"),
            peer_key_file: format!("{dir}/peer.key"),
        }
    }
}

/// `new` when bootstrapping the cluster, `existing` when joining a running one after `member add`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialClusterState {
    New,
    Existing,
}

/// Per-member knobs that don't come from the member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSettings {
    pub data_dir: String,
    pub pki: PkiPaths,
    /// Plain-HTTP metrics/health listener on the member's private address and 127.0.0.1; `None`
    /// disables it.
    pub metrics_port: Option<u16>,
    /// Hours of history kept by periodic auto-compaction.
    pub auto_compaction_retention_hours: u32,
    pub quota_backend_bytes: u64,
    pub snapshot_count: u64,
    pub log_level: String,
}

impl Default for MemberSettings {
    fn default() -> Self {
        MemberSettings {
            data_dir: DEFAULT_DATA_DIR.to_string(),
            pki: PkiPaths::under(DEFAULT_PKI_DIR),
            metrics_port: Some(DEFAULT_METRICS_PORT),
            auto_compaction_retention_hours: 1,
            // 8 GiB, etcd's documented maximum recommended quota.
            quota_backend_bytes: 8 * 1024 * 1024 * 1024,
            snapshot_count: 10_000,
            log_level: "info".to_string(),
        }
    }
}

/// Everything `etcd/etcd.conf.yml` prints for one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberConfig {
    pub name: String,
    pub data_dir: String,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_metrics_urls: Vec<String>,
    pub initial_cluster: String,
    pub initial_cluster_state: InitialClusterState,
    pub initial_cluster_token: String,
    pub tls: PkiPaths,
    pub auto_compaction_retention: String,
    pub quota_backend_bytes: u64,
    pub snapshot_count: u64,
    pub log_level: String,
}

impl MemberConfig {
    /// The configuration of member `this` in a cluster of `members`.
    ///
    /// For [`InitialClusterState::Existing`], `members` must be the membership as etcd reports it
    /// after `member add` (every current member plus the new one).
    pub fn new(
        cluster_token: &str,
        members: &[ClusterMember],
        this: &str,
        state: InitialClusterState,
        settings: &MemberSettings,
    ) -> Result<Self, ConfigError> {
        if cluster_token.is_empty() {
            return Err(ConfigError::EmptyToken);
        }
        let mut names = BTreeSet::new();
        for member in members {
            member.validate()?;
            if !names.insert(member.name.as_str()) {
                return Err(ConfigError::DuplicateMember(member.name.clone()));
            }
        }
        let me = members
            .iter()
            .find(|m| m.name == this)
            .ok_or_else(|| ConfigError::UnknownMember(this.to_string()))?;

        let listen_ip = me.listen_ip();
        let mut listen_client_urls = vec![https_url(&listen_ip.to_string(), me.client_port)];
        // Local tools (health checks, etcdctl on the host) use 127.0.0.1; binding it twice fails.
        if !listen_ip.is_loopback() && !listen_ip.is_unspecified() {
            listen_client_urls.push(https_url("127.0.0.1", me.client_port));
        }
        // Metrics only (no keys): on the member's private address for monitoring, and on
        // 127.0.0.1 for local checks (upgrade facts).
        let listen_metrics_urls = match settings.metrics_port {
            Some(port) if !listen_ip.is_loopback() && !listen_ip.is_unspecified() => {
                vec![http_url(&listen_ip.to_string(), port), http_url("127.0.0.1", port)]
            }
            // A member known by name listens on every address (0.0.0.0), which covers both.
            Some(port) => vec![http_url(&listen_ip.to_string(), port)],
            None => Vec::new(),
        };

        Ok(MemberConfig {
            name: me.name.clone(),
            data_dir: settings.data_dir.clone(),
            listen_peer_urls: vec![https_url(&listen_ip.to_string(), me.peer_port)],
            initial_advertise_peer_urls: vec![me.peer_url()],
            listen_client_urls,
            advertise_client_urls: vec![me.client_url()],
            listen_metrics_urls,
            initial_cluster: initial_cluster(members),
            initial_cluster_state: state,
            initial_cluster_token: cluster_token.to_string(),
            tls: settings.pki.clone(),
            auto_compaction_retention: settings.auto_compaction_retention_hours.to_string(),
            quota_backend_bytes: settings.quota_backend_bytes,
            snapshot_count: settings.snapshot_count,
            log_level: settings.log_level.clone(),
        })
    }
}

/// Render `/etc/etcd/etcd.conf.yml` for one member.
pub fn render_member_config(config: &MemberConfig) -> Result<String, ConfigError> {
    Ok(capstan_templates::render("etcd/etcd.conf.yml", config)?)
}

/// What the `etcd/etcd.service` unit needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitConfig {
    pub cluster_name: String,
    pub etcd_binary: String,
    pub config_file: String,
}

impl UnitConfig {
    pub fn new(cluster_name: &str) -> Self {
        UnitConfig {
            cluster_name: cluster_name.to_string(),
            etcd_binary: DEFAULT_ETCD_BINARY.to_string(),
            config_file: DEFAULT_CONFIG_FILE.to_string(),
        }
    }
}

/// Render `/etc/systemd/system/etcd.service`.
pub fn render_unit(unit: &UnitConfig) -> Result<String, ConfigError> {
    Ok(capstan_templates::render("etcd/etcd.service", unit)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn three_members() -> Vec<ClusterMember> {
        vec![
            ClusterMember::new("demo-1", "192.168.0.11"),
            ClusterMember::new("demo-2", "192.168.0.12"),
            ClusterMember::new("demo-3", "etcd-3.internal"),
        ]
    }

    #[test]
    fn renders_bootstrap_member_config() {
        let config = MemberConfig::new(
            "demo-etcd",
            &three_members(),
            "demo-1",
            InitialClusterState::New,
            &MemberSettings::default(),
        )
        .unwrap();
        expect![[r##"
            # Managed by capstan; changes here are overwritten on the next `capstan apply`.
            # Only keys understood identically by etcd 3.4 and 3.5 are used.
            name: "demo-1"
            data-dir: "/var/lib/etcd"

            listen-peer-urls: "https://192.168.0.11:2380"
            initial-advertise-peer-urls: "https://192.168.0.11:2380"
            listen-client-urls: "https://192.168.0.11:2379,https://127.0.0.1:2379"
            advertise-client-urls: "https://192.168.0.11:2379"
            listen-metrics-urls: "http://192.168.0.11:2381,http://127.0.0.1:2381"

            initial-cluster: "demo-1=https://192.168.0.11:2380,demo-2=https://192.168.0.12:2380,demo-3=https://etcd-3.internal:2380"
            initial-cluster-state: "new"
            initial-cluster-token: "demo-etcd"
            strict-reconfig-check: true

            client-transport-security:
              cert-file: "/etc/etcd/pki/server.crt"
              key-file: "/etc/etcd/pki/server.key"
              trusted-ca-file: "/etc/etcd/pki/ca.crt"
              client-cert-auth: true
              auto-tls: false
            peer-transport-security:
              cert-file: "/etc/etcd/pki/peer.crt"
              key-file: "/etc/etcd/pki/peer.key"
              trusted-ca-file: "/etc/etcd/pki/ca.crt"
              client-cert-auth: true
              auto-tls: false

            auto-compaction-mode: periodic
            auto-compaction-retention: "1"
            quota-backend-bytes: 8589934592
            snapshot-count: 10000

            logger: zap
            log-level: "info"
            log-outputs: [stderr]
        "##]].assert_eq(&render_member_config(&config).unwrap());
    }

    #[test]
    fn metrics_listen_on_the_private_address_and_loopback() {
        let urls = |member: &str, members: &[ClusterMember]| {
            MemberConfig::new(
                "t",
                members,
                member,
                InitialClusterState::New,
                &MemberSettings::default(),
            )
            .unwrap()
            .listen_metrics_urls
        };
        assert_eq!(
            urls("demo-2", &three_members()),
            ["http://192.168.0.12:2381", "http://127.0.0.1:2381"]
        );
        assert_eq!(urls("demo-3", &three_members()), ["http://0.0.0.0:2381"]);
        assert_eq!(
            urls("local", &[ClusterMember::new("local", "127.0.0.1")]),
            ["http://127.0.0.1:2381"]
        );
        assert_eq!(
            urls("v6", &[ClusterMember::new("v6", "fd00::11")]),
            ["http://[fd00::11]:2381", "http://127.0.0.1:2381"]
        );
    }

    #[test]
    fn member_known_by_dns_name_listens_on_all_interfaces_and_joins_existing_cluster() {
        let settings = MemberSettings {
            metrics_port: None,
            ..MemberSettings::default()
        };
        let config = MemberConfig::new(
            "demo-etcd",
            &three_members(),
            "demo-3",
            InitialClusterState::Existing,
            &settings,
        )
        .unwrap();
        expect![[r##"
            # Managed by capstan; changes here are overwritten on the next `capstan apply`.
            # Only keys understood identically by etcd 3.4 and 3.5 are used.
            name: "demo-3"
            data-dir: "/var/lib/etcd"

            listen-peer-urls: "https://0.0.0.0:2380"
            initial-advertise-peer-urls: "https://etcd-3.internal:2380"
            listen-client-urls: "https://0.0.0.0:2379"
            advertise-client-urls: "https://etcd-3.internal:2379"

            initial-cluster: "demo-1=https://192.168.0.11:2380,demo-2=https://192.168.0.12:2380,demo-3=https://etcd-3.internal:2380"
            initial-cluster-state: "existing"
            initial-cluster-token: "demo-etcd"
            strict-reconfig-check: true

            client-transport-security:
              cert-file: "/etc/etcd/pki/server.crt"
              key-file: "/etc/etcd/pki/server.key"
              trusted-ca-file: "/etc/etcd/pki/ca.crt"
              client-cert-auth: true
              auto-tls: false
            peer-transport-security:
              cert-file: "/etc/etcd/pki/peer.crt"
              key-file: "/etc/etcd/pki/peer.key"
              trusted-ca-file: "/etc/etcd/pki/ca.crt"
              client-cert-auth: true
              auto-tls: false

            auto-compaction-mode: periodic
            auto-compaction-retention: "1"
            quota-backend-bytes: 8589934592
            snapshot-count: 10000

            logger: zap
            log-level: "info"
            log-outputs: [stderr]
        "##]].assert_eq(&render_member_config(&config).unwrap());
    }

    #[test]
    fn loopback_member_binds_127_0_0_1_once() {
        let members = vec![ClusterMember {
            client_port: 32379,
            peer_port: 32380,
            ..ClusterMember::new("local", "127.0.0.1")
        }];
        let config = MemberConfig::new(
            "t",
            &members,
            "local",
            InitialClusterState::New,
            &MemberSettings::default(),
        )
        .unwrap();
        assert_eq!(config.listen_client_urls, ["https://127.0.0.1:32379"]);
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        let members = vec![ClusterMember::new("v6", "fd00::11")];
        let config = MemberConfig::new(
            "t",
            &members,
            "v6",
            InitialClusterState::New,
            &MemberSettings::default(),
        )
        .unwrap();
        assert_eq!(config.initial_cluster, "v6=https://[fd00::11]:2380");
        assert_eq!(
            config.listen_client_urls,
            ["https://[fd00::11]:2379", "https://127.0.0.1:2379"]
        );
    }

    #[test]
    fn invalid_member_lists_are_rejected() {
        let settings = MemberSettings::default();
        let state = InitialClusterState::New;
        let err = MemberConfig::new("t", &three_members(), "demo-9", state, &settings).unwrap_err();
        assert!(
            matches!(err, ConfigError::UnknownMember(ref n) if n == "demo-9"),
            "{err}"
        );

        let mut duplicated = three_members();
        duplicated.push(ClusterMember::new("demo-1", "192.168.0.99"));
        let err = MemberConfig::new("t", &duplicated, "demo-1", state, &settings).unwrap_err();
        assert!(
            matches!(err, ConfigError::DuplicateMember(ref n) if n == "demo-1"),
            "{err}"
        );

        let zero_port = vec![ClusterMember {
            peer_port: 0,
            ..ClusterMember::new("a", "10.0.0.1")
        }];
        let err = MemberConfig::new("t", &zero_port, "a", state, &settings).unwrap_err();
        assert_eq!(err.to_string(), "etcd member `a` uses port 0 for the peer port");

        let err = MemberConfig::new("", &three_members(), "demo-1", state, &settings).unwrap_err();
        assert!(matches!(err, ConfigError::EmptyToken));
    }

    #[test]
    fn renders_unit() {
        expect![[r#"
            # Managed by capstan; changes here are overwritten on the next `capstan apply`.
            [Unit]
            Description=etcd key-value store (demo)
            Documentation=https://etcd.io/docs/
            After=network-online.target
            Wants=network-online.target

            [Service]
            Type=notify
            ExecStart=/usr/local/bin/etcd --config-file=/etc/etcd/etcd.conf.yml
            Restart=on-failure
            RestartSec=5s
            LimitNOFILE=65536
            TimeoutStartSec=120s

            [Install]
            WantedBy=multi-user.target
        "#]]
        .assert_eq(&render_unit(&UnitConfig::new("demo")).unwrap());
    }
}
