//! The backup operations: create, list, verify, prune.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::error::BackupError;
use crate::id::BackupId;
use crate::manifest::{
    object_name, Manifest, ObjectDigest, ObjectEntry, INVENTORY_BASE, MANIFEST_FORMAT, MANIFEST_OBJECT, PKI_BASE,
    SNAPSHOT_BASE, STATE_BASE,
};
use crate::pipeline::{write_object, Recipients};
use crate::retention::{decide, Candidate, Decision, Retention};
use crate::snapshot::{take_snapshot, EtcdSource};
use crate::store::{PendingUpload, Store};
use crate::trailer::{TrailerCheck, TrailerOutcome};

pub use crate::snapshot::{Progress, ProgressFn};

/// Whether and to whom a backup is encrypted. There is no default: unencrypted backups hold
/// the CA key in clear, so they must be asked for.
#[derive(Debug, Clone)]
pub enum Encryption {
    Recipients(Vec<age::x25519::Recipient>),
    Disabled,
}

impl Encryption {
    /// From `--recipient` values (and/or recipients-file lines) and `--no-encryption`.
    pub fn from_args(recipients: &[String], no_encryption: bool) -> Result<Encryption, BackupError> {
        match (recipients.is_empty(), no_encryption) {
            (true, true) => Ok(Encryption::Disabled),
            (false, true) => Err(BackupError::RecipientsAndNoEncryption),
            (true, false) => Err(BackupError::NoRecipients),
            (false, false) => recipients
                .iter()
                .map(|text| parse_recipient(text))
                .collect::<Result<Vec<_>, _>>()
                .map(Encryption::Recipients),
        }
    }

    fn recipients(&self) -> Recipients {
        match self {
            Encryption::Recipients(list) => Some(Arc::new(list.clone())),
            Encryption::Disabled => None,
        }
    }
}

pub(crate) fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, BackupError> {
    let text = text.trim();
    let invalid = |reason: &str| BackupError::InvalidRecipient {
        recipient: text.to_string(),
        reason: reason.to_string(),
    };
    if text.starts_with("ssh-") {
        return Err(invalid(
            "SSH public keys are not supported as backup recipients; use an age X25519 key (age-keygen)",
        ));
    }
    if !text.starts_with("age1") {
        return Err(invalid("expected an age X25519 public key starting with age1"));
    }
    text.parse::<age::x25519::Recipient>().map_err(invalid)
}

/// Recipients from a recipients file: one per line; blank lines and `#` comments ignored
/// (the age CLI's format).
pub fn parse_recipients_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

pub struct CreateRequest {
    pub cluster_name: String,
    pub source: EtcdSource,
    pub encryption: Encryption,
    /// The cluster's PKI files, by name (e.g. `ca.crt`, `ca.key`).
    pub pki_files: Vec<(String, Vec<u8>)>,
    /// The inventory file the cluster was built from.
    pub inventory: Vec<u8>,
    /// Components' own state files ([`crate::state::collect`]); none: no state object.
    pub state: Vec<crate::state::StateEntry>,
    /// Components' state as a host pushed it ([`crate::state_push`]), stored as it is (never
    /// decrypted here); used when `state` is empty. Its recipients must be the backup's.
    pub pushed_state: Option<crate::state_push::PushRecord>,
    pub progress: Option<ProgressFn>,
}

