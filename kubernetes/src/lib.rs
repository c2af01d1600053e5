//! The Kubernetes component: kube-apiserver, kube-controller-manager and kube-scheduler as
//! systemd services on the `control_plane` hosts, kubelet and kube-proxy on every `node`, from
//! the official release tarballs; the cluster PKI and kubeconfigs; cluster DNS; version-skew-safe
//! upgrades. See docs/kubernetes.md.
//!
//! Control plane:
//! - `paths.rs`: every file the control plane puts on hosts (also what backups carry).
//! - `pki.rs`: the credentials (who signs them, what they say, where they go).
//! - `kubeconfig.rs`: kubeconfigs, rendered and read back.
//! - `encryption.rs`: secrets encryption at rest.
//! - `config.rs`: pure rendering of units and component configurations.
//! - `release.rs`: the server and node tarballs (sha512-pinned) and their members.
//! - `probe.rs`: one read-only probe per host.
//! - `apply.rs`: inspection, refusals and the phases (control plane, one host at a time → node
//!   agents); `unavailable.rs`: a tarball a plan cannot have, shown, never faked.
//! - `reset.rs`: what `capstan reset` removes.
//! - `component.rs`: [`KubernetesComponent`] (roles, ports, scrape targets, log units).
//!
//! Operations:
//! - `skew.rs`: the version-skew policy and the rollout simulation (pure).
//! - `upgrade.rs`: the upgrade's decisions (next step, node batches, after a failure; pure);
//!   `upgrade_facts.rs`: the versions the hosts run; `upgrade_run.rs`: the run loop over the host
//!   and lock hooks.
//! - `upgrade_apply.rs`: the `upgrade` phase of `capstan apply` (a version change): the order in
//!   a plan, the run loop over the ops engine ([`upgrade_run::HostUpgrades`]), the backup hook.
//! - `addons_apply.rs`: the `cluster addons` phase (readyz through the endpoint, server-side
//!   apply of [`addons::bootstrap_objects`], changed only when the server's object changed).
//! - `client.rs`: the Kubernetes client (server-side apply, readyz, cordon, drain, Ready).
//! - `addons.rs`: bootstrap RBAC and CoreDNS as data.
//! - `backup.rs`: what backups and restores carry and stop for Kubernetes.

mod addons_apply;
mod apply;
pub mod component;
pub mod config;
pub mod encryption;
pub mod kubeconfig;
pub mod paths;
pub mod pki;
pub mod probe;
pub mod release;
pub mod reset;
mod unavailable;

pub mod addons;
pub mod backup;
pub mod client;
pub mod skew;
pub mod upgrade;
pub mod upgrade_apply;
pub mod upgrade_facts;
pub mod upgrade_run;

pub use component::KubernetesComponent;

/// An inventory for unit tests: three control-plane hosts (one with a separate private address,
/// one also a node), one node, and `extra` (YAML, may be empty).
#[cfg(test)]
pub(crate) fn test_cluster(extra: &str) -> capstan_inventory::Cluster {
    let text = format!(
        "cluster: {{name: demo}}\nssh: {{agent: true}}\nhosts:\n\
         - {{name: cp1, address: 10.0.0.11, roles: [etcd, control_plane]}}\n\
         - {{name: cp2, address: 10.0.0.12, private_address: 192.168.0.12, roles: [control_plane]}}\n\
         - {{name: cp3, address: 10.0.0.13, roles: [control_plane, node]}}\n\
         - {{name: n1, address: 10.0.0.21, roles: [node]}}\n{extra}"
    );
    capstan_inventory::parse_str(&text, "inventory.yaml", std::path::Path::new("/inv")).unwrap()
}
