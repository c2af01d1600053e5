//! Fetching a backup for a restore: download every object, check it against the manifest,
//! decrypt it, and hand back the plaintext snapshot (as a local file), the CA and the inventory.
//!
//! Unlike `verify`, which only reports, this refuses: a restore must never start from an object
//! whose stored bytes, plaintext or etcd hash differ from what the manifest promises.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use capstan_provisioner::hint::Hint;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::error::BackupError;
use crate::id::BackupId;
use crate::manifest::{object_name, Manifest, ObjectEntry, INVENTORY_BASE, PKI_BASE, SNAPSHOT_BASE, STATE_BASE};
use crate::ops::{list, read_manifest, VerifyProblem, VerifyTarget};
use crate::state::{unarchive, StateEntry};
use crate::store::{Store, StoreError};
use crate::trailer::{TrailerCheck, TrailerOutcome};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("backup {id} is corrupt: {problem}")]
    Corrupt { id: String, problem: VerifyProblem },
    #[error("backup {id} is encrypted (to {recipients}); an identity file is needed to restore it")]
    IdentityNeeded { id: String, recipients: String },
    #[error("backup {id} has no {object} in its manifest")]
    MissingObject { id: String, object: String },
    #[error("backup {id}: the PKI archive has no {file}")]
    MissingPkiFile { id: String, file: String },
    #[error("writing {path}: {reason}")]
    Local { path: String, reason: String },
}

impl Hint for FetchError {
    fn hint(&self) -> Option<String> {
        match self {
            FetchError::Backup(e) => e.hint(),
            FetchError::IdentityNeeded { .. } => {
                Some("pass --identity FILE (an age identity, AGE-SECRET-KEY-1...)".into())
            }
            FetchError::Corrupt { .. } => {
                Some("this backup cannot be restored; pick another one from `capstan backup list`".into())
            }
            _ => None,
        }
    }
}

/// A backup downloaded, checked and decrypted for a restore.
pub struct FetchedBackup {
    pub manifest: Manifest,
    /// The plaintext etcd snapshot (etcd's own SHA-256 trailer checked).
    pub snapshot_path: PathBuf,
    pub snapshot_sha256: String,
    pub snapshot_size: u64,
    pub ca_cert_pem: String,
    /// The CA private key: never logged (redacted from `Debug`).
    pub ca_key_pem: String,
    pub inventory_yaml: Vec<u8>,
    /// Components' own state ([`crate::state`]); empty for backups without a state object.
    pub state: Vec<StateEntry>,
}

impl std::fmt::Debug for FetchedBackup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedBackup")
            .field("id", &self.manifest.id)
            .field("snapshot_path", &self.snapshot_path)
            .field("snapshot_sha256", &self.snapshot_sha256)
            .field("snapshot_size", &self.snapshot_size)
            .field("ca_key_pem", &"<redacted>")
            .finish()
    }
}

/// The id `which` names: the newest complete backup for `latest`.
pub async fn resolve(store: &Arc<dyn Store>, which: &VerifyTarget) -> Result<BackupId, BackupError> {
    match which {
        VerifyTarget::Id(id) => Ok(id.clone()),
        VerifyTarget::Latest => list(store)
            .await?
            .into_iter()
            .rev()
            .find(|b| b.complete)
            .map(|b| b.id)
            .ok_or_else(|| BackupError::NoCompleteBackup { store: store.url() }),
    }
}

/// The manifest of backup `id`, telling an incomplete backup from a missing one.
pub async fn manifest_of(store: &Arc<dyn Store>, id: &BackupId) -> Result<Manifest, BackupError> {
    match read_manifest(store, id).await {
        Ok(manifest) => Ok(manifest),
        Err(BackupError::Store(StoreError::NotFound { .. })) => {
            let prefix = format!("{id}/");
            let exists = store.list().await?.iter().any(|o| o.name.starts_with(&prefix));
            Err(if exists {
                BackupError::Incomplete { id: id.to_string() }
            } else {
                BackupError::NotFound {
                    id: id.to_string(),
                    store: store.url(),
                }
            })
        }
        Err(err) => Err(err),
    }
}

