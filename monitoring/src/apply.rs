//! `capstan apply`/`plan` for monitoring: node_exporter on every host, Prometheus and
//! Alertmanager on the `monitoring` hosts.
//!
//! Inspect (one probe per host: its architecture), decide (artifacts per architecture, every
//! component's scrape targets, each replica's configuration, the alert rules, Alertmanager's
//! configuration), then three phases of ops:
//!
//! 1. node_exporter (every host): system user, textfile collector directory, binary, unit, and
//!    the certificate expiry metrics (script, oneshot service, hourly timer);
//! 2. Alertmanager (monitoring hosts): system user, storage, configuration, binaries (with
//!    amtool), unit gossiping with the other monitoring hosts;
//! 3. Prometheus (monitoring hosts, one at a time, so a version or configuration change restarts
//!    one replica while the other keeps scraping and alerting): system user, storage directory
//!    (0750), configuration, alert rules, binaries (with promtool), unit.

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
use crate::credentials;
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
    #[error(transparent)]
    Credentials(credentials::CredentialError),
}

impl Hint for MonitoringError {
    fn hint(&self) -> Option<String> {
        match self {
            MonitoringError::Credentials(credentials::CredentialError::Component(e)) => e.hint.clone(),
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
    /// The alert rules and Alertmanager's configuration (the same on every monitoring host).
    rules: String,
    alertmanager_config: String,
    /// Client credentials for the targets that ask for one (on every monitoring host).
    credentials: Vec<credentials::ComponentCredential>,
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
    let mut jobs =
        config::scrape_jobs(&config::scrape_targets(cluster, components)).map_err(MonitoringError::Targets)?;
    let rules = config::alert_rules(cluster).map_err(|e| MonitoringError::Targets(e.to_string()))?;
    let alertmanager_config =
        config::alertmanager_config(cluster).map_err(|e| MonitoringError::Targets(e.to_string()))?;
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
    let monitoring_transports: Vec<Arc<dyn Transport>> = cluster
        .hosts
        .iter()
        .zip(&transports)
        .filter(|(h, _)| h.has_role(Role::Monitoring))
        .map(|(_, t)| t.clone())
        .collect();
    let credentials = match credentials::gather(cluster, components, &monitoring_transports).await {
        Ok(credentials) => credentials,
        Err(e) => {
            conns.close_all().await;
            return Err(MonitoringError::Credentials(e));
        }
    };
    credentials::apply_to_jobs(&mut jobs, &credentials);
    let configs = match replica_configs(cluster, &jobs) {
        Ok(configs) => configs,
        Err(e) => {
            conns.close_all().await;
            return Err(MonitoringError::Targets(e));
        }
    };
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
            rules,
            alertmanager_config,
            credentials,
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
    Alertmanager,
    /// The replica on this monitoring host (by name).
    Prometheus(usize),
}

struct MonitoringPhase(Step);

#[async_trait]
impl Phase<MonitoringRun> for MonitoringPhase {
    fn name(&self) -> String {
        match self.0 {
            Step::NodeExporter => "monitoring: node_exporter (every host)".to_string(),
            Step::Alertmanager => "monitoring: Alertmanager (monitoring hosts, clustered)".to_string(),
            Step::Prometheus(i) => format!("monitoring: Prometheus replica {}", i + 1),
        }
    }

    async fn host_ops(&self, ctx: &PhaseContext<MonitoringRun>) -> Result<Vec<HostOps>, PhaseError> {
        let run = &ctx.state;
        let phase = self.name();
        let mut all = Vec::new();
        let replicas = run.hosts.iter().filter(|h| h.prometheus_config.is_some());
        for (index, host) in run.hosts.iter().enumerate() {
            let mut ops = HostOps::new(host.transport.clone());
            match (self.0, &host.prometheus_config) {
                (Step::NodeExporter, _) => node_exporter_ops(&mut ops, host, &run.cluster, &phase)?,
                (Step::Alertmanager, Some(_)) => alertmanager_ops(&mut ops, host, run, &phase)?,
                (Step::Prometheus(i), Some(text)) => {
                    let this = replicas.clone().position(|h| std::ptr::eq(h, &run.hosts[index]));
                    if this != Some(i) {
                        continue;
                    }
                    prometheus_ops(&mut ops, host, run, text, &phase)?
                }
                _ => continue,
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
    cert_expiry_ops(ops, phase)?;
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

/// The certificate expiry metrics: script, oneshot service, hourly timer (enabled, running).
fn cert_expiry_ops(ops: &mut HostOps, phase: &str) -> Result<(), PhaseError> {
    let (script, service, timer) = config::cert_expiry_files().map_err(|e| {
        PhaseError::failed(
            phase.to_string(),
            format!("rendering the certificate expiry files: {e}"),
        )
    })?;
    let dir = std::path::Path::new(config::CERT_EXPIRY_SCRIPT)
        .parent()
        .expect("an absolute path")
        .display()
        .to_string();
    ops.push(Directory::new(&dir).mode(0o755).owner("root").group("root"));
    ops.push(
        File::new(config::CERT_EXPIRY_SCRIPT, script)
            .mode(0o755)
            .owner("root")
            .group("root")
            .notify([config::CERT_EXPIRY_SERVICE]),
    );
    let service_unit = SystemdUnit::new(config::CERT_EXPIRY_SERVICE, service).map_err(|e| op_error(phase, e))?;
    ops.push(service_unit.notify([config::CERT_EXPIRY_SERVICE]));
    let timer_unit = SystemdUnit::new(config::CERT_EXPIRY_TIMER, timer).map_err(|e| op_error(phase, e))?;
    ops.push(timer_unit);
    ops.push(
        Service::new(config::CERT_EXPIRY_TIMER)
            .map_err(|e| op_error(phase, e))?
            .enabled(true)
            .running(true),
    );
    Ok(())
}

fn alertmanager_ops(
    ops: &mut HostOps,
    host: &MonitoredHost,
    run: &MonitoringRun,
    phase: &str,
) -> Result<(), PhaseError> {
    let cluster = &run.cluster;
    let artifact = host
        .artifacts
        .alertmanager
        .as_ref()
        .ok_or_else(|| PhaseError::failed(phase.to_string(), "Alertmanager was not resolved".to_string()))?;
    // Receivers' URLs may carry tokens: readable by the alertmanager group only.
    server_files(
        ops,
        ServerFiles {
            user: config::ALERTMANAGER_USER,
            storage: config::ALERTMANAGER_STORAGE,
            config_dir: config::ALERTMANAGER_CONFIG_DIR,
            config: (config::ALERTMANAGER_CONFIG, &run.alertmanager_config),
            service: config::ALERTMANAGER_SERVICE,
        },
    );
    let templates = config::alertmanager_templates()
        .map_err(|e| PhaseError::failed(phase.to_string(), format!("rendering Alertmanager's templates: {e}")))?;
    let dir = config::DEBIAN_ALERTMANAGER_TEMPLATES;
    ops.push(Directory::new(dir).mode(0o755).owner("root").group("root"));
    for (name, text) in templates {
        ops.push(
            File::new(&format!("{dir}/{name}"), text)
                .mode(0o644)
                .owner("root")
                .group("root")
                .notify([config::ALERTMANAGER_SERVICE]),
        );
    }
    let unit = render(
        phase,
        "Alertmanager unit",
        config::alertmanager_unit(cluster, &host.host),
    )?;
    install_service(
        ops,
        phase,
        Release {
            artifact,
            project: "alertmanager",
            version: &cluster.versions.alertmanager,
            arch: &host.arch,
            binaries: &["alertmanager", "amtool"],
        },
        (config::ALERTMANAGER_UNIT, unit),
        config::ALERTMANAGER_SERVICE,
    )
}

fn prometheus_ops(
    ops: &mut HostOps,
    host: &MonitoredHost,
    run: &MonitoringRun,
    prometheus_config: &str,
    phase: &str,
) -> Result<(), PhaseError> {
    let cluster = &run.cluster;
    let artifact = host
        .artifacts
        .prometheus
        .as_ref()
        .ok_or_else(|| PhaseError::failed(phase.to_string(), "Prometheus was not resolved".to_string()))?;
    // Readable by the prometheus group only: it names every host and port of the cluster.
    server_files(
        ops,
        ServerFiles {
            user: config::PROMETHEUS_USER,
            storage: &cluster.monitoring.storage_path.display().to_string(),
            config_dir: config::CONFIG_DIR,
            config: (config::PROMETHEUS_CONFIG, prometheus_config),
            service: config::PROMETHEUS_SERVICE,
        },
    );
    for credential in &run.credentials {
        credential.ops(ops);
    }
    ops.push(
        Directory::new(config::RULES_DIR)
            .mode(0o755)
            .owner("root")
            .group("root"),
    );
    ops.push(
        File::new(config::RULES_FILE, run.rules.clone())
            .mode(0o644)
            .owner("root")
            .group("root")
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

/// A server's own user, storage directory (0750, its own) and configuration (0640, readable by
/// its group only).
struct ServerFiles<'a> {
    user: &'a str,
    storage: &'a str,
    config_dir: &'a str,
    /// (path, text)
    config: (&'a str, &'a str),
    /// Restarted when the configuration changes.
    service: &'a str,
}

fn server_files(ops: &mut HostOps, files: ServerFiles<'_>) {
    ops.push(user_op(files.user));
    ops.push(
        Directory::new(files.storage)
            .mode(0o750)
            .owner(files.user)
            .group(files.user),
    );
    ops.push(Directory::new(files.config_dir).mode(0o755).owner("root").group("root"));
    ops.push(
        File::new(files.config.0, files.config.1.to_string())
            .mode(0o640)
            .owner("root")
            .group(files.user)
            .notify([files.service]),
    );
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
        "monitoring: node_exporter on {} host(s), Prometheus and Alertmanager on {}",
        cluster.hosts.len(),
        replicas.join(", ")
    ));
    let (run, conns) = prepare(cluster, components, ctx).await?;
    let mut phases = PhaseRunner::new()
        .phase(MonitoringPhase(Step::NodeExporter))
        .phase(MonitoringPhase(Step::Alertmanager));
    for i in 0..replicas.len() {
        phases = phases.phase(MonitoringPhase(Step::Prometheus(i)));
    }
    let outcome = ctx.run_phases(crate::component::NAME, run, phases, started).await;
    conns.close_all().await;
    Ok(outcome)
}
