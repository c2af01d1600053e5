//! The hosts of the Kubernetes-facing components (the endpoint, the control plane, the node
//! agents): every host with role `control_plane` or `node`, connected once for a run.

use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::targets::ssh_target;

/// Why the hosts cannot be worked on; each component words its refusal.
#[derive(Debug)]
pub enum KubeHostsError {
    /// No host has the `control_plane` role.
    NoControlPlane,
    /// Hosts that did not connect, each with why (`name: error`).
    Unreachable(Vec<String>),
}

/// Every `control_plane` and `node` host in inventory order, connected (at most `concurrency`
/// connections being made at once). On `Err`, no connection is left open.
pub async fn connect_kube_hosts(
    cluster: &Cluster,
    concurrency: usize,
) -> Result<(Vec<Host>, Connections), KubeHostsError> {
    let hosts: Vec<Host> = cluster
        .hosts
        .iter()
        .filter(|h| h.has_role(Role::ControlPlane) || h.has_role(Role::Node))
        .cloned()
        .collect();
    if !hosts.iter().any(|h| h.has_role(Role::ControlPlane)) {
        return Err(KubeHostsError::NoControlPlane);
    }
    let targets: Vec<_> = hosts.iter().map(ssh_target).collect();
    let (connections, failures) = Connections::connect(&targets, concurrency.max(1)).await;
    if !failures.is_empty() {
        connections.close_all().await;
        return Err(KubeHostsError::Unreachable(
            failures.iter().map(|(h, e)| format!("{h}: {e}")).collect(),
        ));
    }
    Ok((hosts, connections))
}

/// The refusal hint for unreachable hosts.
pub const UNREACHABLE_HINT: &str =
    "every control_plane and node host must be reachable over SSH; check them with `capstan check`";
