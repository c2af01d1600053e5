//! What a component (a service capstan installs and runs on cluster hosts) tells the engine.
//!
//! The engine never names a component: each one lives in its own crate and implements
//! [`Component`], and the binary hands the engine the list of all of them. Whatever the engine
//! needs to know per component comes through this trait, so adding a component changes no engine
//! code.
//!
//! A component declares the inventory roles it runs on, the TCP ports those roles need (checked by
//! the preflight [`crate::check`]), what it contributes to other components (metrics scrape
//! targets, journald units to ship), which components it comes after, and how it converges: its
//! own ordered phases, run (or, as a plan, dry-run) through the engine's ops path.
//! [`crate::cluster_plan`] composes every component the inventory enables into one plan.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use capstan_inventory::{Cluster, Host};
use serde::Serialize;

use crate::check::RequiredPort;
use crate::ops::Operation;
use crate::phases::{PhaseContext, PhaseOutcome, PhaseRunner};
use crate::report::{Reporter, RunReport};
use crate::runner::{Mode, Progress, RunOptions, Runner};

/// A component as the engine sees it. Implementations are stateless descriptions; `Send + Sync`
/// so a list of them can be a `static` and be shared across tasks.
#[async_trait(?Send)]
pub trait Component: Send + Sync {
    /// The component's name, e.g. its row in the release table ([`crate::releases`]).
    fn name(&self) -> &'static str;

    /// The inventory roles (e.g. `node`) whose hosts run this component.
    fn roles(&self) -> &'static [&'static str];

    /// The TCP ports the component needs, each tagged with the role ([`RequiredPort::role`], one
    /// of [`Component::roles`]) whose hosts need it. Preflight checks them on every host with that
    /// role: free, or already held by [`RequiredPort::owner`].
    fn required_ports(&self) -> Vec<RequiredPort>;

    /// Components that must have converged before this one (by name), e.g. a control plane comes
    /// after its datastore. The cluster plan orders components by these edges.
    fn after(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether capstan installs this component, i.e. implements [`Component::converge`]. A
    /// component may only describe software installed some other way (its preflight ports).
    fn installs(&self) -> bool {
        false
    }

    /// Whether the inventory asks for this component: by default, some host has one of its roles.
    fn enabled(&self, cluster: &Cluster) -> bool {
        cluster
            .hosts
            .iter()
            .any(|host| host.roles.iter().any(|role| self.roles().contains(&role.as_str())))
    }

    /// Metrics endpoints on the cluster's hosts that monitoring scrapes.
    fn scrape_targets(&self, _cluster: &Cluster) -> Vec<ScrapeTarget> {
        Vec::new()
    }

    /// The client credential monitoring presents to this component's HTTPS targets that
    /// authenticate and authorize their scrapers, issued for the monitoring hosts. `current` is
    /// the client certificate (PEM) the monitoring hosts already have for this component, if any:
    /// kept when it still fits (then [`ScrapeCredentials::issued`] is `None`). `None` when the
    /// component's targets need no credential.
    async fn scrape_credentials(
        &self,
        _cluster: &Cluster,
        _current: Option<&str>,
    ) -> Result<Option<ScrapeCredentials>, ComponentError> {
        Ok(None)
    }

    /// systemd units whose journals logging ships, on the hosts with this component's roles.
    fn log_units(&self) -> &'static [&'static str] {
        &[]
    }

    /// Files on this component's hosts that a backup keeps (age-encrypted with the rest) and a
    /// restore puts back byte for byte: key material the datastore does not hold, such as CA key
    /// pairs. Read from the first reachable host of [`StateFile::role`] that has them; restored on
    /// every host of that role.
    fn state_files(&self, _cluster: &Cluster) -> Vec<StateFile> {
        Vec::new()
    }

    /// systemd units that must not run while the datastore is restored: stopped (where present)
    /// before the restore touches it, started again once [`Component::state_files`] are back.
    fn restore_stopped_units(&self) -> Vec<RoleUnit> {
        Vec::new()
    }

    /// Checks a disaster-recovery drill runs on the restored cluster when this component is
    /// enabled (e.g. "the API answers", "objects are readable"), after the datastore's own.
    async fn drill_checks(&self, _cluster: &Cluster) -> Vec<CheckResult> {
        Vec::new()
    }

    /// Why this component's drill checks cannot run on the drill target `cluster` (something the
    /// target cannot have, e.g. release artifacts that are not available there), naming exactly
    /// what is missing; `None` when they can. A drill then reports each of the checks named here
    /// as skipped with that reason rather than running (or passing) them.
    fn drill_skip(&self, _cluster: &Cluster) -> Option<DrillSkip> {
        None
    }

    /// What capstan installed for this component on `host`, as ops that remove it, in order
    /// (`capstan reset`): stop and disable services, then remove units, files, directories, data.
    /// Empty when the component has nothing on that host. The ops converge like any others, so a
    /// second reset changes nothing and `--dry-run` shows what would go.
    fn teardown(&self, _cluster: &Cluster, _host: &Host) -> Result<Vec<Arc<dyn Operation>>, ComponentError> {
        Ok(Vec::new())
    }

    /// Whether [`Component::teardown`] knows everything this component installs. `capstan reset`
    /// refuses (unless forced) to reset a cluster whose inventory enables an installed component
    /// that cannot be torn down yet, rather than report success and leave it behind.
    fn resets(&self) -> bool {
        false
    }

    /// Refuse a reset of `hosts` (a subset of the inventory's) that would break what keeps running
    /// on the others, e.g. a datastore's quorum. Checked before anything changes, unless forced.
    fn check_reset(&self, _cluster: &Cluster, _hosts: &[&Host]) -> Result<(), ComponentError> {
        Ok(())
    }

    /// Converge the component on `cluster` (in [`Mode::DryRun`]: plan it, changing nothing):
    /// inspect, refuse unsafe changes before touching anything, then run its phases.
    async fn converge(&self, _cluster: &Cluster, _ctx: &RunContext) -> Result<ComponentOutcome, ComponentError> {
        Err(ComponentError {
            component: self.name(),
            message: "capstan does not install this component".into(),
            hint: None,
        })
    }
}

