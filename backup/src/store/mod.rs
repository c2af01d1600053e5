//! Where backups live. A [`Store`] holds objects by name (relative to its prefix, e.g.
//! `20261128T041500Z-3f9a/manifest.json`) and writes them as streams that only become visible
//! when the writer says the stream is complete: an interrupted write leaves no object.

mod file;
mod part_pool;
mod s3;

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use time::OffsetDateTime;
use tokio::sync::mpsc;

pub use file::FileStore;
pub use s3::{S3Options, S3Store};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid backup target `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{store}: {operation} {name}: {reason}")]
    Io {
        store: String,
        operation: &'static str,
        name: String,
        reason: String,
    },
    #[error("{store}: no object {name}")]
    NotFound { store: String, name: String },
    #[error("{store}: upload of {name} was abandoned by its writer before the end; nothing was stored")]
    Abandoned { store: String, name: String },
}

/// One piece of an object being written. Only [`BodyChunk::End`] commits the object: a channel
/// closed without it means the producer failed, and the store discards what it received.
#[derive(Debug)]
pub enum BodyChunk {
    Data(Bytes),
    End,
}

pub type BodySender = mpsc::Sender<BodyChunk>;
pub type BodyReceiver = mpsc::Receiver<BodyChunk>;
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
}

/// An upload (or temporary file) that never completed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingUpload {
    pub name: String,
    pub started: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// `file:///...` or `s3://bucket/prefix`, for messages.
    fn url(&self) -> String;

    /// Stream `body` into object `name`; the object appears only after [`BodyChunk::End`].
    /// Returns the number of bytes stored.
    async fn put_stream(&self, name: &str, body: BodyReceiver) -> Result<u64, StoreError>;

    /// Like [`Store::put_stream`] for a body whose exact size is known before it starts: a store
    /// may then send it in one request instead of parts. The body must be exactly `size` bytes;
    /// the object is committed once they all arrived (the writer sends the last bytes only
    /// when everything before them checked out).
    async fn put_sized_stream(&self, name: &str, _size: u64, body: BodyReceiver) -> Result<u64, StoreError> {
        self.put_stream(name, body).await
    }

    /// Store a small object in one request.
    async fn put_bytes(&self, name: &str, data: Vec<u8>) -> Result<(), StoreError>;

    async fn get_stream(&self, name: &str) -> Result<ByteStream, StoreError>;

    /// Every committed object under the prefix.
    async fn list(&self) -> Result<Vec<ObjectInfo>, StoreError>;

    async fn delete(&self, name: &str) -> Result<(), StoreError>;

    /// Uploads that were started before `cutoff` and never completed (S3 multipart uploads,
    /// leftover temporary files).
    async fn pending_uploads(&self, cutoff: OffsetDateTime) -> Result<Vec<PendingUpload>, StoreError>;

    /// Abort what [`Store::pending_uploads`] returned.
    async fn abort_pending(&self, upload: &PendingUpload) -> Result<(), StoreError>;

    /// A whole small object in memory.
    async fn get_bytes(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        use futures::StreamExt;
        let mut stream = self.get_stream(name).await?;
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?);
        }
        Ok(data)
    }
}

/// A parsed backup target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    File { path: PathBuf },
    S3 { bucket: String, prefix: String },
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid(
                    "file:// needs an absolute path, e.g. file:///var/backups/capstan",
                ));
            }
            return Ok(StoreUrl::File {
                path: PathBuf::from(path),
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !valid_bucket {
                return Err(invalid("bucket names are 3-63 characters of a-z, 0-9, '-' and '.'"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|part| part == "." || part == "..") {
                return Err(invalid("the prefix must not contain `.` or `..` segments"));
            }
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        Err(invalid("expected s3://bucket/prefix or file:///path"))
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::File { path } => write!(f, "file://{}", path.display()),
            StoreUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StoreUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// Open the store for `url`. S3 settings come from the standard AWS sources (environment,
/// profile, instance metadata), `AWS_ENDPOINT_URL` included.
pub async fn open_store(url: &StoreUrl, s3: &S3Options) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::File { path } => Ok(std::sync::Arc::new(FileStore::new(path.clone()))),
        StoreUrl::S3 { bucket, prefix } => Ok(std::sync::Arc::new(S3Store::connect(bucket, prefix, s3).await)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_strictly() {
        assert_eq!(
            StoreUrl::parse("s3://backups/demo/etcd/").unwrap(),
            StoreUrl::S3 {
                bucket: "backups".into(),
                prefix: "demo/etcd".into()
            }
        );
        assert_eq!(StoreUrl::parse("s3://backups").unwrap().to_string(), "s3://backups");
        assert_eq!(
            StoreUrl::parse("file:///var/backups/capstan").unwrap(),
            StoreUrl::File {
                path: "/var/backups/capstan".into()
            }
        );
        for (bad, reason) in [
            ("file://relative", "absolute path"),
            ("s3://UPPER/x", "bucket names"),
            ("s3://ab", "bucket names"),
            ("s3://bucket/../x", "`..`"),
            ("https://example.com", "expected s3://"),
        ] {
            let err = StoreUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }
}
