//! Runs each host's operation list, hosts in parallel (bounded), ops in order.
//!
//! The probes of a host's ops are read in one round trip before they are planned, and again
//! (for the ops still to come) only after a step changed the host: see [`crate::ops::probe_batch`].

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use console::Style;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::facts::FactCache;
use crate::ops::apply_batch::{apply_plans, apply_plans_then_probe};
use crate::ops::handlers::HandlerQueue;
use crate::ops::probe_batch::ProbeSession;
use crate::ops::{OpError, Operation, Plan};
use crate::report::{ChangeRecord, HostReport, OpRecord, OpStatus, RunReport};
use crate::transport::Transport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Apply,
    /// Plan only: probes run, nothing is changed.
    DryRun,
}

pub const DEFAULT_CONCURRENCY: usize = 32;

#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub mode: Mode,
    /// Hosts worked on at once (at least 1).
    pub concurrency: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            mode: Mode::Apply,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// One host's connection and its ordered operations.
pub struct HostOps {
    pub transport: Arc<dyn Transport>,
    pub ops: Vec<Arc<dyn Operation>>,
    /// Probe results read before the run (see [`HostOps::with_facts`]).
    facts: Option<Arc<FactCache>>,
}

impl HostOps {
    pub fn new(transport: Arc<dyn Transport>) -> HostOps {
        HostOps {
            transport,
            ops: Vec::new(),
            facts: None,
        }
    }
    /// Plan from probe results already read into `facts` (e.g. with
    /// [`crate::ops::probe_batch::prefetch_commands`] in the same round trip as other probes of the
    /// host): the run reads only what is missing. The run drops the host's entries as soon as
    /// it changes the host; whoever changes it outside a run must call
    /// [`FactCache::invalidate_host`].
    pub fn with_facts(mut self, facts: Arc<FactCache>) -> HostOps {
        self.facts = Some(facts);
        self
    }
    pub fn push(&mut self, op: impl Operation + 'static) {
        self.ops.push(Arc::new(op));
    }
    pub fn with(mut self, op: impl Operation + 'static) -> HostOps {
        self.push(op);
        self
    }
}

/// Live feedback while a run progresses.
pub trait Progress: Send + Sync {
    fn host_started(&self, host: &str, ops: usize);
    fn op_started(&self, host: &str, op: &str);
    fn op_finished(&self, host: &str, mode: Mode, record: &OpRecord);
    fn host_finished(&self, host: &str, report: &HostReport);
}

/// Colour only on a terminal, and never when NO_COLOR is set (no-color.org).
pub fn color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Bars on a terminal, plain lines otherwise.
pub fn stderr_progress() -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Arc::new(BarProgress::new(color_enabled()))
    } else {
        Arc::new(PlainProgress::stderr(false))
    }
}

/// Reports nothing (library callers that only want the [`RunReport`]).
pub struct NoProgress;

impl Progress for NoProgress {
    fn host_started(&self, _: &str, _: usize) {}
    fn op_started(&self, _: &str, _: &str) {}
    fn op_finished(&self, _: &str, _: Mode, _: &OpRecord) {}
    fn host_finished(&self, _: &str, _: &HostReport) {}
}

fn status_label(mode: Mode, status: OpStatus) -> &'static str {
    match (mode, status) {
        (Mode::Apply, OpStatus::Changed) => "changed",
        (Mode::DryRun, OpStatus::Changed) => "would change",
        (_, OpStatus::Ok) => "ok",
        (_, OpStatus::Failed) => "failed",
        (_, OpStatus::Skipped) => "skipped",
    }
}

fn host_summary(report: &HostReport) -> String {
    format!(
        "{} ok, {} changed, {} failed in {:.1}s",
        report.ok,
        report.changed,
        report.failed,
        report.elapsed.as_secs_f64()
    )
}

/// `host: [changed] summary` lines, one per change or failure.
pub struct PlainProgress {
    out: Mutex<Box<dyn Write + Send>>,
    color: bool,
}

