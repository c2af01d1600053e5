//! `kubernetes`: the Kubernetes release, the service network, the cluster's DNS domain and image,
//! and how secrets are encrypted at rest.

use super::nodes::{check_image, parse_ipv4_cidr};
use super::Checker;
use crate::model::*;
use crate::values::{self, show};
use crate::yaml::Node;

/// kube-apiserver refuses IPv4 service networks larger than /12; smaller than /28 leaves no room
/// for the DNS service (the tenth address) and a few others.
const SERVICE_PREFIX_RANGE: (u8, u8) = (12, 28);
/// The minor versions whose release tarballs capstan knows how to lay out.
const SUPPORTED_MINORS: (u64, u64) = (31, 32);

impl Checker<'_, '_> {
    pub(super) fn kubernetes(&mut self, node: &Node, network: &NetworkSettings) -> KubernetesSettings {
        let mut settings = KubernetesSettings::default();
        const KEYS: &[&str] = &[
            "version",
            "service_cidr",
            "cluster_domain",
            "dns_image",
            "secrets_encryption",
            "audit_log",
        ];
        let Some(section) = self.section(node, "`kubernetes`", KEYS) else {
            return settings;
        };
        for (key, value) in &section.entries {
            if value.is_null() {
                continue;
            }
            match *key {
                "version" => {
                    if let Some(version) = self.checked(value, key, check_kubernetes_version) {
                        settings.version = version;
                    }
                }
                "service_cidr" => {
                    if let Some(cidr) = self.string(value, key) {
                        match check_service_cidr(&cidr, &network.pod_cidr) {
                            Ok(()) => settings.service_cidr = cidr,
                            Err(message) => self.error(value.pos, format!("`service_cidr`: {message}")),
                        }
                    }
                }
                "cluster_domain" => {
                    if let Some(domain) = self.checked(value, key, check_domain) {
                        settings.cluster_domain = domain.to_ascii_lowercase();
                    }
                }
                "dns_image" => {
                    if let Some(image) = self.checked(value, key, check_image) {
                        settings.dns_image = image;
                    }
                }
                "secrets_encryption" => {
                    let options = [
                        ("secretbox", SecretsEncryption::Secretbox),
                        ("aescbc", SecretsEncryption::Aescbc),
                    ];
                    if let Some(choice) = self.choice(value, key, &options) {
                        settings.secrets_encryption = choice;
                    }
                }
                "audit_log" => {
                    if let Some(on) = self.boolean(value, key) {
                        settings.audit_log = on;
                    }
                }
                _ => unreachable!("key list and match arms are in sync"),
            }
        }
        settings
    }
}

fn check_kubernetes_version(version: &str) -> Result<(), String> {
    values::check_version(version)?;
    let minor = version.split('.').nth(1).and_then(|m| m.parse::<u64>().ok());
    let major = version.split('.').next();
    match (major, minor) {
        (Some("1"), Some(minor)) if (SUPPORTED_MINORS.0..=SUPPORTED_MINORS.1).contains(&minor) => Ok(()),
        _ => Err(format!(
            "expected a Kubernetes version 1.{}.x to 1.{}.x, found `{}`",
            SUPPORTED_MINORS.0,
            SUPPORTED_MINORS.1,
            show(version)
        )),
    }
}

fn check_service_cidr(cidr: &str, pod_cidr: &str) -> Result<(), String> {
    let (network, prefix) = parse_ipv4_cidr(cidr)?;
    let (min, max) = SERVICE_PREFIX_RANGE;
    if !(min..=max).contains(&prefix) {
        return Err(format!(
            "expected a prefix from /{min} to /{max}, found `{}`",
            show(cidr)
        ));
    }
    let service = ipnet::Ipv4Net::new(network, prefix).map_err(|e| e.to_string())?;
    if let Ok(pods) = pod_cidr.parse::<ipnet::Ipv4Net>() {
        if service.contains(&pods.network()) || pods.contains(&service.network()) {
            return Err(format!(
                "`{}` overlaps the pod network `{}`: expected a disjoint network",
                show(cidr),
                show(pod_cidr)
            ));
        }
    }
    Ok(())
}

/// A DNS domain such as `cluster.local`: dot-separated labels of letters, digits and `-`.
fn check_domain(domain: &str) -> Result<(), String> {
    let valid = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "expected a DNS domain such as `{DEFAULT_CLUSTER_DOMAIN}`, found `{}`",
            show(domain)
        ))
    }
}
