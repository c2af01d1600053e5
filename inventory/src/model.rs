//! The resolved cluster model: every default applied, every path absolute.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::values::format_duration;

/// Pinned etcd version used when `versions.etcd` is omitted.
pub const DEFAULT_ETCD_VERSION: &str = "3.5.33";
pub const DEFAULT_ETCD_DATA_DIR: &str = "/var/lib/etcd";
pub const DEFAULT_SSH_USER: &str = "root";
pub const DEFAULT_SSH_PORT: u16 = 22;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);
pub const DEFAULT_KEEP_LAST: u32 = 7;
/// Container runtime releases used when `versions` omits them (pinned upstream checksums).
pub const DEFAULT_CONTAINERD_VERSION: &str = "1.7.34";
pub const DEFAULT_RUNC_VERSION: &str = "1.4.3";
pub const DEFAULT_CNI_PLUGINS_VERSION: &str = "1.9.1";
/// crun is only installed for the lab-only runtime setting; upstream publishes no checksum capstan pins,
/// so it comes from a mirror.
pub const DEFAULT_CRUN_VERSION: &str = "1.8.1";
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
pub const DEFAULT_NODE_PREFIX: u8 = 24;
pub const DEFAULT_SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// Monitoring releases used when `versions` omits them. capstan pins no upstream checksum for them
/// yet, so they come from a mirror (the lab's builds these versions from Debian's packages).
pub const DEFAULT_PROMETHEUS_VERSION: &str = "2.42.0";
pub const DEFAULT_NODE_EXPORTER_VERSION: &str = "1.5.0";
pub const DEFAULT_ALERTMANAGER_VERSION: &str = "0.25.0";
/// How long Prometheus keeps samples when `monitoring.retention_days` is omitted.
pub const DEFAULT_RETENTION_DAYS: u32 = 15;
/// Prometheus's TSDB directory on `monitoring` hosts when `monitoring.storage_path` is omitted.
pub const DEFAULT_PROMETHEUS_STORAGE: &str = "/var/lib/prometheus/data";
/// Kubernetes (`kubernetes:`): the release installed, and the cluster's service network.
pub const DEFAULT_KUBERNETES_VERSION: &str = "1.32.5";
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
pub const DEFAULT_DNS_IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.11.3";
/// journald's on-disk budget on every host when `logging.journal_max_mib` is omitted: a day of a
/// busy host's logs at the lab's measured rates with a wide margin (docs/logging.md, "Sizing").
pub const DEFAULT_JOURNAL_MAX_MIB: u32 = 2048;
/// The stored journals' budget on each `logging` host when `logging.aggregator_max_mib` is omitted.
pub const DEFAULT_AGGREGATOR_MAX_MIB: u32 = 16384;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    pub name: String,
    pub hosts: Vec<Host>,
    pub versions: Versions,
    pub artifacts: Artifacts,
    pub etcd: EtcdSettings,
    pub backup: Option<BackupSettings>,
    pub drill: DrillSettings,
    pub network: NetworkSettings,
    pub runtime: RuntimeSettings,
    /// Prometheus on the `monitoring` hosts (`monitoring`).
    pub monitoring: MonitoringSettings,
    /// How clients reach the Kubernetes API (`api_endpoint`).
    pub api_endpoint: ApiEndpoint,
    /// Kubernetes itself (`kubernetes`).
    pub kubernetes: KubernetesSettings,
    /// Journals kept on every host and on the `logging` hosts (`logging`).
    pub logging: LoggingSettings,
    /// The inventory file this model was read from.
    pub source_path: PathBuf,
    /// Problems that do not reject the inventory, such as an `identity_file` that does not exist.
    #[serde(skip)]
    pub warnings: crate::Diagnostics,
}

