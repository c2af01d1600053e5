//! `capstan apply` (and `plan`, the same path as a dry run) for etcd.
//!
//! A run first inspects every etcd host (one probe each), reads the CA from the members, decides
//! what the cluster needs and refuses unsafe changes before touching anything. Then ordered phases
//! run: bootstrap (no member has data yet), rolling converge of existing members, scale up one
//! member at a time, scale down one member at a time, and a final health check.
//!
//! Settings that only matter for a member's first start (`initial-cluster*`) are written when a
//! member is created and reused from its own config afterwards, so re-applying (or scaling other
//! members) never rewrites an initialised member's config and never restarts it.
//!
//! A change of `versions.etcd` is a rolling upgrade (or patch downgrade): decided and refused in
//! [`super::upgrade`] before anything changes, then carried out by the converge phase one member at
//! a time, followers first and the leader last, each gated on the member answering again and
//! running the new version.

// Errors carry whole messages (names, versions, what is available); a run produces a handful.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use capstan_inventory::Cluster;
use serde::Serialize;

use super::client::{
    error_chain, poll_until, EtcdClient, EtcdEndpoint, EtcdError, EtcdTls, Member as ListedMember, Timeouts,
};
use super::config::{
    initial_cluster, render_member_config, render_unit, ConfigError, InitialClusterState, MemberConfig, MemberSettings,
    UnitConfig, DEFAULT_CONFIG_FILE,
};
use super::inspect::{
    admin_tls, ca_holder, inspect_hosts, member_settings, pki_paths, read_ca, EtcdHost, InspectError,
};
use super::pki::generate_ca;
use super::probe::{ca_key_path, parse_bootstrap_values, BootstrapValues};
use super::release::{etcd_artifact, etcd_tarball_members};
use super::upgrade::{
    next_in_rollout, plan_upgrade, probe_versions, MemberState, UpgradePlan, UpgradeRefusal, Version, VersionFacts,
};
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{
    Artifact, Command, Directory, File, OpError, Operation, OperationExt, Service, SystemdUnit,
};
use capstan_provisioner::phases::{Phase, PhaseContext, PhaseError, PhaseOutcome, PhaseRunner};
use capstan_provisioner::pki::{needs_reissue, CertKind, CertRequest, CertificateAuthority, IssuedCert, PkiError};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::releases::{ReleaseError, ResolvedArtifact};
use capstan_provisioner::report::{ChangeRecord, HostReport, OpRecord, OpStatus, RunReport};
use capstan_provisioner::runner::{HostOps, Mode, NoProgress, Progress, RunOptions, Runner};
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::Transport;

const SERVICE: &str = "etcd";
const BIN_DIR: &str = "/usr/local/bin";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("cannot reach etcd host(s) {}: {detail}", hosts.join(", "))]
    Unreachable {
        hosts: Vec<String>,
        detail: String,
        hint: Option<&'static str>,
    },
    #[error("refusing to change the cluster: {reason}")]
    Refused { reason: String, hint: String },
    #[error("refusing to change the etcd version: {0}")]
    Upgrade(UpgradeRefusal),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Op(#[from] OpError),
}

impl ApplyError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ApplyError::Unreachable { hint, .. } => Some(
                hint.unwrap_or("every host with role etcd must be reachable over SSH; check it with `capstan check`")
                    .to_string(),
            ),
            ApplyError::Refused { hint, .. } => Some(hint.clone()),
            ApplyError::Upgrade(refusal) => Some(refusal.hint()),
            ApplyError::Release(ReleaseError::UnpinnedVersion { .. }) => {
                Some("set versions.etcd to a pinned version, or point artifacts.mirror at a mirror that has it".into())
            }
            ApplyError::Release(ReleaseError::NotOnMirror { .. }) => Some(
                "pick a version the mirror has, or add the tarball and its line in SHA256SUMS to the mirror".into(),
            ),
            ApplyError::Etcd(_) => Some("check the members with `capstan status`".into()),
            _ => None,
        }
    }
}

/// How to run.
pub struct ApplyOptions {
    pub mode: Mode,
    pub concurrency: usize,
    pub progress: Arc<dyn Progress>,
    /// Phase headers and membership steps.
    pub out: Box<dyn Write + Send>,
    /// How long members get to become healthy after a start or restart.
    pub ready_timeout: Duration,
}

