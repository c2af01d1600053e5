//! Converging the API endpoint (`capstan apply`, and `plan` as its dry run).
//!
//! Inspect first (connect to every control-plane and node host, probe each, read the Kubernetes
//! CA from a control-plane host or make one, decide which API server certificates need issuing),
//! refusing before anything changes when a host is unreachable or the hosts disagree about the
//! CA. Then the phases:
//!
//! 1. `pki`: the CA certificate on every host; the CA key and the API server's certificate on
//!    the control-plane hosts (issued only when missing or no longer fitting).
//! 2. `packages`: haproxy everywhere; keepalived and curl on control-plane hosts with a VIP.
//! 3. `haproxy`: its config, validated with `haproxy -c` before it replaces the running one, then
//!    a reload (never a restart); one host at a time, stopping at the first failure.
//! 4. `keepalived` (VIP mode): the health-check script and config (validated with
//!    `keepalived -t`, then reloaded), one control-plane host at a time.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use capstan_inventory::{ApiEndpoint, Cluster, Host, Role};
use capstan_provisioner::component::{ComponentError, ComponentOutcome, RunContext};
use capstan_provisioner::facts::FactCache;
use capstan_provisioner::ops::probe_batch::prefetch_ops;
use capstan_provisioner::ops::{apt_source_file, Absent, Directory, File, Package, Service};
use capstan_provisioner::phases::{Phase, PhaseContext, PhaseError, PhaseRunner};
use capstan_provisioner::pki::{locate_pair, needs_reissue, CertificateAuthority, IssuedCert, PairCopy, PairNames};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::runner::HostOps;
use capstan_provisioner::transport::Transport;

use crate::config::{
    backends, interface_with_address, render_check_script, render_haproxy, render_keepalived, vrrp_config, HealthCheck,
    CHECK_SCRIPT, HAPROXY_CONFIG, KEEPALIVED_CONFIG,
};
use crate::hosts::{connect_kube_hosts, KubeHostsError, UNREACHABLE_HINT};
use crate::kube_pki::{self, APISERVER_CERT, APISERVER_KEY, CA_CERT, CA_KEY, PKI_DIR};
use crate::ops::ValidatedConfig;
use crate::probe::{probe_host, read_ca_key, HostProbe};

const NAME: &str = "endpoint";

/// One host of the run and what it gets.
struct EndpointHost {
    transport: Arc<dyn Transport>,
    /// Probe results of this run (see [`EndpointRun::prefetch_probes`]).
    facts: Arc<FactCache>,
    control_plane: bool,
    /// A new API server certificate, when the host's no longer fits.
    apiserver: Option<IssuedCert>,
    haproxy_config: String,
    /// keepalived's config, in VIP mode on control-plane hosts.
    keepalived_config: Option<String>,
    /// keepalived runs capstan's config here, but the inventory no longer asks for a VIP.
    retire_keepalived: bool,
}

struct EndpointRun {
    ca: CertificateAuthority,
    /// keepalived's health check of the local endpoint.
    check_script: String,
    /// The inventory's `artifacts.apt_source`.
    apt_source: Option<String>,
    hosts: Vec<EndpointHost>,
    vip: bool,
}

impl EndpointRun {
    /// One op list per host, filled by `fill` (hosts it gives nothing are left out), planned
    /// from the probes [`EndpointRun::prefetch_probes`] read.
    fn per_host(&self, fill: FillOps) -> Vec<HostOps> {
        self.hosts
            .iter()
            .map(|h| {
                let mut ops = HostOps::new(h.transport.clone()).with_facts(h.facts.clone());
                fill(self, h, &mut ops);
                ops
            })
            .filter(|ops| !ops.ops.is_empty())
            .collect()
    }
}

fn refuse(message: impl Into<String>, hint: Option<&str>) -> ComponentError {
    ComponentError {
        component: NAME,
        message: message.into(),
        hint: hint.map(str::to_string),
    }
}

