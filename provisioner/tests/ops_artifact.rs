//! Artifacts from a file:// mirror: fetched once, verified, extracted locally,
//! uploaded through LocalTransport.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use capstan_provisioner::artifact::ArtifactCache;
use capstan_provisioner::local::LocalTransport;
use capstan_provisioner::ops::Artifact;
use capstan_provisioner::runner::{HostOps, Mode, NoProgress, RunOptions, Runner};
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn runner(mode: Mode) -> Runner {
    Runner::new(RunOptions { mode, concurrency: 8 }, Arc::new(NoProgress))
}

/// A release tarball like upstream etcd's: a top-level directory with binaries and docs.
fn make_release(dir: &Path, etcd: &[u8], etcdctl: &[u8]) -> (String, String) {
    let archive = dir.join("etcd-v3.5.1-linux-amd64.tar.gz");
    let gz = flate2::write::GzEncoder::new(fs::File::create(&archive).unwrap(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data, mode) in [
        ("etcd-v3.5.1-linux-amd64/README.md", b"readme\n".as_slice(), 0o644),
        ("etcd-v3.5.1-linux-amd64/etcd", etcd, 0o755),
        ("etcd-v3.5.1-linux-amd64/etcdctl", etcdctl, 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        tar.append_data(&mut header, name, data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
    let bytes = fs::read(&archive).unwrap();
    (format!("file://{}", archive.display()), sha256(&bytes))
}

#[tokio::test]
async fn extracted_binaries_are_installed_once() {
    let work = tempfile::tempdir().unwrap();
    let etcd = vec![0x7fu8, b'E', b'L', b'F', 0, 1, 2, 3];
    let (url, sha) = make_release(work.path(), &etcd, b"\x7fELFctl\0");
    let cache = ArtifactCache::at(work.path().join("cache"));
    let bin = work.path().join("usr/local/bin");
    let op = || {
        Artifact::new(&url, &sha, bin.to_str().unwrap())
            .unwrap()
            .extract(["etcd-v3.5.1-linux-amd64/etcd", "./etcd-v3.5.1-linux-amd64/etcdctl"])
            .unwrap()
            .cache(cache.clone())
    };
    // Four "hosts" share one cache: the archive is fetched and extracted once.
    let hosts = |n: usize| {
        (0..n)
            .map(|i| HostOps::new(Arc::new(LocalTransport::new(&format!("h{i}")))).with(op()))
            .collect()
    };

    let dry = runner(Mode::DryRun).run(hosts(1)).await;
    assert!(dry.success(), "{dry:#?}");
    let diffs: Vec<String> = dry.hosts[0].ops[0]
        .changes
        .iter()
        .filter_map(|c| c.diff.clone())
        .collect();
    assert_eq!(
        diffs,
        vec![
            format!("new binary file (sha256 {})", &sha256(&etcd)[..12]),
            format!("new binary file (sha256 {})", &sha256(b"\x7fELFctl\0")[..12])
        ]
    );
    assert!(!bin.exists(), "dry run installed something");

    let first = runner(Mode::Apply).run(hosts(4)).await;
    assert!(first.success(), "{first:#?}");
    assert_eq!(fs::read(bin.join("etcd")).unwrap(), etcd);
    assert_eq!(fs::read(bin.join("etcdctl")).unwrap(), b"\x7fELFctl\0");
    assert_eq!(
        fs::metadata(bin.join("etcd")).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert!(!bin.join("README.md").exists());

    let second = runner(Mode::Apply).run(hosts(2)).await;
    assert_eq!(second.totals().changed, 0, "{second:#?}");

    // A binary replaced on the host is detected by checksum and restored.
    fs::write(bin.join("etcd"), b"tampered").unwrap();
    let third = runner(Mode::Apply).run(hosts(1)).await;
    let summaries: Vec<&str> = third.hosts[0].ops[0]
        .changes
        .iter()
        .map(|c| c.summary.as_str())
        .collect();
    assert_eq!(
        summaries,
        vec![format!("update {}", bin.join("etcd").display()).as_str()]
    );
    let diff = third.hosts[0].ops[0].changes[0].diff.clone().unwrap();
    assert!(
        diff.starts_with(&format!(
            "binary file changed (sha256 {} → ",
            &sha256(b"tampered")[..12]
        )),
        "{diff}"
    );
    assert_eq!(fs::read(bin.join("etcd")).unwrap(), etcd);
}

#[tokio::test]
async fn single_file_artifact() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("tool");
    fs::write(&source, b"#!/bin/sh\necho tool\n").unwrap();
    let sha = sha256(&fs::read(&source).unwrap());
    let dest = work.path().join("opt/tool");
    let op = Artifact::new(
        &format!("file://{}", source.display()),
        &sha.to_uppercase(),
        dest.to_str().unwrap(),
    )
    .unwrap()
    .mode(0o750)
    .cache(ArtifactCache::at(work.path().join("cache")));
    let report = runner(Mode::Apply)
        .run(vec![HostOps::new(Arc::new(LocalTransport::new("h"))).with(op)])
        .await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&source).unwrap());
    assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o7777, 0o750);
    assert!(
        work.path().join("cache").join(&sha).is_file(),
        "cached under its checksum"
    );
}

#[tokio::test]
async fn wrong_checksum_is_refused_and_discarded() {
    let work = tempfile::tempdir().unwrap();
    let (url, actual) = make_release(work.path(), b"etcd", b"etcdctl");
    let wrong = "ab".repeat(32);
    let cache_dir = work.path().join("cache");
    let dest = work.path().join("bin");
    let op = Artifact::new(&url, &wrong, dest.to_str().unwrap())
        .unwrap()
        .extract(["etcd-v3.5.1-linux-amd64/etcd"])
        .unwrap()
        .cache(ArtifactCache::at(&cache_dir));
    let report = runner(Mode::Apply)
        .run(vec![HostOps::new(Arc::new(LocalTransport::new("h"))).with(op)])
        .await;
    assert!(!report.success());
    let error = report.hosts[0].ops[0].error.clone().unwrap();
    assert_eq!(
        error,
        format!("checksum mismatch for {url}: expected sha256 {wrong}, got {actual}; the file was discarded")
    );
    let cached: Vec<_> = fs::read_dir(&cache_dir).unwrap().collect();
    assert!(cached.is_empty(), "bad download left in the cache: {cached:?}");
    assert!(!dest.exists());
}

#[tokio::test]
async fn bad_artifact_inputs_get_precise_errors() {
    let work = tempfile::tempdir().unwrap();
    let err = Artifact::new("file:///x", "1234", "/usr/local/bin/x")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "\"1234\" is not a sha256 (64 hex digits) or a sha512 (128 hex digits)"
    );
    let err = Artifact::new("file:///x", &"a".repeat(64), "usr/bin/x")
        .unwrap_err()
        .to_string();
    assert_eq!(err, "invalid operation: remote path \"usr/bin/x\" is not absolute");

    let (url, sha) = make_release(work.path(), b"etcd", b"etcdctl");
    let op = Artifact::new(&url, &sha, "/usr/local/bin")
        .unwrap()
        .extract(["etcd-v3.5.1-linux-amd64/etcdutl"])
        .unwrap()
        .cache(ArtifactCache::at(work.path().join("cache")));
    let report = runner(Mode::DryRun)
        .run(vec![HostOps::new(Arc::new(LocalTransport::new("h"))).with(op)])
        .await;
    assert_eq!(
        report.hosts[0].ops[0].error.as_deref(),
        Some(format!("{url}: archive has no regular file \"etcd-v3.5.1-linux-amd64/etcdutl\"").as_str())
    );

    // The cache is content-addressed: a known sha256 is served from it whatever the URL,
    // so the missing file needs a checksum not cached yet.
    let missing = format!("file://{}/nope.tar.gz", work.path().display());
    let op = Artifact::new(&missing, &"cd".repeat(32), "/usr/local/bin/x")
        .unwrap()
        .cache(ArtifactCache::at(work.path().join("cache")));
    let report = runner(Mode::DryRun)
        .run(vec![HostOps::new(Arc::new(LocalTransport::new("h"))).with(op)])
        .await;
    let error = report.hosts[0].ops[0].error.clone().unwrap();
    assert!(
        error.starts_with(&format!("download of {missing} failed: No such file")),
        "{error}"
    );

    let err = Artifact::new("ftp://mirror/x", &sha, "/usr/local/bin/x")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "unsupported artifact URL \"ftp://mirror/x\": expected file://, http:// or https://"
    );
    let err = Artifact::new("file://relative/x", &sha, "/usr/local/bin/x")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "download of file://relative/x failed: file:// URLs need an absolute path (file:///…)"
    );
}

