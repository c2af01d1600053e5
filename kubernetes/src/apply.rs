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
//! 0. `upgrade`, only when installed components run another version than the inventory's
//!    (`crate::upgrade_apply`): checked against the skew policy at inspection (refused before
//!    anything changes), then backup → API servers one at a time → controller-managers and
//!    schedulers → nodes in batches.
//! 1. `control plane`, one control-plane host at a time, stopping at the first failure: the
//!    binaries (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) from the server
//!    tarball; the CA certificates, the front-proxy CA and service-account keys, the API server's
//!    client certificates, the control plane's kubeconfigs and the encryption configuration (keys
//!    0600); the scheduler's config and the audit policy; the units, enabled and running.
//! 2. `node agents`, the node-only hosts at once, then control-plane hosts that are also nodes
//!    one at a time: kubelet and kube-proxy from the node tarball, their kubeconfigs and configs,
//!    their units.
//!
//! 3. `cluster addons` (`crate::addons_apply`): wait for `/readyz` through the API endpoint,
//!    then server-side apply the bootstrap RBAC and CoreDNS.
//!
//! Each host's part of a phase is one op list, so a changed file or binary restarts the services
//! that read it at the list's end, after their units exist; and a change that restarts an API
//! server never reaches the next control-plane host while the previous one failed.

// Errors carry whole messages; a run produces a handful.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use capstan_endpoint::hosts::{connect_kube_hosts, KubeHostsError, UNREACHABLE_HINT};
use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::component::{ComponentError, ComponentOutcome, RunContext};
use capstan_provisioner::facts::FactCache;
use capstan_provisioner::ops::probe_batch::prefetch_ops;
use capstan_provisioner::ops::{Artifact, Directory, File, Operation, OperationExt, Service, SystemdUnit};
use capstan_provisioner::phases::{Phase, PhaseContext, PhaseError, PhaseRunner};
use capstan_provisioner::pki::{locate_pair, needs_reissue, CertificateAuthority, PairCopy, PairNames, SigningKey};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::releases::ResolvedArtifact;
use capstan_provisioner::runner::{HostOps, Mode};
use capstan_provisioner::transport::Transport;

use crate::addons_apply::{AddonsPhase, ApiAccess};
use crate::config;
use crate::encryption;
use crate::kubeconfig::Kubeconfig;
use crate::paths::*;
use crate::pki::{self, host_credentials, Credential, Placement, Signers};
use crate::probe::{probe_host, read_paths, read_secret, HostProbe};
use crate::release::{self, node_members, server_members};
use crate::unavailable::UnavailableArtifact;
use crate::upgrade_apply::{inspect_versions, UpgradePhase, UpgradeWork};

pub(crate) const NAME: &str = "kubernetes";

pub(crate) fn refuse(message: impl Into<String>, hint: Option<&str>) -> ComponentError {
    ComponentError {
        component: NAME,
        message: message.into(),
        hint: hint.map(str::to_string),
    }
}

/// Which phase writes a file: the control plane's or the node agents'.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    ControlPlane,
    Node,
}

/// A file the run writes, rendered at inspection.
#[derive(Clone)]
struct Planned {
    part: Part,
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
            part: if restarts.iter().any(|s| [KUBELET, KUBE_PROXY].contains(s)) {
                Part::Node
            } else {
                Part::ControlPlane
            },
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
pub(crate) enum Binaries {
    Release(ResolvedArtifact),
    Unavailable(String),
}

/// One host of the run and what it gets.
pub(crate) struct KubeHost {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) transport: Arc<dyn Transport>,
    facts: Arc<FactCache>,
    pub(crate) control_plane: bool,
    pub(crate) node: bool,
    server: Option<Binaries>,
    node_binaries: Option<Binaries>,
    pki: Vec<Planned>,
    configs: Vec<Planned>,
    units: Vec<(String, String)>,
}

pub(crate) struct KubeRun {
    pub(crate) cluster: Cluster,
    pub(crate) hosts: Vec<KubeHost>,
    pub(crate) server: Binaries,
    pub(crate) node: Binaries,
    /// The bootstrap objects and how to reach the API (the `cluster addons` phase).
    pub(crate) api: ApiAccess,
    /// A version change of installed components (the `upgrade` phase), checked against the
    /// skew policy at inspection.
    pub(crate) upgrade: Option<UpgradeWork>,
}

pub(crate) const APISERVER: &str = "kube-apiserver";
pub(crate) const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub(crate) const SCHEDULER: &str = "kube-scheduler";
pub(crate) const KUBELET: &str = "kubelet";
pub(crate) const KUBE_PROXY: &str = "kube-proxy";

