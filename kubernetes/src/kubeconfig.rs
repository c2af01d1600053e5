//! Kubeconfigs: one cluster, one user with its certificate and key embedded, one context.
//! Rendered from `templates/files/kubernetes/kubeconfig.yaml.j2`; read back (to decide whether the
//! one on a host still fits) with serde.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use capstan_provisioner::pki::IssuedCert;

/// What a kubeconfig says.
#[derive(Clone, PartialEq, Eq)]
pub struct Kubeconfig {
    pub cluster_name: String,
    pub server: String,
    pub ca_pem: String,
    pub user: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Kubeconfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubeconfig")
            .field("cluster_name", &self.cluster_name)
            .field("server", &self.server)
            .field("user", &self.user)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

#[derive(Serialize)]
struct Context<'a> {
    cluster_name: &'a str,
    context: String,
    server: &'a str,
    ca_data: String,
    user: &'a str,
    cert_data: String,
    key_data: String,
}

impl Kubeconfig {
    pub fn new(cluster_name: &str, server: &str, ca_pem: &str, user: &str, issued: &IssuedCert) -> Kubeconfig {
        Kubeconfig {
            cluster_name: cluster_name.to_string(),
            server: server.to_string(),
            ca_pem: ca_pem.to_string(),
            user: user.to_string(),
            cert_pem: issued.cert_pem.clone(),
            key_pem: issued.key_pem.clone(),
        }
    }

    pub fn render(&self) -> Result<String, capstan_templates::TemplateError> {
        capstan_templates::render(
            "kubernetes/kubeconfig.yaml",
            Context {
                cluster_name: &self.cluster_name,
                context: format!("{}@{}", self.user, self.cluster_name),
                server: &self.server,
                ca_data: STANDARD.encode(&self.ca_pem),
                user: &self.user,
                cert_data: STANDARD.encode(&self.cert_pem),
                key_data: STANDARD.encode(&self.key_pem),
            },
        )
    }

