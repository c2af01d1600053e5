//! `versions` (etcd and the container runtime), `network` (the pod network) and `runtime` (the
//! container runtime on `node` and `control_plane` hosts).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::Checker;
use crate::model::*;
use crate::values::{self, show};
use crate::yaml::{Node, Pos};

/// Smallest per-node subnet: room for a gateway, a broadcast and a few pods.
const MAX_NODE_PREFIX: u8 = 28;

/// The `network` section as read, with where it was (for the capacity check after the hosts).
pub(super) struct NetworkRead {
    settings: Option<NetworkSettings>,
    pos: Pos,
}

/// `a.b.c.d/n` with zero host bits → the network address and prefix length.
pub fn parse_ipv4_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let net: ipnet::Ipv4Net = text.parse().map_err(|_| {
        format!(
            "expected an IPv4 network such as `10.244.0.0/16`, found `{}`",
            show(text)
        )
    })?;
    if net.network() != net.addr() {
        return Err(format!(
            "`{}` has host bits set: expected the network address `{}`",
            show(text),
            net.trunc()
        ));
    }
    Ok((net.network(), net.prefix_len()))
}

impl Checker<'_, '_> {
    pub(super) fn versions(&mut self, node: Option<&Node>) -> Versions {
        let mut versions = Versions {
            etcd: DEFAULT_ETCD_VERSION.into(),
            containerd: DEFAULT_CONTAINERD_VERSION.into(),
            runc: DEFAULT_RUNC_VERSION.into(),
            crun: DEFAULT_CRUN_VERSION.into(),
            cni_plugins: DEFAULT_CNI_PLUGINS_VERSION.into(),
            prometheus: DEFAULT_PROMETHEUS_VERSION.into(),
            node_exporter: DEFAULT_NODE_EXPORTER_VERSION.into(),
            alertmanager: DEFAULT_ALERTMANAGER_VERSION.into(),
        };
        const KEYS: &[&str] = &[
            "etcd",
            "containerd",
            "runc",
            "crun",
            "cni_plugins",
            "prometheus",
            "node_exporter",
            "alertmanager",
        ];
        let Some(section) = node.and_then(|node| self.section(node, "`versions`", KEYS)) else {
            return versions;
        };
        for (key, value) in &section.entries {
            if value.is_null() {
                continue;
            }
            let Some(version) = self.checked(value, key, values::check_version) else {
                continue;
            };
            match *key {
                "etcd" => versions.etcd = version,
                "containerd" => versions.containerd = version,
                "runc" => versions.runc = version,
                "crun" => versions.crun = version,
                "cni_plugins" => versions.cni_plugins = version,
                "prometheus" => versions.prometheus = version,
                "node_exporter" => versions.node_exporter = version,
                "alertmanager" => versions.alertmanager = version,
                _ => unreachable!("key list and match arms are in sync"),
            }
        }
        versions
    }

    pub(super) fn network(&mut self, node: &Node) -> NetworkRead {
        let mut read = NetworkRead {
            settings: None,
            pos: node.pos,
        };
        let Some(section) = self.section(node, "`network`", &["pod_cidr", "node_prefix"]) else {
            return read;
        };
        let mut settings = NetworkSettings::default();
        let mut valid = true;
        let mut pod_prefix = 16;
        if let Some(node) = section.get("pod_cidr") {
            match self.string(node, "pod_cidr").map(|text| (parse_ipv4_cidr(&text), text)) {
                Some((Ok((_, prefix)), text)) => {
                    pod_prefix = prefix;
                    settings.pod_cidr = text;
                }
                Some((Err(message), _)) => {
                    self.error(node.pos, format!("`pod_cidr`: {message}"));
                    valid = false;
                }
                None => valid = false,
            }
        } else {
            pod_prefix = parse_ipv4_cidr(DEFAULT_POD_CIDR).map(|(_, p)| p).unwrap_or(16);
        }
        if let Some(node) = section.get("node_prefix") {
            match self.unsigned(node, "node_prefix", 1, MAX_NODE_PREFIX.into()) {
                Some(prefix) if valid && (prefix as u8) < pod_prefix => {
                    self.error(
                        node.pos,
                        format!(
                            "`node_prefix`: /{prefix} is larger than the pod network `{}`: expected a prefix from {pod_prefix} to {MAX_NODE_PREFIX}",
                            show(&settings.pod_cidr)
                        ),
                    );
                    valid = false;
                }
                Some(prefix) => settings.node_prefix = prefix as u8,
                None => valid = false,
            }
        } else if settings.node_prefix < pod_prefix {
            self.error(
                section.pos,
                format!(
                    "`network`: the default `node_prefix` /{} is larger than the pod network `{}`: set `node_prefix` from {pod_prefix} to {MAX_NODE_PREFIX}",
                    settings.node_prefix,
                    show(&settings.pod_cidr)
                ),
            );
            valid = false;
        }
        read.settings = valid.then_some(settings);
        read
    }

