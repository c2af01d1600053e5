//! The etcd side of a backup: pick a member (a healthy follower first, so the leader keeps
//! serving writes undisturbed), stream its Maintenance snapshot into an [`ObjectWriter`], and
//! check etcd's trailing SHA-256 on the way (with the writer's own plaintext hash, so the
//! snapshot is hashed once, not twice). A member that fails mid-stream has its partial
//! object discarded and the next member is tried; a snapshot that ends early or whose trailer
//! doesn't match is never committed.

use std::sync::Arc;
use std::time::Duration;

use capstan_etcd::client::{error_chain, EtcdClient, EtcdEndpoint, EtcdTls};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, SnapshotResponse, SnapshotStreaming, TlsOptions};

use crate::error::BackupError;
use crate::manifest::ObjectEntry;
use crate::pipeline::{ObjectWriter, Recipients};
use crate::store::Store;
use crate::trailer::{TrailerOutcome, TRAILER_LEN};

/// A member that sends nothing for this long is considered dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster to back up: its client endpoints and an mTLS client identity.
#[derive(Debug, Clone)]
pub struct EtcdSource {
    pub endpoints: Vec<EtcdEndpoint>,
    pub tls: EtcdTls,
}

/// Progress of the snapshot stream, for display and for tests that interrupt it.
#[derive(Debug, Clone)]
pub struct Progress {
    pub endpoint: EtcdEndpoint,
    /// Attempt number, from 1.
    pub attempt: usize,
    /// Snapshot bytes received from this member so far.
    pub bytes: u64,
    /// Bytes the member says remain.
    pub remaining: u64,
}

pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct SnapshotTaken {
    pub entry: ObjectEntry,
    pub endpoint: EtcdEndpoint,
    pub etcd_version: String,
    pub revision: i64,
    pub member_count: usize,
}

/// Members to try, in order: followers, then the leader, then members whose status failed
/// (they may have recovered by the time their turn comes).
async fn candidates(source: &EtcdSource) -> Result<(Vec<EtcdEndpoint>, usize), BackupError> {
    let client = EtcdClient::connect(&source.endpoints, &source.tls)
        .await
        .map_err(|e| BackupError::Etcd(error_chain(&e)))?;
    let member_count = client
        .member_list()
        .await
        .map_err(|e| BackupError::Etcd(error_chain(&e)))?
        .len();
    let statuses = futures::future::join_all(source.endpoints.iter().map(|e| client.status(e))).await;
    let mut followers = Vec::new();
    let mut leaders = Vec::new();
    let mut unknown = Vec::new();
    for (endpoint, status) in source.endpoints.iter().zip(statuses) {
        match status {
            Ok(status) if status.leader => leaders.push(endpoint.clone()),
            Ok(_) => followers.push(endpoint.clone()),
            Err(err) => {
                tracing::info!("{endpoint}: status failed ({}); trying it last", error_chain(&err));
                unknown.push(endpoint.clone());
            }
        }
    }
    followers.extend(leaders);
    followers.extend(unknown);
    Ok((followers, member_count))
}

async fn connect(endpoint: &EtcdEndpoint, tls: &EtcdTls) -> Result<Client, String> {
    let tls_options = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_cert_pem))
        .identity(Identity::from_pem(&tls.client_cert_pem, &tls.client_key_pem));
    // No overall request timeout: a snapshot of a large database takes as long as it takes;
    // stalls are caught by the per-message idle timeout instead.
    let options = ConnectOptions::new()
        .with_tls(tls_options)
        .with_connect_timeout(CONNECT_TIMEOUT);
    Client::connect([endpoint.as_str()], Some(options))
        .await
        .map_err(|e| format!("connecting: {}", error_chain(&e)))
}

/// Stream a snapshot from the first member that delivers a complete one into object `key`.
pub async fn take_snapshot(
    source: &EtcdSource,
    store: Arc<dyn Store>,
    key: &str,
    name: &str,
    recipients: &Recipients,
    progress: Option<&ProgressFn>,
) -> Result<SnapshotTaken, BackupError> {
    let (order, member_count) = candidates(source).await?;
    let mut failures = Vec::new();
    for (index, endpoint) in order.iter().enumerate() {
        let attempt = index + 1;
        match attempt_snapshot(
            endpoint,
            attempt,
            source,
            store.clone(),
            key,
            name,
            recipients,
            progress,
        )
        .await
        {
            Ok((entry, etcd_version, revision)) => {
                return Ok(SnapshotTaken {
                    entry,
                    endpoint: endpoint.clone(),
                    etcd_version,
                    revision,
                    member_count,
                })
            }
            Err(AttemptError::Member(reason)) => {
                tracing::warn!("snapshot from {endpoint} failed: {reason}");
                failures.push(format!("{endpoint}: {reason}"));
            }
            // The store or the encryption failed: another member would fail the same way.
            Err(AttemptError::Fatal(err)) => return Err(err),
        }
    }
    Err(BackupError::Snapshot {
        attempts: failures.join("; "),
    })
}

