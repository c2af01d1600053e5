//! Thin wrappers over the host: external commands, locks, signals, /proc.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{IoContext, LabError, Result};

/// Runs a command to completion; a non-zero exit becomes `LabError::Command` with its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("running {program}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Whether `program` resolves in PATH.
pub(crate) fn in_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        let candidate = dir.join(program);
        std::fs::metadata(&candidate).map(|m| m.is_file()).unwrap_or(false)
    })
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// An exclusive advisory lock (flock) held until dropped.
pub(crate) struct FileLock {
    _file: File,
}

impl FileLock {
    pub(crate) fn acquire(path: &Path) -> Result<FileLock> {
        FileLock::acquire_or_wait(path, || {})
    }

    /// Like `acquire`, calling `on_wait` once first if another process holds the lock.
    pub(crate) fn acquire_or_wait(path: &Path, on_wait: impl FnOnce()) -> Result<FileLock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .ctx(|| format!("opening lock file {}", path.display()))?;
        // SAFETY: the fd is valid for the lifetime of `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(FileLock { _file: file });
        }
        on_wait();
        loop {
            // SAFETY: the fd is valid for the lifetime of `file`.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).ctx(|| format!("locking {}", path.display()));
            }
        }
    }
}

/// Reaps `pid` if it is a zombie child of this process, so liveness checks see it gone.
fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: WNOHANG never blocks; ECHILD for non-children is ignored.
    unsafe {
        libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
    }
}

/// The NUL-separated command line of a live (non-zombie) process.
pub(crate) fn cmdline(pid: u32) -> Option<Vec<String>> {
    reap(pid);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect(),
    )
}

/// Pids of live systemd-nspawn processes whose command line satisfies `matches`.
pub(crate) fn nspawn_pids(matches: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            cmdline(*pid)
                .is_some_and(|args| args.first().is_some_and(|a| a.ends_with("systemd-nspawn")) && matches(&args))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// A container's PID 1 as seen from the host (a process that is init of a child pid namespace and
/// was started by systemd-nspawn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerInit {
    pub pid: u32,
    /// Host path of its root directory, while that is still mounted in our namespace.
    pub root: PathBuf,
    /// `container_uuid` from its environment, without dashes (the machine-id nspawn was given).
    pub uuid: String,
}

/// Every live container init on the host. A SIGKILLed nspawn leaves its container running,
/// reparented to the host's init; these are found here so they can be killed too.
pub(crate) fn container_inits() -> Vec<ContainerInit> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            cmdline(pid)?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
            let ids: Vec<&str> = nspid.split_whitespace().collect();
            if ids.len() < 2 || ids.last() != Some(&"1") {
                return None;
            }
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let vars: Vec<String> = environ
                .split(|b| *b == 0)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            if !vars.iter().any(|v| v == "container=systemd-nspawn") {
                return None;
            }
            let uuid = vars
                .iter()
                .find_map(|v| v.strip_prefix("container_uuid="))
                .unwrap_or_default()
                .replace('-', "");
            let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap_or_default();
            Some(ContainerInit { pid, root, uuid })
        })
        .collect()
}

/// SIGKILLs container inits that belong to `dir` (root below it) or carry one of `uuids`, and
/// waits for them to go; killing a pid namespace's init ends every process in it.
pub(crate) fn kill_orphan_containers(dir: &Path, uuids: &[String]) -> Vec<u32> {
    let orphans: Vec<u32> = container_inits()
        .into_iter()
        .filter(|c| c.root.starts_with(dir) || uuids.contains(&c.uuid))
        .map(|c| c.pid)
        .collect();
    if orphans.is_empty() {
        return orphans;
    }
    for pid in &orphans {
        signal(*pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while orphans.iter().any(|p| cmdline(*p).is_some()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    orphans
}

pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; errors (ESRCH) are irrelevant here.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// SIGTERM every pid, wait up to `grace`, then SIGKILL the survivors and wait for them to vanish.
/// Returns the pids that were still alive after SIGKILL (should be empty).
pub(crate) fn terminate(pids: &[u32], alive: impl Fn(u32) -> bool, grace: Duration) -> Vec<u32> {
    for pid in pids {
        signal(*pid, libc::SIGTERM);
    }
    let wait_gone = |limit: Duration| {
        let deadline = Instant::now() + limit;
        loop {
            let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let survivors = wait_gone(grace);
    if survivors.is_empty() {
        return survivors;
    }
    for pid in &survivors {
        signal(*pid, libc::SIGKILL);
    }
    wait_gone(Duration::from_secs(10))
}

/// Mount points from /proc/self/mountinfo at or below `dir`, deepest first.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = &raw[i + 1..i + 4];
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn is_mounted(path: &Path) -> bool {
    mounts_under(path).iter().any(|p| p == path)
}

/// Unmounts `path`, falling back to a lazy unmount when it is busy.
pub(crate) fn unmount(path: &Path) -> Result<()> {
    let p = path.to_string_lossy();
    if run("umount", &[&p]).is_ok() {
        return Ok(());
    }
    run("umount", &["-l", &p]).map(|_| ())
}

pub(crate) fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Deletes a network link if it exists.
pub(crate) fn delete_link(name: &str) -> Result<()> {
    if !link_exists(name) {
        return Ok(());
    }
    match run("ip", &["link", "delete", name]) {
        Ok(_) => Ok(()),
        // It may vanish between the check and the delete (nspawn removes its veth on exit).
        Err(_) if !link_exists(name) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes a file atomically: temp file in the same dir, then rename.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .ctx(|| format!("writing {}", tmp.display()))?;
    file.write_all(contents).ctx(|| format!("writing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).ctx(|| format!("renaming {} into place", path.display()))
}

/// 16 random bytes from the kernel, hex encoded (a machine-id).
pub(crate) fn random_hex16() -> Result<String> {
    use std::io::Read;
    let mut buf = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .ctx(|| "reading /dev/urandom".to_string())?;
    Ok(hex::encode(buf))
}

/// Every machine's systemd (and journald, udev, ...) holds inotify instances of the one user they
/// all are on the build machine (root); the kernel's default of 128 instances runs out at about
/// a dozen machines, and the next ones boot without sshd ("Failed to create inotify object: Too
/// many open files"). Raises the limits (not persistently) when they are lower than a
/// 40-machine lab needs; returns what it did.
pub fn raise_inotify_limits() -> Result<Option<String>> {
    const WANT: [(&str, u64); 2] = [
        ("/proc/sys/fs/inotify/max_user_instances", 8192),
        ("/proc/sys/fs/inotify/max_user_watches", 1_048_576),
    ];
    let mut raised = Vec::new();
    for (path, want) in WANT {
        let current: u64 = std::fs::read_to_string(path)
            .ctx(|| format!("reading {path}"))?
            .trim()
            .parse()
            .unwrap_or(0);
        if current < want {
            std::fs::write(path, want.to_string()).ctx(|| format!("writing {path}"))?;
            raised.push(format!(
                "{} {current} -> {want}",
                path.rsplit('/').next().unwrap_or(path)
            ));
        }
    }
    Ok((!raised.is_empty()).then(|| format!("raised the build machine's inotify limits ({})", raised.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path("/end\\"), "/end\\");
    }
}
