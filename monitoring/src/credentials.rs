//! Client credentials for targets that authenticate their scrapers
//! ([`Component::scrape_credentials`]): each component's CA and client certificate go to every
//! monitoring host under [`TLS_DIR`]`/<component>/` (the key 0600, owned by the prometheus user,
//! the only one that reads it), and the component's jobs get a `tls_config` naming them.
//!
//! The certificate the monitoring hosts already share is handed back to the component, which keeps
//! it while it fits, so re-running `apply` changes nothing; a host without it (a new replica) gets
//! a new one on every host.

use std::sync::Arc;

use capstan_inventory::Cluster;
use capstan_provisioner::component::{Component, ComponentError, ScrapeCredentials};
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{run_checked, Directory, File, OpError};
use capstan_provisioner::runner::HostOps;
use capstan_provisioner::transport::Transport;
use serde::Serialize;

use crate::config::{ScrapeJob, PROMETHEUS_USER};

/// Where the credentials live on monitoring hosts, one directory per component.
pub const TLS_DIR: &str = "/etc/prometheus/tls";

/// The files of one component's credential on a monitoring host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobTls {
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    /// The target's serving certificate is self-signed: not verified against `ca_file`.
    pub insecure_skip_verify: bool,
}

/// One component's credential, as gathered for this run.
#[derive(Debug, Clone)]
pub struct ComponentCredential {
    pub component: &'static str,
    pub credentials: ScrapeCredentials,
}

impl ComponentCredential {
    fn dir(&self) -> String {
        format!("{TLS_DIR}/{}", self.component)
    }

    /// The `tls_config` of `job`, when this credential covers it.
    pub fn job_tls(&self, job: &str) -> Option<JobTls> {
        if !self.credentials.jobs.iter().any(|j| j == job) {
            return None;
        }
        let dir = self.dir();
        Some(JobTls {
            ca_file: format!("{dir}/ca.crt"),
            cert_file: format!("{dir}/client.crt"),
            key_file: format!("{dir}/client.key"),
            insecure_skip_verify: !self.credentials.verified_jobs.iter().any(|j| j == job),
        })
    }

    /// The files on a monitoring host: the CA always, the certificate and key when new.
    pub fn ops(&self, ops: &mut HostOps) {
        let dir = self.dir();
        ops.push(Directory::new(TLS_DIR).mode(0o755).owner("root").group("root"));
        ops.push(Directory::new(&dir).mode(0o750).owner("root").group(PROMETHEUS_USER));
        ops.push(
            File::new(&format!("{dir}/ca.crt"), self.credentials.ca_cert_pem.clone())
                .mode(0o644)
                .owner("root")
                .group("root"),
        );
        if let Some((cert, key)) = &self.credentials.issued {
            ops.push(
                File::new(&format!("{dir}/client.crt"), cert.clone())
                    .mode(0o644)
                    .owner("root")
                    .group("root"),
            );
            ops.push(
                File::new(&format!("{dir}/client.key"), key.clone())
                    .mode(0o600)
                    .owner(PROMETHEUS_USER)
                    .group(PROMETHEUS_USER)
                    .sensitive(true),
            );
        }
    }
}

/// Sets each job's `tls_config` from the credentials covering it.
pub fn apply_to_jobs(jobs: &mut [ScrapeJob], credentials: &[ComponentCredential]) {
    for job in jobs {
        job.tls = credentials.iter().find_map(|c| c.job_tls(&job.name));
    }
}

/// The certificate at `dir/client.crt` when its key is there too (`None` otherwise).
async fn current_certificate(t: &dyn Transport, dir: &str) -> Result<Option<String>, OpError> {
    let cert = quote(&format!("{dir}/client.crt"));
    let key = quote(&format!("{dir}/client.key"));
    let output = run_checked(t, &format!("if [ -f {cert} ] && [ -f {key} ]; then cat {cert}; fi")).await?;
    let text = output.stdout_str().to_string();
    Ok((!text.trim().is_empty()).then_some(text))
}

