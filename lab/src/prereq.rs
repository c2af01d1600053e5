use crate::error::{LabError, Result};
use crate::sys;

/// Tools the lab runs, with the Debian package that provides each.
const TOOLS: &[(&str, &str)] = &[
    ("debootstrap", "debootstrap"),
    ("systemd-nspawn", "systemd-container"),
    ("ssh-keygen", "openssh-client"),
    ("ip", "iproute2"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("systemctl", "systemd"),
    ("chroot", "coreutils"),
];

/// Checks root, the needed tools and overlayfs support; the first problem is returned.
pub fn check_prerequisites() -> Result<()> {
    if !sys::is_root() {
        return Err(LabError::NotRoot);
    }
    for (tool, package) in TOOLS {
        if !sys::in_path(tool) {
            return Err(LabError::MissingTool { tool, package });
        }
    }
    check_overlay()
}

fn check_overlay() -> Result<()> {
    let listed = |fs: &str| fs.lines().any(|l| l.split_whitespace().last() == Some("overlay"));
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if listed(&filesystems) {
        return Ok(());
    }
    // The module may just not be loaded yet.
    let _ = sys::run("modprobe", &["overlay"]);
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if listed(&filesystems) {
        Ok(())
    } else {
        Err(LabError::OverlayUnsupported {
            reason: "'overlay' is not listed in /proc/filesystems".to_string(),
        })
    }
}
