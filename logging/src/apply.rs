//! `capstan apply`/`plan` for logging: every host's journal shipped to every `logging` host.
//!
//! Inspect first (connect to every host, probe each one's logging PKI, read the logging CA from a
//! `logging` host or make one, decide which certificates need issuing), refusing before anything
//! changes when a host is unreachable or the hosts disagree about the CA. Then the phases:
//!
//! 1. `packages`: systemd-journal-remote everywhere (it carries the uploader), haproxy on the
//!    `logging` hosts;
//! 2. `journald`: a persistent journal within `logging.journal_max_mib` (the outage buffer);
//! 3. `pki`: the uploader's user, the CA certificate everywhere; the CA key on `logging` hosts;
//! 4. `aggregators` (`logging` hosts): the serving certificate (issued only when missing or no
//!    longer fitting), one journal-remote instance per sender on loopback, the mutual-TLS listener
//!    routing by certificate name, the vacuum timer;
//! 5. `uploaders` (every host): the client certificate (key 0600, owned by the uploader's user),
//!    one journal-upload instance per aggregator, the lag metrics timer; the alert rules on
//!    `monitoring` hosts.

// Errors carry whole messages; a run produces a handful.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use capstan_inventory::{Cluster, Host, Role};
use capstan_provisioner::component::{ComponentError, ComponentOutcome, RunContext};
use capstan_provisioner::ops::{
    apt_source_file, Command, Directory, File, OperationExt, Package, Service, SystemdUnit,
};
use capstan_provisioner::phases::{Phase, PhaseContext, PhaseError, PhaseRunner};
use capstan_provisioner::pki::{locate_pair, needs_reissue, CertificateAuthority, IssuedCert, PairCopy, PairNames};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::runner::HostOps;
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::Transport;

use crate::config::{self, Sender};
use crate::pki::{self, CA_CERT, CA_KEY, CLIENT_CERT, CLIENT_KEY, PKI_DIR, SERVER_CERT, SERVER_PEM};
use crate::probe::{probe_host, read_ca_key, HostProbe};

pub(crate) const NAME: &str = "logging";

/// Everything rendered once for the run.
struct Rendered {
    journald: String,
    upload_unit: String,
    remote_unit: String,
    tls_unit: String,
    vacuum_script: String,
    vacuum_units: (String, String),
    lag_script: String,
    lag_units: (String, String),
    alert_rules: String,
    /// (aggregator name, its uploader's environment file).
    upload_envs: Vec<(String, String)>,
    /// (sender name, its journal-remote instance's environment file).
    remote_envs: Vec<(String, String)>,
}

struct LoggingHost {
    transport: Arc<dyn Transport>,
    aggregator: bool,
    monitoring: bool,
    /// Prometheus runs here: it reloads its rules when logging's change.
    prometheus: bool,
    /// A new client certificate, when the host's no longer fits.
    client: Option<IssuedCert>,
    /// A new serving certificate (aggregators), when the host's no longer fits.
    server: Option<IssuedCert>,
    haproxy_config: Option<String>,
}

struct LoggingRun {
    ca: CertificateAuthority,
    apt_source: Option<String>,
    rendered: Rendered,
    hosts: Vec<LoggingHost>,
}

fn refuse(message: impl Into<String>, hint: Option<&str>) -> ComponentError {
    ComponentError {
        component: NAME,
        message: message.into(),
        hint: hint.map(str::to_string),
    }
}

fn rendering(what: &str) -> impl Fn(capstan_templates::TemplateError) -> ComponentError + '_ {
    move |e| refuse(format!("rendering {what}: {e}"), None)
}

fn render_all(cluster: &Cluster) -> Result<Rendered, ComponentError> {
    let upload_envs = config::aggregators(cluster)
        .into_iter()
        .map(|a| Ok((a.name.clone(), config::upload_env(a).map_err(rendering("upload.env"))?)))
        .collect::<Result<_, ComponentError>>()?;
    let remote_envs = config::senders(cluster)
        .iter()
        .map(|s| Ok((s.name.clone(), config::remote_env(s).map_err(rendering("remote.env"))?)))
        .collect::<Result<_, ComponentError>>()?;
    Ok(Rendered {
        journald: config::journald_dropin(cluster).map_err(rendering("journald drop-in"))?,
        upload_unit: config::upload_unit().map_err(rendering("upload unit"))?,
        remote_unit: config::remote_unit().map_err(rendering("journal-remote unit"))?,
        tls_unit: config::tls_unit().map_err(rendering("TLS unit"))?,
        vacuum_script: config::vacuum_script(cluster).map_err(rendering("vacuum script"))?,
        vacuum_units: config::timer_units("capstan-journal-vacuum", config::VACUUM_SCRIPT, config::VACUUM_INTERVAL)
            .map_err(rendering("vacuum timer"))?,
        lag_script: config::lag_script(cluster).map_err(rendering("lag script"))?,
        lag_units: config::timer_units("capstan-logging-lag", config::LAG_SCRIPT, config::LAG_INTERVAL)
            .map_err(rendering("lag timer"))?,
        alert_rules: config::alert_rules().map_err(rendering("alert rules"))?,
        upload_envs,
        remote_envs,
    })
}

