//! Fetching a backup for a restore: download every object, check it against the manifest,
//! decrypt it, and hand back the plaintext snapshot (as a local file), the CA and the inventory.
//!
//! Unlike `verify`, which only reports, this refuses: a restore must never start from an object
//! whose stored bytes, plaintext or etcd hash differ from what the manifest promises.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use capstan_provisioner::hint::Hint;

use crate::error::BackupError;
use crate::id::BackupId;
use crate::manifest::{object_name, Manifest, ObjectEntry, INVENTORY_BASE, PKI_BASE, SNAPSHOT_BASE, STATE_BASE};
use crate::ops::{check_object, list, load_identities, read_manifest, Identities, VerifyProblem, VerifyTarget};
use crate::state::{unarchive, StateEntry};
use crate::store::{Store, StoreError};

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
    // A missing or unreadable identity file is said as such, before anything is downloaded; each
    // decrypting thread loads its own copy from the path.
    if let Some(path) = identity {
        load_identities(path)?;
    }
    let identities = identity.map(|path| (Arc::new(path.to_path_buf()), path.display().to_string()));
    let pki_entry = entry(PKI_BASE)?;
    let inventory_entry = entry(INVENTORY_BASE)?;

    let snapshot_path = dir.join(SNAPSHOT_BASE);
    fetch_object(
        store,
        &manifest,
        &snapshot_entry,
        identities.as_ref(),
        &snapshot_path,
        true,
    )
    .await?;
    let pki_path = dir.join(PKI_BASE);
    fetch_object(store, &manifest, &pki_entry, identities.as_ref(), &pki_path, false).await?;
    let inventory_path = dir.join(INVENTORY_BASE);
    fetch_object(
        store,
        &manifest,
        &inventory_entry,
        identities.as_ref(),
        &inventory_path,
        false,
    )
    .await?;

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
            fetch_object(store, &manifest, &state_entry, identities.as_ref(), &state_path, false).await?;
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

/// Downloads one object, checks it against the manifest and writes its plaintext to `out`, in
/// one streaming pass (download → stored hash → decrypt → plaintext hash and etcd's trailer →
/// file): no encrypted copy on disk and every byte hashed once. `out` is removed unless every
/// check passed, so nothing unverified is left for a restore to use.
async fn fetch_object(
    store: &Arc<dyn Store>,
    manifest: &Manifest,
    entry: &ObjectEntry,
    identities: Option<&(Identities, String)>,
    out: &Path,
    is_snapshot: bool,
) -> Result<(), FetchError> {
    let file = private_file(out).map_err(|e| FetchError::Local {
        path: out.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut problems = Vec::new();
    let checked = check_object(
        store,
        manifest,
        entry,
        identities,
        is_snapshot,
        &mut problems,
        Some((file, out)),
    )
    .await;
    let refusal = match checked {
        Err(err) => Some(FetchError::from(err)),
        Ok(_) if !problems.is_empty() => Some(FetchError::Corrupt {
            id: manifest.id.to_string(),
            problem: problems.swap_remove(0),
        }),
        // Encrypted, but nothing decrypted it: never hand back an unchecked plaintext.
        Ok(check) if !check.plaintext_checked => Some(FetchError::IdentityNeeded {
            id: manifest.id.to_string(),
            recipients: manifest.recipients.join(", "),
        }),
        Ok(_) => None,
    };
    match refusal {
        Some(err) => {
            let _ = std::fs::remove_file(out);
            Err(err)
        }
        None => Ok(()),
    }
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
