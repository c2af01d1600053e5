//! `capstan status` and `capstan etcd credentials`: both read the CA from the members over SSH
//! and talk to etcd from the operator machine with a fresh in-memory admin certificate.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use capstan_inventory::Cluster;
use serde::Serialize;

use super::client::{error_chain, EtcdClient, EtcdEndpoint, EtcdTls, Timeouts};
use super::inspect::{admin_tls, fetch_ca, inspect_hosts, EtcdHost, InspectError};
use capstan_provisioner::pki::PkiError;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// One member's row.
#[derive(Debug, Clone, Serialize)]
pub struct MemberRow {
    pub name: String,
    pub endpoint: String,
    /// SSH to the host works.
    pub reachable: bool,
    /// A linearizable read through this member succeeded.
    pub healthy: bool,
    pub leader: bool,
    pub version: Option<String>,
    pub db_size_bytes: Option<i64>,
    pub raft_index: Option<u64>,
    pub raft_term: Option<u64>,
    /// The server certificate's notAfter (RFC 2822), read over SSH.
    pub cert_not_after: Option<String>,
    pub cert_days_left: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub cluster: String,
    pub members: Vec<MemberRow>,
    /// Members etcd lists that are not in the inventory (name or id).
    pub unknown_members: Vec<String>,
    pub healthy: bool,
}

/// (notAfter as RFC 2822, whole days left) of a PEM certificate.
pub fn cert_expiry(pem: &str, now: SystemTime) -> Option<(String, i64)> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = parsed.parse_x509().ok()?;
    let not_after = cert.validity().not_after;
    let now_secs = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs() as i64;
    let days = (not_after.timestamp() - now_secs).div_euclid(86_400);
    Some((not_after.to_rfc2822().ok()?, days))
}

fn timeouts(limit: Duration) -> Timeouts {
    let short = limit.min(Duration::from_secs(3));
    Timeouts {
        connect: short,
        request: limit,
        health: short,
        reconfig_settle: limit,
    }
}

/// Status of every inventory etcd member. Never waits longer than about `limit` per step.
pub async fn status(cluster: &Cluster, limit: Duration) -> Result<StatusReport, StatusError> {
    let (hosts, conns) = inspect_hosts(cluster, 32, Some(limit)).await?;
    let ca = fetch_ca(&hosts).await;
    conns.close_all().await;
    let ca = ca?;
    let tls = admin_tls(&ca)?;
    Ok(status_with(cluster, &hosts, &tls, limit).await)
}

