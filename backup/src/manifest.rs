//! `manifest.json`: what a backup contains, written last. Not secret (no key material), so
//! `list` and `verify` without an identity can read it.

use serde::{Deserialize, Serialize};

use crate::error::BackupError;
use crate::id::BackupId;

pub const MANIFEST_OBJECT: &str = "manifest.json";
pub const MANIFEST_FORMAT: u32 = 1;

/// Object base names; encrypted objects get an `.age` suffix.
pub const SNAPSHOT_BASE: &str = "snapshot.db";
pub const PKI_BASE: &str = "pki.tar";
pub const INVENTORY_BASE: &str = "inventory.yaml";
/// Components' own state ([`crate::state`]); only in backups of clusters that have some.
pub const STATE_BASE: &str = "state.tar";

pub fn object_name(base: &str, encrypted: bool) -> String {
    if encrypted {
        format!("{base}.age")
    } else {
        base.to_string()
    }
}

/// Size and SHA-256 of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectDigest {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// Name within the backup, e.g. `snapshot.db.age`.
    pub name: String,
    /// Before encryption.
    pub plaintext: ObjectDigest,
    /// As stored (equal to `plaintext` when the backup is not encrypted).
    pub stored: ObjectDigest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: BackupId,
    pub cluster: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub etcd_version: String,
    /// The store revision seen on the source member just before its snapshot began.
    pub revision: i64,
    pub member_count: usize,
    /// The member the snapshot was streamed from.
    pub source_member: String,
    pub encrypted: bool,
    /// age recipients (public keys) the objects are encrypted to.
    pub recipients: Vec<String>,
    pub capstan_version: String,
    pub objects: Vec<ObjectEntry>,
}

impl Manifest {
    pub fn parse(id: &BackupId, bytes: &[u8]) -> Result<Manifest, BackupError> {
        let invalid = |reason: String| BackupError::InvalidManifest {
            id: id.to_string(),
            reason,
        };
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(invalid(format!(
                "format {} is not supported (this capstan reads format {MANIFEST_FORMAT})",
                manifest.format
            )));
        }
        if &manifest.id != id {
            return Err(invalid(format!("it names backup {}", manifest.id)));
        }
        Ok(manifest)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("the manifest is plain data");
        bytes.push(b'\n');
        bytes
    }

    pub fn object(&self, base: &str) -> Option<&ObjectEntry> {
        self.objects
            .iter()
            .find(|o| o.name == object_name(base, self.encrypted))
    }

    /// Total stored size of the backup's objects.
    pub fn stored_size(&self) -> u64 {
        self.objects.iter().map(|o| o.stored.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            id: BackupId::parse("20261128T041500Z-3f9a").unwrap(),
            cluster: "demo".into(),
            created: "2026-11-28T04:15:00Z".into(),
            etcd_version: "3.5.1".into(),
            revision: 42,
            member_count: 3,
            source_member: "https://10.0.0.2:2379".into(),
            encrypted: true,
            recipients: vec!["age1xyz".into()],
            capstan_version: "0.1.0".into(),
            objects: vec![ObjectEntry {
                name: "snapshot.db.age".into(),
                plaintext: ObjectDigest {
                    size: 10,
                    sha256: "aa".into(),
                },
                stored: ObjectDigest {
                    size: 20,
                    sha256: "bb".into(),
                },
            }],
        }
    }

    #[test]
    fn manifest_round_trips_and_is_checked() {
        let manifest = sample();
        let parsed = Manifest::parse(&manifest.id, &manifest.to_json()).unwrap();
        assert_eq!(parsed, manifest);
        assert_eq!(parsed.object(SNAPSHOT_BASE).unwrap().stored.size, 20);

        let other = BackupId::parse("20261128T041500Z-0000").unwrap();
        let err = Manifest::parse(&other, &manifest.to_json()).unwrap_err();
        assert!(
            err.to_string().contains("it names backup 20261128T041500Z-3f9a"),
            "{err}"
        );

        let mut future = manifest.clone();
        future.format = 9;
        let err = Manifest::parse(&manifest.id, &future.to_json()).unwrap_err();
        assert!(err.to_string().contains("format 9 is not supported"), "{err}");
        assert!(Manifest::parse(&manifest.id, b"{").is_err());
    }
}
