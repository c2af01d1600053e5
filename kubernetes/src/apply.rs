//! Converging the control plane and the nodes' Kubernetes agents (`capstan apply`, and `plan`
//! as its dry run).
//!
//! Inspect first: connect to every `control_plane` and `node` host and probe each once; take the
//! cluster CA (the endpoint's), the front-proxy CA, the service-account key pair and the
//! encryption configuration from the first control-plane host holding them (or make them, on the
//! first apply), and etcd's CA from the etcd members; decide which certificates and kubeconfigs
//! need issuing ([`capstan_provisioner::pki::needs_reissue`]); resolve the release tarballs.
//! Refuse before anything changes when a host is unreachable, hosts disagree about a CA, the
//! endpoint's PKI or etcd's CA is missing, or a tarball cannot be had. Then the phases:
//!
//! 1. `binaries`: kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from the
//!    server tarball on control-plane hosts; kubelet and kube-proxy from the node tarball on nodes.
//! 2. `pki`: CA certificates, the front-proxy CA and service-account keys, the API server's client
//!    certificates, every kubeconfig, the encryption configuration (keys 0600).
//! 3. `configs`: the scheduler's, kubelet's and kube-proxy's configuration files, the audit policy.
//! 4. `control plane`: the API server, controller-manager and scheduler units, enabled and
//!    running, one control-plane host at a time (a changed file restarts its service).
//! 5. `node agents`: kubelet and kube-proxy units on the `node` hosts.

// Errors carry whole messages; a run produces a handful.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::component::{ComponentError, ComponentOutcome, RunContext};
use capstan_provisioner::facts::FactCache;
use capstan_provisioner::ops::probe_batch::prefetch_commands;
use capstan_provisioner::ops::{Artifact, Directory, File, Operation, OperationExt, Service, SystemdUnit};
use capstan_provisioner::phases::{Phase, PhaseContext, PhaseError, PhaseRunner};
use capstan_provisioner::pki::{needs_reissue, CertificateAuthority, SigningKey};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::releases::ResolvedArtifact;
use capstan_provisioner::runner::{HostOps, Mode};
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::Transport;

use crate::config;
use crate::encryption;
use crate::kubeconfig::Kubeconfig;
use crate::paths::*;
use crate::pki::{self, host_credentials, Credential, Placement, Signers};
use crate::probe::{probe_host, read_paths, read_secret, HostProbe};
use crate::release::{self, node_members, server_members};
use crate::unavailable::UnavailableArtifact;

pub(crate) const NAME: &str = "kubernetes";

fn refuse(message: impl Into<String>, hint: Option<&str>) -> ComponentError {
    ComponentError {
        component: NAME,
        message: message.into(),
        hint: hint.map(str::to_string),
    }
}

/// A file the run writes, rendered at inspection.
#[derive(Clone)]
struct Planned {
    path: String,
    content: String,
    mode: u32,
    sensitive: bool,
    /// Services restarted when it changes.
    restarts: Vec<&'static str>,
}

