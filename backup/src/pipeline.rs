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

/// age's STREAM: plaintext in 64 KiB chunks, each sealed with a 16-byte tag; the last chunk is
/// the only one that may be short, and an empty plaintext is one empty chunk.
const AGE_CHUNK: u64 = 64 * 1024;
const AGE_TAG: u64 = 16;

/// Bytes age writes after its header (header and nonce: `prefix`) for `plaintext` bytes.
fn age_stored_size(prefix: u64, plaintext: u64) -> u64 {
    let chunks = plaintext.div_ceil(AGE_CHUNK).max(1);
    prefix + plaintext + chunks * AGE_TAG
}

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
    /// The plaintext size announced to [`ObjectWriter::start`], held to.
    announced: Option<u64>,
    /// Taken when awaited: a finished task must not be polled again.
    upload: Option<JoinHandle<Result<u64, StoreError>>>,
}

impl ObjectWriter {
    /// Start uploading object `key` (`<id>/<name>`) to `store`. With `plaintext_size` known up
    /// front, the stored size is too (age's framing is fixed), and the store may take the
    /// object in one request ([`Store::put_sized_stream`]); the writer must then deliver
    /// exactly that many bytes, or the object fails.
    pub fn start(
        store: Arc<dyn Store>,
        key: String,
        name: &str,
        recipients: &Recipients,
        plaintext_size: Option<u64>,
    ) -> Result<Self, BackupError> {
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
        let stored_size = plaintext_size.map(|plain| match &encryptor {
            // The header and nonce are already in the output buffer.
            Some(_) => age_stored_size(output.0.lock().map_or(0, |b| b.len() as u64), plain),
            None => plain,
        });
        let (sender, receiver) = mpsc::channel(CHANNEL_DEPTH);
        let upload = tokio::spawn(async move {
            match stored_size {
                Some(size) => store.put_sized_stream(&key, size, receiver).await,
                None => store.put_stream(&key, receiver).await,
            }
        });
        Ok(ObjectWriter {
            name: name.to_string(),
            encryptor,
            output,
            plaintext: Sha256::new(),
            plaintext_size: 0,
            stored: Sha256::new(),
            stored_size: 0,
            sender: Some(sender),
            announced: plaintext_size,
            upload: Some(upload),
        })
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<(), BackupError> {
        self.plaintext.update(data);
        self.plaintext_size += data.len() as u64;
        if let Some(announced) = self.announced.filter(|a| self.plaintext_size > *a) {
            return Err(self.size_error(announced));
        }
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

    fn size_error(&self, announced: u64) -> BackupError {
        BackupError::Encrypt {
            object: self.name.clone(),
            reason: format!(
                "{} bytes of plaintext where {announced} were announced",
                self.plaintext_size
            ),
        }
    }

    /// Flush, commit the object and return its digests.
    pub async fn finish(mut self) -> Result<ObjectEntry, BackupError> {
        if let Some(announced) = self.announced.filter(|a| self.plaintext_size != *a) {
            let err = self.size_error(announced);
            self.abort().await;
            return Err(err);
        }
        if let Some(encryptor) = self.encryptor.take() {
            encryptor.finish().map_err(|e| BackupError::Encrypt {
                object: self.name.clone(),
                reason: e.to_string(),
            })?;
            let tail = self.output.take();
            self.send(tail).await?;
        }
        let sender = self.sender.take().expect("the sender lives until finish or abort");
        // A store taking a sized body may be done as soon as its last byte arrived, before
        // the end is said: the upload's own outcome decides.
        let _ = sender.send(BodyChunk::End).await;
        drop(sender);
        let stored_size = self.join_upload().await?;
        if stored_size != self.stored_size {
            return Err(BackupError::Encrypt {
                object: self.name,
                reason: format!("the store took {stored_size} of {} bytes", self.stored_size),
            });
        }
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
    let mut writer = ObjectWriter::start(store, key, name, recipients, Some(data.len() as u64))?;
    match writer.write(data).await {
        Ok(()) => writer.finish().await,
        Err(err) => {
            writer.abort().await;
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The size announced to a store for an encrypted object is what age writes, byte for byte.
    #[test]
    fn age_framing_size_matches_the_encryptor() {
        let recipient = age::x25519::Identity::generate().to_public();
        for size in [0u64, 1, 31, 65_535, 65_536, 65_537, 3 * 65_536, 200_000] {
            let output = SharedBuffer::default();
            let encryptor =
                age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient)).unwrap();
            let mut writer = encryptor.wrap_output(output.clone()).unwrap();
            let prefix = output.0.lock().unwrap().len() as u64;
            writer.write_all(&vec![7u8; size as usize]).unwrap();
            writer.finish().unwrap();
            let written = output.take().len() as u64;
            assert_eq!(age_stored_size(prefix, size), written, "plaintext of {size} bytes");
        }
    }
}
