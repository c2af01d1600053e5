//! `capstan reset`: remove what capstan installed, component by component in the reverse of the
//! cluster plan's order, through the ops path (so a dry run shows it and a second reset changes
//! nothing). Each component lists its clean-up per host ([`Component::teardown`]) and may refuse
//! a partial reset ([`Component::check_reset`]); the engine adds its own last: the remembered
//! checksums ([`CHECKSUM_DIR`]) and capstan's state directory when empty.

use std::sync::Arc;
use std::time::Instant;

use capstan_inventory::{Cluster, Host};

use crate::cluster_plan::{dependency_order, ClusterOutcome, PlanError};
use crate::component::{Component, ComponentError, ComponentOutcome, PhaseReport, RunContext};
use crate::ops::{Absent, Command, Operation, APT_SOURCE_FILE, CHECKSUM_DIR};
use crate::pool::Connections;
use crate::report::RunReport;
use crate::runner::{HostOps, RunOptions, Runner};
use crate::targets::ssh_target;

/// capstan's own state directory on hosts (the remembered checksums live under it).
pub const STATE_DIR: &str = "/var/lib/capstan";

/// The name the engine's own clean-up reports under.
pub const ENGINE_PART: &str = "capstan";

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("unknown host(s) {}: the inventory has {}", unknown.join(", "), known.join(", "))]
    UnknownHosts { unknown: Vec<String>, known: Vec<String> },
    #[error(transparent)]
    Refused(#[from] ComponentError),
    #[error("cannot reach {}; nothing was changed", .0.join("; "))]
    Unreachable(Vec<String>),
}

impl crate::hint::Hint for ResetError {
    fn hint(&self) -> Option<String> {
        match self {
            ResetError::Plan(e) => e.hint(),
            ResetError::UnknownHosts { .. } => Some("name hosts as the inventory does, separated by commas".into()),
            ResetError::Refused(e) => e.hint.clone(),
            ResetError::Unreachable(_) => Some(
                "bring the hosts back, or reset only the reachable ones with --hosts (a host that is gone needs no reset)"
                    .into(),
            ),
        }
    }
}

/// The components to tear down, last-installed first, and the hosts to tear them down on.
pub struct ResetPlan<'c> {
    components: Vec<&'static dyn Component>,
    hosts: Vec<&'c Host>,
}

impl<'c> ResetPlan<'c> {
    /// Every component of `all` (whether the inventory still enables it or not: what was
    /// installed is removed), in reverse dependency order; on `hosts` (empty: every host).
    pub fn new(
        all: &[&'static dyn Component],
        cluster: &'c Cluster,
        hosts: &[String],
    ) -> Result<ResetPlan<'c>, ResetError> {
        let mut components = dependency_order(all)?;
        components.reverse();
        let unknown: Vec<String> = hosts
            .iter()
            .filter(|name| !cluster.hosts.iter().any(|h| &&h.name == name))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(ResetError::UnknownHosts {
                unknown,
                known: cluster.hosts.iter().map(|h| h.name.clone()).collect(),
            });
        }
        let hosts = cluster
            .hosts
            .iter()
            .filter(|h| hosts.is_empty() || hosts.contains(&h.name))
            .collect();
        Ok(ResetPlan { components, hosts })
    }

    pub fn hosts(&self) -> Vec<&str> {
        self.hosts.iter().map(|h| h.name.as_str()).collect()
    }

    /// Whether every inventory host is reset.
    pub fn whole_cluster(&self, cluster: &Cluster) -> bool {
        self.hosts.len() == cluster.hosts.len()
    }

    /// Every reason to refuse this reset (all overridden by `--force`): an installed component
    /// the inventory enables on these hosts that cannot be torn down yet, and each component's own
    /// check (e.g. quorum).
    pub fn refusals(&self, cluster: &Cluster) -> Vec<ComponentError> {
        let mut refusals = Vec::new();
        for component in &self.components {
            let on_these_hosts = self
                .hosts
                .iter()
                .any(|h| h.roles.iter().any(|r| component.roles().contains(&r.as_str())));
            if component.installs() && !component.resets() && component.enabled(cluster) && on_these_hosts {
                refusals.push(ComponentError {
                    component: component.name(),
                    message: "capstan reset cannot remove this component yet; nothing was changed".into(),
                    hint: Some(format!(
                        "remove {} by hand first, or pass --force to reset everything else and leave it installed",
                        component.name()
                    )),
                });
            }
            if let Err(refusal) = component.check_reset(cluster, &self.hosts) {
                refusals.push(refusal);
            }
        }
        refusals
    }

    /// Tear down in `ctx.mode`. Every host must be reachable before anything changes; a
    /// component whose clean-up fails stops the reset there (the ones installed before it stay).
    pub async fn run(&self, cluster: &Cluster, ctx: &RunContext) -> Result<ClusterOutcome, ResetError> {
        let started = Instant::now();
        let targets: Vec<_> = self.hosts.iter().map(|h| ssh_target(h)).collect();
        let (connections, failures) = Connections::connect(&targets, ctx.concurrency.max(1)).await;
        if !failures.is_empty() {
            connections.close_all().await;
            return Err(ResetError::Unreachable(
                failures.values().map(|e| e.to_string()).collect(),
            ));
        }
        let result = self.run_connected(cluster, ctx, &connections, started).await;
        connections.close_all().await;
        result
    }

    async fn run_connected(
        &self,
        cluster: &Cluster,
        ctx: &RunContext,
        connections: &Connections,
        started: Instant,
    ) -> Result<ClusterOutcome, ResetError> {
        let mut outcome = ClusterOutcome::empty(ctx.mode);
        // Every component's ops first, so that a component that cannot say what it installed
        // stops the reset before anything changes.
        let mut parts: Vec<(&'static str, Vec<HostOps>)> = Vec::new();
        for component in &self.components {
            let mut hosts = Vec::new();
            for host in &self.hosts {
                let ops = component.teardown(cluster, host)?;
                if ops.is_empty() {
                    continue;
                }
                if let Some(transport) = connections.get(&host.name) {
                    let mut host_ops = HostOps::new(transport);
                    host_ops.ops = ops;
                    hosts.push(host_ops);
                }
            }
            if !hosts.is_empty() {
                parts.push((component.name(), hosts));
            }
        }
        let engine: Vec<HostOps> = self
            .hosts
            .iter()
            .filter_map(|host| connections.get(&host.name))
            .map(|transport| {
                let mut host_ops = HostOps::new(transport);
                host_ops.ops = engine_teardown();
                host_ops
            })
            .collect();
        parts.push((ENGINE_PART, engine));

        let runner = Runner::new(
            RunOptions {
                mode: ctx.mode,
                concurrency: ctx.concurrency.max(1),
            },
            ctx.progress.clone(),
        );
        for (name, hosts) in parts {
            ctx.out.line(format_args!("==> reset: {name}"));
            let part_started = Instant::now();
            let report = runner.run(hosts).await;
            let mut summary = report.clone();
            summary.elapsed = part_started.elapsed();
            let failed_hosts = report.failed_hosts().join(", ");
            let failed = !report.success();
            outcome.components.push(ComponentOutcome {
                component: name,
                phases: Vec::new(),
                reports: vec![PhaseReport {
                    phase: format!("reset {name}"),
                    report,
                }],
                summary,
                error: failed.then(|| format!("{name}: clean-up failed on {failed_hosts}")),
                hint: None,
            });
            if failed {
                let last = outcome.components.last().expect("just pushed");
                outcome.error = last.error.clone();
                outcome.hint = Some(
                    "fix the cause shown above and run `capstan reset` again (it removes only what is still there)"
                        .into(),
                );
                break;
            }
        }
        let reports: Vec<&RunReport> = outcome.components.iter().map(|c| &c.summary).collect();
        outcome.summary = RunReport::merged(ctx.mode, &reports, started.elapsed());
        Ok(outcome)
    }
}

