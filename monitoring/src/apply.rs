//! `capstan apply`/`plan` for monitoring: node_exporter on every host, Prometheus on the
//! `monitoring` hosts.
//!
//! Inspect (one probe per host: its architecture), decide (artifacts per architecture, every
//! component's scrape targets, each replica's configuration), then two phases of ops:
//!
//! 1. node_exporter (every host): system user, textfile collector directory, binary, unit;
//! 2. Prometheus (monitoring hosts, all at once: replicas are independent): system user, storage
//!    directory (0750), configuration, binaries (with promtool), unit.

// Errors carry whole messages; a run produces a handful.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::component::{Component, ComponentOutcome, RunContext};
use capstan_provisioner::facts::normalize_arch;
use capstan_provisioner::hint::Hint;
use capstan_provisioner::ops::{
    run_checked, Artifact, Command, Directory, File, OpError, OperationExt, Service, SystemdUnit,
};
use capstan_provisioner::phases::{Phase, PhaseContext, PhaseError, PhaseRunner};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::releases::{ReleaseError, ResolvedArtifact};
use capstan_provisioner::runner::HostOps;
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::Transport;

use crate::config::{self, ScrapeJob};
use crate::release::{members, monitoring_artifacts, MonitoringArtifacts};
use crate::TEXTFILE_DIR;

#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    #[error("cannot reach host(s) {}: {detail}", hosts.join(", "))]
    Unreachable { hosts: Vec<String>, detail: String },
    #[error("{0}")]
    Probe(OpError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("{0}")]
    Targets(String),
}

impl Hint for MonitoringError {
    fn hint(&self) -> Option<String> {
        match self {
            MonitoringError::Unreachable { .. } => Some(
                "node_exporter runs on every host, so every host must be reachable; check with `capstan check`".into(),
            ),
            MonitoringError::Release(ReleaseError::UnpinnedVersion { .. }) => Some(
                "capstan pins no upstream checksum for Prometheus or node_exporter yet: point `artifacts.mirror` at a mirror that has `versions.prometheus`/`versions.node_exporter`".into(),
            ),
            MonitoringError::Release(ReleaseError::NotOnMirror { .. }) => {
                Some("pick versions the mirror has (`versions.prometheus`, `versions.node_exporter`), or add them to the mirror".into())
            }
            _ => None,
        }
    }
}

struct MonitoredHost {
    host: Host,
    transport: Arc<dyn Transport>,
    arch: String,
    artifacts: MonitoringArtifacts,
    /// Its `prometheus.yml`, on a monitoring host.
    prometheus_config: Option<String>,
}

struct MonitoringRun {
    cluster: Cluster,
    hosts: Vec<MonitoredHost>,
}

async fn probe_arch(t: &dyn Transport) -> Result<String, OpError> {
    let output = run_checked(t, "uname -m").await?;
    let machine = output.stdout_str().trim().to_string();
    if machine.is_empty() {
        return Err(OpError::Probe {
            host: t.host().to_string(),
            what: "architecture".into(),
            reason: "uname -m printed nothing".into(),
        });
    }
    Ok(normalize_arch(&machine))
}

/// Each monitoring host's `prometheus.yml`, by host name.
pub fn replica_configs(cluster: &Cluster, jobs: &[ScrapeJob]) -> Result<BTreeMap<String, String>, String> {
    config::prometheus_hosts(cluster)
        .into_iter()
        .map(|host| {
            config::prometheus_config(cluster, &host.name, jobs)
                .map(|text| (host.name.clone(), text))
                .map_err(|e| e.to_string())
        })
        .collect()
}