impl Cluster {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|host| host.name == name)
    }

    /// Hosts carrying `role`, in inventory order.
    pub fn hosts_with_role(&self, role: Role) -> impl Iterator<Item = &Host> + '_ {
        self.hosts.iter().filter(move |host| host.has_role(role))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    pub name: String,
    /// What capstan connects to over SSH.
    pub address: String,
    /// What cluster members use to reach this host; equals `address` unless set.
    pub private_address: String,
    pub roles: BTreeSet<Role>,
    pub labels: BTreeMap<String, String>,
    /// Effective settings: the inventory's `ssh` defaults with this host's overrides applied.
    pub ssh: SshSettings,
}

impl Host {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Etcd,
    ControlPlane,
    Node,
    Monitoring,
    Logging,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Etcd,
        Role::ControlPlane,
        Role::Node,
        Role::Monitoring,
        Role::Logging,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Etcd => "etcd",
            Role::ControlPlane => "control_plane",
            Role::Node => "node",
            Role::Monitoring => "monitoring",
            Role::Logging => "logging",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshSettings {
    pub user: String,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    /// Offer keys from the agent at `SSH_AUTH_SOCK`.
    pub agent: bool,
    pub sudo: SudoMode,
    pub known_hosts: KnownHostsPolicy,
    pub known_hosts_file: PathBuf,
    #[serde(serialize_with = "serialize_duration")]
    pub connect_timeout: Duration,
    /// Interval between keepalive probes; zero disables them.
    #[serde(serialize_with = "serialize_duration")]
    pub keepalive: Duration,
    pub bastion: Option<Bastion>,
}

impl SshSettings {
    /// Whether commands must be wrapped in sudo for this connection.
    pub fn needs_sudo(&self) -> bool {
        match self.sudo {
            SudoMode::Auto => self.user != "root",
            SudoMode::Always => true,
            SudoMode::Never => false,
        }
    }
}

/// A jump host; `user` and `identity_file` fall back to the target host's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bastion {
    pub address: String,
    pub port: u16,
    pub user: String,
    pub identity_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SudoMode {
    /// Use sudo when the SSH user is not root.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KnownHostsPolicy {
    /// Refuse hosts whose key is missing from or different in the known_hosts file.
    Strict,
    /// Record keys of hosts never seen before; still refuse changed keys.
    AcceptNew,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Versions {
    pub etcd: String,
    pub containerd: String,
    pub runc: String,
    pub crun: String,
    pub cni_plugins: String,
    pub prometheus: String,
    pub node_exporter: String,
    pub alertmanager: String,
}

/// Prometheus on the hosts with role `monitoring` (each one a full replica).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonitoringSettings {
    /// Days of samples kept (`--storage.tsdb.retention.time`).
    pub retention_days: u32,
    /// The TSDB directory on the hosts (absolute).
    pub storage_path: PathBuf,
    /// Where Alertmanager sends alerts (`receivers`); none: alerts are only visible in its UI/API.
    pub receivers: Vec<AlertReceiver>,
    /// The mail relay for email receivers (`smtp`).
    pub smtp: Option<SmtpSettings>,
    /// When set (`alert_for`, a Prometheus duration such as `10s`), every shipped alert rule waits
    /// this long instead of its own `for:` (labs and tests, to see alerts fire quickly).
    pub alert_for: Option<String>,
}

/// Alert severities capstan's rules use; `none` is the Watchdog's.
pub const ALERT_SEVERITIES: &[&str] = &["critical", "warning", "info", "none"];
/// The severities a receiver gets when it names none.
pub const DEFAULT_RECEIVER_SEVERITIES: &[&str] = &["critical", "warning"];

/// One Alertmanager receiver: alerts of `severities` go to every webhook and email address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertReceiver {
    pub name: String,
    /// http(s) URLs that get Alertmanager's webhook JSON.
    pub webhooks: Vec<String>,
    /// Addresses mailed through `monitoring.smtp`.
    pub emails: Vec<String>,
    /// Routed by the alerts' `severity` label (each of [`ALERT_SEVERITIES`]).
    pub severities: Vec<String>,
}

