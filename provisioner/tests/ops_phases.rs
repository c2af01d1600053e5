//! Phases over real operations (LocalTransport): order, skip, dry run, stop at first failure.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use capstan_provisioner::local::LocalTransport;
use capstan_provisioner::ops::{Command, File};
use capstan_provisioner::phases::{Phase, PhaseContext, PhaseError, PhaseRunner, PhaseStatus};
use capstan_provisioner::runner::{HostOps, Mode, NoProgress, RunOptions, Runner};

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

struct State {
    dir: PathBuf,
}

struct WriteConfig;
struct AlreadyDone;
struct Break;
struct Last;

fn host() -> HostOps {
    HostOps::new(Arc::new(LocalTransport::new("localhost")))
}

#[async_trait]
impl Phase<State> for WriteConfig {
    fn name(&self) -> String {
        "write config".into()
    }
    async fn host_ops(&self, ctx: &PhaseContext<State>) -> Result<Vec<HostOps>, PhaseError> {
        Ok(vec![host().with(File::new(
            ctx.state.dir.join("config").to_str().unwrap(),
            "x=1\n",
        ))])
    }
}

#[async_trait]
impl Phase<State> for AlreadyDone {
    fn name(&self) -> String {
        "upgrade".into()
    }
    async fn should_run(&self, _ctx: &PhaseContext<State>) -> Result<bool, PhaseError> {
        Ok(false)
    }
}

#[async_trait]
impl Phase<State> for Break {
    fn name(&self) -> String {
        "break".into()
    }
    async fn host_ops(&self, _ctx: &PhaseContext<State>) -> Result<Vec<HostOps>, PhaseError> {
        Ok(vec![host().with(Command::new("fail", "exit 1").unless("false"))])
    }
}

#[async_trait]
impl Phase<State> for Last {
    fn name(&self) -> String {
        "last".into()
    }
    async fn run(&self, ctx: &PhaseContext<State>) -> Result<(), PhaseError> {
        std::fs::write(ctx.state.dir.join("last-apply"), "").map_err(|e| PhaseError::Failed {
            phase: self.name(),
            reason: e.to_string(),
        })
    }
    async fn dry_run(&self, ctx: &PhaseContext<State>) -> Result<(), PhaseError> {
        std::fs::write(ctx.state.dir.join("last-dry-run"), "").map_err(|e| PhaseError::Failed {
            phase: self.name(),
            reason: e.to_string(),
        })
    }
}

fn context(dir: PathBuf, mode: Mode, out: Captured) -> PhaseContext<State> {
    let runner = Runner::new(RunOptions { mode, concurrency: 2 }, Arc::new(NoProgress));
    PhaseContext::with_output(State { dir }, runner, Box::new(out))
}

#[tokio::test]
async fn phases_run_in_order_and_stop_at_the_first_failure() {
    let dir = tempfile::tempdir().unwrap();
    let phases = PhaseRunner::new()
        .phase(WriteConfig)
        .phase(AlreadyDone)
        .phase(Break)
        .phase(Last);

    for mode in [Mode::DryRun, Mode::Apply] {
        let out = Captured::default();
        let ctx = context(dir.path().to_path_buf(), mode, out.clone());
        let result = phases.run(&ctx).await;
        let statuses: Vec<(&str, PhaseStatus)> = result.phases.iter().map(|p| (p.name.as_str(), p.status)).collect();
        let expected_break = if mode == Mode::DryRun {
            PhaseStatus::Done
        } else {
            PhaseStatus::Failed
        };
        assert_eq!(
            statuses[..3],
            [
                ("write config", PhaseStatus::Done),
                ("upgrade", PhaseStatus::Skipped),
                ("break", expected_break)
            ],
            "{mode:?}"
        );
        let written = dir.path().join("config").exists();
        let printed = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        match mode {
            Mode::DryRun => {
                // The dry run stops nowhere (nothing fails when nothing runs) and writes nothing.
                assert!(!written);
                assert!(result.error.is_none());
                assert_eq!(statuses.len(), 4);
                assert!(dir.path().join("last-dry-run").exists());
                let reports = ctx.reports();
                assert_eq!(reports.len(), 2);
                assert_eq!(reports[0].1.totals().changed, 1, "write config would change");
            }
            Mode::Apply => {
                assert!(written);
                assert_eq!(statuses.len(), 3, "the phase after the failure ran");
                assert!(!dir.path().join("last-apply").exists());
                let error = result.error.unwrap().to_string();
                assert_eq!(error, "phase \"break\": 1 host(s) failed: localhost");
                assert!(printed.contains("==> [1/4] write config\n==> [2/4] upgrade\n    skipped: nothing to do\n==> [3/4] break\n    failed: "), "{printed}");
                assert!(!printed.contains("[4/4]"));
            }
        }
    }
}
