//! Inspect, decide, refuse: everything `apply` learns and decides before the first change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use capstan_inventory::Cluster;

use super::quorum::check_quorum;
use super::{ApplyError, ApplyOptions, DesiredMember, EtcdRun, Membership};
use crate::client::{EtcdClient, EtcdEndpoint, EtcdError, EtcdTls, Member as ListedMember, Timeouts};
use crate::inspect::{admin_tls, ca_holder, inspect_hosts, member_settings, pki_paths, read_ca, EtcdHost};
use crate::pki::generate_ca;
use crate::probe::{ca_key_path, parse_bootstrap_values};
use crate::release::{etcd_artifact, etcd_tarball_members};
use crate::upgrade::{plan_upgrade, probe_versions, MemberState, UpgradePlan, Version, VersionFacts};
use capstan_provisioner::pki::{needs_reissue, CertKind, CertRequest, IssuedCert, PkiError};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::releases::ResolvedArtifact;
use capstan_provisioner::targets::ssh_target;

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

/// Inspect, decide, refuse unsafe changes; nothing is changed here.
pub(super) async fn prepare(cluster: &Cluster, options: &ApplyOptions) -> Result<(EtcdRun, Connections), ApplyError> {
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
    let ca = match (&options.planned_ca, ca_holder(&hosts)) {
        (Some(planned), _) => planned.clone(),
        (None, Some(holder)) => read_ca(holder).await?,
        (None, None) if with_data.is_empty() => generate_ca(&cluster.name)?,
        (None, None) => {
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

pub(super) fn short_timeouts() -> Timeouts {
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
        // Read with the member's probe when that worked (one round trip per host).
        let known = members[i].host.versions.clone();
        async move {
            match known {
                Some(facts) => Ok(facts),
                None => probe_versions(transport.as_ref(), crate::config::DEFAULT_ETCD_BINARY, port).await,
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_named_and_random() {
        let a = new_token("demo");
        let b = new_token("demo");
        assert!(a.starts_with("demo-") && a.len() == "demo-".len() + 8, "{a}");
        assert_ne!(a, b);
    }
}
