//! The shared base root filesystem: debootstrapped once per recipe, then only read
//! (every machine mounts it as the lower layer of its own overlay).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::{IoContext, LabError, Result};
use crate::sys::{self, FileLock};
use crate::Paths;

const SUITE: &str = "bookworm";
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "iputils-ping",
    "ca-certificates",
    "curl",
    "sudo",
    "procps",
    "less",
];
/// Units that are useless in a lab container and only slow down or clutter boot.
const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "console-getty.service",
    "getty@.service",
    "systemd-timesyncd.service",
    "systemd-hwdb-update.service",
];
const ENABLED_UNITS: &[&str] = &["systemd-networkd.service", "ssh.service"];
/// Bumped whenever the customisation below changes, so old images are not reused.
const CUSTOMISATION_VERSION: u32 = 1;
const COMPLETE_MARKER: &str = "etc/capstan-lab-image";

/// Identifies the image recipe; the cache directory is named after it.
pub fn recipe_hash() -> String {
    let recipe = format!(
        "suite={SUITE}\npackages={}\nmasked={}\nenabled={}\ncustomisation={CUSTOMISATION_VERSION}\n",
        PACKAGES.join(","),
        MASKED_UNITS.join(","),
        ENABLED_UNITS.join(",")
    );
    hex::encode(&Sha256::digest(recipe.as_bytes())[..8])
}

/// Returns the base rootfs, building it first if this recipe has no complete image yet.
/// Concurrent callers serialise on a lock file so only one runs debootstrap.
pub fn ensure_image(paths: &Paths, mirror: &str, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    let images = paths.images_dir();
    std::fs::create_dir_all(&images).ctx(|| format!("creating {}", images.display()))?;
    let hash = recipe_hash();
    let rootfs = images.join(&hash);
    if rootfs.join(COMPLETE_MARKER).exists() {
        return Ok(rootfs);
    }
    let lock_path = images.join(format!("{hash}.lock"));
    let _lock = FileLock::acquire_or_wait(&lock_path, || {
        progress(&format!(
            "another process is building the base image; waiting for {}",
            lock_path.display()
        ))
    })?;
    if rootfs.join(COMPLETE_MARKER).exists() {
        return Ok(rootfs);
    }
    // Holding the lock, any temp dir or incomplete image is a leftover of a crashed build.
    remove_stale(&images, &hash, &rootfs)?;

    let tmp = images.join(format!(".tmp-{hash}-{}", std::process::id()));
    let log_path = images.join(format!("{hash}.build.log"));
    progress(&format!(
        "building the base image (debootstrap {SUITE} from {mirror}, about a minute); log: {}",
        log_path.display()
    ));
    let started = Instant::now();
    let result = build_into(&tmp, mirror, &log_path);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &rootfs).ctx(|| format!("renaming {} into place", tmp.display()))?;
    progress(&format!(
        "base image ready in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        rootfs.display()
    ));
    Ok(rootfs)
}

fn remove_stale(images: &Path, hash: &str, rootfs: &Path) -> Result<()> {
    let prefix = format!(".tmp-{hash}-");
    let entries = std::fs::read_dir(images).ctx(|| format!("listing {}", images.display()))?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            std::fs::remove_dir_all(&path).ctx(|| format!("removing stale {}", path.display()))?;
        }
    }
    if rootfs.exists() {
        std::fs::remove_dir_all(rootfs).ctx(|| format!("removing incomplete image {}", rootfs.display()))?;
    }
    Ok(())
}

fn build_into(tmp: &Path, mirror: &str, log_path: &Path) -> Result<()> {
    let log = std::fs::File::create(log_path).ctx(|| format!("creating {}", log_path.display()))?;
    let log_err = log.try_clone().ctx(|| format!("opening {}", log_path.display()))?;
    let include = format!("--include={}", PACKAGES.join(","));
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", &include, SUITE])
        .arg(tmp)
        .arg(mirror)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .ctx(|| "running debootstrap".to_string())?;
    if !status.success() {
        return Err(LabError::ImageBuild {
            reason: format!("debootstrap exited with {status}"),
            log: log_path.to_path_buf(),
        });
    }
    customise(tmp).map_err(|e| LabError::ImageBuild {
        reason: e.to_string(),
        log: log_path.to_path_buf(),
    })
}

fn customise(root: &Path) -> Result<()> {
    // Host keys and machine-id must be unique per machine: each gets its own before boot.
    let ssh_dir = root.join("etc/ssh");
    for entry in std::fs::read_dir(&ssh_dir)
        .ctx(|| format!("listing {}", ssh_dir.display()))?
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            std::fs::remove_file(entry.path()).ctx(|| format!("removing {}", entry.path().display()))?;
        }
    }
    for id in ["etc/machine-id", "var/lib/dbus/machine-id"] {
        let path = root.join(id);
        if path.symlink_metadata().is_ok() {
            std::fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
        }
    }
    write(
        root,
        "etc/ssh/sshd_config.d/capstan-lab.conf",
        "# Only the per-machine ed25519 key is generated (and pinned in the lab's known_hosts).\n\
         HostKey /etc/ssh/ssh_host_ed25519_key\n\
         UseDNS no\n",
    )?;
    write(
        root,
        "etc/systemd/journald.conf.d/capstan-lab.conf",
        "[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n",
    )?;
    // Static address only: give wait-online a short fuse so it never stalls boot.
    write(
        root,
        "etc/systemd/system/systemd-networkd-wait-online.service.d/capstan-lab.conf",
        "[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=20\n",
    )?;
    let root_str = root.to_string_lossy();
    let mut args = vec!["--root", &root_str, "enable"];
    args.extend_from_slice(ENABLED_UNITS);
    sys::run("systemctl", &args)?;
    let mut args = vec!["--root", &root_str, "mask"];
    args.extend_from_slice(MASKED_UNITS);
    sys::run("systemctl", &args)?;
    sys::run("chroot", &[&root_str, "apt-get", "clean"])?;
    write(
        root,
        COMPLETE_MARKER,
        &format!("capstan lab base image, recipe {}\n", recipe_hash()),
    )
}

fn write(root: &Path, rel: &str, contents: &str) -> Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, contents).ctx(|| format!("writing {}", path.display()))
}