impl PlainProgress {
    pub fn stderr(color: bool) -> PlainProgress {
        PlainProgress::to_writer(Box::new(std::io::stderr()), color)
    }
    pub fn to_writer(out: Box<dyn Write + Send>, color: bool) -> PlainProgress {
        PlainProgress {
            out: Mutex::new(out),
            color,
        }
    }
    fn line(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Progress output is best effort: a closed stderr must not fail the run.
        let _ = writeln!(out, "{text}");
    }
}

fn status_style(color: bool, status: OpStatus) -> Style {
    let style = match status {
        OpStatus::Changed => Style::new().yellow(),
        OpStatus::Failed => Style::new().red().bold(),
        OpStatus::Ok => Style::new().green(),
        OpStatus::Skipped => Style::new().dim(),
    };
    style.force_styling(color)
}

fn record_lines(host: &str, mode: Mode, record: &OpRecord, color: bool) -> Vec<String> {
    let label = status_style(color, record.status).apply_to(format!("[{}]", status_label(mode, record.status)));
    match record.status {
        OpStatus::Changed => record
            .changes
            .iter()
            .map(|c| format!("{host}: {label} {}", c.summary))
            .collect(),
        OpStatus::Failed => {
            vec![format!(
                "{host}: {label} {}: {}",
                record.op,
                record.error.as_deref().unwrap_or("failed")
            )]
        }
        OpStatus::Ok | OpStatus::Skipped => Vec::new(),
    }
}

impl Progress for PlainProgress {
    fn host_started(&self, _: &str, _: usize) {}
    fn op_started(&self, _: &str, _: &str) {}
    fn op_finished(&self, host: &str, mode: Mode, record: &OpRecord) {
        for line in record_lines(host, mode, record, self.color) {
            self.line(&line);
        }
    }
    fn host_finished(&self, host: &str, report: &HostReport) {
        self.line(&format!("{host}: done: {}", host_summary(report)));
    }
}

/// One indicatif line per host (its bar counts the current phase's ops, its message is the op
/// being worked on); change and failure lines print above the bars.
pub struct BarProgress {
    multi: MultiProgress,
    bars: Mutex<std::collections::HashMap<String, ProgressBar>>,
    color: bool,
}

impl BarProgress {
    pub fn new(color: bool) -> BarProgress {
        BarProgress {
            multi: MultiProgress::new(),
            bars: Mutex::new(Default::default()),
            color,
        }
    }
    fn bar(&self, host: &str) -> Option<ProgressBar> {
        self.bars.lock().unwrap_or_else(|p| p.into_inner()).get(host).cloned()
    }
}

impl Progress for BarProgress {
    fn host_started(&self, host: &str, ops: usize) {
        // One line per host for the whole run: a later phase (another run of ops) restarts the
        // host's bar for its own ops instead of adding a line.
        if let Some(bar) = self.bar(host) {
            bar.reset();
            bar.set_length(ops as u64);
            bar.set_message("");
            bar.enable_steady_tick(Duration::from_millis(120));
            return;
        }
        let bar = self.multi.add(ProgressBar::new(ops as u64));
        let style = ProgressStyle::with_template("{spinner} {prefix:<20!} [{bar:20}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(host.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string(), bar);
    }
    fn op_started(&self, host: &str, op: &str) {
        if let Some(bar) = self.bar(host) {
            // Handlers add ops beyond the initial count.
            if bar.position() >= bar.length().unwrap_or(0) {
                bar.inc_length(1);
            }
            bar.set_message(op.to_string());
        }
    }
    fn op_finished(&self, host: &str, mode: Mode, record: &OpRecord) {
        for line in record_lines(host, mode, record, self.color) {
            let _ = self.multi.println(line);
        }
        if let Some(bar) = self.bar(host) {
            bar.inc(1);
        }
    }
    fn host_finished(&self, host: &str, report: &HostReport) {
        if let Some(bar) = self.bar(host) {
            bar.finish_with_message(host_summary(report));
        }
    }
}

pub struct Runner {
    options: RunOptions,
    progress: Arc<dyn Progress>,
}

impl Runner {
    pub fn new(options: RunOptions, progress: Arc<dyn Progress>) -> Runner {
        Runner { options, progress }
    }
    pub fn options(&self) -> RunOptions {
        self.options
    }
    pub fn progress(&self) -> Arc<dyn Progress> {
        self.progress.clone()
    }

