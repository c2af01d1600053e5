//! `lab/mirror/add-kube-artifacts.sh`, run for real on files made here and a release table whose
//! sha512 pins are theirs: a pinned tarball lands at its upstream path with a SHA256SUMS line; a
//! tarball matching no pin, or named unlike the release it matches, is refused and nothing is
//! mirrored.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256, Sha512};

fn run(source: &Path, table: &Path, mirror: &Path) -> std::process::Output {
    Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/mirror/add-kube-artifacts.sh"))
        .arg(mirror)
        .env("CAPSTAN_KUBE_ARTIFACTS", source)
        .env("CAPSTAN_RELEASE_TABLE", table)
        .output()
        .unwrap()
}

#[test]
fn pinned_tarballs_are_mirrored_and_others_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("downloads");
    std::fs::create_dir_all(source.join("v1.99.1")).unwrap();
    let server = b"server tarball bytes".to_vec();
    let node = b"node tarball bytes".to_vec();
    std::fs::write(source.join("v1.99.1/kubernetes-server-linux-amd64.tar.gz"), &server).unwrap();
    std::fs::write(source.join("kubernetes-node-linux-amd64.tar.gz"), &node).unwrap();
    let sha512 = |b: &[u8]| hex::encode(Sha512::digest(b));
    let table = dir.path().join("table.yaml");
    std::fs::write(
        &table,
        format!(
            "etcd:\n  url: https://example/etcd-{{version}}\n  sha256:\n    amd64:\n      3.5.1: {}\n\
             kubernetes-server:\n  url: https://dl.k8s.io/v{{version}}/kubernetes-server-linux-{{arch}}.tar.gz\n  sha512:\n    amd64:\n      1.99.1: {}\n\
             kubernetes-node:\n  url: https://dl.k8s.io/v{{version}}/kubernetes-node-linux-{{arch}}.tar.gz\n  sha512:\n    amd64:\n      1.99.1: {}\n",
            "a".repeat(64),
            sha512(&server),
            sha512(&node)
        ),
    )
    .unwrap();
    let mirror = dir.path().join("mirror");
    let ok = run(&source, &table, &mirror);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    for (name, bytes) in [
        ("kubernetes-server-linux-amd64.tar.gz", &server),
        ("kubernetes-node-linux-amd64.tar.gz", &node),
    ] {
        let path = mirror.join("v1.99.1").join(name);
        assert_eq!(&std::fs::read(&path).unwrap(), bytes, "{name}");
        let sums = std::fs::read_to_string(mirror.join("SHA256SUMS")).unwrap();
        let line = format!("{}  v1.99.1/{name}", hex::encode(Sha256::digest(bytes)));
        assert!(sums.lines().any(|l| l == line), "{sums}");
    }
    // A second run finds them present.
    let again = run(&source, &table, &mirror);
    assert!(String::from_utf8_lossy(&again.stderr).contains("present"));

    // Bytes no pin knows: refused, naming what is pinned.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("kubernetes-server-linux-amd64.tar.gz"), b"tampered").unwrap();
    let refused = run(&bad, &table, &dir.path().join("mirror2"));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("matches no pinned release") && stderr.contains("kubernetes-server-1.99.1-amd64"),
        "{stderr}"
    );
    assert!(!dir.path().join("mirror2/v1.99.1").exists());

    // The node tarball under the server's name: refused.
    let renamed = dir.path().join("renamed");
    std::fs::create_dir_all(&renamed).unwrap();
    std::fs::write(renamed.join("kubernetes-server-linux-amd64.tar.gz"), &node).unwrap();
    let refused = run(&renamed, &table, &dir.path().join("mirror3"));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr)
        .contains("has the sha512 of kubernetes-node-linux-amd64.tar.gz 1.99.1"));
}
