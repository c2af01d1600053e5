//! The restore's host changes as operations, run phase by phase through the engine's runner: in
//! `Mode::Apply` they change the members, in `Mode::DryRun` the same phases only plan and print
//! what they would do (probes run, nothing changes).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncRead;

use super::RestoreError;
use crate::apply::PhaseReport;
use capstan_provisioner::ops::{
    parse_path_state, path_state_command, plan_file, run_checked, Content, DesiredFile, OpError, Operation, Plan,
};
use capstan_provisioner::phases::PhaseContext;
use capstan_provisioner::report::{OpStatus, RunReport};
use capstan_provisioner::runner::{HostOps, Mode, Progress, RunOptions, Runner};
use capstan_provisioner::transport::{ExecOptions, ExecOutput, RemoteFile, Transport, TransportError};

/// The restore's phases so far: runs op lists through one runner in the restore's mode and keeps
/// every phase's report.
pub(super) struct Phases {
    ctx: PhaseContext<()>,
    reports: Vec<PhaseReport>,
}

impl Phases {
    pub(super) fn new(mode: Mode, concurrency: usize, progress: Arc<dyn Progress>) -> Phases {
        let runner = Runner::new(RunOptions { mode, concurrency }, progress);
        Phases {
            ctx: PhaseContext::with_output((), runner, Box::new(std::io::sink())),
            reports: Vec::new(),
        }
    }

    pub(super) fn mode(&self) -> Mode {
        self.ctx.mode()
    }

    pub(super) fn dry_run(&self) -> bool {
        self.mode() == Mode::DryRun
    }

    /// Runs (or plans) one phase; a failed host fails the restore with that host's error.
    pub(super) async fn run(&mut self, phase: &str, hosts: Vec<HostOps>) -> Result<RunReport, RestoreError> {
        let result = self.ctx.run_ops(phase, hosts, self.mode()).await;
        let report = match &result {
            Ok(report) => report.clone(),
            Err(_) => self
                .ctx
                .reports()
                .pop()
                .map(|(_, report)| report)
                .unwrap_or_else(|| RunReport {
                    mode: self.mode(),
                    hosts: Vec::new(),
                    elapsed: Duration::ZERO,
                }),
        };
        self.reports.push(PhaseReport {
            phase: phase.to_string(),
            report: report.clone(),
        });
        if let Err(e) = result {
            return Err(first_failure(&report).unwrap_or_else(|| RestoreError::Remote {
                host: "-".into(),
                step: phase.to_string(),
                reason: e.to_string(),
            }));
        }
        Ok(report)
    }

    /// Reports of phases run elsewhere (the restore's `apply`), under `prefix`.
    pub(super) fn extend(&mut self, prefix: &str, reports: Vec<PhaseReport>) {
        self.reports.extend(reports.into_iter().map(|r| PhaseReport {
            phase: format!("{prefix}: {}", r.phase),
            report: r.report,
        }));
    }

    pub(super) fn into_reports(self) -> Vec<PhaseReport> {
        self.reports
    }
}

/// The first failed op of a report as the restore's error: the host, the op and why (the
/// command line of a failed script is left out, its exit status and stderr kept).
fn first_failure(report: &RunReport) -> Option<RestoreError> {
    report.hosts.iter().find_map(|h| {
        h.ops
            .iter()
            .find(|op| op.status == OpStatus::Failed)
            .map(|op| RestoreError::Remote {
                host: h.host.clone(),
                step: op.op.clone(),
                reason: without_command(&h.host, op.error.as_deref().unwrap_or("failed")),
            })
    })
}

/// `host: `command` failed (exit 1): stderr` → `exit 1: stderr`; anything else unchanged.
fn without_command(host: &str, error: &str) -> String {
    let Some(rest) = error.strip_prefix(&format!("{host}: `")) else {
        return error.to_string();
    };
    match rest.rfind("` failed (") {
        Some(at) => {
            let tail = &rest[at + "` failed (".len()..];
            match tail.split_once("): ") {
                Some((status, stderr)) => format!("{status}: {stderr}"),
                None => tail.trim_end_matches(')').to_string(),
            }
        }
        None => error.to_string(),
    }
}

/// A host's connection whose commands may run for at least `min` (a snapshot restore or a
/// safety snapshot of a large store takes longer than the engine's default budget).
pub(super) struct Patient {
    inner: Arc<dyn Transport>,
    min: Duration,
}

impl Patient {
    pub(super) fn wrap(inner: Arc<dyn Transport>, min: Duration) -> Arc<dyn Transport> {
        Arc::new(Patient { inner, min })
    }
    fn opts(&self, opts: &ExecOptions) -> ExecOptions {
        ExecOptions {
            timeout: opts.timeout.max(self.min),
            privileged: opts.privileged,
        }
    }
}

#[async_trait]
impl Transport for Patient {
    fn host(&self) -> &str {
        self.inner.host()
    }
    async fn exec(&self, command: &str, opts: &ExecOptions) -> Result<ExecOutput, TransportError> {
        self.inner.exec(command, &self.opts(opts)).await
    }
    async fn exec_with_stdin(
        &self,
        command: &str,
        stdin: &mut (dyn AsyncRead + Send + Unpin),
        opts: &ExecOptions,
    ) -> Result<ExecOutput, TransportError> {
        self.inner.exec_with_stdin(command, stdin, &self.opts(opts)).await
    }
    /// The connection belongs to the restore, which closes it.
    async fn close(&self) {}
}

/// A file on the member streamed from a local file (the snapshot: never held in memory), written
/// only when the member's copy differs.
pub(super) struct UploadedFile {
    desired: DesiredFile,
}

impl UploadedFile {
    pub(super) fn new(local: &std::path::Path, sha256: &str, remote: RemoteFile) -> Result<UploadedFile, OpError> {
        let size = std::fs::metadata(local)
            .map_err(|source| OpError::LocalRead {
                path: local.display().to_string(),
                source,
            })?
            .len();
        Ok(UploadedFile {
            desired: DesiredFile {
                file: remote,
                content: Content::LocalFile(local.to_path_buf()),
                sha256: sha256.to_string(),
                size,
                sensitive: false,
            },
        })
    }
}

#[async_trait]
impl Operation for UploadedFile {
    fn describe(&self) -> String {
        format!("upload {}", self.desired.file.path)
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        let output = run_checked(t, &path_state_command(&self.desired.file.path)).await?;
        let state = parse_path_state(&output.stdout_str()).map_err(|reason| OpError::Probe {
            host: t.host().to_string(),
            what: self.desired.file.path.clone(),
            reason,
        })?;
        plan_file(t.host(), &self.desired, None, &state, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_commands_are_reported_without_the_script() {
        assert_eq!(
            without_command("n1", "n1: `set -e\nrm -rf -- /x\n` failed (exit 1): no space left"),
            "exit 1: no space left"
        );
        assert_eq!(
            without_command("n1", "n1: `systemctl stop etcd` failed (killed by a signal): "),
            "killed by a signal: "
        );
        assert_eq!(without_command("n1", "connection reset"), "connection reset");
    }
}
