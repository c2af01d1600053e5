//! What a node gets: paths, the runtime choice per host (pure, from its facts and the inventory),
//! and every file rendered from the templates in `templates/files/nodes/`.

use std::collections::BTreeMap;

use capstan_inventory::{Cluster, LabCgroupless, RuntimeSettings};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::podcidr::PodSubnets;
use crate::probe::NodeProbe;

pub const BIN_DIR: &str = "/usr/local/bin";
pub const RUNC_PATH: &str = "/usr/local/sbin/runc";
pub const CRUN_PATH: &str = "/usr/local/bin/crun";
/// The lab-only crun wrapper (see `templates/files/nodes/crun-lab-cgroupless.j2`).
pub const CRUN_LAB_WRAPPER: &str = "/usr/local/lib/capstan/crun-lab-cgroupless";
pub const CONTAINERD_CONFIG_DIR: &str = "/etc/containerd";
pub const CONTAINERD_CONFIG_FILE: &str = "/etc/containerd/config.toml";
pub const REGISTRY_CONFIG_DIR: &str = "/etc/containerd/certs.d";
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
pub const CNI_CONFIG_FILE: &str = "/etc/cni/net.d/10-capstan.conflist";
pub const CNI_NETWORK_NAME: &str = "capstan";
pub const CNI_BRIDGE: &str = "cni0";
/// The CNI plugins capstan's network uses (loopback for the pods' `lo`, added by the runtime).
pub const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback", "portmap"];
pub const MODULES_FILE: &str = "/etc/modules-load.d/capstan-nodes.conf";
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/90-capstan-nodes.conf";
pub const POD_NETWORK_SCRIPT: &str = "/usr/local/lib/capstan/pod-network";
pub const POD_NETWORK_UNIT: &str = "capstan-pod-network.service";
pub const CONTAINERD_UNIT: &str = "containerd.service";
/// containerd's CRI socket (its default gRPC address; capstan's config leaves it), for kubelet.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// Routes capstan owns carry this protocol number, so stale ones can be found and removed.
pub const ROUTE_PROTO: u8 = 203;
pub const MASQUERADE_CHAIN: &str = "CAPSTAN-POD-MASQ";
pub const MODULES: &[&str] = &["overlay", "br_netfilter"];
pub const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
];
/// Debian packages the runtime needs on every node: iptables (masquerading, CNI portmap) and
/// libseccomp2 (runc and crun are linked against it).
pub const PACKAGES: &[&str] = &["iptables", "libseccomp2"];
/// What crun needs besides [`PACKAGES`] (lab-only runtime setting).
pub const CRUN_PACKAGES: &[&str] = &["libyajl2", "libcap2", "libsystemd0"];

/// Which OCI runtime containerd uses on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// runc with the systemd cgroup driver: every real host.
    Runc,
    /// Lab only: crun without cgroups or a new keyring, through [`CRUN_LAB_WRAPPER`].
    LabCgroupless,
}

/// Why a host cannot get the runtime as the inventory asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub host: String,
    pub reason: String,
    pub hint: String,
}

/// The runtime for a host with `probe`, or why none works there.
pub fn decide_runtime(host: &str, setting: LabCgroupless, probe: &NodeProbe) -> Result<RuntimeKind, Refusal> {
    match (probe.is_cgroupless_lab_machine(), setting) {
        (true, LabCgroupless::Auto) => Ok(RuntimeKind::LabCgroupless),
        (true, LabCgroupless::Never) => Err(Refusal {
            host: host.to_string(),
            reason: format!(
                "{host} is a systemd-nspawn machine whose cgroup controllers are read-only ({}): runc and crun cannot \
                 create containers there with cgroups",
                probe.read_only_cgroup.as_deref().unwrap_or("?")
            ),
            hint: "in a capstan lab, set `runtime.lab_cgroupless: auto` (lab only: containers run without resource \
                   limits); a real node needs writable cgroups"
                .into(),
        }),
        (false, _) => Ok(RuntimeKind::Runc),
    }
}

/// Swap must be off for the kubelet: refused unless the inventory lets capstan turn it off.
pub fn check_swap(host: &str, runtime: &RuntimeSettings, probe: &NodeProbe) -> Result<bool, Refusal> {
    if probe.swaps.is_empty() {
        return Ok(false);
    }
    if runtime.disable_swap {
        return Ok(true);
    }
    Err(Refusal {
        host: host.to_string(),
        reason: format!("{host} has swap on ({})", probe.swaps.join(", ")),
        hint: "turn swap off on the host (swapoff -a, and remove it from /etc/fstab), or set `runtime.disable_swap: \
               true` to let capstan do it"
            .into(),
    })
}

/// containerd's snapshotter for a host: `overlayfs`, unless /var/lib is itself on overlayfs (the
/// lab machines), where only the copying `native` snapshotter works.
pub fn snapshotter(probe: &NodeProbe) -> &'static str {
    if probe.var_lib_fs == "overlayfs" {
        "native"
    } else {
        "overlayfs"
    }
}