impl ApplyOptions {
    pub fn new(mode: Mode) -> ApplyOptions {
        ApplyOptions {
            mode,
            concurrency: capstan_provisioner::runner::DEFAULT_CONCURRENCY,
            progress: Arc::new(NoProgress),
            out: Box::new(std::io::stderr()),
            ready_timeout: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    pub report: RunReport,
}

/// What a run did (or, as a plan, would do).
#[derive(Debug, Clone, Serialize)]
pub struct ApplyOutcome {
    pub mode: Mode,
    pub phases: Vec<PhaseOutcome>,
    pub reports: Vec<PhaseReport>,
    /// Every phase's records merged per host: what the summary table shows.
    pub summary: RunReport,
    pub error: Option<String>,
    #[serde(skip)]
    pub hint: Option<String>,
}

impl ApplyOutcome {
    pub fn success(&self) -> bool {
        self.error.is_none() && self.summary.success()
    }
}

/// Merge reports host by host (first appearance order), summing counts and times.
pub fn merge_reports(mode: Mode, reports: &[PhaseReport], elapsed: Duration) -> RunReport {
    let mut hosts: Vec<HostReport> = Vec::new();
    for PhaseReport { report, .. } in reports {
        for host in &report.hosts {
            let index = match hosts.iter().position(|h| h.host == host.host) {
                Some(i) => i,
                None => {
                    hosts.push(HostReport::new(&host.host));
                    hosts.len() - 1
                }
            };
            let merged = &mut hosts[index];
            for op in &host.ops {
                merged.push(op.clone());
            }
            merged.elapsed += host.elapsed;
        }
    }
    RunReport { mode, hosts, elapsed }
}

/// One inventory etcd member and what this run writes for it.
struct DesiredMember {
    host: EtcdHost,
    transport: Arc<dyn Transport>,
    has_data: bool,
    /// Replacement certificates, when the ones on the host no longer fit.
    server: Option<IssuedCert>,
    peer: Option<IssuedCert>,
    /// The host's current bootstrap values (reused while it is initialised).
    existing_values: Option<BootstrapValues>,
    artifact: ResolvedArtifact,
    tarball_members: Vec<String>,
}

impl DesiredMember {
    fn name(&self) -> &str {
        self.host.name()
    }
}

/// Membership as found, and what changes.
enum Membership {
    /// No member has data: all start together.
    Bootstrap,
    Existing {
        listed: Vec<ListedMember>,
        /// Inventory indices already members.
        current: Vec<usize>,
        /// Inventory indices to add, in order; with the id when already added but never started.
        add: Vec<(usize, Option<u64>)>,
        /// Members to remove, unhealthy ones first.
        remove: Vec<ListedMember>,
        healthy: BTreeSet<u64>,
    },
}

struct EtcdRun {
    cluster_name: String,
    members: Vec<DesiredMember>,
    settings: MemberSettings,
    ca: CertificateAuthority,
    tls: EtcdTls,
    token: String,
    membership: Membership,
    /// The version change of this run, when `versions.etcd` differs from what members run.
    upgrade: Option<UpgradePlan>,
    /// Members that were not healthy when the run started.
    down_at_start: BTreeSet<String>,
    /// What to do about a failure in the middle of a rollout (replaces the generic hint).
    failure_hint: Mutex<Option<String>>,
    /// Connections to hosts of members being removed that are still in the inventory.
    cleanup: BTreeMap<String, Arc<dyn Transport>>,
    reports: Mutex<Vec<PhaseReport>>,
    ready_timeout: Duration,
    /// Lines for the operator (phase details).
    notes: Mutex<Box<dyn Write + Send>>,
}

fn quorum(size: usize) -> usize {
    size / 2 + 1
}

/// A cluster token: the cluster name plus a random suffix, so two clusters of the same name never
/// accept each other's members.
fn new_token(cluster_name: &str) -> String {
    use std::io::Read;
    let mut bytes = [0u8; 4];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !random {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ std::process::id())
            .unwrap_or_default();
        bytes = nanos.to_le_bytes();
    }
    format!("{cluster_name}-{}", hex::encode(bytes))
}

/// Checks that a sequence of membership changes never leaves the cluster without quorum.
/// `size`/`healthy` describe the cluster now; adds come first (each new member counts as healthy
/// once it has joined), then removes (`removes_healthy[i]` says whether the i-th removed member is
/// healthy now). Returns why not, when not.
pub fn check_quorum(size: usize, healthy: usize, adds: usize, removes_healthy: &[bool]) -> Result<(), String> {
    let (mut size, mut healthy) = (size, healthy);
    if healthy < quorum(size) {
        return Err(format!(
            "only {healthy} of {size} members are healthy; the cluster has no quorum ({} needed), so no membership change can be made safely",
            quorum(size)
        ));
    }
    for _ in 0..adds {
        // While the new member starts, it counts toward the size but not yet toward the healthy.
        // Growing a single member is the exception etcd itself makes: there is no other way up.
        if healthy < quorum(size + 1) && !(size == 1 && healthy == 1) {
            return Err(format!(
                "adding a member to {size} members of which {healthy} are healthy needs {} healthy members while it joins; bring the down members back first",
                quorum(size + 1)
            ));
        }
        size += 1;
        healthy += 1;
    }
    for removed_healthy in removes_healthy {
        let remaining_healthy = healthy - usize::from(*removed_healthy);
        if remaining_healthy < quorum(size - 1) {
            return Err(format!(
                "removing a member from {size} members ({healthy} healthy) leaves {remaining_healthy} healthy of {}, below the quorum of {}",
                size - 1,
                quorum(size - 1)
            ));
        }
        size -= 1;
        healthy = remaining_healthy;
    }
    Ok(())
}

/// Inspect, decide, refuse unsafe changes; nothing is changed here.
async fn prepare(cluster: &Cluster, options: &ApplyOptions) -> Result<(EtcdRun, Connections), ApplyError> {
    let (hosts, conns) = inspect_hosts(cluster, options.concurrency, None).await?;
    let failed: Vec<&EtcdHost> = hosts
        .iter()
        .filter(|h| h.transport.is_none() || h.probe.is_none())
        .collect();
    if !failed.is_empty() {
        let detail = failed
            .iter()
            .map(|h| {
                h.connect_error
                    .clone()
                    .or_else(|| h.probe_error.clone())
                    .unwrap_or_else(|| format!("{}: unreachable", h.name()))
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ApplyError::Unreachable {
            hosts: failed.iter().map(|h| h.name().to_string()).collect(),
            detail,
            hint: failed.iter().find_map(|h| h.connect_hint),
        });
    }

    let with_data: Vec<&EtcdHost> = hosts
        .iter()
        .filter(|h| h.probe.as_ref().is_some_and(|p| p.has_data))
        .collect();
    let ca = match ca_holder(&hosts) {
        Some(holder) => read_ca(holder).await?,
        None if with_data.is_empty() => generate_ca(&cluster.name)?,
        None => {
            return Err(ApplyError::Refused {
                reason: format!(
                    "member(s) {} have etcd data but no member has the cluster CA ({})",
                    with_data.iter().map(|h| h.name()).collect::<Vec<_>>().join(", "),
                    ca_key_path(&pki_paths()).replace("ca.key", "ca.{crt,key}")
                ),
                hint: "restore ca.crt and ca.key into /etc/etcd/pki on one member (mode 0600 for the key); \
                       a new CA would lock every existing member and client out"
                    .into(),
            })
        }
    };
    let tls = admin_tls(&ca)?;
    let token = hosts
        .iter()
        .filter_map(|h| h.probe.as_ref()?.config.as_deref().and_then(parse_bootstrap_values))
        .map(|v| v.initial_cluster_token)
        .next()
        .unwrap_or_else(|| new_token(&cluster.name));

    // Artifacts per architecture, resolved once.
    let mut artifacts: BTreeMap<String, (ResolvedArtifact, Vec<String>)> = BTreeMap::new();
    let now = SystemTime::now();
    let mut members = Vec::new();
    for host in &hosts {
        let probe = host.probe.clone().unwrap_or_default();
        let (artifact, tarball_members) = match artifacts.get(&probe.arch) {
            Some(found) => found.clone(),
            None => {
                let version = &cluster.versions.etcd;
                let resolved = (
                    etcd_artifact(version, &probe.arch, cluster.artifacts.mirror.as_deref())?,
                    etcd_tarball_members(version, &probe.arch)?,
                );
                artifacts.insert(probe.arch.clone(), resolved.clone());
                resolved
            }
        };
        let addresses = [host.host.address.as_str(), host.host.private_address.as_str()];
        let issue = |kind: CertKind, existing: Option<&str>, has_key: bool| -> Result<Option<IssuedCert>, PkiError> {
            let request = CertRequest::member(kind, host.name(), &addresses);
            let stale = needs_reissue(existing, &ca, &request, now).is_some() || !has_key;
            stale.then(|| ca.issue(&request)).transpose()
        };
        members.push(DesiredMember {
            transport: host.transport.clone().expect("checked above"),
            has_data: probe.has_data,
            server: issue(CertKind::Server, probe.server_cert.as_deref(), probe.has_server_key)?,
            peer: issue(CertKind::Peer, probe.peer_cert.as_deref(), probe.has_peer_key)?,
            existing_values: probe.config.as_deref().and_then(parse_bootstrap_values),
            artifact,
            tarball_members,
            host: host.clone(),
        });
    }

    let membership = if with_data.is_empty() {
        Membership::Bootstrap
    } else {
        discover_membership(cluster, &members, &tls).await?
    };
    let (upgrade, down_at_start) = match &membership {
        Membership::Bootstrap => (None, BTreeSet::new()),
        Membership::Existing { .. } => decide_upgrade(cluster, &members, &membership, &tls).await?,
    };

    // Hosts of removed members that are still in the inventory get stopped and wiped.
    let mut cleanup = BTreeMap::new();
    if let Membership::Existing { remove, .. } = &membership {
        let targets: Vec<_> = remove
            .iter()
            .filter_map(|m| cluster.host(&m.name))
            .map(ssh_target)
            .collect();
        if !targets.is_empty() {
            let (extra, _) = Connections::connect(&targets, options.concurrency).await;
            for (name, t) in extra.hosts() {
                cleanup.insert(name.to_string(), t.clone());
            }
        }
    }

    Ok((
        EtcdRun {
            cluster_name: cluster.name.clone(),
            members,
            settings: member_settings(cluster),
            ca,
            tls,
            token,
            membership,
            upgrade,
            down_at_start,
            failure_hint: Mutex::new(None),
            cleanup,
            reports: Mutex::new(Vec::new()),
            ready_timeout: options.ready_timeout,
            notes: Mutex::new(Box::new(std::io::sink())),
        },
        conns,
    ))
}

fn short_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(5),
        health: Duration::from_secs(2),
        reconfig_settle: Duration::from_secs(30),
    }
}

