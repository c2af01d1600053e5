//! Pure rendering of every file the control plane and the nodes get: units, component
//! configurations and the audit policy (templates in `templates/files/kubernetes/`).

use capstan_etcd::config::{host_for_url, DEFAULT_CLIENT_PORT};
use capstan_inventory::{Cluster, Host, Role};
use capstan_templates::{render, TemplateError};
use serde::Serialize;

use crate::paths::*;
use crate::pki::FRONT_PROXY_CLIENT_CN;

pub const APISERVER_UNIT: &str = "kube-apiserver.service";
pub const CONTROLLER_MANAGER_UNIT: &str = "kube-controller-manager.service";
pub const SCHEDULER_UNIT: &str = "kube-scheduler.service";
pub const KUBELET_UNIT: &str = "kubelet.service";
pub const KUBE_PROXY_UNIT: &str = "kube-proxy.service";

/// Ports (the API server's is the endpoint's `APISERVER_PORT`).
pub const CONTROLLER_MANAGER_PORT: u16 = 10257;
pub const SCHEDULER_PORT: u16 = 10259;
pub const KUBELET_PORT: u16 = 10250;
pub const KUBE_PROXY_METRICS_PORT: u16 = 10249;

/// The control plane's binaries (members of the server tarball) and the node's (of the node
/// tarball); both unpack under `kubernetes/server/bin/` or `kubernetes/node/bin/`.
pub const CONTROL_PLANE_BINARIES: [&str; 4] =
    ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"];
pub const NODE_BINARIES: [&str; 2] = ["kubelet", "kube-proxy"];

/// The PKI file paths, for the unit templates.
#[derive(Serialize)]
struct PkiFiles {
    ca_cert: &'static str,
    ca_key: &'static str,
    apiserver_cert: &'static str,
    apiserver_key: &'static str,
    etcd_ca_cert: &'static str,
    etcd_client_cert: &'static str,
    etcd_client_key: &'static str,
    kubelet_client_cert: &'static str,
    kubelet_client_key: &'static str,
    front_proxy_ca_cert: &'static str,
    front_proxy_client_cert: &'static str,
    front_proxy_client_key: &'static str,
    sa_key: &'static str,
    sa_pub: &'static str,
    controller_manager_cert: &'static str,
    controller_manager_key: &'static str,
    scheduler_cert: &'static str,
    scheduler_key: &'static str,
}

const PKI: PkiFiles = PkiFiles {
    ca_cert: CA_CERT,
    ca_key: CA_KEY,
    apiserver_cert: APISERVER_CERT,
    apiserver_key: APISERVER_KEY,
    etcd_ca_cert: ETCD_CA_CERT,
    etcd_client_cert: APISERVER_ETCD_CLIENT_CERT,
    etcd_client_key: APISERVER_ETCD_CLIENT_KEY,
    kubelet_client_cert: APISERVER_KUBELET_CLIENT_CERT,
    kubelet_client_key: APISERVER_KUBELET_CLIENT_KEY,
    front_proxy_ca_cert: FRONT_PROXY_CA_CERT,
    front_proxy_client_cert: FRONT_PROXY_CLIENT_CERT,
    front_proxy_client_key: FRONT_PROXY_CLIENT_KEY,
    sa_key: SA_KEY,
    sa_pub: SA_PUB,
    controller_manager_cert: CONTROLLER_MANAGER_SERVING_CERT,
    controller_manager_key: CONTROLLER_MANAGER_SERVING_KEY,
    scheduler_cert: SCHEDULER_SERVING_CERT,
    scheduler_key: SCHEDULER_SERVING_KEY,
};

/// `https://<private address>:2379` of every etcd member, comma-separated.
pub fn etcd_servers(cluster: &Cluster) -> String {
    cluster
        .hosts_with_role(Role::Etcd)
        .map(|h| format!("https://{}:{DEFAULT_CLIENT_PORT}", host_for_url(&h.private_address)))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn apiserver_unit(cluster: &Cluster, host: &Host) -> Result<String, TemplateError> {
    #[derive(Serialize)]
    struct Context<'a> {
        cluster_name: &'a str,
        bin_dir: &'a str,
        advertise_address: &'a str,
        secure_port: u16,
        pki: PkiFiles,
        etcd_servers: String,
        cluster_domain: &'a str,
        service_cidr: &'a str,
        encryption_config: &'a str,
        front_proxy_client_cn: &'a str,
        audit_policy: Option<&'a str>,
        audit_log: &'a str,
    }
    let k = &cluster.kubernetes;
    render(
        "kubernetes/kube-apiserver.service",
        Context {
            cluster_name: &cluster.name,
            bin_dir: BIN_DIR,
            advertise_address: &host.private_address,
            secure_port: capstan_endpoint::config::APISERVER_PORT,
            pki: PKI,
            etcd_servers: etcd_servers(cluster),
            cluster_domain: &k.cluster_domain,
            service_cidr: &k.service_cidr,
            encryption_config: ENCRYPTION_CONFIG,
            front_proxy_client_cn: FRONT_PROXY_CLIENT_CN,
            audit_policy: k.audit_log.then_some(AUDIT_POLICY),
            audit_log: AUDIT_LOG,
        },
    )
}