/// Serve `body` at /etcd.tar.gz (404 elsewhere) on loopback for `requests` requests.
fn serve_http(body: Vec<u8>, requests: usize) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let found = request_line.starts_with("GET /etcd.tar.gz ");
            let (status, payload) = if found {
                ("200 OK", body.as_slice())
            } else {
                ("404 Not Found", b"no".as_slice())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                payload.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(payload).unwrap();
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn http_downloads_are_verified_and_cached() {
    let work = tempfile::tempdir().unwrap();
    let body = b"release bytes".to_vec();
    let sha = sha256(&body);
    let base = serve_http(body.clone(), 2);
    let cache = ArtifactCache::at(work.path().join("cache"));
    let dest = work.path().join("bin/etcd");

    let missing = format!("{base}/missing");
    let op = Artifact::new(&missing, &sha, dest.to_str().unwrap())
        .unwrap()
        .cache(cache.clone());
    let report = runner(Mode::Apply)
        .run(vec![HostOps::new(Arc::new(LocalTransport::new("h"))).with(op)])
        .await;
    let error = report.hosts[0].ops[0].error.clone().unwrap();
    assert!(
        error.starts_with(&format!("download of {missing} failed: ")) && error.contains("404"),
        "{error}"
    );

    let url = format!("{base}/etcd.tar.gz");
    let op = || {
        Artifact::new(&url, &sha, dest.to_str().unwrap())
            .unwrap()
            .cache(cache.clone())
    };
    let report = runner(Mode::Apply)
        .run(vec![HostOps::new(Arc::new(LocalTransport::new("h"))).with(op())])
        .await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(fs::read(&dest).unwrap(), body);
    // The server is gone after two requests: a second run must come from the cache.
    let report = runner(Mode::Apply)
        .run(vec![HostOps::new(Arc::new(LocalTransport::new("h"))).with(op())])
        .await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.totals().changed, 0);
}

