//! Backups to a file:// store from a real 3-member etcd cluster.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use capstan_backup::restore::{fetch_decrypted, FetchError};
use capstan_backup::{
    create, list, prune, verify, BackupError, Decision, Encryption, Manifest, PruneOptions, Retention, Store, StoreUrl,
    VerifyTarget,
};
use sha2::{Digest, Sha256};
use support::etcd::{etcd_binary, LocalCluster};
use support::{age_key, encrypted_to, fill, request, write_identity};

async fn file_store(dir: &Path) -> Arc<dyn Store> {
    let url = StoreUrl::parse(&format!("file://{}", dir.display())).unwrap();
    capstan_backup::open_store(&url, &Default::default()).await.unwrap()
}

/// Decrypt the snapshot with the age CLI and restore it with etcdutl, which checks etcd's hash:
/// proof that the backup is usable by standard tools, not only by capstan.
fn restore_with_standard_tools(dir: &Path, manifest: &Manifest, identity: &Path) {
    let etcdutl = Path::new("/opt/etcd-3.5.1/etcdutl");
    if !etcdutl.is_file() || Command::new("age").arg("--version").output().is_err() {
        eprintln!("NOTE: skipping the etcdutl restore check: needs `age` and /opt/etcd-3.5.1/etcdutl");
        return;
    }
    let encrypted = dir.join(manifest.id.as_str()).join("snapshot.db.age");
    let plain = dir.join("restored-snapshot.db");
    let status = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg("-o")
        .arg(&plain)
        .arg(&encrypted)
        .status()
        .unwrap();
    assert!(status.success(), "age -d failed");
    let data_dir = dir.join("restored-data");
    let output = Command::new(etcdutl)
        .args(["snapshot", "restore"])
        .arg(&plain)
        .arg("--data-dir")
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "etcdutl restore failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(data_dir.join("member/snap/db").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trip_verify_corruption_and_identities_on_a_file_store() {
    let Some(binary) = etcd_binary("3.5.") else { return };
    let cluster = LocalCluster::start(&binary, 3).await.unwrap();
    fill(&cluster, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir.path().join("backups")).await;
    let (identity, recipient) = age_key();
    let identity_file = write_identity(dir.path(), "key.txt", &identity);
    let (other_identity, _) = age_key();
    let other_identity_file = write_identity(dir.path(), "other.txt", &other_identity);

    let manifest = create(&store, request(&cluster, encrypted_to(&recipient), None))
        .await
        .unwrap();
    assert!(manifest.encrypted);
    assert_eq!(manifest.member_count, 3);
    assert_eq!(manifest.etcd_version, binary.version);
    assert!(manifest.revision > 1, "revision {}", manifest.revision);
    assert_eq!(manifest.recipients, std::slice::from_ref(&recipient));
    let names: Vec<&str> = manifest.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["snapshot.db.age", "pki.tar.age", "inventory.yaml.age"]);
    let snapshot = &manifest.objects[0];
    assert!(snapshot.plaintext.size > 3 * 1024 * 1024);
    assert!(
        snapshot.stored.size > snapshot.plaintext.size,
        "age adds a header and tags"
    );
    // A follower is preferred over the leader.
    let status = cluster.client().await.unwrap().cluster_status().await.unwrap();
    let leader = status
        .endpoints
        .iter()
        .find(|e| e.status.as_ref().is_some_and(|s| s.leader))
        .unwrap();
    assert_ne!(manifest.source_member, leader.endpoint.to_string());

    let listed = list(&store).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].complete);
    assert_eq!(listed[0].id, manifest.id);
    assert_eq!(listed[0].revision, Some(manifest.revision));
    assert_eq!(
        listed[0].size,
        manifest.stored_size() + listed_manifest_size(dir.path(), &manifest)
    );

    let full = verify(&store, &VerifyTarget::Latest, Some(&identity_file))
        .await
        .unwrap();
    assert!(full.ok(), "{:?}", full.problems);
    assert!(full.plaintext_checked);
    assert!(full.objects[0].etcd_hash_checked);
    assert!(full.objects.iter().all(|o| o.plaintext_checked && o.stored_checked));

    let partial = verify(&store, &VerifyTarget::Id(manifest.id.clone()), None)
        .await
        .unwrap();
    assert!(partial.ok());
    assert!(!partial.plaintext_checked);
    assert!(
        partial.notes[0].contains("plaintext hashes and etcd's snapshot hash were NOT checked"),
        "{:?}",
        partial.notes
    );

    let wrong = verify(&store, &VerifyTarget::Latest, Some(&other_identity_file))
        .await
        .unwrap_err();
    assert!(matches!(wrong, BackupError::WrongIdentity { .. }), "{wrong}");
    let message = wrong.to_string();
    assert!(
        message.contains("no identity in") && message.contains(&recipient),
        "{message}"
    );

    restore_with_standard_tools(&dir.path().join("backups"), &manifest, &identity_file);

    // A restore's fetch: one streaming pass leaves only the checked plaintext (0600) behind.
    let fetch_dir = dir.path().join("fetch");
    std::fs::create_dir(&fetch_dir).unwrap();
    let fetched = fetch_decrypted(&store, &manifest.id, Some(&identity_file), &fetch_dir)
        .await
        .unwrap();
    assert_eq!(fetched.snapshot_sha256, snapshot.plaintext.sha256);
    let plain = std::fs::read(&fetched.snapshot_path).unwrap();
    assert_eq!(plain.len() as u64, snapshot.plaintext.size);
    assert_eq!(hex::encode(Sha256::digest(&plain)), snapshot.plaintext.sha256);
    let mode = std::fs::metadata(&fetched.snapshot_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut left: Vec<String> = std::fs::read_dir(&fetch_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["inventory.yaml", "snapshot.db"],
        "no encrypted copy, no PKI archive"
    );
    for name in left {
        std::fs::remove_file(fetch_dir.join(name)).unwrap();
    }
    let wrong = fetch_decrypted(&store, &manifest.id, Some(&other_identity_file), &fetch_dir)
        .await
        .unwrap_err();
    assert!(
        matches!(wrong, FetchError::Backup(BackupError::WrongIdentity { .. })),
        "{wrong}"
    );
    assert_eq!(
        std::fs::read_dir(&fetch_dir).unwrap().count(),
        0,
        "no unchecked plaintext left"
    );

    // Flip one byte in the middle of the snapshot's ciphertext.
    let object = dir
        .path()
        .join("backups")
        .join(manifest.id.as_str())
        .join("snapshot.db.age");
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&object, &bytes).unwrap();
    for identity in [Some(identity_file.as_path()), None] {
        let report = verify(&store, &VerifyTarget::Latest, identity).await.unwrap();
        assert!(!report.ok());
        let problem = &report.problems[0];
        assert_eq!(problem.object, "snapshot.db.age");
        assert_eq!(problem.check, "stored sha256");
        assert_eq!(problem.expected, snapshot.stored.sha256);
        assert_ne!(problem.actual, snapshot.stored.sha256);
        assert_eq!(problem.actual.len(), 64);
        if identity.is_some() {
            assert!(
                report.problems.iter().any(|p| p.check == "decryption"),
                "{:?}",
                report.problems
            );
        }
    }
    // The restore's fetch refuses it, names the first check that failed, and leaves nothing.
    let refused = fetch_decrypted(&store, &manifest.id, Some(&identity_file), &fetch_dir)
        .await
        .unwrap_err();
    match &refused {
        FetchError::Corrupt { problem, .. } => {
            assert_eq!(
                (problem.object.as_str(), problem.check.as_str()),
                ("snapshot.db.age", "stored sha256")
            )
        }
        other => panic!("expected a corrupt backup, got {other}"),
    }
    assert_eq!(
        std::fs::read_dir(&fetch_dir).unwrap().count(),
        0,
        "no unchecked plaintext left"
    );
}

