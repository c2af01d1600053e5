//! `capstan plan|apply` (the cluster plan: every component the inventory enables), and
//! `capstan status|etcd credentials` for etcd on the inventory's `etcd` hosts.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use capstan_etcd::status::{status as etcd_status, write_credentials, StatusReport};
use capstan_nodes::status::{pod_network_status, PodNetworkStatus};
use capstan_provisioner::cluster_plan::{ClusterOutcome, ClusterPlan};
use capstan_provisioner::lock::LockMode;
use capstan_provisioner::plan_view::{render_class_summary, render_grouped, HostClasses};
use capstan_provisioner::report::{render_changes, render_summary};
use capstan_provisioner::runner::Mode;

use crate::cli::{ApplyArgs, EtcdCommand, StatusArgs};
use crate::commands::inventory::load;
use crate::commands::lock::locked_unless_dry_run;
use crate::format::{changes_or_none, header, human_bytes, or_dash, table, yes_no};
use crate::output::{Failure, Output};

pub fn apply(args: ApplyArgs, dry_run: bool, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    let cluster = load(inventory)?;
    let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
    let plan = ClusterPlan::new(crate::components::ALL, &cluster, &args.only).map_err(|e| Failure::of(&e))?;
    let ctx = out.run_context(mode, args.concurrency);
    let runtime = tokio::runtime::Runtime::new()?;
    let run = async {
        plan.run(&cluster, &ctx)
            .await
            .map_err(|e| anyhow::Error::from(Failure::new(e.message).maybe_hint(e.hint)))
    };
    let outcome = runtime.block_on(locked_unless_dry_run(dry_run, &cluster, LockMode::Change, out, run))?;

    print_cluster_outcome(&outcome, &cluster, args.show_commands, out)?;
    let totals = outcome.summary.totals();
    let verb = if dry_run { "to change" } else { "changed" };
    out.status(format!(
        "{} in {:.1}s: {} ok, {} {verb}, {} failed",
        if dry_run { "plan" } else { "apply" },
        outcome.summary.elapsed.as_secs_f64(),
        totals.ok,
        totals.changed,
        totals.failed
    ));
    if outcome.success() {
        return Ok(ExitCode::SUCCESS);
    }
    let message = outcome
        .error
        .clone()
        .unwrap_or_else(|| format!("failed on {}", outcome.summary.failed_hosts().join(", ")));
    Err(Failure::new(message)
        .hint(outcome.hint.clone().unwrap_or_else(|| {
            "see the errors above; fix them and run `capstan apply` again (it picks up where it stopped)".into()
        }))
        .into())
}

/// A cluster run's outcome on stdout: JSON; per host with `-v`; otherwise the changes grouped
/// across hosts and the summary per component and host class.
pub(crate) fn print_cluster_outcome(
    outcome: &ClusterOutcome,
    cluster: &capstan_inventory::Cluster,
    show_commands: bool,
    out: &Output,
) -> anyhow::Result<()> {
    if out.json() {
        out.print_json(outcome)?;
    } else if out.verbose > 0 {
        let changes = render_changes(&outcome.summary, out.color, show_commands);
        print!("{}", changes_or_none(changes));
        println!();
        print!("{}", render_summary(&outcome.summary, out.color));
    } else {
        let classes = host_classes(cluster);
        print!("{}", render_grouped(outcome, &classes, out.color, show_commands));
        println!();
        print!("{}", render_class_summary(outcome, &classes));
    }
    Ok(())
}

/// Each host's class for the grouped plan: its roles, e.g. `control_plane+etcd`.
fn host_classes(cluster: &capstan_inventory::Cluster) -> HostClasses {
    HostClasses::new(cluster.hosts.iter().map(|host| {
        let roles: Vec<&str> = host.roles.iter().map(|r| r.as_str()).collect();
        (
            host.name.clone(),
            if roles.is_empty() { "-".into() } else { roles.join("+") },
        )
    }))
}

