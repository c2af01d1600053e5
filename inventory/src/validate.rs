//! Step two: turn the marked YAML tree into a [`Cluster`], collecting every problem on the way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::diagnostic::Sink;
use crate::model::*;
use crate::values::{self, show};
use crate::yaml::{Node, Pos};

mod kubernetes;
mod logging;
mod monitoring;
mod nodes;

/// Accepted `connect_timeout` values: long enough for any handshake, short enough to be a timeout.
const CONNECT_TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(600));
/// Accepted `keepalive` intervals (`0s` disables keepalive).
const KEEPALIVE_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(3600));

/// Where relative and `~` paths in the file resolve to.
pub(crate) struct PathContext {
    pub base_dir: PathBuf,
    pub home: Option<PathBuf>,
}

pub(crate) fn cluster(
    sink: &mut Sink,
    root: Option<&Node>,
    paths: &PathContext,
    source_path: PathBuf,
) -> Option<Cluster> {
    let empty = Node {
        pos: Pos { line: 1, column: 1 },
        value: crate::yaml::Value::Map(Vec::new()),
    };
    let root = root.unwrap_or(&empty);
    let mut cx = Checker { sink, paths };
    const TOP: &[&str] = &[
        "cluster",
        "ssh",
        "hosts",
        "versions",
        "artifacts",
        "etcd",
        "backup",
        "drill",
        "network",
        "runtime",
        "api_endpoint",
        "monitoring",
        "kubernetes",
        "logging",
    ];
    let top = cx.section(root, "the inventory", TOP)?;

    let name = top
        .require(&mut cx, "cluster", "a mapping with `name`")
        .and_then(|node| {
            let section = cx.section(node, "`cluster`", &["name"])?;
            let name = section.require(&mut cx, "name", "the cluster name")?;
            cx.checked(name, "name", values::check_cluster_name)
        });
    let ssh_defaults = match top.get("ssh") {
        Some(node) => cx.ssh(node, "`ssh`", "ssh").unwrap_or(SshPartial {
            had_errors: true,
            ..SshPartial::default()
        }),
        None => SshPartial::default(),
    };
    let versions = cx.versions(top.get("versions"));
    let network = top.get("network").map(|node| cx.network(node));
    let runtime = top.get("runtime").map(|node| cx.runtime(node)).unwrap_or_default();
    let artifacts = top.get("artifacts").map(|node| cx.artifacts(node));
    let monitoring = top
        .get("monitoring")
        .map(|node| cx.monitoring(node))
        .unwrap_or_default();
    let logging = top.get("logging").map(|node| cx.logging(node)).unwrap_or_default();
    let etcd = top.get("etcd").map(|node| cx.etcd(node)).unwrap_or(EtcdSettings {
        allow_even_members: false,
        data_dir: PathBuf::from(DEFAULT_ETCD_DATA_DIR),
    });
    let backup = top.get("backup").and_then(|node| cx.backup(node));
    let drill = top.get("drill").map(|node| cx.drill(node)).unwrap_or_default();
    let hosts = top
        .require(&mut cx, "hosts", "a list of hosts")
        .and_then(|node| cx.hosts(node, &ssh_defaults, etcd.allow_even_members));
    let network = cx.network_fits(network, hosts.as_deref());
    let api_endpoint = top
        .get("api_endpoint")
        .and_then(|node| cx.api_endpoint(node, hosts.as_deref()));
    let kubernetes = top
        .get("kubernetes")
        .map(|node| cx.kubernetes(node, &network))
        .unwrap_or_default();

    // A partially converted model is never handed out: any diagnostic means no cluster.
    if cx.sink.has_errors() {
        return None;
    }
    Some(Cluster {
        name: name?,
        hosts: hosts?,
        versions,
        artifacts: artifacts.unwrap_or_default(),
        etcd,
        backup,
        drill,
        network,
        runtime,
        monitoring,
        api_endpoint: api_endpoint.unwrap_or_default(),
        kubernetes,
        logging,
        source_path,
        warnings: Default::default(),
    })
}

struct Checker<'s, 'p> {
    sink: &'s mut Sink,
    paths: &'p PathContext,
}

/// The known keys of one mapping, after unknown and duplicate keys were reported.
struct Section<'n> {
    pos: Pos,
    /// Where the mapping is, such as `` `hosts[2]` (host `a`) ``, for missing-key messages.
    path: String,
    entries: Vec<(&'static str, &'n Node)>,
}