#[derive(Serialize)]
struct ContainerdConfig<'a> {
    sandbox_image: &'a str,
    snapshotter: &'a str,
    runtime_binary: &'a str,
    systemd_cgroup: bool,
    lab_cgroupless: bool,
    cni_bin_dir: &'a str,
    cni_conf_dir: &'a str,
    registry_config_dir: &'a str,
}

fn render(name: &str, context: impl Serialize) -> Result<String, capstan_templates::TemplateError> {
    capstan_templates::render(name, context)
}

pub type RenderResult = Result<String, capstan_templates::TemplateError>;

pub fn containerd_config(runtime: &RuntimeSettings, kind: RuntimeKind, snapshotter: &str) -> RenderResult {
    let (binary, systemd_cgroup) = match kind {
        RuntimeKind::Runc => (RUNC_PATH, true),
        RuntimeKind::LabCgroupless => (CRUN_LAB_WRAPPER, false),
    };
    render(
        "nodes/containerd-config.toml",
        ContainerdConfig {
            sandbox_image: &runtime.sandbox_image,
            snapshotter,
            runtime_binary: binary,
            systemd_cgroup,
            lab_cgroupless: kind == RuntimeKind::LabCgroupless,
            cni_bin_dir: CNI_BIN_DIR,
            cni_conf_dir: CNI_CONF_DIR,
            registry_config_dir: REGISTRY_CONFIG_DIR,
        },
    )
}

pub fn containerd_unit() -> RenderResult {
    render(
        "nodes/containerd.service",
        serde_json::json!({ "bin_dir": BIN_DIR, "config_file": CONTAINERD_CONFIG_FILE }),
    )
}

/// `/etc/containerd/certs.d/<registry>/hosts.toml` for each registry with mirrors.
pub fn registry_hosts(runtime: &RuntimeSettings) -> Result<Vec<(String, String)>, capstan_templates::TemplateError> {
    runtime
        .registry_mirrors
        .iter()
        .map(|(registry, mirrors)| {
            let server = if registry == "docker.io" {
                "https://registry-1.docker.io".to_string()
            } else {
                format!("https://{registry}")
            };
            let text = render(
                "nodes/registry-hosts.toml",
                serde_json::json!({ "registry": registry, "server": server, "mirrors": mirrors }),
            )?;
            Ok((format!("{REGISTRY_CONFIG_DIR}/{registry}/hosts.toml"), text))
        })
        .collect()
}

pub fn crun_wrapper() -> RenderResult {
    render("nodes/crun-lab-cgroupless", serde_json::json!({ "crun": CRUN_PATH }))
}

pub fn modules_file() -> RenderResult {
    render("nodes/modules-load.conf", serde_json::json!({ "modules": MODULES }))
}

pub fn sysctl_file() -> RenderResult {
    render("nodes/sysctl.conf", serde_json::json!({ "sysctls": SYSCTLS }))
}

pub fn cni_config(subnet: Ipv4Net) -> RenderResult {
    render(
        "nodes/cni.conflist",
        serde_json::json!({ "network_name": CNI_NETWORK_NAME, "bridge": CNI_BRIDGE, "subnet": subnet.to_string() }),
    )
}

/// A route on one node to another node's pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodRoute {
    pub subnet: String,
    pub via: String,
}

/// Routes on `host`: every other host's subnet via its private address (sorted by subnet).
pub fn routes_for(host: &str, subnets: &PodSubnets, private_addresses: &BTreeMap<String, String>) -> Vec<PodRoute> {
    let mut routes: Vec<(Ipv4Net, PodRoute)> = subnets
        .iter()
        .filter(|(other, _)| other.as_str() != host)
        .filter_map(|(other, subnet)| {
            let via = private_addresses.get(other)?;
            Some((
                *subnet,
                PodRoute {
                    subnet: subnet.to_string(),
                    via: via.clone(),
                },
            ))
        })
        .collect();
    routes.sort_by_key(|(subnet, _)| *subnet);
    routes.into_iter().map(|(_, route)| route).collect()
}

pub fn pod_network_script(host: &str, subnet: Ipv4Net, pod_cidr: Ipv4Net, routes: &[PodRoute]) -> RenderResult {
    render(
        "nodes/pod-network.sh",
        serde_json::json!({
            "host": host,
            "subnet": subnet.to_string(),
            "pod_cidr": pod_cidr.to_string(),
            "routes": routes,
            "route_proto": ROUTE_PROTO,
            "chain": MASQUERADE_CHAIN,
        }),
    )
}

pub fn pod_network_unit() -> RenderResult {
    render(
        "nodes/capstan-pod-network.service",
        serde_json::json!({ "script": POD_NETWORK_SCRIPT }),
    )
}

