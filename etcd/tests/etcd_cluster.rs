//! capstan's PKI, config template and client against real etcd clusters (3 local processes,
//! mTLS everywhere), once per available etcd version (3.4 and 3.5).

#[path = "support/etcd.rs"]
mod etcd_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_etcd::client::{EtcdClient, EtcdEndpoint, EtcdError, EtcdTls};
use capstan_etcd::pki::{generate_ca, ADMIN_CLIENT_CN};
use capstan_provisioner::pki::{CertKind, CertRequest};
use etcd_support::{etcd_binary, EtcdBinary, LocalCluster};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

async fn start(binary: &EtcdBinary) -> LocalCluster {
    let cluster = match LocalCluster::start(binary, 3).await {
        Ok(cluster) => cluster,
        Err(e) => panic!("starting etcd {} cluster: {e}", binary.version),
    };
    eprintln!(
        "etcd {}: 3-member mTLS cluster healthy after {:?}",
        binary.version, cluster.startup
    );
    cluster
}

async fn forms_and_serves_over_mtls(binary: EtcdBinary) {
    let cluster = start(&binary).await;
    let client = cluster.client().await.unwrap();

    let members = client.member_list().await.unwrap();
    let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["m1", "m2", "m3"]);

    let value = format!("written-by-{}", binary.version);
    client.put("capstan/test", value.as_bytes()).await.unwrap();
    // Read back through each member individually: the write was replicated, not just accepted.
    for member in &cluster.members {
        let pinned = EtcdClient::connect(&[member.endpoint()], &cluster.admin_tls)
            .await
            .unwrap();
        assert_eq!(
            pinned.get("capstan/test").await.unwrap().as_deref(),
            Some(value.as_bytes()),
            "{}",
            member.spec.name
        );
    }
    assert_eq!(client.get("capstan/absent").await.unwrap(), None);
}

async fn refuses_clients_without_a_trusted_certificate(binary: EtcdBinary) {
    let cluster = start(&binary).await;
    let endpoint = cluster.members[0].endpoint();
    let port = cluster.members[0].spec.client_port;

    // Positive control: the same raw TLS request with the admin certificate is answered.
    let with_cert = raw_https_get(port, &cluster.admin_tls, true);
    let response = with_cert.expect("request with admin client certificate");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(&binary.version), "{response}");

    // No client certificate: the server rejects the handshake.
    let without_cert = raw_https_get(port, &cluster.admin_tls, false);
    assert!(
        without_cert.is_err(),
        "etcd answered a client without certificate: {without_cert:?}"
    );
    eprintln!("no client certificate -> {}", without_cert.unwrap_err());

    // A client certificate from another CA is refused as well.
    let foreign_ca = generate_ca("other").unwrap();
    let foreign = foreign_ca.issue(&CertRequest::client(ADMIN_CLIENT_CN)).unwrap();
    let foreign_tls = EtcdTls {
        ca_cert_pem: cluster.ca.cert_pem().to_string(),
        client_cert_pem: foreign.cert_pem,
        client_key_pem: foreign.key_pem,
    };
    assert_refused(&endpoint, &foreign_tls).await;

    // A certificate from the right CA but without clientAuth (a server certificate) is refused.
    let server = cluster
        .ca
        .issue(&CertRequest::member(CertKind::Server, "intruder", &["127.0.0.1"]))
        .unwrap();
    let server_as_client = EtcdTls {
        ca_cert_pem: cluster.ca.cert_pem().to_string(),
        client_cert_pem: server.cert_pem,
        client_key_pem: server.key_pem,
    };
    assert_refused(&endpoint, &server_as_client).await;
}

async fn assert_refused(endpoint: &EtcdEndpoint, tls: &EtcdTls) {
    let client = EtcdClient::connect(std::slice::from_ref(endpoint), tls).await.unwrap();
    match client.put("capstan/intrusion", b"x").await {
        Err(EtcdError::Rpc { .. } | EtcdError::Timeout { .. }) => {}
        other => panic!("expected the request to be refused, got {other:?}"),
    }
}

