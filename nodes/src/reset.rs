//! What `capstan reset` removes of the nodes component on a host: the pod network's routes,
//! masquerading and bridge, containerd (stopped, disabled, unit removed), the runtime and CNI
//! binaries, their configs and state, the modules-load.d and sysctl.d files, and swap's fstab
//! lines put back. Debian packages and the sysctls' and modules' runtime state stay (capstan keeps
//! no record of what was there before; see docs/operations.md).

use std::sync::Arc;

use capstan_provisioner::component::ComponentError;
use capstan_provisioner::ops::{Absent, Command, Operation, RemovedUnit, Service};

use crate::component::NAME;
use crate::config::{
    BIN_DIR, CNI_BIN_DIR, CNI_BRIDGE, CNI_CONFIG_FILE, CNI_CONF_DIR, CNI_PLUGINS, CONTAINERD_CONFIG_DIR,
    CONTAINERD_UNIT, CRUN_LAB_WRAPPER, CRUN_PATH, MASQUERADE_CHAIN, MODULES_FILE, POD_NETWORK_SCRIPT, POD_NETWORK_UNIT,
    ROUTE_PROTO, RUNC_PATH, SYSCTL_FILE,
};

/// containerd's binaries (the members of its tarball capstan extracts).
const CONTAINERD_BINARIES: [&str; 3] = ["containerd", "containerd-shim-runc-v2", "ctr"];
/// State directories of containerd (its `opt` plugin's `/opt/containerd` too, which containerd
/// creates itself on start) and of the CNI plugins (host-local's leases).
const STATE_DIRS: [&str; 4] = [
    "/var/lib/containerd",
    "/run/containerd",
    "/opt/containerd",
    "/var/lib/cni",
];
/// The comment apply puts before an fstab swap line it turns off.
pub const SWAP_OFF_COMMENT: &str = "# capstan: swap off for the kubelet: ";
/// The copy of /etc/fstab `sed -i.capstan-bak` leaves.
const FSTAB_BACKUP: &str = "/etc/fstab.capstan-bak";

/// The shell that removes the pod network's host side; and the test that nothing is left of it.
fn pod_network_removal() -> (String, String) {
    let chain = MASQUERADE_CHAIN;
    let remove = format!(
        "ip -4 route flush proto {ROUTE_PROTO}; \
         if command -v iptables >/dev/null 2>&1; then \
           while iptables -w -t nat -S POSTROUTING | grep -q -- '-j {chain}'; do \
             rule=$(iptables -w -t nat -S POSTROUTING | grep -- '-j {chain}' | head -n1 | sed 's/^-A /-D /'); \
             eval \"iptables -w -t nat $rule\"; \
           done; \
           if iptables -w -t nat -S {chain} >/dev/null 2>&1; then iptables -w -t nat -F {chain} && iptables -w -t nat -X {chain}; fi; \
         fi; \
         if ip link show {CNI_BRIDGE} >/dev/null 2>&1; then ip link del {CNI_BRIDGE}; fi"
    );
    let gone = format!(
        "[ -z \"$(ip -4 route show proto {ROUTE_PROTO})\" ] && ! ip link show {CNI_BRIDGE} >/dev/null 2>&1 && \
         {{ ! command -v iptables >/dev/null 2>&1 || ! iptables -w -t nat -S {chain} >/dev/null 2>&1; }}"
    );
    (remove, gone)
}

fn parent(path: &str) -> String {
    std::path::Path::new(path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/".into())
}

/// The teardown of one host (every host: one that lost its role may still have it all).
pub fn teardown() -> Result<Vec<Arc<dyn Operation>>, ComponentError> {
    let failed = |e: capstan_provisioner::ops::OpError| ComponentError {
        component: NAME,
        message: e.to_string(),
        hint: None,
    };
    let pod_network = POD_NETWORK_UNIT.trim_end_matches(".service");
    let containerd = CONTAINERD_UNIT.trim_end_matches(".service");
    let mut ops: Vec<Arc<dyn Operation>> = vec![Arc::new(
        Service::new(pod_network).map_err(failed)?.enabled(false).running(false),
    )];
    let (remove, gone) = pod_network_removal();
    ops.push(Arc::new(
        Command::new("remove the pod network (routes, masquerading, bridge)", &remove).unless(&gone),
    ));
    ops.push(Arc::new(
        Service::new(containerd).map_err(failed)?.enabled(false).running(false),
    ));
    ops.push(Arc::new(RemovedUnit::new(POD_NETWORK_UNIT)));
    ops.push(Arc::new(RemovedUnit::new(CONTAINERD_UNIT)));
    for binary in CONTAINERD_BINARIES {
        ops.push(Arc::new(Absent::new(&format!("{BIN_DIR}/{binary}"))));
    }
    for path in [RUNC_PATH, CRUN_PATH, CRUN_LAB_WRAPPER, POD_NETWORK_SCRIPT] {
        ops.push(Arc::new(Absent::new(path)));
    }
    for plugin in CNI_PLUGINS {
        ops.push(Arc::new(Absent::new(&format!("{CNI_BIN_DIR}/{plugin}"))));
    }
    ops.push(Arc::new(Absent::new(CNI_CONFIG_FILE)));
    ops.push(Arc::new(Absent::new(CONTAINERD_CONFIG_DIR)));
    for dir in STATE_DIRS {
        ops.push(Arc::new(Absent::new(dir)));
    }
    // Directories capstan created for these, when nothing else is left in them.
    for dir in [
        CNI_BIN_DIR.to_string(),
        parent(CNI_BIN_DIR),
        CNI_CONF_DIR.to_string(),
        parent(CNI_CONF_DIR),
        parent(POD_NETWORK_SCRIPT),
    ] {
        ops.push(Arc::new(Command::remove_empty_dir(&dir)));
    }
    ops.push(Arc::new(Absent::new(MODULES_FILE)));
    ops.push(Arc::new(Absent::new(SYSCTL_FILE)));
    ops.push(Arc::new(
        Command::new(
            "put back the swap lines of /etc/fstab",
            &format!("sed -i -E 's/^{SWAP_OFF_COMMENT}//' /etc/fstab"),
        )
        .unless(&format!("! grep -q '^{SWAP_OFF_COMMENT}' /etc/fstab")),
    ));
    ops.push(Arc::new(Absent::new(FSTAB_BACKUP)));
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_apply_writes_is_removed() {
        let described: Vec<String> = teardown().unwrap().iter().map(|op| op.describe()).collect();
        let all = described.join("\n");
        for path in [
            "/usr/local/bin/containerd",
            "/usr/local/sbin/runc",
            "/usr/local/bin/crun",
            "/usr/local/lib/capstan/crun-lab-cgroupless",
            "/opt/cni/bin/bridge",
            "/etc/cni/net.d/10-capstan.conflist",
            "/etc/containerd",
            "/opt/containerd",
            "/etc/modules-load.d/capstan-nodes.conf",
            "/etc/sysctl.d/90-capstan-nodes.conf",
            "capstan-pod-network.service",
            "containerd.service",
        ] {
            assert!(all.contains(path), "{path} missing from {all}");
        }
        // The pod network goes before its script and the tools it needs.
        let network = described.iter().position(|d| d.contains("pod network")).unwrap();
        let script = described.iter().position(|d| d.contains(POD_NETWORK_SCRIPT)).unwrap();
        assert!(network < script, "{described:?}");
    }
}