/// The engine's own traces, removed after every component's: the apt source file the `Package`
/// op refreshes from ([`APT_SOURCE_FILE`]), remembered checksums, then the state directory when
/// nothing else is in it.
fn engine_teardown() -> Vec<Arc<dyn Operation>> {
    vec![
        Arc::new(Absent::new(APT_SOURCE_FILE)),
        Arc::new(Absent::new(CHECKSUM_DIR)),
        Arc::new(Command::remove_empty_dir(STATE_DIR)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::RequiredPort;

    struct Fake {
        name: &'static str,
        after: &'static [&'static str],
        resets: bool,
    }

    impl Component for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn roles(&self) -> &'static [&'static str] {
            &["etcd"]
        }
        fn required_ports(&self) -> Vec<RequiredPort> {
            Vec::new()
        }
        fn after(&self) -> &'static [&'static str] {
            self.after
        }
        fn installs(&self) -> bool {
            true
        }
        fn resets(&self) -> bool {
            self.resets
        }
        fn check_reset(&self, cluster: &Cluster, hosts: &[&Host]) -> Result<(), ComponentError> {
            if hosts.len() < cluster.hosts.len() {
                return Err(ComponentError {
                    component: self.name,
                    message: "partial".into(),
                    hint: None,
                });
            }
            Ok(())
        }
    }

    static STORE: Fake = Fake {
        name: "store",
        after: &[],
        resets: true,
    };
    static APP: Fake = Fake {
        name: "app",
        after: &["store"],
        resets: true,
    };
    static NEW: Fake = Fake {
        name: "new",
        after: &["store"],
        resets: false,
    };

    fn cluster() -> Cluster {
        let text = "cluster:\n  name: t\nssh:\n  user: root\n  identity_file: /dev/null\nhosts:\n  - name: a\n    address: 10.0.0.1\n    roles: [etcd]\n  - name: b\n    address: 10.0.0.2\n    roles: [etcd]\n  - name: c\n    address: 10.0.0.3\n    roles: [etcd]\n";
        capstan_inventory::parse_str(text, "inventory.yaml", std::path::Path::new("/tmp")).expect("valid inventory")
    }

    #[test]
    fn reverse_order_hosts_and_refusals() {
        let cluster = cluster();
        let plan = ResetPlan::new(&[&STORE, &APP], &cluster, &[]).unwrap();
        let names: Vec<&str> = plan.components.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["app", "store"], "last installed first");
        assert_eq!(plan.hosts(), ["a", "b", "c"]);
        assert!(plan.whole_cluster(&cluster));
        assert!(plan.refusals(&cluster).is_empty());

        let partial = ResetPlan::new(&[&STORE, &APP], &cluster, &["b".into()]).unwrap();
        let refusals: Vec<String> = partial.refusals(&cluster).iter().map(|e| e.to_string()).collect();
        assert_eq!(refusals, ["app: partial", "store: partial"]);

        let unknown = ResetPlan::new(&[&STORE], &cluster, &["d".into()]).err().unwrap();
        assert_eq!(unknown.to_string(), "unknown host(s) d: the inventory has a, b, c");

        let without_teardown = ResetPlan::new(&[&STORE, &NEW], &cluster, &[]).unwrap();
        let refusals: Vec<String> = without_teardown
            .refusals(&cluster)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            refusals,
            ["new: capstan reset cannot remove this component yet; nothing was changed"]
        );
    }
}
