//! The `cluster addons` phase of `capstan apply`: once the control plane's units run, wait until
//! the API answers `/readyz` through the API endpoint (bounded), then server-side apply the
//! bootstrap objects ([`crate::addons::bootstrap_objects`]: RBAC, then CoreDNS) with the
//! break-glass credentials of the control-plane hosts (the admin kubeconfig's RBAC binding is one
//! of the objects, so it cannot be the credential that makes it).
//!
//! Each object is one record in the run's report, on the first control-plane host's line, so
//! plans, JSON and the changed counts show it like a host op: changed only when the object the
//! server returns differs from the one it held (a re-run that changes nothing reports 0
//! changed). A plan (`Mode::DryRun`) asks the server for a dry-run apply when an API server is
//! installed and answers; otherwise (a first install) it lists what would be applied and to which
//! endpoint, without contacting anything.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use capstan_inventory::{Cluster, Role};
use capstan_provisioner::phases::{Phase, PhaseContext, PhaseError};
use capstan_provisioner::report::{ChangeRecord, HostReport, OpRecord, OpStatus, RunReport};
use capstan_provisioner::runner::Mode;

use crate::addons::{bootstrap_objects, AddonObject, DnsSettings};
use crate::apply::KubeRun;
use crate::client::{KubeClient, FIELD_MANAGER};
use crate::kubeconfig::Kubeconfig;
use crate::pki::external_endpoint_url;

pub(crate) const PHASE: &str = "cluster addons";

/// How long `apply` waits for the API after the control plane's units started.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a plan asks an installed API server before saying it does not answer.
const PLAN_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The bootstrap objects and how this run reaches the API.
pub(crate) struct ApiAccess {
    /// The API endpoint's URL (VIP, external load balancer, or the first control-plane host's).
    pub(crate) endpoint: String,
    /// The break-glass kubeconfig as the control-plane hosts hold it (or will, after the
    /// control-plane phase); its server is replaced by the URL a client is made for.
    credentials: Option<Kubeconfig>,
    pub(crate) objects: Vec<AddonObject>,
    /// Some control-plane host has kube-apiserver installed (a plan may ask the API).
    api_server_installed: bool,
    /// The host whose report line carries the API's records: the first control-plane host.
    report_host: String,
    control_plane: Vec<String>,
}

impl ApiAccess {
    pub(crate) fn new(cluster: &Cluster, super_admin: Option<String>, api_server_installed: bool) -> ApiAccess {
        let control_plane: Vec<String> = cluster
            .hosts_with_role(Role::ControlPlane)
            .map(|h| h.name.clone())
            .collect();
        ApiAccess {
            endpoint: external_endpoint_url(cluster).unwrap_or_default(),
            credentials: super_admin.as_deref().and_then(Kubeconfig::parse),
            objects: bootstrap_objects(&DnsSettings::from_cluster(cluster)),
            api_server_installed,
            report_host: control_plane.first().cloned().unwrap_or_default(),
            control_plane,
        }
    }

    pub(crate) fn report_host(&self) -> &str {
        &self.report_host
    }

    /// A client of the API at `server` (the endpoint, or one API server's own port).
    pub(crate) async fn client(&self, server: &str) -> Result<KubeClient, String> {
        let mut credentials = self
            .credentials
            .clone()
            .ok_or("no control-plane host holds the break-glass kubeconfig to reach the API with")?;
        credentials.server = server.to_string();
        let text = credentials.render().map_err(|e| e.to_string())?;
        KubeClient::from_kubeconfig(&text).await.map_err(|e| e.to_string())
    }

    /// The endpoint's client once `/readyz` answers through it, at most `timeout`; the error
    /// names the endpoint and the hosts behind it.
    pub(crate) async fn ready_client(&self, timeout: Duration) -> Result<KubeClient, String> {
        let client = self.client(&self.endpoint).await?;
        client.wait_ready(timeout).await.map_err(|e| {
            format!(
                "the API at {} (kube-apiserver on {}) did not answer /readyz: {e}",
                self.endpoint,
                self.control_plane.join(", ")
            )
        })?;
        Ok(client)
    }

    /// One report record per object, on [`Self::report_host`]'s line.
    fn record(&self, records: Vec<OpRecord>, mode: Mode, elapsed: Duration) -> RunReport {
        let mut host = HostReport::new(&self.report_host);
        for record in records {
            host.push(record);
        }
        host.elapsed = elapsed;
        RunReport {
            mode,
            hosts: vec![host],
            elapsed,
        }
    }
}

/// The API path a server-side apply of `object` patches (shown with `--show-commands`).
pub(crate) fn apply_path(object: &AddonObject) -> String {
    let base = if object.group.is_empty() {
        format!("/api/{}", object.version)
    } else {
        format!("/apis/{}/{}", object.group, object.version)
    };
    let namespace = object
        .namespace
        .as_ref()
        .map(|ns| format!("/namespaces/{ns}"))
        .unwrap_or_default();
    format!(
        "PATCH {base}{namespace}/{}/{} (server-side apply, fieldManager={FIELD_MANAGER}, force)",
        object.plural, object.name
    )
}

