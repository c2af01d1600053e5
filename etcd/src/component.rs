//! etcd as the engine sees it ([`capstan_provisioner::component::Component`]).

use async_trait::async_trait;
use std::sync::Arc;

use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::check::RequiredPort;
use capstan_provisioner::component::{Component, ComponentError, ComponentOutcome, RunContext, ScrapeTarget};
use capstan_provisioner::hint::Hint;
use capstan_provisioner::ops::Operation;

use crate::apply::{apply, ApplyOptions};
use crate::config::{host_for_url, DEFAULT_CLIENT_PORT, DEFAULT_METRICS_PORT, DEFAULT_PEER_PORT};

/// The etcd component: runs on hosts with the `etcd` role.
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcdComponent;

#[async_trait(?Send)]
impl Component for EtcdComponent {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn roles(&self) -> &'static [&'static str] {
        &["etcd"]
    }

    fn required_ports(&self) -> Vec<RequiredPort> {
        vec![
            RequiredPort {
                role: "etcd",
                port: DEFAULT_CLIENT_PORT,
                purpose: "etcd client",
                owner: "etcd",
            },
            RequiredPort {
                role: "etcd",
                port: DEFAULT_PEER_PORT,
                purpose: "etcd peer",
                owner: "etcd",
            },
        ]
    }

    fn installs(&self) -> bool {
        true
    }

    fn log_units(&self) -> &'static [&'static str] {
        &["etcd.service"]
    }

    fn teardown(&self, cluster: &Cluster, host: &Host) -> Result<Vec<Arc<dyn Operation>>, ComponentError> {
        crate::reset::teardown(cluster, host)
    }

    fn resets(&self) -> bool {
        true
    }

    fn check_reset(&self, cluster: &Cluster, hosts: &[&Host]) -> Result<(), ComponentError> {
        crate::reset::check_reset(cluster, hosts)
    }

    /// Every member's metrics-only listener (plain HTTP, no keys), on its private address.
    fn scrape_targets(&self, cluster: &Cluster) -> Vec<ScrapeTarget> {
        cluster
            .hosts_with_role(Role::Etcd)
            .map(|host| ScrapeTarget {
                job: "etcd".into(),
                address: format!("{}:{DEFAULT_METRICS_PORT}", host_for_url(&host.private_address)),
                scheme: "http",
                path: "/metrics",
            })
            .collect()
    }

    async fn converge(&self, cluster: &Cluster, ctx: &RunContext) -> Result<ComponentOutcome, ComponentError> {
        let mut options = ApplyOptions::new(ctx.mode);
        options.concurrency = ctx.concurrency.max(1);
        options.progress = ctx.progress.clone();
        options.out = ctx.out.clone().into();
        let outcome = apply(cluster, options).await.map_err(|e| ComponentError {
            component: self.name(),
            message: e.to_string(),
            hint: e.hint(),
        })?;
        Ok(ComponentOutcome {
            component: self.name(),
            phases: outcome.phases,
            reports: outcome.reports,
            summary: outcome.summary,
            error: outcome.error,
            hint: outcome.hint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_every_member_on_its_private_address() {
        let cluster = capstan_inventory::parse_str(
            "cluster: {name: demo}\nssh: {agent: true}\nhosts:\n\
             - {name: e1, address: 10.0.0.11, private_address: 192.168.0.11, roles: [etcd]}\n\
             - {name: e2, address: 10.0.0.12, roles: [etcd, monitoring]}\n\
             - {name: e3, address: 10.0.0.13, roles: [etcd]}\n\
             - {name: m1, address: 10.0.0.14, roles: [monitoring]}\n",
            "inventory.yaml",
            std::path::Path::new("/inv"),
        )
        .unwrap();
        let targets: Vec<(String, &str)> = EtcdComponent
            .scrape_targets(&cluster)
            .into_iter()
            .map(|t| (t.address, t.scheme))
            .collect();
        assert_eq!(
            targets,
            [
                ("192.168.0.11:2381".to_string(), "http"),
                ("10.0.0.12:2381".to_string(), "http"),
                ("10.0.0.13:2381".to_string(), "http")
            ]
        );
    }

    #[test]
    fn runs_on_the_etcd_role_with_its_two_ports() {
        let etcd = EtcdComponent;
        assert_eq!(etcd.roles(), [Role::Etcd.as_str()]);
        let ports: Vec<(&str, u16)> = etcd.required_ports().iter().map(|p| (p.role, p.port)).collect();
        assert_eq!(ports, [("etcd", 2379), ("etcd", 2380)]);
    }
}
