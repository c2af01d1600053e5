//! What the phases share: reporting, clients of the members, the operations every member gets, and
//! the waits that gate each step.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use super::plan::short_timeouts;
use super::{ApplyError, DesiredMember, EtcdRun, PhaseReport, BIN_DIR, SERVICE};
use crate::client::{error_chain, poll_until, EtcdClient, EtcdEndpoint, EtcdError, Member as ListedMember};
use crate::config::{
    initial_cluster, render_member_config, render_unit, ConfigError, InitialClusterState, MemberConfig, UnitConfig,
    DEFAULT_CONFIG_FILE,
};
use crate::inspect::pki_paths;
use crate::probe::{ca_key_path, BootstrapValues};
use capstan_provisioner::ops::{Artifact, Command, Directory, File, Operation, OperationExt, SystemdUnit};
use capstan_provisioner::phases::{PhaseContext, PhaseError};
use capstan_provisioner::report::{ChangeRecord, HostReport, OpRecord, OpStatus, RunReport};
use capstan_provisioner::runner::{HostOps, Mode};

impl EtcdRun {
    pub(super) fn say(&self, line: &str) {
        let mut out = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "    {line}");
    }

    pub(super) fn record(&self, phase: &str, report: RunReport) {
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
    pub(super) fn note(
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

    pub(super) async fn run_hosts(
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

    pub(super) fn endpoint(&self, index: usize) -> EtcdEndpoint {
        self.members[index].host.operator_endpoint()
    }

    pub(super) async fn client(&self, endpoints: &[EtcdEndpoint]) -> Result<EtcdClient, EtcdError> {
        EtcdClient::connect_with(endpoints, &self.tls, short_timeouts()).await
    }

    pub(super) fn bootstrap_values(&self) -> BootstrapValues {
        let all: Vec<_> = self.members.iter().map(|m| m.host.member()).collect();
        BootstrapValues {
            initial_cluster: initial_cluster(&all),
            initial_cluster_state: InitialClusterState::New,
            initial_cluster_token: self.token.clone(),
        }
    }

    pub(super) fn config_file(&self, member: &DesiredMember, values: &BootstrapValues) -> Result<File, ConfigError> {
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
    pub(super) fn base_ops(&self, member: &DesiredMember, restart: bool) -> Result<HostOps, ApplyError> {
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
        let artifact = Artifact::new(&member.artifact.url, &member.artifact.checksum, BIN_DIR)?
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
    pub(super) fn start_no_block() -> Command {
        Command::new("start etcd", "systemctl start --no-block etcd").unless("systemctl is-active --quiet etcd")
    }

    /// Poll until exactly the inventory members at `indices` plus the `others` (members not in
    /// the inventory yet to be removed) are listed, started and healthy, with one leader.
    pub(super) async fn wait_cluster_ready(
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
    pub(super) async fn wait_member_ready(
        &self,
        index: usize,
        raft_index: u64,
        timeout: Duration,
    ) -> Result<(), String> {
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
    pub(super) async fn leader_raft_index(&self, indices: &[usize]) -> u64 {
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
}
