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
