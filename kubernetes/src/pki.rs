//! The control plane's PKI on the engine's generic PKI ([`capstan_provisioner::pki`]): which
//! certificates exist, who signs them, what they say and where they go.
//!
//! Three CAs: the cluster CA (shared with the API endpoint, [`capstan_endpoint::kube_pki`]),
//! the front-proxy CA (aggregated API servers trust only it) and etcd's CA (the API server's etcd
//! client certificate). Plus the service-account signing key pair. Every CA key and the
//! service-account key are made once, on the first apply, and live only on control-plane hosts.
//!
//! Identities (Kubernetes reads the user from CN and the groups from O):
//!
//! | credential | CN | O | signer | where |
//! |---|---|---|---|---|
//! | API server → kubelets | `kube-apiserver-kubelet-client` | – | cluster | control plane, files |
//! | API server → aggregated APIs | `front-proxy-client` | – | front-proxy | control plane, files |
//! | API server → etcd | `kube-apiserver-etcd-client` | – | etcd | control plane, files |
//! | controller-manager | `system:kube-controller-manager` | – | cluster | control plane, kubeconfig |
//! | scheduler | `system:kube-scheduler` | – | cluster | control plane, kubeconfig |
//! | admin | `capstan-admin` | `capstan:cluster-admins` | cluster | control plane, kubeconfig |
//! | break-glass super-admin | `capstan-super-admin` | `system:masters` | cluster | control plane, kubeconfig |
//! | kubelet | `system:node:<name>` | `system:nodes` | cluster | nodes, kubeconfig |
//! | kube-proxy | `system:kube-proxy` | – | cluster | nodes, kubeconfig |
//! | controller-manager serving | `kube-controller-manager` | – | cluster | control plane, files |
//! | scheduler serving | `kube-scheduler` | – | cluster | control plane, files |
//! | kubelet serving | `system:node:<name>` | `system:nodes` | cluster | nodes, files |
//!
//! The serving certificates (server auth only) name the host: its name, inventory and private
//! addresses (Prometheus scrapes the private one; the API server reaches kubelets by it, their
//! `InternalIP`), and for the controller-manager and scheduler also loopback. So Prometheus and
//! the API server (`--kubelet-certificate-authority`) verify them against the cluster CA instead
//! of trusting whatever the process made itself.
//!
//! "–" means the engine's default organization (`capstan`), which no RBAC binding names. The
//! admin group is bound to `cluster-admin`, and the API server's kubelet client user to
//! `system:kubelet-api-admin`, by the bootstrap RBAC objects (the addons); `system:masters`
//! bypasses RBAC, which is why that kubeconfig never leaves the control-plane hosts.

use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::pki::{CertKind, CertRequest, CertificateAuthority, PkiError, San, SigningKey};

use crate::paths::*;

/// The admin user and group `capstan kubeconfig` hands out; the group is bound to
/// `cluster-admin` by the bootstrap RBAC objects.
pub const ADMIN_USER: &str = "capstan-admin";
pub const ADMIN_GROUP: &str = "capstan:cluster-admins";
/// Break-glass credentials: `system:masters` passes every authorization check.
pub const SUPER_ADMIN_USER: &str = "capstan-super-admin";
pub const SUPER_ADMIN_GROUP: &str = "system:masters";
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
pub const KUBE_PROXY_USER: &str = "system:kube-proxy";
pub const NODES_GROUP: &str = "system:nodes";
/// The API server's user towards kubelets; bound to [`KUBELET_API_CLUSTER_ROLE`].
pub const APISERVER_KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";
pub const KUBELET_API_CLUSTER_ROLE: &str = "system:kubelet-api-admin";
/// The front-proxy client's common name (the API server's `--requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";
pub use capstan_etcd::pki::APISERVER_CLIENT_CN as APISERVER_ETCD_CLIENT_CN;
/// The common names of the controller-manager's and scheduler's serving certificates.
pub const CONTROLLER_MANAGER_SERVING_CN: &str = "kube-controller-manager";
pub const SCHEDULER_SERVING_CN: &str = "kube-scheduler";

/// A kubelet's user name.
pub fn node_user(host_name: &str) -> String {
    format!("system:node:{host_name}")
}

