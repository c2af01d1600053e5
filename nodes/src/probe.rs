//! What a node looks like before a run, in one round trip: its architecture, whether it is a
//! systemd-nspawn machine with read-only cgroup controllers (the lab), swap, and the pod subnet
//! its CNI configuration already has. The parser is pure and tested from captured output.

use capstan_provisioner::facts::{normalize_arch, ProbeSections};
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{run_checked, OpError};
use capstan_provisioner::transport::Transport;

use crate::config::CNI_CONFIG_FILE;

const MARK: &str = "@@capstan:";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeProbe {
    /// `uname -m`, normalised (amd64, arm64).
    pub arch: String,
    /// `systemd-detect-virt --container`: `none` on a machine of its own.
    pub container: String,
    /// A cgroup (v1 controller or v2) mount that is read-only, when there is one.
    pub read_only_cgroup: Option<String>,
    /// Active swap devices or files.
    pub swaps: Vec<String>,
    /// The subnet in capstan's CNI configuration on the host.
    pub subnet: Option<String>,
    /// File system type under /var/lib (`stat -f`): containerd's overlay snapshotter cannot
    /// work on `overlayfs` (the lab machines' root).
    pub var_lib_fs: String,
}

impl NodeProbe {
    /// A systemd-nspawn machine whose cgroup controllers are read-only: what the lab's machines are,
    /// and where neither runc nor crun can create containers with cgroups.
    pub fn is_cgroupless_lab_machine(&self) -> bool {
        self.container == "systemd-nspawn" && self.read_only_cgroup.is_some()
    }
}

pub fn probe_script() -> String {
    let mut script = String::new();
    let mut section = |name: &str, body: &str| script.push_str(&format!("echo '{MARK}{name}'; {body}\n"));
    section("arch", "uname -m");
    section("container", "systemd-detect-virt --container 2>/dev/null || true");
    section(
        "cgroup-ro",
        "awk '($3 == \"cgroup\" || $3 == \"cgroup2\") && $4 ~ /(^|,)ro(,|$)/ { print $2; exit }' /proc/self/mounts",
    );
    section("swaps", "tail -n +2 /proc/swaps 2>/dev/null | awk '{ print $1 }'");
    section(
        "subnet",
        &format!(
            "sed -n 's/.*\"subnet\": *\"\\([^\"]*\\)\".*/\\1/p' {} 2>/dev/null | head -n 1",
            quote(CNI_CONFIG_FILE)
        ),
    );
    section("var-lib-fs", "stat -f -c %T /var/lib");
    section("end", "true");
    script
}

pub fn parse_probe(text: &str) -> Result<NodeProbe, String> {
    let sections = ProbeSections::parse(text)?;
    let get = |name: &str| sections.get(name).to_string();
    let arch = get("arch");
    if arch.is_empty() {
        return Err("no architecture (uname -m printed nothing)".into());
    }
    let container = match get("container") {
        c if c.is_empty() => "none".to_string(),
        c => c,
    };
    Ok(NodeProbe {
        arch: normalize_arch(&arch),
        container,
        read_only_cgroup: Some(get("cgroup-ro")).filter(|s| !s.is_empty()),
        swaps: get("swaps")
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect(),
        subnet: Some(get("subnet")).filter(|s| !s.is_empty()),
        var_lib_fs: get("var-lib-fs"),
    })
}

pub async fn probe_node(t: &dyn Transport) -> Result<NodeProbe, OpError> {
    let output = run_checked(t, &probe_script()).await?;
    parse_probe(&output.stdout_str()).map_err(|reason| OpError::Probe {
        host: t.host().to_string(),
        what: "node facts".into(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured on a lab machine (systemd-nspawn on a cgroup v1 build machine) after an apply.
    const LAB: &str = "@@capstan:arch\nx86_64\n@@capstan:container\nsystemd-nspawn\n@@capstan:cgroup-ro\n\
        /sys/fs/cgroup/freezer\n@@capstan:swaps\n@@capstan:subnet\n10.244.1.0/24\n@@capstan:var-lib-fs\noverlayfs\n\
        @@capstan:end\n";

    #[test]
    fn lab_machine() {
        let probe = parse_probe(LAB).unwrap();
        assert_eq!(probe.arch, "amd64");
        assert!(probe.is_cgroupless_lab_machine());
        assert!(probe.swaps.is_empty());
        assert_eq!(probe.subnet.as_deref(), Some("10.244.1.0/24"));
        assert_eq!(probe.var_lib_fs, "overlayfs");
    }

    #[test]
    fn real_host_with_swap() {
        let text = "@@capstan:arch\naarch64\n@@capstan:container\nnone\n@@capstan:cgroup-ro\n@@capstan:swaps\n\
                    /dev/sda2\n/swapfile\n@@capstan:subnet\n@@capstan:end\n";
        let probe = parse_probe(text).unwrap();
        assert_eq!(probe.arch, "arm64");
        assert!(!probe.is_cgroupless_lab_machine());
        assert_eq!(probe.swaps, ["/dev/sda2", "/swapfile"]);
        assert_eq!(probe.subnet, None);
        // A container elsewhere (docker, lxc) with writable cgroups is not the lab.
        let lxc = text.replace("none", "lxc");
        assert!(!parse_probe(&lxc).unwrap().is_cgroupless_lab_machine());
    }

    #[test]
    fn truncated_output_is_an_error() {
        assert!(parse_probe("@@capstan:arch\nx86_64\n").is_err());
    }
}
