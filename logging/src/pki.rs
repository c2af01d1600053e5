//! The cluster's logging CA and its certificates: each host's client certificate (its inventory
//! name as common name, which the aggregators route by) and each aggregator's server certificate.
//! The CA's key lives only on the `logging` hosts ([`CA_KEY`], 0600).

use capstan_inventory::{Cluster, Host};
use capstan_provisioner::pki::{CertKind, CertRequest};

pub const PKI_DIR: &str = "/etc/capstan/logging";
pub const CA_CERT: &str = "/etc/capstan/logging/ca.crt";
pub const CA_KEY: &str = "/etc/capstan/logging/ca.key";
/// The uploader's client certificate and key (the key owned by the uploader's user, 0600).
pub const CLIENT_CERT: &str = "/etc/capstan/logging/client.crt";
pub const CLIENT_KEY: &str = "/etc/capstan/logging/client.key";
/// The aggregator's certificate (public; what a run compares), and the same with its key appended
/// (haproxy reads both from one file), 0600 root.
pub const SERVER_CERT: &str = "/etc/capstan/logging/aggregator.crt";
pub const SERVER_PEM: &str = "/etc/capstan/logging/aggregator.pem";

pub fn ca_common_name(cluster: &Cluster) -> String {
    format!("capstan logging CA ({})", cluster.name)
}

/// A host's uploader identity: its inventory name.
pub fn client_request(host: &Host) -> CertRequest {
    CertRequest::client(&host.name)
}

/// An aggregator's serving certificate: its name and addresses.
pub fn server_request(host: &Host) -> CertRequest {
    CertRequest::member(
        CertKind::Server,
        &host.name,
        &[host.address.as_str(), host.private_address.as_str()],
    )
}