/// The local files are verified once per process, and fetched again when the local cache lost them.
#[tokio::test]
async fn a_local_cache_emptied_between_runs_is_filled_again() {
    let work = tempfile::tempdir().unwrap();
    let (url, sha) = make_release(work.path(), b"\x7fELF one", b"\x7fELF two");
    let cache_dir = work.path().join("cache");
    let bin = work.path().join("bin");
    let op = || {
        Artifact::new(&url, &sha, bin.to_str().unwrap())
            .unwrap()
            .extract(["etcd-v3.5.1-linux-amd64/etcd", "etcd-v3.5.1-linux-amd64/etcdctl"])
            .unwrap()
            .cache(ArtifactCache::at(&cache_dir))
    };
    let host = |op| vec![HostOps::new(Arc::new(LocalTransport::new("h"))).with(op)];
    assert_eq!(runner(Mode::Apply).run(host(op())).await.totals().changed, 1);
    fs::remove_dir_all(&cache_dir).unwrap();
    fs::remove_file(bin.join("etcdctl")).unwrap();
    let report = runner(Mode::Apply).run(host(op())).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.totals().changed, 1, "{report:#?}");
    assert_eq!(fs::read(bin.join("etcdctl")).unwrap(), b"\x7fELF two");
    assert!(cache_dir.join(&sha).is_file());
}