/// Converge logging on `cluster` in `ctx.mode`.
pub async fn converge(cluster: &Cluster, ctx: &RunContext) -> Result<ComponentOutcome, ComponentError> {
    let started = Instant::now();
    let aggregators: Vec<&str> = config::aggregators(cluster).iter().map(|h| h.name.as_str()).collect();
    if aggregators.is_empty() {
        return Err(refuse(
            "no host has the logging role",
            Some("give one or more hosts the `logging` role"),
        ));
    }
    ctx.out.line(format!(
        "logging: {} host(s) ship to {}",
        cluster.hosts.len(),
        aggregators.join(", ")
    ));
    let targets: Vec<_> = cluster.hosts.iter().map(ssh_target).collect();
    let (connections, failures) = Connections::connect(&targets, ctx.concurrency.max(1)).await;
    let result = match failures.is_empty() {
        true => inspect_and_run(cluster, ctx, &connections, started).await,
        false => Err(refuse(
            format!(
                "cannot reach {}",
                failures
                    .iter()
                    .map(|(h, e)| format!("{h}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Some("every host ships its journal, so every host must be reachable; check with `capstan check`"),
        )),
    };
    connections.close_all().await;
    result
}

async fn inspect_and_run(
    cluster: &Cluster,
    ctx: &RunContext,
    connections: &Connections,
    started: Instant,
) -> Result<ComponentOutcome, ComponentError> {
    let probes = futures::future::join_all(cluster.hosts.iter().map(|host| async move {
        let transport = connections
            .get(&host.name)
            .ok_or_else(|| refuse(format!("{}: no connection", host.name), None))?;
        let probe = probe_host(transport.as_ref())
            .await
            .map_err(|e| refuse(e.to_string(), None))?;
        Ok::<_, ComponentError>((host, transport, probe))
    }))
    .await;
    let probed: Vec<(&Host, Arc<dyn Transport>, HostProbe)> = probes.into_iter().collect::<Result<_, _>>()?;
    let ca = logging_ca(cluster, &probed).await?;
    let senders: Vec<Sender> = config::senders(cluster);
    let now = SystemTime::now();
    let issue = |request| ca.issue(&request).map_err(|e| refuse(e.to_string(), None));
    let mut hosts = Vec::new();
    for (host, transport, probe) in probed {
        let aggregator = host.has_role(Role::Logging);
        let client_request = pki::client_request(host);
        let client = match !probe.has_client_key
            || needs_reissue(probe.client_cert.as_deref(), &ca, &client_request, now).is_some()
        {
            true => Some(issue(client_request)?),
            false => None,
        };
        let server_request = pki::server_request(host);
        let server = match aggregator
            && (!probe.has_server_pem
                || needs_reissue(probe.server_cert.as_deref(), &ca, &server_request, now).is_some())
        {
            true => Some(issue(server_request)?),
            false => None,
        };
        let haproxy_config = match aggregator {
            true => Some(config::haproxy_config(host, &senders).map_err(rendering("haproxy config"))?),
            false => None,
        };
        hosts.push(LoggingHost {
            transport,
            aggregator,
            monitoring: host.has_role(Role::Monitoring),
            prometheus: probe.has_prometheus,
            client,
            server,
            haproxy_config,
        });
    }
    let state = LoggingRun {
        ca,
        apt_source: cluster.artifacts.apt_source.clone(),
        rendered: render_all(cluster)?,
        hosts,
    };
    let mut phases = PhaseRunner::new();
    for step in [
        Step::Packages,
        Step::Journald,
        Step::Pki,
        Step::Aggregators,
        Step::Uploaders,
    ] {
        phases = phases.phase(LoggingPhase(step));
    }
    let mut outcome = ctx.run_phases(NAME, state, phases, started).await;
    if outcome.error.is_some() {
        outcome.hint = Some("fix the failing host and run `capstan apply --only logging` again".to_string());
    }
    Ok(outcome)
}

/// The cluster's logging CA: read from the first `logging` host that has it (every host holding
/// a CA certificate must hold the same one), or a new one when no host has one.
async fn logging_ca(
    cluster: &Cluster,
    probed: &[(&Host, Arc<dyn Transport>, HostProbe)],
) -> Result<CertificateAuthority, ComponentError> {
    let copies: Vec<PairCopy> = probed
        .iter()
        .map(|(h, _, p)| PairCopy {
            host: &h.name,
            public: p.ca_cert.as_deref(),
            has_secret: p.has_ca_key,
            keeps_secret: h.has_role(Role::Logging),
        })
        .collect();
    let names = PairNames {
        what: "logging CA",
        public_path: CA_CERT,
        secret_path: CA_KEY,
        keeper: "logging host",
        new_one_breaks: "lock out every uploader until the next apply reaches it",
    };
    match locate_pair(&copies, &names).map_err(|r| refuse(r.message, Some(&r.hint)))? {
        Some(i) => {
            let (host, transport, probe) = &probed[i];
            let key = read_ca_key(transport.as_ref())
                .await
                .map_err(|e| refuse(e.to_string(), None))?;
            CertificateAuthority::from_pem(probe.ca_cert.as_deref().unwrap_or_default(), &key)
                .map_err(|e| refuse(format!("{}: the logging CA is unusable: {e}", host.name), None))
        }
        None => CertificateAuthority::generate(&pki::ca_common_name(cluster)).map_err(|e| refuse(e.to_string(), None)),
    }
}

fn root_file(path: &str, content: &str, mode: u32) -> File {
    File::new(path, content.as_bytes().to_vec())
        .mode(mode)
        .owner("root")
        .group("root")
}

fn running(service: &str) -> Result<Service, PhaseError> {
    Service::new(service)
        .map(|s| s.enabled(true).running(true))
        .map_err(|e| PhaseError::failed(NAME.to_string(), e.to_string()))
}

fn unit(name: &str, text: &str) -> Result<SystemdUnit, PhaseError> {
    SystemdUnit::new(name, text.as_bytes().to_vec()).map_err(|e| PhaseError::failed(NAME.to_string(), e.to_string()))
}

#[derive(Clone, Copy)]
enum Step {
    Packages,
    Journald,
    Pki,
    Aggregators,
    Uploaders,
}

struct LoggingPhase(Step);

impl LoggingRun {
    fn packages(&self, h: &LoggingHost, ops: &mut HostOps) -> Result<(), PhaseError> {
        if let Some(source) = &self.apt_source {
            ops.push(apt_source_file(source));
        }
        let names = if h.aggregator {
            config::AGGREGATOR_PACKAGES
        } else {
            config::UPLOAD_PACKAGES
        };
        ops.push(Package::new(names.iter().copied()).from_source(self.apt_source.as_deref()));
        Ok(())
    }

    fn journald(&self, _h: &LoggingHost, ops: &mut HostOps) -> Result<(), PhaseError> {
        ops.push(
            Directory::new(config::JOURNALD_DROPIN_DIR)
                .mode(0o755)
                .owner("root")
                .group("root"),
        );
        ops.push(root_file(config::JOURNALD_DROPIN, &self.rendered.journald, 0o644).notify([config::JOURNALD_SERVICE]));
        Ok(())
    }

    fn pki(&self, h: &LoggingHost, ops: &mut HostOps) -> Result<(), PhaseError> {
        // The previous phase restarted journald on the persistent settings; it moves to disk only
        // when asked (at boot, systemd-journal-flush.service asks).
        ops.push(
            Command::new("move the journal to disk", "journalctl --flush").unless(&format!(
                "test -s {}/$(cat /etc/machine-id)/system.journal",
                config::JOURNAL_DIR
            )),
        );
        let user = config::UPLOAD_USER;
        ops.push(
            Command::new(
                &format!("system user {user}"),
                &format!(
                    "useradd --system --user-group --groups systemd-journal --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {user}"
                ),
            )
            .unless(&format!("id -u {user} >/dev/null 2>&1")),
        );
        ops.push(Directory::new(PKI_DIR).mode(0o755).owner("root").group("root"));
        ops.push(root_file(CA_CERT, self.ca.cert_pem(), 0o644));
        if h.aggregator {
            ops.push(root_file(CA_KEY, self.ca.key_pem(), 0o600).sensitive(true));
        }
        Ok(())
    }

    fn aggregators(&self, h: &LoggingHost, ops: &mut HostOps) -> Result<(), PhaseError> {
        let Some(haproxy_config) = &h.haproxy_config else {
            return Ok(());
        };
        if let Some(cert) = &h.server {
            ops.push(root_file(SERVER_CERT, &cert.cert_pem, 0o644));
            let pem = format!("{}{}", cert.cert_pem, cert.key_pem);
            ops.push(
                root_file(SERVER_PEM, &pem, 0o600)
                    .sensitive(true)
                    .notify([config::TLS_SERVICE]),
            );
        }
        let r = &self.rendered;
        let instances: Vec<String> = r.remote_envs.iter().map(|(s, _)| config::remote_service(s)).collect();
        ops.push(unit(config::REMOTE_UNIT, &r.remote_unit)?.notify(instances));
        for (sender, env) in &r.remote_envs {
            let service = config::remote_service(sender);
            ops.push(root_file(&config::remote_env_path(sender), env, 0o644).notify([service.clone()]));
            ops.push(running(&service)?);
        }
        ops.push(root_file(config::HAPROXY_CONFIG, haproxy_config, 0o644).notify([config::TLS_SERVICE]));
        ops.push(unit(config::TLS_UNIT, &r.tls_unit)?.notify([config::TLS_SERVICE]));
        ops.push(running(config::TLS_SERVICE)?);
        ops.push(
            Directory::new(config::SCRIPT_DIR)
                .mode(0o755)
                .owner("root")
                .group("root"),
        );
        ops.push(root_file(config::VACUUM_SCRIPT, &r.vacuum_script, 0o755));
        ops.push(unit(config::VACUUM_SERVICE_UNIT, &r.vacuum_units.0)?);
        ops.push(unit(config::VACUUM_TIMER_UNIT, &r.vacuum_units.1)?);
        ops.push(running(config::VACUUM_TIMER_UNIT)?);
        Ok(())
    }

    fn uploaders(&self, h: &LoggingHost, ops: &mut HostOps) -> Result<(), PhaseError> {
        let r = &self.rendered;
        let instances: Vec<String> = r.upload_envs.iter().map(|(a, _)| config::upload_service(a)).collect();
        // The certificate first: a changed one restarts the uploaders once they exist.
        if let Some(cert) = &h.client {
            ops.push(root_file(CLIENT_CERT, &cert.cert_pem, 0o644).notify(instances.clone()));
            ops.push(
                File::new(CLIENT_KEY, cert.key_pem.as_bytes().to_vec())
                    .mode(0o600)
                    .owner(config::UPLOAD_USER)
                    .group(config::UPLOAD_USER)
                    .sensitive(true)
                    .notify(instances.clone()),
            );
        }
        ops.push(unit(config::UPLOAD_UNIT, &r.upload_unit)?.notify(instances));
        for (aggregator, env) in &r.upload_envs {
            let service = config::upload_service(aggregator);
            ops.push(root_file(&config::upload_env_path(aggregator), env, 0o644).notify([service.clone()]));
            ops.push(running(&service)?);
        }
        ops.push(
            Directory::new(config::SCRIPT_DIR)
                .mode(0o755)
                .owner("root")
                .group("root"),
        );
        ops.push(root_file(config::LAG_SCRIPT, &r.lag_script, 0o755));
        ops.push(
            Directory::new(capstan_monitoring::TEXTFILE_DIR)
                .mode(0o755)
                .owner("root")
                .group("root"),
        );
        ops.push(unit(config::LAG_SERVICE_UNIT, &r.lag_units.0)?);
        ops.push(unit(config::LAG_TIMER_UNIT, &r.lag_units.1)?);
        ops.push(running(config::LAG_TIMER_UNIT)?);
        if h.monitoring {
            ops.push(
                Directory::new(config::ALERT_RULES_DIR)
                    .mode(0o755)
                    .owner("root")
                    .group("root"),
            );
            let rules = root_file(config::ALERT_RULES_FILE, &r.alert_rules, 0o644);
            match h.prometheus {
                true => ops.push(rules.notify([config::PROMETHEUS_SERVICE])),
                false => ops.push(rules),
            }
        }
        Ok(())
    }

    fn per_host(&self, step: Step) -> Result<Vec<HostOps>, PhaseError> {
        let mut all = Vec::new();
        for h in &self.hosts {
            let mut ops = HostOps::new(h.transport.clone());
            match step {
                Step::Packages => self.packages(h, &mut ops)?,
                Step::Journald => self.journald(h, &mut ops)?,
                Step::Pki => self.pki(h, &mut ops)?,
                Step::Aggregators => self.aggregators(h, &mut ops)?,
                Step::Uploaders => self.uploaders(h, &mut ops)?,
            }
            if !ops.ops.is_empty() {
                all.push(ops);
            }
        }
        Ok(all)
    }
}

#[async_trait]
impl Phase<LoggingRun> for LoggingPhase {
    fn name(&self) -> String {
        match self.0 {
            Step::Packages => "logging: packages",
            Step::Journald => "logging: persistent journal (every host)",
            Step::Pki => "logging: pki",
            Step::Aggregators => "logging: journal-remote behind mutual TLS (logging hosts)",
            Step::Uploaders => "logging: journal-upload per aggregator (every host)",
        }
        .to_string()
    }

    async fn host_ops(&self, ctx: &PhaseContext<LoggingRun>) -> Result<Vec<HostOps>, PhaseError> {
        ctx.state.per_host(self.0)
    }
}
