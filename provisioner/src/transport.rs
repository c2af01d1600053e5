//! Our own transport trait. russh lives behind it (see `ssh`), so the rest of
//! the engine never names an SSH library type.

use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncRead;

/// What a finished remote command returned.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// `None` when the remote side closed without an exit status (killed by a signal).
    pub exit_code: Option<u32>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Options for one remote command.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Give up (and close the channel) after this long.
    pub timeout: Duration,
    /// Run with root privileges (sudo when the login user is not root).
    pub privileged: bool,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            timeout: Duration::from_secs(120),
            privileged: true,
        }
    }
}

/// Where and how an uploaded file lands on the remote host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub path: String,
    /// Octal permission bits, e.g. 0o644.
    pub mode: u32,
    pub owner: Option<String>,
    pub group: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{host}: cannot connect to {addr}: {reason}")]
    Connect { host: String, addr: String, reason: String },
    #[error("{host}: authentication failed for user {user}: {reason}")]
    Auth { host: String, user: String, reason: String },
    #[error("{host}: host key verification failed: {reason}")]
    HostKey { host: String, reason: String },
    #[error("{host}: command timed out after {secs}s: {command}")]
    Timeout { host: String, secs: u64, command: String },
    #[error("{host}: {reason}")]
    Other { host: String, reason: String },
}

impl TransportError {
    /// A one-line suggestion for the user, printed after the error as `hint:`. The same as
    /// [`Hint::hint`](crate::hint::Hint) (which new code uses), without the allocation; kept while
    /// `check` and `etcd::inspect` still call it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            TransportError::Connect { .. } => Some("check the address and port, and that sshd runs on the host"),
            TransportError::Auth { .. } => Some("check ssh.user and ssh.identity_file (or ssh.agent) in the inventory"),
            TransportError::HostKey { .. } => Some(
                "if the host was legitimately reinstalled, remove its old line from the known_hosts file; \
                 use known_hosts: accept-new only to record keys of hosts never seen before",
            ),
            TransportError::Timeout { .. } => {
                Some("the host may be overloaded or the command stuck; raise the timeout or investigate on the host")
            }
            TransportError::Other { .. } => None,
        }
    }
}

impl crate::hint::Hint for TransportError {
    fn hint(&self) -> Option<String> {
        TransportError::hint(self).map(str::to_string)
    }
}

/// One connection to one host. Implementations reuse a single connection and
/// open one channel per call, always closing it.
#[async_trait]
pub trait Transport: Send + Sync {
    /// The inventory name of the host this transport talks to.
    fn host(&self) -> &str;

    /// Run `command` through `sh -c` on the host.
    async fn exec(&self, command: &str, opts: &ExecOptions) -> Result<ExecOutput, TransportError>;

    /// Run `command`, streaming `stdin` to it; the stream is never held whole in memory.
    async fn exec_with_stdin(
        &self,
        command: &str,
        stdin: &mut (dyn AsyncRead + Send + Unpin),
        opts: &ExecOptions,
    ) -> Result<ExecOutput, TransportError>;

    /// Close the connection. Further calls fail.
    async fn close(&self);
}

/// Wraps a transport and counts the commands run through it, for tests and
/// benchmarks ("how many round trips does a no-op run cost?").
pub struct CountingTransport {
    inner: std::sync::Arc<dyn Transport>,
    commands: std::sync::Mutex<Vec<String>>,
}

impl CountingTransport {
    pub fn new(inner: std::sync::Arc<dyn Transport>) -> CountingTransport {
        CountingTransport {
            inner,
            commands: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Commands run so far (`exec` and `exec_with_stdin` alike).
    pub fn execs(&self) -> usize {
        self.commands.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// The commands run so far, in order.
    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Forget the commands counted so far.
    pub fn reset(&self) {
        if let Ok(mut commands) = self.commands.lock() {
            commands.clear();
        }
    }

    fn count(&self, command: &str) {
        if let Ok(mut commands) = self.commands.lock() {
            commands.push(command.to_string());
        }
    }
}

#[async_trait]
impl Transport for CountingTransport {
    fn host(&self) -> &str {
        self.inner.host()
    }

    async fn exec(&self, command: &str, opts: &ExecOptions) -> Result<ExecOutput, TransportError> {
        self.count(command);
        self.inner.exec(command, opts).await
    }

    async fn exec_with_stdin(
        &self,
        command: &str,
        stdin: &mut (dyn AsyncRead + Send + Unpin),
        opts: &ExecOptions,
    ) -> Result<ExecOutput, TransportError> {
        self.count(command);
        self.inner.exec_with_stdin(command, stdin, opts).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}
