//! `file:///dir`: objects are files under `dir`. Each is written to `<name>.tmp`, fsynced and
//! renamed into place, then the directory is fsynced, so a crash leaves either the whole object
//! or a `.tmp` file that prune removes. Files are 0600 and directories 0700.

use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{BodyChunk, BodyReceiver, ByteStream, ObjectInfo, PendingUpload, Store, StoreError};

const TMP_SUFFIX: &str = ".tmp";
const READ_CHUNK: usize = 256 * 1024;

pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    pub fn new(root: PathBuf) -> FileStore {
        FileStore { root }
    }

    fn error(&self, operation: &'static str, name: &str, err: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            store: self.url(),
            operation,
            name: name.to_string(),
            reason: err.to_string(),
        }
    }

    /// The path of object `name`, refusing names that would leave the root.
    fn path(&self, name: &str) -> Result<PathBuf, StoreError> {
        let relative = Path::new(name);
        if name.is_empty() || !relative.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(self.error("resolving", name, "invalid object name"));
        }
        Ok(self.root.join(relative))
    }

    async fn write_tmp(&self, name: &str, tmp: &Path, mut body: BodyReceiver) -> Result<u64, StoreError> {
        if let Some(parent) = tmp.parent() {
            tokio::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .await
                .map_err(|e| self.error("creating directory for", name, e))?;
        }
        // Owner-only: an unencrypted backup holds the CA key in clear.
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)
            .await
            .map_err(|e| self.error("creating", name, e))?;
        let mut written = 0u64;
        loop {
            match body.recv().await {
                Some(BodyChunk::Data(data)) => {
                    file.write_all(&data)
                        .await
                        .map_err(|e| self.error("writing", name, e))?;
                    written += data.len() as u64;
                }
                Some(BodyChunk::End) => break,
                None => {
                    return Err(StoreError::Abandoned {
                        store: self.url(),
                        name: name.to_string(),
                    })
                }
            }
        }
        file.sync_all().await.map_err(|e| self.error("syncing", name, e))?;
        Ok(written)
    }

    async fn commit(&self, name: &str, tmp: &Path, path: &Path) -> Result<(), StoreError> {
        tokio::fs::rename(tmp, path)
            .await
            .map_err(|e| self.error("renaming into place", name, e))?;
        if let Some(parent) = path.parent() {
            let dir = tokio::fs::File::open(parent)
                .await
                .map_err(|e| self.error("opening directory of", name, e))?;
            dir.sync_all()
                .await
                .map_err(|e| self.error("syncing directory of", name, e))?;
        }
        Ok(())
    }

    /// Every file under the root, as (relative name, size, modified).
    async fn walk(&self) -> Result<Vec<(String, u64, SystemTime)>, StoreError> {
        let mut found = Vec::new();
        let mut pending = vec![self.root.clone()];
        while let Some(dir) = pending.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.error("listing", &dir.display().to_string(), e)),
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| self.error("listing", &dir.display().to_string(), e))?
            {
                let metadata = entry
                    .metadata()
                    .await
                    .map_err(|e| self.error("reading metadata of", &entry.path().display().to_string(), e))?;
                if metadata.is_dir() {
                    pending.push(entry.path());
                } else if metadata.is_file() {
                    let Ok(relative) = entry.path().strip_prefix(&self.root).map(Path::to_path_buf) else {
                        continue;
                    };
                    let Some(name) = relative.to_str() else { continue };
                    let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((name.to_string(), metadata.len(), modified));
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

#[async_trait]
impl Store for FileStore {
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put_stream(&self, name: &str, body: BodyReceiver) -> Result<u64, StoreError> {
        let path = self.path(name)?;
        let tmp = self.path(&format!("{name}{TMP_SUFFIX}"))?;
        match self.write_tmp(name, &tmp, body).await {
            Ok(written) => {
                self.commit(name, &tmp, &path).await?;
                Ok(written)
            }
            Err(err) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(err)
            }
        }
    }

    async fn put_bytes(&self, name: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        sender
            .send(BodyChunk::Data(Bytes::from(data)))
            .await
            .expect("the receiver is alive");
        sender.send(BodyChunk::End).await.expect("the receiver is alive");
        self.put_stream(name, receiver).await.map(|_| ())
    }

    async fn get_stream(&self, name: &str) -> Result<ByteStream, StoreError> {
        let path = self.path(name)?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::NotFound {
                    store: self.url(),
                    name: name.to_string(),
                }
            } else {
                self.error("opening", name, e)
            }
        })?;
        let store = self.url();
        let name = name.to_string();
        let stream = futures::stream::try_unfold(file, move |mut file| {
            let (store, name) = (store.clone(), name.clone());
            async move {
                let mut buffer = vec![0u8; READ_CHUNK];
                let read = file.read(&mut buffer).await.map_err(|e| StoreError::Io {
                    store,
                    operation: "reading",
                    name,
                    reason: e.to_string(),
                })?;
                if read == 0 {
                    return Ok(None);
                }
                buffer.truncate(read);
                Ok(Some((Bytes::from(buffer), file)))
            }
        });
        Ok(Box::pin(stream))
    }

    async fn list(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        Ok(self
            .walk()
            .await?
            .into_iter()
            .filter(|(name, _, _)| !name.ends_with(TMP_SUFFIX))
            .map(|(name, size, _)| ObjectInfo { name, size })
            .collect())
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.error("deleting", name, e)),
        }
        // Remove the backup's directory once empty; failure just means it isn't empty yet.
        if let Some(parent) = path.parent() {
            if parent != self.root {
                let _ = tokio::fs::remove_dir(parent).await;
            }
        }
        Ok(())
    }

    async fn pending_uploads(&self, cutoff: OffsetDateTime) -> Result<Vec<PendingUpload>, StoreError> {
        let cutoff = SystemTime::from(cutoff);
        Ok(self
            .walk()
            .await?
            .into_iter()
            .filter(|(name, _, modified)| name.ends_with(TMP_SUFFIX) && *modified < cutoff)
            .map(|(name, _, modified)| PendingUpload {
                name,
                started: OffsetDateTime::from(modified)
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok(),
            })
            .collect())
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        self.delete(&upload.name).await
    }
}