impl Planned {
    fn new(path: &str, content: String, mode: u32, restarts: &[&'static str]) -> Planned {
        Planned {
            path: path.to_string(),
            content,
            mode,
            sensitive: mode & 0o077 == 0,
            restarts: restarts.to_vec(),
        }
    }

    fn op(&self) -> Arc<dyn Operation> {
        let file = File::new(&self.path, self.content.as_bytes().to_vec())
            .mode(self.mode)
            .owner("root")
            .group("root")
            .sensitive(self.sensitive);
        if self.restarts.is_empty() {
            Arc::new(file)
        } else {
            Arc::new(file.notify(self.restarts.iter().copied()))
        }
    }
}

/// Where a tarball's binaries come from on this run.
#[derive(Clone)]
enum Binaries {
    Release(ResolvedArtifact),
    Unavailable(String),
}

/// One host of the run and what it gets.
struct KubeHost {
    transport: Arc<dyn Transport>,
    facts: Arc<FactCache>,
    control_plane: bool,
    node: bool,
    server: Option<Binaries>,
    node_binaries: Option<Binaries>,
    pki: Vec<Planned>,
    configs: Vec<Planned>,
    units: Vec<(String, String)>,
}

struct KubeRun {
    hosts: Vec<KubeHost>,
}

const APISERVER: &str = "kube-apiserver";
const CONTROLLER_MANAGER: &str = "kube-controller-manager";
const SCHEDULER: &str = "kube-scheduler";
const KUBELET: &str = "kubelet";
const KUBE_PROXY: &str = "kube-proxy";

/// The services a credential's file feeds.
fn restarts_for(credential: &Credential) -> &'static [&'static str] {
    match credential.placement.path() {
        CONTROLLER_MANAGER_KUBECONFIG => &[CONTROLLER_MANAGER],
        SCHEDULER_KUBECONFIG => &[SCHEDULER],
        KUBELET_KUBECONFIG => &[KUBELET],
        KUBE_PROXY_KUBECONFIG => &[KUBE_PROXY],
        ADMIN_KUBECONFIG | SUPER_ADMIN_KUBECONFIG => &[],
        _ => &[APISERVER],
    }
}

/// The credential's file(s) when the one on the host no longer fits (missing, another CA, other
/// names, expiring, or a kubeconfig for another server or CA); nothing when it does.
fn credential_files(
    cluster: &Cluster,
    signers: &Signers,
    credential: &Credential,
    probe: &HostProbe,
    now: SystemTime,
) -> Result<Vec<Planned>, ComponentError> {
    let ca = signers.get(credential.signer);
    let existing = probe.file(credential.placement.path());
    let restarts = restarts_for(credential);
    let issue = || ca.issue(&credential.request).map_err(|e| refuse(e.to_string(), None));
    match &credential.placement {
        Placement::Files { cert, key } => {
            if needs_reissue(existing, ca, &credential.request, now).is_none() {
                return Ok(Vec::new());
            }
            let issued = issue()?;
            Ok(vec![
                Planned::new(cert, issued.cert_pem, 0o644, restarts),
                Planned::new(key, issued.key_pem, 0o600, restarts),
            ])
        }
        Placement::Kubeconfig { path, server } => {
            // The cluster CA signs every kubeconfig's certificate and is the one it trusts.
            let current = existing.and_then(Kubeconfig::parse);
            let fits = current.as_ref().is_some_and(|k| {
                k.server == *server
                    && k.ca_pem == signers.cluster.cert_pem()
                    && k.user == credential.request.common_name
                    && needs_reissue(Some(&k.cert_pem), ca, &credential.request, now).is_none()
            });
            if fits {
                return Ok(Vec::new());
            }
            let config = Kubeconfig::new(
                &cluster.name,
                server,
                signers.cluster.cert_pem(),
                &credential.request.common_name,
                &issue()?,
            );
            let text = config.render().map_err(|e| refuse(e.to_string(), None))?;
            Ok(vec![Planned::new(path, text, 0o600, restarts)])
        }
    }
}

/// Converge (or, in [`Mode::DryRun`], plan) Kubernetes on `cluster`.
pub async fn converge(cluster: &Cluster, ctx: &RunContext) -> Result<ComponentOutcome, ComponentError> {
    let started = Instant::now();
    let hosts: Vec<Host> = cluster
        .hosts
        .iter()
        .filter(|h| h.has_role(Role::ControlPlane) || h.has_role(Role::Node))
        .cloned()
        .collect();
    if !hosts.iter().any(|h| h.has_role(Role::ControlPlane)) {
        return Err(refuse(
            "no host has the control_plane role: there is nowhere to run the API server",
            Some("give the API server hosts the control_plane role in the inventory"),
        ));
    }
    let targets: Vec<_> = hosts.iter().map(ssh_target).collect();
    let (connections, failures) = Connections::connect(&targets, ctx.concurrency.max(1)).await;
    if !failures.is_empty() {
        connections.close_all().await;
        let detail: Vec<String> = failures.iter().map(|(h, e)| format!("{h}: {e}")).collect();
        return Err(refuse(
            format!("cannot reach {}", detail.join("; ")),
            Some("every control_plane and node host must be reachable over SSH; check them with `capstan check`"),
        ));
    }
    let result = inspect_and_run(cluster, ctx, hosts, &connections, started).await;
    connections.close_all().await;
    result
}

