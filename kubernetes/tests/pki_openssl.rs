//! Every certificate and kubeconfig of the control plane, checked with real tools: `openssl`
//! (subject, organization, key usage, extended key usage, SANs, chain to its CA), `sa.key`
//! against `sa.pub`, and `kubectl config view` on every kubeconfig.
//!
//! One table: each row is a credential of a control-plane host that is also a node (so every
//! credential kind appears) and what openssl must print for it. Skips when openssl or kubectl is
//! missing (scripts/setup.sh installs both).

use std::path::{Path, PathBuf};
use std::process::Command;

use capstan_endpoint::kube_pki::apiserver_request;
use capstan_kubernetes::kubeconfig::Kubeconfig;
use capstan_kubernetes::pki::{self, host_credentials, Placement, Signer, Signers};
use capstan_provisioner::pki::{CertificateAuthority, IssuedCert};

#[path = "../../provisioner/tests/support/require.rs"]
mod require;
use require::{require, tool};

fn cluster() -> capstan_inventory::Cluster {
    let text = "cluster: {name: pki}\nssh: {agent: true}\nhosts:\n\
                - {name: cp1, address: 10.0.0.11, private_address: 192.168.0.11, roles: [etcd, control_plane, node]}\n\
                - {name: cp2, address: 10.0.0.12, roles: [control_plane]}\n\
                api_endpoint: {mode: vip, address: 10.0.0.250}\n\
                kubernetes: {service_cidr: 10.32.0.0/16, cluster_domain: corp.internal}\n";
    capstan_inventory::parse_str(text, "inventory.yaml", Path::new("/inv")).unwrap()
}

fn openssl(args: &[&str]) -> String {
    let output = Command::new("openssl").args(args).output().expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// What openssl says of a certificate: subject, key usage, extended key usage, SANs.
fn describe(cert: &Path) -> String {
    let text = openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
        "-ext",
        "keyUsage,extendedKeyUsage,subjectAltName",
    ]);
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("X509v3"))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn verify(ca: &Path, cert: &Path) {
    let out = openssl(&["verify", "-CAfile", ca.to_str().unwrap(), cert.to_str().unwrap()]);
    assert!(out.trim().ends_with(": OK"), "{out}");
}

#[test]
fn every_certificate_and_kubeconfig_passes_openssl_and_kubectl() {
    if !require(&[tool("openssl", "openssl"), tool("kubectl", "kubectl")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster();
    let signers = Signers {
        cluster: capstan_endpoint::kube_pki::generate_ca("pki").unwrap(),
        front_proxy: pki::generate_front_proxy_ca("pki").unwrap(),
        etcd: capstan_etcd::pki::generate_ca("pki").unwrap(),
    };
    let ca_file = |signer: Signer| {
        let name = format!("{signer:?}-ca.crt");
        write(dir.path(), &name, signers.get(signer).cert_pem())
    };

    // The CAs themselves: self-signed, CA:TRUE, certificate signing.
    for signer in [Signer::Cluster, Signer::FrontProxy, Signer::Etcd] {
        let path = ca_file(signer);
        verify(&path, &path);
        let text = openssl(&[
            "x509",
            "-in",
            path.to_str().unwrap(),
            "-noout",
            "-ext",
            "basicConstraints,keyUsage",
        ]);
        assert!(
            text.contains("CA:TRUE") && text.contains("Certificate Sign"),
            "{signer:?}: {text}"
        );
    }

    let host = cluster.host("cp1").unwrap();
    let mut rows: Vec<(String, String)> = Vec::new();
    // The API server's serving certificate (issued by the endpoint, from the same request).
    let serving = signers.cluster.issue(&apiserver_request(&cluster)).unwrap();
    let serving_path = write(dir.path(), "apiserver.crt", &serving.cert_pem);
    verify(&ca_file(Signer::Cluster), &serving_path);
    rows.push(("apiserver.crt".into(), describe(&serving_path)));

    for credential in host_credentials(host) {
        let ca: &CertificateAuthority = signers.get(credential.signer);
        let issued: IssuedCert = ca.issue(&credential.request).unwrap();
        let name = Path::new(credential.placement.path())
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let cert_path = write(dir.path(), &format!("{name}.pem"), &issued.cert_pem);
        verify(&ca_file(credential.signer), &cert_path);
        // The key belongs to the certificate.
        let key_path = write(dir.path(), &format!("{name}.key"), &issued.key_pem);
        assert_eq!(
            openssl(&["pkey", "-in", key_path.to_str().unwrap(), "-pubout"]),
            openssl(&["x509", "-in", cert_path.to_str().unwrap(), "-noout", "-pubkey"]),
            "{name}"
        );
        if let Placement::Kubeconfig { server, .. } = &credential.placement {
            let text = Kubeconfig::new(
                &cluster.name,
                server,
                signers.cluster.cert_pem(),
                &credential.request.common_name,
                &issued,
            )
            .render()
            .unwrap();
            let path = write(dir.path(), &name, &text);
            let output = Command::new("kubectl")
                .args(["config", "view", "--raw", "-o", "json", "--kubeconfig"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let view: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(view["clusters"][0]["cluster"]["server"], server.as_str(), "{name}");
            assert_eq!(
                view["current-context"],
                format!("{}@pki", credential.request.common_name),
                "{name}"
            );
            assert_eq!(view["users"][0]["name"], credential.request.common_name.as_str());
            // The embedded certificate is the issued one, byte for byte.
            let embedded = view["users"][0]["user"]["client-certificate-data"].as_str().unwrap();
            let pem = String::from_utf8(base64_decode(embedded)).unwrap();
            assert_eq!(pem, issued.cert_pem, "{name}");
        }
        rows.push((name, describe(&cert_path)));
    }

    let table: String = rows.iter().map(|(name, text)| format!("{name}: {text}\n")).collect();
    expect_test::expect_file!["golden/pki-openssl.txt"].assert_eq(&table);

    // sa.key matches sa.pub (what the API server verifies tokens with).
    let sa = pki::generate_service_account_key().unwrap();
    let key = write(dir.path(), "sa.key", &sa.key_pem);
    let public = write(dir.path(), "sa.pub", &sa.public_pem);
    assert_eq!(
        openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]),
        std::fs::read_to_string(&public).unwrap()
    );
    assert!(openssl(&["pkey", "-pubin", "-in", public.to_str().unwrap(), "-noout", "-text"]).contains("prime256v1"));
}

fn base64_decode(text: &str) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(["base64", "-d", "-A"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    output.stdout
}