    /// Run every host's list; a failing host stops its own list only.
    /// Host reports come back in the order the hosts were given.
    pub async fn run(&self, hosts: Vec<HostOps>) -> RunReport {
        self.run_with_mode(hosts, self.options.mode).await
    }

    pub async fn run_with_mode(&self, hosts: Vec<HostOps>, mode: Mode) -> RunReport {
        let started = Instant::now();
        let semaphore = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let names: Vec<String> = hosts.iter().map(|h| h.transport.host().to_string()).collect();
        let mut tasks = JoinSet::new();
        for (index, host) in hosts.into_iter().enumerate() {
            let semaphore = semaphore.clone();
            let progress = self.progress.clone();
            tasks.spawn(async move {
                // The semaphore is never closed, so acquiring cannot fail.
                let _permit = semaphore.acquire_owned().await.ok();
                (index, run_host(host, mode, progress.as_ref()).await)
            });
        }
        let mut reports: Vec<Option<HostReport>> = names.iter().map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            if let Ok((index, report)) = joined {
                reports[index] = Some(report);
            }
        }
        let hosts = reports
            .into_iter()
            .zip(&names)
            .map(|(report, name)| {
                report.unwrap_or_else(|| {
                    let mut report = HostReport::new(name);
                    report.push(OpRecord {
                        op: "run".into(),
                        status: OpStatus::Failed,
                        changes: Vec::new(),
                        error: Some("internal error: the host's task panicked".into()),
                        elapsed: Duration::ZERO,
                    });
                    report
                })
            })
            .collect();
        RunReport {
            mode,
            hosts,
            elapsed: started.elapsed(),
        }
    }
}

/// Plan `ops[0]` (the rest is what follows it in the host's list) from the session's
/// prefetched probes.
async fn plan_op(
    t: &dyn Transport,
    probes: &ProbeSession,
    ops: &[Arc<dyn Operation>],
) -> Result<(Plan, Vec<ChangeRecord>), OpError> {
    probes.prefetch(t, ops).await;
    let plan = ops[0].plan(&probes.transport(t)).await?;
    let records = plan
        .changes
        .iter()
        .map(|c| ChangeRecord {
            summary: c.summary.clone(),
            diff: c.diff.clone(),
            commands: c.steps.iter().map(|s| s.display()).collect(),
        })
        .collect();
    Ok((plan, records))
}

/// One op (`ops[0]`, the rest is what follows it in the host's list): plan, then apply
/// unless dry run. The op plans from the session's prefetched probes; applying drops them.
async fn run_op(t: &dyn Transport, probes: &ProbeSession, ops: &[Arc<dyn Operation>], mode: Mode) -> OpRecord {
    let started = Instant::now();
    let outcome: Result<Vec<ChangeRecord>, OpError> = async {
        let (plan, records) = plan_op(t, probes, ops).await?;
        if mode == Mode::Apply && !plan.is_unchanged() {
            probes.invalidate(t.host());
            apply_plans(t, &[&plan]).await.map_err(|(_, e)| e)?;
        }
        Ok(records)
    }
    .await;
    let (status, changes, error) = match outcome {
        Ok(changes) if changes.is_empty() => (OpStatus::Ok, changes, None),
        Ok(changes) => (OpStatus::Changed, changes, None),
        Err(e) => (OpStatus::Failed, Vec::new(), Some(e.to_string())),
    };
    OpRecord {
        op: ops[0].describe(),
        status,
        changes,
        error,
        elapsed: started.elapsed(),
    }
}

fn skipped(op: &dyn Operation) -> OpRecord {
    OpRecord {
        op: op.describe(),
        status: OpStatus::Skipped,
        changes: Vec::new(),
        error: None,
        elapsed: Duration::ZERO,
    }
}