async fn inspect_and_run(
    cluster: &Cluster,
    ctx: &RunContext,
    hosts: Vec<Host>,
    connections: &Connections,
    started: Instant,
) -> Result<ComponentOutcome, ComponentError> {
    let dry_run = ctx.mode == Mode::DryRun;
    let probes = futures::future::join_all(hosts.into_iter().map(|host| async move {
        let transport = connections
            .get(&host.name)
            .ok_or_else(|| refuse(format!("{}: no connection", host.name), None))?;
        let credentials = host_credentials(&host);
        let paths: Vec<&'static str> = credentials.iter().map(|c| c.placement.path()).collect();
        let probe = probe_host(transport.as_ref(), &read_paths(&paths))
            .await
            .map_err(|e| refuse(e.to_string(), None))?;
        Ok::<_, ComponentError>((host, transport, probe))
    }))
    .await;
    let probed: Vec<(Host, Arc<dyn Transport>, HostProbe)> = probes.into_iter().collect::<Result<_, _>>()?;

    let cluster_ca = held_ca(&probed, CA_CERT, CA_KEY, "Kubernetes CA").await?;
    let cluster_ca = match cluster_ca {
        Some(ca) => ca,
        None if dry_run => {
            capstan_endpoint::kube_pki::generate_ca(&cluster.name).map_err(|e| refuse(e.to_string(), None))?
        }
        None => {
            return Err(refuse(
                format!("no control-plane host holds the Kubernetes CA ({CA_CERT} and {CA_KEY})"),
                Some("the API endpoint makes it: run `capstan apply` (or `capstan apply --only endpoint`) first"),
            ))
        }
    };
    let missing_serving: Vec<&str> = probed
        .iter()
        .filter(|(h, _, p)| h.has_role(Role::ControlPlane) && p.file(APISERVER_CERT).is_none())
        .map(|(h, _, _)| h.name.as_str())
        .collect();
    if !missing_serving.is_empty() && !dry_run {
        return Err(refuse(
            format!(
                "{} lack the API server's certificate ({APISERVER_CERT})",
                missing_serving.join(", ")
            ),
            Some("the API endpoint issues it: run `capstan apply --only endpoint` first"),
        ));
    }
    let front_proxy = match held_ca(&probed, FRONT_PROXY_CA_CERT, FRONT_PROXY_CA_KEY, "front-proxy CA").await? {
        Some(ca) => ca,
        None => pki::generate_front_proxy_ca(&cluster.name).map_err(|e| refuse(e.to_string(), None))?,
    };
    let etcd = etcd_ca(cluster, ctx).await?;
    let signers = Signers {
        cluster: cluster_ca,
        front_proxy,
        etcd,
    };
    let service_account = service_account_key(&probed).await?;
    let encryption_config = encryption_config(cluster, &probed).await?;

    let arch = probed.first().map(|(_, _, p)| p.arch.clone()).unwrap_or_default();
    if let Some((host, _, probe)) = probed.iter().find(|(_, _, p)| p.arch != arch) {
        return Err(refuse(
            format!("{} is {} but other hosts are {arch}", host.name, probe.arch),
            Some("capstan installs one architecture's release per cluster"),
        ));
    }
    let (server, node) = match release::artifacts(&cluster.kubernetes.version, &arch, cluster.artifacts.mirror.as_deref()) {
        Ok((server, node)) => (Binaries::Release(server), Binaries::Release(node)),
        Err(e) if dry_run => (Binaries::Unavailable(e.to_string()), Binaries::Unavailable(e.to_string())),
        Err(e) => {
            return Err(refuse(
                format!("Kubernetes {} release tarballs: {e}", cluster.kubernetes.version),
                Some("supply the official tarballs: CAPSTAN_KUBE_ARTIFACTS=DIR lab/mirror/add-kube-artifacts.sh (see docs/kubernetes.md)"),
            ))
        }
    };

    let now = SystemTime::now();
    let mut run_hosts = Vec::new();
    for (host, transport, probe) in probed {
        let control_plane = host.has_role(Role::ControlPlane);
        let node_host = pki::runs_kubelet(&host);
        let render_error = |e: capstan_templates::TemplateError| refuse(e.to_string(), None);
        let mut pki_files = Vec::new();
        // Every host trusts the cluster CA (the endpoint writes it too; the same content).
        pki_files.push(Planned::new(
            CA_CERT,
            signers.cluster.cert_pem().to_string(),
            0o644,
            &[],
        ));
        if control_plane {
            let all = &[APISERVER, CONTROLLER_MANAGER, SCHEDULER];
            pki_files.push(Planned::new(
                FRONT_PROXY_CA_CERT,
                signers.front_proxy.cert_pem().into(),
                0o644,
                all,
            ));
            pki_files.push(Planned::new(
                FRONT_PROXY_CA_KEY,
                signers.front_proxy.key_pem().into(),
                0o600,
                &[],
            ));
            pki_files.push(Planned::new(
                ETCD_CA_CERT,
                signers.etcd.cert_pem().into(),
                0o644,
                &[APISERVER],
            ));
            pki_files.push(Planned::new(
                SA_PUB,
                service_account.public_pem.clone(),
                0o644,
                &[APISERVER],
            ));
            pki_files.push(Planned::new(
                SA_KEY,
                service_account.key_pem.clone(),
                0o600,
                &[APISERVER, CONTROLLER_MANAGER],
            ));
            pki_files.push(Planned::new(
                ENCRYPTION_CONFIG,
                encryption_config.clone(),
                0o600,
                &[APISERVER],
            ));
        }
        for credential in host_credentials(&host) {
            pki_files.extend(credential_files(cluster, &signers, &credential, &probe, now)?);
        }
        let mut configs = Vec::new();
        let mut units = Vec::new();
        if control_plane {
            if cluster.kubernetes.audit_log {
                configs.push(Planned::new(
                    AUDIT_POLICY,
                    config::audit_policy().map_err(render_error)?,
                    0o644,
                    &[APISERVER],
                ));
            }
            configs.push(Planned::new(
                SCHEDULER_CONFIG,
                config::scheduler_config(cluster, &host).map_err(render_error)?,
                0o644,
                &[SCHEDULER],
            ));
            units.push((
                config::APISERVER_UNIT.to_string(),
                config::apiserver_unit(cluster, &host).map_err(render_error)?,
            ));
            units.push((
                config::CONTROLLER_MANAGER_UNIT.to_string(),
                config::controller_manager_unit(cluster, &host).map_err(render_error)?,
            ));
            units.push((
                config::SCHEDULER_UNIT.to_string(),
                config::scheduler_unit(cluster, &host).map_err(render_error)?,
            ));
        }
        if node_host {
            configs.push(Planned::new(
                KUBELET_CONFIG,
                config::kubelet_config(cluster, &host).map_err(render_error)?,
                0o644,
                &[KUBELET],
            ));
            configs.push(Planned::new(
                KUBE_PROXY_CONFIG,
                config::kube_proxy_config(cluster, &host).map_err(render_error)?,
                0o644,
                &[KUBE_PROXY],
            ));
            units.push((
                config::KUBELET_UNIT.to_string(),
                config::kubelet_unit(cluster, &host).map_err(render_error)?,
            ));
            units.push((
                config::KUBE_PROXY_UNIT.to_string(),
                config::kube_proxy_unit(cluster, &host).map_err(render_error)?,
            ));
        }
        run_hosts.push(KubeHost {
            transport,
            facts: Arc::new(FactCache::new()),
            control_plane,
            node: node_host,
            server: control_plane.then(|| server.clone()),
            node_binaries: node_host.then(|| node.clone()),
            pki: pki_files,
            configs,
            units,
        });
    }
    let state = KubeRun { hosts: run_hosts };
    state.prefetch_probes().await;
    let phases = PhaseRunner::new()
        .phase(OpsPhase("binaries", KubeRun::binary_ops))
        .phase(OpsPhase("pki", KubeRun::pki_ops))
        .phase(OpsPhase("configs", KubeRun::config_ops))
        .phase(ControlPlanePhase)
        .phase(OpsPhase("node agents", KubeRun::node_agent_ops));
    let mut outcome = ctx.run_phases(NAME, state, phases, started).await;
    if outcome.error.is_some() {
        outcome.hint = Some("fix the failing host and run `capstan apply --only kubernetes` again".to_string());
    }
    Ok(outcome)
}

