//! Kubernetes' state in backups and restores, on real lab machines: the files the control plane
//! needs besides etcd's data (CA key pairs, service-account key pair, encryption configuration)
//! are read from a control-plane host into the age-encrypted backup, and a restore into fresh
//! machines puts them back byte for byte, root-owned, keys 0600, on every control-plane host.
//! kube binaries cannot run here, so etcd is the real datastore and the state files are made by
//! openssl on the test's machine (what the API servers would do with them is the e2e test's).
//! Needs root, the lab prerequisites, the artifact mirror, `age-keygen` and `openssl`; skips with a
//! message naming what is missing. The name contains `lab` so nextest's lab group bounds it.

use std::path::Path;

use capstan_lab::{LabGuard, UpOptions};

mod support;
use support::kube::{inventory, kube_state, put, sha256};
use support::{age_keygen, capstan_ok, mirror, remote, require, run_capstan, tool, Need};

fn needs() -> [Need; 4] {
    [
        support::lab(),
        mirror(),
        tool("age-keygen", "age"),
        tool("openssl", "openssl"),
    ]
}

/// An age identity file in `dir`, its recipient, and a file:// backup store in `dir`.
fn age_key_and_store(dir: &Path) -> (std::path::PathBuf, String, String) {
    let identity = dir.join("identity.txt");
    let recipient = age_keygen(&identity);
    (identity, recipient, format!("file://{}", dir.join("backups").display()))
}

/// A cluster on machine 0 (etcd + control plane) with the control plane's state, backed up; a
/// backup of a host holding only part of that state is refused; the restore into machines 1
/// (etcd + control plane) and 2 (control plane only) puts every file back on both, identical,
/// root-owned, with its mode; a second restore changes none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_kubernetes_state_backup_and_restore() {
    if !require(&needs()) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (identity, recipient, target) = age_key_and_store(work.path());
    let guard = LabGuard::up(UpOptions::new(format!("kst{}", std::process::id() % 10000), 3)).expect("lab up");
    let lab = guard.lab().clone();
    let old = work.path().join("old.yaml");
    let fresh = work.path().join("fresh.yaml");
    inventory(&lab, &old, &[(0, "etcd, control_plane")], "");
    inventory(&lab, &fresh, &[(1, "etcd, control_plane"), (2, "control_plane")], "");
    capstan_ok(&old, &["apply", "--only", "etcd"]);

    let state = kube_state(work.path());
    let source = lab.machines[0].name.clone();
    // Half of the state (a host whose control plane was never completed) is refused, not backed up.
    put(&lab, &source, &state[0].0, &state[0].1, state[0].2);
    let partial = run_capstan(
        Some(&old),
        &["backup", "create", "--target", &target, "-r", &recipient],
        &[],
    );
    assert_ne!(partial.code, 0, "{}", partial.stdout);
    assert!(
        partial.stderr.contains("has only part of its state") && partial.stderr.contains("/etc/kubernetes/pki/sa.key"),
        "{}",
        partial.stderr
    );
    for (path, content, mode) in &state {
        put(&lab, &source, path, content, mode);
    }
    capstan_ok(&old, &["backup", "create", "--target", &target, "-r", &recipient]);

    // The state is one more age-encrypted object: no key text in the stored bytes.
    let backups: Vec<_> = std::fs::read_dir(work.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let stored = std::fs::read(backups[0].join("state.tar.age")).expect("state.tar.age in the backup");
    assert!(stored.starts_with(b"age-encryption.org/v1"), "age-encrypted");
    for (path, content, _) in &state {
        let needle = &content[content.len() / 2..content.len() / 2 + 16];
        assert!(
            !stored.windows(16).any(|w| w == needle),
            "{path} in clear in the backup"
        );
    }
    let manifest = std::fs::read_to_string(backups[0].join("manifest.json")).unwrap();
    assert!(manifest.contains("\"state.tar.age\""), "{manifest}");

    // Restore into fresh machines.
    let restore_args = [
        "restore",
        "--from",
        "latest",
        "--identity",
        identity.to_str().unwrap(),
        "--target",
        &target,
    ];
    let restored = capstan_ok(&fresh, &restore_args);
    assert!(
        restored.stderr.contains("components' state: 7 file(s) on 2 host(s)"),
        "{}",
        restored.stderr
    );
    let check = |host: &str| {
        for (path, content, mode) in &state {
            let stat = remote(&lab, host, &format!("stat -c '%a %U %G' {path}"));
            assert_eq!(stat, format!("{mode} root root"), "{host}:{path}");
            let sum = remote(&lab, host, &format!("sha256sum {path} | cut -d' ' -f1"));
            assert_eq!(sum, sha256(content), "{host}:{path} differs from the backed-up file");
        }
    };
    for m in &lab.machines[1..3] {
        check(&m.name);
    }

    // Running the same restore again finds everything in place: none of the state files change.
    let before = remote(
        &lab,
        &lab.machines[2].name,
        "stat -c '%i %Y' /etc/kubernetes/pki/ca.key",
    );
    let again = capstan_ok(&fresh, &restore_args);
    assert_eq!(
        remote(
            &lab,
            &lab.machines[2].name,
            "stat -c '%i %Y' /etc/kubernetes/pki/ca.key"
        ),
        before,
        "{}",
        again.stderr
    );
    check(&lab.machines[2].name);
}

