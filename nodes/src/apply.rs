//! `capstan apply`/`plan` for the nodes: the container runtime and the pod network on every host
//! with role `node` or `control_plane`.
//!
//! Inspect (one probe per host), decide (runtime per host from its facts, swap, pod subnets from
//! capstan's record in etcd), refuse before anything changes, then three phases of ops:
//!
//! 1. prepare hosts: runtime packages, kernel modules (now and at boot), sysctls, swap off;
//! 2. container runtime: containerd, runc (or, lab only, crun behind the cgroupless wrapper), its
//!    configuration and unit;
//! 3. pod network: CNI plugins, the node's bridge configuration, routes to every other node's pods
//!    and masquerading (a script run now, by a check that finds drift, and at boot by a unit).

// Errors carry whole messages; a run produces a handful.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::component::{ComponentOutcome, RunContext};
use capstan_provisioner::hint::Hint;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{
    apt_source_file, Artifact, Command, File, OpError, OperationExt, Package, Service, SystemdUnit,
};
use capstan_provisioner::phases::{Phase, PhaseContext, PhaseError, PhaseRunner};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::releases::ReleaseError;
use capstan_provisioner::runner::{HostOps, Mode};
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::Transport;
use ipnet::Ipv4Net;

use crate::config::{self, PodRoute, Refusal, RuntimeKind};
use crate::podcidr::{allocate, merge_observed, parse_network, AllocError, PodSubnets};
use crate::probe::{probe_node, NodeProbe};
use crate::records::{RecordError, Records};
use crate::release::{cni_members, containerd_members, node_artifacts, NodeArtifacts};

const CONTAINERD: &str = "containerd";
const POD_NETWORK: &str = "capstan-pod-network";