/// A CA from the first control-plane host holding both halves; every host holding its
/// certificate must hold the same one. `None` when no host has it.
async fn held_ca(
    probed: &[(Host, Arc<dyn Transport>, HostProbe)],
    cert_path: &str,
    key_path: &str,
    what: &str,
) -> Result<Option<CertificateAuthority>, ComponentError> {
    let (cert, key) = match held_pair(probed, cert_path, key_path, what).await? {
        Some(pair) => pair,
        None => return Ok(None),
    };
    CertificateAuthority::from_pem(&cert, &key)
        .map(Some)
        .map_err(|e| refuse(format!("the {what} is unusable: {e}"), None))
}

/// The public half (as probed) and the secret (read from that host) of a key pair held by the
/// first control-plane host with both; refuses when hosts disagree or only the public half
/// survives.
async fn held_pair(
    probed: &[(Host, Arc<dyn Transport>, HostProbe)],
    public_path: &str,
    secret_path: &str,
    what: &str,
) -> Result<Option<(String, String)>, ComponentError> {
    let mut publics = probed
        .iter()
        .filter_map(|(h, _, p)| p.file(public_path).map(|c| (h, c)));
    if let Some((first, public)) = publics.next() {
        if let Some((other, _)) = publics.find(|(_, c)| c != &public) {
            return Err(refuse(
                format!(
                    "hosts {} and {} hold different {what}s in {public_path}",
                    first.name, other.name
                ),
                Some("a cluster has one: remove the stray one from the host that should not have it"),
            ));
        }
    }
    let holder = probed
        .iter()
        .find(|(h, _, p)| h.has_role(Role::ControlPlane) && p.file(public_path).is_some() && p.has(secret_path));
    match holder {
        Some((_, transport, probe)) => {
            let secret = read_secret(transport.as_ref(), secret_path)
                .await
                .map_err(|e| refuse(e.to_string(), None))?;
            Ok(Some((probe.file(public_path).unwrap_or_default().to_string(), secret)))
        }
        None if probed.iter().any(|(_, _, p)| p.file(public_path).is_some()) => Err(refuse(
            format!("hosts hold the {what} ({public_path}) but no control-plane host has its key ({secret_path})"),
            Some("restore the key on a control-plane host (from a backup); a new one would break everything it signed"),
        )),
        None => Ok(None),
    }
}