    /// The network settings, after checking that every host running pods gets a subnet.
    pub(super) fn network_fits(&mut self, read: Option<NetworkRead>, hosts: Option<&[Host]>) -> NetworkSettings {
        let (settings, pos) = match read {
            Some(NetworkRead {
                settings: Some(settings),
                pos,
            }) => (settings, Some(pos)),
            Some(NetworkRead { settings: None, .. }) => return NetworkSettings::default(),
            None => (NetworkSettings::default(), None),
        };
        let Some(hosts) = hosts else {
            return settings;
        };
        let Ok((_, pod_prefix)) = parse_ipv4_cidr(&settings.pod_cidr) else {
            return settings;
        };
        let capacity = 1u64 << (settings.node_prefix - pod_prefix);
        let nodes = hosts
            .iter()
            .filter(|h| h.has_role(Role::Node) || h.has_role(Role::ControlPlane))
            .count() as u64;
        if nodes > capacity {
            let message = format!(
                "{nodes} hosts run pods (roles `node`, `control_plane`) but `{}` has room for {capacity} subnets of /{}: \
                 expected a larger `pod_cidr` or a longer `node_prefix`",
                show(&settings.pod_cidr),
                settings.node_prefix
            );
            self.error(pos.unwrap_or(Pos { line: 1, column: 1 }), message);
        }
        settings
    }

    pub(super) fn runtime(&mut self, node: &Node) -> RuntimeSettings {
        let mut runtime = RuntimeSettings::default();
        const KEYS: &[&str] = &["sandbox_image", "registry_mirrors", "lab_cgroupless", "disable_swap"];
        let Some(section) = self.section(node, "`runtime`", KEYS) else {
            return runtime;
        };
        for (key, value) in &section.entries {
            if value.is_null() {
                continue;
            }
            match *key {
                "sandbox_image" => {
                    if let Some(image) = self.checked(value, key, check_image) {
                        runtime.sandbox_image = image;
                    }
                }
                "registry_mirrors" => {
                    if let Some(mirrors) = self.registry_mirrors(value) {
                        runtime.registry_mirrors = mirrors;
                    }
                }
                "lab_cgroupless" => {
                    let options = [("never", LabCgroupless::Never), ("auto", LabCgroupless::Auto)];
                    if let Some(choice) = self.choice(value, key, &options) {
                        runtime.lab_cgroupless = choice;
                    }
                }
                "disable_swap" => {
                    if let Some(disable) = self.boolean(value, key) {
                        runtime.disable_swap = disable;
                    }
                }
                _ => unreachable!("key list and match arms are in sync"),
            }
        }
        runtime
    }

    fn registry_mirrors(&mut self, node: &Node) -> Option<BTreeMap<String, Vec<String>>> {
        let Some(entries) = node.as_map() else {
            self.error(
                node.pos,
                format!(
                    "`registry_mirrors`: expected a mapping of registry hosts to lists of mirror URLs, found {}",
                    node.describe()
                ),
            );
            return None;
        };
        let mut mirrors = BTreeMap::new();
        let mut valid = true;
        for (key, value) in entries {
            let Some(registry) = self.checked(key, "registry_mirrors", check_registry) else {
                valid = false;
                continue;
            };
            let Some(items) = self.list(value, &registry, "mirror URLs") else {
                valid = false;
                continue;
            };
            let mut urls = Vec::new();
            for item in items {
                match self.string(item, &registry) {
                    Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                        urls.push(url.trim_end_matches('/').to_string())
                    }
                    Some(url) => {
                        self.error(
                            item.pos,
                            format!(
                                "`registry_mirrors.{}`: expected a URL starting with http:// or https://, found `{}`",
                                show(&registry),
                                show(&url)
                            ),
                        );
                        valid = false;
                    }
                    None => valid = false,
                }
            }
            if mirrors.insert(registry.clone(), urls).is_some() {
                self.error(key.pos, format!("duplicate registry `{}`", show(&registry)));
                valid = false;
            }
        }
        valid.then_some(mirrors)
    }
}

/// An image reference: no whitespace, no scheme.
pub(super) fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) || image.contains("://") {
        return Err(format!(
            "expected an image reference such as `{DEFAULT_SANDBOX_IMAGE}`, found `{}`",
            show(image)
        ));
    }
    Ok(())
}

/// A registry host, optionally with a port (`docker.io`, `registry.local:5000`).
fn check_registry(registry: &str) -> Result<(), String> {
    let valid = !registry.is_empty()
        && registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:_".contains(&b))
        && !registry.starts_with(['.', '-', ':']);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "expected a registry host such as `docker.io` or `registry.local:5000`, found `{}`",
            show(registry)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(parse_ipv4_cidr("10.244.0.0/16"), Ok((Ipv4Addr::new(10, 244, 0, 0), 16)));
        assert!(parse_ipv4_cidr("10.244.1.0/16")
            .unwrap_err()
            .contains("`10.244.0.0/16`"));
        assert!(parse_ipv4_cidr("10.244.0.0").is_err());
        assert!(parse_ipv4_cidr("fd00::/8").is_err());
        assert!(parse_ipv4_cidr("10.244.0.0/33").is_err());
    }

    #[test]
    fn registries_and_images() {
        assert!(check_registry("docker.io").is_ok());
        assert!(check_registry("registry.local:5000").is_ok());
        assert!(check_registry("https://docker.io").is_err());
        assert!(check_image("registry.k8s.io/pause:3.10").is_ok());
        assert!(check_image("pause 3").is_err());
    }
}
