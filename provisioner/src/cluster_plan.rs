//! One cluster plan: every component the inventory enables, in dependency order.
//!
//! `capstan plan` and `capstan apply` build one [`ClusterPlan`] from the list of all components
//! (the binary's, since the engine names none), optionally limited with `--only`, and run each
//! component's [`Component::converge`] in order. A component that refuses before changing
//! anything stops the run there; components after it depend on it and do not run.

use std::collections::BTreeSet;
use std::time::Instant;

use capstan_inventory::Cluster;
use serde::Serialize;

use crate::component::{Component, ComponentError, ComponentOutcome, RunContext};
use crate::hint::Hint;
use crate::report::RunReport;
use crate::runner::Mode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("unknown component {name:?}; capstan knows: {known}")]
    UnknownComponent { name: String, known: String },
    #[error("capstan does not install {name} yet (preflight checks its ports)")]
    NotInstalled { name: String },
    #[error("the inventory does not enable {name}: no host has role {}", roles.join(" or "))]
    NotEnabled { name: String, roles: Vec<&'static str> },
    #[error("{component} comes after {missing}, which is not a known component")]
    UnknownDependency {
        component: &'static str,
        missing: &'static str,
    },
    #[error("components depend on each other in a cycle: {}", .0.join(", "))]
    Cycle(Vec<&'static str>),
}

impl Hint for PlanError {
    fn hint(&self) -> Option<String> {
        match self {
            PlanError::UnknownComponent { .. } => Some("name components as listed, separated by commas".into()),
            PlanError::NotEnabled { .. } => {
                Some("give a host that role in the inventory, or leave the component out of --only".into())
            }
            _ => None,
        }
    }
}

/// The components of one run, in the order they converge.
pub struct ClusterPlan {
    components: Vec<&'static dyn Component>,
}

impl ClusterPlan {
    /// Every installable component `cluster` enables, ordered so each comes after the ones it
    /// names in [`Component::after`] (ties keep the order of `all`). A non-empty `only` limits
    /// the plan to those names; their dependencies are not added (they are assumed converged).
    pub fn new(all: &[&'static dyn Component], cluster: &Cluster, only: &[String]) -> Result<ClusterPlan, PlanError> {
        let ordered = dependency_order(all)?;
        for name in only {
            let Some(component) = all.iter().find(|c| c.name() == name) else {
                let known: Vec<&str> = all.iter().filter(|c| c.installs()).map(|c| c.name()).collect();
                return Err(PlanError::UnknownComponent {
                    name: name.clone(),
                    known: known.join(", "),
                });
            };
            if !component.installs() {
                return Err(PlanError::NotInstalled { name: name.clone() });
            }
            if !component.enabled(cluster) {
                return Err(PlanError::NotEnabled {
                    name: name.clone(),
                    roles: component.roles().to_vec(),
                });
            }
        }
        let components = ordered
            .into_iter()
            .filter(|c| c.installs() && c.enabled(cluster))
            .filter(|c| only.is_empty() || only.iter().any(|name| name == c.name()))
            .collect();
        Ok(ClusterPlan { components })
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.components.iter().map(|c| c.name()).collect()
    }

    /// Converge every component in order. `Err` only when the first component refuses before
    /// anything ran; a later refusal is the outcome's `error` (earlier components did their work).
    pub async fn run(&self, cluster: &Cluster, ctx: &RunContext) -> Result<ClusterOutcome, ComponentError> {
        let started = Instant::now();
        let mut outcome = ClusterOutcome::empty(ctx.mode);
        for component in &self.components {
            match component.converge(cluster, ctx).await {
                Ok(done) => {
                    let stop = !done.success();
                    if stop {
                        outcome.error = done.error.clone();
                        outcome.hint = done.hint.clone();
                    }
                    outcome.components.push(done);
                    if stop {
                        break;
                    }
                }
                Err(error) if outcome.components.is_empty() => return Err(error),
                Err(error) => {
                    outcome.error = Some(error.to_string());
                    outcome.hint = error.hint;
                    break;
                }
            }
        }
        let reports: Vec<&RunReport> = outcome.components.iter().map(|c| &c.summary).collect();
        outcome.summary = RunReport::merged(ctx.mode, &reports, started.elapsed());
        Ok(outcome)
    }
}

/// What a cluster plan did (or, as a plan, would do): per component, and merged per host.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterOutcome {
    pub mode: Mode,
    pub components: Vec<ComponentOutcome>,
    /// Every component's records merged per host: what the summary table shows.
    pub summary: RunReport,
    pub error: Option<String>,
    #[serde(skip)]
    pub hint: Option<String>,
}

impl ClusterOutcome {
    /// Nothing run yet.
    pub fn empty(mode: Mode) -> ClusterOutcome {
        ClusterOutcome {
            mode,
            components: Vec::new(),
            summary: RunReport {
                mode,
                hosts: Vec::new(),
                elapsed: Default::default(),
            },
            error: None,
            hint: None,
        }
    }

    pub fn success(&self) -> bool {
        self.error.is_none() && self.summary.success()
    }
}

/// `all` in dependency order (Kahn's algorithm, taking the earliest ready component each time).
pub(crate) fn dependency_order(all: &[&'static dyn Component]) -> Result<Vec<&'static dyn Component>, PlanError> {
    let names: BTreeSet<&str> = all.iter().map(|c| c.name()).collect();
    for component in all {
        if let Some(missing) = component.after().iter().find(|d| !names.contains(**d)) {
            return Err(PlanError::UnknownDependency {
                component: component.name(),
                missing,
            });
        }
    }
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut ordered = Vec::with_capacity(all.len());
    while ordered.len() < all.len() {
        let next = all
            .iter()
            .find(|c| !done.contains(c.name()) && c.after().iter().all(|d| done.contains(d)));
        match next {
            Some(component) => {
                done.insert(component.name());
                ordered.push(*component);
            }
            None => {
                let stuck = all.iter().map(|c| c.name()).filter(|n| !done.contains(n)).collect();
                return Err(PlanError::Cycle(stuck));
            }
        }
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::RequiredPort;
    use async_trait::async_trait;

    struct Fake {
        name: &'static str,
        roles: &'static [&'static str],
        after: &'static [&'static str],
        installs: bool,
    }

    #[async_trait(?Send)]
    impl Component for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn roles(&self) -> &'static [&'static str] {
            self.roles
        }
        fn required_ports(&self) -> Vec<RequiredPort> {
            Vec::new()
        }
        fn after(&self) -> &'static [&'static str] {
            self.after
        }
        fn installs(&self) -> bool {
            self.installs
        }
        async fn converge(&self, _: &Cluster, ctx: &RunContext) -> Result<ComponentOutcome, ComponentError> {
            Ok(ComponentOutcome {
                component: self.name,
                phases: Vec::new(),
                reports: Vec::new(),
                summary: RunReport {
                    mode: ctx.mode,
                    hosts: Vec::new(),
                    elapsed: Default::default(),
                },
                error: None,
                hint: None,
            })
        }
    }

    const fn fake(name: &'static str, roles: &'static [&'static str], after: &'static [&'static str]) -> Fake {
        Fake {
            name,
            roles,
            after,
            installs: true,
        }
    }

    static ETCD: Fake = fake("etcd", &["etcd"], &[]);
    static CONTROL_PLANE: Fake = fake("control-plane", &["control_plane"], &["etcd", "endpoint"]);
    static ENDPOINT: Fake = fake("endpoint", &["control_plane"], &["etcd"]);
    static MONITORING: Fake = fake("monitoring", &["monitoring"], &[]);
    static PORTS_ONLY: Fake = Fake {
        name: "ports-only",
        roles: &["node"],
        after: &[],
        installs: false,
    };

    fn cluster(roles: &[&str]) -> Cluster {
        let hosts: String = roles
            .iter()
            .enumerate()
            .map(|(i, role)| format!("  - name: h{i}\n    address: 10.0.0.{}\n    roles: [{role}]\n", i + 1))
            .collect();
        let text = format!("cluster:\n  name: test\nssh:\n  user: root\n  identity_file: /dev/null\nhosts:\n{hosts}");
        capstan_inventory::parse_str(&text, "inventory.yaml", std::path::Path::new("/tmp")).expect("valid inventory")
    }

    fn names(all: &[&'static dyn Component], cluster: &Cluster, only: &[&str]) -> Result<Vec<&'static str>, PlanError> {
        let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
        ClusterPlan::new(all, cluster, &only).map(|p| p.names())
    }

    #[test]
    fn orders_by_dependencies_and_keeps_only_enabled_installable_components() {
        let all: [&'static dyn Component; 5] = [&MONITORING, &CONTROL_PLANE, &PORTS_ONLY, &ENDPOINT, &ETCD];
        let full = cluster(&["etcd", "etcd", "etcd", "control_plane", "node"]);
        assert_eq!(names(&all, &full, &[]), Ok(vec!["etcd", "endpoint", "control-plane"]));
        let with_monitoring = cluster(&["etcd", "control_plane", "monitoring"]);
        assert_eq!(
            names(&all, &with_monitoring, &[]),
            Ok(vec!["monitoring", "etcd", "endpoint", "control-plane"])
        );
        assert_eq!(names(&all, &full, &["control-plane"]), Ok(vec!["control-plane"]));
    }

    #[test]
    fn only_names_are_checked() {
        let all: [&'static dyn Component; 3] = [&ETCD, &PORTS_ONLY, &MONITORING];
        let etcd_only = cluster(&["etcd"]);
        assert_eq!(
            names(&all, &etcd_only, &["etc"]),
            Err(PlanError::UnknownComponent {
                name: "etc".into(),
                known: "etcd, monitoring".into()
            })
        );
        assert_eq!(
            names(&all, &etcd_only, &["ports-only"]),
            Err(PlanError::NotInstalled {
                name: "ports-only".into()
            })
        );
        let error = names(&all, &etcd_only, &["monitoring"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the inventory does not enable monitoring: no host has role monitoring"
        );
    }

    #[test]
    fn cycles_and_unknown_dependencies_are_errors() {
        static A: Fake = fake("a", &["etcd"], &["b"]);
        static B: Fake = fake("b", &["etcd"], &["a"]);
        static C: Fake = fake("c", &["etcd"], &["nope"]);
        let etcd = cluster(&["etcd"]);
        assert_eq!(
            names(&[&ETCD, &A, &B], &etcd, &[]),
            Err(PlanError::Cycle(vec!["a", "b"]))
        );
        assert_eq!(
            names(&[&C], &etcd, &[]),
            Err(PlanError::UnknownDependency {
                component: "c",
                missing: "nope"
            })
        );
    }
}