async fn service_account_key(probed: &[(Host, Arc<dyn Transport>, HostProbe)]) -> Result<SigningKey, ComponentError> {
    match held_pair(probed, SA_PUB, SA_KEY, "service-account key").await? {
        Some((public, key)) => SigningKey::from_pem(&key, &public)
            .map_err(|e| refuse(format!("{SA_KEY} does not match {SA_PUB}: {e}"), None)),
        None => pki::generate_service_account_key().map_err(|e| refuse(e.to_string(), None)),
    }
}

/// The encryption configuration of the first control-plane host that has one, or a new one.
async fn encryption_config(
    cluster: &Cluster,
    probed: &[(Host, Arc<dyn Transport>, HostProbe)],
) -> Result<String, ComponentError> {
    let holder = probed
        .iter()
        .find(|(h, _, p)| h.has_role(Role::ControlPlane) && p.has(ENCRYPTION_CONFIG));
    match holder {
        Some((_, transport, _)) => read_secret(transport.as_ref(), ENCRYPTION_CONFIG)
            .await
            .map_err(|e| refuse(e.to_string(), None)),
        None => encryption::generate(cluster.kubernetes.secrets_encryption).map_err(|e| refuse(e.to_string(), None)),
    }
}

/// etcd's CA, read from the members (for the API server's etcd client certificate). A plan on a
/// cluster whose etcd does not exist yet signs with a stand-in made for the plan only.
async fn etcd_ca(cluster: &Cluster, ctx: &RunContext) -> Result<CertificateAuthority, ComponentError> {
    let inspected = capstan_etcd::inspect::inspect_hosts(cluster, ctx.concurrency.max(1), None).await;
    let result = match inspected {
        Ok((hosts, connections)) => {
            let ca = capstan_etcd::inspect::fetch_ca(&hosts).await.map_err(|e| e.to_string());
            connections.close_all().await;
            ca
        }
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(ca) => Ok(ca),
        Err(_) if ctx.mode == Mode::DryRun => {
            capstan_etcd::pki::generate_ca(&cluster.name).map_err(|e| refuse(e.to_string(), None))
        }
        Err(e) => Err(refuse(
            format!("etcd's CA is needed for the API server's etcd client certificate: {e}"),
            Some("converge etcd first: `capstan apply --only etcd`"),
        )),
    }
}