#[derive(Serialize)]
struct ControlPlaneContext<'a> {
    cluster_name: &'a str,
    bin_dir: &'a str,
    kubeconfig: &'a str,
    config: &'a str,
    bind_address: &'a str,
    pki: PkiFiles,
    service_cidr: &'a str,
}

fn control_plane_context<'a>(cluster: &'a Cluster, host: &'a Host, kubeconfig: &'a str) -> ControlPlaneContext<'a> {
    ControlPlaneContext {
        cluster_name: &cluster.name,
        bin_dir: BIN_DIR,
        kubeconfig,
        config: SCHEDULER_CONFIG,
        // Health and metrics on the private address (monitoring scrapes it), not on every interface.
        bind_address: &host.private_address,
        pki: PKI,
        service_cidr: &cluster.kubernetes.service_cidr,
    }
}

pub fn controller_manager_unit(cluster: &Cluster, host: &Host) -> Result<String, TemplateError> {
    render(
        "kubernetes/kube-controller-manager.service",
        control_plane_context(cluster, host, CONTROLLER_MANAGER_KUBECONFIG),
    )
}

pub fn scheduler_unit(cluster: &Cluster, host: &Host) -> Result<String, TemplateError> {
    render(
        "kubernetes/kube-scheduler.service",
        control_plane_context(cluster, host, SCHEDULER_KUBECONFIG),
    )
}

pub fn scheduler_config(cluster: &Cluster, host: &Host) -> Result<String, TemplateError> {
    render(
        "kubernetes/kube-scheduler.yaml",
        control_plane_context(cluster, host, SCHEDULER_KUBECONFIG),
    )
}

pub fn audit_policy(_cluster: &Cluster, _host: &Host) -> Result<String, TemplateError> {
    render("kubernetes/audit-policy.yaml", ())
}

/// Renders one file for a host.
pub type Render = fn(&Cluster, &Host) -> Result<String, TemplateError>;

/// A config file: path, how it is rendered, the services that read it.
pub type ConfigFile = (&'static str, Render, &'static [&'static str]);

/// Config files of control-plane hosts (the audit policy only when the audit log is on).
pub const CONTROL_PLANE_CONFIGS: [ConfigFile; 2] = [
    (AUDIT_POLICY, audit_policy, &["kube-apiserver"]),
    (SCHEDULER_CONFIG, scheduler_config, &["kube-scheduler"]),
];
/// Config files of nodes.
pub const NODE_CONFIGS: [ConfigFile; 2] = [
    (KUBELET_CONFIG, kubelet_config, &["kubelet"]),
    (KUBE_PROXY_CONFIG, kube_proxy_config, &["kube-proxy"]),
];
/// Units of control-plane hosts and of nodes, in start order.
pub const CONTROL_PLANE_UNITS: [(&str, Render); 3] = [
    (APISERVER_UNIT, apiserver_unit),
    (CONTROLLER_MANAGER_UNIT, controller_manager_unit),
    (SCHEDULER_UNIT, scheduler_unit),
];
pub const NODE_UNITS: [(&str, Render); 2] = [(KUBELET_UNIT, kubelet_unit), (KUBE_PROXY_UNIT, kube_proxy_unit)];

#[derive(Serialize)]
struct NodeContext<'a> {
    cluster_name: &'a str,
    bin_dir: &'a str,
    node_name: &'a str,
    node_ip: &'a str,
    kubeconfig: &'a str,
    config: &'a str,
}

fn node_unit(
    template: &str,
    cluster: &Cluster,
    host: &Host,
    kubeconfig: &str,
    config: &str,
) -> Result<String, TemplateError> {
    render(
        template,
        NodeContext {
            cluster_name: &cluster.name,
            bin_dir: BIN_DIR,
            node_name: &host.name,
            node_ip: &host.private_address,
            kubeconfig,
            config,
        },
    )
}

pub fn kubelet_unit(cluster: &Cluster, host: &Host) -> Result<String, TemplateError> {
    node_unit(
        "kubernetes/kubelet.service",
        cluster,
        host,
        KUBELET_KUBECONFIG,
        KUBELET_CONFIG,
    )
}

/// KubeletConfiguration: x509 + webhook authentication (no anonymous access), webhook
/// authorization, the systemd cgroup driver, cluster DNS at the service network's tenth address,
/// containerd's socket from the nodes component, and the serving certificate capstan issues from
/// the cluster CA (`tlsCertFile`; no self-signed one, no `serverTLSBootstrap`).
pub fn kubelet_config(cluster: &Cluster, host: &Host) -> Result<String, TemplateError> {
    #[derive(Serialize)]
    struct Context<'a> {
        ca_cert: &'a str,
        tls_cert_file: &'a str,
        tls_private_key_file: &'a str,
        cluster_dns: String,
        cluster_domain: &'a str,
        container_runtime_endpoint: String,
        address: &'a str,
    }
    render(
        "kubernetes/kubelet-config.yaml",
        Context {
            ca_cert: CA_CERT,
            tls_cert_file: KUBELET_SERVING_CERT,
            tls_private_key_file: KUBELET_SERVING_KEY,
            cluster_dns: cluster.kubernetes.dns_service_ip().to_string(),
            cluster_domain: &cluster.kubernetes.cluster_domain,
            container_runtime_endpoint: format!("unix://{}", capstan_nodes::config::CONTAINERD_SOCKET),
            address: &host.private_address,
        },
    )
}

