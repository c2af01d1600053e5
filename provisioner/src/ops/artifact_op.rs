//! Install a pinned download (or binaries from inside a pinned tar.gz).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;

use super::file::{path_probes, plan_desired_file, DesiredFile};
use super::{validate_remote_path, Content, Footprint, OpError, Operation, Plan};
use crate::artifact::{normalize_checksum, sha256_file, validate_url, ArtifactCache, ArtifactError};
use crate::transport::{RemoteFile, Transport};

/// `url` is fetched once into the local cache and verified against its pinned checksum (sha256,
/// or sha512: [`crate::artifact::normalize_checksum`]).
/// Without `extract`, the file itself is installed at `dest_path`. With
/// `extract`, `dest_path` is a directory and each listed archive member is
/// installed there under its base name (hosts need no tar).
#[derive(Debug, Clone)]
pub struct Artifact {
    url: String,
    /// The pinned sha256 or sha512 of the download.
    checksum: String,
    dest_path: String,
    mode: u32,
    owner: Option<String>,
    group: Option<String>,
    extract: Option<Vec<String>>,
    cache: Option<ArtifactCache>,
}

impl Artifact {
    /// Mode defaults to 0755 (artifacts are mostly binaries).
    pub fn new(url: &str, checksum: &str, dest_path: &str) -> Result<Artifact, OpError> {
        let checksum = normalize_checksum(checksum)?;
        validate_url(url)?;
        validate_remote_path(dest_path)?;
        Ok(Artifact {
            url: url.to_string(),
            checksum,
            dest_path: dest_path.to_string(),
            mode: 0o755,
            owner: None,
            group: None,
            extract: None,
            cache: None,
        })
    }
    pub fn mode(mut self, mode: u32) -> Artifact {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, owner: &str) -> Artifact {
        self.owner = Some(owner.to_string());
        self
    }
    pub fn group(mut self, group: &str) -> Artifact {
        self.group = Some(group.to_string());
        self
    }
    /// Treat the download as a tar.gz and install these members into `dest_path`.
    pub fn extract<I, S>(mut self, members: I) -> Result<Artifact, OpError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let members: Vec<String> = members.into_iter().map(Into::into).collect();
        let mut names = std::collections::BTreeSet::new();
        for member in &members {
            let name = base_name(member);
            if name.is_empty() || name == "." || name == ".." {
                return Err(OpError::Invalid(format!("archive member {member:?} has no file name")));
            }
            if !names.insert(name) {
                return Err(OpError::Invalid(format!(
                    "two archive members would install as {name:?}"
                )));
            }
        }
        if members.is_empty() {
            return Err(OpError::Invalid(format!(
                "{}: extract needs at least one archive member",
                self.url
            )));
        }
        self.extract = Some(members);
        Ok(self)
    }
    /// Use this cache instead of the one from the environment.
    pub fn cache(mut self, cache: ArtifactCache) -> Artifact {
        self.cache = Some(cache);
        self
    }

    fn remote_file(&self, path: String) -> RemoteFile {
        RemoteFile {
            path,
            mode: self.mode,
            owner: self.owner.clone(),
            group: self.group.clone(),
        }
    }

    /// The installed files' remote paths.
    fn dest_paths(&self) -> Vec<String> {
        match &self.extract {
            None => vec![self.dest_path.clone()],
            Some(members) => members
                .iter()
                .map(|m| format!("{}/{}", self.dest_path, base_name(m)))
                .collect(),
        }
    }

    /// Fetch (and extract) locally; returns what to install where.
    async fn prepare(&self) -> Result<Vec<DesiredFile>, OpError> {
        let this = self.clone();
        let prepared = tokio::task::spawn_blocking(move || -> Result<Vec<DesiredFile>, ArtifactError> {
            let cache = match &this.cache {
                Some(cache) => cache.clone(),
                None => ArtifactCache::from_env()?,
            };
            let local_files = verified_local_files(&cache, &this.url, &this.checksum, this.extract.as_deref())?;
            let dest = |member: Option<&String>| match member {
                None => this.dest_path.clone(),
                Some(member) => format!("{}/{}", this.dest_path, base_name(member)),
            };
            Ok(local_files
                .iter()
                .map(|f| DesiredFile {
                    file: this.remote_file(dest(f.member.as_ref())),
                    content: Content::LocalFile(f.local_path.clone()),
                    sha256: f.sha256.clone(),
                    size: f.size,
                    sensitive: false,
                })
                .collect())
        })
        .await
        .map_err(|e| OpError::Invalid(format!("artifact preparation task failed: {e}")))??;
        Ok(prepared)
    }
}