impl<'n> Section<'n> {
    /// The value of `key`; an explicit null counts as absent so that `key:` means "use the default".
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(known, _)| *known == key)
            .map(|(_, node)| *node)
            .filter(|node| !node.is_null())
    }

    fn require(&self, cx: &mut Checker, key: &str, expected: &str) -> Option<&'n Node> {
        let found = self.get(key);
        if found.is_none() {
            cx.sink.error(
                self.pos,
                format!("missing required key `{key}` in {}: expected {expected}", self.path),
            );
        }
        found
    }
}

/// Partially specified SSH settings: the `ssh` defaults or one host's overrides.
#[derive(Debug, Clone, Default)]
struct SshPartial {
    user: Option<String>,
    port: Option<u16>,
    identity_file: Option<PathBuf>,
    agent: Option<bool>,
    sudo: Option<SudoMode>,
    known_hosts: Option<KnownHostsPolicy>,
    known_hosts_file: Option<PathBuf>,
    connect_timeout: Option<Duration>,
    keepalive: Option<Duration>,
    bastion: Option<BastionPartial>,
    /// Some value was rejected, so a missing setting may just be an invalid one.
    had_errors: bool,
}

#[derive(Debug, Clone)]
struct BastionPartial {
    address: String,
    port: u16,
    user: Option<String>,
    identity_file: Option<PathBuf>,
}

const SSH_KEYS: &[&str] = &[
    "user",
    "port",
    "identity_file",
    "agent",
    "sudo",
    "known_hosts",
    "known_hosts_file",
    "connect_timeout",
    "keepalive",
    "bastion",
];

/// Position and value of a field that must be unique across hosts.
struct Seen {
    value: String,
    pos: Pos,
}

/// What checking one host found: the host when it is valid, and the parts that cross-host
/// checks need even when it is not.
#[derive(Default)]
struct HostCheck {
    host: Option<Host>,
    name: Option<Seen>,
    address: Option<Seen>,
    /// The etcd peer address (`private_address`, else `address`), and whether it was set explicitly.
    peer: Option<(Seen, bool)>,
    roles: Option<BTreeSet<Role>>,
}

/// `port:22` read as one scalar: the key and value a missing space joined.
fn missing_space(text: &str) -> Option<(&str, &str)> {
    crate::yaml::missing_space_after_colon(text).map(|(_, key, value)| (key, value))
}