pub fn kube_proxy_unit(cluster: &Cluster, host: &Host) -> Result<String, TemplateError> {
    node_unit(
        "kubernetes/kube-proxy.service",
        cluster,
        host,
        KUBE_PROXY_KUBECONFIG,
        KUBE_PROXY_CONFIG,
    )
}

pub fn kube_proxy_config(cluster: &Cluster, host: &Host) -> Result<String, TemplateError> {
    #[derive(Serialize)]
    struct Context<'a> {
        kubeconfig: &'a str,
        cluster_cidr: &'a str,
        node_name: &'a str,
        metrics_address: String,
    }
    render(
        "kubernetes/kube-proxy-config.yaml",
        Context {
            kubeconfig: KUBE_PROXY_KUBECONFIG,
            cluster_cidr: &cluster.network.pod_cidr,
            node_name: &host.name,
            metrics_address: format!("{}:{KUBE_PROXY_METRICS_PORT}", host_for_url(&host.private_address)),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_server_unit_wires_etcd_mtls_service_accounts_encryption_and_front_proxy() {
        let cluster = crate::test_cluster("");
        let unit = apiserver_unit(&cluster, cluster.host("cp2").unwrap()).unwrap();
        expect_test::expect_file!["../tests/golden/kube-apiserver.service"].assert_eq(&unit);
        let audit = crate::test_cluster("kubernetes: {audit_log: true}\n");
        let unit = apiserver_unit(&audit, audit.host("cp1").unwrap()).unwrap();
        assert!(
            unit.contains("--audit-policy-file=/etc/kubernetes/audit-policy.yaml \\\n"),
            "{unit}"
        );
    }

    #[test]
    fn the_controller_manager_and_scheduler_serve_their_cluster_ca_certificates() {
        let cluster = crate::test_cluster("");
        let host = cluster.host("cp2").unwrap();
        let unit = controller_manager_unit(&cluster, host).unwrap();
        expect_test::expect_file!["../tests/golden/kube-controller-manager.service"].assert_eq(&unit);
        let unit = scheduler_unit(&cluster, host).unwrap();
        expect_test::expect_file!["../tests/golden/kube-scheduler.service"].assert_eq(&unit);
    }

    #[test]
    fn kubelet_uses_cluster_dns_systemd_cgroups_and_containerd() {
        let cluster = crate::test_cluster("kubernetes: {service_cidr: 10.32.0.0/16, cluster_domain: corp.local}\n");
        let config = kubelet_config(&cluster, cluster.host("n1").unwrap()).unwrap();
        expect_test::expect_file!["../tests/golden/kubelet-config.yaml"].assert_eq(&config);
        let unit = kubelet_unit(&cluster, cluster.host("n1").unwrap()).unwrap();
        assert!(
            unit.contains("--hostname-override=n1 \\\n  --node-ip=10.0.0.21\n"),
            "{unit}"
        );
    }

    #[test]
    fn every_other_file_renders() {
        let cluster = crate::test_cluster("");
        let host = cluster.host("cp3").unwrap();
        for text in [
            scheduler_config(&cluster, host).unwrap(),
            kube_proxy_unit(&cluster, host).unwrap(),
            kube_proxy_config(&cluster, host).unwrap(),
            audit_policy(&cluster, host).unwrap(),
        ] {
            assert!(text.starts_with("# Managed by capstan"), "{text}");
        }
        assert_eq!(etcd_servers(&cluster), "https://10.0.0.11:2379");
    }
}