fn key(id: &BackupId, name: &str) -> String {
    format!("{id}/{name}")
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// Take a backup: snapshot, PKI and inventory, then the manifest. Returns the manifest.
pub async fn create(store: &Arc<dyn Store>, request: CreateRequest) -> Result<Manifest, BackupError> {
    let now = OffsetDateTime::now_utc();
    let id = BackupId::generate(now);
    let recipients = request.encryption.recipients();
    let encrypted = recipients.is_some();
    let pki_tar = pki_archive(&request.pki_files, now)?;

    let mut objects = Vec::new();
    let result: Result<Manifest, BackupError> = async {
        let snapshot_name = object_name(SNAPSHOT_BASE, encrypted);
        let taken = take_snapshot(
            &request.source,
            store.clone(),
            &key(&id, &snapshot_name),
            &snapshot_name,
            &recipients,
            request.progress.as_ref(),
        )
        .await?;
        objects.push(taken.entry.clone());
        for (base, data) in [(PKI_BASE, &pki_tar), (INVENTORY_BASE, &request.inventory)] {
            let name = object_name(base, encrypted);
            let entry = write_object(store.clone(), key(&id, &name), &name, &recipients, data).await?;
            objects.push(entry);
        }
        if !request.state.is_empty() {
            let data = crate::state::archive(&request.state).map_err(|e| BackupError::PkiArchive(e.to_string()))?;
            let name = object_name(STATE_BASE, encrypted);
            let entry = write_object(store.clone(), key(&id, &name), &name, &recipients, &data).await?;
            objects.push(entry);
        } else if let Some(pushed) = &request.pushed_state {
            check_pushed_recipients(pushed, &request.encryption)?;
            let name = object_name(STATE_BASE, encrypted);
            // Already encrypted (or, unencrypted, the tar itself): stored as it is; the manifest's
            // plaintext digest is the one the pushing host computed before encrypting.
            let mut entry = write_object(store.clone(), key(&id, &name), &name, &None, &pushed.data).await?;
            entry.plaintext = pushed.plaintext.clone();
            objects.push(entry);
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: id.clone(),
            cluster: request.cluster_name.clone(),
            created: rfc3339(now),
            etcd_version: taken.etcd_version,
            revision: taken.revision,
            member_count: taken.member_count,
            source_member: taken.endpoint.to_string(),
            encrypted,
            recipients: match &request.encryption {
                Encryption::Recipients(list) => list.iter().map(ToString::to_string).collect(),
                Encryption::Disabled => Vec::new(),
            },
            capstan_version: crate::CAPSTAN_VERSION.to_string(),
            objects: objects.clone(),
        };
        store.put_bytes(&key(&id, MANIFEST_OBJECT), manifest.to_json()).await?;
        Ok(manifest)
    }
    .await;
    if result.is_err() {
        // Without a manifest these objects are useless; prune would remove them later anyway.
        for object in &objects {
            if let Err(err) = store.delete(&key(&id, &object.name)).await {
                tracing::warn!("could not remove {} of the failed backup {id}: {err}", object.name);
            }
        }
    }
    result
}

/// A pushed state goes into a backup only when encrypted to exactly the backup's recipients
/// (unencrypted only into an unencrypted backup): anything else would hand the state to other
/// keys, or leave it undecryptable with the backup's.
fn check_pushed_recipients(pushed: &crate::state_push::PushRecord, encryption: &Encryption) -> Result<(), BackupError> {
    let backup: Vec<String> = match encryption {
        Encryption::Recipients(list) => list.iter().map(ToString::to_string).collect(),
        Encryption::Disabled => Vec::new(),
    };
    if pushed.encrypted_to(&backup) {
        return Ok(());
    }
    Err(BackupError::StateRecipients {
        host: pushed.host.clone(),
        pushed: pushed.recipients.clone(),
        backup,
    })
}

/// The PKI files as a tar archive (mode 0600, since it holds the CA key).
fn pki_archive(files: &[(String, Vec<u8>)], now: OffsetDateTime) -> Result<Vec<u8>, BackupError> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(now.unix_timestamp().max(0) as u64);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, data.as_slice())
            .map_err(|e| BackupError::PkiArchive(format!("{name}: {e}")))?;
    }
    builder.into_inner().map_err(|e| BackupError::PkiArchive(e.to_string()))
}

/// One backup as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSummary {
    pub id: BackupId,
    /// RFC 3339 (from the manifest, or the id for incomplete backups).
    pub created: String,
    /// Stored bytes of every object of the backup.
    pub size: u64,
    pub revision: Option<i64>,
    pub encrypted: Option<bool>,
    /// Has a valid manifest; only complete backups can be restored.
    pub complete: bool,
    pub cluster: Option<String>,
    /// Why a backup with a manifest is not usable.
    pub problem: Option<String>,
}