/// The SMTP relay Alertmanager mails through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SmtpSettings {
    /// `host:port`.
    pub smarthost: String,
    /// The sender address.
    pub from: String,
    /// STARTTLS required (default true).
    pub require_tls: bool,
    /// Authentication at the relay (`username` with `password_file` or `password_env`).
    pub auth: Option<SmtpAuth>,
}

/// SMTP authentication: the password is read on the operator's machine when capstan runs, never
/// written into the inventory's model or any output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SmtpAuth {
    pub username: String,
    pub password: SecretSource,
}

/// Where a secret comes from on the operator's machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    /// A file (`password_file`, absolute or relative to the inventory); its content without the
    /// trailing line end.
    File(PathBuf),
    /// An environment variable (`password_env`) of the capstan process.
    Env(String),
}

impl Default for MonitoringSettings {
    fn default() -> Self {
        MonitoringSettings {
            retention_days: DEFAULT_RETENTION_DAYS,
            storage_path: PathBuf::from(DEFAULT_PROMETHEUS_STORAGE),
            receivers: Vec::new(),
            smtp: None,
            alert_for: None,
        }
    }
}

/// Kubernetes itself (`kubernetes`): the version of the official release tarballs installed, the
/// service network (its first address is the `kubernetes` service, its tenth cluster DNS), the
/// cluster's DNS domain and image, and how secrets are encrypted at rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubernetesSettings {
    pub version: String,
    /// IPv4 network in canonical form (`10.96.0.0/12`), disjoint from the pod network.
    pub service_cidr: String,
    pub cluster_domain: String,
    pub dns_image: String,
    pub secrets_encryption: SecretsEncryption,
    /// The API server writes an audit log (`/var/log/kubernetes/audit.log`, metadata level).
    pub audit_log: bool,
}

/// The EncryptionConfiguration provider that encrypts secrets in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretsEncryption {
    Secretbox,
    Aescbc,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            version: DEFAULT_KUBERNETES_VERSION.into(),
            service_cidr: DEFAULT_SERVICE_CIDR.into(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            dns_image: DEFAULT_DNS_IMAGE.into(),
            secrets_encryption: SecretsEncryption::Secretbox,
            audit_log: false,
        }
    }
}

/// Journal budgets (`logging`): every host's own journal is the buffer while the aggregators are
/// unreachable; the `logging` hosts keep every host's shipped journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoggingSettings {
    /// journald's `SystemMaxUse` on every host, in MiB.
    pub journal_max_mib: u32,
    /// What each `logging` host keeps of all hosts' journals together, in MiB.
    pub aggregator_max_mib: u32,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        LoggingSettings {
            journal_max_mib: DEFAULT_JOURNAL_MAX_MIB,
            aggregator_max_mib: DEFAULT_AGGREGATOR_MAX_MIB,
        }
    }
}

impl KubernetesSettings {
    /// The `n`th address of the service network (1: the `kubernetes` service, 10: cluster DNS).
    /// Validation guarantees the network is IPv4 and holds at least 16 addresses.
    pub fn service_ip(&self, n: u32) -> std::net::Ipv4Addr {
        let net: ipnet::Ipv4Net = self.service_cidr.parse().unwrap_or_else(|_| {
            DEFAULT_SERVICE_CIDR
                .parse()
                .expect("the default service network parses")
        });
        std::net::Ipv4Addr::from(u32::from(net.network()) + n)
    }

    /// The `kubernetes` service's ClusterIP (the first address of the service network).
    pub fn apiserver_service_ip(&self) -> std::net::Ipv4Addr {
        self.service_ip(1)
    }

    /// Cluster DNS's ClusterIP (the tenth address, as kubeadm chooses).
    pub fn dns_service_ip(&self) -> std::net::Ipv4Addr {
        self.service_ip(10)
    }
}

/// The pod network: every `node`/`control_plane` host gets a `/node_prefix` of `pod_cidr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkSettings {
    /// IPv4 network in canonical form (`10.244.0.0/16`): host bits are zero.
    pub pod_cidr: String,
    pub node_prefix: u8,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            pod_cidr: DEFAULT_POD_CIDR.into(),
            node_prefix: DEFAULT_NODE_PREFIX,
        }
    }
}

