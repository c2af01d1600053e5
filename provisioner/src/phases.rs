//! Ordered cluster-wide phases (k0sctl style) and rolling batches.
//!
//! A [`PhaseRunner`] runs phases in order and stops at the first failure.
//! A phase that only applies operations implements [`Phase::host_ops`] and
//! gets `run` (apply) and `dry_run` (plan) for free; phases doing more (cluster
//! membership changes, health gates) override `run` and `dry_run`.

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

use crate::ops::OpError;
use crate::report::RunReport;
use crate::runner::{HostOps, Mode, Runner};

/// A cause of any type, kept typed (for `source()`, downcasting, hints) rather than flattened into text.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    #[error("phase {phase:?}: {} host(s) failed: {}", hosts.len(), hosts.join(", "))]
    HostsFailed { phase: String, hosts: Vec<String> },
    /// Flattened to text: new code uses [`PhaseError::failed`], which keeps the cause typed.
    #[error("phase {phase:?}: {reason}")]
    Failed { phase: String, reason: String },
    /// A step of the phase failed; `source` is its typed cause (build with [`PhaseError::failed`]).
    #[error("phase {phase:?}: {source}")]
    Step {
        phase: String,
        #[source]
        source: BoxError,
    },
    #[error("phase {phase:?}: {source}")]
    Op {
        phase: String,
        #[source]
        source: OpError,
    },
}

impl PhaseError {
    /// The phase failed because of `cause`: an error value (kept typed, reachable through
    /// `source()` and downcasting) or, where there is no error value, a message.
    pub fn failed(phase: impl Into<String>, cause: impl Into<BoxError>) -> PhaseError {
        PhaseError::Step {
            phase: phase.into(),
            source: cause.into(),
        }
    }

    pub fn phase(&self) -> &str {
        match self {
            PhaseError::HostsFailed { phase, .. }
            | PhaseError::Failed { phase, .. }
            | PhaseError::Step { phase, .. }
            | PhaseError::Op { phase, .. } => phase,
        }
    }
}

/// Shared by all phases of one run: caller state `S`, the op runner and mode.
pub struct PhaseContext<S> {
    pub state: S,
    pub runner: Runner,
    reports: Mutex<Vec<(String, RunReport)>>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl<S> PhaseContext<S> {
    /// Headers go to stderr.
    pub fn new(state: S, runner: Runner) -> PhaseContext<S> {
        PhaseContext::with_output(state, runner, Box::new(std::io::stderr()))
    }
    pub fn with_output(state: S, runner: Runner, out: Box<dyn Write + Send>) -> PhaseContext<S> {
        PhaseContext {
            state,
            runner,
            reports: Mutex::new(Vec::new()),
            out: Mutex::new(out),
        }
    }
    pub fn mode(&self) -> Mode {
        self.runner.options().mode
    }

    /// Run op lists through the runner in `mode`, keep the report, and fail
    /// the phase when any host failed.
    pub async fn run_ops(&self, phase: &str, hosts: Vec<HostOps>, mode: Mode) -> Result<RunReport, PhaseError> {
        let report = self.runner.run_with_mode(hosts, mode).await;
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((phase.to_string(), report.clone()));
        let failed: Vec<String> = report.failed_hosts().into_iter().map(String::from).collect();
        if failed.is_empty() {
            Ok(report)
        } else {
            Err(PhaseError::HostsFailed {
                phase: phase.to_string(),
                hosts: failed,
            })
        }
    }

    /// Keep a report made outside the runner (a step that is not a host op, e.g. a call to a
    /// cluster's API), so summaries, JSON and changed counts show it like any op.
    pub fn record(&self, phase: &str, report: RunReport) {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((phase.to_string(), report));
    }

    /// Every op report so far, tagged with its phase.
    pub fn reports(&self) -> Vec<(String, RunReport)> {
        self.reports.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn say(&self, line: &str) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{line}");
    }
}

#[async_trait]
pub trait Phase<S: Send + Sync + 'static>: Send + Sync {
    fn name(&self) -> String;

    /// False skips the phase (e.g. nothing to upgrade).
    async fn should_run(&self, _ctx: &PhaseContext<S>) -> Result<bool, PhaseError> {
        Ok(true)
    }