/// Every enabled component's credential, given the monitoring hosts' transports: the
/// certificate they share (if every one has the same) is offered for keeping.
pub async fn gather(
    cluster: &Cluster,
    components: &[&dyn Component],
    monitoring_hosts: &[Arc<dyn Transport>],
) -> Result<Vec<ComponentCredential>, CredentialError> {
    let mut gathered = Vec::new();
    for component in components.iter().filter(|c| c.enabled(cluster)) {
        let dir = format!("{TLS_DIR}/{}", component.name());
        let mut seen = Vec::new();
        for t in monitoring_hosts {
            seen.push(
                current_certificate(t.as_ref(), &dir)
                    .await
                    .map_err(CredentialError::Probe)?,
            );
        }
        let shared = match seen.split_first() {
            Some((first, rest)) if rest.iter().all(|c| c == first) => first.clone(),
            _ => None,
        };
        if let Some(credentials) = component
            .scrape_credentials(cluster, shared.as_deref())
            .await
            .map_err(CredentialError::Component)?
        {
            gathered.push(ComponentCredential {
                component: component.name(),
                credentials,
            });
        }
    }
    Ok(gathered)
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("reading the current scrape credentials: {0}")]
    Probe(OpError),
    #[error(transparent)]
    Component(ComponentError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(job: &str, address: &str, scheme: &'static str) -> capstan_provisioner::component::ScrapeTarget {
        capstan_provisioner::component::ScrapeTarget {
            job: job.into(),
            address: address.into(),
            scheme,
            path: "/metrics",
        }
    }

    /// Kubernetes' credential as its component hands it over (every HTTPS job verified).
    fn kubernetes_credential() -> ComponentCredential {
        use capstan_kubernetes::monitoring::{AUTHENTICATED_JOBS, VERIFIED_JOBS};
        ComponentCredential {
            component: "kubernetes",
            credentials: ScrapeCredentials {
                jobs: AUTHENTICATED_JOBS.iter().map(|j| j.to_string()).collect(),
                verified_jobs: VERIFIED_JOBS.iter().map(|j| j.to_string()).collect(),
                ca_cert_pem: "CA".into(),
                issued: None,
            },
        }
    }

    #[test]
    fn covered_jobs_get_the_files_and_every_kubernetes_job_checks_the_server() {
        let mut jobs = crate::config::scrape_jobs(&[
            target("kube-apiserver", "10.0.0.1:6444", "https"),
            target("kube-controller-manager", "10.0.0.1:10257", "https"),
            target("kube-scheduler", "10.0.0.1:10259", "https"),
            target("kubelet", "10.0.0.1:10250", "https"),
            target("kube-proxy", "10.0.0.1:10249", "http"),
        ])
        .unwrap();
        apply_to_jobs(&mut jobs, &[kubernetes_credential()]);
        let api = jobs[0].tls.as_ref().unwrap();
        assert_eq!(api.key_file, "/etc/prometheus/tls/kubernetes/client.key");
        assert_eq!(api.ca_file, "/etc/prometheus/tls/kubernetes/ca.crt");
        for job in &jobs[..4] {
            let tls = job
                .tls
                .as_ref()
                .unwrap_or_else(|| panic!("{}: no tls_config", job.name));
            assert!(!tls.insecure_skip_verify, "{} skips verification", job.name);
        }
        assert_eq!(jobs[4].tls, None);
    }

    #[test]
    fn a_job_the_components_ca_does_not_sign_skips_verification() {
        let mut jobs = crate::config::scrape_jobs(&[
            target("signed", "10.0.0.1:1", "https"),
            target("self-signed", "10.0.0.1:2", "https"),
        ])
        .unwrap();
        let credential = ComponentCredential {
            component: "other",
            credentials: ScrapeCredentials {
                jobs: vec!["signed".into(), "self-signed".into()],
                verified_jobs: vec!["signed".into()],
                ca_cert_pem: "CA".into(),
                issued: None,
            },
        };
        apply_to_jobs(&mut jobs, &[credential]);
        assert!(!jobs[0].tls.as_ref().unwrap().insecure_skip_verify);
        assert!(jobs[1].tls.as_ref().unwrap().insecure_skip_verify);
    }
}
