use std::path::PathBuf;

/// Everything that can go wrong while managing a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root (it mounts overlays, creates bridges and runs systemd-nspawn); run it as root")]
    NotRoot,
    #[error("'{tool}' not found in PATH; install it with: apt-get install -y {package}")]
    MissingTool { tool: &'static str, package: &'static str },
    #[error("overlayfs is not supported by this kernel ({reason}); try: modprobe overlay")]
    OverlayUnsupported { reason: String },
    #[error("invalid lab name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid host count {hosts}: a lab has 1 to {max} machines")]
    InvalidHostCount { hosts: usize, max: usize },
    #[error("no lab named {0:?} (see `capstan lab list`)")]
    NotFound(String),
    #[error("a lab named {0:?} already exists; remove it first with `capstan lab down --name {0}`")]
    AlreadyExists(String),
    #[error("lab {lab:?} has no machine {host:?} (machines: {known})")]
    NoSuchHost { lab: String, host: String, known: String },
    #[error("all 256 lab subnets 10.231.0.0/24..10.231.255.0/24 are in use; remove a lab first")]
    NoFreeSubnet,
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lab state file {path} is unreadable: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("building the base image failed: {reason}; see the log {log}")]
    ImageBuild { reason: String, log: PathBuf },
    #[error("machine {machine} ({ip}) did not accept SSH within {seconds} s; see its nspawn log {log}")]
    SshTimeout {
        machine: String,
        ip: String,
        seconds: u64,
        log: PathBuf,
    },
    #[error("machine {machine} exited during boot (systemd-nspawn is gone); see its nspawn log {log}")]
    MachineExited { machine: String, log: PathBuf },
    #[error("machine {machine} is already running (pid {pid})")]
    AlreadyRunning { machine: String, pid: u32 },
    #[error("machine {machine} is not running; start it with `capstan lab start`")]
    NotRunning { machine: String },
    #[error("could not clean up {what}: {reason}")]
    Cleanup { what: String, reason: String },
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Attaches a human context to an io::Error.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| LabError::Io {
            context: context(),
            source,
        })
    }
}
