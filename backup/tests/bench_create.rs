//! Not a timed test: measures `create` throughput and peak RSS for a database of
//! `CAPSTAN_BENCH_MB` MiB (default 256) to moto S3, or to `CAPSTAN_BENCH_TARGET` (file://...)
//! when set, where the backup is left for inspection. Run with
//! `cargo test -p capstan-backup --test bench_create -- --ignored --nocapture`.

mod support;

use std::time::Instant;

use capstan_backup::{create, open_store, verify, S3Options, StoreUrl, VerifyTarget};
use support::etcd::{etcd_binary, LocalCluster};
use support::s3::S3Server;
use support::{age_key, encrypted_to, fill, request, write_identity};

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly"]
async fn bench_create() {
    let Some(binary) = etcd_binary("3.5.") else { return };
    let megabytes: usize = std::env::var("CAPSTAN_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let target = std::env::var("CAPSTAN_BENCH_TARGET").ok();
    let server = match target {
        Some(_) => None,
        None => match S3Server::start() {
            Some(server) => Some(server),
            None => return,
        },
    };
    let url = match (&target, &server) {
        (Some(target), _) => StoreUrl::parse(target).unwrap(),
        (None, Some(server)) => {
            server.create_bucket("bench").await;
            server.export_env();
            StoreUrl::parse("s3://bench/etcd").unwrap()
        }
        (None, None) => unreachable!(),
    };
    let cluster = LocalCluster::start(&binary, 1).await.unwrap();
    fill(&cluster, megabytes).await;
    let dir = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_key();
    let identity_file = write_identity(dir.path(), "key.txt", &identity);
    let options = S3Options {
        path_style: true,
        ..S3Options::default()
    };
    let store = open_store(&url, &options).await.unwrap();

    // Reset the peak-RSS counter so it measures the backup only.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = rss_kib();
    let started = Instant::now();
    let manifest = create(&store, request(&cluster, encrypted_to(&recipient), None))
        .await
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let peak = peak_rss_kib();
    let size = manifest.objects[0].plaintext.size as f64 / (1024.0 * 1024.0);
    eprintln!(
        "BENCH create to {url}: snapshot {size:.0} MiB in {elapsed:.2}s = {:.0} MiB/s; RSS before {} MiB, peak {} MiB",
        size / elapsed,
        before / 1024,
        peak / 1024
    );
    let started = Instant::now();
    let report = verify(&store, &VerifyTarget::Latest, Some(&identity_file))
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    eprintln!("BENCH verify with decryption: {:.2}s", started.elapsed().as_secs_f64());
    if target.is_some() {
        std::fs::copy(&identity_file, "/tmp/capstan-bench-identity.txt").unwrap();
        eprintln!(
            "backup {} left in {url}; identity copied to /tmp/capstan-bench-identity.txt",
            manifest.id
        );
    }
}