/// Object names under the store grouped by backup id; names outside `<id>/` are ignored.
fn group_by_backup(objects: &[crate::store::ObjectInfo]) -> BTreeMap<BackupId, Vec<crate::store::ObjectInfo>> {
    let mut groups: BTreeMap<BackupId, Vec<crate::store::ObjectInfo>> = BTreeMap::new();
    for object in objects {
        let Some((prefix, _)) = object.name.split_once('/') else {
            continue;
        };
        if let Ok(id) = BackupId::parse(prefix) {
            groups.entry(id).or_default().push(object.clone());
        }
    }
    groups
}

/// Every backup in the store, oldest first (by creation time, then id).
pub async fn list(store: &Arc<dyn Store>) -> Result<Vec<BackupSummary>, BackupError> {
    let objects = store.list().await?;
    let mut summaries = Vec::new();
    for (id, objects) in group_by_backup(&objects) {
        let size = objects.iter().map(|o| o.size).sum();
        let has_manifest = objects.iter().any(|o| o.name == key(&id, MANIFEST_OBJECT));
        let mut summary = BackupSummary {
            created: rfc3339(id.timestamp()),
            id: id.clone(),
            size,
            revision: None,
            encrypted: None,
            complete: false,
            cluster: None,
            problem: None,
        };
        if has_manifest {
            match read_manifest(store, &id).await {
                Ok(manifest) => {
                    summary.created = manifest.created.clone();
                    summary.revision = Some(manifest.revision);
                    summary.encrypted = Some(manifest.encrypted);
                    summary.cluster = Some(manifest.cluster.clone());
                    summary.complete = true;
                }
                Err(err) => summary.problem = Some(err.to_string()),
            }
        }
        summaries.push(summary);
    }
    summaries.sort_by(|a, b| (created_at(a), &a.id).cmp(&(created_at(b), &b.id)));
    Ok(summaries)
}

/// The precise creation time of a listed backup (ids have second precision only).
fn created_at(summary: &BackupSummary) -> OffsetDateTime {
    OffsetDateTime::parse(&summary.created, &Rfc3339).unwrap_or_else(|_| summary.id.timestamp())
}

pub async fn read_manifest(store: &Arc<dyn Store>, id: &BackupId) -> Result<Manifest, BackupError> {
    let bytes = store.get_bytes(&key(id, MANIFEST_OBJECT)).await?;
    Manifest::parse(id, &bytes)
}

/// Which backup to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyTarget {
    Latest,
    Id(BackupId),
}

impl VerifyTarget {
    pub fn parse(text: &str) -> Result<VerifyTarget, BackupError> {
        if text == "latest" {
            Ok(VerifyTarget::Latest)
        } else {
            BackupId::parse(text).map(VerifyTarget::Id)
        }
    }
}

