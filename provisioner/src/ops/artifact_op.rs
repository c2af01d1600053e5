//! Install a pinned download (or binaries from inside a pinned tar.gz).

use async_trait::async_trait;

use super::file::{path_probes, plan_desired_file, DesiredFile};
use super::{validate_remote_path, Content, OpError, Operation, Plan};
use crate::artifact::{normalize_sha256, sha256_file, validate_url, ArtifactCache, ArtifactError};
use crate::transport::{RemoteFile, Transport};

/// `url` is fetched once into the local cache and verified against `sha256`.
/// Without `extract`, the file itself is installed at `dest_path`. With
/// `extract`, `dest_path` is a directory and each listed archive member is
/// installed there under its base name (hosts need no tar).
#[derive(Debug, Clone)]
pub struct Artifact {
    url: String,
    sha256: String,
    dest_path: String,
    mode: u32,
    owner: Option<String>,
    group: Option<String>,
    extract: Option<Vec<String>>,
    cache: Option<ArtifactCache>,
}

impl Artifact {
    /// Mode defaults to 0755 (artifacts are mostly binaries).
    pub fn new(url: &str, sha256: &str, dest_path: &str) -> Result<Artifact, OpError> {
        let sha256 = normalize_sha256(sha256)?;
        validate_url(url)?;
        validate_remote_path(dest_path)?;
        Ok(Artifact {
            url: url.to_string(),
            sha256,
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

    /// Fetch (and extract) locally; returns what to install where.
    async fn prepare(&self) -> Result<Vec<DesiredFile>, OpError> {
        let this = self.clone();
        let prepared = tokio::task::spawn_blocking(move || -> Result<Vec<DesiredFile>, ArtifactError> {
            let cache = match &this.cache {
                Some(cache) => cache.clone(),
                None => ArtifactCache::from_env()?,
            };
            let archive = cache.fetch(&this.url, &this.sha256)?;
            let desired = |path: String, local: std::path::PathBuf, sha256: String, size: u64| DesiredFile {
                file: this.remote_file(path),
                content: Content::LocalFile(local),
                sha256,
                size,
                sensitive: false,
            };
            match &this.extract {
                None => {
                    let (_, size) = sha256_file(&archive)?;
                    Ok(vec![desired(
                        this.dest_path.clone(),
                        archive,
                        this.sha256.clone(),
                        size,
                    )])
                }
                Some(members) => Ok(cache
                    .extract(&this.url, &archive, &this.sha256, members)?
                    .into_iter()
                    .map(|f| {
                        let path = format!("{}/{}", this.dest_path, base_name(&f.member));
                        desired(path, f.local_path, f.sha256, f.size)
                    })
                    .collect()),
            }
        })
        .await
        .map_err(|e| OpError::Invalid(format!("artifact preparation task failed: {e}")))??;
        Ok(prepared)
    }
}

fn base_name(member: &str) -> &str {
    member.trim_end_matches('/').rsplit('/').next().unwrap_or(member)
}

#[async_trait]
impl Operation for Artifact {
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
        let paths: Vec<String> = match &self.extract {
            None => vec![self.dest_path.clone()],
            Some(members) => members
                .iter()
                .map(|m| format!("{}/{}", self.dest_path, base_name(m)))
                .collect(),
        };
        path_probes(paths.iter().map(String::as_str))
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        let mut plan = Plan::unchanged();
        for desired in self.prepare().await? {
            plan.changes.extend(plan_desired_file(t, &desired, None).await?.changes);
        }
        Ok(plan)
    }
}