    /// The operations this phase applies, per host.
    async fn host_ops(&self, _ctx: &PhaseContext<S>) -> Result<Vec<HostOps>, PhaseError> {
        Ok(Vec::new())
    }

    async fn run(&self, ctx: &PhaseContext<S>) -> Result<(), PhaseError> {
        let hosts = self.host_ops(ctx).await?;
        ctx.run_ops(&self.name(), hosts, Mode::Apply).await.map(|_| ())
    }

    /// Default: plan the same operations without applying them.
    async fn dry_run(&self, ctx: &PhaseContext<S>) -> Result<(), PhaseError> {
        let hosts = self.host_ops(ctx).await?;
        ctx.run_ops(&self.name(), hosts, Mode::DryRun).await.map(|_| ())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseStatus {
    Done,
    Skipped,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseOutcome {
    pub name: String,
    pub status: PhaseStatus,
    #[serde(rename = "elapsed_secs", serialize_with = "secs")]
    pub elapsed: Duration,
}

fn secs<Ser: serde::Serializer>(d: &Duration, s: Ser) -> Result<Ser::Ok, Ser::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The outcomes so far and, when a phase failed, why (later phases did not run).
#[derive(Debug)]
pub struct PhasesResult {
    pub phases: Vec<PhaseOutcome>,
    pub error: Option<PhaseError>,
}

pub struct PhaseRunner<S: Send + Sync + 'static> {
    phases: Vec<Box<dyn Phase<S>>>,
}

impl<S: Send + Sync + 'static> Default for PhaseRunner<S> {
    fn default() -> Self {
        PhaseRunner { phases: Vec::new() }
    }
}

impl<S: Send + Sync + 'static> PhaseRunner<S> {
    pub fn new() -> PhaseRunner<S> {
        PhaseRunner::default()
    }
    pub fn phase(mut self, phase: impl Phase<S> + 'static) -> PhaseRunner<S> {
        self.phases.push(Box::new(phase));
        self
    }
    pub fn names(&self) -> Vec<String> {
        self.phases.iter().map(|p| p.name()).collect()
    }

