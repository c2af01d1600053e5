//! Where release artifacts come from: version + architecture → download URL + checksum.
//!
//! By default an artifact is the official upstream download, verified against a checksum pinned
//! in `provisioner/data/upstream-releases.yaml` (embedded at build time): a row's `sha256:` or,
//! for projects that publish only sha512 sums, its `sha512:`. With an inventory
//! `artifacts.mirror`, the upstream `scheme://host` prefix is replaced by the mirror base and the
//! checksum comes from the mirror's own `SHA256SUMS` file: mirrors may repackage tarballs, so the
//! upstream checksums do not apply to them.

// Errors carry whole messages (names, versions, what is available); a run produces a handful.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;

const UPSTREAM_RELEASES: &str = include_str!("../data/upstream-releases.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("the embedded release table is invalid: {0}")]
    Table(String),
    #[error("no release table entry for component `{0}`")]
    UnknownComponent(String),
    #[error(
        "{component} {version} for {arch} has no pinned upstream checksum; versions with pinned checksums: {known}"
    )]
    UnpinnedVersion {
        component: String,
        version: String,
        arch: String,
        known: String,
    },
    #[error("invalid version `{0}`: expected MAJOR.MINOR.PATCH")]
    InvalidVersion(String),
    #[error("mirror {mirror}: cannot read {path}: {reason}")]
    MirrorSums {
        mirror: String,
        path: String,
        reason: String,
    },
    #[error(
        "mirror {mirror} has no {component} {version} for {arch} (no `{path}` in its SHA256SUMS); it has: {available}"
    )]
    NotOnMirror {
        mirror: String,
        component: String,
        version: String,
        arch: String,
        path: String,
        available: String,
    },
    #[error("unsupported mirror URL `{0}`: expected file:///dir, http:// or https://")]
    UnsupportedMirror(String),
}

/// A resolved download: fetch `url`, expect `checksum` (a sha256, or a pinned upstream sha512;
/// the Artifact op and the cache accept both, told apart by length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedArtifact {
    pub url: String,
    pub checksum: String,
}

#[derive(Debug, Clone)]
struct ComponentTable {
    url: String,
    /// arch → version → checksum (sha256 or sha512 hex)
    pinned: BTreeMap<String, BTreeMap<String, String>>,
}

fn scalar(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_table(text: &str) -> Result<BTreeMap<String, ComponentTable>, ReleaseError> {
    let root: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| ReleaseError::Table(e.to_string()))?;
    let mapping = root
        .as_mapping()
        .ok_or_else(|| ReleaseError::Table("top level is not a mapping".into()))?;
    let mut table = BTreeMap::new();
    for (name, entry) in mapping {
        let name = scalar(name).ok_or_else(|| ReleaseError::Table("component name is not a string".into()))?;
        let url = entry
            .get("url")
            .and_then(scalar)
            .ok_or_else(|| ReleaseError::Table(format!("{name}: no url")))?;
        let mut pinned: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (key, digits) in [("sha256", 64), ("sha512", 128)] {
            let Some(archs) = entry.get(key).and_then(|v| v.as_mapping()) else {
                continue;
            };
            for (arch, versions) in archs {
                let arch = scalar(arch).ok_or_else(|| ReleaseError::Table(format!("{name}: bad arch key")))?;
                let by_version = pinned.entry(arch.clone()).or_default();
                if let Some(versions) = versions.as_mapping() {
                    for (version, sum) in versions {
                        let (Some(version), Some(sum)) = (scalar(version), scalar(sum)) else {
                            return Err(ReleaseError::Table(format!("{name}/{arch}: bad entry")));
                        };
                        if sum.len() != digits || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(ReleaseError::Table(format!(
                                "{name}/{arch}/{version}: a {key} is {digits} hex digits"
                            )));
                        }
                        by_version.insert(version, sum.to_ascii_lowercase());
                    }
                }
            }
        }
        table.insert(name, ComponentTable { url, pinned });
    }
    Ok(table)
}

/// `1.2.3` → (1, 2, 3); used to sort versions, and by components to know their tarball layouts.
pub fn parse_version(version: &str) -> Result<(u64, u64, u64), ReleaseError> {
    let invalid = || ReleaseError::InvalidVersion(version.to_string());
    let mut parts = version.split('.').map(|p| p.parse::<u64>().map_err(|_| invalid()));
    let major = parts.next().ok_or_else(invalid)??;
    let minor = parts.next().ok_or_else(invalid)??;
    let patch = parts.next().ok_or_else(invalid)??;
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok((major, minor, patch))
}

fn sort_versions<'a>(versions: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut list: Vec<&str> = versions.collect();
    list.sort_by_key(|v| parse_version(v).unwrap_or((0, 0, 0)));
    list.reverse();
    list
}

