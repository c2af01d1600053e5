//! The monitoring section of `capstan status`: targets down and alerts firing, read from a
//! Prometheus replica's HTTP API over SSH (the API listens on the monitoring host's private
//! address, which the operator's machine may not reach; bash's `/dev/tcp` on the host asks it, so
//! nothing needs curl there). Parsing is pure.

use std::time::Duration;

use capstan_inventory::Cluster;
use capstan_provisioner::ops::run_checked;
use capstan_provisioner::pool::Connections;
use capstan_provisioner::targets::ssh_target;
use serde::Serialize;
use serde_json::Value;

use crate::config::{self, host_port, PROMETHEUS_PORT};

/// A scrape target that is not up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DownTarget {
    pub job: String,
    pub instance: String,
    /// Prometheus's last scrape error.
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FiringAlert {
    pub alert: String,
    pub severity: String,
    /// Its other labels, `name=value` joined by commas (instance, job, …).
    pub labels: String,
    /// When it started firing (RFC 3339), as Prometheus says.
    pub active_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MonitoringStatus {
    /// The monitoring host whose Prometheus answered.
    pub replica: String,
    pub targets: usize,
    pub targets_down: Vec<DownTarget>,
    pub alerts_firing: Vec<FiringAlert>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no Prometheus replica answered: {0}")]
    NoReplica(String),
    #[error("Prometheus on {host} answered something that is not its API's JSON: {detail}")]
    Answer { host: String, detail: String },
}

const MARKER: &str = "--capstan-status-next--";

/// `GET path` against `address` (host:port) with bash's /dev/tcp, body and headers on stdout.
pub(crate) fn fetch(host: &str, port: u16, path: &str) -> String {
    format!(
        "bash -c 'exec 3<>/dev/tcp/{host}/{port} && printf \"GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n\" >&3 && cat <&3'"
    )
}

/// The HTTP body of a raw HTTP/1.0 answer, as JSON with `status: success`.
fn body(raw: &str) -> Result<Value, String> {
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    if !head.starts_with("HTTP/1.") || !head.lines().next().unwrap_or_default().contains(" 200") {
        return Err(format!("HTTP status `{}`", head.lines().next().unwrap_or_default()));
    }
    let value: Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if value["status"] != "success" {
        return Err(format!("status {}", value["status"]));
    }
    Ok(value)
}

/// (total, the ones not up) from `/api/v1/targets?state=active`.
pub fn parse_targets(answer: &Value) -> (usize, Vec<DownTarget>) {
    let active = answer["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut down: Vec<DownTarget> = active
        .iter()
        .filter(|t| t["health"] != "up")
        .map(|t| DownTarget {
            job: text(&t["labels"]["job"]),
            instance: text(&t["labels"]["instance"]),
            error: text(&t["lastError"]),
        })
        .collect();
    down.sort_by(|a, b| (&a.job, &a.instance).cmp(&(&b.job, &b.instance)));
    (active.len(), down)
}

/// The firing alerts from `/api/v1/alerts` (pending ones left out).
pub fn parse_alerts(answer: &Value) -> Vec<FiringAlert> {
    let alerts = answer["data"]["alerts"].as_array().cloned().unwrap_or_default();
    let mut firing: Vec<FiringAlert> = alerts
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| {
            let labels = a["labels"].as_object().cloned().unwrap_or_default();
            let get = |k: &str| labels.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            let others: Vec<String> = labels
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "alertname" | "severity"))
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            FiringAlert {
                alert: get("alertname"),
                severity: get("severity"),
                labels: others.join(","),
                active_at: a["activeAt"].as_str().unwrap_or_default().to_string(),
            }
        })
        .collect();
    firing.sort_by(|a, b| (&a.alert, &a.labels).cmp(&(&b.alert, &b.labels)));
    firing
}