async fn prepare(
    cluster: &Cluster,
    components: &[&dyn Component],
    ctx: &RunContext,
) -> Result<(MonitoringRun, Connections), MonitoringError> {
    let jobs = config::scrape_jobs(&config::scrape_targets(cluster, components)).map_err(MonitoringError::Targets)?;
    let configs = replica_configs(cluster, &jobs).map_err(MonitoringError::Targets)?;
    let targets: Vec<_> = cluster.hosts.iter().map(ssh_target).collect();
    let (conns, failures) = Connections::connect(&targets, ctx.concurrency.max(1)).await;
    if !failures.is_empty() {
        conns.close_all().await;
        return Err(MonitoringError::Unreachable {
            hosts: failures.keys().cloned().collect(),
            detail: failures.values().map(|e| e.to_string()).collect::<Vec<_>>().join("; "),
        });
    }
    let transports: Vec<Arc<dyn Transport>> = cluster
        .hosts
        .iter()
        .map(|h| conns.get(&h.name).expect("connected above"))
        .collect();
    let arches = futures::future::join_all(transports.iter().map(|t| probe_arch(t.as_ref()))).await;
    let mut by_arch: BTreeMap<(String, bool), MonitoringArtifacts> = BTreeMap::new();
    let mut hosts = Vec::new();
    for ((host, transport), arch) in cluster.hosts.iter().zip(transports).zip(arches) {
        let arch = match arch {
            Ok(arch) => arch,
            Err(e) => {
                conns.close_all().await;
                return Err(MonitoringError::Probe(e));
            }
        };
        let with_prometheus = host.has_role(Role::Monitoring);
        let key = (arch.clone(), with_prometheus);
        let artifacts = match by_arch.get(&key) {
            Some(artifacts) => artifacts.clone(),
            None => {
                let resolved = monitoring_artifacts(
                    &cluster.versions,
                    &arch,
                    cluster.artifacts.mirror.as_deref(),
                    with_prometheus,
                );
                let resolved = match resolved {
                    Ok(resolved) => resolved,
                    Err(e) => {
                        conns.close_all().await;
                        return Err(e.into());
                    }
                };
                by_arch.insert(key, resolved.clone());
                resolved
            }
        };
        hosts.push(MonitoredHost {
            prometheus_config: configs.get(&host.name).cloned(),
            host: host.clone(),
            transport,
            arch,
            artifacts,
        });
    }
    for job in &jobs {
        ctx.out
            .line(format!("    scrape job {}: {} target(s)", job.name, job.targets.len()));
    }
    Ok((
        MonitoringRun {
            cluster: cluster.clone(),
            hosts,
        },
        conns,
    ))
}

fn render(phase: &str, what: &str, result: config::RenderResult) -> Result<String, PhaseError> {
    result.map_err(|e| PhaseError::failed(phase.to_string(), format!("rendering {what}: {e}")))
}

fn op_error(phase: &str, e: OpError) -> PhaseError {
    PhaseError::Op {
        phase: phase.to_string(),
        source: e,
    }
}

fn user_op(name: &str) -> Command {
    let (create, exists) = config::system_user(name);
    Command::new(&format!("system user {name}"), &create).unless(&exists)
}

#[derive(Clone, Copy)]
enum Step {
    NodeExporter,
    Prometheus,
}

struct MonitoringPhase(Step);

#[async_trait]
impl Phase<MonitoringRun> for MonitoringPhase {
    fn name(&self) -> String {
        match self.0 {
            Step::NodeExporter => "monitoring: node_exporter (every host)",
            Step::Prometheus => "monitoring: Prometheus (monitoring hosts)",
        }
        .to_string()
    }

    async fn host_ops(&self, ctx: &PhaseContext<MonitoringRun>) -> Result<Vec<HostOps>, PhaseError> {
        let run = &ctx.state;
        let phase = self.name();
        let mut all = Vec::new();
        for host in &run.hosts {
            let mut ops = HostOps::new(host.transport.clone());
            match self.0 {
                Step::NodeExporter => node_exporter_ops(&mut ops, host, &run.cluster, &phase)?,
                Step::Prometheus => match &host.prometheus_config {
                    Some(text) => prometheus_ops(&mut ops, host, &run.cluster, text, &phase)?,
                    None => continue,
                },
            }
            all.push(ops);
        }
        Ok(all)
    }
}

fn node_exporter_ops(
    ops: &mut HostOps,
    host: &MonitoredHost,
    cluster: &Cluster,
    phase: &str,
) -> Result<(), PhaseError> {
    ops.push(user_op(config::NODE_EXPORTER_USER));
    ops.push(
        Directory::new(config::STATE_DIR)
            .mode(0o755)
            .owner("root")
            .group("root"),
    );
    // Root writes the metrics files (atomically); node_exporter only reads them.
    ops.push(Directory::new(TEXTFILE_DIR).mode(0o755).owner("root").group("root"));
    let unit = render(phase, "node_exporter unit", config::node_exporter_unit(&host.host))?;
    install_service(
        ops,
        phase,
        Release {
            artifact: &host.artifacts.node_exporter,
            project: "node_exporter",
            version: &cluster.versions.node_exporter,
            arch: &host.arch,
            binaries: &["node_exporter"],
        },
        (config::NODE_EXPORTER_UNIT, unit),
        config::NODE_EXPORTER_SERVICE,
    )
}