/// Converge the endpoint on `cluster` in `ctx.mode`.
pub async fn converge(cluster: &Cluster, ctx: &RunContext) -> Result<ComponentOutcome, ComponentError> {
    let started = Instant::now();
    let (hosts, connections) = connect_kube_hosts(cluster, ctx.concurrency)
        .await
        .map_err(|e| match e {
            KubeHostsError::NoControlPlane => refuse(
                "no host has the control_plane role: the endpoint has nothing to forward to",
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
    // Every host at once: one round trip each.
    let probes = futures::future::join_all(hosts.into_iter().map(|host| async move {
        let transport = connections
            .get(&host.name)
            .ok_or_else(|| refuse(format!("{}: no connection", host.name), None))?;
        let probe = probe_host(transport.as_ref())
            .await
            .map_err(|e| refuse(e.to_string(), None))?;
        Ok::<_, ComponentError>((host, transport, probe))
    }))
    .await;
    let probed: Vec<(Host, Arc<dyn Transport>, HostProbe)> = probes.into_iter().collect::<Result<_, _>>()?;
    let ca = cluster_ca(cluster, &probed).await?;
    let request = kube_pki::apiserver_request(cluster);
    let now = SystemTime::now();
    let backends = backends(cluster);
    let mut run_hosts = Vec::new();
    for (host, transport, probe) in probed {
        let control_plane = host.has_role(Role::ControlPlane);
        let apiserver = if control_plane
            && (!probe.has_apiserver_key
                || needs_reissue(probe.apiserver_cert.as_deref(), &ca, &request, now).is_some())
        {
            Some(ca.issue(&request).map_err(|e| refuse(e.to_string(), None))?)
        } else {
            None
        };
        let haproxy_config = render_haproxy(cluster, &host, &backends, ca.cert_pem(), CA_CERT, HealthCheck::DEFAULT)
            .map_err(|e| refuse(e.to_string(), None))?;
        let keepalived_config = if control_plane {
            let interface = interface_with_address(&probe.addresses, &host.private_address);
            vrrp_config(cluster, &host, interface.as_deref())
                .map_err(|e| refuse(e.to_string(), Some("see docs/endpoint.md, VIP mode")))?
                .map(|config| render_keepalived(&config))
                .transpose()
                .map_err(|e| refuse(e.to_string(), None))?
        } else {
            None
        };
        run_hosts.push(EndpointHost {
            transport,
            facts: Arc::new(FactCache::new()),
            control_plane,
            apiserver,
            haproxy_config,
            retire_keepalived: keepalived_config.is_none() && probe.capstan_keepalived,
            keepalived_config,
        });
    }
    let state = EndpointRun {
        ca,
        check_script: render_check_script().map_err(|e| refuse(e.to_string(), None))?,
        apt_source: cluster.artifacts.apt_source.clone(),
        vip: matches!(cluster.api_endpoint, ApiEndpoint::Vip { .. }),
        hosts: run_hosts,
    };
    state.prefetch_probes().await;
    let phases = PhaseRunner::new()
        .phase(PkiPhase)
        .phase(PackagesPhase)
        .phase(HaproxyPhase)
        .phase(KeepalivedPhase);
    let mut outcome = ctx.run_phases(NAME, state, phases, started).await;
    if outcome.error.is_some() {
        outcome.hint = Some("fix the failing host and run `capstan apply --only endpoint` again".to_string());
    }
    Ok(outcome)
}

/// The cluster's Kubernetes CA: read from the first control-plane host that has it (all hosts
/// holding a CA certificate must hold the same one), or a new one when none has it.
async fn cluster_ca(
    cluster: &Cluster,
    probed: &[(Host, Arc<dyn Transport>, HostProbe)],
) -> Result<CertificateAuthority, ComponentError> {
    let copies: Vec<PairCopy> = probed
        .iter()
        .map(|(h, _, p)| PairCopy {
            host: &h.name,
            public: p.ca_cert.as_deref(),
            has_secret: p.has_ca_key,
            keeps_secret: h.has_role(Role::ControlPlane),
        })
        .collect();
    let names = PairNames {
        what: "Kubernetes CA",
        public_path: CA_CERT,
        secret_path: CA_KEY,
        keeper: "control-plane host",
        new_one_breaks: "break every certificate it signed",
    };
    match locate_pair(&copies, &names).map_err(|r| refuse(r.message, Some(&r.hint)))? {
        Some(i) => {
            let (host, transport, probe) = &probed[i];
            let key = read_ca_key(transport.as_ref())
                .await
                .map_err(|e| refuse(e.to_string(), None))?;
            let cert = probe.ca_cert.as_deref().unwrap_or_default();
            CertificateAuthority::from_pem(cert, &key)
                .map_err(|e| refuse(format!("{}: the Kubernetes CA is unusable: {e}", host.name), None))
        }
        None => kube_pki::generate_ca(&cluster.name).map_err(|e| refuse(e.to_string(), None)),
    }
}

/// What each phase puts on a host, as op lists the phases run and the inspection prefetches.
impl EndpointRun {
    fn pki_ops(&self, h: &EndpointHost, ops: &mut HostOps) {
        ops.push(Directory::new(PKI_DIR).mode(0o755).owner("root").group("root"));
        ops.push(root_file(CA_CERT, self.ca.cert_pem(), 0o644));
        if h.control_plane {
            ops.push(root_file(CA_KEY, self.ca.key_pem(), 0o600).sensitive(true));
            if let Some(cert) = &h.apiserver {
                ops.push(root_file(APISERVER_CERT, &cert.cert_pem, 0o644));
                ops.push(root_file(APISERVER_KEY, &cert.key_pem, 0o600).sensitive(true));
            }
        }
    }

    fn package_ops(&self, h: &EndpointHost, ops: &mut HostOps) {
        let names: &[&str] = if self.vip && h.control_plane {
            &["haproxy", "keepalived", "curl"]
        } else {
            &["haproxy"]
        };
        if let Some(source) = &self.apt_source {
            ops.push(apt_source_file(source));
        }
        ops.push(Package::new(names.iter().copied()).from_source(self.apt_source.as_deref()));
    }

    fn haproxy_ops(&self, h: &EndpointHost, ops: &mut HostOps) {
        let file = root_file(HAPROXY_CONFIG, &h.haproxy_config, 0o644);
        ops.push(ValidatedConfig::new(file, "haproxy -c -q -f {}", "haproxy"));
        ops.push(running("haproxy"));
    }

    fn keepalived_ops(&self, h: &EndpointHost, ops: &mut HostOps) {
        if h.retire_keepalived {
            // The VIP was given up: stop holding it, and leave no config that would bring it back.
            ops.push(
                Service::new("keepalived")
                    .expect("a constant, valid unit name")
                    .enabled(false)
                    .running(false),
            );
            ops.push(Absent::new(KEEPALIVED_CONFIG));
            ops.push(Absent::new(CHECK_SCRIPT));
            return;
        }
        let Some(config) = &h.keepalived_config else {
            return;
        };
        // The script first: keepalived's config test rejects a config whose check script is missing.
        ops.push(root_file(CHECK_SCRIPT, &self.check_script, 0o755));
        ops.push(ValidatedConfig::new(
            root_file(KEEPALIVED_CONFIG, config, 0o644),
            "keepalived --config-test -f {}",
            "keepalived",
        ));
        ops.push(running("keepalived"));
    }

    /// Every phase's probes of every host, in one round trip per host, into the host's cache
    /// (a host a phase changes is probed again before the next op plans). A failed batch only
    /// costs the ops their own probes.
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

type FillOps = fn(&EndpointRun, &EndpointHost, &mut HostOps);

/// The phases' op lists, in phase order.
const PHASE_OPS: [FillOps; 4] = [
    EndpointRun::pki_ops,
    EndpointRun::package_ops,
    EndpointRun::haproxy_ops,
    EndpointRun::keepalived_ops,
];

struct PkiPhase;

#[async_trait]
impl Phase<EndpointRun> for PkiPhase {
    fn name(&self) -> String {
        "pki".into()
    }
    async fn host_ops(&self, ctx: &PhaseContext<EndpointRun>) -> Result<Vec<HostOps>, PhaseError> {
        Ok(ctx.state.per_host(EndpointRun::pki_ops))
    }
}

fn root_file(path: &str, content: &str, mode: u32) -> File {
    File::new(path, content.as_bytes().to_vec())
        .mode(mode)
        .owner("root")
        .group("root")
}

struct PackagesPhase;

#[async_trait]
impl Phase<EndpointRun> for PackagesPhase {
    fn name(&self) -> String {
        "packages".into()
    }
    async fn host_ops(&self, ctx: &PhaseContext<EndpointRun>) -> Result<Vec<HostOps>, PhaseError> {
        Ok(ctx.state.per_host(EndpointRun::package_ops))
    }
}

/// Runs each host's ops on its own, in order, stopping at the first host that fails: a config
/// that does not validate never goes further than one host.
async fn one_host_at_a_time(
    ctx: &PhaseContext<EndpointRun>,
    phase: &str,
    hosts: Vec<HostOps>,
) -> Result<(), PhaseError> {
    let mode = ctx.mode();
    for host in hosts {
        ctx.run_ops(phase, vec![host], mode).await?;
    }
    Ok(())
}

/// `service` enabled at boot and running.
fn running(service: &str) -> Service {
    Service::new(service)
        .expect("a constant, valid unit name")
        .enabled(true)
        .running(true)
}

struct HaproxyPhase;

#[async_trait]
impl Phase<EndpointRun> for HaproxyPhase {
    fn name(&self) -> String {
        "haproxy".into()
    }
    async fn run(&self, ctx: &PhaseContext<EndpointRun>) -> Result<(), PhaseError> {
        one_host_at_a_time(ctx, &self.name(), ctx.state.per_host(EndpointRun::haproxy_ops)).await
    }
    async fn dry_run(&self, ctx: &PhaseContext<EndpointRun>) -> Result<(), PhaseError> {
        one_host_at_a_time(ctx, &self.name(), ctx.state.per_host(EndpointRun::haproxy_ops)).await
    }
}

struct KeepalivedPhase;

#[async_trait]
impl Phase<EndpointRun> for KeepalivedPhase {
    fn name(&self) -> String {
        "keepalived".into()
    }
    async fn should_run(&self, ctx: &PhaseContext<EndpointRun>) -> Result<bool, PhaseError> {
        Ok(ctx.state.vip || ctx.state.hosts.iter().any(|h| h.retire_keepalived))
    }
    async fn run(&self, ctx: &PhaseContext<EndpointRun>) -> Result<(), PhaseError> {
        one_host_at_a_time(ctx, &self.name(), ctx.state.per_host(EndpointRun::keepalived_ops)).await
    }
    async fn dry_run(&self, ctx: &PhaseContext<EndpointRun>) -> Result<(), PhaseError> {
        one_host_at_a_time(ctx, &self.name(), ctx.state.per_host(EndpointRun::keepalived_ops)).await
    }
}