    /// Read a kubeconfig capstan wrote (the first cluster and user); `None` when it is not one.
    pub fn parse(text: &str) -> Option<Kubeconfig> {
        #[derive(Deserialize)]
        struct File {
            clusters: Vec<Named<ClusterEntry>>,
            users: Vec<Named<UserEntry>>,
        }
        #[derive(Deserialize)]
        struct Named<T> {
            name: String,
            #[serde(alias = "cluster", alias = "user")]
            inner: T,
        }
        #[derive(Deserialize)]
        struct ClusterEntry {
            server: String,
            #[serde(rename = "certificate-authority-data")]
            ca: String,
        }
        #[derive(Deserialize)]
        struct UserEntry {
            #[serde(rename = "client-certificate-data")]
            cert: String,
            #[serde(rename = "client-key-data")]
            key: String,
        }
        let file: File = serde_yaml::from_str(text).ok()?;
        let cluster = file.clusters.into_iter().next()?;
        let user = file.users.into_iter().next()?;
        let decode = |data: &str| String::from_utf8(STANDARD.decode(data.trim()).ok()?).ok();
        Some(Kubeconfig {
            cluster_name: cluster.name,
            server: cluster.inner.server,
            ca_pem: decode(&cluster.inner.ca)?,
            user: user.name,
            cert_pem: decode(&user.inner.cert)?,
            key_pem: decode(&user.inner.key)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_kubeconfig_reads_back() {
        let issued = IssuedCert {
            cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n".into(),
        };
        let config = Kubeconfig::new("demo", "https://127.0.0.1:6443", "CA PEM\n", "system:node:n1", &issued);
        let text = config.render().unwrap();
        assert_eq!(Kubeconfig::parse(&text), Some(config.clone()));
        assert!(!format!("{config:?}").contains("BBBB"));
        assert_eq!(Kubeconfig::parse("apiVersion: v1\nkind: Config\n"), None);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminKubeconfigError {
    #[error("no control-plane host reachable ({0})")]
    Unreachable(String),
    #[error("{host}: reading the Kubernetes CA: {reason}")]
    Ca { host: String, reason: String },
    #[error("the inventory has no control-plane host")]
    NoControlPlane,
    #[error("{0}")]
    Other(String),
}

impl capstan_provisioner::hint::Hint for AdminKubeconfigError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            AdminKubeconfigError::Unreachable(_) => "check SSH access with `capstan check`".into(),
            AdminKubeconfigError::Ca { .. } => "the CA is made by `capstan apply`; run it first".into(),
            AdminKubeconfigError::NoControlPlane => "give the API server hosts the control_plane role".into(),
            AdminKubeconfigError::Other(_) => return None,
        })
    }
}

/// An admin kubeconfig for the operator (user [`crate::pki::ADMIN_USER`], group
/// [`crate::pki::ADMIN_GROUP`], bound to `cluster-admin` by RBAC; never `system:masters`), with a
/// fresh one-year certificate signed by the cluster CA read from the first reachable control-plane
/// host, pointing at the API endpoint outside clients use ([`crate::pki::external_endpoint_url`]).
pub async fn admin_kubeconfig(cluster: &capstan_inventory::Cluster) -> Result<String, AdminKubeconfigError> {
    use capstan_provisioner::pki::CertRequest;

    use crate::pki::{external_endpoint_url, ADMIN_GROUP, ADMIN_USER};

    let server = external_endpoint_url(cluster).ok_or(AdminKubeconfigError::NoControlPlane)?;
    let ca = read_cluster_ca(cluster).await?;
    let issued = ca
        .issue(&CertRequest::client(ADMIN_USER).with_organization(ADMIN_GROUP))
        .map_err(|e| AdminKubeconfigError::Other(e.to_string()))?;
    Kubeconfig::new(&cluster.name, &server, ca.cert_pem(), ADMIN_USER, &issued)
        .render()
        .map_err(|e| AdminKubeconfigError::Other(e.to_string()))
}

/// The cluster CA (certificate and key) from the first reachable control-plane host that holds
/// it, over SSH; the key stays in memory.
pub async fn read_cluster_ca(
    cluster: &capstan_inventory::Cluster,
) -> Result<capstan_provisioner::pki::CertificateAuthority, AdminKubeconfigError> {
    use capstan_inventory::Role;
    use capstan_provisioner::pki::CertificateAuthority;

    use crate::paths::{CA_CERT, CA_KEY};

    if cluster.hosts_with_role(Role::ControlPlane).next().is_none() {
        return Err(AdminKubeconfigError::NoControlPlane);
    }
    let targets: Vec<_> = cluster
        .hosts_with_role(Role::ControlPlane)
        .map(capstan_provisioner::targets::ssh_target)
        .collect();
    let (connections, failures) = capstan_provisioner::pool::Connections::connect(&targets, 4).await;
    let mut last_error = failures
        .iter()
        .map(|(h, e)| format!("{h}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut ca = None;
    for host in cluster.hosts_with_role(Role::ControlPlane) {
        let Some(t) = connections.get(&host.name) else {
            continue;
        };
        let read = async {
            let cert = crate::probe::read_secret(t.as_ref(), CA_CERT).await?;
            let key = crate::probe::read_secret(t.as_ref(), CA_KEY).await?;
            Ok::<_, capstan_provisioner::ops::OpError>((cert, key))
        };
        match read.await {
            Ok((cert, key)) => {
                ca = Some(
                    CertificateAuthority::from_pem(&cert, &key).map_err(|e| AdminKubeconfigError::Ca {
                        host: host.name.clone(),
                        reason: e.to_string(),
                    }),
                );
                break;
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    connections.close_all().await;
    let ca = match ca {
        Some(ca) => ca?,
        None if last_error.is_empty() => return Err(AdminKubeconfigError::Unreachable("no connection".into())),
        None => {
            return Err(AdminKubeconfigError::Ca {
                host: "control plane".into(),
                reason: last_error,
            })
        }
    };
    Ok(ca)
}