type FillOps = fn(&KubeRun, &KubeHost, &mut HostOps);

/// The phases' op lists, in phase order (for the prefetch).
const PHASE_OPS: [FillOps; 5] = [
    KubeRun::binary_ops,
    KubeRun::pki_ops,
    KubeRun::config_ops,
    KubeRun::control_plane_ops,
    KubeRun::node_agent_ops,
];

fn binaries_op(binaries: &Binaries, members: Vec<String>, restarts: &[&'static str]) -> Arc<dyn Operation> {
    let names: Vec<&str> = members.iter().map(|m| m.rsplit('/').next().unwrap_or(m)).collect();
    let installs = format!("{BIN_DIR}/{{{}}}", names.join(","));
    let unavailable = |reason: String| -> Arc<dyn Operation> {
        Arc::new(UnavailableArtifact {
            installs: installs.clone(),
            reason,
        })
    };
    match binaries {
        Binaries::Release(artifact) => {
            match Artifact::new(&artifact.url, &artifact.checksum, BIN_DIR).and_then(|a| a.extract(members.clone())) {
                Ok(op) => Arc::new(op.notify(restarts.iter().copied())),
                Err(e) => unavailable(e.to_string()),
            }
        }
        Binaries::Unavailable(reason) => unavailable(reason.clone()),
    }
}

impl KubeRun {
    fn per_host(&self, fill: FillOps, only: fn(&KubeHost) -> bool) -> Vec<HostOps> {
        self.hosts
            .iter()
            .filter(|h| only(h))
            .map(|h| {
                let mut ops = HostOps::new(h.transport.clone()).with_facts(h.facts.clone());
                fill(self, h, &mut ops);
                ops
            })
            .filter(|ops| !ops.ops.is_empty())
            .collect()
    }

    fn binary_ops(&self, h: &KubeHost, ops: &mut HostOps) {
        if let Some(server) = &h.server {
            ops.ops.push(binaries_op(
                server,
                server_members(),
                &[APISERVER, CONTROLLER_MANAGER, SCHEDULER],
            ));
        }
        if let Some(node) = &h.node_binaries {
            ops.ops.push(binaries_op(node, node_members(), &[KUBELET, KUBE_PROXY]));
        }
    }

    fn pki_ops(&self, h: &KubeHost, ops: &mut HostOps) {
        ops.push(Directory::new(CONFIG_DIR).mode(0o755).owner("root").group("root"));
        ops.push(Directory::new(PKI_DIR).mode(0o755).owner("root").group("root"));
        for file in &h.pki {
            ops.ops.push(file.op());
        }
    }

    fn config_ops(&self, h: &KubeHost, ops: &mut HostOps) {
        if h.node {
            ops.push(Directory::new(KUBELET_DIR).mode(0o700).owner("root").group("root"));
            ops.push(Directory::new(KUBE_PROXY_DIR).mode(0o755).owner("root").group("root"));
        }
        if h.control_plane && h.configs.iter().any(|c| c.path == AUDIT_POLICY) {
            ops.push(
                Directory::new("/var/log/kubernetes")
                    .mode(0o700)
                    .owner("root")
                    .group("root"),
            );
        }
        for file in &h.configs {
            ops.ops.push(file.op());
        }
    }

    fn unit_ops(h: &KubeHost, ops: &mut HostOps, services: &[&'static str]) {
        for service in services {
            let unit_name = format!("{service}.service");
            let Some((_, text)) = h.units.iter().find(|(name, _)| *name == unit_name) else {
                continue;
            };
            if let Ok(unit) = SystemdUnit::new(&unit_name, text.as_bytes().to_vec()) {
                ops.push(unit.notify([*service]));
            }
            if let Ok(service) = Service::new(service) {
                ops.push(service.enabled(true).running(true));
            }
        }
    }

    fn control_plane_ops(&self, h: &KubeHost, ops: &mut HostOps) {
        if h.control_plane {
            Self::unit_ops(h, ops, &[APISERVER, CONTROLLER_MANAGER, SCHEDULER]);
        }
    }

    fn node_agent_ops(&self, h: &KubeHost, ops: &mut HostOps) {
        if h.node {
            Self::unit_ops(h, ops, &[KUBELET, KUBE_PROXY]);
        }
    }

    /// Every phase's probes of every host, in one round trip per host, into the host's cache.
    async fn prefetch_probes(&self) {
        futures::future::join_all(self.hosts.iter().map(|h| async move {
            let mut all = HostOps::new(h.transport.clone());
            for fill in PHASE_OPS {
                fill(self, h, &mut all);
            }
            let mut seen = std::collections::HashSet::new();
            let commands: Vec<String> = all
                .ops
                .iter()
                .flat_map(|op| op.probes())
                .filter(|command| seen.insert(command.clone()))
                .collect();
            let _ = prefetch_commands(h.transport.as_ref(), &h.facts, &commands).await;
        }))
        .await;
    }
}

fn every_host(_: &KubeHost) -> bool {
    true
}

/// A phase that runs one op list per host, every host at once.
struct OpsPhase(&'static str, FillOps);

#[async_trait]
impl Phase<KubeRun> for OpsPhase {
    fn name(&self) -> String {
        self.0.into()
    }
    async fn host_ops(&self, ctx: &PhaseContext<KubeRun>) -> Result<Vec<HostOps>, PhaseError> {
        Ok(ctx.state.per_host(self.1, every_host))
    }
}

/// The control plane's services, one control-plane host at a time: a host whose API server does
/// not come up stops the rollout before the next one restarts.
struct ControlPlanePhase;

#[async_trait]
impl Phase<KubeRun> for ControlPlanePhase {
    fn name(&self) -> String {
        "control plane".into()
    }
    async fn run(&self, ctx: &PhaseContext<KubeRun>) -> Result<(), PhaseError> {
        one_host_at_a_time(ctx, &self.name()).await
    }
    async fn dry_run(&self, ctx: &PhaseContext<KubeRun>) -> Result<(), PhaseError> {
        one_host_at_a_time(ctx, &self.name()).await
    }
}

async fn one_host_at_a_time(ctx: &PhaseContext<KubeRun>, phase: &str) -> Result<(), PhaseError> {
    let mode = ctx.mode();
    for host in ctx.state.per_host(KubeRun::control_plane_ops, |h| h.control_plane) {
        ctx.run_ops(phase, vec![host], mode).await?;
    }
    Ok(())
}
