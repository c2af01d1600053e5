//! A [`Transport`] for this machine: real `sh -c` processes on the local
//! filesystem, like Ansible's local connection.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use tokio::io::AsyncRead;
use tokio::process::Command;

use crate::transport::{ExecOptions, ExecOutput, Transport, TransportError};

pub struct LocalTransport {
    host: String,
    sudo: bool,
    closed: AtomicBool,
}

impl LocalTransport {
    /// `host` is the name used in reports and errors (e.g. "localhost").
    pub fn new(host: &str) -> LocalTransport {
        LocalTransport {
            host: host.to_string(),
            sudo: false,
            closed: AtomicBool::new(false),
        }
    }

    /// Run privileged commands through `sudo -n` (never prompts) when not root.
    pub fn with_sudo(mut self, sudo: bool) -> LocalTransport {
        self.sudo = sudo;
        self
    }

    fn command(&self, command: &str, opts: &ExecOptions) -> Result<Command, TransportError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.other("transport is closed"));
        }
        let mut cmd = if self.sudo && opts.privileged && !running_as_root() {
            let mut cmd = Command::new("sudo");
            cmd.args(["-n", "sh", "-c", command]);
            cmd
        } else {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", command]);
            cmd
        };
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        Ok(cmd)
    }

    fn other(&self, reason: impl Into<String>) -> TransportError {
        TransportError::Other {
            host: self.host.clone(),
            reason: reason.into(),
        }
    }

    fn timeout(&self, command: &str, opts: &ExecOptions) -> TransportError {
        TransportError::Timeout {
            host: self.host.clone(),
            secs: opts.timeout.as_secs(),
            command: command.to_string(),
        }
    }
}

fn running_as_root() -> bool {
    // The effective uid of /proc/self is ours; avoids a libc dependency.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn to_output(output: std::process::Output) -> ExecOutput {
    ExecOutput {
        stdout: output.stdout,
        stderr: output.stderr,
        exit_code: output.status.code().and_then(|c| u32::try_from(c).ok()),
    }
}

#[async_trait]
impl Transport for LocalTransport {
    fn host(&self) -> &str {
        &self.host
    }

    async fn exec(&self, command: &str, opts: &ExecOptions) -> Result<ExecOutput, TransportError> {
        let mut cmd = self.command(command, opts)?;
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().map_err(|e| self.other(format!("cannot start sh: {e}")))?;
        match tokio::time::timeout(opts.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => Ok(to_output(output)),
            Ok(Err(e)) => Err(self.other(format!("waiting for command failed: {e}"))),
            Err(_) => Err(self.timeout(command, opts)),
        }
    }

    async fn exec_with_stdin(
        &self,
        command: &str,
        stdin: &mut (dyn AsyncRead + Send + Unpin),
        opts: &ExecOptions,
    ) -> Result<ExecOutput, TransportError> {
        let mut cmd = self.command(command, opts)?;
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.other(format!("cannot start sh: {e}")))?;
        let mut child_stdin = child.stdin.take().ok_or_else(|| self.other("child has no stdin"))?;
        let feed = async move {
            let copied = tokio::io::copy(stdin, &mut child_stdin).await;
            drop(child_stdin);
            copied
        };
        // Feed stdin while draining stdout/stderr so neither side can block the other.
        let run = async { tokio::join!(feed, child.wait_with_output()) };
        match tokio::time::timeout(opts.timeout, run).await {
            Err(_) => Err(self.timeout(command, opts)),
            Ok((_, Err(e))) => Err(self.other(format!("waiting for command failed: {e}"))),
            // The command may legitimately exit without reading all input; its status says how it went.
            Ok((Err(e), Ok(_))) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(self.other(format!("streaming input failed: {e}")))
            }
            Ok((_, Ok(output))) => Ok(to_output(output)),
        }
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_real_commands() {
        let t = LocalTransport::new("localhost");
        let out = t
            .exec("echo out; echo err >&2; exit 3", &ExecOptions::default())
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "out\n");
        assert_eq!(out.stderr_str(), "err\n");
        assert_eq!(out.exit_code, Some(3));

        let data = vec![b'x'; 3 * 1024 * 1024];
        let mut reader: &[u8] = &data;
        let out = t
            .exec_with_stdin("wc -c", &mut reader, &ExecOptions::default())
            .await
            .unwrap();
        assert_eq!(out.stdout_str().trim(), data.len().to_string());

        let short = ExecOptions {
            timeout: std::time::Duration::from_millis(200),
            privileged: false,
        };
        assert!(matches!(
            t.exec("sleep 5", &short).await,
            Err(TransportError::Timeout { .. })
        ));

        t.close().await;
        assert!(t.exec("true", &ExecOptions::default()).await.is_err());
    }
}
