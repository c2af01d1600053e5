//! The API endpoint as the engine sees it ([`capstan_provisioner::component::Component`]).

use std::sync::Arc;

use async_trait::async_trait;
use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::check::RequiredPort;
use capstan_provisioner::component::{Component, ComponentError, ComponentOutcome, RunContext};
use capstan_provisioner::ops::Operation;

use crate::config::{ENDPOINT_PORT, STATS_PORT};

/// haproxy on every control-plane and node host, and keepalived on the control-plane hosts when
/// the inventory asks for a VIP.
#[derive(Debug, Clone, Copy, Default)]
pub struct EndpointComponent;

#[async_trait(?Send)]
impl Component for EndpointComponent {
    fn name(&self) -> &'static str {
        "endpoint"
    }

    fn roles(&self) -> &'static [&'static str] {
        &["control_plane", "node"]
    }

    fn required_ports(&self) -> Vec<RequiredPort> {
        let mut ports = Vec::new();
        for role in ["control_plane", "node"] {
            ports.push(RequiredPort {
                role,
                port: ENDPOINT_PORT,
                purpose: "API endpoint (haproxy)",
                owner: "haproxy",
            });
            ports.push(RequiredPort {
                role,
                port: STATS_PORT,
                purpose: "API endpoint statistics (haproxy, 127.0.0.1)",
                owner: "haproxy",
            });
        }
        ports
    }

    fn after(&self) -> &'static [&'static str] {
        &["etcd"]
    }

    fn installs(&self) -> bool {
        true
    }

    /// Only with control-plane hosts: without API servers there is nothing to forward to.
    fn enabled(&self, cluster: &Cluster) -> bool {
        cluster.hosts_with_role(Role::ControlPlane).next().is_some()
    }

    /// Everything apply writes, on every host (ops on what is absent change nothing).
    fn teardown(&self, _cluster: &Cluster, _host: &Host) -> Result<Vec<Arc<dyn Operation>>, ComponentError> {
        crate::reset::teardown()
    }

    fn resets(&self) -> bool {
        true
    }

    fn log_units(&self) -> &'static [&'static str] {
        &["haproxy.service", "keepalived.service"]
    }

    async fn converge(&self, cluster: &Cluster, ctx: &RunContext) -> Result<ComponentOutcome, ComponentError> {
        crate::apply::converge(cluster, ctx).await
    }
}
