//! The monitoring component as the engine sees it ([`capstan_provisioner::component::Component`]).

use async_trait::async_trait;
use capstan_inventory::{Cluster, Role};
use capstan_provisioner::check::RequiredPort;
use capstan_provisioner::component::{Component, ComponentError, ComponentOutcome, RunContext, ScrapeTarget};
use capstan_provisioner::hint::Hint;

use crate::config::{self, ALERTMANAGER_CLUSTER_PORT, ALERTMANAGER_PORT, NODE_EXPORTER_PORT, PROMETHEUS_PORT};

pub(crate) const NAME: &str = "monitoring";

/// Every role: node_exporter runs on every host.
const ROLES: &[&str] = &["etcd", "control_plane", "node", "monitoring", "logging"];

/// node_exporter on every host, Prometheus and Alertmanager on the `monitoring` hosts. Enabled when some host
/// has role `monitoring`. `sources` lists every component (the binary's list), whose scrape
/// targets the Prometheus configuration gathers.
#[derive(Clone, Copy)]
pub struct MonitoringComponent {
    pub sources: fn() -> &'static [&'static dyn Component],
}

#[async_trait(?Send)]
impl Component for MonitoringComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn roles(&self) -> &'static [&'static str] {
        ROLES
    }

    fn required_ports(&self) -> Vec<RequiredPort> {
        let mut ports: Vec<RequiredPort> = ROLES
            .iter()
            .map(|role| RequiredPort {
                role,
                port: NODE_EXPORTER_PORT,
                purpose: "node_exporter",
                owner: "node_exporter",
            })
            .collect();
        ports.push(RequiredPort {
            role: "monitoring",
            port: PROMETHEUS_PORT,
            purpose: "Prometheus",
            owner: "prometheus",
        });
        ports.push(RequiredPort {
            role: "monitoring",
            port: ALERTMANAGER_PORT,
            purpose: "Alertmanager",
            owner: "alertmanager",
        });
        ports.push(RequiredPort {
            role: "monitoring",
            port: ALERTMANAGER_CLUSTER_PORT,
            purpose: "Alertmanager gossip",
            owner: "alertmanager",
        });
        ports
    }

    /// It scrapes what the others run.
    fn after(&self) -> &'static [&'static str] {
        &["etcd", "endpoint", "nodes"]
    }

    fn installs(&self) -> bool {
        true
    }

    fn enabled(&self, cluster: &Cluster) -> bool {
        cluster.hosts_with_role(Role::Monitoring).next().is_some()
    }

    fn scrape_targets(&self, cluster: &Cluster) -> Vec<ScrapeTarget> {
        config::own_targets(cluster)
    }

    fn log_units(&self) -> &'static [&'static str] {
        &["node_exporter.service", "prometheus.service", "alertmanager.service"]
    }

    async fn converge(&self, cluster: &Cluster, ctx: &RunContext) -> Result<ComponentOutcome, ComponentError> {
        crate::apply::converge(cluster, (self.sources)(), ctx)
            .await
            .map_err(|e| ComponentError {
                component: NAME,
                message: e.to_string(),
                hint: e.hint(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> &'static [&'static dyn Component] {
        &[]
    }

    #[test]
    fn enabled_only_with_a_monitoring_host_and_roles_are_the_inventorys() {
        let component = MonitoringComponent { sources: none };
        let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(component.roles(), roles.as_slice());
        assert!(component.enabled(&crate::config::tests::sample_cluster("")));
        let without = capstan_inventory::parse_str(
            "cluster: {name: demo}\nssh: {agent: true}\nhosts:\n- {name: e1, address: 10.0.0.11, roles: [etcd]}\n",
            "inventory.yaml",
            std::path::Path::new("/inv"),
        )
        .unwrap();
        assert!(!component.enabled(&without));
    }
}
