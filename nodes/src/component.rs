//! The nodes component as the engine sees it ([`capstan_provisioner::component::Component`]).

use async_trait::async_trait;
use std::sync::Arc;

use capstan_inventory::{Cluster, Host};
use capstan_provisioner::check::RequiredPort;
use capstan_provisioner::component::{Component, ComponentError, ComponentOutcome, RunContext};
use capstan_provisioner::hint::Hint;
use capstan_provisioner::ops::Operation;

pub(crate) const NAME: &str = "nodes";

/// The container runtime and pod network on `node` and `control_plane` hosts. It listens on no
/// TCP port (containerd serves a unix socket); kubelet's and the control plane's ports are the
/// `kubernetes` preflight entry's.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodesComponent;

#[async_trait(?Send)]
impl Component for NodesComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn roles(&self) -> &'static [&'static str] {
        &["control_plane", "node"]
    }

    fn required_ports(&self) -> Vec<RequiredPort> {
        Vec::new()
    }

    /// Pod subnets are recorded in etcd.
    fn after(&self) -> &'static [&'static str] {
        &["etcd"]
    }

    fn installs(&self) -> bool {
        true
    }

    /// Everything apply writes, on every host (ops on what is absent change nothing).
    fn teardown(&self, _cluster: &Cluster, _host: &Host) -> Result<Vec<Arc<dyn Operation>>, ComponentError> {
        crate::reset::teardown()
    }

    fn resets(&self) -> bool {
        true
    }

    fn log_units(&self) -> &'static [&'static str] {
        &["containerd.service", "capstan-pod-network.service"]
    }

    async fn converge(&self, cluster: &Cluster, ctx: &RunContext) -> Result<ComponentOutcome, ComponentError> {
        crate::apply::converge(cluster, ctx).await.map_err(|e| ComponentError {
            component: NAME,
            message: e.to_string(),
            hint: e.hint(),
        })
    }
}
