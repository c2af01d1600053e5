//! What `capstan reset` removes of Kubernetes on a host: the services stopped and disabled, then
//! their units, the binaries, and every file this component wrote (the cluster CA and the API
//! server's serving certificate are the endpoint's, and go with it).

use std::sync::Arc;

use capstan_inventory::{Host, Role};
use capstan_provisioner::component::ComponentError;
use capstan_provisioner::ops::{Absent, Operation, RemovedUnit, Service};

use crate::config::{CONTROL_PLANE_BINARIES, NODE_BINARIES};
use crate::paths::*;

/// Files and directories of the control plane, besides the binaries.
const CONTROL_PLANE_FILES: [&str; 26] = [
    FRONT_PROXY_CA_CERT,
    FRONT_PROXY_CA_KEY,
    SA_KEY,
    SA_PUB,
    ETCD_CA_CERT,
    APISERVER_ETCD_CLIENT_CERT,
    APISERVER_ETCD_CLIENT_KEY,
    APISERVER_KUBELET_CLIENT_CERT,
    APISERVER_KUBELET_CLIENT_KEY,
    FRONT_PROXY_CLIENT_CERT,
    FRONT_PROXY_CLIENT_KEY,
    CONTROLLER_MANAGER_SERVING_CERT,
    CONTROLLER_MANAGER_SERVING_KEY,
    SCHEDULER_SERVING_CERT,
    SCHEDULER_SERVING_KEY,
    ENCRYPTION_CONFIG,
    AUDIT_POLICY,
    "/var/log/kubernetes",
    CONTROLLER_MANAGER_KUBECONFIG,
    SCHEDULER_KUBECONFIG,
    ADMIN_KUBECONFIG,
    SUPER_ADMIN_KUBECONFIG,
    SCHEDULER_CONFIG,
    "/etc/systemd/system/kube-apiserver.service.d",
    "/etc/systemd/system/kube-controller-manager.service.d",
    "/etc/systemd/system/kube-scheduler.service.d",
];
/// Files and directories of the node agents (kubelet's state directory included).
const NODE_FILES: [&str; 6] = [
    KUBELET_KUBECONFIG,
    KUBELET_SERVING_CERT,
    KUBELET_SERVING_KEY,
    KUBE_PROXY_KUBECONFIG,
    KUBELET_DIR,
    KUBE_PROXY_DIR,
];

fn services(
    names: &[&str],
    binaries: &[&str],
    files: &[&str],
    ops: &mut Vec<Arc<dyn Operation>>,
) -> Result<(), ComponentError> {
    for name in names {
        let service = Service::new(name).map_err(|e| ComponentError {
            component: crate::apply::NAME,
            message: e.to_string(),
            hint: None,
        })?;
        ops.push(Arc::new(service.enabled(false).running(false)));
        ops.push(Arc::new(RemovedUnit::new(&format!("{name}.service"))));
    }
    for binary in binaries {
        ops.push(Arc::new(Absent::new(&format!("{BIN_DIR}/{binary}"))));
    }
    for file in files {
        ops.push(Arc::new(Absent::new(file)));
    }
    Ok(())
}

/// The node agents first (they talk to the API server), then the control plane.
pub fn teardown(host: &Host) -> Result<Vec<Arc<dyn Operation>>, ComponentError> {
    let mut ops = Vec::new();
    if host.has_role(Role::Node) {
        services(&["kubelet", "kube-proxy"], &NODE_BINARIES, &NODE_FILES, &mut ops)?;
    }
    if host.has_role(Role::ControlPlane) {
        services(
            &["kube-apiserver", "kube-controller-manager", "kube-scheduler"],
            &CONTROL_PLANE_BINARIES,
            &CONTROL_PLANE_FILES,
            &mut ops,
        )?;
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_plane_node_loses_everything_of_both_and_keeps_the_endpoints_pki() {
        let cluster = crate::test_cluster("");
        let described: Vec<String> = teardown(cluster.host("cp3").unwrap())
            .unwrap()
            .iter()
            .map(|op| op.describe())
            .collect();
        assert_eq!(described.len(), 2 * 2 + 2 + 6 + 3 * 2 + 4 + 26);
        assert!(described[0].contains("kubelet"), "{described:?}");
        for kept in [CA_CERT, CA_KEY, APISERVER_CERT, APISERVER_KEY, PKI_DIR, CONFIG_DIR] {
            assert!(
                described.iter().all(|d| !d.ends_with(&format!(" {kept}"))),
                "{kept} is the endpoint's: {described:?}"
            );
        }
        assert!(teardown(cluster.host("n1").unwrap()).unwrap().len() < described.len());
    }
}