/// A file of a component's state (see [`Component::state_files`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateFile {
    /// The inventory role whose hosts hold it.
    pub role: &'static str,
    /// Absolute path on those hosts.
    pub path: String,
    /// Its mode when restored (owner and group root).
    pub mode: u32,
    /// A file that may be missing (e.g. written only once some feature is used): a backup without
    /// it is still complete.
    pub optional: bool,
}

/// One check's outcome, as a drill reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// A client credential for scraping a component's targets ([`Component::scrape_credentials`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ScrapeCredentials {
    /// The jobs ([`ScrapeTarget::job`]) scraped with it.
    pub jobs: Vec<String>,
    /// Of those, the jobs whose serving certificates [`ScrapeCredentials::ca_cert_pem`] verifies;
    /// the others serve self-signed certificates (the client certificate still authenticates).
    pub verified_jobs: Vec<String>,
    /// The CA of the targets' client authentication (and of the verified jobs' serving certificates).
    pub ca_cert_pem: String,
    /// A new client certificate and key (PEM); `None`: the current one still fits.
    pub issued: Option<(String, String)>,
}

impl std::fmt::Debug for ScrapeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeCredentials")
            .field("jobs", &self.jobs)
            .field("verified_jobs", &self.verified_jobs)
            .field("issued", &self.issued.as_ref().map(|_| "<new certificate and key>"))
            .finish()
    }
}

/// Drill checks a component cannot run on a drill target, and why ([`Component::drill_skip`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrillSkip {
    /// The names of the checks that do not run (as [`Component::drill_checks`] names them).
    pub checks: Vec<String>,
    /// What is missing, precisely enough to supply it.
    pub missing: String,
}

/// A systemd unit on the hosts of a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleUnit {
    pub role: &'static str,
    pub unit: &'static str,
}

/// A metrics endpoint a component serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScrapeTarget {
    /// Prometheus job name.
    pub job: String,
    /// `host:port`.
    pub address: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    pub path: &'static str,
}

/// How a cluster plan runs its components.
#[derive(Clone)]
pub struct RunContext {
    pub mode: Mode,
    /// Hosts worked on at once.
    pub concurrency: usize,
    pub progress: Arc<dyn Progress>,
    /// Phase headers and step lines (stderr, or a sink when quiet).
    pub out: Reporter,
}

impl RunContext {
    /// Run `phases` over `state` in this context (mode, concurrency, progress, output) and gather
    /// what they did into `component`'s outcome, timed from `started`. The component's own
    /// inspection and refusals come before; closing its connections after.
    pub async fn run_phases<S: Send + Sync + 'static>(
        &self,
        component: &'static str,
        state: S,
        phases: PhaseRunner<S>,
        started: Instant,
    ) -> ComponentOutcome {
        let runner = Runner::new(
            RunOptions {
                mode: self.mode,
                concurrency: self.concurrency.max(1),
            },
            self.progress.clone(),
        );
        let phase_ctx = PhaseContext::with_output(state, runner, Box::new(self.out.clone()));
        let result = phases.run(&phase_ctx).await;
        let reports: Vec<PhaseReport> = phase_ctx
            .reports()
            .into_iter()
            .map(|(phase, report)| PhaseReport { phase, report })
            .collect();
        let refs: Vec<&RunReport> = reports.iter().map(|r| &r.report).collect();
        let summary = RunReport::merged(self.mode, &refs, started.elapsed());
        let hint = result
            .error
            .as_ref()
            .map(|_| "fix the cause shown above and run `capstan apply` again".to_string());
        ComponentOutcome {
            component,
            phases: result.phases,
            reports,
            summary,
            error: result.error.map(|e| e.to_string()),
            hint,
        }
    }
}

/// One phase's operations report.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    pub report: RunReport,
}

/// What converging one component did (or, as a plan, would do).
#[derive(Debug, Clone, Serialize)]
pub struct ComponentOutcome {
    pub component: &'static str,
    pub phases: Vec<PhaseOutcome>,
    pub reports: Vec<PhaseReport>,
    /// Every phase's records merged per host.
    pub summary: RunReport,
    /// Why the component stopped after it started changing hosts.
    pub error: Option<String>,
    #[serde(skip)]
    pub hint: Option<String>,
}

impl ComponentOutcome {
    pub fn success(&self) -> bool {
        self.error.is_none() && self.summary.success()
    }
}

impl crate::hint::Hint for ComponentError {
    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
}

/// A component that stopped before changing anything (unreachable hosts, a refused change, ...).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{component}: {message}")]
pub struct ComponentError {
    pub component: &'static str,
    pub message: String,
    pub hint: Option<String>,
}