/// The container runtime on `node` and `control_plane` hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeSettings {
    pub sandbox_image: String,
    /// Registry host (`docker.io`, `registry.k8s.io`) → mirror URLs tried in order before it.
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
    pub lab_cgroupless: LabCgroupless,
    /// Turn swap off (now and in /etc/fstab) instead of refusing hosts that have it on.
    pub disable_swap: bool,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            sandbox_image: DEFAULT_SANDBOX_IMAGE.into(),
            registry_mirrors: BTreeMap::new(),
            lab_cgroupless: LabCgroupless::Never,
            disable_swap: false,
        }
    }
}

/// The lab-only runtime setting: crun without cgroups, for systemd-nspawn machines whose cgroup
/// controllers are read-only. Never used on a host whose facts do not show exactly that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabCgroupless {
    Never,
    /// Only on hosts detected as systemd-nspawn machines with read-only cgroup controllers.
    Auto,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Artifacts {
    /// Replaces the `scheme://host` prefix of every upstream artifact URL; no trailing slash.
    pub mirror: Option<String>,
    /// One apt sources line (`deb [options] URI SUITE [COMPONENT…]`) for the Debian packages capstan
    /// installs (haproxy, keepalived, …): an air-gapped site's own repository, or the lab's. When
    /// unset, hosts use the repositories they already have.
    pub apt_source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdSettings {
    pub allow_even_members: bool,
    pub data_dir: PathBuf,
}

/// Port of the API endpoint every host serves on 127.0.0.1 (and an external load balancer's
/// default port).
pub const DEFAULT_API_PORT: u16 = 6443;

/// How clients outside the cluster reach the Kubernetes API. Every host always runs the local
/// endpoint (haproxy on 127.0.0.1); this says what fronts the control plane for everyone else.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ApiEndpoint {
    /// Only the per-host local endpoint; outside clients use a control-plane host's address.
    #[default]
    Local,
    /// A virtual IP held by one control-plane host at a time (keepalived, unicast VRRP).
    Vip {
        /// An IPv4 address, in canonical form.
        address: String,
        /// The network interface carrying the VIP; by default the one holding the host's
        /// `private_address`.
        interface: Option<String>,
        /// VRRP virtual router id (1-255); by default derived from the cluster name.
        router_id: Option<u8>,
    },
    /// A load balancer capstan does not manage, in front of the control-plane hosts.
    External { address: String, port: u16 },
}

impl ApiEndpoint {
    /// The address outside clients use, when there is one besides the control-plane hosts.
    pub fn address(&self) -> Option<&str> {
        match self {
            ApiEndpoint::Local => None,
            ApiEndpoint::Vip { address, .. } | ApiEndpoint::External { address, .. } => Some(address),
        }
    }
}

/// What every restore drill of this cluster checks, besides capstan's own verification.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct DrillSettings {
    /// Keys (or prefixes ending in `*`) that must exist in every restored copy.
    pub expect_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSettings {
    pub target: BackupTarget,
    /// age recipients (`age1...` or `ssh-...` public keys) every backup is encrypted to.
    pub recipients: Vec<String>,
    pub retention: Retention,
    /// systemd `OnCalendar` expression; no timer is installed when absent.
    pub schedule: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupTarget {
    /// `file:///absolute/dir`
    File { path: PathBuf },
    /// `s3://bucket/prefix`; `prefix` has no leading or trailing slash and may be empty.
    S3 { bucket: String, prefix: String },
}

impl fmt::Display for BackupTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupTarget::File { path } => write!(f, "file://{}", path.display()),
            BackupTarget::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            BackupTarget::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl Serialize for BackupTarget {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// How many backups to keep; a backup survives if any rule keeps it. Zero disables a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub keep_last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_last: DEFAULT_KEEP_LAST,
            daily: 0,
            weekly: 0,
            monthly: 0,
        }
    }
}

fn serialize_duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*duration))
}