/// The services a credential's file feeds.
fn restarts_for(credential: &Credential) -> &'static [&'static str] {
    match credential.placement.path() {
        CONTROLLER_MANAGER_KUBECONFIG | CONTROLLER_MANAGER_SERVING_CERT => &[CONTROLLER_MANAGER],
        SCHEDULER_KUBECONFIG | SCHEDULER_SERVING_CERT => &[SCHEDULER],
        KUBELET_KUBECONFIG | KUBELET_SERVING_CERT => &[KUBELET],
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
    let (hosts, connections) = connect_kube_hosts(cluster, ctx.concurrency)
        .await
        .map_err(|e| match e {
            KubeHostsError::NoControlPlane => refuse(
                "no host has the control_plane role: there is nowhere to run the API server",
                Some("give the API server hosts the control_plane role in the inventory"),
            ),
            KubeHostsError::Unreachable(detail) => {
                refuse(format!("cannot reach {}", detail.join("; ")), Some(UNREACHABLE_HINT))
            }
        })?;
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
    let upgrade = inspect_versions(cluster, &probed).await?;

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
    let mut super_admin: Option<String> = None;
    for (host, transport, probe) in probed {
        let control_plane = host.has_role(Role::ControlPlane);
        let node_host = pki::runs_kubelet(&host);
        let render_error = |e: capstan_templates::TemplateError| refuse(e.to_string(), None);
        let mut pki_files = Vec::new();
        // Every host trusts the cluster CA (the endpoint writes it too; the same content).
        if control_plane {
            pki_files.push(Planned::new(
                CA_CERT,
                signers.cluster.cert_pem().to_string(),
                0o644,
                &[],
            ));
        }
        if node_host {
            pki_files.push(Planned::new(
                CA_CERT,
                signers.cluster.cert_pem().to_string(),
                0o644,
                &[KUBELET],
            ));
        }
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
        if control_plane && super_admin.is_none() {
            // What the host will hold once the control-plane phase ran: the new file, or the one
            // there that fits.
            super_admin = pki_files
                .iter()
                .find(|p| p.path == SUPER_ADMIN_KUBECONFIG)
                .map(|p| p.content.clone())
                .or_else(|| probe.file(SUPER_ADMIN_KUBECONFIG).map(String::from));
        }
        let mut configs = Vec::new();
        let mut units = Vec::new();
        let render_file = |(path, render, restarts): &config::ConfigFile| {
            render(cluster, &host)
                .map(|text| Planned::new(path, text, 0o644, restarts))
                .map_err(render_error)
        };
        let render_unit = |(name, render): &(&str, config::Render)| {
            render(cluster, &host)
                .map(|text| (name.to_string(), text))
                .map_err(render_error)
        };
        if control_plane {
            for file in config::CONTROL_PLANE_CONFIGS
                .iter()
                .filter(|(path, _, _)| *path != AUDIT_POLICY || cluster.kubernetes.audit_log)
            {
                configs.push(render_file(file)?);
            }
            for unit in &config::CONTROL_PLANE_UNITS {
                units.push(render_unit(unit)?);
            }
        }
        if node_host {
            for file in &config::NODE_CONFIGS {
                configs.push(render_file(file)?);
            }
            for unit in &config::NODE_UNITS {
                units.push(render_unit(unit)?);
            }
        }
        run_hosts.push(KubeHost {
            name: host.name.clone(),
            address: host.address.clone(),
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
    let api = ApiAccess::new(cluster, super_admin, upgrade.api_server_installed);
    let state = KubeRun {
        cluster: cluster.clone(),
        hosts: run_hosts,
        server,
        node,
        api,
        upgrade: upgrade.work,
    };
    state.prefetch_probes().await;
    let mut phases = PhaseRunner::new();
    if state.upgrade.is_some() {
        phases = phases.phase(UpgradePhase);
    }
    let phases = phases
        .phase(OpsPhase("control plane", KubeRun::control_plane_ops))
        .phase(OpsPhase("node agents", KubeRun::node_agent_ops))
        .phase(AddonsPhase);
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
    let copies: Vec<PairCopy> = probed
        .iter()
        .map(|(h, _, p)| PairCopy {
            host: &h.name,
            public: p.file(public_path),
            has_secret: p.has(secret_path),
            keeps_secret: h.has_role(Role::ControlPlane),
        })
        .collect();
    let names = PairNames {
        what,
        public_path,
        secret_path,
        keeper: "control-plane host",
        new_one_breaks: "break everything it signed",
    };
    match locate_pair(&copies, &names).map_err(|r| refuse(r.message, Some(&r.hint)))? {
        Some(i) => {
            let (_, transport, probe) = &probed[i];
            let secret = read_secret(transport.as_ref(), secret_path)
                .await
                .map_err(|e| refuse(e.to_string(), None))?;
            Ok(Some((probe.file(public_path).unwrap_or_default().to_string(), secret)))
        }
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
const PHASE_OPS: [FillOps; 2] = [KubeRun::control_plane_ops, KubeRun::node_agent_ops];

pub(crate) fn binaries_op(binaries: &Binaries, members: Vec<String>, restarts: &[&'static str]) -> Arc<dyn Operation> {
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

    fn files(h: &KubeHost, part: Part, ops: &mut HostOps) {
        for file in h.pki.iter().chain(&h.configs).filter(|f| f.part == part) {
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

    fn directories(ops: &mut HostOps, dirs: &[(&str, u32)]) {
        for (path, mode) in dirs {
            ops.push(Directory::new(path).mode(*mode).owner("root").group("root"));
        }
    }

    /// A control-plane host's whole list: binaries, PKI, configs, units, services. One list, so
    /// the restarts its changes call for run at its end, once the units exist and run.
    fn control_plane_ops(&self, h: &KubeHost, ops: &mut HostOps) {
        let Some(server) = h.server.as_ref().filter(|_| h.control_plane) else {
            return;
        };
        ops.ops.push(binaries_op(
            server,
            server_members(),
            &[APISERVER, CONTROLLER_MANAGER, SCHEDULER],
        ));
        Self::directories(ops, &[(CONFIG_DIR, 0o755), (PKI_DIR, 0o755)]);
        if h.configs.iter().any(|c| c.path == AUDIT_POLICY) {
            Self::directories(ops, &[("/var/log/kubernetes", 0o700)]);
        }
        Self::files(h, Part::ControlPlane, ops);
        Self::unit_ops(h, ops, &[APISERVER, CONTROLLER_MANAGER, SCHEDULER]);
    }

    /// A node's whole list: binaries, kubeconfigs, configs, units, services.
    fn node_agent_ops(&self, h: &KubeHost, ops: &mut HostOps) {
        let Some(node) = h.node_binaries.as_ref().filter(|_| h.node) else {
            return;
        };
        ops.ops.push(binaries_op(node, node_members(), &[KUBELET, KUBE_PROXY]));
        Self::directories(
            ops,
            &[
                (CONFIG_DIR, 0o755),
                (PKI_DIR, 0o755),
                (KUBELET_DIR, 0o700),
                (KUBE_PROXY_DIR, 0o755),
            ],
        );
        Self::files(h, Part::Node, ops);
        Self::unit_ops(h, ops, &[KUBELET, KUBE_PROXY]);
    }

    /// Every phase's probes of every host, in one round trip per host, into the host's cache.
    async fn prefetch_probes(&self) {
        futures::future::join_all(self.hosts.iter().map(|h| async move {
            let mut all = HostOps::new(h.transport.clone());
            for fill in PHASE_OPS {
                fill(self, h, &mut all);
            }
            prefetch_ops(h.transport.as_ref(), &h.facts, &all.ops).await;
        }))
        .await;
    }
}

/// A phase: one op list per host. The node-only hosts all at once, then the control-plane hosts
/// one at a time (a file that restarts an API server, or a unit, never reaches the next
/// control-plane host when the previous one failed), stopping at the first failure.
struct OpsPhase(&'static str, FillOps);

impl OpsPhase {
    async fn rolling(&self, ctx: &PhaseContext<KubeRun>) -> Result<(), PhaseError> {
        let mode = ctx.mode();
        let nodes = ctx.state.per_host(self.1, |h| !h.control_plane);
        if !nodes.is_empty() {
            ctx.run_ops(self.0, nodes, mode).await?;
        }
        for host in ctx.state.per_host(self.1, |h| h.control_plane) {
            ctx.run_ops(self.0, vec![host], mode).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Phase<KubeRun> for OpsPhase {
    fn name(&self) -> String {
        self.0.into()
    }
    async fn run(&self, ctx: &PhaseContext<KubeRun>) -> Result<(), PhaseError> {
        self.rolling(ctx).await
    }
    async fn dry_run(&self, ctx: &PhaseContext<KubeRun>) -> Result<(), PhaseError> {
        self.rolling(ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Signer;

    fn signers() -> Signers {
        Signers {
            cluster: capstan_endpoint::kube_pki::generate_ca("demo").unwrap(),
            front_proxy: pki::generate_front_proxy_ca("demo").unwrap(),
            etcd: capstan_etcd::pki::generate_ca("demo").unwrap(),
        }
    }

    /// The files written for `credential` when the host holds `probe`, as paths.
    fn written(signers: &Signers, credential: &Credential, probe: &HostProbe) -> Vec<String> {
        let cluster = crate::test_cluster("");
        credential_files(&cluster, signers, credential, probe, SystemTime::now())
            .unwrap()
            .into_iter()
            .map(|p| format!("{} {:o}", p.path, p.mode))
            .collect()
    }

    #[test]
    fn credentials_are_written_only_when_the_host_has_none_that_fits() {
        let cluster = crate::test_cluster("");
        let signers = signers();
        let credentials = host_credentials(cluster.host("cp3").unwrap());
        let etcd_client = credentials.iter().find(|c| c.signer == Signer::Etcd).unwrap();
        let kubelet = credentials
            .iter()
            .find(|c| c.placement.path() == KUBELET_KUBECONFIG)
            .unwrap();

        // Nothing on the host: certificate and key (0600), or the kubeconfig (0600).
        let empty = HostProbe::default();
        assert_eq!(
            written(&signers, etcd_client, &empty),
            [
                "/etc/kubernetes/pki/apiserver-etcd-client.crt 644",
                "/etc/kubernetes/pki/apiserver-etcd-client.key 600"
            ]
        );
        assert_eq!(written(&signers, kubelet, &empty), ["/etc/kubernetes/kubelet.conf 600"]);

        // Serving certificates: certificate and key (0600), restarting the process serving them.
        for (cert, service) in [
            (CONTROLLER_MANAGER_SERVING_CERT, CONTROLLER_MANAGER),
            (SCHEDULER_SERVING_CERT, SCHEDULER),
            (KUBELET_SERVING_CERT, KUBELET),
        ] {
            let serving = credentials.iter().find(|c| c.placement.path() == cert).unwrap();
            let files = credential_files(&cluster, &signers, serving, &empty, SystemTime::now()).unwrap();
            let key = cert.replace(".crt", ".key");
            assert_eq!(
                files
                    .iter()
                    .map(|p| format!("{} {:o}", p.path, p.mode))
                    .collect::<Vec<_>>(),
                [format!("{cert} 644"), format!("{key} 600")]
            );
            assert!(files.iter().all(|p| p.restarts == [service]), "{cert}");
            assert!(files[1].sensitive, "{key}");
        }

        // What a first run wrote fits: a re-plan writes nothing, for every credential of the host.
        let mut host = HostProbe::default();
        for credential in &credentials {
            for file in credential_files(&cluster, &signers, credential, &empty, SystemTime::now()).unwrap() {
                host.files.insert(file.path.clone(), file.content.clone());
            }
        }
        for credential in &credentials {
            assert!(
                written(&signers, credential, &host).is_empty(),
                "{} reissued",
                credential.placement.path()
            );
        }

        // A host whose private address changed gets new serving certificates (only those and
        // nothing signed by another CA).
        let mut moved_host = cluster.host("cp3").unwrap().clone();
        moved_host.private_address = "192.168.0.13".into();
        let reissued: Vec<&str> = host_credentials(&moved_host)
            .iter()
            .filter(|c| !written(&signers, c, &host).is_empty())
            .map(|c| c.placement.path())
            .collect();
        assert_eq!(
            reissued,
            [
                CONTROLLER_MANAGER_SERVING_CERT,
                SCHEDULER_SERVING_CERT,
                KUBELET_SERVING_CERT
            ]
        );

        // Another etcd CA (a restored etcd with a new CA): reissued; the kubeconfig is unaffected.
        let other_etcd = Signers {
            etcd: capstan_etcd::pki::generate_ca("demo").unwrap(),
            ..signers.clone()
        };
        assert_eq!(written(&other_etcd, etcd_client, &host).len(), 2);
        assert!(written(&other_etcd, kubelet, &host).is_empty());

        // A kubeconfig pointing elsewhere is rewritten even though its certificate still fits.
        let moved = Credential {
            placement: Placement::Kubeconfig {
                path: KUBELET_KUBECONFIG,
                server: "https://127.0.0.1:7443".into(),
            },
            ..kubelet.clone()
        };
        assert_eq!(written(&signers, &moved, &host), ["/etc/kubernetes/kubelet.conf 600"]);
    }
}