/// The serving certificate of a control-plane process (`common_name`) on `host`: the host's
/// name, private address (where it listens and Prometheus scrapes it), inventory address, and
/// 127.0.0.1 / localhost.
pub fn control_plane_serving_request(common_name: &str, host: &Host) -> CertRequest {
    let mut request = CertRequest::member(CertKind::Server, &host.name, &[&host.private_address, &host.address]);
    request.common_name = common_name.to_string();
    request
}

/// A kubelet's serving certificate: CN `system:node:<name>`, O `system:nodes` (what a kubelet's
/// own serving certificate request would say), SANs the node's name and addresses (the API
/// server reaches it by its private address, the `InternalIP` it registers with).
pub fn kubelet_serving_request(host: &Host) -> CertRequest {
    let mut sans = vec![
        San::Dns(host.name.clone()),
        San::from_host(&host.private_address),
        San::from_host(&host.address),
    ];
    let mut seen = std::collections::BTreeSet::new();
    sans.retain(|san| seen.insert(san.to_string().to_ascii_lowercase()));
    CertRequest {
        kind: CertKind::Server,
        common_name: node_user(&host.name),
        sans,
        organization: Some(NODES_GROUP.to_string()),
    }
}

/// The subject common name of a cluster's front-proxy CA.
pub fn front_proxy_ca_common_name(cluster_name: &str) -> String {
    format!("capstan front-proxy CA ({cluster_name})")
}

/// A new front-proxy CA for `cluster_name`.
pub fn generate_front_proxy_ca(cluster_name: &str) -> Result<CertificateAuthority, PkiError> {
    CertificateAuthority::generate(&front_proxy_ca_common_name(cluster_name))
}

/// A new service-account signing key pair.
pub fn generate_service_account_key() -> Result<SigningKey, PkiError> {
    SigningKey::generate()
}

/// Which CA signs a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Cluster,
    FrontProxy,
    Etcd,
}

/// Where a credential is written on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A certificate file (0644) and its key (0600).
    Files { cert: &'static str, key: &'static str },
    /// A kubeconfig (0600) with the certificate and key embedded, for `server`.
    Kubeconfig { path: &'static str, server: String },
}

impl Placement {
    /// The file whose certificate decides whether to reissue.
    pub fn path(&self) -> &'static str {
        match self {
            Placement::Files { cert, .. } => cert,
            Placement::Kubeconfig { path, .. } => path,
        }
    }
}

/// One certificate a host needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub signer: Signer,
    pub request: CertRequest,
    pub placement: Placement,
}

/// The API server on this host, for the control plane's own clients.
pub fn local_apiserver_url() -> String {
    format!("https://127.0.0.1:{}", capstan_endpoint::config::APISERVER_PORT)
}

/// The local API endpoint (haproxy, every control-plane and node host), for kubelet, kube-proxy
/// and the admin on the host.
pub fn local_endpoint_url() -> String {
    format!("https://127.0.0.1:{}", capstan_endpoint::config::ENDPOINT_PORT)
}

/// The API endpoint for clients outside the cluster: the VIP or external load balancer, else the
/// first control-plane host's endpoint.
pub fn external_endpoint_url(cluster: &Cluster) -> Option<String> {
    use capstan_inventory::ApiEndpoint;
    let host_port = |host: &str, port: u16| match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("https://[{host}]:{port}"),
        Err(_) => format!("https://{host}:{port}"),
    };
    match &cluster.api_endpoint {
        ApiEndpoint::Vip { address, .. } => Some(host_port(address, capstan_endpoint::config::ENDPOINT_PORT)),
        ApiEndpoint::External { address, port } => Some(host_port(address, *port)),
        ApiEndpoint::Local => cluster
            .hosts_with_role(Role::ControlPlane)
            .next()
            .map(|h| host_port(&h.address, capstan_endpoint::config::ENDPOINT_PORT)),
    }
}

fn client(common_name: &str, organization: Option<&str>) -> CertRequest {
    let request = CertRequest::client(common_name);
    match organization {
        Some(o) => request.with_organization(o),
        None => request,
    }
}

/// Whether `host` runs kubelet and kube-proxy.
pub fn runs_kubelet(host: &Host) -> bool {
    host.has_role(Role::Node)
}

