//! `capstan apply`/`plan` for monitoring: node_exporter on every host, Prometheus and
//! Alertmanager on the `monitoring` hosts.
//!
//! Inspect (one probe per host: its architecture), decide (artifacts per architecture, every
//! component's scrape targets, each replica's configuration, the alert rules, Alertmanager's
//! configuration), then three phases of ops:
//!
//! 1. node_exporter (every host): system user, textfile collector directory, binary, unit, and
//!    the certificate expiry metrics (script, oneshot service, hourly timer);
//! 2. Alertmanager (monitoring hosts, one phase per replica): system user, storage, configuration,
//!    binaries (with amtool), unit gossiping with the other monitoring hosts;
//! 3. Prometheus (monitoring hosts, one phase per replica): system user, storage directory
//!    (0750), configuration, alert rules, binaries (with promtool), unit.
//!
//! A replica's phase ends only when its server is ready again on the inventory's version (and
//! Prometheus scrapes), so a version or configuration change restarts one replica while the others
//! keep scraping and alerting ([`crate::rollout`]).

// Errors carry whole messages; a run produces a handful.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use capstan_inventory::{Cluster, Host, Role, SecretSource};
use capstan_provisioner::component::{Component, ComponentOutcome, RunContext};
use capstan_provisioner::facts::normalize_arch;
use capstan_provisioner::hint::Hint;
use capstan_provisioner::ops::{
    run_checked, Absent, Artifact, Command, Directory, File, OpError, OperationExt, Service, SystemdUnit,
};
use capstan_provisioner::phases::{Phase, PhaseContext, PhaseError, PhaseRunner};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::releases::{ReleaseError, ResolvedArtifact};
use capstan_provisioner::runner::HostOps;
use capstan_provisioner::runner::Mode;
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::Transport;

use crate::config::{self, ScrapeJob};
use crate::credentials;
use crate::release::{members, monitoring_artifacts, MonitoringArtifacts};
use crate::rollout::{self, Server, READY_TIMEOUT};
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
    /// Names where the password was looked for, never its content.
    #[error("the SMTP password for `monitoring.smtp.username`: {0}")]
    SmtpPassword(String),
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
            MonitoringError::SmtpPassword(_) => Some(
                "set the environment variable `monitoring.smtp.password_env` names, or put the password in the file `password_file` names".into(),
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
    /// The order replicas change in, as (index into `hosts`, waited for after its change):
    /// Alertmanager's, Prometheus's.
    alertmanager_order: Vec<(usize, bool)>,
    prometheus_order: Vec<(usize, bool)>,
    /// The SMTP relay's password, when `monitoring.smtp` authenticates.
    smtp_password: Option<SmtpPassword>,
}

/// A password, kept out of `Debug` and every message.
struct SmtpPassword(String);

impl std::fmt::Debug for SmtpPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SmtpPassword(<redacted>)")
    }
}

/// Reads the SMTP password from where the inventory says (on this machine); errors name the
/// place, never the content.
fn smtp_password(cluster: &Cluster) -> Result<Option<SmtpPassword>, MonitoringError> {
    let Some(auth) = cluster.monitoring.smtp.as_ref().and_then(|smtp| smtp.auth.as_ref()) else {
        return Ok(None);
    };
    let text = match &auth.password {
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| MonitoringError::SmtpPassword(format!("cannot read {}: {e}", path.display())))?,
        SecretSource::Env(name) => std::env::var(name).map_err(|_| {
            MonitoringError::SmtpPassword(format!("the environment variable {name} is not set (or not UTF-8)"))
        })?,
    };
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if password.is_empty() {
        let place = match &auth.password {
            SecretSource::File(path) => path.display().to_string(),
            SecretSource::Env(name) => format!("${name}"),
        };
        return Err(MonitoringError::SmtpPassword(format!("{place} is empty")));
    }
    Ok(Some(SmtpPassword(password.to_string())))
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
    let smtp_password = smtp_password(cluster)?;
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
    let alertmanager_order = replica_order(&hosts, Server::Alertmanager).await;
    let prometheus_order = replica_order(&hosts, Server::Prometheus).await;
    Ok((
        MonitoringRun {
            cluster: cluster.clone(),
            hosts,
            rules,
            alertmanager_config,
            credentials,
            alertmanager_order,
            prometheus_order,
            smtp_password,
        },
        conns,
    ))
}

