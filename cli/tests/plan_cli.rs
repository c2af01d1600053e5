//! `capstan plan/apply --only`: the cluster plan refuses names it cannot run, before connecting
//! to any host (the inventory's addresses are unroutable documentation addresses).

mod support;

use support::run_capstan;

fn inventory(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::write(
        dir.join("id_ed25519"),
        "not a key; never read: --only is checked first\n",
    )
    .unwrap();
    let path = dir.join("inventory.yaml");
    std::fs::write(
        &path,
        "cluster:\n  name: only\nssh:\n  identity_file: ./id_ed25519\nhosts:\n\
         \x20 - name: a\n    address: 192.0.2.1\n    roles: [etcd]\n",
    )
    .unwrap();
    path
}

#[test]
fn only_rejects_unknown_and_not_enabled_components() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = inventory(dir.path());

    let unknown = run_capstan(Some(&inventory), &["plan", "--only", "etc"], &[]);
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    assert!(
        unknown
            .stderr
            .contains("unknown component \"etc\"; capstan knows: etcd"),
        "{}",
        unknown.stderr
    );
    assert!(unknown.stderr.contains("hint:"), "{}", unknown.stderr);

    let not_enabled = run_capstan(Some(&inventory), &["apply", "--only", "etcd,kubernetes"], &[]);
    assert_eq!(not_enabled.code, 1, "{}", not_enabled.stderr);
    assert!(
        not_enabled
            .stderr
            .contains("the inventory does not enable kubernetes: no host has role control_plane or node"),
        "{}",
        not_enabled.stderr
    );
    assert!(not_enabled.stdout.is_empty(), "{}", not_enabled.stdout);
}