/// A drill of a backup with Kubernetes' state where the Kubernetes release tarballs cannot be had
/// (this machine's case; the e2e test covers the drill with them): the drill lab gets the
/// control-plane role, etcd is restored and verified, the state files are compared with the
/// backup on the drill's control-plane host, and each Kubernetes check is reported as skipped
/// naming the missing tarballs — never passed; the drill lab is torn down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_kubernetes_drill_without_release_tarballs() {
    if !require(&needs()) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (identity, recipient, target) = age_key_and_store(work.path());
    let guard = LabGuard::up(UpOptions::new(format!("kdr{}", std::process::id() % 10000), 1)).expect("lab up");
    let lab = guard.lab().clone();
    let source_inventory = work.path().join("source.yaml");
    inventory(&lab, &source_inventory, &[(0, "etcd, control_plane")], "");
    capstan_ok(&source_inventory, &["apply", "--only", "etcd"]);
    for (path, content, mode) in kube_state(work.path()) {
        put(&lab, &lab.machines[0].name, &path, &content, mode);
    }
    capstan_ok(
        &source_inventory,
        &["backup", "create", "--target", &target, "-r", &recipient],
    );
    drop(guard);

    let report = work.path().join("drill");
    let textfile = work.path().join("textfile");
    let started = std::time::Instant::now();
    let drill = support::drill(
        &target,
        &identity,
        &report,
        &[("CAPSTAN_TEXTFILE_DIR", textfile.to_str().unwrap())],
    );
    eprintln!("KUBE DRILL total {:.1}s", started.elapsed().as_secs_f64());
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(work.path().join("drill.json"))
            .unwrap_or_else(|e| panic!("no report ({e})\nstdout:\n{}\nstderr:\n{}", drill.stdout, drill.stderr)),
    )
    .unwrap();
    let checks = json["checks"].as_array().unwrap();
    let check = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {json:#}"))
    };
    // etcd restored and verified, the state files back on the drill's control-plane host.
    for name in ["every member healthy", "revision at least the backup's"] {
        assert_eq!(check(name)["ok"], true, "{json:#}");
    }
    let state = check("kubernetes: state files restored");
    assert_eq!(state["ok"], true, "{state}");
    assert!(
        state["detail"].as_str().unwrap().starts_with("7 file(s) on 1 host(s)"),
        "{state}"
    );
    // The Kubernetes checks: skipped, never passed, each naming what is missing.
    for name in ["API ready", "expected namespaces", "objects readable"] {
        let c = check(&format!("kubernetes: {name}"));
        assert_eq!(
            (c["ok"].as_bool(), c["skipped"].as_bool()),
            (Some(false), Some(true)),
            "{c}"
        );
        let detail = c["detail"].as_str().unwrap();
        assert!(
            detail.contains("kubernetes-server-linux-amd64.tar.gz") && detail.contains("CAPSTAN_KUBE_ARTIFACTS"),
            "{detail}"
        );
    }
    assert_eq!(json["success"], true, "{json:#}\n{}", drill.stderr);
    assert_eq!(drill.code, 0, "{}", drill.stderr);
    let md = std::fs::read_to_string(work.path().join("drill.md")).unwrap();
    assert!(md.starts_with("# capstan DR drill: PASSED, 3 check(s) SKIPPED"), "{md}");
    assert!(md.contains("| kubernetes: API ready | SKIPPED |"), "{md}");
    let metrics = std::fs::read_to_string(textfile.join("capstan_drill.prom")).unwrap();
    assert!(metrics.contains("capstan_drill_checks_skipped{cluster=\""), "{metrics}");
    assert!(metrics.contains("} 3\n"), "{metrics}");
    let drill_lab = json["target"].as_str().unwrap().trim_start_matches("lab ").to_string();
    assert!(
        capstan_lab::get(&drill_lab).is_err(),
        "the drill lab {drill_lab} was torn down"
    );
}
