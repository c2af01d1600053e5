//! Backups to a real S3 server (moto) from a real etcd cluster: round trip and corruption.

mod support;

use capstan_backup::{create, list, open_store, verify, S3Options, StoreUrl, VerifyTarget};
use support::etcd::{etcd_binary, LocalCluster};
use support::s3::S3Server;
use support::{age_key, encrypted_to, fill, request, write_identity};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trip_and_flipped_byte_on_s3() {
    let Some(binary) = etcd_binary("3.5.") else { return };
    let Some(server) = S3Server::start() else { return };
    server.create_bucket("capstan-backups").await;
    let cluster = LocalCluster::start(&binary, 3).await.unwrap();
    // Larger than one part, so the snapshot goes up as a multipart upload.
    fill(&cluster, 12).await;
    let dir = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_key();
    let identity_file = write_identity(dir.path(), "key.txt", &identity);

    server.export_env();
    let url = StoreUrl::parse("s3://capstan-backups/demo/etcd").unwrap();
    let options = S3Options {
        path_style: true,
        ..S3Options::default()
    };
    let store = open_store(&url, &options).await.unwrap();
    // The same backup both ways: multipart (single PUTs off), then one streamed PutObject (the
    // snapshot's size is announced by etcd). A multipart object's ETag ends in -<parts>.
    let multipart_store = open_store(
        &url,
        &S3Options {
            single_put_max: 0,
            ..options.clone()
        },
    )
    .await
    .unwrap();
    let etag_of = |id: String| {
        let server = &server;
        async move {
            let head = server
                .client()
                .await
                .head_object()
                .bucket("capstan-backups")
                .key(format!("demo/etcd/{id}/snapshot.db.age"))
                .send()
                .await
                .unwrap();
            (
                head.content_length().unwrap_or(-1),
                head.e_tag().unwrap_or_default().trim_matches('"').to_string(),
            )
        }
    };
    let first = create(&multipart_store, request(&cluster, encrypted_to(&recipient), None))
        .await
        .unwrap();
    let (length, etag) = etag_of(first.id.to_string()).await;
    assert_eq!(length, first.objects[0].stored.size as i64);
    assert!(
        etag.rsplit_once('-')
            .is_some_and(|(_, parts)| parts.parse::<u32>().is_ok_and(|n| n > 1)),
        "a multipart upload: {etag}"
    );
    let report = verify(
        &multipart_store,
        &VerifyTarget::Id(first.id.clone()),
        Some(&identity_file),
    )
    .await
    .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    for name in first.objects.iter().map(|o| o.name.as_str()).chain(["manifest.json"]) {
        store.delete(&format!("{}/{name}", first.id)).await.unwrap();
    }

    let manifest = create(&store, request(&cluster, encrypted_to(&recipient), None))
        .await
        .unwrap();
    assert!(manifest.objects[0].stored.size > options.part_size as u64);
    let (length, etag) = etag_of(manifest.id.to_string()).await;
    assert_eq!(length, manifest.objects[0].stored.size as i64);
    assert!(!etag.contains('-'), "one PutObject: {etag}");

    let listed = list(&store).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].complete);
    assert_eq!(listed[0].id, manifest.id);
    assert!(server.multipart_uploads("capstan-backups").await.is_empty());

    let report = verify(&store, &VerifyTarget::Latest, Some(&identity_file))
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert!(report.objects[0].etcd_hash_checked);

    // Same layout as file://, under the prefix.
    let keys: Vec<String> = server
        .client()
        .await
        .list_objects_v2()
        .bucket("capstan-backups")
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    let id = manifest.id.as_str();
    assert_eq!(
        keys,
        [
            format!("demo/etcd/{id}/inventory.yaml.age"),
            format!("demo/etcd/{id}/manifest.json"),
            format!("demo/etcd/{id}/pki.tar.age"),
            format!("demo/etcd/{id}/snapshot.db.age"),
        ]
    );

    // Flip a byte in the PKI archive's ciphertext.
    let name = format!("{id}/pki.tar.age");
    let mut bytes = store.get_bytes(&name).await.unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x40;
    store.put_bytes(&name, bytes).await.unwrap();
    let report = verify(&store, &VerifyTarget::Id(manifest.id.clone()), Some(&identity_file))
        .await
        .unwrap();
    let pki = manifest.objects.iter().find(|o| o.name == "pki.tar.age").unwrap();
    assert_eq!(report.problems[0].object, "pki.tar.age");
    assert_eq!(report.problems[0].check, "stored sha256");
    assert_eq!(report.problems[0].expected, pki.stored.sha256);
    assert!(
        report.problems.iter().all(|p| p.object == "pki.tar.age"),
        "{:?}",
        report.problems
    );
}
