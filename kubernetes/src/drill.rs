//! What a drill of a backup with Kubernetes needs on its target, and what it reports when the
//! target cannot have it ([`capstan_provisioner::component::Component::drill_skip`]).
//!
//! The Kubernetes checks (API ready, expected namespaces, objects readable:
//! [`crate::client::drill_checks`]) need a running control plane on the drill target, installed
//! by `capstan apply` from the official release tarballs. Where those tarballs cannot be had (not
//! pinned for the version, not on the target's mirror), the drill still restores etcd and the
//! Kubernetes state files and reports these checks as skipped, naming the missing tarballs.

use capstan_inventory::Cluster;
use capstan_provisioner::component::DrillSkip;

use crate::release;

/// The checks [`crate::client::drill_checks`] runs, by name: the checks a drill runs on a restored Kubernetes control plane, in order (the first, "API
/// ready", also names the failure when no admin credential or client can be made).
pub const DRILL_CHECKS: [&str; 3] = ["API ready", "expected namespaces", "objects readable"];

/// The release's architecture name for the machine capstan runs on (drill targets are lab
/// machines on it, or hosts of the same kind).
pub fn local_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `None` when both release tarballs of the cluster's Kubernetes version resolve for `arch`
/// (on the cluster's mirror when it has one); otherwise what is missing.
pub fn drill_skip(cluster: &Cluster, arch: &str) -> Option<DrillSkip> {
    let version = &cluster.kubernetes.version;
    let error = release::artifacts(version, arch, cluster.artifacts.mirror.as_deref()).err()?;
    let source = match cluster.artifacts.mirror.as_deref() {
        Some(mirror) => format!("on the mirror {mirror}"),
        None => "from upstream".to_string(),
    };
    Some(DrillSkip {
        checks: DRILL_CHECKS.iter().map(|c| c.to_string()).collect(),
        missing: format!(
            "no control plane on the drill target: the Kubernetes {version} release tarballs \
             (kubernetes-server-linux-{arch}.tar.gz, kubernetes-node-linux-{arch}.tar.gz) are not available {source} \
             ({error}); supply them with CAPSTAN_KUBE_ARTIFACTS=DIR lab/mirror/add-kube-artifacts.sh"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_without_the_tarballs_names_them_and_how_to_supply_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("SHA256SUMS"),
            format!("{}  v3.5.1/etcd.tar.gz\n", "a".repeat(64)),
        )
        .unwrap();
        let cluster = crate::test_cluster(&format!("artifacts: {{mirror: \"file://{}\"}}\n", dir.path().display()));
        let skip = drill_skip(&cluster, "amd64").expect("no kube tarballs on that mirror");
        assert_eq!(skip.checks, DRILL_CHECKS);
        for needle in [
            "kubernetes-server-linux-amd64.tar.gz",
            "kubernetes-node-linux-amd64.tar.gz",
            &cluster.kubernetes.version,
            "CAPSTAN_KUBE_ARTIFACTS",
        ] {
            assert!(skip.missing.contains(needle), "{needle}: {}", skip.missing);
        }
        // With the tarballs listed on the mirror, the checks run.
        let version = &cluster.kubernetes.version;
        std::fs::write(
            dir.path().join("SHA256SUMS"),
            format!(
                "{a}  v{version}/kubernetes-server-linux-amd64.tar.gz\n{a}  v{version}/kubernetes-node-linux-amd64.tar.gz\n",
                a = "a".repeat(64)
            ),
        )
        .unwrap();
        assert_eq!(drill_skip(&cluster, "amd64"), None);
    }
}
