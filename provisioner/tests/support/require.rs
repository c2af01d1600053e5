//! The one way a test says what it needs from the machine, and skips (naming what is missing)
//! when something is not there. Shared by every crate's tests (`#[path]`-included); std only.
//!
//! ```ignore
//! if !require(&[lab(), tool("etcdctl", "etcd-client")]) {
//!     return;
//! }
//! let Some(server) = required("no S3 server", Moto::start(&gateway)) else { return };
//! ```

#![allow(dead_code)]

use std::fmt::Display;
use std::path::Path;
use std::process::{Command, Stdio};

/// One thing a test needs: `Ok` when it is there, else what is missing (and how to get it).
pub type Need = Result<(), String>;

/// True when every need is met. Otherwise prints `SKIPPED: ...` naming each missing thing, and
/// the test returns without running.
pub fn require(needs: &[Need]) -> bool {
    let missing: Vec<&str> = needs
        .iter()
        .filter_map(|n| n.as_ref().err())
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!("SKIPPED: {}", missing.join("; "));
    false
}

/// The value of a part the test starts itself (a server, say), or `None` after printing
/// `SKIPPED: <what>: <why>` when it could not start.
pub fn required<T, E: Display>(what: &str, result: Result<T, E>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(why) => {
            require(&[Err(format!("{what}: {why}"))]);
            None
        }
    }
}

/// A need checked elsewhere: `need("lab prerequisites missing", capstan_lab::check_prerequisites())`.
pub fn need<T, E: Display>(what: &str, check: Result<T, E>) -> Need {
    check.map(|_| ()).map_err(|e| format!("{what}: {e}"))
}

/// A program on PATH; `package` is the Debian package that installs it.
pub fn tool(name: &str, package: &str) -> Need {
    let runs = |arg: &str| {
        Command::new(name)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if runs("--version") || runs("version") {
        Ok(())
    } else {
        Err(format!("{name} not found (apt-get install {package})"))
    }
}

/// A file that must exist; `missing` says what it is and how to get it.
pub fn file(path: impl AsRef<Path>, missing: &str) -> Need {
    if path.as_ref().exists() {
        Ok(())
    } else {
        Err(format!("{missing}: {} (not found)", path.as_ref().display()))
    }
}