    /// Run (or dry-run, per the context's mode) each phase in order.
    pub async fn run(&self, ctx: &PhaseContext<S>) -> PhasesResult {
        let total = self.phases.len();
        let mut outcomes = Vec::new();
        for (index, phase) in self.phases.iter().enumerate() {
            let name = phase.name();
            ctx.say(&format!("==> [{}/{total}] {name}", index + 1));
            let started = Instant::now();
            let result = match phase.should_run(ctx).await {
                Ok(false) => {
                    ctx.say("    skipped: nothing to do");
                    outcomes.push(PhaseOutcome {
                        name,
                        status: PhaseStatus::Skipped,
                        elapsed: started.elapsed(),
                    });
                    continue;
                }
                Ok(true) => match ctx.mode() {
                    Mode::Apply => phase.run(ctx).await,
                    Mode::DryRun => phase.dry_run(ctx).await,
                },
                Err(e) => Err(e),
            };
            let elapsed = started.elapsed();
            match result {
                Ok(()) => outcomes.push(PhaseOutcome {
                    name,
                    status: PhaseStatus::Done,
                    elapsed,
                }),
                Err(error) => {
                    ctx.say(&format!("    failed: {error}"));
                    outcomes.push(PhaseOutcome {
                        name,
                        status: PhaseStatus::Failed,
                        elapsed,
                    });
                    return PhasesResult {
                        phases: outcomes,
                        error: Some(error),
                    };
                }
            }
        }
        PhasesResult {
            phases: outcomes,
            error: None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RollingError<E> {
    /// The action failed for the item at `index` (in the full list) in `batch`.
    Action { batch: usize, index: usize, error: E },
    /// The gate after `batch` failed; later batches did not run.
    Gate { batch: usize, error: E },
}

impl<E: fmt::Display> fmt::Display for RollingError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollingError::Action { batch, index, error } => {
                write!(f, "batch {}: item {} failed: {error}", batch + 1, index + 1)
            }
            RollingError::Gate { batch, error } => write!(f, "health gate after batch {} failed: {error}", batch + 1),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for RollingError<E> {}

/// Work through items `batch_size` at a time (concurrently within a batch),
/// passing a gate (e.g. "cluster healthy") after each batch before the next.
#[derive(Debug, Clone, Copy)]
pub struct RollingBatch {
    pub batch_size: usize,
}

impl RollingBatch {
    pub fn new(batch_size: usize) -> RollingBatch {
        RollingBatch {
            batch_size: batch_size.max(1),
        }
    }

    pub async fn run<'a, T, E, A, AF, G, GF>(&self, items: &'a [T], action: A, gate: G) -> Result<(), RollingError<E>>
    where
        A: Fn(&'a T) -> AF,
        AF: Future<Output = Result<(), E>>,
        G: Fn(&'a [T]) -> GF,
        GF: Future<Output = Result<(), E>>,
    {
        for (batch, chunk) in items.chunks(self.batch_size.max(1)).enumerate() {
            let results = futures::future::join_all(chunk.iter().map(&action)).await;
            for (offset, result) in results.into_iter().enumerate() {
                if let Err(error) = result {
                    return Err(RollingError::Action {
                        batch,
                        index: batch * self.batch_size.max(1) + offset,
                        error,
                    });
                }
            }
            gate(chunk).await.map_err(|error| RollingError::Gate { batch, error })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;
    use std::sync::Arc;

    #[test]
    fn failed_keeps_the_cause_typed() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no write access");
        let error = PhaseError::failed("write config", io);
        assert_eq!(error.to_string(), "phase \"write config\": no write access");
        assert_eq!(error.phase(), "write config");
        let source = error.source().expect("a source");
        let io = source.downcast_ref::<std::io::Error>().expect("still an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
        // A message works where there is no error value.
        let text = PhaseError::failed("verify", format!("{} members unhealthy", 2));
        assert_eq!(text.to_string(), "phase \"verify\": 2 members unhealthy");
    }

    #[allow(clippy::type_complexity)] // data-driven case tables
    #[tokio::test]
    async fn rolling_batches_stop_at_the_gate() {
        let items: Vec<u32> = (1..=5).collect();
        // (batch size, item that fails its action, batch whose gate fails) → events, result
        let cases: Vec<(usize, Option<u32>, Option<u32>, &str, Result<(), RollingError<String>>)> = vec![
            (2, None, None, "a1 a2 g[1,2] a3 a4 g[3,4] a5 g[5]", Ok(())),
            (5, None, None, "a1 a2 a3 a4 a5 g[1,2,3,4,5]", Ok(())),
            (
                2,
                None,
                Some(3),
                "a1 a2 g[1,2] a3 a4 g[3,4]",
                Err(RollingError::Gate {
                    batch: 1,
                    error: "unhealthy".into(),
                }),
            ),
            (
                2,
                Some(4),
                None,
                "a1 a2 g[1,2] a3 a4",
                Err(RollingError::Action {
                    batch: 1,
                    index: 3,
                    error: "boom".into(),
                }),
            ),
            (0, None, None, "a1 g[1] a2 g[2] a3 g[3] a4 g[4] a5 g[5]", Ok(())),
        ];
        for (size, failing_item, failing_gate, expected_events, expected) in cases {
            let events = Arc::new(Mutex::new(Vec::<String>::new()));
            let result = RollingBatch::new(size)
                .run(
                    &items,
                    |item| {
                        let events = events.clone();
                        async move {
                            events.lock().unwrap().push(format!("a{item}"));
                            if Some(*item) == failing_item {
                                Err("boom".to_string())
                            } else {
                                Ok(())
                            }
                        }
                    },
                    |batch| {
                        let events = events.clone();
                        async move {
                            let names: Vec<String> = batch.iter().map(u32::to_string).collect();
                            events.lock().unwrap().push(format!("g[{}]", names.join(",")));
                            if failing_gate.is_some_and(|g| batch.contains(&g)) {
                                Err("unhealthy".to_string())
                            } else {
                                Ok(())
                            }
                        }
                    },
                )
                .await;
            assert_eq!(events.lock().unwrap().join(" "), expected_events, "size {size}");
            assert_eq!(result, expected, "size {size}");
        }
    }
}