/// The monitoring hosts (indices into `hosts`) in the order `server` changes on them, the ones
/// whose server does not answer ready now first ([`rollout::rollout_order`]), each with whether
/// the rollout waits for it ([`rollout::gated`]).
async fn replica_order(hosts: &[MonitoredHost], server: Server) -> Vec<(usize, bool)> {
    let replicas: Vec<usize> = (0..hosts.len())
        .filter(|&i| hosts[i].prometheus_config.is_some())
        .collect();
    let ready = futures::future::join_all(replicas.iter().map(|&i| async move {
        let host = &hosts[i];
        rollout::probe_readiness(host.transport.as_ref(), server, &host.host)
            .await
            .map(|r| r.ready)
            .unwrap_or(false)
    }))
    .await;
    let order = rollout::rollout_order(&ready);
    let ready_in_order: Vec<bool> = order.iter().map(|&k| ready[k]).collect();
    order
        .iter()
        .zip(rollout::gated(&ready_in_order))
        .map(|(&k, gate)| (replicas[k], gate))
        .collect()
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
    /// The `k`-th replica in the server's rollout order.
    Replica(Server, usize),
}

struct MonitoringPhase(Step);

impl MonitoringPhase {
    /// The host of this replica phase (an index into `run.hosts`), and whether the rollout waits
    /// for it.
    fn replica_host(&self, run: &MonitoringRun) -> Option<(Server, usize, bool)> {
        match self.0 {
            Step::NodeExporter => None,
            Step::Replica(server, k) => {
                let order = match server {
                    Server::Prometheus => &run.prometheus_order,
                    Server::Alertmanager => &run.alertmanager_order,
                };
                order.get(k).map(|&(index, gate)| (server, index, gate))
            }
        }
    }
}

#[async_trait]
impl Phase<MonitoringRun> for MonitoringPhase {
    fn name(&self) -> String {
        match self.0 {
            Step::NodeExporter => "monitoring: node_exporter (every host)".to_string(),
            Step::Replica(server, k) => format!("monitoring: {} replica {}", server.title(), k + 1),
        }
    }

    async fn host_ops(&self, ctx: &PhaseContext<MonitoringRun>) -> Result<Vec<HostOps>, PhaseError> {
        let run = &ctx.state;
        let phase = self.name();
        let mut all = Vec::new();
        let replica = self.replica_host(run);
        for (index, host) in run.hosts.iter().enumerate() {
            let mut ops = HostOps::new(host.transport.clone());
            match (self.0, &host.prometheus_config, replica) {
                (Step::NodeExporter, _, _) => node_exporter_ops(&mut ops, host, &run.cluster, &phase)?,
                (_, Some(text), Some((server, this, _))) if this == index => match server {
                    Server::Alertmanager => alertmanager_ops(&mut ops, host, run, &phase)?,
                    Server::Prometheus => prometheus_ops(&mut ops, host, run, text, &phase)?,
                },
                _ => continue,
            }
            all.push(ops);
        }
        Ok(all)
    }

    /// A replica's changes, then the gate: the next replica is touched only once this one is
    /// ready again (or the rollout stops here).
    async fn run(&self, ctx: &PhaseContext<MonitoringRun>) -> Result<(), PhaseError> {
        let phase = self.name();
        let hosts = self.host_ops(ctx).await?;
        ctx.run_ops(&phase, hosts, Mode::Apply).await?;
        let run = &ctx.state;
        let Some((server, index, true)) = self.replica_host(run) else {
            return Ok(());
        };
        let host = &run.hosts[index];
        let version = match server {
            Server::Prometheus => &run.cluster.versions.prometheus,
            Server::Alertmanager => &run.cluster.versions.alertmanager,
        };
        match rollout::wait_ready(host.transport.as_ref(), server, &host.host, version, READY_TIMEOUT).await {
            Ok(took) => {
                ctx.say(&format!(
                    "    {}: {} {version} ready{} ({:.1}s)",
                    host.host.name,
                    server.title(),
                    if server == Server::Prometheus {
                        " and scraping"
                    } else {
                        ""
                    },
                    took.as_secs_f64()
                ));
                Ok(())
            }
            Err(reason) => Err(PhaseError::failed(
                phase,
                format!(
                    "{reason}. The rollout stopped here: the replicas not yet changed keep running as they were. \
                     Look at `journalctl -u {}` on {}, fix the cause and apply again",
                    server.service(),
                    host.host.name
                ),
            )),
        }
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
    // The relay's password: never in the config, the plan or a diff.
    match &run.smtp_password {
        Some(password) => ops.push(
            File::new(config::SMTP_PASSWORD_FILE, password.0.clone())
                .mode(0o640)
                .owner("root")
                .group(config::ALERTMANAGER_USER)
                .sensitive(true)
                .notify([config::ALERTMANAGER_SERVICE]),
        ),
        None => ops.push(Absent::new(config::SMTP_PASSWORD_FILE)),
    }
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
    let mut phases = PhaseRunner::new().phase(MonitoringPhase(Step::NodeExporter));
    for server in [Server::Alertmanager, Server::Prometheus] {
        for k in 0..replicas.len() {
            phases = phases.phase(MonitoringPhase(Step::Replica(server, k)));
        }
    }
    let outcome = ctx.run_phases(crate::component::NAME, run, phases, started).await;
    conns.close_all().await;
    Ok(outcome)
}