async fn next_message(stream: &mut SnapshotStreaming, received: u64) -> Result<Option<SnapshotResponse>, String> {
    tokio::time::timeout(IDLE_TIMEOUT, stream.message())
        .await
        .map_err(|_| format!("no data for {}s after {received} bytes", IDLE_TIMEOUT.as_secs()))?
        .map_err(|e| format!("stream broke after {received} bytes: {}", error_chain(&e)))
}

/// The snapshot's whole size, from its first message, for the etcd versions whose Maintenance
/// service is known to announce it that way (3.4 and 3.5: every data message says how many
/// data bytes remain, and a 32-byte SHA-256 message follows them). Unknown otherwise: the
/// store then takes the object in parts.
fn announced_size(version: &str, first_len: usize, remaining: u64) -> Option<u64> {
    let known = version.starts_with("3.4.") || version.starts_with("3.5.");
    known.then(|| first_len as u64 + remaining + TRAILER_LEN as u64)
}

enum AttemptError {
    /// This member could not deliver the snapshot; the next one may.
    Member(String),
    Fatal(BackupError),
}

impl From<String> for AttemptError {
    fn from(reason: String) -> Self {
        AttemptError::Member(reason)
    }
}

#[allow(clippy::too_many_arguments)]
async fn attempt_snapshot(
    endpoint: &EtcdEndpoint,
    attempt: usize,
    source: &EtcdSource,
    store: Arc<dyn Store>,
    key: &str,
    name: &str,
    recipients: &Recipients,
    progress: Option<&ProgressFn>,
) -> Result<(ObjectEntry, String, i64), AttemptError> {
    let mut client = connect(endpoint, &source.tls).await?;
    let status = tokio::time::timeout(IDLE_TIMEOUT, client.status())
        .await
        .map_err(|_| "status timed out".to_string())?
        .map_err(|e| format!("status: {}", error_chain(&e)))?;
    let version = status.version().to_string();
    // The revision as of just before the snapshot begins; the snapshot holds at least this.
    let revision = status.header().map(|h| h.revision()).unwrap_or(0);
    let mut stream = tokio::time::timeout(IDLE_TIMEOUT, client.snapshot())
        .await
        .map_err(|_| "starting the snapshot timed out".to_string())?
        .map_err(|e| format!("starting the snapshot: {}", error_chain(&e)))?;
    let first = next_message(&mut stream, 0).await?;
    let size = first
        .as_ref()
        .and_then(|m| announced_size(&version, m.blob().len(), m.remaining_bytes()));
    let mut writer =
        ObjectWriter::start(store, key.to_string(), name, recipients, size).map_err(AttemptError::Fatal)?;
    let mut trailer = HeldTrailer::default();
    let mut received = 0u64;
    let mut remaining = u64::MAX;
    let mut first = Some(first);
    let outcome: Result<(), AttemptError> = async {
        loop {
            let message = match first.take() {
                Some(message) => message,
                None => next_message(&mut stream, received).await?,
            };
            let Some(message) = message else { break };
            let blob = message.blob();
            trailer.write(blob, &mut writer).await.map_err(AttemptError::Fatal)?;
            received += blob.len() as u64;
            remaining = message.remaining_bytes();
            if let Some(progress) = progress {
                progress(&Progress {
                    endpoint: endpoint.clone(),
                    attempt,
                    bytes: received,
                    remaining,
                });
            }
        }
        if remaining != 0 {
            return Err(format!("stream ended after {received} bytes with {remaining} bytes outstanding").into());
        }
        match trailer.check(&writer, received) {
            TrailerOutcome::Valid => trailer.release(&mut writer).await.map_err(AttemptError::Fatal),
            TrailerOutcome::TooShort { size } => {
                Err(format!("snapshot of {size} bytes is too short to be valid").into())
            }
            TrailerOutcome::Mismatch { expected, actual } => {
                Err(format!("snapshot hash mismatch: trailer says {expected}, content hashes to {actual}").into())
            }
        }
    }
    .await;
    match outcome {
        Ok(()) => {
            let entry = writer.finish().await.map_err(AttemptError::Fatal)?;
            Ok((entry, version, revision))
        }
        Err(reason) => {
            writer.abort().await;
            Err(reason)
        }
    }
}

