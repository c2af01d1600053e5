//! etcd's use of the engine's PKI ([`capstan_provisioner::pki`]): one CA per cluster, named after
//! it, and the client identities etcd knows by common name.

use capstan_provisioner::pki::{CertificateAuthority, PkiError};

/// Well-known client identities.
pub const ADMIN_CLIENT_CN: &str = "capstan-admin";
pub const APISERVER_CLIENT_CN: &str = "kube-apiserver-etcd-client";
pub const BACKUP_CLIENT_CN: &str = "capstan-backup";
/// The hosts holding components' state push it into etcd with this identity
/// (`capstan backup push-state`).
pub const STATE_PUSH_CLIENT_CN: &str = "capstan-state-push";

/// The subject common name of a cluster's etcd CA.
pub fn ca_common_name(cluster_name: &str) -> String {
    format!("capstan etcd CA ({cluster_name})")
}

/// A new etcd CA for `cluster_name`, valid for [`capstan_provisioner::pki::CA_VALIDITY`] from now.
pub fn generate_ca(cluster_name: &str) -> Result<CertificateAuthority, PkiError> {
    CertificateAuthority::generate(&ca_common_name(cluster_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_named_after_the_cluster() {
        let ca = generate_ca("demo").unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap();
        assert_eq!(cn, "capstan etcd CA (demo)");
    }
}
