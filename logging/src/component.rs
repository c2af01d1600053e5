//! The logging component as the engine sees it ([`capstan_provisioner::component::Component`]).

use async_trait::async_trait;
use capstan_inventory::{Cluster, Role};
use capstan_provisioner::check::RequiredPort;
use capstan_provisioner::component::{Component, ComponentError, ComponentOutcome, RunContext};

use crate::apply::NAME;
use crate::config::UPLOAD_PORT;

/// Every role: every host ships its journal.
const ROLES: &[&str] = &["etcd", "control_plane", "node", "monitoring", "logging"];

/// journal-upload on every host, journal-remote behind mutual TLS on the `logging` hosts.
/// Enabled when some host has role `logging`.
pub struct LoggingComponent;

#[async_trait(?Send)]
impl Component for LoggingComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn roles(&self) -> &'static [&'static str] {
        ROLES
    }

    fn required_ports(&self) -> Vec<RequiredPort> {
        vec![RequiredPort {
            role: "logging",
            port: UPLOAD_PORT,
            purpose: "journal upload (mutual TLS)",
            owner: "haproxy",
        }]
    }

    /// It ships what the others log, and its alert rules go where monitoring runs.
    fn after(&self) -> &'static [&'static str] {
        &["etcd", "endpoint", "nodes", "monitoring"]
    }

    fn installs(&self) -> bool {
        true
    }

    fn enabled(&self, cluster: &Cluster) -> bool {
        cluster.hosts_with_role(Role::Logging).next().is_some()
    }

    fn log_units(&self) -> &'static [&'static str] {
        &[
            "capstan-journal-upload@*.service",
            "capstan-journal-remote@*.service",
            "capstan-logging-tls.service",
        ]
    }

    async fn converge(&self, cluster: &Cluster, ctx: &RunContext) -> Result<ComponentOutcome, ComponentError> {
        crate::apply::converge(cluster, ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabled_only_with_a_logging_host_and_roles_are_the_inventorys() {
        let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(LoggingComponent.roles(), roles.as_slice());
        assert!(LoggingComponent.enabled(&crate::config::tests::sample_cluster("")));
        let without = capstan_inventory::parse_str(
            "cluster: {name: demo}\nssh: {agent: true}\nhosts:\n- {name: e1, address: 10.0.0.11, roles: [etcd]}\n",
            "inventory.yaml",
            std::path::Path::new("/inv"),
        )
        .unwrap();
        assert!(!LoggingComponent.enabled(&without));
    }
}