fn expand(pattern: &str, version: &str, arch: &str) -> String {
    pattern.replace("{version}", version).replace("{arch}", arch)
}

/// The path part of an upstream URL: everything after `scheme://host`.
fn url_path(url: &str) -> &str {
    let without_scheme = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    without_scheme.find('/').map(|i| &without_scheme[i + 1..]).unwrap_or("")
}

/// The mirror URL of an upstream artifact: the upstream `scheme://host` replaced by `mirror`.
pub fn mirror_url(upstream_url: &str, mirror: &str) -> String {
    format!("{}/{}", mirror.trim_end_matches('/'), url_path(upstream_url))
}

/// `sha256  path` lines (sha256sum format; a leading `*` marks binary mode) → path → sha256.
pub fn parse_sha256sums(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (sum, path) = line.trim().split_once(char::is_whitespace)?;
            let path = path.trim_start().trim_start_matches('*').trim_start_matches("./");
            (sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()) && !path.is_empty())
                .then(|| (path.to_string(), sum.to_ascii_lowercase()))
        })
        .collect()
}

/// Reads `<mirror>/SHA256SUMS`.
fn read_mirror_sums(mirror: &str) -> Result<String, ReleaseError> {
    let url = format!("{}/SHA256SUMS", mirror.trim_end_matches('/'));
    let failed = |reason: String| ReleaseError::MirrorSums {
        mirror: mirror.to_string(),
        path: "SHA256SUMS".into(),
        reason,
    };
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(ReleaseError::UnsupportedMirror(mirror.to_string()));
        }
        return std::fs::read_to_string(path).map_err(|e| failed(e.to_string()));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ReleaseError::UnsupportedMirror(mirror.to_string()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = ureq::tls::TlsConfig::builder()
        .unversioned_rustls_crypto_provider(provider)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let mut response = agent.get(&url).call().map_err(|e| failed(e.to_string()))?;
    response.body_mut().read_to_string().map_err(|e| failed(e.to_string()))
}

/// The release table embedded in capstan.
pub struct Releases {
    table: BTreeMap<String, ComponentTable>,
}