async fn discover_membership(
    cluster: &Cluster,
    members: &[DesiredMember],
    tls: &EtcdTls,
) -> Result<Membership, ApplyError> {
    let endpoints: Vec<EtcdEndpoint> = members
        .iter()
        .filter(|m| m.has_data)
        .map(|m| m.host.operator_endpoint())
        .collect();
    // One member at a time: a channel over all endpoints may pick a member that is down.
    let mut found = None;
    let mut last_error = None;
    for endpoint in &endpoints {
        let attempt = async {
            let client = EtcdClient::connect_with(std::slice::from_ref(endpoint), tls, short_timeouts()).await?;
            let listed = client.member_list().await?;
            Ok::<_, EtcdError>((client, listed))
        };
        match attempt.await {
            Ok(ok) => {
                found = Some(ok);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let (client, listed) = match (found, last_error) {
        (Some(ok), _) => ok,
        (None, Some(e)) => return Err(e.into()),
        (None, None) => EtcdClient::connect_with(&endpoints, tls, short_timeouts())
            .await
            .map(|c| (c, Vec::new()))?,
    };

    let endpoint_of = |m: &ListedMember| -> Option<EtcdEndpoint> {
        match members.iter().find(|d| d.name() == m.name) {
            Some(d) => Some(d.host.operator_endpoint()),
            None => m.client_urls.first().and_then(|u| EtcdEndpoint::parse(u).ok()),
        }
    };
    let mut healthy = BTreeSet::new();
    for m in &listed {
        if let Some(endpoint) = endpoint_of(m) {
            if client.health(&endpoint).await.healthy {
                healthy.insert(m.id);
            }
        }
    }

    let mut current = Vec::new();
    let mut add = Vec::new();
    let mut claimed = BTreeSet::new();
    for (index, member) in members.iter().enumerate() {
        let peer_url = member.host.member().peer_url();
        if let Some(found) = listed.iter().find(|l| l.name == member.name()) {
            claimed.insert(found.id);
            current.push(index);
        } else if let Some(pending) = listed
            .iter()
            .find(|l| l.name.is_empty() && l.peer_urls.contains(&peer_url))
        {
            claimed.insert(pending.id);
            add.push((index, Some(pending.id)));
        } else if member.has_data {
            return Err(ApplyError::Refused {
                reason: format!(
                    "{} has etcd data in {} but is not a member of this cluster (removed earlier, or from another cluster)",
                    member.name(),
                    cluster.etcd.data_dir.display()
                ),
                hint: format!(
                    "if that data is stale, wipe it on {} (systemctl stop etcd; rm -rf {}) and apply again",
                    member.name(),
                    cluster.etcd.data_dir.display()
                ),
            });
        } else {
            add.push((index, None));
        }
    }
    let mut remove: Vec<ListedMember> = listed.iter().filter(|l| !claimed.contains(&l.id)).cloned().collect();
    // Members that are down go first: removing them never costs a healthy vote.
    remove.sort_by_key(|m| healthy.contains(&m.id));

    let final_size = listed.len() + add.iter().filter(|(_, id)| id.is_none()).count() - remove.len();
    if final_size.is_multiple_of(2) && !cluster.etcd.allow_even_members {
        return Err(ApplyError::Refused {
            reason: format!("the cluster would have {final_size} members; an even count tolerates no more failures than one member fewer"),
            hint: "use an odd number of etcd hosts, or set etcd.allow_even_members: true".into(),
        });
    }
    let adds_new = add.iter().filter(|(_, id)| id.is_none()).count();
    // A member added but never started counts in the size but not as healthy: it is in `listed`.
    let removes_healthy: Vec<bool> = remove.iter().map(|m| healthy.contains(&m.id)).collect();
    check_quorum(listed.len(), healthy.len(), adds_new, &removes_healthy).map_err(|reason| ApplyError::Refused {
        reason,
        hint: "run `capstan status` to see which members are down; change membership in smaller steps or \
               bring members back first"
            .into(),
    })?;
    // Re-issuing or restarting existing members needs every other member healthy (rolling).
    Ok(Membership::Existing {
        listed,
        current,
        add,
        remove,
        healthy,
    })
}

/// Reads every current member's versions (over SSH) and leadership, then decides whether this run
/// changes the etcd version and refuses unsupported changes. Nothing is changed here.
async fn decide_upgrade(
    cluster: &Cluster,
    members: &[DesiredMember],
    membership: &Membership,
    tls: &EtcdTls,
) -> Result<(Option<UpgradePlan>, BTreeSet<String>), ApplyError> {
    let Membership::Existing {
        listed,
        current,
        add,
        remove,
        healthy,
    } = membership
    else {
        return Ok((None, BTreeSet::new()));
    };
    let target = Version::parse(&cluster.versions.etcd).ok_or_else(|| ApplyError::Refused {
        reason: format!(
            "versions.etcd `{}` is not a MAJOR.MINOR.PATCH version",
            cluster.versions.etcd
        ),
        hint: "set versions.etcd to a release such as 3.5.1".into(),
    })?;
    let healthy_names: BTreeSet<&str> = listed
        .iter()
        .filter(|m| healthy.contains(&m.id))
        .map(|m| m.name.as_str())
        .collect();
    let settings = member_settings(cluster);
    let facts = futures::future::join_all(current.iter().map(|&i| {
        let transport = members[i].transport.clone();
        let port = settings.metrics_port;
        async move { probe_versions(transport.as_ref(), super::config::DEFAULT_ETCD_BINARY, port).await }
    }))
    .await;
    let mut states = Vec::new();
    for (&i, facts) in current.iter().zip(facts) {
        let member = &members[i];
        let is_healthy = healthy_names.contains(member.name());
        let mut leader = false;
        let mut facts: VersionFacts = facts?;
        if is_healthy {
            let endpoint = member.host.operator_endpoint();
            if let Ok(client) = EtcdClient::connect_with(std::slice::from_ref(&endpoint), tls, short_timeouts()).await {
                if let Ok(status) = client.status(&endpoint).await {
                    leader = status.leader;
                    // The gRPC status is authoritative for the running version; metrics may be off.
                    if let Some(running) = Version::parse(&status.version) {
                        facts.running = Some(running);
                    }
                }
            }
        }
        states.push(MemberState {
            name: member.name().to_string(),
            healthy: is_healthy,
            leader,
            facts,
        });
    }
    let membership_change =
        (!add.is_empty() || !remove.is_empty()).then(|| format!("{} to add, {} to remove", add.len(), remove.len()));
    let plan = plan_upgrade(&states, target, membership_change.as_deref()).map_err(ApplyError::Upgrade)?;
    let down = states.iter().filter(|s| !s.healthy).map(|s| s.name.clone()).collect();
    Ok((plan, down))
}

#[derive(Clone, Copy)]
enum StepKind {
    Bootstrap,
    Converge,
    ScaleUp,
    ScaleDown,
    Verify,
}

struct EtcdPhase(StepKind);

fn failed(phase: &str, reason: impl std::fmt::Display) -> PhaseError {
    PhaseError::Failed {
        phase: phase.to_string(),
        reason: reason.to_string(),
    }
}

impl EtcdRun {
    fn say(&self, line: &str) {
        let mut out = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "    {line}");
    }

    fn record(&self, phase: &str, report: RunReport) {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(PhaseReport {
                phase: phase.to_string(),
                report,
            });
    }

    /// A membership step as a report record, so summaries and JSON show it like any change.
    #[allow(clippy::too_many_arguments)] // one record's fields, spelled out at each call
    fn note(
        &self,
        phase: &str,
        mode: Mode,
        host: &str,
        op: &str,
        summary: &str,
        result: Result<(), String>,
        elapsed: Duration,
    ) {
        let mut report = HostReport::new(host);
        let status = match (&result, mode) {
            (Err(_), _) => OpStatus::Failed,
            _ => OpStatus::Changed,
        };
        report.push(OpRecord {
            op: op.to_string(),
            status,
            changes: vec![ChangeRecord {
                summary: summary.to_string(),
                diff: None,
                commands: Vec::new(),
            }],
            error: result.err(),
            elapsed,
        });
        report.elapsed = elapsed;
        let verb = if mode == Mode::Apply { "changed" } else { "would change" };
        self.say(&format!("{host}: [{verb}] {summary}"));
        self.record(
            phase,
            RunReport {
                mode,
                hosts: vec![report],
                elapsed,
            },
        );
    }

    async fn run_hosts(
        &self,
        ctx: &PhaseContext<EtcdRun>,
        phase: &str,
        hosts: Vec<HostOps>,
        mode: Mode,
    ) -> Result<RunReport, PhaseError> {
        let report = ctx.runner.run_with_mode(hosts, mode).await;
        self.record(phase, report.clone());
        let failed_hosts: Vec<String> = report.failed_hosts().into_iter().map(String::from).collect();
        if failed_hosts.is_empty() {
            Ok(report)
        } else {
            Err(PhaseError::HostsFailed {
                phase: phase.to_string(),
                hosts: failed_hosts,
            })
        }
    }

    fn endpoint(&self, index: usize) -> EtcdEndpoint {
        self.members[index].host.operator_endpoint()
    }

    async fn client(&self, endpoints: &[EtcdEndpoint]) -> Result<EtcdClient, EtcdError> {
        EtcdClient::connect_with(endpoints, &self.tls, short_timeouts()).await
    }

    fn bootstrap_values(&self) -> BootstrapValues {
        let all: Vec<_> = self.members.iter().map(|m| m.host.member()).collect();
        BootstrapValues {
            initial_cluster: initial_cluster(&all),
            initial_cluster_state: InitialClusterState::New,
            initial_cluster_token: self.token.clone(),
        }
    }

    fn config_file(&self, member: &DesiredMember, values: &BootstrapValues) -> Result<File, ConfigError> {
        let all: Vec<_> = self.members.iter().map(|m| m.host.member()).collect();
        let mut config = MemberConfig::new(
            &values.initial_cluster_token,
            &all,
            member.name(),
            values.initial_cluster_state,
            &self.settings,
        )?;
        config.initial_cluster = values.initial_cluster.clone();
        let text = render_member_config(&config)?;
        Ok(File::new(DEFAULT_CONFIG_FILE, text.into_bytes())
            .mode(0o644)
            .owner("root")
            .group("root"))
    }

    /// Binaries, PKI, data dir and unit: everything but the config and the service state.
    fn base_ops(&self, member: &DesiredMember, restart: bool) -> Result<HostOps, ApplyError> {
        let mut ops = HostOps::new(member.transport.clone());
        let pki = pki_paths();
        let pki_dir = pki
            .ca_file
            .rsplit_once('/')
            .map(|(dir, _)| dir)
            .unwrap_or("/etc/etcd/pki")
            .to_string();
        let push = |ops: &mut HostOps, op: Arc<dyn Operation>| ops.ops.push(op);
        let notify = |op: File| -> Arc<dyn Operation> {
            if restart {
                Arc::new(op.notify([SERVICE]))
            } else {
                Arc::new(op)
            }
        };
        ops.push(Directory::new("/etc/etcd").mode(0o755).owner("root").group("root"));
        ops.push(Directory::new(&pki_dir).mode(0o700).owner("root").group("root"));
        ops.push(
            Directory::new(&self.settings.data_dir)
                .mode(0o700)
                .owner("root")
                .group("root"),
        );
        let artifact = Artifact::new(&member.artifact.url, &member.artifact.sha256, BIN_DIR)?
            .mode(0o755)
            .owner("root")
            .group("root")
            .extract(member.tarball_members.clone())?;
        if restart {
            push(&mut ops, Arc::new(artifact.notify([SERVICE])));
        } else {
            ops.push(artifact);
        }
        let secret = |path: &str, pem: &str| {
            File::new(path, pem.as_bytes().to_vec())
                .mode(0o600)
                .owner("root")
                .group("root")
                .sensitive(true)
        };
        let public = |path: &str, pem: &str| {
            File::new(path, pem.as_bytes().to_vec())
                .mode(0o644)
                .owner("root")
                .group("root")
        };
        push(&mut ops, notify(public(&pki.ca_file, self.ca.cert_pem())));
        ops.push(secret(&ca_key_path(&pki), self.ca.key_pem()));
        if let Some(server) = &member.server {
            push(&mut ops, notify(public(&pki.server_cert_file, &server.cert_pem)));
            push(&mut ops, notify(secret(&pki.server_key_file, &server.key_pem)));
        }
        if let Some(peer) = &member.peer {
            push(&mut ops, notify(public(&pki.peer_cert_file, &peer.cert_pem)));
            push(&mut ops, notify(secret(&pki.peer_key_file, &peer.key_pem)));
        }
        let unit = SystemdUnit::new("etcd.service", render_unit(&UnitConfig::new(&self.cluster_name))?)?;
        if restart {
            push(&mut ops, Arc::new(unit.notify([SERVICE])));
        } else {
            ops.push(unit);
        }
        Ok(ops)
    }

    /// Start without waiting: with Type=notify a member only reports ready once the cluster has
    /// quorum, so members that bootstrap together must all be started before any is ready.
    fn start_no_block() -> Command {
        Command::new("start etcd", "systemctl start --no-block etcd").unless("systemctl is-active --quiet etcd")
    }

    /// Poll until exactly the inventory members at `indices` plus the `others` (members not in
    /// the inventory yet to be removed) are listed, started and healthy, with one leader.
    async fn wait_cluster_ready(
        &self,
        indices: &[usize],
        others: &[ListedMember],
        timeout: Duration,
    ) -> Result<(), String> {
        let mut endpoints: Vec<EtcdEndpoint> = indices.iter().map(|&i| self.endpoint(i)).collect();
        endpoints.extend(
            others
                .iter()
                .filter_map(|m| m.client_urls.first().and_then(|u| EtcdEndpoint::parse(u).ok())),
        );
        let mut want: BTreeSet<&str> = indices.iter().map(|&i| self.members[i].name()).collect();
        want.extend(others.iter().map(|m| m.name.as_str()));
        poll_until(timeout, Duration::from_millis(700), || async {
            let client = self.client(&endpoints).await.map_err(|e| error_chain(&e))?;
            let status = client.cluster_status().await.map_err(|e| error_chain(&e))?;
            let names: BTreeSet<&str> = status.members.iter().map(|m| m.name.as_str()).collect();
            if status.healthy && names == want {
                return Ok(());
            }
            Err(format!(
                "members [{}], leaders {}, unhealthy: [{}]",
                names.into_iter().collect::<Vec<_>>().join(", "),
                status.leaders.len(),
                status.unhealthy().join("; ")
            ))
        })
        .await
        .map_err(|last| format!("not healthy after {}s: {last}", timeout.as_secs()))
    }

    /// Poll until the member at `index` answers a linearizable read and has applied at least
    /// `raft_index` (it has caught up with what the leader had when it started).
    async fn wait_member_ready(&self, index: usize, raft_index: u64, timeout: Duration) -> Result<(), String> {
        let endpoint = self.endpoint(index);
        poll_until(timeout, Duration::from_millis(500), || async {
            let client = self
                .client(std::slice::from_ref(&endpoint))
                .await
                .map_err(|e| error_chain(&e))?;
            let health = client.health(&endpoint).await;
            if !health.healthy {
                return Err(health.error.unwrap_or_default());
            }
            let status = client.status(&endpoint).await.map_err(|e| error_chain(&e))?;
            if status.raft_index >= raft_index {
                Ok(())
            } else {
                Err(format!("raft index {} < {raft_index}", status.raft_index))
            }
        })
        .await
        .map_err(|last| {
            format!(
                "{} not healthy after {}s: {last}",
                self.members[index].name(),
                timeout.as_secs()
            )
        })
    }

    /// The leader's raft index, asked of the given members.
    async fn leader_raft_index(&self, indices: &[usize]) -> u64 {
        let mut best = 0;
        for &i in indices {
            let endpoint = self.endpoint(i);
            if let Ok(client) = self.client(std::slice::from_ref(&endpoint)).await {
                if let Ok(status) = client.status(&endpoint).await {
                    if status.leader {
                        return status.raft_index;
                    }
                    best = best.max(status.raft_index);
                }
            }
        }
        best
    }

    async fn bootstrap(&self, ctx: &PhaseContext<EtcdRun>, phase: &str, mode: Mode) -> Result<(), PhaseError> {
        let values = self.bootstrap_values();
        let mut lists = Vec::new();
        for member in &self.members {
            let mut ops = self.base_ops(member, false).map_err(|e| failed(phase, e))?;
            ops.push(self.config_file(member, &values).map_err(|e| failed(phase, e))?);
            ops.push(Service::new(SERVICE).map_err(|e| failed(phase, e))?.enabled(true));
            ops.push(Self::start_no_block());
            lists.push(ops);
        }
        self.run_hosts(ctx, phase, lists, mode).await?;
        if mode == Mode::DryRun {
            self.say(&format!(
                "would wait for {} members to form a healthy cluster",
                self.members.len()
            ));
            return Ok(());
        }
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.wait_cluster_ready(&all, &[], self.ready_timeout)
            .await
            .map_err(|e| failed(phase, e))?;
        self.say(&format!("{} members healthy", self.members.len()));
        Ok(())
    }

    fn converge_ops(&self, member: &DesiredMember) -> Result<HostOps, ApplyError> {
        let values = member
            .existing_values
            .clone()
            .unwrap_or_else(|| self.bootstrap_values());
        let mut ops = self.base_ops(member, true)?;
        if self.upgrade.as_ref().is_some_and(|u| u.member(member.name()).is_some()) {
            // An earlier run may have replaced the binary and stopped before the restart: the
            // running process then still executes the old, deleted file. Placed before the
            // artifact so that a binary replaced in this run restarts once, through its handler.
            let restart = Command::new("restart etcd onto the installed binary", "systemctl restart etcd").unless(
                "pid=$(systemctl show -p MainPID --value etcd); [ \"$pid\" = 0 ] || \
                 ! readlink /proc/$pid/exe | grep -q '(deleted)'",
            );
            ops.ops.insert(0, Arc::new(restart));
        }
        ops.push(self.config_file(member, &values)?.notify([SERVICE]));
        ops.push(Service::new(SERVICE)?.enabled(true).running(true));
        Ok(ops)
    }

    /// The member that leads now, asked of the given members.
    async fn leader_name(&self, indices: &[usize]) -> Option<String> {
        for &i in indices {
            let endpoint = self.endpoint(i);
            if let Ok(client) = self.client(std::slice::from_ref(&endpoint)).await {
                if let Ok(status) = client.status(&endpoint).await {
                    if status.leader {
                        return Some(self.members[i].name().to_string());
                    }
                }
            }
        }
        None
    }

    /// Poll until the member at `index` reports `target` as its server version.
    async fn wait_member_version(&self, index: usize, target: Version, timeout: Duration) -> Result<(), String> {
        let endpoint = self.endpoint(index);
        poll_until(timeout, Duration::from_millis(500), || async {
            let client = self
                .client(std::slice::from_ref(&endpoint))
                .await
                .map_err(|e| error_chain(&e))?;
            let status = client.status(&endpoint).await.map_err(|e| error_chain(&e))?;
            if Version::parse(&status.version) == Some(target) {
                Ok(())
            } else {
                Err(format!("it still runs etcd {}", status.version))
            }
        })
        .await
        .map_err(|last| {
            format!(
                "{} is healthy but not on etcd {target} after {}s: {last}",
                self.members[index].name(),
                timeout.as_secs()
            )
        })
    }

    /// The cluster version, read from the members' metrics (the first that answers).
    async fn cluster_version(&self) -> Option<super::upgrade::MinorLine> {
        for member in &self.members {
            let port = self.settings.metrics_port;
            if let Ok(facts) = probe_versions(member.transport.as_ref(), super::config::DEFAULT_ETCD_BINARY, port).await
            {
                if facts.cluster.is_some() {
                    return facts.cluster;
                }
            }
        }
        None
    }

    /// After a minor upgrade of every member, the leader raises the cluster version by itself
    /// (it checks the members' versions every few seconds); wait for that.
    async fn wait_cluster_version(&self, target: Version, timeout: Duration) -> Result<(), String> {
        poll_until(timeout, Duration::from_secs(1), || async {
            match self.cluster_version().await {
                Some(found) if found == target.line() => Ok(()),
                found => Err(found.map(|c| c.to_string()).unwrap_or_else(|| "unknown".into())),
            }
        })
        .await
        .map_err(|found| {
            format!(
                "every member runs etcd {target}, but the cluster version is still {found} after {}s",
                timeout.as_secs()
            )
        })
    }

    /// What to tell the operator when a member did not come back during a rollout.
    fn rollout_failure_hint(&self, failed: &str, done: &[String], current: &[usize]) -> Option<String> {
        let upgrade = self.upgrade.as_ref()?;
        let from = upgrade.member(failed).map(|m| m.from)?;
        let untouched: Vec<&str> = current
            .iter()
            .map(|&i| self.members[i].name())
            .filter(|n| *n != failed && !done.iter().any(|d| d == n))
            .collect();
        let mut hint = format!(
            "the rollout stopped at {failed}; the other members keep quorum. {}{}\
             Look at `journalctl -u etcd -n 100` on {failed}, then either fix the cause and run `capstan apply` \
             again (it continues with {failed}), ",
            if done.is_empty() {
                String::new()
            } else {
                format!("Already on {}: {}. ", upgrade.target, done.join(", "))
            },
            if untouched.is_empty() {
                String::new()
            } else {
                format!("Not touched (still on their old version): {}. ", untouched.join(", "))
            },
        );
        if from.line() == upgrade.target.line() {
            hint.push_str(&format!(
                "or set versions.etcd back to {from} and run `capstan apply` to put {failed} back (docs/upgrade.md)"
            ));
        } else {
            hint.push_str(&format!(
                "or go back to {} by restoring the pre-upgrade backup (`capstan restore`, docs/upgrade.md)",
                from.line()
            ));
        }
        Some(hint)
    }

    async fn converge(
        &self,
        ctx: &PhaseContext<EtcdRun>,
        phase: &str,
        mode: Mode,
        current: &[usize],
    ) -> Result<(), PhaseError> {
        let lists = |indices: &[usize]| -> Result<Vec<HostOps>, PhaseError> {
            indices
                .iter()
                .map(|&i| self.converge_ops(&self.members[i]).map_err(|e| failed(phase, e)))
                .collect()
        };
        if mode == Mode::DryRun {
            self.run_hosts(ctx, phase, lists(current)?, Mode::DryRun).await?;
            if let Some(upgrade) = &self.upgrade {
                let mut remaining: Vec<(&str, bool)> =
                    upgrade.members.iter().map(|m| (m.name.as_str(), m.down)).collect();
                let total = remaining.len();
                let mut step = 0;
                while !remaining.is_empty() {
                    let (name, _) = remaining.remove(next_in_rollout(&remaining, upgrade.leader.as_deref()));
                    step += 1;
                    let Some(member) = upgrade.member(name) else { continue };
                    let role = if upgrade.leader.as_deref() == Some(name) {
                        ", leader: last"
                    } else {
                        ""
                    };
                    self.note(
                        phase,
                        mode,
                        name,
                        "etcd version",
                        &format!(
                            "etcd {} → {} ({}, step {step} of {total}{role})",
                            member.from, upgrade.target, member.change
                        ),
                        Ok(()),
                        Duration::ZERO,
                    );
                }
            }
            return Ok(());
        }
        // Plan every member at once (probes only); members with nothing to do are done, the rest
        // are changed one at a time, each gated on being healthy again.
        let planner = Runner::new(
            RunOptions {
                mode: Mode::DryRun,
                concurrency: ctx.runner.options().concurrency,
            },
            Arc::new(NoProgress),
        );
        let planned = planner.run(lists(current)?).await;
        let mut unchanged = planned.clone();
        unchanged.mode = Mode::Apply;
        unchanged.hosts.retain(|h| h.changed == 0 && h.success());
        self.record(phase, unchanged);
        if let Some(bad) = planned.hosts.iter().find(|h| !h.success()) {
            let reason = bad.failures().next().and_then(|f| f.error.clone()).unwrap_or_default();
            return Err(failed(phase, format!("{}: {reason}", bad.host)));
        }
        let mut remaining: Vec<usize> = current
            .iter()
            .copied()
            .filter(|&i| {
                planned
                    .hosts
                    .iter()
                    .any(|h| h.host == self.members[i].name() && h.changed > 0)
            })
            .collect();
        let total = remaining.len();
        let mut done: Vec<String> = Vec::new();
        while !remaining.is_empty() {
            // Re-asked before every step: the leader goes last even if leadership moved.
            let leader = self.leader_name(current).await;
            let keys: Vec<(&str, bool)> = remaining
                .iter()
                .map(|&i| {
                    let name = self.members[i].name();
                    (name, self.down_at_start.contains(name))
                })
                .collect();
            let index = remaining.remove(next_in_rollout(&keys, leader.as_deref()));
            let name = self.members[index].name().to_string();
            let started = Instant::now();
            let result = self.converge_member(ctx, phase, current, index).await;
            let version_change = self
                .upgrade
                .as_ref()
                .and_then(|u| u.member(&name).map(|m| (m.from, m.change, u.target)));
            match result {
                Ok(()) => {
                    let step = total - remaining.len();
                    match version_change {
                        Some((from, change, target)) => {
                            self.note(
                                phase,
                                mode,
                                &name,
                                "etcd version",
                                &format!("etcd {from} → {target} ({change}, step {step} of {total})"),
                                Ok(()),
                                started.elapsed(),
                            );
                            self.say(&format!(
                                "{name}: healthy again on etcd {target} after {:.1}s",
                                started.elapsed().as_secs_f64()
                            ));
                        }
                        None => self.say(&format!("{name}: healthy again")),
                    }
                    done.push(name);
                }
                Err(reason) => {
                    if let Some((from, _, target)) = version_change {
                        self.note(
                            phase,
                            mode,
                            &name,
                            "etcd version",
                            &format!("etcd {from} → {target}"),
                            Err(reason.clone()),
                            started.elapsed(),
                        );
                    }
                    if let Some(hint) = self.rollout_failure_hint(&name, &done, current) {
                        *self.failure_hint.lock().unwrap_or_else(|p| p.into_inner()) = Some(hint);
                    }
                    return Err(failed(phase, reason));
                }
            }
        }
        Ok(())
    }

    /// Change one member: only when the others keep quorum without it; then wait until it
    /// answers again (and, during a version change, runs the target version).
    async fn converge_member(
        &self,
        ctx: &PhaseContext<EtcdRun>,
        phase: &str,
        current: &[usize],
        index: usize,
    ) -> Result<(), String> {
        let name = self.members[index].name();
        let others: Vec<usize> = current.iter().copied().filter(|&i| i != index).collect();
        let endpoints: Vec<EtcdEndpoint> = others.iter().map(|&i| self.endpoint(i)).collect();
        // Members that were restarting when the run began may still be coming back: wait for
        // them (up to the ready timeout) rather than refuse at once.
        let deadline = Instant::now() + self.ready_timeout;
        let mut healthy_others;
        loop {
            healthy_others = 0;
            for endpoint in &endpoints {
                if let Ok(client) = self.client(std::slice::from_ref(endpoint)).await {
                    if client.health(endpoint).await.healthy {
                        healthy_others += 1;
                    }
                }
            }
            if healthy_others >= quorum(current.len())
                || self.down_at_start.contains(name)
                || Instant::now() >= deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if healthy_others < quorum(current.len()) && !self.down_at_start.contains(name) {
            return Err(format!(
                "{name} needs a restart, but only {healthy_others} of the other {} members are healthy; \
                 restarting it would lose quorum",
                others.len()
            ));
        }
        let ops = self.converge_ops(&self.members[index]).map_err(|e| e.to_string())?;
        self.run_hosts(ctx, phase, vec![ops], Mode::Apply)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let started = Instant::now();
        self.wait_member_ready(index, 0, self.ready_timeout).await?;
        if let Some(upgrade) = &self.upgrade {
            let left = self
                .ready_timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(5));
            self.wait_member_version(index, upgrade.target, left).await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)] // the phase's share of the membership, spelled out
    async fn scale_up(
        &self,
        ctx: &PhaseContext<EtcdRun>,
        phase: &str,
        mode: Mode,
        listed: &[ListedMember],
        current: &[usize],
        add: &[(usize, Option<u64>)],
    ) -> Result<(), PhaseError> {
        let mut joined: Vec<usize> = current.to_vec();
        let mut listed: Vec<ListedMember> = listed.to_vec();
        for &(index, pending) in add {
            let member = &self.members[index];
            let name = member.name().to_string();
            let peer_url = member.host.member().peer_url();
            let mut prepare = self.base_ops(member, false).map_err(|e| failed(phase, e))?;
            prepare.push(Service::new(SERVICE).map_err(|e| failed(phase, e))?.enabled(true));
            self.run_hosts(ctx, phase, vec![prepare], mode).await?;

            let started = Instant::now();
            let initial_cluster = if let Some(id) = pending {
                self.note(
                    phase,
                    mode,
                    &name,
                    "etcd member add",
                    &format!("member {id:x} already added; starting it"),
                    Ok(()),
                    started.elapsed(),
                );
                listed
                    .iter()
                    .flat_map(|m| {
                        let n = if m.id == id { name.clone() } else { m.name.clone() };
                        m.peer_urls.iter().map(move |u| format!("{n}={u}"))
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            } else if mode == Mode::DryRun {
                self.note(
                    phase,
                    mode,
                    &name,
                    "etcd member add",
                    &format!("add member {name} ({peer_url})"),
                    Ok(()),
                    Duration::ZERO,
                );
                let mut parts: Vec<String> = listed
                    .iter()
                    .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={u}", m.name)))
                    .collect();
                parts.push(format!("{name}={peer_url}"));
                parts.join(",")
            } else {
                let endpoints: Vec<EtcdEndpoint> = joined.iter().map(|&i| self.endpoint(i)).collect();
                let result = async {
                    let client = self.client(&endpoints).await?;
                    client.member_add(&name, std::slice::from_ref(&peer_url)).await
                }
                .await;
                let summary = format!("add member {name} ({peer_url})");
                match result {
                    Ok(added) => {
                        self.note(
                            phase,
                            mode,
                            &name,
                            "etcd member add",
                            &summary,
                            Ok(()),
                            started.elapsed(),
                        );
                        listed = added.members.clone();
                        added.initial_cluster
                    }
                    Err(e) => {
                        let reason = super::client::error_chain(&e);
                        self.note(
                            phase,
                            mode,
                            &name,
                            "etcd member add",
                            &summary,
                            Err(reason.clone()),
                            started.elapsed(),
                        );
                        return Err(failed(phase, reason));
                    }
                }
            };
            let values = BootstrapValues {
                initial_cluster,
                initial_cluster_state: InitialClusterState::Existing,
                initial_cluster_token: self.token.clone(),
            };
            let mut start = HostOps::new(member.transport.clone());
            start.push(self.config_file(member, &values).map_err(|e| failed(phase, e))?);
            start.push(Self::start_no_block());
            let target = if mode == Mode::Apply {
                self.leader_raft_index(&joined).await
            } else {
                0
            };
            self.run_hosts(ctx, phase, vec![start], mode).await?;
            if mode == Mode::Apply {
                self.wait_member_ready(index, target, self.ready_timeout)
                    .await
                    .map_err(|e| failed(phase, e))?;
                self.say(&format!("{name}: joined and caught up (raft index ≥ {target})"));
            }
            joined.push(index);
        }
        Ok(())
    }

    async fn scale_down(
        &self,
        ctx: &PhaseContext<EtcdRun>,
        phase: &str,
        mode: Mode,
        current: &[usize],
        remove: &[ListedMember],
    ) -> Result<(), PhaseError> {
        // After scale-up, every inventory member is a member; removals go through them.
        let keep: Vec<usize> = (0..self.members.len()).collect();
        let endpoints: Vec<EtcdEndpoint> = if mode == Mode::Apply {
            keep.iter().map(|&i| self.endpoint(i)).collect()
        } else {
            current.iter().map(|&i| self.endpoint(i)).collect()
        };
        let mut still_listed: Vec<ListedMember> = remove.to_vec();
        for member in remove {
            still_listed.retain(|m| m.id != member.id);
            let label = if member.name.is_empty() {
                format!("{:x}", member.id)
            } else {
                member.name.clone()
            };
            let summary = format!("remove member {label} (id {:x})", member.id);
            let started = Instant::now();
            if mode == Mode::Apply {
                let result = async {
                    let client = self.client(&endpoints).await?;
                    client.member_remove(member.id).await
                }
                .await;
                if let Err(e) = result {
                    let reason = super::client::error_chain(&e);
                    self.note(
                        phase,
                        mode,
                        &label,
                        "etcd member remove",
                        &summary,
                        Err(reason.clone()),
                        started.elapsed(),
                    );
                    return Err(failed(phase, reason));
                }
            }
            self.note(
                phase,
                mode,
                &label,
                "etcd member remove",
                &summary,
                Ok(()),
                started.elapsed(),
            );
            match self.cleanup.get(&member.name) {
                Some(t) => {
                    let data_dir = quote(&self.settings.data_dir);
                    let ops = HostOps::new(t.clone())
                        .with(
                            Command::new("stop and disable etcd", "systemctl disable --now etcd")
                                .unless("! systemctl is-enabled --quiet etcd && ! systemctl is-active --quiet etcd"),
                        )
                        .with(
                            Command::new(
                                &format!("wipe etcd data dir {}", self.settings.data_dir),
                                &format!("rm -rf -- {data_dir}"),
                            )
                            .unless(&format!("[ ! -e {data_dir} ]")),
                        );
                    self.run_hosts(ctx, phase, vec![ops], mode).await?;
                }
                None => self.say(&format!(
                    "{label}: host not in the inventory or unreachable; stop etcd there and wipe its data dir yourself"
                )),
            }
            if mode == Mode::Apply {
                self.wait_cluster_ready(&keep, &still_listed, self.ready_timeout)
                    .await
                    .map_err(|e| failed(phase, e))?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Phase<EtcdRun> for EtcdPhase {
    fn name(&self) -> String {
        match self.0 {
            StepKind::Bootstrap => "etcd: bootstrap a new cluster",
            StepKind::Converge => "etcd: converge members (rolling, one at a time)",
            StepKind::ScaleUp => "etcd: add members (one at a time)",
            StepKind::ScaleDown => "etcd: remove members (one at a time)",
            StepKind::Verify => "etcd: verify cluster health",
        }
        .to_string()
    }

    async fn should_run(&self, ctx: &PhaseContext<EtcdRun>) -> Result<bool, PhaseError> {
        let state = &ctx.state;
        Ok(match (&state.membership, self.0) {
            (Membership::Bootstrap, StepKind::Bootstrap) => true,
            (Membership::Bootstrap, StepKind::Verify) => ctx.mode() == Mode::Apply,
            (Membership::Bootstrap, _) => false,
            (Membership::Existing { .. }, StepKind::Bootstrap) => false,
            (Membership::Existing { current, .. }, StepKind::Converge) => !current.is_empty(),
            (Membership::Existing { add, .. }, StepKind::ScaleUp) => !add.is_empty(),
            (Membership::Existing { remove, .. }, StepKind::ScaleDown) => !remove.is_empty(),
            (Membership::Existing { .. }, StepKind::Verify) => ctx.mode() == Mode::Apply,
        })
    }

    async fn run(&self, ctx: &PhaseContext<EtcdRun>) -> Result<(), PhaseError> {
        self.execute(ctx, Mode::Apply).await
    }

    async fn dry_run(&self, ctx: &PhaseContext<EtcdRun>) -> Result<(), PhaseError> {
        self.execute(ctx, Mode::DryRun).await
    }
}

impl EtcdPhase {
    async fn execute(&self, ctx: &PhaseContext<EtcdRun>, mode: Mode) -> Result<(), PhaseError> {
        let state = &ctx.state;
        let phase = self.name();
        match (&state.membership, self.0) {
            (_, StepKind::Bootstrap) => state.bootstrap(ctx, &phase, mode).await,
            (Membership::Existing { current, .. }, StepKind::Converge) => {
                state.converge(ctx, &phase, mode, current).await
            }
            (
                Membership::Existing {
                    listed, current, add, ..
                },
                StepKind::ScaleUp,
            ) => state.scale_up(ctx, &phase, mode, listed, current, add).await,
            (Membership::Existing { current, remove, .. }, StepKind::ScaleDown) => {
                state.scale_down(ctx, &phase, mode, current, remove).await
            }
            (_, StepKind::Verify) => {
                let all: Vec<usize> = (0..state.members.len()).collect();
                state
                    .wait_cluster_ready(&all, &[], state.ready_timeout)
                    .await
                    .map_err(|e| failed(&phase, e))?;
                state.say(&format!("{} members healthy, one leader", all.len()));
                if let Some(upgrade) = &state.upgrade {
                    if upgrade.moves_cluster_version() {
                        state
                            .wait_cluster_version(upgrade.target, state.ready_timeout)
                            .await
                            .map_err(|e| failed(&phase, e))?;
                    }
                    if let Some(cluster) = state.cluster_version().await {
                        state.say(&format!(
                            "every member runs etcd {}; cluster version {cluster}",
                            upgrade.target
                        ));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Converge the inventory's etcd hosts (or, in [`Mode::DryRun`], show what that would change).
/// `Err` means nothing was changed (inspection failed or the change was refused); a failure
/// during the phases is reported in [`ApplyOutcome::error`].
pub async fn apply(cluster: &Cluster, mut options: ApplyOptions) -> Result<ApplyOutcome, ApplyError> {
    let started = Instant::now();
    let mode = options.mode;
    let (mut run, conns) = prepare(cluster, &options).await?;
    let out = std::mem::replace(&mut options.out, Box::new(std::io::sink()));
    let (header_out, notes_out) = split_writer(out);
    run.notes = Mutex::new(notes_out);
    {
        let mut notes = run.notes.lock().unwrap_or_else(|p| p.into_inner());
        let _ = match &run.membership {
            Membership::Bootstrap => writeln!(
                notes,
                "etcd {} on {} hosts: no member has data yet, bootstrapping (token {})",
                cluster.versions.etcd,
                run.members.len(),
                run.token
            ),
            Membership::Existing {
                listed,
                add,
                remove,
                healthy,
                ..
            } => writeln!(
                notes,
                "etcd cluster of {} members ({} healthy): {} to add, {} to remove",
                listed.len(),
                healthy.len(),
                add.len(),
                remove.len()
            ),
        };
        if let Some(upgrade) = &run.upgrade {
            let leader = upgrade
                .leader
                .as_deref()
                .filter(|l| upgrade.member(l).is_some())
                .map(|l| format!(", the leader ({l}) last"))
                .unwrap_or_default();
            let _ = writeln!(
                notes,
                "etcd version change {} on {} of {} members: one at a time{leader}, each must be healthy on the new \
                 version before the next{}",
                upgrade.summary(),
                upgrade.members.len(),
                run.members.len(),
                match upgrade.cluster_version {
                    Some(c) => format!(" (cluster version {c})"),
                    None => String::new(),
                }
            );
        }
    }
    let runner = Runner::new(
        RunOptions {
            mode,
            concurrency: options.concurrency,
        },
        options.progress.clone(),
    );
    let ctx = PhaseContext::with_output(run, runner, header_out);
    let phases = PhaseRunner::new()
        .phase(EtcdPhase(StepKind::Bootstrap))
        .phase(EtcdPhase(StepKind::Converge))
        .phase(EtcdPhase(StepKind::ScaleUp))
        .phase(EtcdPhase(StepKind::ScaleDown))
        .phase(EtcdPhase(StepKind::Verify));
    let result = phases.run(&ctx).await;
    let cleanup: Vec<Arc<dyn Transport>> = ctx.state.cleanup.values().cloned().collect();
    futures::future::join_all(cleanup.iter().map(|t| t.close())).await;
    conns.close_all().await;
    let reports = ctx.state.reports.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let summary = merge_reports(mode, &reports, started.elapsed());
    let rollout_hint = ctx.state.failure_hint.lock().unwrap_or_else(|p| p.into_inner()).take();
    let hint = result.error.as_ref().map(|_| {
        rollout_hint.unwrap_or_else(|| {
            "run `capstan status` to see the members' state; fix the cause and run `capstan apply` again (it resumes)"
                .to_string()
        })
    });
    Ok(ApplyOutcome {
        mode,
        phases: result.phases,
        reports,
        summary,
        error: result.error.map(|e| e.to_string()),
        hint,
    })
}

/// Two handles writing to the same sink.
fn split_writer(out: Box<dyn Write + Send>) -> (Box<dyn Write + Send>, Box<dyn Write + Send>) {
    let shared = Arc::new(Mutex::new(out));
    (Box::new(SharedWriter(shared.clone())), Box::new(SharedWriter(shared)))
}

struct SharedWriter(Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_rules() {
        // (size, healthy, adds, removes (healthy?)) → allowed?
        let cases: &[(usize, usize, usize, &[bool], bool)] = &[
            (3, 3, 0, &[], true),
            (3, 3, 2, &[], true),
            (5, 5, 0, &[true, true], true),
            (5, 5, 0, &[true, true, true], true),
            (3, 2, 0, &[false], true),
            (3, 2, 0, &[true], false),
            (3, 2, 1, &[], false),
            (5, 4, 0, &[false, true], true),
            (5, 3, 0, &[true], false),
            (3, 1, 0, &[], false),
            (1, 1, 2, &[], true),
        ];
        for &(size, healthy, adds, removes, ok) in cases {
            let result = check_quorum(size, healthy, adds, removes);
            assert_eq!(result.is_ok(), ok, "{size} {healthy} {adds} {removes:?}: {result:?}");
        }
        let why = check_quorum(3, 2, 0, &[true]).unwrap_err();
        assert_eq!(
            why,
            "removing a member from 3 members (2 healthy) leaves 1 healthy of 2, below the quorum of 2"
        );
    }

    #[test]
    fn tokens_are_named_and_random() {
        let a = new_token("demo");
        let b = new_token("demo");
        assert!(a.starts_with("demo-") && a.len() == "demo-".len() + 8, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn reports_merge_per_host() {
        let rec = |status| OpRecord {
            op: "x".into(),
            status,
            changes: vec![],
            error: None,
            elapsed: Duration::from_secs(1),
        };
        let report = |hosts: Vec<(&str, OpStatus)>| RunReport {
            mode: Mode::Apply,
            hosts: hosts
                .into_iter()
                .map(|(h, s)| {
                    let mut r = HostReport::new(h);
                    r.push(rec(s));
                    r.elapsed = Duration::from_secs(1);
                    r
                })
                .collect(),
            elapsed: Duration::from_secs(1),
        };
        let merged = merge_reports(
            Mode::Apply,
            &[
                PhaseReport {
                    phase: "a".into(),
                    report: report(vec![("n1", OpStatus::Ok), ("n2", OpStatus::Changed)]),
                },
                PhaseReport {
                    phase: "b".into(),
                    report: report(vec![("n2", OpStatus::Ok), ("n3", OpStatus::Failed)]),
                },
            ],
            Duration::from_secs(3),
        );
        let rows: Vec<(String, usize, usize, usize)> = merged
            .hosts
            .iter()
            .map(|h| (h.host.clone(), h.ok, h.changed, h.failed))
            .collect();
        assert_eq!(
            rows,
            [
                ("n1".to_string(), 1, 0, 0),
                ("n2".to_string(), 1, 1, 0),
                ("n3".to_string(), 0, 0, 1)
            ]
        );
        assert_eq!(merged.hosts[1].elapsed, Duration::from_secs(2));
    }
}