fn prometheus_ops(
    ops: &mut HostOps,
    host: &MonitoredHost,
    cluster: &Cluster,
    prometheus_config: &str,
    phase: &str,
) -> Result<(), PhaseError> {
    const USER: &str = config::PROMETHEUS_USER;
    ops.push(user_op(USER));
    let storage = cluster.monitoring.storage_path.display().to_string();
    ops.push(Directory::new(&storage).mode(0o750).owner(USER).group(USER));
    ops.push(
        Directory::new(config::CONFIG_DIR)
            .mode(0o755)
            .owner("root")
            .group("root"),
    );
    let artifact = host
        .artifacts
        .prometheus
        .as_ref()
        .ok_or_else(|| PhaseError::failed(phase.to_string(), "Prometheus was not resolved".to_string()))?;
    // Readable by the prometheus group only: it names every host and port of the cluster.
    ops.push(
        File::new(config::PROMETHEUS_CONFIG, prometheus_config.to_string())
            .mode(0o640)
            .owner("root")
            .group(USER)
            .notify([config::PROMETHEUS_SERVICE]),
    );
    let unit = render(phase, "Prometheus unit", config::prometheus_unit(cluster, &host.host))?;
    install_service(
        ops,
        phase,
        Release {
            artifact,
            project: "prometheus",
            version: &cluster.versions.prometheus,
            arch: &host.arch,
            binaries: &["prometheus", "promtool"],
        },
        (config::PROMETHEUS_UNIT, unit),
        config::PROMETHEUS_SERVICE,
    )
}

/// Binaries from one release tarball.
struct Release<'a> {
    artifact: &'a ResolvedArtifact,
    project: &'a str,
    version: &'a str,
    arch: &'a str,
    binaries: &'a [&'a str],
}

/// The release's binaries in [`config::BIN_DIR`], the unit `(name, text)`, and `service` enabled and
/// running (restarted when either changed).
fn install_service(
    ops: &mut HostOps,
    phase: &str,
    release: Release<'_>,
    (unit_name, unit_text): (&str, String),
    service: &str,
) -> Result<(), PhaseError> {
    let members = members(release.project, release.version, release.arch, release.binaries);
    let artifact = Artifact::new(&release.artifact.url, &release.artifact.checksum, config::BIN_DIR)
        .map(|a| a.mode(0o755).owner("root").group("root"))
        .and_then(|a| a.extract(members))
        .map_err(|e| op_error(phase, e))?;
    ops.push(artifact.notify([service]));
    let unit = SystemdUnit::new(unit_name, unit_text).map_err(|e| op_error(phase, e))?;
    ops.push(unit.notify([service]));
    ops.push(
        Service::new(service)
            .map_err(|e| op_error(phase, e))?
            .enabled(true)
            .running(true),
    );
    Ok(())
}

/// Converge (or, in dry-run mode, plan) monitoring; `components` are every component the binary
/// knows, whose scrape targets Prometheus gets.
pub async fn converge(
    cluster: &Cluster,
    components: &[&dyn Component],
    ctx: &RunContext,
) -> Result<ComponentOutcome, MonitoringError> {
    let started = Instant::now();
    let replicas: Vec<&str> = config::prometheus_hosts(cluster)
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    ctx.out.line(format!(
        "monitoring: node_exporter on {} host(s), Prometheus on {}",
        cluster.hosts.len(),
        replicas.join(", ")
    ));
    let (run, conns) = prepare(cluster, components, ctx).await?;
    let phases = PhaseRunner::new()
        .phase(MonitoringPhase(Step::NodeExporter))
        .phase(MonitoringPhase(Step::Prometheus));
    let outcome = ctx.run_phases(crate::component::NAME, run, phases, started).await;
    conns.close_all().await;
    Ok(outcome)
}
