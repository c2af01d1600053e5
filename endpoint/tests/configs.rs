//! The rendered configs are accepted by the real haproxy (`haproxy -c`) and keepalived
//! (`keepalived --config-test`), and a broken one is rejected by the same check capstan runs
//! before a reload. Needs haproxy and keepalived installed (scripts/setup.sh installs them without
//! starting them); skips naming what is missing.

#[path = "../../provisioner/tests/support/require.rs"]
mod require;

use std::path::Path;
use std::process::Command;

use capstan_endpoint::config::{
    backends, render_check_script, render_haproxy, render_keepalived, vrrp_config, HealthCheck,
};
use capstan_endpoint::kube_pki;
use capstan_inventory::Cluster;
use require::{require, tool};

fn cluster() -> Cluster {
    let text = "cluster: {name: demo}\nssh: {agent: true}\nhosts:\n\
        - {name: cp1, address: 10.0.0.11, roles: [etcd, control_plane]}\n\
        - {name: cp2, address: 10.0.0.12, roles: [etcd, control_plane]}\n\
        - {name: cp3, address: 10.0.0.13, roles: [etcd, control_plane]}\n\
        - {name: n1, address: 10.0.0.21, roles: [node]}\n\
        api_endpoint: {mode: vip, address: 10.0.0.250}\n";
    capstan_inventory::parse_str(text, "inventory.yaml", Path::new("/inv")).unwrap()
}

/// `program args... file`: whether it accepts the file, and what it said.
fn check(program: &str, args: &[&str], file: &Path) -> (bool, String) {
    let output = Command::new(program).args(args).arg(file).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[test]
fn haproxy_accepts_the_rendered_configs_and_rejects_a_broken_one() {
    if !require(&[tool("haproxy", "haproxy")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = kube_pki::generate_ca("demo").unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let cluster = cluster();
    for host in ["cp1", "n1"] {
        let text = render_haproxy(
            &cluster,
            cluster.host(host).unwrap(),
            &backends(&cluster),
            ca.cert_pem(),
            ca_file.to_str().unwrap(),
            HealthCheck::DEFAULT,
        )
        .unwrap();
        // The chroot and user exist on hosts with the package; not necessarily here.
        let text = text.replace("    chroot /var/lib/haproxy\n", "");
        let path = dir.path().join(format!("{host}.cfg"));
        std::fs::write(&path, &text).unwrap();
        let (ok, said) = check("haproxy", &["-c", "-f"], &path);
        assert!(ok, "{host}: {said}\n{text}");

        let broken = text.replace("balance leastconn", "balance leastconnections");
        std::fs::write(&path, broken).unwrap();
        let (ok, said) = check("haproxy", &["-c", "-f"], &path);
        assert!(!ok, "{host}: a broken config passed: {said}");
        assert!(said.contains("balance only supports"), "{said}");
    }
    // A CA file that is not there fails validation too (the pki phase writes it first).
    let text = render_haproxy(
        &cluster,
        cluster.host("n1").unwrap(),
        &backends(&cluster),
        ca.cert_pem(),
        "/nonexistent/ca.crt",
        HealthCheck::DEFAULT,
    )
    .unwrap()
    .replace("    chroot /var/lib/haproxy\n", "");
    let path = dir.path().join("missing-ca.cfg");
    std::fs::write(&path, text).unwrap();
    assert!(!check("haproxy", &["-c", "-f"], &path).0);
}

#[test]
fn keepalived_accepts_the_rendered_config_and_rejects_a_broken_one() {
    if !require(&[tool("keepalived", "keepalived")]) {
        return;
    }
    // keepalived refuses a check script in a directory others may write to (such as /tmp).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cluster = cluster();
    let mut config = vrrp_config(&cluster, cluster.host("cp2").unwrap(), Some("eth0"))
        .unwrap()
        .unwrap();
    let script = dir.path().join("check.sh");
    std::fs::write(&script, render_check_script().unwrap()).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    config.check_script = script.display().to_string();
    let text = render_keepalived(&config).unwrap();
    let path = dir.path().join("keepalived.conf");
    std::fs::write(&path, &text).unwrap();
    let (ok, said) = check("keepalived", &["--config-test", "-f"], &path);
    assert!(ok, "{said}\n{text}");
    assert!(!said.contains("Disabling track script"), "{said}");

    // Without its check script the instance would run unchecked: the test rejects it.
    std::fs::remove_file(&script).unwrap();
    let (ok, said) = check("keepalived", &["--config-test", "-f"], &path);
    assert!(!ok, "passed without the check script: {said}");
    std::fs::write(&script, render_check_script().unwrap()).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let broken = text.replace("virtual_router_id", "virtual_router_idd");
    std::fs::write(&path, broken).unwrap();
    let (ok, said) = check("keepalived", &["--config-test", "-f"], &path);
    assert!(!ok, "a broken config passed: {said}");
}
