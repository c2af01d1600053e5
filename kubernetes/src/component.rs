//! The Kubernetes component as the engine sees it ([`capstan_provisioner::component::Component`]).

use async_trait::async_trait;
use std::sync::Arc;

use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::check::RequiredPort;
use capstan_provisioner::component::{
    CheckResult, Component, ComponentError, ComponentOutcome, DrillSkip, RoleUnit, RunContext, ScrapeCredentials,
    ScrapeTarget, StateFile,
};
use capstan_provisioner::ops::Operation;

use crate::config::{CONTROLLER_MANAGER_PORT, KUBELET_PORT, KUBE_PROXY_METRICS_PORT, SCHEDULER_PORT};

/// The control plane on `control_plane` hosts (API server on 6444, behind the endpoint's 6443),
/// kubelet and kube-proxy on `node` hosts. After etcd (its datastore), the endpoint (its CA and
/// serving certificate, and the address kubelets reach it by) and the nodes (containerd, which
/// kubelet needs).
#[derive(Debug, Clone, Copy, Default)]
pub struct KubernetesComponent;

#[async_trait(?Send)]
impl Component for KubernetesComponent {
    fn name(&self) -> &'static str {
        crate::apply::NAME
    }

    fn roles(&self) -> &'static [&'static str] {
        &["control_plane", "node"]
    }

    fn required_ports(&self) -> Vec<RequiredPort> {
        vec![
            RequiredPort {
                role: "control_plane",
                port: capstan_endpoint::config::APISERVER_PORT,
                purpose: "kube-apiserver",
                owner: "kube-apiserver",
            },
            RequiredPort {
                role: "control_plane",
                port: CONTROLLER_MANAGER_PORT,
                purpose: "kube-controller-manager",
                owner: "kube-controller-manager",
            },
            RequiredPort {
                role: "control_plane",
                port: SCHEDULER_PORT,
                purpose: "kube-scheduler",
                owner: "kube-scheduler",
            },
            RequiredPort {
                role: "node",
                port: KUBELET_PORT,
                purpose: "kubelet",
                owner: "kubelet",
            },
        ]
    }

    fn after(&self) -> &'static [&'static str] {
        &["etcd", "endpoint", "nodes"]
    }

    fn installs(&self) -> bool {
        true
    }

    /// Kubernetes runs where the inventory has a control plane: `node` hosts alone get the
    /// container runtime and pod network (the nodes component), not kubelets without an API server.
    fn enabled(&self, cluster: &Cluster) -> bool {
        cluster
            .hosts
            .iter()
            .any(|host| host.roles.contains(&Role::ControlPlane))
    }

    /// Every component's metrics endpoint, on the host's private address. All but kube-proxy's
    /// are HTTPS and ask for an authorized client ([`Component::scrape_credentials`]).
    fn scrape_targets(&self, cluster: &Cluster) -> Vec<ScrapeTarget> {
        let target = |job: &str, host: &capstan_inventory::Host, port: u16, scheme: &'static str| ScrapeTarget {
            job: job.into(),
            address: format!("{}:{port}", capstan_etcd::config::host_for_url(&host.private_address)),
            scheme,
            path: "/metrics",
        };
        let mut targets = Vec::new();
        for host in cluster.hosts_with_role(Role::ControlPlane) {
            targets.push(target(
                "kube-apiserver",
                host,
                capstan_endpoint::config::APISERVER_PORT,
                "https",
            ));
            targets.push(target(
                "kube-controller-manager",
                host,
                CONTROLLER_MANAGER_PORT,
                "https",
            ));
            targets.push(target("kube-scheduler", host, SCHEDULER_PORT, "https"));
        }
        for host in cluster.hosts_with_role(Role::Node) {
            targets.push(target("kubelet", host, KUBELET_PORT, "https"));
            targets.push(target("kube-proxy", host, KUBE_PROXY_METRICS_PORT, "http"));
        }
        targets
    }

    async fn scrape_credentials(
        &self,
        cluster: &Cluster,
        current: Option<&str>,
    ) -> Result<Option<ScrapeCredentials>, ComponentError> {
        crate::monitoring::scrape_credentials(cluster, current).await
    }

    fn log_units(&self) -> &'static [&'static str] {
        &[
            "kube-apiserver.service",
            "kube-controller-manager.service",
            "kube-scheduler.service",
            "kubelet.service",
            "kube-proxy.service",
        ]
    }

    fn state_files(&self, cluster: &Cluster) -> Vec<StateFile> {
        crate::backup::state_files(cluster)
    }

    fn restore_stopped_units(&self) -> Vec<RoleUnit> {
        crate::backup::restore_stopped_units()
    }

    async fn drill_checks(&self, cluster: &Cluster) -> Vec<CheckResult> {
        crate::backup::drill_checks(cluster).await
    }

    fn drill_skip(&self, cluster: &Cluster) -> Option<DrillSkip> {
        crate::drill::drill_skip(cluster, crate::drill::local_arch())
    }

    fn teardown(&self, _cluster: &Cluster, host: &Host) -> Result<Vec<Arc<dyn Operation>>, ComponentError> {
        crate::reset::teardown(host)
    }

    fn resets(&self) -> bool {
        true
    }

    async fn converge(&self, cluster: &Cluster, ctx: &RunContext) -> Result<ComponentOutcome, ComponentError> {
        crate::apply::converge(cluster, ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_targets_cover_every_kubernetes_process() {
        let cluster = crate::test_cluster("");
        let targets: Vec<String> = KubernetesComponent
            .scrape_targets(&cluster)
            .iter()
            .map(|t| format!("{} {}://{}", t.job, t.scheme, t.address))
            .collect();
        assert_eq!(targets.len(), 3 * 3 + 2 * 2);
        assert!(targets.contains(&"kube-apiserver https://192.168.0.12:6444".to_string()));
        assert!(targets.contains(&"kubelet https://10.0.0.21:10250".to_string()));
        assert!(targets.contains(&"kube-proxy http://10.0.0.13:10249".to_string()));
    }
}