/// Asks the monitoring hosts' Prometheus replicas in inventory order; the first that answers.
pub async fn monitoring_status(cluster: &Cluster, limit: Duration) -> Result<MonitoringStatus, StatusError> {
    let hosts = config::prometheus_hosts(cluster);
    let targets: Vec<_> = hosts.iter().map(|h| ssh_target(h)).collect();
    let (conns, failures) = Connections::connect(&targets, targets.len().max(1)).await;
    let mut problems: Vec<String> = failures.iter().map(|(h, e)| format!("{h}: {e}")).collect();
    for host in hosts {
        let Some(transport) = conns.get(&host.name) else {
            continue;
        };
        let address = host_port(&host.private_address, PROMETHEUS_PORT);
        let (ip, port) = address
            .rsplit_once(':')
            .map(|(h, p)| {
                (
                    h.trim_matches(|c| c == '[' || c == ']').to_string(),
                    p.parse().unwrap_or(PROMETHEUS_PORT),
                )
            })
            .unwrap_or((host.private_address.clone(), PROMETHEUS_PORT));
        let command = format!(
            "{}; echo; echo {MARKER}; {}",
            fetch(&ip, port, "/api/v1/targets?state=active"),
            fetch(&ip, port, "/api/v1/alerts")
        );
        let answer = tokio::time::timeout(limit, run_checked(transport.as_ref(), &command)).await;
        let output = match answer {
            Ok(Ok(output)) => output.stdout_str().to_string(),
            Ok(Err(e)) => {
                problems.push(format!("{}: {e}", host.name));
                continue;
            }
            Err(_) => {
                problems.push(format!("{}: no answer within {}s", host.name, limit.as_secs()));
                continue;
            }
        };
        let Some((targets_raw, alerts_raw)) = output.split_once(MARKER) else {
            problems.push(format!("{}: incomplete answer", host.name));
            continue;
        };
        let parsed =
            body(targets_raw.trim_end_matches('\n')).and_then(|t| Ok((t, body(alerts_raw.trim_start_matches('\n'))?)));
        let (targets_json, alerts_json) = match parsed {
            Ok(both) => both,
            Err(detail) => {
                conns.close_all().await;
                return Err(StatusError::Answer {
                    host: host.name.clone(),
                    detail,
                });
            }
        };
        let (total, down) = parse_targets(&targets_json);
        conns.close_all().await;
        return Ok(MonitoringStatus {
            replica: host.name.clone(),
            targets: total,
            targets_down: down,
            alerts_firing: parse_alerts(&alerts_json),
        });
    }
    conns.close_all().await;
    Err(StatusError::NoReplica(problems.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_targets_and_firing_alerts_from_the_api() {
        let targets: Value = serde_json::from_str(
            r#"{"status":"success","data":{"activeTargets":[
              {"labels":{"job":"node","instance":"a:9100"},"health":"up","lastError":""},
              {"labels":{"job":"etcd","instance":"c:2381"},"health":"down","lastError":"connection refused"}]}}"#,
        )
        .unwrap();
        let (total, down) = parse_targets(&targets);
        assert_eq!(total, 2);
        assert_eq!(
            down,
            [DownTarget {
                job: "etcd".into(),
                instance: "c:2381".into(),
                error: "connection refused".into()
            }]
        );
        let alerts: Value = serde_json::from_str(
            r#"{"status":"success","data":{"alerts":[
              {"labels":{"alertname":"etcdMembersDown","severity":"critical","job":"etcd"},"state":"firing","activeAt":"2026-12-01T13:00:00Z"},
              {"labels":{"alertname":"TargetDown","severity":"warning"},"state":"pending","activeAt":"x"}]}}"#,
        )
        .unwrap();
        let firing = parse_alerts(&alerts);
        assert_eq!(firing.len(), 1);
        assert_eq!(firing[0].alert, "etcdMembersDown");
        assert_eq!(firing[0].labels, "job=etcd");
    }

    #[test]
    fn raw_answers_need_a_200_and_success() {
        assert!(body("HTTP/1.0 200 OK\r\nContent-Type: x\r\n\r\n{\"status\":\"success\",\"data\":{}}").is_ok());
        assert!(body("HTTP/1.0 503 Service Unavailable\r\n\r\n{}").is_err());
        assert!(body("").is_err());
        assert!(fetch("10.0.0.1", 9090, "/api/v1/alerts").contains("/dev/tcp/10.0.0.1/9090"));
    }
}