#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    #[error("cannot reach host(s) {}: {detail}", hosts.join(", "))]
    Unreachable { hosts: Vec<String>, detail: String },
    #[error("{0}")]
    Probe(OpError),
    #[error("refusing to change the nodes: {}", .0.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>().join("; "))]
    Refused(Vec<Refusal>),
    #[error("pod subnets: {0}")]
    Alloc(#[from] AllocError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("rendering {what}: {reason}")]
    Render { what: String, reason: String },
    #[error(transparent)]
    Op(#[from] OpError),
}

impl Hint for NodesError {
    fn hint(&self) -> Option<String> {
        match self {
            NodesError::Unreachable { .. } => {
                Some("every host with role node or control_plane must be reachable; check with `capstan check`".into())
            }
            NodesError::Refused(refusals) => {
                let mut hints: Vec<&str> = refusals.iter().map(|r| r.hint.as_str()).collect();
                hints.dedup();
                Some(hints.join("; "))
            }
            NodesError::Alloc(AllocError::Outside { .. }) => Some(
                "set `network.pod_cidr`/`node_prefix` back to the values the nodes were set up with (see `capstan status`)"
                    .into(),
            ),
            NodesError::Alloc(AllocError::Exhausted { .. }) => {
                Some("choose a larger `network.pod_cidr` or a longer `network.node_prefix`".into())
            }
            NodesError::Record(_) => Some("etcd holds capstan's records: run `capstan apply` for etcd first and check it with `capstan status`".into()),
            NodesError::Release(ReleaseError::NotOnMirror { .. }) => {
                Some("pick versions the mirror has (`versions.*`), or add them to the mirror".into())
            }
            NodesError::Release(ReleaseError::UnpinnedVersion { .. }) => Some(
                "set `versions.*` to a pinned version, or point `artifacts.mirror` at a mirror that has it".into(),
            ),
            _ => None,
        }
    }
}

/// One host that runs pods, and what this run gives it.
struct NodeHost {
    host: Host,
    transport: Arc<dyn Transport>,
    probe: NodeProbe,
    runtime: RuntimeKind,
    turn_swap_off: bool,
    subnet: Ipv4Net,
    routes: Vec<PodRoute>,
    artifacts: NodeArtifacts,
}

struct NodesRun {
    cluster: Cluster,
    pod_cidr: Ipv4Net,
    nodes: Vec<NodeHost>,
}

/// The hosts that run pods, in inventory order.
pub fn pod_hosts(cluster: &Cluster) -> Vec<&Host> {
    cluster
        .hosts
        .iter()
        .filter(|h| h.has_role(Role::Node) || h.has_role(Role::ControlPlane))
        .collect()
}

/// Inspect and decide; `Err` before anything changed.
async fn prepare(cluster: &Cluster, ctx: &RunContext) -> Result<(NodesRun, Connections), NodesError> {
    let hosts = pod_hosts(cluster);
    let targets: Vec<_> = hosts.iter().map(|h| ssh_target(h)).collect();
    let (conns, failures) = Connections::connect(&targets, ctx.concurrency.max(1)).await;
    if !failures.is_empty() {
        conns.close_all().await;
        return Err(NodesError::Unreachable {
            hosts: failures.keys().cloned().collect(),
            detail: failures.values().map(|e| e.to_string()).collect::<Vec<_>>().join("; "),
        });
    }
    let transports: Vec<Arc<dyn Transport>> = hosts
        .iter()
        .map(|h| conns.get(&h.name).expect("connected above"))
        .collect();
    let probes = futures::future::join_all(transports.iter().map(|t| probe_node(t.as_ref()))).await;
    let mut probed = Vec::new();
    for probe in probes {
        match probe {
            Ok(p) => probed.push(p),
            Err(e) => {
                conns.close_all().await;
                return Err(NodesError::Probe(e));
            }
        }
    }

    let mut refusals = Vec::new();
    let mut decided = Vec::new();
    for (host, probe) in hosts.iter().zip(&probed) {
        let runtime = config::decide_runtime(&host.name, cluster.runtime.lab_cgroupless, probe);
        let swap = config::check_swap(&host.name, &cluster.runtime, probe);
        match (runtime, swap) {
            (Ok(runtime), Ok(swap)) => decided.push((runtime, swap)),
            (runtime, swap) => {
                refusals.extend(runtime.err());
                refusals.extend(swap.err());
            }
        }
    }
    if !refusals.is_empty() {
        conns.close_all().await;
        return Err(NodesError::Refused(refusals));
    }

    let subnets = match pod_subnets(cluster, &hosts, &probed, ctx).await {
        Ok(subnets) => subnets,
        Err(e) => {
            conns.close_all().await;
            return Err(e);
        }
    };
    let pod_cidr = parse_network(&cluster.network.pod_cidr, cluster.network.node_prefix)?;
    let addresses = config::private_addresses(cluster);
    let mut by_arch: BTreeMap<(String, bool), NodeArtifacts> = BTreeMap::new();
    let mut nodes = Vec::new();
    for (((host, probe), transport), (runtime, turn_swap_off)) in hosts.iter().zip(probed).zip(transports).zip(decided)
    {
        let with_crun = runtime == RuntimeKind::LabCgroupless;
        let key = (probe.arch.clone(), with_crun);
        let artifacts = match by_arch.get(&key) {
            Some(a) => a.clone(),
            None => {
                let resolved = node_artifacts(
                    &cluster.versions,
                    &probe.arch,
                    cluster.artifacts.mirror.as_deref(),
                    with_crun,
                )?;
                by_arch.insert(key, resolved.clone());
                resolved
            }
        };
        nodes.push(NodeHost {
            subnet: subnets[&host.name],
            routes: config::routes_for(&host.name, &subnets, &addresses),
            host: (*host).clone(),
            transport,
            probe,
            runtime,
            turn_swap_off,
            artifacts,
        });
    }
    Ok((
        NodesRun {
            cluster: cluster.clone(),
            pod_cidr,
            nodes,
        },
        conns,
    ))
}

/// The pod subnets of `hosts`: the record in etcd (and what hosts already have), kept; new hosts
/// get the lowest free ones. An apply writes the record before any host is configured.
async fn pod_subnets(
    cluster: &Cluster,
    hosts: &[&Host],
    probes: &[NodeProbe],
    ctx: &RunContext,
) -> Result<PodSubnets, NodesError> {
    let pod_cidr = parse_network(&cluster.network.pod_cidr, cluster.network.node_prefix)?;
    let observed: PodSubnets = hosts
        .iter()
        .zip(probes)
        .filter_map(|(h, p)| Some((h.name.clone(), p.subnet.as_deref()?.parse().ok()?)))
        .collect();
    let records = match Records::connect(cluster, Duration::from_secs(10)).await {
        Ok(records) => Some(records),
        // A plan before etcd's first apply: nothing is recorded yet.
        Err(error) if ctx.mode == Mode::DryRun => {
            ctx.out
                .line(format!("    pod subnets: {error}; planning from what the hosts have"));
            None
        }
        Err(error) => return Err(error.into()),
    };
    let recorded = match &records {
        Some(records) => records.read().await?,
        None => PodSubnets::new(),
    };
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let subnets = allocate(
        pod_cidr,
        cluster.network.node_prefix,
        &names,
        &merge_observed(&recorded, &observed),
    )?;
    for name in &names {
        let subnet = subnets[name];
        let note = match (recorded.get(name), observed.get(name)) {
            (Some(r), _) if *r == subnet => "",
            (_, Some(o)) if *o == subnet => " (from the host's configuration)",
            _ => " (new)",
        };
        ctx.out.line(format!("    {name}: pod subnet {subnet}{note}"));
    }
    if let (Some(records), Mode::Apply) = (&records, ctx.mode) {
        // Keep records of hosts no longer in the inventory out; write only when it changes.
        if recorded != subnets {
            records.write(&subnets).await?;
        }
    }
    Ok(subnets)
}

fn render(what: &str, result: config::RenderResult) -> Result<String, PhaseError> {
    result.map_err(|e| PhaseError::failed(what.to_string(), e.to_string()))
}

fn op_error(phase: &str, e: OpError) -> PhaseError {
    PhaseError::Op {
        phase: phase.to_string(),
        source: e,
    }
}

#[derive(Clone, Copy)]
enum Step {
    Prepare,
    Runtime,
    Network,
}

struct NodesPhase(Step);

#[async_trait]
impl Phase<NodesRun> for NodesPhase {
    fn name(&self) -> String {
        match self.0 {
            Step::Prepare => "nodes: prepare hosts (modules, sysctls, swap)",
            Step::Runtime => "nodes: container runtime (containerd)",
            Step::Network => "nodes: pod network (CNI, routes, masquerading)",
        }
        .to_string()
    }

    async fn host_ops(&self, ctx: &PhaseContext<NodesRun>) -> Result<Vec<HostOps>, PhaseError> {
        let run = &ctx.state;
        let phase = self.name();
        let mut all = Vec::new();
        for node in &run.nodes {
            let mut ops = HostOps::new(node.transport.clone());
            match self.0 {
                Step::Prepare => prepare_ops(&mut ops, node, &run.cluster)?,
                Step::Runtime => runtime_ops(&mut ops, node, &run.cluster, &phase)?,
                Step::Network => network_ops(&mut ops, node, run.pod_cidr, &phase)?,
            }
            all.push(ops);
        }
        Ok(all)
    }
}

fn prepare_ops(ops: &mut HostOps, node: &NodeHost, cluster: &Cluster) -> Result<(), PhaseError> {
    let apt_source = cluster.artifacts.apt_source.as_deref();
    if let Some(line) = apt_source {
        ops.push(apt_source_file(line));
    }
    let mut packages: Vec<&str> = config::PACKAGES.to_vec();
    if node.runtime == RuntimeKind::LabCgroupless {
        packages.extend(config::CRUN_PACKAGES);
    }
    ops.push(Package::new(packages).from_source(apt_source));
    ops.push(File::new(config::MODULES_FILE, render("modules file", config::modules_file())?).mode(0o644));
    let loaded = "grep -qw overlay /proc/filesystems && [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]";
    let modprobe: Vec<String> = config::MODULES.iter().map(|m| format!("modprobe {m}")).collect();
    ops.push(Command::new("load kernel modules overlay, br_netfilter", &modprobe.join(" && ")).unless(loaded));
    ops.push(File::new(config::SYSCTL_FILE, render("sysctl file", config::sysctl_file())?).mode(0o644));
    let check: Vec<String> = config::SYSCTLS
        .iter()
        .map(|(name, value)| format!("[ \"$(cat /proc/sys/{})\" = {value} ]", name.replace('.', "/")))
        .collect();
    ops.push(
        Command::new(
            "set sysctls (ip_forward, bridge-nf-call-iptables)",
            &format!("sysctl -q -p {}", quote(config::SYSCTL_FILE)),
        )
        .unless(&check.join(" && ")),
    );
    if node.turn_swap_off {
        ops.push(
            Command::new(
                "turn swap off (now and in /etc/fstab)",
                "swapoff -a && sed -i.capstan-bak -E 's/^([^#].*[[:space:]]swap[[:space:]].*)$/# capstan: swap off for the kubelet: \\1/' /etc/fstab",
            )
            .unless("[ -z \"$(tail -n +2 /proc/swaps)\" ]"),
        );
    }
    Ok(())
}

fn runtime_ops(ops: &mut HostOps, node: &NodeHost, cluster: &Cluster, phase: &str) -> Result<(), PhaseError> {
    let a = &node.artifacts;
    let artifact = |url: &str, sha: &str, dest: &str| Artifact::new(url, sha, dest).map_err(|e| op_error(phase, e));
    ops.push(
        artifact(&a.containerd.url, &a.containerd.checksum, config::BIN_DIR)?
            .extract(containerd_members())
            .map_err(|e| op_error(phase, e))?
            .notify([CONTAINERD]),
    );
    match node.runtime {
        RuntimeKind::Runc => ops.push(artifact(&a.runc.url, &a.runc.checksum, config::RUNC_PATH)?.notify([CONTAINERD])),
        RuntimeKind::LabCgroupless => {
            let crun = a.crun.as_ref().ok_or_else(|| {
                PhaseError::failed(
                    phase.to_string(),
                    "crun was not resolved for the lab-only runtime".to_string(),
                )
            })?;
            ops.push(artifact(&crun.url, &crun.checksum, config::CRUN_PATH)?);
            ops.push(
                File::new(
                    config::CRUN_LAB_WRAPPER,
                    render("crun wrapper", config::crun_wrapper())?,
                )
                .mode(0o755)
                .notify([CONTAINERD]),
            );
        }
    }
    let containerd_config = render(
        "containerd config",
        config::containerd_config(&cluster.runtime, node.runtime, config::snapshotter(&node.probe)),
    )?;
    ops.push(
        File::new(config::CONTAINERD_CONFIG_FILE, containerd_config)
            .mode(0o644)
            .notify([CONTAINERD]),
    );
    let hosts =
        config::registry_hosts(&cluster.runtime).map_err(|e| PhaseError::failed(phase.to_string(), e.to_string()))?;
    for (path, text) in hosts {
        ops.push(File::new(&path, text).mode(0o644));
    }
    let unit = SystemdUnit::new(
        config::CONTAINERD_UNIT,
        render("containerd unit", config::containerd_unit())?,
    )
    .map_err(|e| op_error(phase, e))?;
    ops.push(unit.notify([CONTAINERD]));
    ops.push(
        Service::new(CONTAINERD)
            .map_err(|e| op_error(phase, e))?
            .enabled(true)
            .running(true),
    );
    Ok(())
}

fn network_ops(ops: &mut HostOps, node: &NodeHost, pod_cidr: Ipv4Net, phase: &str) -> Result<(), PhaseError> {
    let cni = &node.artifacts.cni_plugins;
    ops.push(
        Artifact::new(&cni.url, &cni.checksum, config::CNI_BIN_DIR)
            .and_then(|a| a.extract(cni_members()))
            .map_err(|e| op_error(phase, e))?,
    );
    ops.push(
        File::new(
            config::CNI_CONFIG_FILE,
            render("CNI config", config::cni_config(node.subnet))?,
        )
        .mode(0o644),
    );
    let script = render(
        "pod network script",
        config::pod_network_script(&node.host.name, node.subnet, pod_cidr, &node.routes),
    )?;
    ops.push(File::new(config::POD_NETWORK_SCRIPT, script).mode(0o755));
    let unit = SystemdUnit::new(
        config::POD_NETWORK_UNIT,
        render("pod network unit", config::pod_network_unit())?,
    )
    .map_err(|e| op_error(phase, e))?;
    ops.push(unit);
    // Enabled for boot; started once (RemainAfterExit), while the check below keeps it in line.
    ops.push(
        Service::new(POD_NETWORK)
            .map_err(|e| op_error(phase, e))?
            .enabled(true)
            .running(true),
    );
    let script = quote(config::POD_NETWORK_SCRIPT);
    ops.push(
        Command::new(
            &format!("pod network: {} route(s) and masquerading", node.routes.len()),
            &format!("{script} apply"),
        )
        .unless(&format!("{script} check")),
    );
    Ok(())
}

/// Converge (or, in [`Mode::DryRun`], plan) the nodes.
pub async fn converge(cluster: &Cluster, ctx: &RunContext) -> Result<ComponentOutcome, NodesError> {
    let started = Instant::now();
    ctx.out.line(format!(
        "nodes: {} host(s) with role node or control_plane",
        pod_hosts(cluster).len()
    ));
    let (run, conns) = prepare(cluster, ctx).await?;
    for node in &run.nodes {
        let runtime = match node.runtime {
            RuntimeKind::Runc => "runc (systemd cgroups)",
            RuntimeKind::LabCgroupless => "crun without cgroups (lab-only runtime setting)",
        };
        ctx.out.line(format!(
            "    {}: {runtime}, {} route(s)",
            node.host.name,
            node.routes.len()
        ));
    }
    let phases = PhaseRunner::new()
        .phase(NodesPhase(Step::Prepare))
        .phase(NodesPhase(Step::Runtime))
        .phase(NodesPhase(Step::Network));
    let outcome = ctx.run_phases(crate::component::NAME, run, phases, started).await;
    conns.close_all().await;
    Ok(outcome)
}
