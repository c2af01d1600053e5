//! Kubernetes' state files as the lab tests make them (openssl, no kube binaries) and put them on
//! lab machines.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use capstan_kubernetes::paths::{self, BACKUP_FILES};
use capstan_lab::Lab;

use super::mirror_and_version;

/// An inventory of `machines` of `lab`, each with its roles (etcd 3.5.1 from the mirror), and
/// `extra` YAML at the end.
pub fn inventory(lab: &Lab, path: &Path, machines: &[(usize, &str)], extra: &str) {
    let mut yaml = format!(
        "cluster:\n  name: {}\nssh:\n  user: root\n  identity_file: {:?}\n  known_hosts: strict\n  known_hosts_file: {:?}\nhosts:\n",
        lab.name,
        lab.key_path.display().to_string(),
        lab.known_hosts_path.display().to_string()
    );
    for (i, roles) in machines {
        let m = &lab.machines[*i];
        yaml.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: [{roles}]\n",
            m.name, m.ip
        ));
    }
    yaml.push_str(&mirror_and_version("3.5.1"));
    yaml.push_str(extra);
    std::fs::write(path, yaml).unwrap();
}

pub fn run(command: &mut Command) -> Vec<u8> {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The control plane's state as openssl makes it: (path, content, mode), one entry for each of
/// the component's own list of what backups carry ([`BACKUP_FILES`]).
pub fn kube_state(dir: &Path) -> Vec<(String, Vec<u8>, &'static str)> {
    let mut files = Vec::new();
    for (name, cn, cert_path, key_path) in [
        ("ca", "kubernetes", paths::CA_CERT, paths::CA_KEY),
        (
            "front-proxy-ca",
            "front-proxy-ca",
            paths::FRONT_PROXY_CA_CERT,
            paths::FRONT_PROXY_CA_KEY,
        ),
    ] {
        let key = dir.join(format!("{name}.key"));
        let crt = dir.join(format!("{name}.crt"));
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "3650",
                "-subj",
            ])
            .arg(format!("/CN={cn}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt));
        files.push((cert_path.to_string(), std::fs::read(&crt).unwrap(), "644"));
        files.push((key_path.to_string(), std::fs::read(&key).unwrap(), "600"));
    }
    let sa_key = run(Command::new("openssl").args(["ecparam", "-name", "prime256v1", "-genkey", "-noout"]));
    let sa_pub = {
        let mut child = Command::new("openssl")
            .args(["ec", "-pubout"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&sa_key).unwrap();
        child.wait_with_output().unwrap().stdout
    };
    files.push((paths::SA_KEY.into(), sa_key, "600"));
    files.push((paths::SA_PUB.into(), sa_pub, "644"));
    let secret = run(Command::new("openssl").args(["rand", "-base64", "32"]));
    let config = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    \
         providers:\n      - aescbc:\n          keys:\n            - name: key1\n              secret: {}\n      - identity: {{}}\n",
        String::from_utf8(secret).unwrap().trim()
    );
    files.push((paths::ENCRYPTION_CONFIG.into(), config.into_bytes(), "600"));
    let made: Vec<&str> = files.iter().map(|(path, _, _)| path.as_str()).collect();
    assert_eq!(made, BACKUP_FILES, "the test makes every file backups carry");
    files
}

pub fn put(lab: &Lab, host: &str, path: &str, content: &[u8], mode: &str) {
    let mut child = capstan_lab::ssh_command(
        &lab.name,
        host,
        Some(&format!(
            "mkdir -p \"$(dirname {path})\" && umask 077 && cat > {path} && chmod {mode} {path}"
        )),
    )
    .unwrap()
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(content).unwrap();
    assert!(child.wait().unwrap().success(), "{host}: writing {path}");
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
