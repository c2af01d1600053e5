//! The cluster's Kubernetes PKI on the engine's generic PKI ([`capstan_provisioner::pki`]): one
//! Kubernetes CA per cluster (separate from etcd's) and the API server's serving certificate.
//!
//! The API endpoint is the first component that needs them (haproxy checks `/readyz` over TLS
//! against this CA), so it creates them; the control plane reuses the same CA, paths and request
//! from here. Like etcd's CA, the key is generated once, on the first apply, and lives only on the
//! control-plane hosts (`/etc/kubernetes/pki/ca.key`, 0600); every run reads it back from there.

use std::net::IpAddr;

use capstan_inventory::{Cluster, Role};
use capstan_provisioner::pki::{CertKind, CertRequest, CertificateAuthority, PkiError, San};

pub const PKI_DIR: &str = "/etc/kubernetes/pki";
pub const CA_CERT: &str = "/etc/kubernetes/pki/ca.crt";
pub const CA_KEY: &str = "/etc/kubernetes/pki/ca.key";
pub const APISERVER_CERT: &str = "/etc/kubernetes/pki/apiserver.crt";
pub const APISERVER_KEY: &str = "/etc/kubernetes/pki/apiserver.key";

/// The API server's common name.
pub const APISERVER_CN: &str = "kube-apiserver";

/// The names in-cluster clients use for the API server (the `kubernetes` service), besides the
/// fully qualified `kubernetes.default.svc.<cluster domain>`.
pub const SERVICE_NAMES: [&str; 3] = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"];

/// The subject common name of a cluster's Kubernetes CA.
pub fn ca_common_name(cluster_name: &str) -> String {
    format!("capstan kubernetes CA ({cluster_name})")
}

/// A new Kubernetes CA for `cluster_name`.
pub fn generate_ca(cluster_name: &str) -> Result<CertificateAuthority, PkiError> {
    CertificateAuthority::generate(&ca_common_name(cluster_name))
}

/// What the API server's serving certificate must say: the service names, every control-plane
/// host's name and addresses, loopback (the local endpoint forwards TLS unchanged, so clients
/// of `https://127.0.0.1:6443` verify this certificate) and the API endpoint's outside address
/// (VIP or external load balancer).
///
/// Everything comes from the inventory, so the endpoint and the control plane, which both call
/// this, always ask for the same certificate (two different requests would re-issue it on every
/// run): also the `kubernetes` service's fully qualified name in the cluster domain and its
/// ClusterIP (the first address of the service network).
pub fn apiserver_request(cluster: &Cluster) -> CertRequest {
    let mut sans: Vec<San> = SERVICE_NAMES.iter().map(|n| San::Dns(n.to_string())).collect();
    sans.push(San::Dns(format!(
        "kubernetes.default.svc.{}",
        cluster.kubernetes.cluster_domain
    )));
    sans.push(San::Ip(IpAddr::V4(cluster.kubernetes.apiserver_service_ip())));
    sans.push(San::Dns("localhost".into()));
    sans.push(San::Ip(IpAddr::from([127, 0, 0, 1])));
    for host in cluster.hosts_with_role(Role::ControlPlane) {
        sans.push(San::Dns(host.name.clone()));
        sans.push(San::from_host(&host.address));
        sans.push(San::from_host(&host.private_address));
    }
    if let Some(address) = cluster.api_endpoint.address() {
        sans.push(San::from_host(address));
    }
    let mut seen = std::collections::BTreeSet::new();
    sans.retain(|san| seen.insert(san.to_string().to_ascii_lowercase()));
    CertRequest {
        kind: CertKind::Server,
        common_name: APISERVER_CN.into(),
        sans,
        organization: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    use capstan_provisioner::pki::needs_reissue;

    fn cluster(api_endpoint: &str) -> Cluster {
        crate::test_cluster(api_endpoint)
    }

    fn sans(request: &CertRequest) -> Vec<String> {
        request.sans.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_apiserver_certificate_names_every_way_to_reach_it() {
        let local = apiserver_request(&cluster(""));
        assert_eq!(local.kind, CertKind::Server);
        assert_eq!(
            sans(&local),
            [
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
                "IP:10.96.0.1",
                "DNS:localhost",
                "IP:127.0.0.1",
                "DNS:cp1",
                "IP:10.0.0.11",
                "DNS:cp2",
                "IP:10.0.0.12",
                "IP:192.168.0.12",
                "DNS:cp3",
                "IP:10.0.0.13",
            ]
        );
        let vip = apiserver_request(&cluster("api_endpoint: {mode: vip, address: 10.0.0.250}\n"));
        assert_eq!(sans(&vip).last().unwrap(), "IP:10.0.0.250");
        let external = apiserver_request(&cluster("api_endpoint: {mode: external, address: api.example.com}\n"));
        assert_eq!(sans(&external)[14..], ["DNS:api.example.com"]);
    }

    #[test]
    fn a_new_vip_reissues_the_certificate() {
        let ca = generate_ca("demo").unwrap();
        let local = apiserver_request(&cluster(""));
        let issued = ca.issue(&local).unwrap();
        let now = SystemTime::now();
        assert_eq!(needs_reissue(Some(&issued.cert_pem), &ca, &local, now), None);
        let vip = apiserver_request(&cluster("api_endpoint: {mode: vip, address: 10.0.0.250}\n"));
        assert!(needs_reissue(Some(&issued.cert_pem), &ca, &vip, now).is_some());
    }
}
