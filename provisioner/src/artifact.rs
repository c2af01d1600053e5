//! Local artifact cache: each release archive or binary is downloaded once,
//! verified against its pinned checksum (sha256, or sha512 where upstream publishes only that)
//! and kept under its checksum.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use sha2::{Digest, Sha256, Sha512};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{value:?} is not a sha256 (64 hex digits) or a sha512 (128 hex digits)")]
    InvalidChecksum { value: String },
    #[error("unsupported artifact URL {url:?}: expected file://, http:// or https://")]
    UnsupportedUrl { url: String },
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error(
        "checksum mismatch for {url}: expected {} {expected}, got {actual}; the file was discarded",
        checksum_kind(.expected)
    )]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{url}: archive has no regular file {member:?}")]
    MemberMissing { url: String, member: String },
    #[error("{url}: cannot extract: {reason}")]
    Extract { url: String, reason: String },
    #[error("no cache directory: set CAPSTAN_CACHE_DIR or HOME")]
    NoCacheDir,
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

/// The algorithm a pinned checksum is for, by its length (64 hex digits: sha256, 128: sha512).
fn checksum_kind(checksum: &str) -> &'static str {
    if checksum.len() == 128 {
        "sha512"
    } else {
        "sha256"
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A pinned checksum, lower-cased: a sha256 (64 hex digits) or a sha512 (128), told apart by
/// length; an error names a value that is neither.
pub fn normalize_checksum(value: &str) -> Result<String, ArtifactError> {
    if matches!(value.len(), 64 | 128) && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(ArtifactError::InvalidChecksum {
            value: value.to_string(),
        })
    }
}

/// The checksum of `path` in the algorithm of `checksum` (normalized): sha512 for 128 hex digits,
/// sha256 otherwise.
fn checksum_like(checksum: &str, path: &Path) -> Result<String, ArtifactError> {
    if checksum.len() == 128 {
        sha512_file(path)
    } else {
        Ok(sha256_file(path)?.0)
    }
}

