//! etcd as the engine sees it ([`capstan_provisioner::component::Component`]).

use capstan_provisioner::check::RequiredPort;
use capstan_provisioner::component::Component;

use crate::config::{DEFAULT_CLIENT_PORT, DEFAULT_PEER_PORT};

/// The etcd component: runs on hosts with the `etcd` role.
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcdComponent;

impl Component for EtcdComponent {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn roles(&self) -> &'static [&'static str] {
        &["etcd"]
    }

    fn required_ports(&self) -> Vec<RequiredPort> {
        vec![
            RequiredPort {
                role: "etcd",
                port: DEFAULT_CLIENT_PORT,
                purpose: "etcd client",
                owner: "etcd",
            },
            RequiredPort {
                role: "etcd",
                port: DEFAULT_PEER_PORT,
                purpose: "etcd peer",
                owner: "etcd",
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_inventory::Role;

    #[test]
    fn runs_on_the_etcd_role_with_its_two_ports() {
        let etcd = EtcdComponent;
        assert_eq!(etcd.roles(), [Role::Etcd.as_str()]);
        let ports: Vec<(&str, u16)> = etcd.required_ports().iter().map(|p| (p.role, p.port)).collect();
        assert_eq!(ports, [("etcd", 2379), ("etcd", 2380)]);
    }
}
