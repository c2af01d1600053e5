//! The local lab: real Debian 12 machines (systemd as PID 1, sshd) under systemd-nspawn.
//!
//! A lab is a set of machines sharing one read-only debootstrapped base image through per-machine
//! overlayfs mounts, attached to one Linux bridge on the lab's own /24 in 10.231.0.0/16. Every
//! machine gets its own hostname, machine-id, static address and pre-generated SSH host key, so the
//! lab can write a `known_hosts` file and an inventory that capstan uses with strict host key
//! checking.
//!
//! State lives in `$CAPSTAN_LAB_ROOT/<name>/` (default `/var/lib/capstan/lab/<name>/`), the base
//! image in `$CAPSTAN_CACHE_DIR/lab/images/<recipe hash>/` (default `/var/cache/capstan`).

mod error;
mod guard;
mod image;
mod lab;
pub mod plan;
mod prereq;
mod sys;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::{LabError, Result};
pub use guard::LabGuard;
pub use image::{ensure_image, recipe_hash};
pub use lab::{
    down, get, heal, isolate, list, ssh_command, start, stop, up, write_inventory, DownReport, Lab, LabSummary,
    Machine, LAB_ETCD_VERSION,
};
pub use prereq::check_prerequisites;

pub const DEFAULT_DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_STATE_ROOT: &str = "/var/lib/capstan/lab";
pub const DEFAULT_CACHE_ROOT: &str = "/var/cache/capstan";

/// Receives one human-readable progress line at a time.
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// Progress sink that prints `lab: <line>` to stderr.
pub fn stderr_progress() -> Progress {
    Arc::new(|line: &str| eprintln!("lab: {line}"))
}

/// Where labs keep their state and the base image cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Parent of every lab's state dir (`CAPSTAN_LAB_ROOT`, default /var/lib/capstan/lab).
    pub state_root: PathBuf,
    /// Cache root (`CAPSTAN_CACHE_DIR`, default /var/cache/capstan); images in `lab/images/`.
    pub cache_root: PathBuf,
}

impl Paths {
    pub fn from_env() -> Paths {
        let env_path = |var: &str, default: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        Paths {
            state_root: env_path("CAPSTAN_LAB_ROOT", DEFAULT_STATE_ROOT),
            cache_root: env_path("CAPSTAN_CACHE_DIR", DEFAULT_CACHE_ROOT),
        }
    }

    pub fn lab_dir(&self, name: &str) -> PathBuf {
        self.state_root.join(name)
    }

    pub fn images_dir(&self) -> PathBuf {
        self.cache_root.join("lab").join("images")
    }

    /// The local apt repository lab machines install Debian packages from (lab/mirror/build-debs.sh).
    pub fn default_apt_repo_dir(&self) -> PathBuf {
        self.cache_root.join("debs")
    }

    /// Default artifact mirror directory, used when it exists and none is given.
    pub fn default_mirror_dir(&self) -> PathBuf {
        self.cache_root.join("mirror")
    }
}

/// Options for [`up`].
#[derive(Clone)]
pub struct UpOptions {
    pub name: String,
    pub hosts: usize,
    /// Debian mirror for debootstrap (`CAPSTAN_DEBIAN_MIRROR`, default deb.debian.org).
    pub debian_mirror: String,
    /// Artifact mirror dir written into the inventory as `file://`; when `None`, the default
    /// `$CAPSTAN_CACHE_DIR/mirror` is used if it exists.
    pub artifact_mirror: Option<PathBuf>,
    /// Roles given to every host in the inventory (default `[etcd]`).
    pub roles: Vec<String>,
    /// Also write the inventory here, with absolute paths.
    pub inventory_out: Option<PathBuf>,
    /// How long to wait for every machine's sshd.
    pub ssh_timeout: Duration,
    pub progress: Progress,
    pub paths: Paths,
}

impl UpOptions {
    /// Defaults from the environment: mirror, paths, 120 s SSH timeout, progress on stderr.
    pub fn new(name: impl Into<String>, hosts: usize) -> UpOptions {
        UpOptions {
            name: name.into(),
            hosts,
            debian_mirror: std::env::var("CAPSTAN_DEBIAN_MIRROR")
                .ok()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| DEFAULT_DEBIAN_MIRROR.to_string()),
            artifact_mirror: None,
            roles: vec!["etcd".to_string()],
            inventory_out: None,
            ssh_timeout: Duration::from_secs(120),
            progress: stderr_progress(),
            paths: Paths::from_env(),
        }
    }
}

impl std::fmt::Debug for UpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpOptions")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("debian_mirror", &self.debian_mirror)
            .field("artifact_mirror", &self.artifact_mirror)
            .field("roles", &self.roles)
            .field("inventory_out", &self.inventory_out)
            .field("ssh_timeout", &self.ssh_timeout)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}
