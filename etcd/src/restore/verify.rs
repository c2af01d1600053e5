//! Checking a restored cluster: health, and the members' revisions, key counts and hashes compared
//! at one revision; and whether given keys exist.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use serde::Serialize;

use super::RestoreError;
use crate::client::{error_chain, poll_until, EtcdClient, EtcdEndpoint, EtcdTls, Timeouts};

/// Per-member facts read after the restore.
#[derive(Debug, Clone, Serialize)]
pub struct MemberCheck {
    pub name: String,
    pub endpoint: String,
    pub healthy: bool,
    pub leader: bool,
    pub revision: Option<i64>,
    pub key_count: Option<i64>,
    pub hash_kv: Option<u32>,
    pub compact_revision: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub members: Vec<MemberCheck>,
    /// The revision the hashes and counts were compared at (the lowest member revision).
    pub compared_at_revision: Option<i64>,
    pub checks: Vec<Check>,
    pub ok: bool,
}

fn short_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(5),
        health: Duration::from_secs(2),
        reconfig_settle: Duration::from_secs(30),
    }
}

/// Waits until `expected` members are listed, every endpoint is healthy and there is one leader.
pub async fn wait_healthy(
    endpoints: &[EtcdEndpoint],
    tls: &EtcdTls,
    expected: usize,
    limit: Duration,
) -> Result<(), RestoreError> {
    poll_until(limit, Duration::from_millis(500), || async {
        let client = EtcdClient::connect_with(endpoints, tls, short_timeouts())
            .await
            .map_err(|e| error_chain(&e))?;
        let status = client.cluster_status().await.map_err(|e| error_chain(&e))?;
        if status.healthy && status.members.len() == expected {
            return Ok(());
        }
        let unhealthy = status.unhealthy();
        Err(format!(
            "{} member(s) listed, {} leader(s), unhealthy: {}",
            status.members.len(),
            status.leaders.len(),
            if unhealthy.is_empty() {
                "none".into()
            } else {
                unhealthy.join(", ")
            }
        ))
    })
    .await
    .map_err(|detail| RestoreError::NotHealthy { after: limit, detail })
}

async fn pinned(endpoint: &EtcdEndpoint, tls: &EtcdTls) -> Result<Client, String> {
    let tls_options = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_cert_pem))
        .identity(Identity::from_pem(&tls.client_cert_pem, &tls.client_key_pem));
    let options = ConnectOptions::new()
        .with_tls(tls_options)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(60));
    Client::connect([endpoint.as_str()], Some(options))
        .await
        .map_err(|e| error_chain(&e))
}