fn listed_manifest_size(dir: &Path, manifest: &Manifest) -> u64 {
    std::fs::metadata(dir.join("backups").join(manifest.id.as_str()).join("manifest.json"))
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unencrypted_backups_are_explicit_and_fully_verifiable_without_identity() {
    let Some(binary) = etcd_binary("3.5.") else { return };
    assert!(matches!(
        Encryption::from_args(&[], false),
        Err(BackupError::NoRecipients)
    ));
    let cluster = LocalCluster::start(&binary, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(dir.path()).await;
    let manifest = create(&store, request(&cluster, Encryption::Disabled, None))
        .await
        .unwrap();
    assert!(!manifest.encrypted);
    assert!(manifest.recipients.is_empty());
    assert_eq!(manifest.objects[0].name, "snapshot.db");
    assert_eq!(manifest.objects[0].plaintext, manifest.objects[0].stored);
    let report = verify(&store, &VerifyTarget::Latest, None).await.unwrap();
    assert!(
        report.ok() && report.plaintext_checked && report.objects[0].etcd_hash_checked,
        "{report:?}"
    );

    // The CA key is in clear in an unencrypted backup: owner-only files.
    use std::os::unix::fs::PermissionsExt;
    let pki = dir.path().join(manifest.id.as_str()).join("pki.tar");
    assert_eq!(std::fs::metadata(&pki).unwrap().permissions().mode() & 0o777, 0o600);

    // Corrupt etcd's own trailer: every layer of checks must notice, etcd's hash included.
    let object = dir.path().join(manifest.id.as_str()).join("snapshot.db");
    let mut bytes = std::fs::read(&object).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&object, &bytes).unwrap();
    let report = verify(&store, &VerifyTarget::Latest, None).await.unwrap();
    let checks: Vec<&str> = report.problems.iter().map(|p| p.check.as_str()).collect();
    assert_eq!(checks, ["stored sha256", "plaintext sha256", "etcd snapshot hash"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prune_applies_retention_and_removes_incomplete_backups() {
    let Some(binary) = etcd_binary("3.5.") else { return };
    let cluster = LocalCluster::start(&binary, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(dir.path()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            create(&store, request(&cluster, Encryption::Disabled, None))
                .await
                .unwrap()
                .id,
        );
    }
    // An interrupted backup from long ago, and a leftover temporary file.
    store
        .put_bytes("20200101T000000Z-0001/snapshot.db", b"partial".to_vec())
        .await
        .unwrap();
    std::fs::write(dir.path().join("20200101T000000Z-0001/pki.tar.tmp"), b"partial").unwrap();
    // A fresh incomplete one: possibly still being written, so kept.
    let fresh = capstan_backup::BackupId::generate(time::OffsetDateTime::now_utc());
    store
        .put_bytes(&format!("{fresh}/snapshot.db"), b"in progress".to_vec())
        .await
        .unwrap();

    let err = verify(&store, &VerifyTarget::Id(fresh.clone()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::Incomplete { .. }), "{err}");
    let missing = capstan_backup::BackupId::parse("20200101T000000Z-ffff").unwrap();
    let err = verify(&store, &VerifyTarget::Id(missing), None).await.unwrap_err();
    assert!(matches!(err, BackupError::NotFound { .. }), "{err}");

    let retention = Retention {
        keep_last: 1,
        daily: 0,
        weekly: 0,
        monthly: 0,
    };
    let options = PruneOptions {
        retention,
        dry_run: true,
        incomplete_grace: Duration::from_secs(3600),
    };
    let dry = prune(&store, &options).await.unwrap();
    assert_eq!(dry.deleted().count(), 3, "{dry:?}");
    assert_eq!(
        dry.aborted_uploads.len(),
        0,
        "the .tmp file is newer than the grace period"
    );
    assert_eq!(list(&store).await.unwrap().len(), 5, "a dry run deletes nothing");

    let report = prune(
        &store,
        &PruneOptions {
            dry_run: false,
            incomplete_grace: Duration::ZERO,
            ..options
        },
    )
    .await
    .unwrap();
    let kept: Vec<String> = report
        .backups
        .iter()
        .filter(|b| matches!(b.decision, Decision::Keep(_)))
        .map(|b| b.id.to_string())
        .collect();
    assert_eq!(kept, [ids[2].to_string()]);
    assert_eq!(report.aborted_uploads.len(), 1, "{:?}", report.aborted_uploads);
    let remaining = list(&store).await.unwrap();
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0].id, ids[2]);
    assert!(!dir.path().join("20200101T000000Z-0001").exists());
}
