//! Where etcd comes from: its row of the engine's release table
//! ([`capstan_provisioner::releases`]) and the layout of its release tarball.

use capstan_provisioner::releases::{parse_version, ReleaseError, Releases, ResolvedArtifact};

/// The etcd release tarball for `version`/`arch`, upstream or from the mirror.
pub fn etcd_artifact(version: &str, arch: &str, mirror: Option<&str>) -> Result<ResolvedArtifact, ReleaseError> {
    Releases::embedded()?.resolve("etcd", version, arch, mirror)
}

/// Members of the etcd tarball to install: etcd and etcdctl, plus etcdutl from 3.5 on.
pub fn etcd_tarball_members(version: &str, arch: &str) -> Result<Vec<String>, ReleaseError> {
    let (major, minor, _) = parse_version(version)?;
    let dir = format!("etcd-v{version}-linux-{arch}");
    let mut members = vec![format!("{dir}/etcd"), format!("{dir}/etcdctl")];
    if (major, minor) >= (3, 5) {
        members.push(format!("{dir}/etcdutl"));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_provisioner::releases::parse_sha256sums;

    const SUMS: &str = "\
3f1283b1a4f7b59ddc36b855030fd6bf7d9936e5399cc2befc3e8b5da986f642  etcd-io/etcd/releases/download/v3.4.23/etcd-v3.4.23-linux-amd64.tar.gz
7fa4573f20bedd8eb794a142a857e8105e9a5e8530529a94215c6f6120dc0d5e  etcd-io/etcd/releases/download/v3.5.1/etcd-v3.5.1-linux-amd64.tar.gz
d1cc2e7e6f26ff9495261c7c90f0c93a96dba293180b46c1da260aac91c24ab0  prometheus/alertmanager/releases/download/v0.25.0/alertmanager-0.25.0.linux-amd64.tar.gz
";

    #[test]
    fn upstream_urls_use_pinned_checksums() {
        let releases = Releases::embedded().unwrap();
        let resolved = releases.upstream("etcd", "3.5.21", "amd64").unwrap();
        assert_eq!(
            resolved.url,
            "https://github.com/etcd-io/etcd/releases/download/v3.5.21/etcd-v3.5.21-linux-amd64.tar.gz"
        );
        assert_eq!(
            resolved.checksum,
            "adddda4b06718e68671ffabff2f8cee48488ba61ad82900e639d108f2148501c"
        );
    }

    #[test]
    fn unpinned_version_lists_known_ones() {
        let releases = Releases::embedded().unwrap();
        let err = releases.upstream("etcd", "3.5.1", "amd64").unwrap_err().to_string();
        assert!(
            err.starts_with("etcd 3.5.1 for amd64 has no pinned upstream checksum"),
            "{err}"
        );
        assert!(err.contains("3.6.14, 3.6.13"), "{err}");
        assert!(err.contains("3.5.33"), "{err}");
        assert!(matches!(
            releases.upstream("etcd", "3.5", "amd64"),
            Err(ReleaseError::InvalidVersion(_))
        ));
    }

    #[test]
    fn the_default_etcd_version_is_pinned() {
        let releases = Releases::embedded().unwrap();
        releases
            .upstream("etcd", capstan_inventory::DEFAULT_ETCD_VERSION, "amd64")
            .unwrap();
    }

    #[test]
    fn mirror_replaces_scheme_and_host_and_uses_its_checksums() {
        let releases = Releases::embedded().unwrap();
        let resolved = releases
            .on_mirror("etcd", "3.5.1", "amd64", "file:///var/cache/capstan/mirror/", SUMS)
            .unwrap();
        assert_eq!(
            resolved.url,
            "file:///var/cache/capstan/mirror/etcd-io/etcd/releases/download/v3.5.1/etcd-v3.5.1-linux-amd64.tar.gz"
        );
        assert_eq!(
            resolved.checksum,
            "7fa4573f20bedd8eb794a142a857e8105e9a5e8530529a94215c6f6120dc0d5e"
        );
    }

    #[test]
    fn version_missing_on_the_mirror_lists_what_it_has() {
        let releases = Releases::embedded().unwrap();
        let err = releases
            .on_mirror("etcd", "3.5.21", "amd64", "https://mirror.example/m", SUMS)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no etcd 3.5.21 for amd64"), "{err}");
        assert!(err.ends_with("it has: 3.5.1, 3.4.23"), "{err}");
        let err = releases
            .on_mirror("etcd", "3.5.1", "arm64", "https://mirror.example/m", SUMS)
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("it has: no versions of it"), "{err}");
    }

    #[test]
    fn sha256sums_lines() {
        let sums = parse_sha256sums(&format!("{}\n\ngarbage line\n{} *./bin/x\n", SUMS, "a".repeat(64)));
        assert_eq!(sums.len(), 4);
        assert_eq!(sums["bin/x"], "a".repeat(64));
    }

    #[test]
    fn tarball_members_by_version() {
        assert_eq!(
            etcd_tarball_members("3.4.23", "amd64").unwrap(),
            ["etcd-v3.4.23-linux-amd64/etcd", "etcd-v3.4.23-linux-amd64/etcdctl"]
        );
        assert_eq!(etcd_tarball_members("3.5.1", "amd64").unwrap().len(), 3);
    }
}
