//! Monitoring's credential for Kubernetes' metrics
//! ([`capstan_provisioner::component::Component::scrape_credentials`]).
//!
//! kube-apiserver, kube-controller-manager, kube-scheduler and kubelet serve `/metrics` over
//! HTTPS to authenticated, authorized clients only. Prometheus presents a client certificate for
//! user [`MONITORING_USER`], signed by the cluster CA; RBAC (ClusterRole `capstan:metrics-reader`,
//! bound to that user by the bootstrap objects) lets it read the metrics and nothing else. The
//! certificate is reissued only when it no longer fits (missing, another CA, expiring), so a
//! second `capstan apply` changes nothing. kube-proxy's metrics are plain HTTP on the node's
//! private address and need none.
//!
//! Every one of those processes serves a certificate capstan issues from the cluster CA (the API
//! server's by the endpoint, the controller-manager's, scheduler's and kubelets' by this
//! component, [`crate::pki::host_credentials`]), naming the private address Prometheus scrapes;
//! so every job verifies the server's certificate against that CA, and none skips verification.

use std::time::SystemTime;

use capstan_inventory::Cluster;
use capstan_provisioner::component::{ComponentError, ScrapeCredentials};
use capstan_provisioner::pki::{needs_reissue, CertRequest};

use crate::kubeconfig::{read_cluster_ca, AdminKubeconfigError};

/// The user Prometheus authenticates as (certificate CN, no group).
pub const MONITORING_USER: &str = "capstan-monitoring";

/// The scrape jobs ([`crate::KubernetesComponent`]'s targets) that need the credential, and of
/// them those whose serving certificate the cluster CA verifies: all of them.
pub const AUTHENTICATED_JOBS: [&str; 4] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"];
pub const VERIFIED_JOBS: [&str; 4] = AUTHENTICATED_JOBS;

/// The request for the monitoring client certificate.
pub fn monitoring_request() -> CertRequest {
    CertRequest::client(MONITORING_USER)
}

/// The credential for `current` (the monitoring hosts' certificate, if they share one): kept when
/// it still fits the cluster CA read from the control plane, otherwise a new one. `None` while no
/// control-plane host holds the CA yet (the API endpoint makes it, before monitoring converges).
pub async fn scrape_credentials(
    cluster: &Cluster,
    current: Option<&str>,
) -> Result<Option<ScrapeCredentials>, ComponentError> {
    let failed = |message: String, hint: Option<String>| ComponentError {
        component: crate::apply::NAME,
        message,
        hint,
    };
    let ca = match read_cluster_ca(cluster).await {
        Ok(ca) => ca,
        Err(AdminKubeconfigError::Ca { .. }) => return Ok(None),
        Err(e) => {
            let hint = capstan_provisioner::hint::Hint::hint(&e);
            return Err(failed(format!("monitoring's client certificate: {e}"), hint));
        }
    };
    let request = monitoring_request();
    let issued = match needs_reissue(current, &ca, &request, SystemTime::now()) {
        None => None,
        Some(_) => {
            let issued = ca
                .issue(&request)
                .map_err(|e| failed(format!("issuing monitoring's client certificate: {e}"), None))?;
            Some((issued.cert_pem, issued.key_pem))
        }
    };
    Ok(Some(ScrapeCredentials {
        jobs: AUTHENTICATED_JOBS.iter().map(|j| j.to_string()).collect(),
        verified_jobs: VERIFIED_JOBS.iter().map(|j| j.to_string()).collect(),
        ca_cert_pem: ca.cert_pem().to_string(),
        issued,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_provisioner::component::Component;

    #[test]
    fn every_https_job_is_authenticated_and_kube_proxy_is_not() {
        let cluster = crate::test_cluster("");
        for target in crate::KubernetesComponent.scrape_targets(&cluster) {
            let authenticated = AUTHENTICATED_JOBS.contains(&target.job.as_str());
            assert_eq!(authenticated, target.scheme == "https", "{target:?}");
        }
        // No HTTPS job skips verifying the server: each serves a certificate of the cluster CA.
        assert_eq!(VERIFIED_JOBS, AUTHENTICATED_JOBS);
    }

    /// Each verified job's serving certificate is the cluster CA's and names the address
    /// Prometheus scrapes (the target's host), so a `tls_config` without `insecure_skip_verify`
    /// accepts it.
    #[test]
    fn every_verified_job_serves_a_cluster_ca_certificate_naming_its_scrape_address() {
        use crate::pki::{host_credentials, node_user, Signer, CONTROLLER_MANAGER_SERVING_CN, SCHEDULER_SERVING_CN};
        use capstan_provisioner::pki::{CertKind, San};
        let cluster = crate::test_cluster("");
        let mut checked = 0;
        for target in crate::KubernetesComponent.scrape_targets(&cluster) {
            if !VERIFIED_JOBS.contains(&target.job.as_str()) {
                continue;
            }
            let (address, _port) = target.address.rsplit_once(':').unwrap();
            let host = cluster
                .hosts
                .iter()
                .find(|h| h.private_address == address)
                .unwrap_or_else(|| panic!("{target:?}: no host has that address"));
            let request = match target.job.as_str() {
                // The endpoint issues it from the cluster CA.
                "kube-apiserver" => capstan_endpoint::kube_pki::apiserver_request(&cluster),
                job => {
                    let cn = match job {
                        "kube-controller-manager" => CONTROLLER_MANAGER_SERVING_CN.to_string(),
                        "kube-scheduler" => SCHEDULER_SERVING_CN.to_string(),
                        _ => node_user(&host.name),
                    };
                    let credential = host_credentials(host)
                        .into_iter()
                        .find(|c| c.request.common_name == cn && c.request.kind == CertKind::Server)
                        .unwrap_or_else(|| panic!("{target:?}: no serving certificate"));
                    assert_eq!(credential.signer, Signer::Cluster, "{target:?}");
                    credential.request
                }
            };
            assert_eq!(request.kind, CertKind::Server, "{target:?}");
            let scraped = San::from_host(address);
            assert!(request.sans.contains(&scraped), "{target:?}: {:?}", request.sans);
            checked += 1;
        }
        assert_eq!(checked, 3 * 3 + 2, "every HTTPS target of the test cluster");
    }

    #[test]
    fn a_fitting_certificate_is_kept_and_another_cas_is_replaced() {
        let ca = capstan_endpoint::kube_pki::generate_ca("demo").unwrap();
        let issued = ca.issue(&monitoring_request()).unwrap();
        let now = SystemTime::now();
        assert_eq!(
            needs_reissue(Some(&issued.cert_pem), &ca, &monitoring_request(), now),
            None
        );
        let other = capstan_endpoint::kube_pki::generate_ca("other").unwrap();
        assert!(needs_reissue(Some(&issued.cert_pem), &other, &monitoring_request(), now).is_some());
        assert!(needs_reissue(None, &ca, &monitoring_request(), now).is_some());
    }
}
