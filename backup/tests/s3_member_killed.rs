//! The member streaming the snapshot dies mid-stream: the backup completes from another member,
//! and the first attempt's multipart upload is aborted, not left behind.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use capstan_backup::{create, open_store, verify, Progress, ProgressFn, S3Options, StoreUrl, VerifyTarget};
use support::etcd::{etcd_binary, LocalCluster};
use support::s3::S3Server;
use support::{age_key, encrypted_to, fill, request, write_identity};

const KILL_AFTER: u64 = 24 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_killed_mid_snapshot_falls_back_to_another_member() {
    let Some(binary) = etcd_binary("3.5.") else { return };
    let Some(server) = S3Server::start() else { return };
    server.create_bucket("capstan-backups").await;
    let cluster = LocalCluster::start(&binary, 3).await.unwrap();
    fill(&cluster, 64).await;
    let dir = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_key();
    let identity_file = write_identity(dir.path(), "key.txt", &identity);

    let pids: Vec<(String, u32)> = cluster
        .members
        .iter()
        .map(|m| (m.endpoint().to_string(), m.pid().unwrap()))
        .collect();
    let killed = Arc::new(Mutex::new(None::<String>));
    let done = Arc::new(AtomicBool::new(false));
    let progress: ProgressFn = {
        let killed = killed.clone();
        Arc::new(move |p: &Progress| {
            if p.attempt == 1 && p.bytes > KILL_AFTER && !done.swap(true, Ordering::SeqCst) {
                let (endpoint, pid) = pids.iter().find(|(e, _)| *e == p.endpoint.to_string()).unwrap();
                Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
                *killed.lock().unwrap() = Some(endpoint.clone());
            }
        })
    };

    server.export_env();
    let url = StoreUrl::parse("s3://capstan-backups/etcd").unwrap();
    let options = S3Options {
        path_style: true,
        ..S3Options::default()
    };
    let store = open_store(&url, &options).await.unwrap();
    let manifest = create(&store, request(&cluster, encrypted_to(&recipient), Some(progress)))
        .await
        .unwrap();
    let killed = killed.lock().unwrap().clone().expect("a member was killed mid-stream");
    assert_ne!(manifest.source_member, killed);
    assert!(manifest.objects[0].plaintext.size > 64 * 1024 * 1024);
    assert!(
        server.multipart_uploads("capstan-backups").await.is_empty(),
        "the interrupted attempt's multipart upload was aborted"
    );
    let report = verify(&store, &VerifyTarget::Latest, Some(&identity_file))
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert!(report.objects[0].etcd_hash_checked);
}
