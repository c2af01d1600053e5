//! The Kubernetes API endpoint: a local haproxy on every control-plane and node host (listening
//! on 127.0.0.1:6443, forwarding to every API server with TLS health checks of `/readyz`), and,
//! when the inventory asks for one, a virtual IP on the control-plane hosts held by keepalived.
//! See docs/endpoint.md.
//!
//! - `component.rs`: [`EndpointComponent`] (roles, ports, `converge`).
//! - `kube_pki.rs`: the cluster's Kubernetes CA and the API server's certificate (shared with the
//!   control plane).
//! - `config.rs`: pure rendering of haproxy's and keepalived's files from the inventory.
//! - `hosts.rs`: the `control_plane` and `node` hosts, connected (shared with the control plane).
//! - `probe.rs`: one read-only probe per host.
//! - `ops.rs`: [`ops::ValidatedConfig`], a config written aside, validated, moved in, reloaded.
//! - `apply.rs`: inspection, refusals and the phases.

mod apply;
pub mod component;
pub mod config;
pub mod hosts;
pub mod kube_pki;
pub mod ops;
pub mod probe;
pub mod reset;

pub use component::EndpointComponent;

/// An inventory for unit tests: three control-plane hosts (one with a separate private address,
/// one also a node), one node, and `api_endpoint` (YAML, may be empty).
#[cfg(test)]
pub(crate) fn test_cluster(api_endpoint: &str) -> capstan_inventory::Cluster {
    let text = format!(
        "cluster: {{name: demo}}\nssh: {{agent: true}}\nhosts:\n\
         - {{name: cp1, address: 10.0.0.11, roles: [etcd, control_plane]}}\n\
         - {{name: cp2, address: 10.0.0.12, private_address: 192.168.0.12, roles: [control_plane]}}\n\
         - {{name: cp3, address: 10.0.0.13, roles: [control_plane, node]}}\n\
         - {{name: n1, address: 10.0.0.21, roles: [node]}}\n{api_endpoint}"
    );
    capstan_inventory::parse_str(&text, "inventory.yaml", std::path::Path::new("/inv")).unwrap()
}
