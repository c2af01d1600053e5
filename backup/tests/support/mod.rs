//! Shared test support: real etcd members and a real S3 server, plus helpers to fill etcd and
//! to build backup requests.

#![allow(dead_code)]

#[path = "../../../etcd/tests/support/etcd.rs"]
pub mod etcd;
#[path = "../../../provisioner/tests/support/require.rs"]
pub mod require;
pub mod s3;

use std::sync::Arc;

use capstan_backup::{CreateRequest, Encryption, EtcdSource, ProgressFn};
use capstan_etcd::client::EtcdTls;
use capstan_etcd::pki::BACKUP_CLIENT_CN;
use capstan_provisioner::pki::CertRequest;

use etcd::LocalCluster;

/// A source that authenticates with a `capstan-backup` client certificate, as the CLI does.
pub fn source(cluster: &LocalCluster) -> EtcdSource {
    let client = cluster
        .ca
        .issue(&CertRequest::client(BACKUP_CLIENT_CN))
        .expect("issue client cert");
    EtcdSource {
        endpoints: cluster.endpoints(),
        tls: EtcdTls {
            ca_cert_pem: cluster.ca.cert_pem().to_string(),
            client_cert_pem: client.cert_pem,
            client_key_pem: client.key_pem,
        },
    }
}

pub fn request(cluster: &LocalCluster, encryption: Encryption, progress: Option<ProgressFn>) -> CreateRequest {
    CreateRequest {
        pushed_state: None,
        cluster_name: "test".into(),
        source: source(cluster),
        encryption,
        pki_files: vec![
            ("ca.crt".into(), cluster.ca.cert_pem().as_bytes().to_vec()),
            ("ca.key".into(), cluster.ca.key_pem().as_bytes().to_vec()),
        ],
        inventory: b"cluster: {name: test}\n".to_vec(),
        state: Vec::new(),
        progress,
    }
}

/// A fresh age key pair: (identity file contents, recipient).
pub fn age_key() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    (format!("{}\n", identity.to_string().expose_secret()), recipient)
}

/// Write `megabytes` of incompressible values (1 MiB each) into etcd.
pub async fn fill(cluster: &LocalCluster, megabytes: usize) {
    let client = cluster.client().await.expect("etcd client");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for index in 0..megabytes {
        let value: Vec<u8> = (0..1024 * 1024 / 8)
            .flat_map(|_| {
                // xorshift: cheap bytes that neither etcd nor age can compress.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .collect();
        client.put(&format!("/fill/{index:05}"), &value).await.expect("put");
    }
}

pub fn write_identity(dir: &std::path::Path, name: &str, contents: &str) -> std::path::PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("write identity");
    std::io::Write::write_all(&mut file, contents.as_bytes()).expect("write identity");
    path
}

pub fn encrypted_to(recipient: &str) -> Encryption {
    Encryption::from_args(&[recipient.to_string()], false).expect("valid recipient")
}

pub type Shared<T> = Arc<T>;