/// A verified local file to install: the download itself (`member` None) or one extracted member.
#[derive(Debug, Clone)]
struct LocalFile {
    member: Option<String>,
    local_path: PathBuf,
    sha256: String,
    size: u64,
}

type PreparedKey = (PathBuf, String, String, Option<Vec<String>>);

/// Verified local files by (cache dir, url, checksum, members), once per process: every host of a
/// run installs the same artifact, and hashing it again for each (tens of MB for etcd) only
/// re-proves what the first verification showed. Each host still verifies the sha256 of what
/// arrives ([`super::write_file_command`]).
type PreparedSlot = Arc<Mutex<Option<Vec<LocalFile>>>>;
static PREPARED: OnceLock<Mutex<HashMap<PreparedKey, PreparedSlot>>> = OnceLock::new();

fn verified_local_files(
    cache: &ArtifactCache,
    url: &str,
    checksum: &str,
    extract: Option<&[String]>,
) -> Result<Vec<LocalFile>, ArtifactError> {
    let key = (
        cache.dir().to_path_buf(),
        url.to_string(),
        checksum.to_string(),
        extract.map(<[String]>::to_vec),
    );
    let slot = {
        let mut prepared = PREPARED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        prepared.entry(key).or_default().clone()
    };
    // One host verifies while the others wait for its result.
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    let still_there = |files: &[LocalFile]| {
        files
            .iter()
            .all(|f| std::fs::metadata(&f.local_path).is_ok_and(|m| m.is_file() && m.len() == f.size))
    };
    if let Some(files) = slot.as_ref().filter(|files| still_there(files)) {
        return Ok(files.clone());
    }
    let archive = cache.fetch(url, checksum)?;
    let files = match extract {
        None => {
            // The pin may be a sha512; the host verifies what arrives by its sha256.
            let (file_sha256, size) = sha256_file(&archive)?;
            vec![LocalFile {
                member: None,
                local_path: archive,
                sha256: file_sha256,
                size,
            }]
        }
        Some(members) => cache
            .extract(url, &archive, checksum, members)?
            .into_iter()
            .map(|f| LocalFile {
                member: Some(f.member),
                local_path: f.local_path,
                sha256: f.sha256,
                size: f.size,
            })
            .collect(),
    };
    *slot = Some(files.clone());
    Ok(files)
}

fn base_name(member: &str) -> &str {
    member.trim_end_matches('/').rsplit('/').next().unwrap_or(member)
}

#[async_trait]
impl Operation for Artifact {
    fn footprint(&self) -> Vec<Footprint> {
        self.dest_paths().into_iter().map(Footprint::Path).collect()
    }
    fn self_contained(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        match &self.extract {
            None => format!("artifact {}", self.dest_path),
            Some(members) => {
                let names: Vec<&str> = members.iter().map(|m| base_name(m)).collect();
                format!("artifact {}/{{{}}}", self.dest_path, names.join(","))
            }
        }
    }
    fn probes(&self) -> Vec<String> {
        path_probes(self.dest_paths().iter().map(String::as_str))
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        let mut plan = Plan::unchanged();
        for desired in self.prepare().await? {
            plan.changes.extend(plan_desired_file(t, &desired, None).await?.changes);
        }
        Ok(plan)
    }
}