/// Downloads backup `id` into `dir` (which should be private: the snapshot is plaintext),
/// checks every object against the manifest and decrypts it with `identity`.
pub async fn fetch_decrypted(
    store: &Arc<dyn Store>,
    id: &BackupId,
    identity: Option<&Path>,
    dir: &Path,
) -> Result<FetchedBackup, FetchError> {
    let manifest = manifest_of(store, id).await?;
    if manifest.encrypted && identity.is_none() {
        return Err(FetchError::IdentityNeeded {
            id: id.to_string(),
            recipients: manifest.recipients.join(", "),
        });
    }
    let entry = |base: &str| -> Result<ObjectEntry, FetchError> {
        manifest.object(base).cloned().ok_or_else(|| FetchError::MissingObject {
            id: id.to_string(),
            object: object_name(base, manifest.encrypted),
        })
    };
    let snapshot_entry = entry(SNAPSHOT_BASE)?;
    let pki_entry = entry(PKI_BASE)?;
    let inventory_entry = entry(INVENTORY_BASE)?;

    let snapshot_path = dir.join(SNAPSHOT_BASE);
    fetch_object(store, &manifest, &snapshot_entry, identity, &snapshot_path, true).await?;
    let pki_path = dir.join(PKI_BASE);
    fetch_object(store, &manifest, &pki_entry, identity, &pki_path, false).await?;
    let inventory_path = dir.join(INVENTORY_BASE);
    fetch_object(store, &manifest, &inventory_entry, identity, &inventory_path, false).await?;

    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| FetchError::Local {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let pki = read(&pki_path)?;
    let _ = std::fs::remove_file(&pki_path);
    let (ca_cert_pem, ca_key_pem) = ca_from_archive(id, &pki)?;
    let inventory_yaml = read(&inventory_path)?;
    let state = match manifest.object(STATE_BASE).cloned() {
        Some(state_entry) => {
            let state_path = dir.join(STATE_BASE);
            fetch_object(store, &manifest, &state_entry, identity, &state_path, false).await?;
            let bytes = read(&state_path)?;
            let _ = std::fs::remove_file(&state_path);
            unarchive(&bytes).map_err(|e| FetchError::Backup(BackupError::PkiArchive(format!("backup {id}: {e}"))))?
        }
        None => Vec::new(),
    };
    Ok(FetchedBackup {
        state,
        snapshot_sha256: snapshot_entry.plaintext.sha256.clone(),
        snapshot_size: snapshot_entry.plaintext.size,
        snapshot_path,
        ca_cert_pem,
        ca_key_pem,
        inventory_yaml,
        manifest,
    })
}

fn ca_from_archive(id: &BackupId, archive: &[u8]) -> Result<(String, String), FetchError> {
    let mut cert = None;
    let mut key = None;
    let broken = |reason: String| FetchError::Backup(BackupError::PkiArchive(format!("backup {id}: {reason}")));
    let mut reader = tar::Archive::new(archive);
    for entry in reader.entries().map_err(|e| broken(e.to_string()))? {
        let mut entry = entry.map_err(|e| broken(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| broken(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let mut text = String::new();
        entry
            .read_to_string(&mut text)
            .map_err(|e| broken(format!("{name}: {e}")))?;
        match name.as_str() {
            "ca.crt" => cert = Some(text),
            "ca.key" => key = Some(text),
            _ => {}
        }
    }
    let missing = |file: &str| FetchError::MissingPkiFile {
        id: id.to_string(),
        file: file.to_string(),
    };
    Ok((
        cert.ok_or_else(|| missing("ca.crt"))?,
        key.ok_or_else(|| missing("ca.key"))?,
    ))
}

fn corrupt(id: &BackupId, object: &str, check: &str, expected: String, actual: String) -> FetchError {
    FetchError::Corrupt {
        id: id.to_string(),
        problem: VerifyProblem {
            object: object.to_string(),
            check: check.to_string(),
            expected,
            actual,
        },
    }
}

/// Download `entry` to `<out>.stored` (checking stored size and hash), then decrypt it into
/// `out` (checking plaintext size, hash and, for the snapshot, etcd's trailer).
async fn fetch_object(
    store: &Arc<dyn Store>,
    manifest: &Manifest,
    entry: &ObjectEntry,
    identity: Option<&Path>,
    out: &Path,
    is_snapshot: bool,
) -> Result<(), FetchError> {
    let id = &manifest.id;
    let local = |path: &Path, e: std::io::Error| FetchError::Local {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let stored_path = if manifest.encrypted {
        out.with_extension("stored")
    } else {
        out.to_path_buf()
    };
    let mut file = private_file(&stored_path).map_err(|e| local(&stored_path, e))?;
    let mut stream = store
        .get_stream(&format!("{id}/{}", entry.name))
        .await
        .map_err(BackupError::from)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BackupError::from)?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).map_err(|e| local(&stored_path, e))?;
    }
    file.sync_all().map_err(|e| local(&stored_path, e))?;
    drop(file);
    if size != entry.stored.size {
        return Err(corrupt(
            id,
            &entry.name,
            "stored size",
            entry.stored.size.to_string(),
            size.to_string(),
        ));
    }
    let sha = hex::encode(hasher.finalize());
    if sha != entry.stored.sha256 {
        return Err(corrupt(
            id,
            &entry.name,
            "stored sha256",
            entry.stored.sha256.clone(),
            sha,
        ));
    }

    let identity = identity.map(Path::to_path_buf);
    let recipients = manifest.recipients.join(", ");
    let (name, out_path, id_owned) = (entry.name.clone(), out.to_path_buf(), id.clone());
    let plain_entry = entry.plaintext.clone();
    tokio::task::spawn_blocking(move || -> Result<(), FetchError> {
        let (digest_size, digest_sha, trailer) = match identity {
            Some(identity_path) if stored_path != out_path => {
                let result = decrypt_file(
                    &identity_path,
                    &stored_path,
                    &out_path,
                    is_snapshot,
                    &id_owned,
                    &name,
                    &recipients,
                );
                let _ = std::fs::remove_file(&stored_path);
                result?
            }
            _ => {
                let mut reader = std::fs::File::open(&out_path).map_err(|e| local(&out_path, e))?;
                digest(&mut reader, None, is_snapshot).map_err(|e| local(&out_path, e))?
            }
        };
        if digest_size != plain_entry.size {
            return Err(corrupt(
                &id_owned,
                &name,
                "plaintext size",
                plain_entry.size.to_string(),
                digest_size.to_string(),
            ));
        }
        if digest_sha != plain_entry.sha256 {
            return Err(corrupt(
                &id_owned,
                &name,
                "plaintext sha256",
                plain_entry.sha256.clone(),
                digest_sha,
            ));
        }
        match trailer {
            None | Some(TrailerOutcome::Valid) => Ok(()),
            Some(TrailerOutcome::TooShort { size }) => Err(corrupt(
                &id_owned,
                &name,
                "etcd snapshot hash",
                "a trailing sha256".into(),
                format!("only {size} bytes"),
            )),
            Some(TrailerOutcome::Mismatch { expected, actual }) => {
                Err(corrupt(&id_owned, &name, "etcd snapshot hash", expected, actual))
            }
        }
    })
    .await
    .map_err(|e| FetchError::Local {
        path: out.display().to_string(),
        reason: format!("decryption task failed: {e}"),
    })?
}

type Digested = (u64, String, Option<TrailerOutcome>);

fn decrypt_file(
    identity_path: &Path,
    stored: &Path,
    out: &Path,
    is_snapshot: bool,
    id: &BackupId,
    object: &str,
    recipients: &str,
) -> Result<Digested, FetchError> {
    let identity_error = |reason: String| {
        FetchError::Backup(BackupError::Identity {
            path: identity_path.display().to_string(),
            reason,
        })
    };
    let file = age::IdentityFile::from_file(identity_path.to_string_lossy().into_owned())
        .map_err(|e| identity_error(e.to_string()))?;
    let identities = file.into_identities().map_err(|e| identity_error(e.to_string()))?;
    let input = std::fs::File::open(stored).map_err(|e| FetchError::Local {
        path: stored.display().to_string(),
        reason: e.to_string(),
    })?;
    let decryption = |reason: String| corrupt(id, object, "decryption", "decryptable".into(), reason);
    let decryptor = age::Decryptor::new(std::io::BufReader::new(input)).map_err(|e| decryption(e.to_string()))?;
    let mut plain = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            // The stored bytes matched the manifest, so the header is intact: wrong key.
            age::DecryptError::NoMatchingKeys => FetchError::Backup(BackupError::WrongIdentity {
                path: identity_path.display().to_string(),
                id: id.to_string(),
                object: object.to_string(),
                recipients: recipients.to_string(),
            }),
            other => decryption(other.to_string()),
        })?;
    let mut output = private_file(out).map_err(|e| FetchError::Local {
        path: out.display().to_string(),
        reason: e.to_string(),
    })?;
    let digested = digest(&mut plain, Some(&mut output), is_snapshot).map_err(|e| decryption(e.to_string()))?;
    output.sync_all().map_err(|e| FetchError::Local {
        path: out.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(digested)
}

fn digest(reader: &mut dyn Read, mut sink: Option<&mut std::fs::File>, is_snapshot: bool) -> std::io::Result<Digested> {
    let mut hasher = Sha256::new();
    let mut trailer = is_snapshot.then(TrailerCheck::new);
    let mut size = 0u64;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        if let Some(trailer) = &mut trailer {
            trailer.update(&buffer[..n]);
        }
        if let Some(sink) = sink.as_deref_mut() {
            sink.write_all(&buffer[..n])?;
        }
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize()), trailer.map(TrailerCheck::finish)))
}

fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}
