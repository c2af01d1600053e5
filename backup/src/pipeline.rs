//! The streaming write path of one object: plaintext → sha256 → age → sha256 → store.
//!
//! The store's upload runs as its own task, fed through a bounded channel, so at most a few
//! chunks wait between the producer and the uploader whatever the object's size. The age
//! encryptor is a synchronous `Write`; it writes into a small shared buffer that is drained
//! into the channel after every chunk.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::BackupError;
use crate::manifest::{ObjectDigest, ObjectEntry};
use crate::store::{BodyChunk, BodySender, Store, StoreError};

/// Chunks queued between the producer and the uploader.
const CHANNEL_DEPTH: usize = 8;

/// Where the encryptor's output collects until it is sent on.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Recipients to encrypt to, or none for an explicitly unencrypted backup.
pub type Recipients = Option<Arc<Vec<age::x25519::Recipient>>>;

pub struct ObjectWriter {
    name: String,
    encryptor: Option<age::stream::StreamWriter<SharedBuffer>>,
    output: SharedBuffer,
    plaintext: Sha256,
    plaintext_size: u64,
    stored: Sha256,
    stored_size: u64,
    sender: Option<BodySender>,
    /// Taken when awaited: a finished task must not be polled again.
    upload: Option<JoinHandle<Result<u64, StoreError>>>,
}

impl ObjectWriter {
    /// Start uploading object `key` (`<id>/<name>`) to `store`.
    pub fn start(store: Arc<dyn Store>, key: String, name: &str, recipients: &Recipients) -> Result<Self, BackupError> {
        let output = SharedBuffer::default();
        let encryptor = match recipients {
            Some(recipients) => {
                let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|e| BackupError::Encrypt {
                        object: name.to_string(),
                        reason: e.to_string(),
                    })?;
                Some(
                    encryptor
                        .wrap_output(output.clone())
                        .map_err(|e| BackupError::Encrypt {
                            object: name.to_string(),
                            reason: e.to_string(),
                        })?,
                )
            }
            None => None,
        };
        let (sender, receiver) = mpsc::channel(CHANNEL_DEPTH);
        let upload = tokio::spawn(async move { store.put_stream(&key, receiver).await });
        Ok(ObjectWriter {
            name: name.to_string(),
            encryptor,
            output,
            plaintext: Sha256::new(),
            plaintext_size: 0,
            stored: Sha256::new(),
            stored_size: 0,
            sender: Some(sender),
            upload: Some(upload),
        })
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<(), BackupError> {
        self.plaintext.update(data);
        self.plaintext_size += data.len() as u64;
        match &mut self.encryptor {
            Some(encryptor) => {
                encryptor.write_all(data).map_err(|e| BackupError::Encrypt {
                    object: self.name.clone(),
                    reason: e.to_string(),
                })?;
                let encrypted = self.output.take();
                self.send(encrypted).await
            }
            None => self.send(data.to_vec()).await,
        }
    }

    /// SHA-256 of the plaintext written so far.
    pub fn plaintext_digest(&self) -> [u8; 32] {
        self.plaintext.clone().finalize().into()
    }

    async fn send(&mut self, data: Vec<u8>) -> Result<(), BackupError> {
        if data.is_empty() {
            return Ok(());
        }
        self.stored.update(&data);
        self.stored_size += data.len() as u64;
        let sender = self.sender.as_ref().expect("the sender lives until finish or abort");
        if sender.send(BodyChunk::Data(Bytes::from(data))).await.is_err() {
            // The uploader stopped early: its error says why.
            return Err(self.upload_error().await);
        }
        Ok(())
    }

    /// Close the channel and wait for the upload's outcome.
    async fn join_upload(&mut self) -> Result<u64, BackupError> {
        self.sender = None;
        let Some(upload) = self.upload.take() else {
            return Err(BackupError::Encrypt {
                object: self.name.clone(),
                reason: "the upload already ended".into(),
            });
        };
        match upload.await {
            Ok(result) => result.map_err(BackupError::Store),
            Err(join) => Err(BackupError::Encrypt {
                object: self.name.clone(),
                reason: format!("upload task failed: {join}"),
            }),
        }
    }

    async fn upload_error(&mut self) -> BackupError {
        match self.join_upload().await {
            Err(err) => err,
            Ok(_) => BackupError::Encrypt {
                object: self.name.clone(),
                reason: "the upload ended before the data did".into(),
            },
        }
    }

    /// Flush, commit the object and return its digests.
    pub async fn finish(mut self) -> Result<ObjectEntry, BackupError> {
        if let Some(encryptor) = self.encryptor.take() {
            encryptor.finish().map_err(|e| BackupError::Encrypt {
                object: self.name.clone(),
                reason: e.to_string(),
            })?;
            let tail = self.output.take();
            self.send(tail).await?;
        }
        let sender = self.sender.take().expect("the sender lives until finish or abort");
        if sender.send(BodyChunk::End).await.is_err() {
            return Err(self.upload_error().await);
        }
        drop(sender);
        let stored_size = self.join_upload().await?;
        debug_assert_eq!(stored_size, self.stored_size);
        Ok(ObjectEntry {
            name: self.name,
            plaintext: ObjectDigest {
                size: self.plaintext_size,
                sha256: hex::encode(self.plaintext.finalize()),
            },
            stored: ObjectDigest {
                size: self.stored_size,
                sha256: hex::encode(self.stored.finalize()),
            },
        })
    }

    /// Discard the object: the store drops what it received (and aborts a multipart upload).
    /// Waits for that to happen.
    pub async fn abort(mut self) {
        let _ = self.join_upload().await;
    }
}

/// Write a whole in-memory object.
pub async fn write_object(
    store: Arc<dyn Store>,
    key: String,
    name: &str,
    recipients: &Recipients,
    data: &[u8],
) -> Result<ObjectEntry, BackupError> {
    let mut writer = ObjectWriter::start(store, key, name, recipients)?;
    match writer.write(data).await {
        Ok(()) => writer.finish().await,
        Err(err) => {
            writer.abort().await;
            Err(err)
        }
    }
}