pub fn sha512_file(path: &Path) -> Result<String, ArtifactError> {
    let mut file = fs::File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha512::new();
    io::copy(&mut file, &mut hasher).map_err(io_error(path))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Only file:// (absolute path), http:// and https:// artifacts exist.
pub fn validate_url(url: &str) -> Result<(), ArtifactError> {
    match url.strip_prefix("file://") {
        Some(path) if !path.starts_with('/') => Err(ArtifactError::Download {
            url: url.to_string(),
            reason: "file:// URLs need an absolute path (file:///…)".into(),
        }),
        Some(_) => Ok(()),
        None if url.starts_with("https://") || url.starts_with("http://") => Ok(()),
        None => Err(ArtifactError::UnsupportedUrl { url: url.to_string() }),
    }
}

/// Copy `reader` into `writer`, returning the sha256 and byte count.
pub fn copy_hashing(reader: &mut dyn Read, writer: &mut dyn Write) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

pub fn sha256_file(path: &Path) -> Result<(String, u64), ArtifactError> {
    let mut file = fs::File::open(path).map_err(io_error(path))?;
    copy_hashing(&mut file, &mut io::sink()).map_err(io_error(path))
}

/// A file extracted from an archive, ready to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedFile {
    /// The member's path inside the archive.
    pub member: String,
    pub local_path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// Downloads are serialised per cache file so concurrent hosts fetch once.
static FETCH_LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = LazyLock::new(Default::default);

fn lock_for(path: &Path) -> Arc<Mutex<()>> {
    let mut locks = FETCH_LOCKS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    locks.entry(path.to_path_buf()).or_default().clone()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    pub fn at(dir: impl Into<PathBuf>) -> ArtifactCache {
        ArtifactCache { dir: dir.into() }
    }

    /// `$CAPSTAN_CACHE_DIR/artifacts`, else `$XDG_CACHE_HOME/capstan/artifacts`,
    /// else `~/.cache/capstan/artifacts`.
    pub fn from_env() -> Result<ArtifactCache, ArtifactError> {
        let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(dir) = non_empty("CAPSTAN_CACHE_DIR") {
            return Ok(ArtifactCache::at(dir.join("artifacts")));
        }
        if let Some(dir) = non_empty("XDG_CACHE_HOME") {
            return Ok(ArtifactCache::at(dir.join("capstan/artifacts")));
        }
        let home = non_empty("HOME").ok_or(ArtifactError::NoCacheDir)?;
        Ok(ArtifactCache::at(home.join(".cache/capstan/artifacts")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The verified local copy of `url` (pinned by `checksum`, a sha256 or a sha512), downloading
    /// it on first use. Blocking: call from `spawn_blocking` in async code.
    pub fn fetch(&self, url: &str, checksum: &str) -> Result<PathBuf, ArtifactError> {
        let pinned = normalize_checksum(checksum)?;
        fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        let target = self.dir.join(&pinned);
        let lock = lock_for(&target);
        let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if target.is_file() {
            let actual = checksum_like(&pinned, &target)?;
            if actual == pinned {
                return Ok(target);
            }
            // A corrupted cache entry is replaced, not trusted.
            fs::remove_file(&target).map_err(io_error(&target))?;
        }
        let mut partial = tempfile::Builder::new()
            .prefix(&format!(".{pinned}."))
            .suffix(".partial")
            .tempfile_in(&self.dir)
            .map_err(io_error(&self.dir))?;
        let (mut actual, _) = download(url, partial.as_file_mut())?;
        if pinned.len() == 128 {
            actual = sha512_file(partial.path())?;
        }
        if actual != pinned {
            // Dropping the temp file removes it.
            return Err(ArtifactError::ChecksumMismatch {
                url: url.to_string(),
                expected: pinned,
                actual,
            });
        }
        partial.persist(&target).map_err(|e| ArtifactError::Io {
            path: target.display().to_string(),
            source: e.error,
        })?;
        Ok(target)
    }

    /// Extract `members` of the verified tar.gz `archive` (identified by
    /// its pinned `checksum`) once into the cache; each file gets its own sha256.
    pub fn extract(
        &self,
        url: &str,
        archive: &Path,
        checksum: &str,
        members: &[String],
    ) -> Result<Vec<ExtractedFile>, ArtifactError> {
        let out_dir = self.dir.join(format!("{checksum}.d"));
        let lock = lock_for(&out_dir);
        let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let local_name = |member: &str| member.trim_start_matches("./").replace('/', "__");
        let complete = members.iter().all(|m| out_dir.join(local_name(m)).is_file());
        if !complete {
            let staging = tempfile::Builder::new()
                .prefix(&format!(".{checksum}.extract."))
                .tempdir_in(&self.dir)
                .map_err(io_error(&self.dir))?;
            let extract_error = |e: io::Error| ArtifactError::Extract {
                url: url.to_string(),
                reason: e.to_string(),
            };
            let file = fs::File::open(archive).map_err(io_error(archive))?;
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
            let mut found = vec![false; members.len()];
            for entry in tar.entries().map_err(extract_error)? {
                let mut entry = entry.map_err(extract_error)?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let path = entry
                    .path()
                    .map_err(extract_error)?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .to_string();
                let Some(index) = members.iter().position(|m| m.trim_start_matches("./") == path) else {
                    continue;
                };
                let dest = staging.path().join(local_name(&members[index]));
                let mut out = fs::File::create(&dest).map_err(io_error(&dest))?;
                io::copy(&mut entry, &mut out).map_err(extract_error)?;
                found[index] = true;
            }
            if let Some(missing) = members.iter().zip(&found).find(|(_, found)| !**found) {
                return Err(ArtifactError::MemberMissing {
                    url: url.to_string(),
                    member: missing.0.clone(),
                });
            }
            if out_dir.exists() {
                fs::remove_dir_all(&out_dir).map_err(io_error(&out_dir))?;
            }
            let staged = staging.keep();
            fs::rename(&staged, &out_dir).map_err(io_error(&out_dir))?;
        }
        members
            .iter()
            .map(|member| {
                let local_path = out_dir.join(local_name(member));
                let (sha256, size) = sha256_file(&local_path)?;
                Ok(ExtractedFile {
                    member: member.clone(),
                    local_path,
                    sha256,
                    size,
                })
            })
            .collect()
    }
}

/// Stream `url` into `out`, hashing on the way.
fn download(url: &str, out: &mut fs::File) -> Result<(String, u64), ArtifactError> {
    validate_url(url)?;
    let failed = |reason: String| ArtifactError::Download {
        url: url.to_string(),
        reason,
    };
    if let Some(path) = url.strip_prefix("file://") {
        let mut src = fs::File::open(path).map_err(|e| failed(e.to_string()))?;
        return copy_hashing(&mut src, out).map_err(|e| failed(e.to_string()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = ureq::tls::TlsConfig::builder()
        .unversioned_rustls_crypto_provider(provider)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| failed(e.to_string()))?;
    let mut body = response.body_mut().as_reader();
    copy_hashing(&mut body, out).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sha512_pin_is_verified_as_sha512() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("release.tar.gz");
        fs::write(&source, b"release bytes").unwrap();
        let url = format!("file://{}", source.display());
        let sha512 = sha512_file(&source).unwrap();
        let cache = ArtifactCache::at(dir.path().join("cache"));
        let cached = cache.fetch(&url, &sha512.to_ascii_uppercase()).unwrap();
        assert_eq!(fs::read(&cached).unwrap(), b"release bytes");
        // A cache hit re-checks with sha512 too.
        assert_eq!(cache.fetch(&url, &sha512).unwrap(), cached);
        let wrong = "0".repeat(128);
        let err = cache.fetch(&url, &wrong).unwrap_err();
        assert!(
            matches!(err, ArtifactError::ChecksumMismatch { ref actual, .. } if *actual == sha512),
            "{err}"
        );
        assert!(matches!(
            cache.fetch(&url, &"0".repeat(100)),
            Err(ArtifactError::InvalidChecksum { .. })
        ));
    }
}