/// Every credential `host` gets, in the order they are written. The API server's serving
/// certificate is the endpoint's ([`capstan_endpoint::kube_pki::apiserver_request`]), issued
/// before the control plane converges.
pub fn host_credentials(host: &Host) -> Vec<Credential> {
    let mut list = Vec::new();
    if host.has_role(Role::ControlPlane) {
        let files = |signer, request, cert, key| Credential {
            signer,
            request,
            placement: Placement::Files { cert, key },
        };
        list.push(files(
            Signer::Cluster,
            client(APISERVER_KUBELET_CLIENT_USER, None),
            APISERVER_KUBELET_CLIENT_CERT,
            APISERVER_KUBELET_CLIENT_KEY,
        ));
        list.push(files(
            Signer::FrontProxy,
            client(FRONT_PROXY_CLIENT_CN, None),
            FRONT_PROXY_CLIENT_CERT,
            FRONT_PROXY_CLIENT_KEY,
        ));
        list.push(files(
            Signer::Etcd,
            client(APISERVER_ETCD_CLIENT_CN, None),
            APISERVER_ETCD_CLIENT_CERT,
            APISERVER_ETCD_CLIENT_KEY,
        ));
        list.push(files(
            Signer::Cluster,
            control_plane_serving_request(CONTROLLER_MANAGER_SERVING_CN, host),
            CONTROLLER_MANAGER_SERVING_CERT,
            CONTROLLER_MANAGER_SERVING_KEY,
        ));
        list.push(files(
            Signer::Cluster,
            control_plane_serving_request(SCHEDULER_SERVING_CN, host),
            SCHEDULER_SERVING_CERT,
            SCHEDULER_SERVING_KEY,
        ));
        let kubeconfig = |request, path, server: String| Credential {
            signer: Signer::Cluster,
            request,
            placement: Placement::Kubeconfig { path, server },
        };
        list.push(kubeconfig(
            client(CONTROLLER_MANAGER_USER, None),
            CONTROLLER_MANAGER_KUBECONFIG,
            local_apiserver_url(),
        ));
        list.push(kubeconfig(
            client(SCHEDULER_USER, None),
            SCHEDULER_KUBECONFIG,
            local_apiserver_url(),
        ));
        list.push(kubeconfig(
            client(ADMIN_USER, Some(ADMIN_GROUP)),
            ADMIN_KUBECONFIG,
            local_endpoint_url(),
        ));
        list.push(kubeconfig(
            client(SUPER_ADMIN_USER, Some(SUPER_ADMIN_GROUP)),
            SUPER_ADMIN_KUBECONFIG,
            local_apiserver_url(),
        ));
    }
    if runs_kubelet(host) {
        list.push(Credential {
            signer: Signer::Cluster,
            request: client(&node_user(&host.name), Some(NODES_GROUP)),
            placement: Placement::Kubeconfig {
                path: KUBELET_KUBECONFIG,
                server: local_endpoint_url(),
            },
        });
        list.push(Credential {
            signer: Signer::Cluster,
            request: kubelet_serving_request(host),
            placement: Placement::Files {
                cert: KUBELET_SERVING_CERT,
                key: KUBELET_SERVING_KEY,
            },
        });
        list.push(Credential {
            signer: Signer::Cluster,
            request: client(KUBE_PROXY_USER, None),
            placement: Placement::Kubeconfig {
                path: KUBE_PROXY_KUBECONFIG,
                server: local_endpoint_url(),
            },
        });
    }
    list
}

/// The CAs and keys a run signs with.
#[derive(Debug, Clone)]
pub struct Signers {
    pub cluster: CertificateAuthority,
    pub front_proxy: CertificateAuthority,
    pub etcd: CertificateAuthority,
}

