// Errors carry whole messages (names, versions, what is available); a run produces a handful.
#![allow(clippy::result_large_err)]

//! Where Prometheus, Alertmanager and node_exporter come from: their rows of the engine's release table
//! ([`capstan_provisioner::releases`]) and the layout of their release tarballs.

use capstan_inventory::Versions;
use capstan_provisioner::releases::{ReleaseError, Releases, ResolvedArtifact};

#[derive(Debug, Clone)]
pub struct MonitoringArtifacts {
    pub node_exporter: ResolvedArtifact,
    /// Only resolved for an architecture some monitoring host has.
    pub prometheus: Option<ResolvedArtifact>,
    /// Like `prometheus`: on monitoring hosts only.
    pub alertmanager: Option<ResolvedArtifact>,
}

pub fn monitoring_artifacts(
    versions: &Versions,
    arch: &str,
    mirror: Option<&str>,
    with_prometheus: bool,
) -> Result<MonitoringArtifacts, ReleaseError> {
    let releases = Releases::embedded()?;
    Ok(MonitoringArtifacts {
        node_exporter: releases.resolve("node_exporter", &versions.node_exporter, arch, mirror)?,
        prometheus: if with_prometheus {
            Some(releases.resolve("prometheus", &versions.prometheus, arch, mirror)?)
        } else {
            None
        },
        alertmanager: if with_prometheus {
            Some(releases.resolve("alertmanager", &versions.alertmanager, arch, mirror)?)
        } else {
            None
        },
    })
}

/// The tarball members installed: `<project>-<version>.linux-<arch>/<binary>`.
pub fn members(project: &str, version: &str, arch: &str, binaries: &[&str]) -> Vec<String> {
    binaries
        .iter()
        .map(|binary| format!("{project}-{version}.linux-{arch}/{binary}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lab mirror's lines (lab/mirror/build-mirror.sh: Debian bookworm's packages, the
    /// inventory's defaults, and trixie's, the versions a version change moves to).
    const SUMS: &str = "\
835edc5d64c7d2c3796da492ea656dd6373959befb19c3de4fba7965f73c1f0c  prometheus/prometheus/releases/download/v2.42.0/prometheus-2.42.0.linux-amd64.tar.gz
66de61148d34f9d864420737d098c3631b19dcf89e0c4a0b3703911479fd3718  prometheus/node_exporter/releases/download/v1.5.0/node_exporter-1.5.0.linux-amd64.tar.gz
d1cc2e7e6f26ff9495261c7c90f0c93a96dba293180b46c1da260aac91c24ab0  prometheus/alertmanager/releases/download/v0.25.0/alertmanager-0.25.0.linux-amd64.tar.gz
606fa5e3d40d22fa3346c210da9df4b730624d1b299a534007d9c0c216c01829  prometheus/prometheus/releases/download/v2.53.3/prometheus-2.53.3.linux-amd64.tar.gz
959830fd7cafd3b724388f3bea5255bbb4d22b101f26461100403352f5d97814  prometheus/node_exporter/releases/download/v1.9.0/node_exporter-1.9.0.linux-amd64.tar.gz
e145f7de448892bac781e7bc8452313106c8b8e75cc2bbfb15098e7328c85ab6  prometheus/alertmanager/releases/download/v0.28.1/alertmanager-0.28.1.linux-amd64.tar.gz
";

    #[test]
    fn the_lab_mirror_layout_matches_the_upstream_urls() {
        let releases = Releases::embedded().unwrap();
        let mirror = "file:///var/cache/capstan/mirror";
        for (project, version) in [
            ("prometheus", "2.42.0"),
            ("node_exporter", "1.5.0"),
            ("alertmanager", "0.25.0"),
            ("prometheus", "2.53.3"),
            ("node_exporter", "1.9.0"),
            ("alertmanager", "0.28.1"),
        ] {
            let resolved = releases.on_mirror(project, version, "amd64", mirror, SUMS).unwrap();
            assert_eq!(
                resolved.url,
                format!(
                    "{mirror}/prometheus/{project}/releases/download/v{version}/{project}-{version}.linux-amd64.tar.gz"
                )
            );
        }
    }

    #[test]
    fn no_upstream_download_without_a_pinned_checksum() {
        let releases = Releases::embedded().unwrap();
        for project in ["prometheus", "node_exporter", "alertmanager"] {
            let error = releases.upstream(project, "1.0.0", "amd64").unwrap_err().to_string();
            assert!(error.contains("has no pinned upstream checksum"), "{error}");
        }
    }

    #[test]
    fn members_follow_the_release_layout() {
        assert_eq!(
            members("prometheus", "2.42.0", "amd64", &["prometheus", "promtool"]),
            [
                "prometheus-2.42.0.linux-amd64/prometheus",
                "prometheus-2.42.0.linux-amd64/promtool"
            ]
        );
    }
}