async fn status_with(cluster: &Cluster, hosts: &[EtcdHost], tls: &EtcdTls, limit: Duration) -> StatusReport {
    let endpoints: Vec<EtcdEndpoint> = hosts.iter().map(EtcdHost::operator_endpoint).collect();
    let now = SystemTime::now();
    let (cluster_status, client_error) = match EtcdClient::connect_with(&endpoints, tls, timeouts(limit)).await {
        Ok(client) => match tokio::time::timeout(limit * 3, client.cluster_status()).await {
            Ok(Ok(status)) => (Some(status), None),
            Ok(Err(e)) => (None, Some(error_chain(&e))),
            Err(_) => (None, Some(format!("no answer within {}s", (limit * 3).as_secs()))),
        },
        Err(e) => (None, Some(error_chain(&e))),
    };
    let mut rows = Vec::new();
    for host in hosts {
        let endpoint = host.operator_endpoint();
        let report = cluster_status
            .as_ref()
            .and_then(|s| s.endpoints.iter().find(|e| e.endpoint == endpoint));
        let status = report.and_then(|r| r.status.as_ref());
        let expiry = host
            .probe
            .as_ref()
            .and_then(|p| p.server_cert.as_deref())
            .and_then(|pem| cert_expiry(pem, now));
        let error = host
            .connect_error
            .clone()
            .or_else(|| report.and_then(|r| r.health.error.clone()))
            .or_else(|| report.and_then(|r| r.status_error.clone()))
            .or_else(|| client_error.clone());
        rows.push(MemberRow {
            name: host.name().to_string(),
            endpoint: endpoint.to_string(),
            reachable: host.transport.is_some(),
            healthy: report.is_some_and(|r| r.health.healthy),
            leader: status.is_some_and(|s| s.leader),
            version: status.map(|s| s.version.clone()),
            db_size_bytes: status.map(|s| s.db_size),
            raft_index: status.map(|s| s.raft_index),
            raft_term: status.map(|s| s.raft_term),
            cert_not_after: expiry.as_ref().map(|(date, _)| date.clone()),
            cert_days_left: expiry.map(|(_, days)| days),
            error: if report.is_some_and(|r| r.health.healthy) && host.transport.is_some() {
                None
            } else {
                error
            },
        });
    }
    let unknown_members = cluster_status
        .as_ref()
        .map(|s| {
            s.members
                .iter()
                .filter(|m| !hosts.iter().any(|h| h.name() == m.name))
                .map(|m| {
                    if m.name.is_empty() {
                        format!("{:x} (not started)", m.id)
                    } else {
                        m.name.clone()
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let leaders = rows.iter().filter(|r| r.leader).count();
    let healthy = rows.iter().all(|r| r.healthy && r.reachable) && leaders == 1;
    StatusReport {
        cluster: cluster.name.clone(),
        members: rows,
        unknown_members,
        healthy,
    }
}

/// What `credentials` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialsWritten {
    pub dir: PathBuf,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub endpoints_file: PathBuf,
    pub endpoints: Vec<String>,
}

/// Write `ca.crt`, an admin `client.crt`/`client.key` (0600) and `endpoints` into `dir` (0700).
pub async fn write_credentials(cluster: &Cluster, dir: &Path) -> Result<CredentialsWritten, StatusError> {
    let (hosts, conns) = inspect_hosts(cluster, 32, Some(Duration::from_secs(10))).await?;
    let ca = fetch_ca(&hosts).await;
    conns.close_all().await;
    let tls = admin_tls(&ca?)?;
    let endpoints: Vec<String> = hosts.iter().map(|h| h.operator_endpoint().to_string()).collect();
    write_credential_files(dir, &tls, &endpoints)
}

fn write_credential_files(dir: &Path, tls: &EtcdTls, endpoints: &[String]) -> Result<CredentialsWritten, StatusError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StatusError::Write { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    let write = |name: &str, content: &str, mode: u32| -> Result<PathBuf, StatusError> {
        let path = dir.join(name);
        // Replace rather than truncate, so a key never exists with looser permissions.
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all(content.as_bytes()).map_err(io(&path))?;
        Ok(path)
    };
    let joined = endpoints.join(",");
    Ok(CredentialsWritten {
        dir: dir.to_path_buf(),
        ca_file: write("ca.crt", &tls.ca_cert_pem, 0o644)?,
        cert_file: write("client.crt", &tls.client_cert_pem, 0o644)?,
        key_file: write("client.key", &tls.client_key_pem, 0o600)?,
        endpoints_file: write("endpoints", &format!("{joined}\n"), 0o644)?,
        endpoints: endpoints.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_provisioner::pki::{CertKind, CertRequest, CertificateAuthority, LEAF_VALIDITY};

    #[test]
    fn expiry_of_a_fresh_certificate() {
        let ca = CertificateAuthority::generate("t").unwrap();
        let now = SystemTime::now();
        let cert = ca
            .issue_at(
                &CertRequest::member(CertKind::Server, "a", &["10.0.0.1"]),
                now,
                LEAF_VALIDITY,
            )
            .unwrap();
        let (date, days) = cert_expiry(&cert.cert_pem, now).unwrap();
        assert!((364..=365).contains(&days), "{days}");
        assert!(!date.is_empty());
        assert_eq!(cert_expiry("garbage", now), None);
    }

    #[test]
    fn credential_files_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("creds");
        let tls = EtcdTls {
            ca_cert_pem: "CA".into(),
            client_cert_pem: "CERT".into(),
            client_key_pem: "KEY".into(),
        };
        let written = write_credential_files(&out, &tls, &["https://10.0.0.1:2379".into()]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&written.key_file), 0o600);
        assert_eq!(std::fs::read_to_string(&written.key_file).unwrap(), "KEY");
        assert_eq!(
            std::fs::read_to_string(&written.endpoints_file).unwrap(),
            "https://10.0.0.1:2379\n"
        );
    }
}