impl Signers {
    pub fn get(&self, signer: Signer) -> &CertificateAuthority {
        match signer {
            Signer::Cluster => &self.cluster,
            Signer::FrontProxy => &self.front_proxy,
            Signer::Etcd => &self.etcd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        crate::test_cluster("")
    }

    fn summary(host: &str) -> Vec<String> {
        let cluster = cluster();
        host_credentials(cluster.host(host).unwrap())
            .iter()
            .map(|c| {
                format!(
                    "{:?} {} O={} -> {}",
                    c.signer,
                    c.request.common_name,
                    c.request.organization.as_deref().unwrap_or("-"),
                    c.placement.path()
                )
            })
            .collect()
    }

    #[test]
    fn control_plane_hosts_get_the_control_plane_credentials_and_nodes_the_node_ones() {
        expect_test::expect![[r#"
            [
                "Cluster kube-apiserver-kubelet-client O=- -> /etc/kubernetes/pki/apiserver-kubelet-client.crt",
                "FrontProxy front-proxy-client O=- -> /etc/kubernetes/pki/front-proxy-client.crt",
                "Etcd kube-apiserver-etcd-client O=- -> /etc/kubernetes/pki/apiserver-etcd-client.crt",
                "Cluster kube-controller-manager O=- -> /etc/kubernetes/pki/controller-manager-serving.crt",
                "Cluster kube-scheduler O=- -> /etc/kubernetes/pki/scheduler-serving.crt",
                "Cluster system:kube-controller-manager O=- -> /etc/kubernetes/controller-manager.conf",
                "Cluster system:kube-scheduler O=- -> /etc/kubernetes/scheduler.conf",
                "Cluster capstan-admin O=capstan:cluster-admins -> /etc/kubernetes/admin.conf",
                "Cluster capstan-super-admin O=system:masters -> /etc/kubernetes/super-admin.conf",
            ]
        "#]]
        .assert_debug_eq(&summary("cp1"));
        expect_test::expect![[r#"
            [
                "Cluster system:node:n1 O=system:nodes -> /etc/kubernetes/kubelet.conf",
                "Cluster system:node:n1 O=system:nodes -> /etc/kubernetes/pki/kubelet-serving.crt",
                "Cluster system:kube-proxy O=- -> /etc/kubernetes/kube-proxy.conf",
            ]
        "#]]
        .assert_debug_eq(&summary("n1"));
        // A control-plane host that is also a node gets both; no super-admin ever lands on a node.
        assert_eq!(summary("cp3").len(), 12);
        assert!(summary("n1").iter().all(|s| !s.contains("system:masters")));
    }

    #[test]
    fn serving_certificates_name_the_host_and_the_address_it_is_scraped_on() {
        let cluster = cluster();
        let sans = |r: &CertRequest| r.sans.iter().map(ToString::to_string).collect::<Vec<_>>();
        // cp2's private address differs from its inventory address: both, private first.
        let cp2 = cluster.host("cp2").unwrap();
        let scheduler = control_plane_serving_request(SCHEDULER_SERVING_CN, cp2);
        assert_eq!(
            (
                scheduler.kind,
                scheduler.common_name.as_str(),
                scheduler.organization.as_deref()
            ),
            (CertKind::Server, "kube-scheduler", None)
        );
        assert_eq!(
            sans(&scheduler),
            [
                "DNS:cp2",
                "IP:192.168.0.12",
                "IP:10.0.0.12",
                "DNS:localhost",
                "IP:127.0.0.1"
            ]
        );
        let kubelet = kubelet_serving_request(cluster.host("n1").unwrap());
        assert_eq!(
            (
                kubelet.kind,
                kubelet.common_name.as_str(),
                kubelet.organization.as_deref()
            ),
            (CertKind::Server, "system:node:n1", Some("system:nodes"))
        );
        // One address, named once; no loopback (kubelet listens on the private address only).
        assert_eq!(sans(&kubelet), ["DNS:n1", "IP:10.0.0.21"]);
    }

    #[test]
    fn external_clients_use_the_vip_or_the_first_control_plane_host() {
        assert_eq!(external_endpoint_url(&cluster()).unwrap(), "https://10.0.0.11:6443");
        let vip = crate::test_cluster("api_endpoint: {mode: vip, address: 10.0.0.250}\n");
        assert_eq!(external_endpoint_url(&vip).unwrap(), "https://10.0.0.250:6443");
        let lb = crate::test_cluster("api_endpoint: {mode: external, address: api.example.com, port: 443}\n");
        assert_eq!(external_endpoint_url(&lb).unwrap(), "https://api.example.com:443");
    }
}
