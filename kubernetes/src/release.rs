// Errors carry whole messages (names, versions, what is available); a run produces a handful.
#![allow(clippy::result_large_err)]

//! Where the binaries come from: the official `kubernetes-server-linux-<arch>.tar.gz` and
//! `kubernetes-node-linux-<arch>.tar.gz` of the release table (pinned by the sha512 of the
//! release notes), or the mirror's copy (user-supplied, verified by
//! `lab/mirror/add-kube-artifacts.sh` against the same pins).

use capstan_provisioner::releases::{ReleaseError, Releases, ResolvedArtifact};

use crate::config::{CONTROL_PLANE_BINARIES, NODE_BINARIES};

pub const SERVER_RELEASE: &str = "kubernetes-server";
pub const NODE_RELEASE: &str = "kubernetes-node";

/// The server tarball (control plane) and the node tarball (kubelet, kube-proxy).
pub fn artifacts(
    version: &str,
    arch: &str,
    mirror: Option<&str>,
) -> Result<(ResolvedArtifact, ResolvedArtifact), ReleaseError> {
    let releases = Releases::embedded()?;
    Ok((
        releases.resolve(SERVER_RELEASE, version, arch, mirror)?,
        releases.resolve(NODE_RELEASE, version, arch, mirror)?,
    ))
}

/// Members of the server tarball capstan installs.
pub fn server_members() -> Vec<String> {
    CONTROL_PLANE_BINARIES
        .iter()
        .map(|b| format!("kubernetes/server/bin/{b}"))
        .collect()
}

/// Members of the node tarball capstan installs.
pub fn node_members() -> Vec<String> {
    NODE_BINARIES
        .iter()
        .map(|b| format!("kubernetes/node/bin/{b}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_version_is_pinned_by_sha512_for_both_tarballs() {
        let (server, node) = artifacts(capstan_inventory::DEFAULT_KUBERNETES_VERSION, "amd64", None).unwrap();
        assert_eq!(
            server.url,
            "https://dl.k8s.io/v1.32.5/kubernetes-server-linux-amd64.tar.gz"
        );
        assert_eq!(node.url, "https://dl.k8s.io/v1.32.5/kubernetes-node-linux-amd64.tar.gz");
        assert_eq!(server.checksum.len(), 128);
        assert!(server.checksum.starts_with("d74bd56b2776"));
        let releases = Releases::embedded().unwrap();
        // Two consecutive minors, so an upgrade path exists in the table.
        assert_eq!(
            releases.pinned_versions(SERVER_RELEASE, "amd64").unwrap(),
            ["1.32.5", "1.31.0"]
        );
        assert_eq!(
            releases.pinned_versions(NODE_RELEASE, "arm64").unwrap(),
            ["1.32.5", "1.31.0"]
        );
    }

    #[test]
    fn mirror_copies_are_found_under_the_upstream_path() {
        let sums = format!("{}  v1.31.0/kubernetes-node-linux-amd64.tar.gz\n", "a".repeat(64));
        let node = Releases::embedded()
            .unwrap()
            .on_mirror(
                NODE_RELEASE,
                "1.31.0",
                "amd64",
                "file:///var/cache/capstan/mirror",
                &sums,
            )
            .unwrap();
        assert_eq!(
            node.url,
            "file:///var/cache/capstan/mirror/v1.31.0/kubernetes-node-linux-amd64.tar.gz"
        );
        assert_eq!(
            node_members(),
            ["kubernetes/node/bin/kubelet", "kubernetes/node/bin/kube-proxy"]
        );
    }
}