/// A check that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyProblem {
    pub object: String,
    /// `stored size`, `stored sha256`, `decryption`, `plaintext size`, `plaintext sha256`,
    /// `etcd snapshot hash` or `missing`.
    pub check: String,
    pub expected: String,
    pub actual: String,
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} mismatch: expected {}, got {}",
            self.object, self.check, self.expected, self.actual
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectCheck {
    pub name: String,
    pub stored_checked: bool,
    pub plaintext_checked: bool,
    /// Only for the snapshot: whether etcd's own trailing hash was checked.
    pub etcd_hash_checked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub id: BackupId,
    /// Whether plaintext was checked (decrypted with an identity, or not encrypted at all).
    pub plaintext_checked: bool,
    pub objects: Vec<ObjectCheck>,
    pub problems: Vec<VerifyProblem>,
    /// What was not checked and why.
    pub notes: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The identity file to decrypt with. age's identities are not `Send`, so each decrypting
/// thread loads its own copy from the path (checked once up front by [`load_identities`]).
pub(crate) type Identities = Arc<std::path::PathBuf>;

pub(crate) fn load_identities(path: &Path) -> Result<Vec<Box<dyn age::Identity>>, BackupError> {
    let fail = |reason: String| BackupError::Identity {
        path: path.display().to_string(),
        reason,
    };
    let file = age::IdentityFile::from_file(path.to_string_lossy().into_owned()).map_err(|e| fail(e.to_string()))?;
    let identities = file.into_identities().map_err(|e| fail(e.to_string()))?;
    if identities.is_empty() {
        return Err(fail(
            "no identities in the file (expected AGE-SECRET-KEY-1... lines)".into(),
        ));
    }
    Ok(identities)
}

/// The public keys (age1...) of the X25519 identities in an identity file: what a backup's
/// manifest must list among its recipients for this file to decrypt it.
pub fn identity_recipients(path: &Path) -> Result<Vec<String>, BackupError> {
    load_identities(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| BackupError::Identity {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("AGE-SECRET-KEY-1"))
        .filter_map(|line| line.parse::<age::x25519::Identity>().ok())
        .map(|identity| identity.to_public().to_string())
        .collect())
}

/// Download and check a backup. With `identity`, every object is decrypted and its plaintext
/// checked (and the snapshot's own hash); without, only stored sizes and hashes are checked.
pub async fn verify(
    store: &Arc<dyn Store>,
    target: &VerifyTarget,
    identity: Option<&Path>,
) -> Result<VerifyReport, BackupError> {
    let id = match target {
        VerifyTarget::Id(id) => id.clone(),
        VerifyTarget::Latest => list(store)
            .await?
            .into_iter()
            .rev()
            .find(|b| b.complete)
            .map(|b| b.id)
            .ok_or_else(|| BackupError::NoCompleteBackup { store: store.url() })?,
    };
    let manifest = match read_manifest(store, &id).await {
        Ok(manifest) => manifest,
        Err(BackupError::Store(crate::store::StoreError::NotFound { .. })) => {
            let exists = store
                .list()
                .await?
                .iter()
                .any(|o| o.name.starts_with(&format!("{id}/")));
            return Err(if exists {
                BackupError::Incomplete { id: id.to_string() }
            } else {
                BackupError::NotFound {
                    id: id.to_string(),
                    store: store.url(),
                }
            });
        }
        Err(err) => return Err(err),
    };
    let identities = match identity {
        Some(path) if manifest.encrypted => {
            load_identities(path)?;
            Some((Arc::new(path.to_path_buf()), path.display().to_string()))
        }
        _ => None,
    };
    let decrypting = identities.is_some();
    let plaintext_checked = decrypting || !manifest.encrypted;
    let mut report = VerifyReport {
        id: id.clone(),
        plaintext_checked,
        objects: Vec::new(),
        problems: Vec::new(),
        notes: Vec::new(),
    };
    if !plaintext_checked {
        report.notes.push(
            "not decrypted (no --identity): checked stored sizes and sha256 only; plaintext hashes and \
             etcd's snapshot hash were NOT checked"
                .to_string(),
        );
    }
    if identity.is_some() && !manifest.encrypted {
        report
            .notes
            .push("the backup is not encrypted; the identity was not needed".to_string());
    }
    for entry in &manifest.objects {
        let is_snapshot = entry.name == object_name(SNAPSHOT_BASE, manifest.encrypted);
        let checked = check_object(
            store,
            &manifest,
            entry,
            identities.as_ref(),
            is_snapshot,
            &mut report.problems,
            None,
        )
        .await?;
        report.objects.push(checked);
    }
    Ok(report)
}

/// A blocking `Read` over chunks sent from async code, for the synchronous age decryptor.
struct ChannelReader {
    chunks: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

enum DecryptFailure {
    NoMatchingKeys,
    Other(String),
    /// Writing the plaintext to the caller's file failed.
    Sink(String),
}

struct PlainResult {
    digest: ObjectDigest,
    trailer: Option<TrailerOutcome>,
}

/// Hashes the plaintext once (the whole-object SHA-256 and, for a snapshot, etcd's trailer
/// check come from the same pass) and copies it into `sink` when given.
fn digest_plaintext(
    mut reader: impl Read,
    is_snapshot: bool,
    mut sink: Option<std::fs::File>,
) -> Result<PlainResult, DecryptFailure> {
    let mut check = TrailerCheck::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(|e| DecryptFailure::Other(e.to_string()))?;
        if n == 0 {
            break;
        }
        check.update(&buffer[..n]);
        if let Some(sink) = &mut sink {
            sink.write_all(&buffer[..n])
                .map_err(|e| DecryptFailure::Sink(e.to_string()))?;
        }
        size += n as u64;
    }
    Ok(PlainResult {
        digest: ObjectDigest {
            size,
            sha256: hex::encode(check.sha256()),
        },
        trailer: is_snapshot.then(|| check.finish()),
    })
}

/// Streams one object from the store and checks it against its manifest entry in one pass:
/// stored size and SHA-256 as it arrives, and (when it is not encrypted, or `identities` can
/// decrypt it) plaintext size, SHA-256 and etcd's trailer on a blocking thread. What does not
/// match goes into `problems`. With `sink` = (file, path), the plaintext is also written to the
/// file; the caller must not use it unless no problem was found.
pub(crate) async fn check_object(
    store: &Arc<dyn Store>,
    manifest: &Manifest,
    entry: &ObjectEntry,
    identities: Option<&(Identities, String)>,
    is_snapshot: bool,
    problems: &mut Vec<VerifyProblem>,
    sink: Option<(std::fs::File, &Path)>,
) -> Result<ObjectCheck, BackupError> {
    let sink_path = sink.as_ref().map(|(_, path)| path.display().to_string());
    let sink = sink.map(|(file, _)| file);
    let problem = |check: &str, expected: String, actual: String| VerifyProblem {
        object: entry.name.clone(),
        check: check.to_string(),
        expected,
        actual,
    };
    let mut stream = match store.get_stream(&key(&manifest.id, &entry.name)).await {
        Ok(stream) => stream,
        Err(crate::store::StoreError::NotFound { .. }) => {
            problems.push(problem("missing", "object present".into(), "no such object".into()));
            return Ok(ObjectCheck {
                name: entry.name.clone(),
                stored_checked: false,
                plaintext_checked: false,
                etcd_hash_checked: false,
            });
        }
        Err(err) => return Err(err.into()),
    };

    // Plaintext is checked on a blocking thread: the age decryptor when encrypted, or the
    // stored bytes themselves when not.
    let (mut to_reader, from_stream) = {
        let (sender, receiver) = mpsc::channel::<Bytes>(8);
        (Some(sender), receiver)
    };
    let plain_task = match (manifest.encrypted, identities) {
        (true, None) => {
            to_reader = None;
            None
        }
        (true, Some((identity_path, _))) => {
            let identity_path = identity_path.clone();
            Some(tokio::task::spawn_blocking(move || {
                let identities = load_identities(&identity_path).map_err(|e| DecryptFailure::Other(e.to_string()))?;
                let reader = ChannelReader {
                    chunks: from_stream,
                    current: Bytes::new(),
                };
                let decryptor = age::Decryptor::new(reader).map_err(|e| DecryptFailure::Other(e.to_string()))?;
                let plain = decryptor
                    .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
                    .map_err(|e| match e {
                        age::DecryptError::NoMatchingKeys => DecryptFailure::NoMatchingKeys,
                        other => DecryptFailure::Other(other.to_string()),
                    })?;
                digest_plaintext(plain, is_snapshot, sink)
            }))
        }
        (false, _) => Some(tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                chunks: from_stream,
                current: Bytes::new(),
            };
            digest_plaintext(reader, is_snapshot, sink)
        })),
    };

    let mut stored = Sha256::new();
    let mut stored_size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        stored.update(&chunk);
        stored_size += chunk.len() as u64;
        if let Some(sender) = &to_reader {
            if sender.send(chunk).await.is_err() {
                // The decryptor gave up; keep hashing what is stored.
                to_reader = None;
            }
        }
    }
    drop(to_reader);
    let stored_sha256 = hex::encode(stored.finalize());
    let stored_intact = stored_size == entry.stored.size && stored_sha256 == entry.stored.sha256;
    if stored_size != entry.stored.size {
        problems.push(problem(
            "stored size",
            entry.stored.size.to_string(),
            stored_size.to_string(),
        ));
    }
    if stored_sha256 != entry.stored.sha256 {
        problems.push(problem("stored sha256", entry.stored.sha256.clone(), stored_sha256));
    }

    let mut check = ObjectCheck {
        name: entry.name.clone(),
        stored_checked: true,
        plaintext_checked: false,
        etcd_hash_checked: false,
    };
    let Some(task) = plain_task else { return Ok(check) };
    let outcome = task.await.map_err(|e| BackupError::Encrypt {
        object: entry.name.clone(),
        reason: format!("verification task failed: {e}"),
    })?;
    match outcome {
        Err(DecryptFailure::NoMatchingKeys) if stored_intact => {
            let (_, path) = identities.expect("decryption ran with identities");
            return Err(BackupError::WrongIdentity {
                path: path.clone(),
                id: manifest.id.to_string(),
                object: entry.name.clone(),
                recipients: manifest.recipients.join(", "),
            });
        }
        Err(DecryptFailure::NoMatchingKeys) => {
            problems.push(problem("decryption", "decryptable".into(), "header corrupted".into()));
        }
        Err(DecryptFailure::Other(reason)) => {
            problems.push(problem("decryption", "decryptable".into(), reason));
        }
        Err(DecryptFailure::Sink(reason)) => {
            return Err(BackupError::LocalWrite {
                path: sink_path.unwrap_or_default(),
                reason,
            })
        }
        Ok(plain) => {
            check.plaintext_checked = true;
            if plain.digest.size != entry.plaintext.size {
                problems.push(problem(
                    "plaintext size",
                    entry.plaintext.size.to_string(),
                    plain.digest.size.to_string(),
                ));
            }
            if plain.digest.sha256 != entry.plaintext.sha256 {
                problems.push(problem(
                    "plaintext sha256",
                    entry.plaintext.sha256.clone(),
                    plain.digest.sha256,
                ));
            }
            match plain.trailer {
                None => {}
                Some(TrailerOutcome::Valid) => check.etcd_hash_checked = true,
                Some(TrailerOutcome::TooShort { size }) => {
                    check.etcd_hash_checked = true;
                    problems.push(problem(
                        "etcd snapshot hash",
                        "a trailing sha256".into(),
                        format!("only {size} bytes"),
                    ));
                }
                Some(TrailerOutcome::Mismatch { expected, actual }) => {
                    check.etcd_hash_checked = true;
                    problems.push(problem("etcd snapshot hash", expected, actual));
                }
            }
        }
    }
    Ok(check)
}