fn object_record(
    object: &AddonObject,
    endpoint: &str,
    outcome: Result<bool, String>,
    note: &str,
    elapsed: Duration,
) -> OpRecord {
    let status = match &outcome {
        Ok(true) => OpStatus::Changed,
        Ok(false) => OpStatus::Ok,
        Err(_) => OpStatus::Failed,
    };
    let changes = if status == OpStatus::Ok {
        Vec::new()
    } else {
        vec![ChangeRecord {
            summary: format!("server-side apply {} via {endpoint}{note}", object.describe()),
            diff: None,
            commands: vec![apply_path(object)],
        }]
    };
    OpRecord {
        op: format!("api {}", object.describe()),
        status,
        changes,
        error: outcome.err(),
        elapsed,
    }
}

pub(crate) struct AddonsPhase;

impl AddonsPhase {
    async fn converge(&self, ctx: &PhaseContext<KubeRun>, mode: Mode) -> Result<(), PhaseError> {
        let api = &ctx.state.api;
        let started = Instant::now();
        let verb = if mode == Mode::Apply { "changed" } else { "would change" };
        let client = match mode {
            Mode::Apply => Some(
                api.ready_client(READY_TIMEOUT)
                    .await
                    .map_err(|e| PhaseError::failed(PHASE, e))?,
            ),
            Mode::DryRun if api.api_server_installed => match api.ready_client(PLAN_READY_TIMEOUT).await {
                Ok(client) => Some(client),
                Err(e) => {
                    ctx.say(&format!("    {e}: listing every object"));
                    None
                }
            },
            Mode::DryRun => None,
        };
        let mut records = Vec::new();
        let mut failure = None;
        for object in &api.objects {
            let began = Instant::now();
            let (outcome, note) = match &client {
                Some(client) => (
                    client
                        .apply_object(object, mode == Mode::DryRun)
                        .await
                        .map_err(|e| e.to_string()),
                    "",
                ),
                None => (Ok(true), " (once the API server answers)"),
            };
            if outcome == Ok(true) {
                ctx.say(&format!(
                    "    {}: [{verb}] {} via {}",
                    api.report_host,
                    object.describe(),
                    api.endpoint
                ));
            }
            if let Err(e) = &outcome {
                failure = Some(format!("applying {} via {}: {e}", object.describe(), api.endpoint));
            }
            records.push(object_record(object, &api.endpoint, outcome, note, began.elapsed()));
            if failure.is_some() {
                break;
            }
        }
        ctx.record(PHASE, api.record(records, mode, started.elapsed()));
        match failure {
            Some(reason) => Err(PhaseError::failed(PHASE, reason)),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Phase<KubeRun> for AddonsPhase {
    fn name(&self) -> String {
        PHASE.into()
    }
    async fn run(&self, ctx: &PhaseContext<KubeRun>) -> Result<(), PhaseError> {
        self.converge(ctx, Mode::Apply).await
    }
    async fn dry_run(&self, ctx: &PhaseContext<KubeRun>) -> Result<(), PhaseError> {
        self.converge(ctx, Mode::DryRun).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_the_object_the_endpoint_and_the_path() {
        let cluster = crate::test_cluster("");
        let access = ApiAccess::new(&cluster, None, false);
        assert_eq!(access.endpoint, "https://10.0.0.11:6443");
        let paths: Vec<String> = access.objects.iter().map(apply_path).collect();
        assert!(
            paths[0].starts_with("PATCH /apis/rbac.authorization.k8s.io/v1/clusterrolebindings/capstan:cluster-admins")
        );
        assert!(paths
            .iter()
            .any(|p| p.starts_with("PATCH /api/v1/namespaces/kube-system/services/kube-dns ")));
        assert!(paths
            .iter()
            .any(|p| p.starts_with("PATCH /apis/apps/v1/namespaces/kube-system/deployments/coredns ")));

        let object = &access.objects[1];
        let changed = object_record(object, &access.endpoint, Ok(true), "", Duration::ZERO);
        assert_eq!(changed.status, OpStatus::Changed);
        assert_eq!(changed.op, "api ClusterRoleBinding capstan:kubelet-api-admin");
        assert_eq!(
            changed.changes[0].summary,
            "server-side apply ClusterRoleBinding capstan:kubelet-api-admin via https://10.0.0.11:6443"
        );
        let same = object_record(object, &access.endpoint, Ok(false), "", Duration::ZERO);
        assert!(same.status == OpStatus::Ok && same.changes.is_empty());
        let failed = object_record(object, &access.endpoint, Err("forbidden".into()), "", Duration::ZERO);
        assert_eq!(
            (failed.status, failed.error.as_deref()),
            (OpStatus::Failed, Some("forbidden"))
        );
        let report = access.record(vec![changed, same], Mode::DryRun, Duration::ZERO);
        assert_eq!(report.hosts[0].host, "cp1");
        assert_eq!((report.totals().changed, report.totals().ok), (1, 1));
    }
}
