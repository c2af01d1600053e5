//! How a backup taken from the operator's machine reaches etcd: the CA is read over SSH from the
//! first reachable member that holds it and a short-lived `capstan-backup` client certificate is
//! issued in memory; the snapshot sources are the members reachable over SSH (inventory
//! addresses), so a backup works while any CA holder is up.

use capstan_etcd::client::EtcdTls;
use capstan_etcd::inspect::{fetch_ca, inspect_hosts, operator_endpoints, EtcdHost, InspectError};
use capstan_etcd::pki::BACKUP_CLIENT_CN;
use capstan_inventory::Cluster;
use capstan_provisioner::hint::Hint;
use capstan_provisioner::pki::{CertRequest, PkiError};

use crate::EtcdSource;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Inspect(InspectError),
    #[error("{source}{}", unreachable_suffix(.unreachable))]
    NoCa {
        #[source]
        source: InspectError,
        /// The members that could not be asked (each with why, when known).
        unreachable: Vec<String>,
    },
    #[error("issuing the backup client certificate: {0}")]
    Issue(#[source] PkiError),
}

fn unreachable_suffix(unreachable: &[String]) -> String {
    if unreachable.is_empty() {
        String::new()
    } else {
        format!(" (unreachable: {})", unreachable.join(", "))
    }
}

impl Hint for AccessError {
    fn hint(&self) -> Option<String> {
        match self {
            AccessError::Inspect(_) => Some("give at least one host the etcd role and run `capstan apply`".into()),
            AccessError::NoCa { .. } => Some("run `capstan apply` first, or bring a member holding the CA back".into()),
            AccessError::Issue(_) => None,
        }
    }
}

/// What [`crate::create`] needs from the cluster: where and how to reach etcd, and the PKI
/// files (the CA) that go into the backup.
pub struct OperatorAccess {
    pub source: EtcdSource,
    pub pki_files: Vec<(String, Vec<u8>)>,
}

/// Connect to the etcd members of `cluster`, read the CA and issue the backup client certificate.
pub async fn operator_access(cluster: &Cluster) -> Result<OperatorAccess, AccessError> {
    let (hosts, connections) = inspect_hosts(cluster, 8, None).await.map_err(AccessError::Inspect)?;
    let ca = fetch_ca(&hosts).await;
    connections.close_all().await;
    let ca = ca.map_err(|source| AccessError::NoCa {
        source,
        unreachable: unreachable_hosts(&hosts),
    })?;
    let client = ca
        .issue(&CertRequest::client(BACKUP_CLIENT_CN))
        .map_err(AccessError::Issue)?;
    let reachable: Vec<EtcdHost> = hosts.iter().filter(|h| h.transport.is_some()).cloned().collect();
    let source = EtcdSource {
        endpoints: operator_endpoints(&reachable).into_values().collect(),
        tls: EtcdTls {
            ca_cert_pem: ca.cert_pem().to_string(),
            client_cert_pem: client.cert_pem,
            client_key_pem: client.key_pem,
        },
    };
    let pki_files = vec![
        ("ca.crt".to_string(), ca.cert_pem().as_bytes().to_vec()),
        ("ca.key".to_string(), ca.key_pem().as_bytes().to_vec()),
    ];
    Ok(OperatorAccess { source, pki_files })
}

/// The hosts without a connection, each with why when known.
pub fn unreachable_hosts(hosts: &[EtcdHost]) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| h.transport.is_none())
        .map(|h| match &h.connect_error {
            Some(e) => format!("{} ({e})", h.name()),
            None => h.name().to_string(),
        })
        .collect()
}