#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub retention: Retention,
    pub dry_run: bool,
    /// Incomplete backups and unfinished uploads younger than this are left alone.
    pub incomplete_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneEntry {
    pub id: BackupId,
    pub complete: bool,
    pub decision: Decision,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub backups: Vec<PruneEntry>,
    /// Unfinished uploads aborted (or that would be, with `dry_run`).
    pub aborted_uploads: Vec<PendingUpload>,
}

impl PruneReport {
    pub fn deleted(&self) -> impl Iterator<Item = &PruneEntry> {
        self.backups
            .iter()
            .filter(|b| matches!(b.decision, Decision::Delete(_)))
    }
}

/// Delete backups outside `retention`, incomplete backups past the grace period, and stale
/// unfinished uploads.
pub async fn prune(store: &Arc<dyn Store>, options: &PruneOptions) -> Result<PruneReport, BackupError> {
    let now = OffsetDateTime::now_utc();
    let objects = store.list().await?;
    let groups = group_by_backup(&objects);
    let summaries = list(store).await?;
    let candidates: Vec<Candidate> = summaries
        .iter()
        .map(|s| Candidate {
            id: s.id.clone(),
            created: created_at(s),
            complete: s.complete,
        })
        .collect();
    let decisions = decide(&candidates, &options.retention, now, options.incomplete_grace);
    let mut report = PruneReport {
        dry_run: options.dry_run,
        backups: Vec::new(),
        aborted_uploads: Vec::new(),
    };
    for (candidate, decision) in candidates.into_iter().zip(decisions) {
        if matches!(decision, Decision::Delete(_)) && !options.dry_run {
            let mut names: Vec<&str> = groups
                .get(&candidate.id)
                .map(|objects| objects.iter().map(|o| o.name.as_str()).collect())
                .unwrap_or_default();
            // The manifest goes first: a backup half-deleted by a crash then shows as incomplete.
            let manifest = key(&candidate.id, MANIFEST_OBJECT);
            names.sort_by_key(|name| *name != manifest);
            for name in names {
                store.delete(name).await?;
            }
        }
        report.backups.push(PruneEntry {
            id: candidate.id,
            complete: candidate.complete,
            decision,
        });
    }
    let cutoff = now - options.incomplete_grace;
    for upload in store.pending_uploads(cutoff).await? {
        if !options.dry_run {
            store.abort_pending(&upload).await?;
        }
        report.aborted_uploads.push(upload);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_must_be_chosen_explicitly() {
        let key = age::x25519::Identity::generate().to_public().to_string();
        assert!(matches!(
            Encryption::from_args(&[], false),
            Err(BackupError::NoRecipients)
        ));
        assert!(matches!(Encryption::from_args(&[], true), Ok(Encryption::Disabled)));
        assert!(matches!(
            Encryption::from_args(std::slice::from_ref(&key), true),
            Err(BackupError::RecipientsAndNoEncryption)
        ));
        assert!(matches!(Encryption::from_args(&[key], false), Ok(Encryption::Recipients(r)) if r.len() == 1));
        let err = Encryption::from_args(&["ssh-ed25519 AAAA".into()], false).unwrap_err();
        assert!(err.to_string().contains("SSH public keys are not supported"), "{err}");
        let err = Encryption::from_args(&["age1notakey".into()], false).unwrap_err();
        assert!(err.to_string().contains("invalid age recipient `age1notakey`"), "{err}");
    }

    #[test]
    fn a_pushed_state_must_be_encrypted_to_the_backups_recipients() {
        let a = age::x25519::Identity::generate().to_public();
        let b = age::x25519::Identity::generate().to_public();
        let pushed = |recipients: Vec<String>| crate::state_push::PushRecord {
            host: "cp-1".into(),
            time: "2026-12-01T19:00:00Z".into(),
            plaintext: ObjectDigest {
                size: 1,
                sha256: "00".into(),
            },
            recipients,
            data: Vec::new(),
        };
        let both = Encryption::Recipients(vec![a.clone(), b.clone()]);
        assert!(check_pushed_recipients(&pushed(vec![b.to_string(), a.to_string()]), &both).is_ok());
        let err = check_pushed_recipients(&pushed(vec![a.to_string()]), &both).unwrap_err();
        assert!(err.to_string().contains("pushed by cp-1 is encrypted to"), "{err}");
        assert!(check_pushed_recipients(&pushed(Vec::new()), &Encryption::Disabled).is_ok());
        let err = check_pushed_recipients(&pushed(Vec::new()), &both).unwrap_err();
        assert!(err.to_string().contains("nobody (not encrypted)"), "{err}");
        assert!(check_pushed_recipients(&pushed(vec![a.to_string()]), &Encryption::Disabled).is_err());
    }

    #[test]
    fn recipients_files_skip_comments_and_blanks() {
        assert_eq!(parse_recipients_file("# ops\n\nage1a\n  age1b  \n"), ["age1a", "age1b"]);
    }

    #[test]
    fn pki_archive_holds_the_files() {
        let files = vec![
            ("ca.crt".to_string(), b"CERT".to_vec()),
            ("ca.key".to_string(), b"KEY".to_vec()),
        ];
        let archive = pki_archive(&files, OffsetDateTime::UNIX_EPOCH).unwrap();
        let mut reader = tar::Archive::new(archive.as_slice());
        let mut seen = Vec::new();
        for entry in reader.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = String::new();
            entry.read_to_string(&mut data).unwrap();
            assert_eq!(entry.header().mode().unwrap(), 0o600);
            seen.push((entry.path().unwrap().display().to_string(), data));
        }
        assert_eq!(
            seen,
            [("ca.crt".into(), "CERT".into()), ("ca.key".into(), "KEY".into())]
        );
    }
}