/// etcd's integrity trailer (the SHA-256 of everything before it, see [`crate::trailer`]),
/// checked with the writer's plaintext hash: the last [`TRAILER_LEN`] bytes seen are held back
/// from the writer, so at the end of the stream the writer has hashed exactly the content the
/// trailer covers. Once it matches, the trailer itself is written.
#[derive(Default)]
struct HeldTrailer {
    tail: Vec<u8>,
}

impl HeldTrailer {
    async fn write(&mut self, data: &[u8], writer: &mut ObjectWriter) -> Result<(), BackupError> {
        if data.len() >= TRAILER_LEN {
            let (body, tail) = data.split_at(data.len() - TRAILER_LEN);
            writer.write(&self.tail).await?;
            writer.write(body).await?;
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > TRAILER_LEN {
                let excess = self.tail.len() - TRAILER_LEN;
                writer.write(&self.tail[..excess]).await?;
                self.tail.drain(..excess);
            }
        }
        Ok(())
    }

    fn check(&self, writer: &ObjectWriter, size: u64) -> TrailerOutcome {
        if self.tail.len() < TRAILER_LEN || size == TRAILER_LEN as u64 {
            return TrailerOutcome::TooShort { size };
        }
        let actual = hex::encode(writer.plaintext_digest());
        let expected = hex::encode(&self.tail);
        if actual == expected {
            TrailerOutcome::Valid
        } else {
            TrailerOutcome::Mismatch { expected, actual }
        }
    }

    async fn release(self, writer: &mut ObjectWriter) -> Result<(), BackupError> {
        writer.write(&self.tail).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FileStore;
    use sha2::{Digest, Sha256};

    fn with_trailer(body: &[u8]) -> Vec<u8> {
        let mut data = body.to_vec();
        data.extend_from_slice(&Sha256::digest(body));
        data
    }

    /// Feed `data` in `chunk`-sized pieces through a held trailer into a real file store;
    /// returns the outcome and, when valid, the committed object's entry.
    async fn held(data: &[u8], chunk: usize) -> (TrailerOutcome, Option<ObjectEntry>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.path().to_path_buf()));
        let mut writer = ObjectWriter::start(store, "id/snapshot.db".into(), "snapshot.db", &None, None).unwrap();
        let mut trailer = HeldTrailer::default();
        for piece in data.chunks(chunk) {
            trailer.write(piece, &mut writer).await.unwrap();
        }
        let outcome = trailer.check(&writer, data.len() as u64);
        if outcome != TrailerOutcome::Valid {
            writer.abort().await;
            return (outcome, None);
        }
        trailer.release(&mut writer).await.unwrap();
        (outcome, Some(writer.finish().await.unwrap()))
    }

    #[tokio::test]
    async fn held_trailer_checks_and_stores_the_whole_stream_whatever_the_chunking() {
        let data = with_trailer(&(0..5000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
        let whole = hex::encode(Sha256::digest(&data));
        for chunk in [1, 5, 31, 32, 33, 64, 4999, 10_000] {
            let (outcome, entry) = held(&data, chunk).await;
            assert_eq!(outcome, TrailerOutcome::Valid, "chunk {chunk}");
            let entry = entry.unwrap();
            assert_eq!(entry.plaintext.size, data.len() as u64, "chunk {chunk}");
            assert_eq!(entry.plaintext.sha256, whole, "chunk {chunk}");
            assert_eq!(entry.stored, entry.plaintext, "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn held_trailer_rejects_corruption_truncation_and_short_streams() {
        let mut data = with_trailer(b"some snapshot bytes, more than thirty-two of them");
        data[3] ^= 1;
        assert!(matches!(held(&data, 7).await.0, TrailerOutcome::Mismatch { .. }));
        data[3] ^= 1;
        assert!(matches!(
            held(&data[..data.len() - 1], 7).await.0,
            TrailerOutcome::Mismatch { .. }
        ));
        assert_eq!(held(&data[..10], 3).await.0, TrailerOutcome::TooShort { size: 10 });
        assert_eq!(held(&data[..32], 8).await.0, TrailerOutcome::TooShort { size: 32 });
    }
}
