// Errors carry whole messages (names, versions, what is available); a run produces a handful.
#![allow(clippy::result_large_err)]

//! Where the runtime comes from: the rows of the engine's release table
//! ([`capstan_provisioner::releases`]) for containerd, runc, crun and the CNI plugins, and the
//! layouts of their release files.

use capstan_inventory::Versions;
use capstan_provisioner::releases::{ReleaseError, Releases, ResolvedArtifact};

use crate::config::CNI_PLUGINS;

/// The release artifacts a node needs.
#[derive(Debug, Clone)]
pub struct NodeArtifacts {
    pub containerd: ResolvedArtifact,
    pub runc: ResolvedArtifact,
    /// Only resolved when some host uses the lab-only runtime setting.
    pub crun: Option<ResolvedArtifact>,
    pub cni_plugins: ResolvedArtifact,
}

/// Resolve every artifact for `arch` (upstream with pinned checksums, or the mirror's).
pub fn node_artifacts(
    versions: &Versions,
    arch: &str,
    mirror: Option<&str>,
    with_crun: bool,
) -> Result<NodeArtifacts, ReleaseError> {
    let releases = Releases::embedded()?;
    Ok(NodeArtifacts {
        containerd: releases.resolve("containerd", &versions.containerd, arch, mirror)?,
        runc: releases.resolve("runc", &versions.runc, arch, mirror)?,
        crun: if with_crun {
            Some(releases.resolve("crun", &versions.crun, arch, mirror)?)
        } else {
            None
        },
        cni_plugins: releases.resolve("cni-plugins", &versions.cni_plugins, arch, mirror)?,
    })
}

/// Members of the containerd tarball capstan installs.
pub fn containerd_members() -> Vec<String> {
    ["bin/containerd", "bin/containerd-shim-runc-v2", "bin/ctr"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Members of the CNI plugins tarball capstan installs (the plugins sit at its top level).
pub fn cni_members() -> Vec<String> {
    CNI_PLUGINS.iter().map(|p| format!("./{p}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_inventory::{
        DEFAULT_CNI_PLUGINS_VERSION, DEFAULT_CONTAINERD_VERSION, DEFAULT_CRUN_VERSION, DEFAULT_RUNC_VERSION,
    };

    /// The lab mirror's lines (lab/mirror/build-mirror.sh from Debian bookworm's packages).
    const SUMS: &str = "\
1111111111111111111111111111111111111111111111111111111111111111  containerd/containerd/releases/download/v1.6.20/containerd-1.6.20-linux-amd64.tar.gz
2222222222222222222222222222222222222222222222222222222222222222  opencontainers/runc/releases/download/v1.1.5/runc.amd64
3333333333333333333333333333333333333333333333333333333333333333  containers/crun/releases/download/1.8.1/crun-1.8.1-linux-amd64
4444444444444444444444444444444444444444444444444444444444444444  containernetworking/plugins/releases/download/v1.1.1/cni-plugins-linux-amd64-v1.1.1.tgz
";

    #[test]
    fn the_default_versions_are_pinned_upstream() {
        let releases = Releases::embedded().unwrap();
        for arch in ["amd64", "arm64"] {
            let containerd = releases
                .upstream("containerd", DEFAULT_CONTAINERD_VERSION, arch)
                .unwrap();
            assert_eq!(
                containerd.url,
                format!(
                    "https://github.com/containerd/containerd/releases/download/v{DEFAULT_CONTAINERD_VERSION}/containerd-{DEFAULT_CONTAINERD_VERSION}-linux-{arch}.tar.gz"
                )
            );
            releases.upstream("runc", DEFAULT_RUNC_VERSION, arch).unwrap();
            releases
                .upstream("cni-plugins", DEFAULT_CNI_PLUGINS_VERSION, arch)
                .unwrap();
        }
        assert_eq!(
            releases.upstream("containerd", "1.7.34", "amd64").unwrap().checksum,
            "640f989745020ea4897ad0a3d7d977863a7279d3f2e132792fc62c25a45bda50"
        );
        // crun has no pinned upstream checksum: never downloaded unverified.
        let error = releases
            .upstream("crun", DEFAULT_CRUN_VERSION, "amd64")
            .unwrap_err()
            .to_string();
        assert!(error.contains("has no pinned upstream checksum"), "{error}");
    }

    #[test]
    fn the_lab_mirror_layout_matches_the_upstream_urls() {
        let releases = Releases::embedded().unwrap();
        let mirror = "file:///var/cache/capstan/mirror";
        for (component, version, sha) in [
            ("containerd", "1.6.20", "1"),
            ("runc", "1.1.5", "2"),
            ("crun", "1.8.1", "3"),
            ("cni-plugins", "1.1.1", "4"),
        ] {
            let resolved = releases.on_mirror(component, version, "amd64", mirror, SUMS).unwrap();
            assert_eq!(resolved.checksum, sha.repeat(64), "{component}");
            assert!(resolved.url.starts_with(mirror), "{}", resolved.url);
        }
    }
}