impl Releases {
    pub fn embedded() -> Result<Releases, ReleaseError> {
        Ok(Releases {
            table: parse_table(UPSTREAM_RELEASES)?,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Releases, ReleaseError> {
        Ok(Releases {
            table: parse_table(text)?,
        })
    }

    fn component(&self, component: &str) -> Result<&ComponentTable, ReleaseError> {
        self.table
            .get(component)
            .ok_or_else(|| ReleaseError::UnknownComponent(component.to_string()))
    }

    /// Versions with a pinned checksum for `arch`, newest first.
    pub fn pinned_versions(&self, component: &str, arch: &str) -> Result<Vec<String>, ReleaseError> {
        let entry = self.component(component)?;
        Ok(entry
            .pinned
            .get(arch)
            .map(|versions| sort_versions(versions.keys().map(String::as_str)))
            .unwrap_or_default()
            .into_iter()
            .map(String::from)
            .collect())
    }

    /// The upstream URL and pinned checksum.
    pub fn upstream(&self, component: &str, version: &str, arch: &str) -> Result<ResolvedArtifact, ReleaseError> {
        parse_version(version)?;
        let entry = self.component(component)?;
        match entry.pinned.get(arch).and_then(|v| v.get(version)) {
            Some(checksum) => Ok(ResolvedArtifact {
                url: expand(&entry.url, version, arch),
                checksum: checksum.clone(),
            }),
            None => Err(ReleaseError::UnpinnedVersion {
                component: component.to_string(),
                version: version.to_string(),
                arch: arch.to_string(),
                known: self.pinned_versions(component, arch)?.join(", "),
            }),
        }
    }

    /// The artifact on `mirror`, checked against the mirror's `sums` (contents of SHA256SUMS).
    pub fn on_mirror(
        &self,
        component: &str,
        version: &str,
        arch: &str,
        mirror: &str,
        sums: &str,
    ) -> Result<ResolvedArtifact, ReleaseError> {
        parse_version(version)?;
        let entry = self.component(component)?;
        let upstream = expand(&entry.url, version, arch);
        let path = url_path(&upstream).to_string();
        let sums = parse_sha256sums(sums);
        match sums.get(&path) {
            Some(sha256) => Ok(ResolvedArtifact {
                url: mirror_url(&upstream, mirror),
                checksum: sha256.clone(),
            }),
            None => {
                // Which versions of this component the mirror does have: match its paths
                // against the URL pattern with the version left open.
                let pattern = url_path(&expand(&entry.url, "{version}", arch)).to_string();
                let prefix = pattern.split_once("{version}").map(|(p, _)| p).unwrap_or(&pattern);
                let found: Vec<&str> = sums
                    .keys()
                    .filter_map(|p| {
                        let candidate = p.strip_prefix(prefix)?.split('/').next()?;
                        (parse_version(candidate).is_ok() && *p == pattern.replace("{version}", candidate))
                            .then_some(candidate)
                    })
                    .collect();
                let available = sort_versions(found.into_iter());
                Err(ReleaseError::NotOnMirror {
                    mirror: mirror.to_string(),
                    component: component.to_string(),
                    version: version.to_string(),
                    arch: arch.to_string(),
                    path,
                    available: if available.is_empty() {
                        "no versions of it".to_string()
                    } else {
                        available.join(", ")
                    },
                })
            }
        }
    }

    /// Upstream with a pinned checksum, or the mirror (reading its SHA256SUMS) when one is set.
    pub fn resolve(
        &self,
        component: &str,
        version: &str,
        arch: &str,
        mirror: Option<&str>,
    ) -> Result<ResolvedArtifact, ReleaseError> {
        match mirror {
            None => self.upstream(component, version, arch),
            Some(mirror) => {
                let sums = read_mirror_sums(mirror)?;
                self.on_mirror(component, version, arch, mirror, &sums)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up component: the table is generic, components bring their own rows.
    const TABLE: &str = "
demo:
  url: https://downloads.example/demo/v{version}/demo-{version}-{arch}.tar.gz
  sha256:
    amd64:
      1.2.0: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
      1.10.1: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
";

    const SUMS: &str = "\
cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc  demo/v1.9.0/demo-1.9.0-amd64.tar.gz
dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd  demo/v1.2.0/demo-1.2.0-amd64.tar.gz
eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee  other/v1.0.0/other-1.0.0-amd64.tar.gz
";

    fn releases() -> Releases {
        Releases::from_yaml(TABLE).unwrap()
    }

    #[test]
    fn the_embedded_table_parses() {
        Releases::embedded().unwrap();
    }

    #[test]
    fn upstream_expands_the_pattern_with_the_pinned_checksum() {
        let resolved = releases().upstream("demo", "1.2.0", "amd64").unwrap();
        assert_eq!(
            resolved,
            ResolvedArtifact {
                url: "https://downloads.example/demo/v1.2.0/demo-1.2.0-amd64.tar.gz".into(),
                checksum: "a".repeat(64),
            }
        );
    }

    #[test]
    fn unknown_components_and_unpinned_versions_are_errors() {
        assert!(matches!(
            releases().upstream("other", "1.0.0", "amd64"),
            Err(ReleaseError::UnknownComponent(name)) if name == "other"
        ));
        let err = releases().upstream("demo", "1.3.0", "amd64").unwrap_err().to_string();
        assert_eq!(
            err,
            "demo 1.3.0 for amd64 has no pinned upstream checksum; versions with pinned checksums: 1.10.1, 1.2.0"
        );
        assert!(matches!(
            releases().upstream("demo", "1.2", "amd64"),
            Err(ReleaseError::InvalidVersion(_))
        ));
    }

    #[test]
    fn mirror_artifacts_use_the_mirror_checksums_and_list_what_it_has() {
        let resolved = releases()
            .on_mirror("demo", "1.2.0", "amd64", "file:///srv/mirror/", SUMS)
            .unwrap();
        assert_eq!(resolved.url, "file:///srv/mirror/demo/v1.2.0/demo-1.2.0-amd64.tar.gz");
        assert_eq!(resolved.checksum, "d".repeat(64));
        let err = releases()
            .on_mirror("demo", "1.10.1", "amd64", "https://mirror.example", SUMS)
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("it has: 1.9.0, 1.2.0"), "{err}");
    }

    #[test]
    fn sha512_rows_pin_sha512_and_bad_lengths_are_refused() {
        let table = format!(
            "demo:\n  url: https://downloads.example/demo-{{version}}-{{arch}}.tar.gz\n  sha512:\n    amd64:\n      2.0.0: {}\n",
            "F".repeat(128)
        );
        let resolved = Releases::from_yaml(&table)
            .unwrap()
            .upstream("demo", "2.0.0", "amd64")
            .unwrap();
        assert_eq!(resolved.checksum, "f".repeat(128));
        let short = table.replace(&"F".repeat(128), &"f".repeat(64));
        let Err(err) = Releases::from_yaml(&short) else {
            panic!("a sha256 under sha512 was accepted")
        };
        assert_eq!(
            err.to_string(),
            "the embedded release table is invalid: demo/amd64/2.0.0: a sha512 is 128 hex digits"
        );
    }

    #[test]
    fn sha256sums_lines() {
        let sums = parse_sha256sums(&format!("{SUMS}\ngarbage line\n{} *./bin/x\n", "a".repeat(64)));
        assert_eq!(sums.len(), 4);
        assert_eq!(sums["bin/x"], "a".repeat(64));
    }
}