/// `GET /version` over TLS on the client port, optionally presenting the admin certificate.
fn raw_https_get(port: u16, tls: &EtcdTls, present_certificate: bool) -> Result<String, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(tls.ca_cert_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if present_certificate {
        let chain = vec![CertificateDer::from_pem_slice(tls.client_cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(tls.client_key_pem.as_bytes()).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let server_name = ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), server_name).map_err(|e| e.to_string())?;
    let socket = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    stream
        .write_all(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        // etcd closes without close_notify after `Connection: close`; keep what arrived.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e.to_string()),
        Ok(_) => {}
    }
    if response.is_empty() {
        return Err("connection closed without a response".to_string());
    }
    Ok(String::from_utf8_lossy(&response).into_owned())
}

async fn status_shows_one_leader(binary: EtcdBinary) {
    let cluster = start(&binary).await;
    let client = cluster.client().await.unwrap();
    let status = client.cluster_status().await.unwrap();

    assert_eq!(status.members.len(), 3);
    assert_eq!(status.endpoints.len(), 3);
    assert!(status.healthy, "{status:#?}");
    assert_eq!(status.leaders.len(), 1, "{status:#?}");
    let statuses: Vec<_> = status
        .endpoints
        .iter()
        .map(|e| e.status.as_ref().expect("status of every member"))
        .collect();
    assert_eq!(statuses.iter().filter(|s| s.leader).count(), 1);
    for s in &statuses {
        assert_eq!(s.version, binary.version);
        assert!(s.db_size > 0 && s.raft_term > 0 && s.raft_index > 0, "{s:?}");
        assert!(s.errors.is_empty(), "{s:?}");
        assert!(status.members.iter().any(|m| m.id == s.id && m.name == s.name), "{s:?}");
    }
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["leaders"][0], format!("{:x}", status.leaders[0]));
}

async fn member_add_and_remove(binary: EtcdBinary) {
    let mut cluster = start(&binary).await;
    let started = Instant::now();
    let (id, initial_cluster) = cluster.add_member("m4").await.unwrap();
    eprintln!(
        "etcd {}: member add + start + healthy in {:?}",
        binary.version,
        started.elapsed()
    );

    // The initial-cluster string etcd's answer produced matches what capstan's config model wrote.
    let m4 = cluster.member("m4").unwrap();
    let rendered_line = m4
        .config_yaml
        .lines()
        .find(|l| l.starts_with("initial-cluster:"))
        .unwrap();
    let mut from_etcd: Vec<&str> = initial_cluster.split(',').collect();
    from_etcd.sort_unstable();
    let mut from_config: Vec<&str> = rendered_line
        .trim_start_matches("initial-cluster: ")
        .trim_matches('"')
        .split(',')
        .collect();
    from_config.sort_unstable();
    assert_eq!(from_etcd, from_config);
    assert!(m4.config_yaml.contains("initial-cluster-state: \"existing\""));

    let client = cluster.client().await.unwrap();
    let members = client.member_list().await.unwrap();
    assert_eq!(members.len(), 4);
    assert!(
        members.iter().any(|m| m.id == id && m.name == "m4" && !m.is_learner),
        "{members:?}"
    );
    let new_member_status = client.status(&m4.endpoint()).await.unwrap();
    assert_eq!((new_member_status.id, new_member_status.name.as_str()), (id, "m4"));

    let remaining = client.member_remove(id).await.unwrap();
    assert_eq!(remaining.len(), 3);
    assert!(remaining.iter().all(|m| m.id != id));
    cluster.stop_member("m4");

    // A client over the remaining members only: m4's endpoint is gone for good.
    let client = cluster.client().await.unwrap();
    let status = client.cluster_status().await.unwrap();
    assert!(status.healthy, "{status:#?}");
    assert_eq!(status.members.len(), 3);
    client.put("capstan/after-remove", b"ok").await.unwrap();
}

macro_rules! for_each_version {
    ($($scenario:ident),* $(,)?) => {
        mod etcd_3_4 {
            $(
                #[tokio::test]
                async fn $scenario() {
                    if let Some(binary) = super::etcd_binary("3.4.") {
                        super::$scenario(binary).await;
                    }
                }
            )*
        }
        mod etcd_3_5 {
            $(
                #[tokio::test]
                async fn $scenario() {
                    if let Some(binary) = super::etcd_binary("3.5.") {
                        super::$scenario(binary).await;
                    }
                }
            )*
        }
    };
}

for_each_version!(
    forms_and_serves_over_mtls,
    refuses_clients_without_a_trusted_certificate,
    status_shows_one_leader,
    member_add_and_remove,
);