/// A planned self-contained op whose steps (if any) wait for the next flush, and whose record
/// waits with them so that records stay in the list's order.
struct Queued {
    op: Arc<dyn Operation>,
    plan: Plan,
    changes: Vec<ChangeRecord>,
    planned_in: Duration,
}

/// One host's run: its report and where progress goes.
struct HostRun<'a> {
    name: String,
    mode: Mode,
    progress: &'a dyn Progress,
    report: HostReport,
    /// Planned self-contained ops, not applied yet (Mode::Apply only).
    queue: Vec<Queued>,
}

impl HostRun<'_> {
    fn finish(&mut self, record: OpRecord) -> OpStatus {
        self.progress.op_finished(&self.name, self.mode, &record);
        let status = record.status;
        self.report.push(record);
        status
    }

    /// How many queued ops change something.
    fn queued_changes(&self) -> usize {
        self.queue.iter().filter(|q| !q.plan.is_unchanged()).count()
    }

    /// Plan the self-contained `ops[0]` (the rest is what follows it in the host's list) and queue
    /// it for the next flush. True when it (or, flushed on its planning error, a queued op) failed.
    async fn queue_op(&mut self, t: &dyn Transport, probes: &ProbeSession, ops: &[Arc<dyn Operation>]) -> bool {
        let op = &ops[0];
        let planning = Instant::now();
        match plan_op(t, probes, ops).await {
            Ok((plan, changes)) => {
                self.queue.push(Queued {
                    op: op.clone(),
                    plan,
                    changes,
                    planned_in: planning.elapsed(),
                });
                // Nothing to apply yet: report at once.
                if self.queue.iter().all(|q| q.plan.is_unchanged()) {
                    self.flush(t, probes, &[]).await;
                }
                false
            }
            Err(e) => {
                let elapsed = planning.elapsed();
                // What was planned before it is applied, as without queueing.
                let record = if self.flush(t, probes, &[]).await {
                    skipped(op.as_ref())
                } else {
                    OpRecord {
                        op: op.describe(),
                        status: OpStatus::Failed,
                        changes: Vec::new(),
                        error: Some(e.to_string()),
                        elapsed,
                    }
                };
                self.finish(record);
                true
            }
        }
    }

    /// Whether `op` may plan differently once a queued change is applied (see
    /// [`Operation::footprint`]).
    fn meets_queued_change(&self, op: &dyn Operation) -> bool {
        let footprint = op.footprint();
        self.queue
            .iter()
            .filter(|queued| !queued.plan.is_unchanged())
            .flat_map(|queued| queued.op.footprint())
            .any(|queued| footprint.iter().any(|mine| mine.meets(&queued)))
    }

    /// Apply the queued ops' steps in order, in as few execs as possible, and report them:
    /// changed once their steps ran; the op whose step failed as failed, the ones after it as
    /// skipped. True when one failed.
    ///
    /// `rest` are the ops to plan next (none before a handler, which changes the host again):
    /// their probes are read in the last exec of the flush, after its steps.
    async fn flush(&mut self, t: &dyn Transport, probes: &ProbeSession, rest: &[Arc<dyn Operation>]) -> bool {
        if self.queue.is_empty() {
            return false;
        }
        let queue = std::mem::take(&mut self.queue);
        let started = Instant::now();
        let outcome = if queue.iter().all(|q| q.plan.is_unchanged()) {
            Ok(())
        } else {
            probes.invalidate(t.host());
            let wanted = probes.wanted(t.host(), rest);
            let plans: Vec<&Plan> = queue.iter().map(|q| &q.plan).collect();
            apply_plans_then_probe(t, &plans, &wanted).await.map(|probed| {
                if let Some(outputs) = probed {
                    probes.record(t.host(), &wanted, outputs);
                }
            })
        };
        let applied_in = started.elapsed();
        let failed_at = outcome.as_ref().err().map(|(index, _)| *index);
        let mut error = outcome.err().map(|(_, e)| e.to_string());
        for (index, queued) in queue.into_iter().enumerate() {
            let op = queued.op.describe();
            // Each changed op took its planning plus the exec(s) it shared with the others.
            let elapsed = queued.planned_in
                + if queued.changes.is_empty() {
                    Duration::ZERO
                } else {
                    applied_in
                };
            let record = match failed_at {
                Some(at) if index == at => OpRecord {
                    op,
                    status: OpStatus::Failed,
                    changes: Vec::new(),
                    error: error.take(),
                    elapsed,
                },
                Some(at) if index > at => skipped(queued.op.as_ref()),
                _ => OpRecord {
                    op,
                    status: if queued.changes.is_empty() {
                        OpStatus::Ok
                    } else {
                        OpStatus::Changed
                    },
                    changes: queued.changes,
                    error: None,
                    elapsed,
                },
            };
            self.finish(record);
        }
        failed_at.is_some()
    }
}

