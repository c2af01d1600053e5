//! The S3 server dies mid-upload: create fails clearly and writes no manifest; with the server
//! back, prune leaves no multipart upload and the next backup succeeds.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_backup::{
    create, list, open_store, prune, verify, Progress, ProgressFn, PruneOptions, Retention, S3Options, StoreUrl,
    VerifyTarget,
};
use support::etcd::{etcd_binary, LocalCluster};
use support::s3::S3Server;
use support::{age_key, encrypted_to, fill, request, write_identity};

const KILL_AFTER: u64 = 40 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_server_killed_mid_upload() {
    let Some(binary) = etcd_binary("3.5.") else { return };
    let Some(mut server) = S3Server::start() else { return };
    server.create_bucket("capstan-backups").await;
    let cluster = LocalCluster::start(&binary, 1).await.unwrap();
    fill(&cluster, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_key();
    let identity_file = write_identity(dir.path(), "key.txt", &identity);

    let pid = server.pid().unwrap();
    let killed = Arc::new(AtomicBool::new(false));
    let progress: ProgressFn = {
        let killed = killed.clone();
        Arc::new(move |p: &Progress| {
            if p.bytes > KILL_AFTER && !killed.swap(true, Ordering::SeqCst) {
                Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
            }
        })
    };
    server.export_env();
    let url = StoreUrl::parse("s3://capstan-backups/etcd").unwrap();
    let options = S3Options {
        path_style: true,
        max_attempts: 3,
        ..S3Options::default()
    };
    let store = open_store(&url, &options).await.unwrap();
    let started = Instant::now();
    let err = create(&store, request(&cluster, encrypted_to(&recipient), Some(progress)))
        .await
        .unwrap_err();
    assert!(killed.load(Ordering::SeqCst));
    let message = err.to_string();
    assert!(message.starts_with("s3://capstan-backups/etcd: "), "{message}");
    assert!(message.contains("snapshot.db.age"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(120), "failed promptly");
    eprintln!("create failed as expected: {message}");

    // moto keeps state in memory: the restarted server is empty, so recreate the bucket.
    server.kill();
    server.restart().unwrap();
    server.create_bucket("capstan-backups").await;
    assert!(
        list(&store).await.unwrap().iter().all(|b| !b.complete),
        "no manifest was written"
    );
    // A process killed before it could abort leaves its multipart upload behind (the server
    // restart above lost any such state, so make one the way a crashed capstan would).
    server
        .client()
        .await
        .create_multipart_upload()
        .bucket("capstan-backups")
        .key("etcd/20200101T000000Z-0002/snapshot.db.age")
        .send()
        .await
        .unwrap();
    assert_eq!(server.multipart_uploads("capstan-backups").await.len(), 1);
    let options = PruneOptions {
        retention: Retention {
            keep_last: 3,
            daily: 0,
            weekly: 0,
            monthly: 0,
        },
        dry_run: false,
        incomplete_grace: Duration::ZERO,
    };
    let report = prune(&store, &options).await.unwrap();
    assert_eq!(report.aborted_uploads.len(), 1, "{report:?}");
    assert!(report.aborted_uploads[0]
        .name
        .starts_with("20200101T000000Z-0002/snapshot.db.age"));
    assert!(server.multipart_uploads("capstan-backups").await.is_empty());

    let manifest = create(&store, request(&cluster, encrypted_to(&recipient), None))
        .await
        .unwrap();
    let report = verify(&store, &VerifyTarget::Id(manifest.id), Some(&identity_file))
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
}