/// Revision, key count and HashKV of every member, compared at the lowest member revision;
/// health and leadership from the cluster; revision at least `minimum_revision`.
pub async fn verify_members(
    names: &[String],
    endpoints: &[EtcdEndpoint],
    tls: &EtcdTls,
    minimum_revision: i64,
) -> Verification {
    let mut members: Vec<MemberCheck> = names
        .iter()
        .zip(endpoints)
        .map(|(name, endpoint)| MemberCheck {
            name: name.clone(),
            endpoint: endpoint.to_string(),
            healthy: false,
            leader: false,
            revision: None,
            key_count: None,
            hash_kv: None,
            compact_revision: None,
            error: None,
        })
        .collect();
    let mut checks = Vec::new();
    let mut listed = 0;
    let mut leaders = 0;
    match EtcdClient::connect_with(endpoints, tls, short_timeouts()).await {
        Ok(client) => match client.cluster_status().await {
            Ok(status) => {
                listed = status.members.len();
                leaders = status.leaders.len();
                for (member, report) in members.iter_mut().zip(&status.endpoints) {
                    member.healthy = report.health.healthy;
                    member.leader = report.status.as_ref().is_some_and(|s| s.leader);
                    if !report.health.healthy {
                        member.error = report.health.error.clone();
                    }
                }
            }
            Err(e) => checks.push(Check {
                name: "cluster status".into(),
                ok: false,
                detail: error_chain(&e),
            }),
        },
        Err(e) => checks.push(Check {
            name: "cluster status".into(),
            ok: false,
            detail: error_chain(&e),
        }),
    }

    let mut clients = Vec::new();
    for (member, endpoint) in members.iter_mut().zip(endpoints) {
        match pinned(endpoint, tls).await {
            Ok(mut client) => {
                let all = GetOptions::new().with_all_keys().with_count_only().with_serializable();
                match client.get("", Some(all)).await {
                    Ok(response) => member.revision = response.header().map(|h| h.revision()),
                    Err(e) => member.error = Some(error_chain(&e)),
                }
                clients.push(Some(client));
            }
            Err(e) => {
                member.error = Some(e);
                clients.push(None);
            }
        }
    }
    let compared_at = members.iter().filter_map(|m| m.revision).min();
    if let Some(revision) = compared_at {
        for (member, client) in members.iter_mut().zip(clients.iter_mut()) {
            let Some(client) = client else { continue };
            let at = GetOptions::new()
                .with_all_keys()
                .with_count_only()
                .with_serializable()
                .with_revision(revision);
            match client.get("", Some(at)).await {
                Ok(response) => member.key_count = Some(response.count()),
                Err(e) => member.error = Some(error_chain(&e)),
            }
            match client.hash_kv(revision).await {
                Ok(response) => {
                    member.hash_kv = Some(response.hash());
                    member.compact_revision = Some(response.compact_version());
                }
                Err(e) => member.error = Some(error_chain(&e)),
            }
        }
    }

    let all_healthy = members.iter().all(|m| m.healthy);
    checks.push(Check {
        name: "every member healthy".into(),
        ok: all_healthy && listed == names.len(),
        detail: format!(
            "{} of {} healthy, {listed} listed",
            members.iter().filter(|m| m.healthy).count(),
            names.len()
        ),
    });
    checks.push(Check {
        name: "one leader".into(),
        ok: leaders == 1,
        detail: format!("{leaders} leader(s)"),
    });
    let low = members.iter().filter_map(|m| m.revision).min();
    checks.push(Check {
        name: "revision at least the backup's".into(),
        ok: low.is_some_and(|r| r >= minimum_revision) && members.iter().all(|m| m.revision.is_some()),
        detail: format!(
            "lowest member revision {}, backup revision {minimum_revision}",
            low.map_or_else(|| "unknown".into(), |r| r.to_string())
        ),
    });
    let same = |values: Vec<Option<String>>| -> (bool, String) {
        let ok = values.iter().all(Option::is_some) && values.windows(2).all(|w| w[0] == w[1]);
        let shown: Vec<String> = values.into_iter().map(|v| v.unwrap_or_else(|| "?".into())).collect();
        (ok, shown.join(", "))
    };
    let (ok, detail) = same(members.iter().map(|m| m.key_count.map(|c| c.to_string())).collect());
    checks.push(Check {
        name: "same key count on every member".into(),
        ok,
        detail,
    });
    let (ok, detail) = same(members.iter().map(|m| m.hash_kv.map(|h| format!("{h:08x}"))).collect());
    checks.push(Check {
        name: "same hash-kv on every member".into(),
        ok,
        detail: match compared_at {
            Some(r) => format!("{detail} (at revision {r})"),
            None => detail,
        },
    });
    let ok = checks.iter().all(|c| c.ok);
    Verification {
        members,
        compared_at_revision: compared_at,
        checks,
        ok,
    }
}

/// Whether each key exists (a trailing `*` means: some key has this prefix).
#[derive(Debug, Clone, Serialize)]
pub struct KeyCheck {
    pub key: String,
    pub found: i64,
    pub ok: bool,
    pub error: Option<String>,
}

pub async fn check_keys(endpoints: &[EtcdEndpoint], tls: &EtcdTls, keys: &[String]) -> Vec<KeyCheck> {
    let mut results = Vec::new();
    let client = match EtcdClient::connect_with(endpoints, tls, short_timeouts()).await {
        Ok(_) => pinned(&endpoints[0], tls).await,
        Err(e) => Err(error_chain(&e)),
    };
    for key in keys {
        let (name, prefix) = match key.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (key.as_str(), false),
        };
        let result = match &client {
            Ok(client) => {
                let mut client = client.clone();
                let mut options = GetOptions::new().with_count_only();
                if prefix {
                    options = if name.is_empty() {
                        options.with_all_keys()
                    } else {
                        options.with_prefix()
                    };
                }
                client
                    .get(name, Some(options))
                    .await
                    .map(|r| r.count())
                    .map_err(|e| error_chain(&e))
            }
            Err(e) => Err(e.clone()),
        };
        results.push(match result {
            Ok(found) => KeyCheck {
                key: key.clone(),
                found,
                ok: found > 0,
                error: None,
            },
            Err(error) => KeyCheck {
                key: key.clone(),
                found: 0,
                ok: false,
                error: Some(error),
            },
        });
    }
    results
}