pub fn status(args: StatusArgs, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    let cluster = load(inventory)?;
    let limit = Duration::from_secs(args.timeout.max(1));
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(etcd_status(&cluster, limit)).map_err(|e| {
        Failure::new(e.to_string())
            .hint("check that the etcd hosts are reachable (`capstan check`) and that `capstan apply` ran")
    })?;
    // The pod network's record lives in etcd: read it only when some host runs pods and etcd answers.
    let pods = (report.healthy && !capstan_nodes::apply::pod_hosts(&cluster).is_empty())
        .then(|| runtime.block_on(pod_network_status(&cluster, limit)));
    // Targets down and alerts firing, from a Prometheus replica, when the inventory has one.
    let monitoring = (!capstan_monitoring::config::prometheus_hosts(&cluster).is_empty())
        .then(|| runtime.block_on(capstan_monitoring::status::monitoring_status(&cluster, limit)));
    if out.json() {
        let mut value = serde_json::to_value(&report)?;
        if let (Some(map), Some(pods)) = (value.as_object_mut(), &pods) {
            let pods = match pods {
                Ok(status) => serde_json::to_value(status)?,
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            map.insert("pod_network".into(), pods);
        }
        if let (Some(map), Some(monitoring)) = (value.as_object_mut(), &monitoring) {
            let monitoring = match monitoring {
                Ok(status) => serde_json::to_value(status)?,
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            map.insert("monitoring".into(), monitoring);
        }
        out.print_json(&value)?;
    } else {
        print!("{}", render_status(&report));
        match &pods {
            Some(Ok(status)) => print!("\n{}", render_pod_network(status)),
            Some(Err(e)) => println!("\npod network: {e}"),
            None => {}
        }
        match &monitoring {
            Some(Ok(status)) => print!("\n{}", render_monitoring(status)),
            Some(Err(e)) => println!("\nmonitoring: {e}"),
            None => {}
        }
    }
    if report.healthy {
        return Ok(ExitCode::SUCCESS);
    }
    let down: Vec<&str> = report
        .members
        .iter()
        .filter(|m| !m.healthy || !m.reachable)
        .map(|m| m.name.as_str())
        .collect();
    let message = if down.is_empty() {
        "the cluster has no single leader".to_string()
    } else {
        format!("unhealthy or unreachable member(s): {}", down.join(", "))
    };
    Err(Failure::new(message)
        .hint("start the members that are down; if a host is gone for good, remove it from the inventory and run `capstan apply`")
        .into())
}

fn render_monitoring(status: &capstan_monitoring::status::MonitoringStatus) -> String {
    let mut text = format!(
        "monitoring (Prometheus on {}): {} of {} target(s) down, {} alert(s) firing\n",
        status.replica,
        status.targets_down.len(),
        status.targets,
        status.alerts_firing.len()
    );
    for target in &status.targets_down {
        text.push_str(&format!(
            "  down    {} {}: {}\n",
            target.job, target.instance, target.error
        ));
    }
    for alert in &status.alerts_firing {
        text.push_str(&format!(
            "  firing  {} ({}) {} since {}\n",
            alert.alert, alert.severity, alert.labels, alert.active_at
        ));
    }
    text
}

fn render_pod_network(status: &PodNetworkStatus) -> String {
    let mut rows = vec![header(&["NODE", "POD SUBNET"])];
    for row in &status.nodes {
        rows.push(vec![row.host.clone(), or_dash(row.pod_subnet.as_ref())]);
    }
    let mut text = format!(
        "pod network {} (/{} per node)\n{}",
        status.pod_cidr,
        status.node_prefix,
        table(&rows)
    );
    for host in &status.not_in_inventory {
        text.push_str(&format!("{host} is in the record but not in the inventory\n"));
    }
    text
}

fn render_status(report: &StatusReport) -> String {
    let mut rows = vec![header(&[
        "MEMBER",
        "REACHABLE",
        "HEALTHY",
        "LEADER",
        "VERSION",
        "DB SIZE",
        "RAFT INDEX",
        "RAFT TERM",
        "CERT EXPIRES",
    ])];
    let mut details = String::new();
    for m in &report.members {
        rows.push(vec![
            m.name.clone(),
            yes_no(m.reachable),
            yes_no(m.healthy),
            or_dash(m.leader.then_some("*")),
            or_dash(m.version.as_ref()),
            or_dash(m.db_size_bytes.map(|b| human_bytes(b.max(0) as u64))),
            or_dash(m.raft_index),
            or_dash(m.raft_term),
            or_dash(m.cert_days_left.map(|d| format!("in {d}d"))),
        ]);
        if let Some(error) = &m.error {
            let error = error.strip_prefix(&format!("{}: ", m.name)).unwrap_or(error);
            details.push_str(&format!("{}: {error}\n", m.name));
        }
    }
    let mut text = table(&rows);
    for unknown in &report.unknown_members {
        details.push_str(&format!("member {unknown} is not in the inventory\n"));
    }
    if !details.is_empty() {
        text.push('\n');
        text.push_str(&details);
    }
    text
}

pub fn etcd(cmd: EtcdCommand, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    match cmd {
        EtcdCommand::Credentials { out: dir } => {
            let cluster = load(inventory)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let written = runtime.block_on(write_credentials(&cluster, &dir)).map_err(|e| {
                Failure::new(e.to_string())
                    .hint("the CA is read from the etcd members over SSH; run `capstan apply` first")
            })?;
            if out.json() {
                out.print_json(&written)?;
            } else {
                println!("wrote {}", written.dir.display());
                println!(
                    "etcdctl --cacert {} --cert {} --key {} --endpoints $(cat {}) endpoint health",
                    written.ca_file.display(),
                    written.cert_file.display(),
                    written.key_file.display(),
                    written.endpoints_file.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_etcd::status::MemberRow;

    #[test]
    fn status_table() {
        let row = |name: &str, healthy: bool| MemberRow {
            name: name.into(),
            endpoint: format!("https://{name}:2379"),
            reachable: healthy,
            healthy,
            leader: name == "a",
            version: healthy.then(|| "3.5.1".into()),
            db_size_bytes: healthy.then_some(20480),
            raft_index: healthy.then_some(42),
            raft_term: healthy.then_some(2),
            cert_not_after: None,
            cert_days_left: healthy.then_some(364),
            error: (!healthy).then(|| "cannot connect".into()),
        };
        let report = StatusReport {
            cluster: "demo".into(),
            members: vec![row("a", true), row("b", false)],
            unknown_members: vec!["old".into()],
            healthy: false,
        };
        let expected = "\
MEMBER  REACHABLE  HEALTHY  LEADER  VERSION  DB SIZE   RAFT INDEX  RAFT TERM  CERT EXPIRES
a       yes        yes      *       3.5.1    20.0 KiB  42          2          in 364d
b       no         no       -       -        -         -           -          -

b: cannot connect
member old is not in the inventory
";
        assert_eq!(render_status(&report), expected);
    }
}