impl Checker<'_, '_> {
    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.sink.error(pos, message);
    }

    /// Checks that `node` is a mapping whose keys are all in `known` and appear once.
    fn section<'n>(&mut self, node: &'n Node, what: &str, known: &[&'static str]) -> Option<Section<'n>> {
        let mut section = Section {
            pos: node.pos,
            path: what.to_string(),
            entries: Vec::new(),
        };
        if node.is_null() {
            return Some(section);
        }
        let Some(entries) = node.as_map() else {
            let missing = node.as_str().and_then(missing_space);
            let note = missing
                .map(|(key, value)| {
                    format!(
                        "; a space is missing after the colon (`{}: {}`)",
                        show(key),
                        show(value)
                    )
                })
                .unwrap_or_default();
            let hint = missing.map(|(key, value)| format!("write `{}: {}`", show(key), show(value)));
            self.sink.error_with_hint(
                node.pos,
                format!(
                    "expected a mapping for {what} (keys: {}), found {}{note}",
                    known.join(", "),
                    node.describe()
                ),
                hint,
            );
            return None;
        };
        let mut first_seen: HashMap<&str, Pos> = HashMap::new();
        for (key, value) in entries {
            let Some(name) = key.as_str() else {
                self.error(
                    key.pos,
                    format!("expected a key name in {what}, found {}", key.describe()),
                );
                continue;
            };
            if let Some(first) = first_seen.get(name) {
                self.error(
                    key.pos,
                    format!(
                        "duplicate key `{}` in {what} (first set at line {})",
                        show(name),
                        first.line
                    ),
                );
                continue;
            }
            first_seen.insert(name, key.pos);
            match known.iter().find(|k| **k == name) {
                Some(known_key) => section.entries.push((known_key, value)),
                None => {
                    let hint = match values::closest(name, known.iter().copied()) {
                        Some(suggestion) => format!("did you mean `{suggestion}`?"),
                        None => format!("expected one of: {}", known.join(", ")),
                    };
                    self.error(key.pos, format!("unknown key `{}` in {what}; {hint}", show(name)));
                }
            }
        }
        Some(section)
    }

    fn string(&mut self, node: &Node, key: &str) -> Option<String> {
        match node.as_str() {
            Some(text) => Some(text.to_string()),
            _ => {
                self.error(
                    node.pos,
                    format!("`{key}`: expected a string, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// A string that must also pass `check`, whose error text becomes the message.
    fn checked(&mut self, node: &Node, key: &str, check: fn(&str) -> Result<(), String>) -> Option<String> {
        let text = self.string(node, key)?;
        match check(&text) {
            Ok(()) => Some(text),
            Err(message) => {
                self.error(node.pos, format!("`{key}`: {message}"));
                None
            }
        }
    }

    fn unsigned(&mut self, node: &Node, key: &str, min: u64, max: u64) -> Option<u64> {
        let parsed = match &node.value {
            crate::yaml::Value::Scalar { text, plain: true } => text.parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(value) if (min..=max).contains(&value) => Some(value),
            _ => {
                self.error(
                    node.pos,
                    format!(
                        "`{key}`: expected an integer from {min} to {max}, found {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    fn port(&mut self, node: &Node, key: &str) -> Option<u16> {
        self.unsigned(node, key, 1, u16::MAX.into()).map(|port| port as u16)
    }

    fn count(&mut self, node: &Node, key: &str) -> Option<u32> {
        self.unsigned(node, key, 0, u32::MAX.into()).map(|count| count as u32)
    }

    fn boolean(&mut self, node: &Node, key: &str) -> Option<bool> {
        if let crate::yaml::Value::Scalar { text, plain: true } = &node.value {
            match text.as_str() {
                "true" | "True" | "TRUE" => return Some(true),
                "false" | "False" | "FALSE" => return Some(false),
                _ => {}
            }
        }
        self.error(
            node.pos,
            format!("`{key}`: expected `true` or `false`, found {}", node.describe()),
        );
        None
    }

    fn duration(&mut self, node: &Node, key: &str, (min, max): (Duration, Duration)) -> Option<Duration> {
        let text = self.string(node, key)?;
        match values::parse_duration(&text).and_then(|d| values::check_duration_range(d, min, max).map(|()| d)) {
            Ok(duration) => Some(duration),
            Err(message) => {
                self.error(node.pos, format!("`{key}`: {message}"));
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, node: &Node, key: &str, options: &[(&str, T)]) -> Option<T> {
        let text = self.string(node, key)?;
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*value);
        }
        let names: Vec<String> = options.iter().map(|(name, _)| format!("`{name}`")).collect();
        let hint = values::closest(&text, options.iter().map(|(name, _)| *name))
            .map(|suggestion| format!("; did you mean `{suggestion}`?"))
            .unwrap_or_default();
        self.error(
            node.pos,
            format!(
                "`{key}`: expected one of {}, found `{}`{hint}",
                names.join(", "),
                show(&text)
            ),
        );
        None
    }

    /// A path resolved against the inventory's directory, with `~` expanded.
    fn path(&mut self, node: &Node, key: &str) -> Option<PathBuf> {
        let text = self.string(node, key)?;
        match resolve_path(&text, self.paths) {
            Ok(path) if key == "identity_file" && !path.exists() => {
                self.sink.warning(
                    node.pos,
                    format!(
                        "`{key}`: {} does not exist; connecting will fail until it does",
                        show(&path.display().to_string())
                    ),
                    Some("create the key (ssh-keygen) or fix the path".into()),
                );
                Some(path)
            }
            Ok(path) => Some(path),
            Err(message) => {
                self.error(node.pos, format!("`{key}`: {message}"));
                None
            }
        }
    }

    fn list<'n>(&mut self, node: &'n Node, key: &str, expected: &str) -> Option<&'n [Node]> {
        if node.is_null() {
            return Some(&[]);
        }
        let items = node.as_seq();
        if items.is_none() {
            self.error(
                node.pos,
                format!("`{key}`: expected a list of {expected}, found {}", node.describe()),
            );
        }
        items
    }

    /// `path` is where the section is (`` `ssh` `` or `` `hosts[1].ssh` ``), for nested messages.
    fn ssh(&mut self, node: &Node, what: &str, path: &str) -> Option<SshPartial> {
        let errors_before = self.sink.count();
        let mut section = self.section(node, what, SSH_KEYS)?;
        section.path = format!("`{path}`");
        let mut ssh = SshPartial::default();
        for (key, value) in &section.entries {
            if value.is_null() {
                continue;
            }
            match *key {
                "user" => ssh.user = self.checked(value, key, values::check_user),
                "port" => ssh.port = self.port(value, key),
                "identity_file" => ssh.identity_file = self.path(value, key),
                "agent" => ssh.agent = self.boolean(value, key),
                "sudo" => {
                    let modes = [
                        ("auto", SudoMode::Auto),
                        ("always", SudoMode::Always),
                        ("never", SudoMode::Never),
                    ];
                    ssh.sudo = self.choice(value, key, &modes);
                }
                "known_hosts" => {
                    let policies = [
                        ("strict", KnownHostsPolicy::Strict),
                        ("accept-new", KnownHostsPolicy::AcceptNew),
                    ];
                    ssh.known_hosts = self.choice(value, key, &policies);
                }
                "known_hosts_file" => ssh.known_hosts_file = self.path(value, key),
                "connect_timeout" => {
                    ssh.connect_timeout = self.duration(value, key, CONNECT_TIMEOUT_RANGE);
                }
                "keepalive" => ssh.keepalive = self.duration(value, key, KEEPALIVE_RANGE),
                "bastion" => ssh.bastion = self.bastion(value, &format!("{path}.bastion")),
                _ => unreachable!("key list and match arms are in sync"),
            }
        }
        ssh.had_errors = self.sink.count() > errors_before;
        Some(ssh)
    }

    fn bastion(&mut self, node: &Node, path: &str) -> Option<BastionPartial> {
        let mut section = self.section(node, "`bastion`", &["address", "port", "user", "identity_file"])?;
        section.path = format!("`{path}`");
        let address = section
            .require(self, "address", "the jump host's IP address or DNS name")
            .and_then(|node| self.checked(node, "address", values::check_address));
        let port = section.get("port").map(|node| self.port(node, "port"));
        let user = section
            .get("user")
            .map(|node| self.checked(node, "user", values::check_user));
        let identity_file = section
            .get("identity_file")
            .map(|node| self.path(node, "identity_file"));
        Some(BastionPartial {
            address: address?,
            port: port.unwrap_or(Some(DEFAULT_SSH_PORT))?,
            user: user.flatten(),
            identity_file: identity_file.flatten(),
        })
    }

    fn artifacts(&mut self, node: &Node) -> Artifacts {
        let Some(section) = self.section(node, "`artifacts`", &["mirror", "apt_source"]) else {
            return Artifacts::default();
        };
        let mirror = section.get("mirror").and_then(|node| {
            let text = self.string(node, "mirror")?;
            let schemes = ["file:///", "http://", "https://"];
            if schemes.iter().any(|scheme| text.starts_with(scheme)) {
                Some(text.trim_end_matches('/').to_string())
            } else {
                self.error(
                    node.pos,
                    format!(
                        "`mirror`: expected a URL starting with file:///, http:// or https://, found `{}`",
                        show(&text)
                    ),
                );
                None
            }
        });
        let apt_source = section.get("apt_source").and_then(|node| {
            let text = self.string(node, "apt_source")?;
            match values::check_apt_source(&text) {
                Ok(line) => Some(line),
                Err(why) => {
                    self.error(node.pos, format!("`apt_source`: {why}"));
                    None
                }
            }
        });
        Artifacts { mirror, apt_source }
    }

    fn etcd(&mut self, node: &Node) -> EtcdSettings {
        let mut etcd = EtcdSettings {
            allow_even_members: false,
            data_dir: PathBuf::from(DEFAULT_ETCD_DATA_DIR),
        };
        if let Some(section) = self.section(node, "`etcd`", &["allow_even_members", "data_dir"]) {
            if let Some(allow) = section
                .get("allow_even_members")
                .and_then(|n| self.boolean(n, "allow_even_members"))
            {
                etcd.allow_even_members = allow;
            }
            if let Some(node) = section.get("data_dir") {
                match self.string(node, "data_dir") {
                    Some(dir) if dir.starts_with('/') => etcd.data_dir = PathBuf::from(dir),
                    Some(dir) => self.error(
                        node.pos,
                        format!(
                            "`data_dir`: expected an absolute path on the hosts, found `{}`",
                            show(&dir)
                        ),
                    ),
                    None => {}
                }
            }
        }
        etcd
    }

    fn backup(&mut self, node: &Node) -> Option<BackupSettings> {
        let section = self.section(node, "`backup`", &["target", "recipients", "retention", "schedule"])?;
        let target = section
            .require(self, "target", "a file:///path or s3://bucket/prefix URL")
            .and_then(|node| self.backup_target(node));
        let recipients = section
            .require(
                self,
                "recipients",
                "a list of age recipients (backups are always encrypted)",
            )
            .and_then(|node| self.recipients(node));
        let retention = section.get("retention").map(|node| self.retention(node));
        let schedule = section
            .get("schedule")
            .and_then(|node| self.checked(node, "schedule", crate::calendar::check_calendar));
        Some(BackupSettings {
            target: target?,
            recipients: recipients?,
            retention: retention.unwrap_or_default(),
            schedule,
        })
    }

    fn drill(&mut self, node: &Node) -> DrillSettings {
        let mut drill = DrillSettings::default();
        let Some(section) = self.section(node, "`drill`", &["expect_keys"]) else {
            return drill;
        };
        let Some(items) = section
            .get("expect_keys")
            .and_then(|node| self.list(node, "expect_keys", "keys or prefixes ending in `*`"))
        else {
            return drill;
        };
        for item in items {
            let Some(key) = self.string(item, "expect_keys") else {
                continue;
            };
            if key.is_empty() || key == "*" {
                self.error(
                    item.pos,
                    "`expect_keys`: expected a key or a prefix ending in `*` (not empty, not `*` alone)",
                );
            } else {
                drill.expect_keys.push(key);
            }
        }
        drill
    }

    /// `api_endpoint`: `mode` (local, vip, external) and that mode's keys. `hosts` (when they
    /// parsed) are checked against a VIP: control-plane hosts to hold it, none using its address.
    fn api_endpoint(&mut self, node: &Node, hosts: Option<&[Host]>) -> Option<ApiEndpoint> {
        #[derive(Clone, Copy)]
        enum Mode {
            Local,
            Vip,
            External,
        }
        let section = self.section(
            node,
            "`api_endpoint`",
            &["mode", "address", "interface", "router_id", "port"],
        )?;
        let modes = [("local", Mode::Local), ("vip", Mode::Vip), ("external", Mode::External)];
        let mode = match section.get("mode") {
            Some(node) => self.choice(node, "mode", &modes)?,
            None => Mode::Local,
        };
        let allowed: &[&str] = match mode {
            Mode::Local => &["mode"],
            Mode::Vip => &["mode", "address", "interface", "router_id"],
            Mode::External => &["mode", "address", "port"],
        };
        let mode_name = match mode {
            Mode::Local => "local",
            Mode::Vip => "vip",
            Mode::External => "external",
        };
        for (key, value) in &section.entries {
            if !allowed.contains(key) && !value.is_null() {
                self.error(
                    value.pos,
                    format!(
                        "`{key}` does not apply to `api_endpoint.mode: {mode_name}`; expected only: {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
        match mode {
            Mode::Local => Some(ApiEndpoint::Local),
            Mode::External => {
                let address = section
                    .require(self, "address", "the address or DNS name of the load balancer")
                    .and_then(|node| self.checked(node, "address", values::check_address));
                let port = match section.get("port") {
                    Some(node) => self.port(node, "port")?,
                    None => DEFAULT_API_PORT,
                };
                Some(ApiEndpoint::External {
                    address: address?,
                    port,
                })
            }
            Mode::Vip => {
                let address_node = section.require(self, "address", "the virtual IPv4 address")?;
                let address =
                    self.string(address_node, "address")
                        .and_then(|text| match text.parse::<std::net::Ipv4Addr>() {
                            Ok(ip)
                                if !(ip.is_unspecified()
                                    || ip.is_broadcast()
                                    || ip.is_multicast()
                                    || ip.is_loopback()) =>
                            {
                                Some(ip.to_string())
                            }
                            _ => {
                                self.error(
                                    address_node.pos,
                                    format!(
                                        "`address`: expected a unicast IPv4 address for the virtual IP, found `{}`",
                                        show(&text)
                                    ),
                                );
                                None
                            }
                        });
                let interface = section
                    .get("interface")
                    .and_then(|node| self.checked(node, "interface", values::check_interface));
                let router_id = section
                    .get("router_id")
                    .and_then(|node| self.unsigned(node, "router_id", 1, 255))
                    .map(|id| id as u8);
                let address = address?;
                if let Some(hosts) = hosts {
                    if !hosts.iter().any(|h| h.has_role(Role::ControlPlane)) {
                        self.error(
                            address_node.pos,
                            "`api_endpoint.mode: vip` needs hosts to hold the address: expected at least one host with the `control_plane` role",
                        );
                    }
                    if let Some(host) = hosts.iter().find(|h| {
                        [&h.address, &h.private_address]
                            .iter()
                            .any(|a| values::canonical_address(a) == address)
                    }) {
                        self.error(
                            address_node.pos,
                            format!(
                                "`address`: the virtual IP `{address}` is host `{}`'s address; expected an unused address in the hosts' subnet",
                                host.name
                            ),
                        );
                    }
                }
                Some(ApiEndpoint::Vip {
                    address,
                    interface,
                    router_id,
                })
            }
        }
    }

    fn backup_target(&mut self, node: &Node) -> Option<BackupTarget> {
        let text = self.string(node, "target")?;
        let result = if let Some(path) = text.strip_prefix("file://") {
            if path.starts_with('/') && path.len() > 1 {
                Ok(BackupTarget::File {
                    path: PathBuf::from(path.trim_end_matches('/')),
                })
            } else {
                Err(format!(
                    "expected file:///absolute/path (three slashes), found `{}`",
                    show(&text)
                ))
            }
        } else if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            values::check_bucket(bucket).map(|()| BackupTarget::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            })
        } else {
            Err(format!(
                "expected a URL starting with file:/// or s3://, found `{}`",
                show(&text)
            ))
        };
        result
            .map_err(|message| self.error(node.pos, format!("`target`: {message}")))
            .ok()
    }

    fn recipients(&mut self, node: &Node) -> Option<Vec<String>> {
        let items = self.list(node, "recipients", "age recipients")?;
        if items.is_empty() {
            self.error(
                node.pos,
                "`recipients`: expected at least one age recipient; backups are always encrypted",
            );
            return None;
        }
        let mut recipients = Vec::new();
        for item in items {
            let Some(text) = self.string(item, "recipients") else {
                continue;
            };
            match values::check_recipient(&text) {
                Ok(()) => recipients.push(text),
                Err(message) => self.error(item.pos, format!("`recipients`: {message}")),
            }
        }
        (recipients.len() == items.len()).then_some(recipients)
    }

    fn retention(&mut self, node: &Node) -> Retention {
        let mut retention = Retention::default();
        if let Some(section) = self.section(node, "`retention`", &["keep_last", "daily", "weekly", "monthly"]) {
            for (key, value) in &section.entries {
                let Some(count) = self.count(value, key) else {
                    continue;
                };
                match *key {
                    "keep_last" => retention.keep_last = count,
                    "daily" => retention.daily = count,
                    "weekly" => retention.weekly = count,
                    "monthly" => retention.monthly = count,
                    _ => unreachable!("key list and match arms are in sync"),
                }
            }
        }
        retention
    }

    fn hosts(&mut self, node: &Node, defaults: &SshPartial, allow_even_members: bool) -> Option<Vec<Host>> {
        let items = self.list(node, "hosts", "hosts")?;
        let mut hosts = Vec::new();
        // Canonical value -> the spelling and position where it was first used.
        let mut names: HashMap<String, Seen> = HashMap::new();
        let mut addresses: HashMap<String, Seen> = HashMap::new();
        let mut etcd_peers: HashMap<String, (Seen, bool)> = HashMap::new();
        let mut etcd_members = 0usize;
        let mut roles_known = true;
        for (index, item) in items.iter().enumerate() {
            // Uniqueness and the etcd count are checked even for hosts with other errors, so
            // each problem shows up in the first run.
            let checked = self.host(item, index, defaults);
            let is_etcd = checked.roles.as_ref().map(|roles| roles.contains(&Role::Etcd));
            match is_etcd {
                Some(true) => etcd_members += 1,
                Some(false) => {}
                None => roles_known = false,
            }
            let unique = [
                (checked.name, &mut names, "host name"),
                (checked.address, &mut addresses, "address"),
            ];
            for (seen, table, what) in unique {
                let Some(seen) = seen else { continue };
                let canonical = if what == "host name" {
                    seen.value.clone()
                } else {
                    values::canonical_address(&seen.value)
                };
                match table.get(&canonical) {
                    Some(first) if first.value == seen.value => self.sink.error(
                        seen.pos,
                        format!(
                            "duplicate {what} `{}` (first used at line {}); expected each host to have its own",
                            show(&seen.value),
                            first.pos.line
                        ),
                    ),
                    Some(first) => self.sink.error(
                        seen.pos,
                        format!(
                            "duplicate {what} `{}`: the same as `{}` (first used at line {}); expected each host to have its own",
                            show(&seen.value),
                            show(&first.value),
                            first.pos.line
                        ),
                    ),
                    None => {
                        table.insert(canonical, seen);
                    }
                }
            }
            // Two etcd members with one peer address; equal `address`es alone were reported above.
            if let (Some(true), Some((peer, explicit))) = (is_etcd, checked.peer) {
                let canonical = values::canonical_address(&peer.value);
                match etcd_peers.get(&canonical) {
                    Some((first, first_explicit)) if explicit || *first_explicit => {
                        self.sink.error_with_hint(
                            peer.pos,
                            format!(
                                "etcd members share the peer address `{}` (first used at line {}); expected each etcd member to have its own",
                                show(&peer.value),
                                first.pos.line
                            ),
                            Some("etcd peer URLs use `private_address` (or `address` when it is not set)".into()),
                        );
                    }
                    Some(_) => {}
                    None => {
                        etcd_peers.insert(canonical, (peer, explicit));
                    }
                }
            }
            hosts.extend(checked.host);
        }
        // Hosts whose roles could not be read might be etcd members, so the count is unknown.
        if roles_known {
            if etcd_members == 0 {
                self.error(
                    node.pos,
                    "no host has the `etcd` role: expected at least one etcd member (3 for high availability)",
                );
            } else if etcd_members.is_multiple_of(2) && !allow_even_members {
                self.error(
                    node.pos,
                    format!(
                        "{etcd_members} hosts have the `etcd` role: expected an odd number, since an even-sized etcd \
                         cluster tolerates no more failures than one member fewer (set `etcd.allow_even_members: true` to override)"
                    ),
                );
            }
        }
        (hosts.len() == items.len()).then_some(hosts)
    }

    fn host(&mut self, node: &Node, index: usize, defaults: &SshPartial) -> HostCheck {
        const HOST_KEYS: &[&str] = &["name", "address", "private_address", "roles", "labels", "ssh"];
        let Some(mut section) = self.section(node, "a host", HOST_KEYS) else {
            return HostCheck::default();
        };
        section.path = match section.get("name").and_then(Node::as_str) {
            Some(name) => format!("`hosts[{index}]` (host `{}`)", show(name)),
            None => format!("`hosts[{index}]`"),
        };
        let name_node = section.require(self, "name", "a unique host name");
        let name = name_node.and_then(|n| self.checked(n, "name", values::check_host_name));
        let address_node = section.require(self, "address", "an IP address or DNS name to connect to");
        let address = address_node.and_then(|n| self.checked(n, "address", values::check_address));
        let private_node = section.get("private_address");
        let private_address = private_node.map(|n| self.checked(n, "private_address", values::check_address));
        let roles = section
            .require(self, "roles", "a list of roles")
            .and_then(|n| self.roles(n));
        let labels = section
            .get("labels")
            .map(|n| self.labels(n))
            .unwrap_or(Some(BTreeMap::new()));
        let overrides = match section.get("ssh") {
            Some(n) => self.ssh(n, "the host's `ssh`", &format!("hosts[{index}].ssh")),
            None => Some(SshPartial::default()),
        };
        let ssh = overrides.and_then(|overrides| self.effective_ssh(section.pos, defaults, &overrides));

        let seen = |value: Option<String>, node: Option<&Node>| {
            Some(Seen {
                value: value?,
                pos: node?.pos,
            })
        };
        // Where etcd peers reach this host: `private_address`, else `address`.
        let peer = match (&private_address, private_node) {
            (Some(private), Some(node)) => seen(private.clone(), Some(node)).map(|seen| (seen, true)),
            _ => seen(address.clone(), address_node).map(|seen| (seen, false)),
        };
        let host = (|| {
            let address = address.clone()?;
            Some(Host {
                private_address: private_address.unwrap_or_else(|| Some(address.clone()))?,
                roles: roles.clone()?,
                labels: labels?,
                ssh: ssh?,
                name: name.clone()?,
                address,
            })
        })();
        HostCheck {
            host,
            name: seen(name, name_node),
            address: seen(address, address_node),
            peer,
            roles,
        }
    }

    fn roles(&mut self, node: &Node) -> Option<BTreeSet<Role>> {
        let items = self.list(node, "roles", "roles")?;
        let options: Vec<(&str, Role)> = Role::ALL.iter().map(|role| (role.as_str(), *role)).collect();
        if items.is_empty() {
            let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            self.error(
                node.pos,
                format!("`roles`: expected at least one of {}", names.join(", ")),
            );
            return None;
        }
        let mut roles = BTreeSet::new();
        let mut valid = true;
        for item in items {
            match self.choice(item, "roles", &options) {
                Some(role) if !roles.insert(role) => {
                    self.error(item.pos, format!("`roles`: role `{role}` is listed twice"));
                    valid = false;
                }
                Some(_) => {}
                None => valid = false,
            }
        }
        valid.then_some(roles)
    }

    fn labels(&mut self, node: &Node) -> Option<BTreeMap<String, String>> {
        let Some(entries) = node.as_map() else {
            self.error(
                node.pos,
                format!(
                    "`labels`: expected a mapping of names to values, found {}",
                    node.describe()
                ),
            );
            return None;
        };
        let mut labels = BTreeMap::new();
        let mut valid = true;
        for (key, value) in entries {
            match (self.string(key, "labels"), self.string(value, "labels")) {
                (Some(key_text), Some(value)) => {
                    if labels.insert(key_text.clone(), value).is_some() {
                        self.error(key.pos, format!("duplicate label `{}`", show(&key_text)));
                        valid = false;
                    }
                }
                _ => valid = false,
            }
        }
        valid.then_some(labels)
    }

    /// Host overrides win over the `ssh` defaults, which win over built-in defaults.
    fn effective_ssh(&mut self, host_pos: Pos, defaults: &SshPartial, host: &SshPartial) -> Option<SshSettings> {
        let user = host
            .user
            .clone()
            .or_else(|| defaults.user.clone())
            .unwrap_or_else(|| DEFAULT_SSH_USER.into());
        let identity_file = host.identity_file.clone().or_else(|| defaults.identity_file.clone());
        let agent = host.agent.or(defaults.agent).unwrap_or(false);
        if identity_file.is_none() && !agent && !host.had_errors && !defaults.had_errors {
            self.error(
                host_pos,
                "host has no SSH authentication method: expected `ssh.identity_file` or `ssh.agent: true` \
                 (in the `ssh` defaults or on the host)",
            );
            return None;
        }
        if identity_file.is_none() && !agent {
            return None;
        }
        let known_hosts_file = match host
            .known_hosts_file
            .clone()
            .or_else(|| defaults.known_hosts_file.clone())
        {
            Some(file) => file,
            None => match &self.paths.home {
                Some(home) => home.join(".ssh/known_hosts"),
                None => {
                    self.error(
                        host_pos,
                        "cannot locate the default known_hosts file because HOME is not set: expected `ssh.known_hosts_file`",
                    );
                    return None;
                }
            },
        };
        let bastion = host
            .bastion
            .clone()
            .or_else(|| defaults.bastion.clone())
            .map(|b| Bastion {
                address: b.address,
                port: b.port,
                user: b.user.unwrap_or_else(|| user.clone()),
                identity_file: b.identity_file.or_else(|| identity_file.clone()),
            });
        Some(SshSettings {
            port: host.port.or(defaults.port).unwrap_or(DEFAULT_SSH_PORT),
            agent,
            sudo: host.sudo.or(defaults.sudo).unwrap_or(SudoMode::Auto),
            known_hosts: host
                .known_hosts
                .or(defaults.known_hosts)
                .unwrap_or(KnownHostsPolicy::Strict),
            known_hosts_file,
            connect_timeout: host
                .connect_timeout
                .or(defaults.connect_timeout)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            keepalive: host.keepalive.or(defaults.keepalive).unwrap_or(DEFAULT_KEEPALIVE),
            bastion,
            identity_file,
            user,
        })
    }
}

/// Expands `~` and makes relative paths absolute against the inventory's directory.
fn resolve_path(text: &str, paths: &PathContext) -> Result<PathBuf, String> {
    let joined = if text.is_empty() {
        return Err("expected a path, found an empty string".into());
    } else if text == "~" || text.starts_with("~/") {
        let home = paths.home.as_ref().ok_or_else(|| {
            format!(
                "cannot expand `~` in `{}` because HOME is not set; expected an absolute path",
                show(text)
            )
        })?;
        home.join(text.trim_start_matches('~').trim_start_matches('/'))
    } else if text.starts_with('~') {
        return Err(format!(
            "`{}`: only `~/` is expanded; expected `~/...`, a relative or an absolute path",
            show(text)
        ));
    } else {
        paths.base_dir.join(text)
    };
    // Drop `.` components so resolved paths read cleanly; `..` is kept because symlinks make
    // collapsing it unsound without touching the filesystem.
    Ok(joined.components().filter(|c| *c != Component::CurDir).collect())
}

pub(crate) fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}