/// Run one host's list in order, with handlers; stops at the first failure.
///
/// In [`Mode::Apply`], the changes of consecutive self-contained ops
/// ([`Operation::self_contained`]) are queued and applied together ([`apply_plans`]) before the
/// next op that is not self-contained, before any handler and at the end of the list, so that
/// a list of files costs one exec rather than one per step and a probe batch per change. An op
/// whose footprint meets a queued change's is planned after that change is applied.
pub async fn run_host(host: HostOps, mode: Mode, progress: &dyn Progress) -> HostReport {
    let started = Instant::now();
    let t = host.transport.as_ref();
    let name = t.host().to_string();
    progress.host_started(&name, host.ops.len());
    let mut run = HostRun {
        report: HostReport::new(&name),
        name,
        mode,
        progress,
        queue: Vec::new(),
    };
    let mut handlers = HandlerQueue::default();
    let mut failed = false;
    let probes = match &host.facts {
        Some(facts) => ProbeSession::with_cache(facts.clone()),
        None => ProbeSession::new(),
    };

    for (index, op) in host.ops.iter().enumerate() {
        if failed {
            run.report.push(skipped(op.as_ref()));
            continue;
        }
        let triggers = op.triggers();
        let due = handlers.before(&triggers);
        let queue_it = mode == Mode::Apply && op.self_contained();
        // A self-contained handler (daemon-reload) joins the queue like any self-contained op, so
        // the unit writes before it, the reload and the file writes after it share one exec.
        let queue_due = mode == Mode::Apply && !due.is_empty() && due.iter().all(|h| h.self_contained());
        if !due.is_empty() && !queue_due {
            failed = run.flush(t, &probes, &[]).await;
        }
        for handler in due {
            if failed {
                run.report.push(skipped(handler.as_ref()));
                continue;
            }
            progress.op_started(&run.name, &handler.describe());
            if queue_due {
                failed = run.queue_op(t, &probes, &[handler]).await;
            } else {
                let record = run_op(t, &probes, &[handler], mode).await;
                failed |= run.finish(record) == OpStatus::Failed;
            }
        }
        if !failed && (!queue_it || run.meets_queued_change(op.as_ref())) {
            failed = run.flush(t, &probes, &host.ops[index..]).await;
        }
        if failed {
            run.report.push(skipped(op.as_ref()));
            continue;
        }
        progress.op_started(&run.name, &op.describe());
        if !queue_it {
            let record = run_op(t, &probes, &host.ops[index..], mode).await;
            match run.finish(record) {
                OpStatus::Changed => handlers.record(&triggers),
                OpStatus::Failed => failed = true,
                OpStatus::Ok | OpStatus::Skipped => {}
            }
            continue;
        }
        let changes_before = run.queued_changes();
        failed = run.queue_op(t, &probes, &host.ops[index..]).await;
        if !failed && run.queued_changes() > changes_before {
            handlers.record(&triggers);
        }
    }
    if !failed {
        failed = run.flush(t, &probes, &[]).await;
    }
    match handlers.finish() {
        Ok(finishers) => {
            for (index, handler) in finishers.iter().enumerate() {
                if failed {
                    run.report.push(skipped(handler.as_ref()));
                    continue;
                }
                progress.op_started(&run.name, &handler.describe());
                let record = run_op(t, &probes, &finishers[index..], mode).await;
                failed |= run.finish(record) == OpStatus::Failed;
            }
        }
        Err(e) => run.report.push(OpRecord {
            op: "handlers".into(),
            status: OpStatus::Failed,
            changes: Vec::new(),
            error: Some(e.to_string()),
            elapsed: Duration::ZERO,
        }),
    }
    let mut report = run.report;
    report.elapsed = started.elapsed();
    progress.host_finished(&run.name, &report);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn record(status: OpStatus, summaries: &[&str], error: Option<&str>) -> OpRecord {
        OpRecord {
            op: "file /etc/x".into(),
            status,
            changes: summaries
                .iter()
                .map(|s| ChangeRecord {
                    summary: s.to_string(),
                    diff: None,
                    commands: vec![],
                })
                .collect(),
            error: error.map(String::from),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn plain_progress_lines() {
        let out = Captured::default();
        let progress = PlainProgress::to_writer(Box::new(out.clone()), false);
        progress.op_finished("n1", Mode::Apply, &record(OpStatus::Ok, &[], None));
        progress.op_finished(
            "n1",
            Mode::Apply,
            &record(OpStatus::Changed, &["create /etc/x", "mode of /etc/x"], None),
        );
        progress.op_finished("n2", Mode::DryRun, &record(OpStatus::Changed, &["update /etc/x"], None));
        progress.op_finished("n3", Mode::Apply, &record(OpStatus::Failed, &[], Some("n3: boom")));
        progress.op_finished("n3", Mode::Apply, &record(OpStatus::Skipped, &[], None));
        let mut report = HostReport::new("n1");
        report.push(record(OpStatus::Changed, &["create /etc/x"], None));
        report.elapsed = Duration::from_millis(1250);
        progress.host_finished("n1", &report);
        let expected = "\
n1: [changed] create /etc/x
n1: [changed] mode of /etc/x
n2: [would change] update /etc/x
n3: [failed] file /etc/x: n3: boom
n1: done: 0 ok, 1 changed, 0 failed in 1.2s
";
        assert_eq!(String::from_utf8(out.0.lock().unwrap().clone()).unwrap(), expected);

        let colored = PlainProgress::to_writer(Box::new(out.clone()), true);
        colored.op_finished("n1", Mode::Apply, &record(OpStatus::Changed, &["x"], None));
        assert!(String::from_utf8(out.0.lock().unwrap().clone())
            .unwrap()
            .ends_with("\u{1b}[0m x\n"));
    }
    /// Every progress call, in order.
    #[derive(Default)]
    struct Events(Mutex<Vec<String>>);

    impl Progress for Events {
        fn host_started(&self, _: &str, _: usize) {}
        fn op_started(&self, _: &str, op: &str) {
            self.0.lock().unwrap().push(format!("start {op}"));
        }
        fn op_finished(&self, _: &str, _: Mode, record: &OpRecord) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{:?} {}", record.status, record.op));
        }
        fn host_finished(&self, _: &str, _: &HostReport) {}
    }

    fn statuses(report: &HostReport) -> Vec<(OpStatus, String)> {
        report.ops.iter().map(|r| (r.status, r.op.clone())).collect()
    }

    /// Each op of `report` started once and finished once, in the report's order, and finished
    /// after it started.
    fn assert_progress_in_order(events: &Events, report: &HostReport) {
        let events = events.0.lock().unwrap().clone();
        let started: Vec<&String> = events.iter().filter(|e| e.starts_with("start ")).collect();
        let finished: Vec<&String> = events.iter().filter(|e| !e.starts_with("start ")).collect();
        let want_started: Vec<String> = report.ops.iter().map(|r| format!("start {}", r.op)).collect();
        let want_finished: Vec<String> = report.ops.iter().map(|r| format!("{:?} {}", r.status, r.op)).collect();
        assert_eq!(started, want_started.iter().collect::<Vec<_>>(), "{events:#?}");
        assert_eq!(finished, want_finished.iter().collect::<Vec<_>>(), "{events:#?}");
        for (start, end) in want_started.iter().zip(&want_finished) {
            let at = |e: &String| events.iter().position(|x| x == e).unwrap();
            assert!(at(start) < at(end), "{events:#?}");
        }
    }

    #[tokio::test]
    async fn self_contained_changes_are_applied_together_in_order() {
        use crate::local::LocalTransport;
        use crate::ops::{Absent, Command, Directory, File};
        use crate::transport::CountingTransport;
        let dir = tempfile::tempdir().unwrap();
        let path = |rel: &str| dir.path().join(rel).display().to_string();
        let t = Arc::new(CountingTransport::new(Arc::new(LocalTransport::new("localhost"))));
        let host = |t: Arc<CountingTransport>| {
            HostOps::new(t)
                .with(Directory::new(&path("d")).mode(0o750))
                .with(File::new(&path("d/a"), "a\n"))
                .with(File::new(&path("d/b"), "b\n").mode(0o600))
                // Sees what the files before it made.
                .with(
                    Command::new("copy a", &format!("cp {} {}", path("d/a"), path("d/c")))
                        .unless(&format!("test -e {}", path("d/c"))),
                )
                .with(File::new(&path("d/e"), "e\n"))
                .with(Absent::new(&path("gone")))
        };
        let events = Events::default();
        let report = run_host(host(t.clone()), Mode::Apply, &events).await;
        use OpStatus::*;
        assert_eq!(
            statuses(&report),
            vec![
                (Changed, format!("directory {}", path("d"))),
                (Changed, format!("file {}", path("d/a"))),
                (Changed, format!("file {}", path("d/b"))),
                (Changed, "copy a".to_string()),
                (Changed, format!("file {}", path("d/e"))),
                (Ok, format!("absent {}", path("gone"))),
            ]
        );
        assert_eq!(std::fs::read_to_string(path("d/c")).unwrap(), "a\n");
        assert_eq!(std::fs::read_to_string(path("d/e")).unwrap(), "e\n");
        // Probe batch; d, a, b in one script with the probes after it; the command; probes
        // again; e alone.
        assert_eq!(t.execs(), 5, "{:#?}", t.commands());
        assert_progress_in_order(&events, &report);
        let again = run_host(host(t.clone()), Mode::Apply, &NoProgress).await;
        assert_eq!(again.changed, 0, "{:#?}", statuses(&again));
    }

    #[tokio::test]
    async fn a_failed_step_fails_its_op_and_skips_the_queued_ones_after_it() {
        use crate::local::LocalTransport;
        use crate::ops::{Directory, File};
        let dir = tempfile::tempdir().unwrap();
        let path = |rel: &str| dir.path().join(rel).display().to_string();
        let host = HostOps::new(Arc::new(LocalTransport::new("localhost")))
            .with(File::new(&path("a"), "a\n"))
            .with(Directory::new(&path("sub")).owner("capstan-no-such-user"))
            .with(File::new(&path("b"), "b\n"))
            .with(File::new(&path("c"), "c\n"));
        let events = Events::default();
        let report = run_host(host, Mode::Apply, &events).await;
        use OpStatus::*;
        assert_eq!(
            statuses(&report),
            vec![
                (Changed, format!("file {}", path("a"))),
                (Failed, format!("directory {}", path("sub"))),
                (Skipped, format!("file {}", path("b"))),
                (Skipped, format!("file {}", path("c"))),
            ]
        );
        let error = report.ops[1].error.clone().unwrap();
        assert!(error.starts_with("localhost: `mkdir -p -- "), "{error}");
        assert!(error.contains("capstan-no-such-user"), "{error}");
        assert!(std::path::Path::new(&path("a")).exists());
        assert!(!std::path::Path::new(&path("b")).exists());
        assert_progress_in_order(&events, &report);
    }
}
