//! The errors of backup operations. Each says which backup / object / member it concerns.

use capstan_provisioner::hint::Hint;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("invalid backup id `{id}`: expected YYYYMMDDTHHMMSSZ-xxxx (e.g. 20261128T041500Z-3f9a)")]
    InvalidId { id: String },
    #[error("invalid age recipient `{recipient}`: {reason}")]
    InvalidRecipient { recipient: String, reason: String },
    #[error("no age recipients given: backups contain the cluster's CA key and are encrypted by default")]
    NoRecipients,
    #[error("both recipients and --no-encryption were given; choose one")]
    RecipientsAndNoEncryption,
    #[error("reading age identity file {path}: {reason}")]
    Identity { path: String, reason: String },
    #[error("no identity in {path} can decrypt {object} of backup {id} (it is encrypted to {recipients})")]
    WrongIdentity {
        path: String,
        id: String,
        object: String,
        recipients: String,
    },
    #[error("no backup `{id}` in {store}")]
    NotFound { id: String, store: String },
    #[error("no complete backup in {store}")]
    NoCompleteBackup { store: String },
    #[error("backup {id} is incomplete (no manifest.json): it was interrupted or is still being written")]
    Incomplete { id: String },
    #[error("manifest of backup {id} is invalid: {reason}")]
    InvalidManifest { id: String, reason: String },
    #[error("etcd snapshot failed on every member: {attempts}")]
    Snapshot { attempts: String },
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("encrypting {object}: {reason}")]
    Encrypt { object: String, reason: String },
    #[error("writing {path}: {reason}")]
    LocalWrite { path: String, reason: String },
    #[error("building the PKI archive: {0}")]
    PkiArchive(String),
    #[error(
        "the components' state pushed by {host} is encrypted to {}, but this backup to {}",
        pushed_list(pushed),
        pushed_list(backup)
    )]
    StateRecipients {
        host: String,
        pushed: Vec<String>,
        backup: Vec<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn pushed_list(recipients: &[String]) -> String {
    if recipients.is_empty() {
        "nobody (not encrypted)".into()
    } else {
        recipients.join(", ")
    }
}

impl Hint for BackupError {
    fn hint(&self) -> Option<String> {
        let hint = match self {
            BackupError::NoRecipients => {
                "pass --recipient age1... (age-keygen prints one; keep its identity file offline), set \
                 backup.recipients in the inventory, or say --no-encryption"
            }
            BackupError::WrongIdentity { .. } | BackupError::Identity { .. } => {
                "pass the age identity whose public key is one of the backup's recipients"
            }
            BackupError::NoCompleteBackup { .. } | BackupError::NotFound { .. } => {
                "`capstan backup list` shows the backups in the target"
            }
            BackupError::Incomplete { .. } => "pick a complete backup from `capstan backup list`",
            BackupError::Snapshot { .. } | BackupError::Etcd(_) => "check `capstan status`: is etcd healthy?",
            BackupError::StateRecipients { .. } => {
                "run `capstan backup schedule` again: it gives the state hosts the schedule's recipients, and \
                 their next push (at once, on `systemctl start capstan-state-push`) uses them"
            }
            BackupError::Store(e) => return e.hint(),
            _ => return None,
        };
        Some(hint.to_string())
    }
}

impl Hint for StoreError {
    fn hint(&self) -> Option<String> {
        match self {
            StoreError::Io { store, .. } if store.starts_with("s3://") => Some(
                "check the AWS credentials (environment, ~/.aws, instance role), AWS_ENDPOINT_URL and, for \
                 MinIO/Ceph-style servers, --s3-path-style"
                    .into(),
            ),
            _ => None,
        }
    }
}
