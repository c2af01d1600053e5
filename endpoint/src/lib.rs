//! The Kubernetes API endpoint: a local haproxy on every control-plane and node host (listening
//! on 127.0.0.1:6443, forwarding to every API server with TLS health checks of `/readyz`), and,
//! when the inventory asks for one, a virtual IP on the control-plane hosts held by keepalived.
//! See docs/endpoint.md.
//!
//! - `component.rs`: [`EndpointComponent`] (roles, ports, `converge`).
//! - `kube_pki.rs`: the cluster's Kubernetes CA and the API server's certificate (shared with the
//!   control plane).
//! - `config.rs`: pure rendering of haproxy's and keepalived's files from the inventory.
//! - `probe.rs`: one read-only probe per host.
//! - `ops.rs`: [`ops::ValidatedConfig`], a config written aside, validated, moved in, reloaded.
//! - `apply.rs`: inspection, refusals and the phases.

mod apply;
pub mod component;
pub mod config;
pub mod kube_pki;
pub mod ops;
pub mod probe;

pub use component::EndpointComponent;