/// Private addresses of the hosts that run pods.
pub fn private_addresses(cluster: &Cluster) -> BTreeMap<String, String> {
    cluster
        .hosts
        .iter()
        .map(|h| (h.name.clone(), h.private_address.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn lab_probe() -> NodeProbe {
        NodeProbe {
            arch: "amd64".into(),
            container: "systemd-nspawn".into(),
            read_only_cgroup: Some("/sys/fs/cgroup/cpuset".into()),
            swaps: vec![],
            subnet: None,
            var_lib_fs: "overlayfs".into(),
        }
    }

    #[test]
    fn the_lab_setting_is_used_only_where_the_facts_show_the_lab() {
        let lab = lab_probe();
        let real = NodeProbe {
            container: "none".into(),
            read_only_cgroup: None,
            ..lab_probe()
        };
        assert_eq!(
            decide_runtime("n1", LabCgroupless::Auto, &lab),
            Ok(RuntimeKind::LabCgroupless)
        );
        assert_eq!(decide_runtime("n1", LabCgroupless::Auto, &real), Ok(RuntimeKind::Runc));
        assert_eq!(decide_runtime("n1", LabCgroupless::Never, &real), Ok(RuntimeKind::Runc));
        let refusal = decide_runtime("n1", LabCgroupless::Never, &lab).unwrap_err();
        assert!(
            refusal.reason.contains("read-only (/sys/fs/cgroup/cpuset)"),
            "{}",
            refusal.reason
        );
        assert!(refusal.hint.contains("runtime.lab_cgroupless: auto"));
    }

    #[test]
    fn swap_is_refused_unless_capstan_may_turn_it_off() {
        let swapping = NodeProbe {
            swaps: vec!["/swapfile".into()],
            ..lab_probe()
        };
        let mut runtime = RuntimeSettings::default();
        assert_eq!(check_swap("n1", &runtime, &lab_probe()), Ok(false));
        let refusal = check_swap("n1", &runtime, &swapping).unwrap_err();
        assert_eq!(refusal.reason, "n1 has swap on (/swapfile)");
        runtime.disable_swap = true;
        assert_eq!(check_swap("n1", &runtime, &swapping), Ok(true));
    }

    #[test]
    fn routes_go_to_every_other_node_via_its_private_address() {
        let subnets: PodSubnets = [("a", "10.244.0.0/24"), ("b", "10.244.1.0/24"), ("c", "10.244.2.0/24")]
            .iter()
            .map(|(h, s)| (h.to_string(), s.parse().unwrap()))
            .collect();
        let addresses: BTreeMap<String, String> = [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")]
            .iter()
            .map(|(h, a)| (h.to_string(), a.to_string()))
            .collect();
        let routes = routes_for("b", &subnets, &addresses);
        assert_eq!(
            routes,
            [
                PodRoute {
                    subnet: "10.244.0.0/24".into(),
                    via: "10.0.0.1".into()
                },
                PodRoute {
                    subnet: "10.244.2.0/24".into(),
                    via: "10.0.0.3".into()
                }
            ]
        );
    }

    #[test]
    fn renders_the_lab_containerd_config() {
        let mut runtime = RuntimeSettings::default();
        runtime
            .registry_mirrors
            .insert("docker.io".into(), vec!["https://mirror.local:5000".into()]);
        let config = containerd_config(&runtime, RuntimeKind::LabCgroupless, "native").unwrap();
        assert!(
            config.contains("BinaryName = \"/usr/local/lib/capstan/crun-lab-cgroupless\""),
            "{config}"
        );
        assert!(config.contains("SystemdCgroup = false"));
        assert!(config.contains("snapshotter = \"native\""));
        let real = containerd_config(&runtime, RuntimeKind::Runc, "overlayfs").unwrap();
        assert!(real.contains("BinaryName = \"/usr/local/sbin/runc\""));
        assert!(real.contains("SystemdCgroup = true"));
        assert!(!real.contains("Lab-only"));
        let hosts = registry_hosts(&runtime).unwrap();
        assert_eq!(hosts[0].0, "/etc/containerd/certs.d/docker.io/hosts.toml");
        expect![[r#"
            # Written by capstan (component nodes): mirrors of docker.io, tried in order before it.
            server = "https://registry-1.docker.io"

            [host."https://mirror.local:5000"]
              capabilities = ["pull", "resolve"]
        "#]]
        .assert_eq(&hosts[0].1);
    }

    #[test]
    fn renders_the_pod_network_script() {
        let routes = [PodRoute {
            subnet: "10.244.1.0/24".into(),
            via: "10.0.0.2".into(),
        }];
        let script = pod_network_script(
            "a",
            "10.244.0.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
            &routes,
        )
        .unwrap();
        assert!(
            script.contains("WANT_ROUTES='10.244.1.0/24 via 10.0.0.2\n'"),
            "{script}"
        );
        assert!(script.contains("-s 10.244.0.0/24 -m comment"));
        assert!(script.contains("-d 10.244.0.0/16 -j RETURN"));
        assert!(script.contains("PROTO=203"));
        // A single node has no routes, and its script still checks and applies.
        let alone = pod_network_script(
            "a",
            "10.244.0.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
            &[],
        )
        .unwrap();
        assert!(alone.contains("WANT_ROUTES=''"), "{alone}");
    }

    #[test]
    fn renders_the_cni_config() {
        let text = cni_config("10.244.3.0/24".parse().unwrap()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["plugins"][0]["type"], "bridge");
        assert_eq!(value["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.244.3.0/24");
        assert_eq!(value["plugins"][1]["type"], "portmap");
    }
}
