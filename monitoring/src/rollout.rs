//! Rolling changes of the monitoring servers: Alertmanager and Prometheus change one replica at a
//! time, like etcd's members (etcd/src/apply/converge.rs): change one host, then wait until its
//! server answers `/-/ready`, runs the version the inventory names and, for Prometheus, scrapes again
//! (a target up in `/api/v1/targets`, which a restarted server reports only after its first scrape),
//! before the next replica is touched. A replica that is not ready within [`READY_TIMEOUT`] stops the
//! rollout there, so the replicas not yet touched keep scraping and alerting.
//!
//! Replicas that are not ready before the run go first (they serve nothing that a restart could take
//! away), the ready ones after them in inventory order. A first install waits for nothing: no replica
//! served before ([`gated`]).
//!
//! The server is asked from its own host over SSH with bash's `/dev/tcp` (as `capstan status` does), so
//! the operator's machine needs no route to it and the host no curl. Parsing is pure.

use std::time::{Duration, Instant};

use capstan_inventory::Host;
use capstan_provisioner::facts::ProbeSections;
use capstan_provisioner::ops::{run_checked, OpError};
use capstan_provisioner::transport::Transport;
use serde_json::Value;

use crate::config::{ALERTMANAGER_PORT, ALERTMANAGER_SERVICE, PROMETHEUS_PORT, PROMETHEUS_SERVICE};
use crate::status::fetch;

/// How long a changed replica may take to be ready again (Prometheus replays its write-ahead log
/// first, which takes longer the more series it holds) before the rollout stops.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

const MARK: &str = "@@capstan:";

/// The servers that run one per monitoring host and roll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Prometheus,
    Alertmanager,
}

impl Server {
    pub fn title(self) -> &'static str {
        match self {
            Server::Prometheus => "Prometheus",
            Server::Alertmanager => "Alertmanager",
        }
    }

    pub fn service(self) -> &'static str {
        match self {
            Server::Prometheus => PROMETHEUS_SERVICE,
            Server::Alertmanager => ALERTMANAGER_SERVICE,
        }
    }

    fn port(self) -> u16 {
        match self {
            Server::Prometheus => PROMETHEUS_PORT,
            Server::Alertmanager => ALERTMANAGER_PORT,
        }
    }

    /// Where the server tells its version.
    fn version_path(self) -> &'static str {
        match self {
            Server::Prometheus => "/api/v1/status/buildinfo",
            Server::Alertmanager => "/api/v2/status",
        }
    }
}

/// What one server said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    /// `/-/ready` answered 200.
    pub ready: bool,
    /// The version it reports (`2.53.3+ds1` for Debian's build of 2.53.3).
    pub version: Option<String>,
    /// Prometheus: how many active targets, and how many of them are up (scraped by this process).
    pub targets: Option<(usize, usize)>,
    /// The `/-/ready` answer when not 200, or why there was none.
    pub answer: String,
}

impl Readiness {
    /// `None` when the server is ready on `version` (and, for Prometheus, scrapes); otherwise what
    /// it still lacks.
    pub fn lacks(&self, server: Server, version: &str) -> Option<String> {
        if !self.ready {
            return Some(format!("/-/ready answers {}", self.answer));
        }
        let running = self.version.as_deref().map(upstream_version);
        if running != Some(version) {
            return Some(format!(
                "it runs version {}, not {version}",
                self.version.as_deref().unwrap_or("(unknown)")
            ));
        }
        if server == Server::Prometheus {
            match self.targets {
                Some((_, up)) if up > 0 => {}
                Some((total, _)) => return Some(format!("none of its {total} targets is scraped up yet")),
                None => return Some("its targets could not be read".into()),
            }
        }
        None
    }
}

/// `2.53.3+ds1` → `2.53.3`: Debian's builds add a suffix to the upstream version.
fn upstream_version(reported: &str) -> &str {
    let end = reported.find(['+', '~']).unwrap_or(reported.len());
    reported[..end].trim_start_matches('v')
}

/// The address the server listens on (see `config::listen_address`): the private address, or
/// loopback when that is a name (the server then listens on every address).
fn address(host: &Host) -> String {
    match host.private_address.parse::<std::net::IpAddr>() {
        Ok(_) => host.private_address.clone(),
        Err(_) => "127.0.0.1".into(),
    }
}

/// One round trip: `/-/ready`, the version and (Prometheus) the active targets.
pub fn readiness_script(server: Server, address: &str) -> String {
    let port = server.port();
    let mut script = format!(
        "echo '{MARK}ready'; {} 2>&1; echo\necho '{MARK}version'; {} 2>/dev/null; echo\n",
        fetch(address, port, "/-/ready"),
        fetch(address, port, server.version_path())
    );
    if server == Server::Prometheus {
        script.push_str(&format!(
            "echo '{MARK}targets'; {} 2>/dev/null; echo\n",
            fetch(address, port, "/api/v1/targets?state=active")
        ));
    }
    script.push_str(&format!("echo '{MARK}end'\n"));
    script
}

/// (status code, body) of a raw HTTP answer (its line ends already normalised by the sections).
fn http(raw: &str) -> Option<(u16, &str)> {
    let status = raw.lines().next()?;
    if !status.starts_with("HTTP/1.") {
        return None;
    }
    let code = status.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\n\n").map(|(_, b)| b).unwrap_or("");
    Some((code, body))
}

fn json_body(raw: &str) -> Option<Value> {
    match http(raw)? {
        (200, body) => serde_json::from_str(body.trim()).ok(),
        _ => None,
    }
}

pub fn parse_readiness(server: Server, text: &str) -> Result<Readiness, String> {
    let sections = ProbeSections::parse(text)?;
    let ready_raw = sections.get("ready");
    let (ready, answer) = match http(ready_raw) {
        Some((200, _)) => (true, "200".to_string()),
        Some((code, body)) => (false, format!("{code} {}", body.trim())),
        None if ready_raw.is_empty() => (false, "nothing (not listening)".into()),
        None => (false, ready_raw.lines().last().unwrap_or_default().trim().to_string()),
    };
    let version = json_body(sections.get("version")).and_then(|v| {
        let version = match server {
            Server::Prometheus => &v["data"]["version"],
            Server::Alertmanager => &v["versionInfo"]["version"],
        };
        version.as_str().map(String::from)
    });
    let targets = match server {
        Server::Alertmanager => None,
        Server::Prometheus => json_body(sections.get("targets")).map(|v| {
            let active = v["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
            let up = active.iter().filter(|t| t["health"] == "up").count();
            (active.len(), up)
        }),
    };
    Ok(Readiness {
        ready,
        version,
        targets,
        answer,
    })
}

pub async fn probe_readiness(t: &dyn Transport, server: Server, host: &Host) -> Result<Readiness, OpError> {
    let output = run_checked(t, &readiness_script(server, &address(host))).await?;
    parse_readiness(server, &output.stdout_str()).map_err(|reason| OpError::Probe {
        host: t.host().to_string(),
        what: format!("{} readiness", server.title()),
        reason,
    })
}

/// Waits until `server` on `host` is ready on `version` (see [`Readiness::lacks`]), asking every
/// second; how long that took, or what it still lacked when `timeout` ran out.
pub async fn wait_ready(
    t: &dyn Transport,
    server: Server,
    host: &Host,
    version: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let lacking = match probe_readiness(t, server, host).await {
            Ok(readiness) => match readiness.lacks(server, version) {
                None => return Ok(started.elapsed()),
                Some(lacking) => lacking,
            },
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= timeout {
            return Err(format!(
                "{} on {} is not ready {}s after its change: {lacking}",
                server.title(),
                host.name,
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The order replicas change in: the ones not ready now first (nothing is lost by restarting them),
/// then the rest; each group in inventory order. `ready[i]` is replica `i`'s state before the run.
pub fn rollout_order(ready: &[bool]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ready.len()).filter(|&i| !ready[i]).collect();
    order.extend((0..ready.len()).filter(|&i| ready[i]));
    order
}

/// Which replicas, in rollout order (`ready` before the run, in that order), are waited for after
/// their change: one that served before the run (it must serve again), or one after which a
/// replica that serves now is still to change (it must take over first). On a first install
/// nothing served, so nothing waits.
pub fn gated(ready_in_order: &[bool]) -> Vec<bool> {
    (0..ready_in_order.len())
        .map(|k| ready_in_order[k..].iter().any(|&r| r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sections(parts: &[(&str, &str)]) -> String {
        let mut text = String::new();
        for (name, body) in parts {
            text.push_str(&format!("{MARK}{name}\n{body}\n"));
        }
        text.push_str(&format!("{MARK}end\n"));
        text
    }

    const READY: &str = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nPrometheus Server is Ready.";
    const BUILDINFO: &str =
        "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"status\":\"success\",\"data\":{\"version\":\"2.53.3+ds1\"}}";

    fn targets(healths: &[&str]) -> String {
        let active: Vec<String> = healths.iter().map(|h| format!("{{\"health\":\"{h}\"}}")).collect();
        format!(
            "HTTP/1.0 200 OK\r\n\r\n{{\"status\":\"success\",\"data\":{{\"activeTargets\":[{}]}}}}",
            active.join(",")
        )
    }

    #[test]
    fn prometheus_is_ready_once_it_runs_the_version_and_scrapes() {
        let up = sections(&[
            ("ready", READY),
            ("version", BUILDINFO),
            ("targets", &targets(&["up", "unknown"])),
        ]);
        let readiness = parse_readiness(Server::Prometheus, &up).unwrap();
        assert_eq!(readiness.targets, Some((2, 1)));
        assert_eq!(readiness.lacks(Server::Prometheus, "2.53.3"), None);
        assert_eq!(
            readiness.lacks(Server::Prometheus, "2.42.0").unwrap(),
            "it runs version 2.53.3+ds1, not 2.42.0"
        );

        let fresh = sections(&[
            ("ready", READY),
            ("version", BUILDINFO),
            ("targets", &targets(&["unknown"])),
        ]);
        let readiness = parse_readiness(Server::Prometheus, &fresh).unwrap();
        assert_eq!(
            readiness.lacks(Server::Prometheus, "2.53.3").unwrap(),
            "none of its 1 targets is scraped up yet"
        );

        let starting = sections(&[
            ("ready", "HTTP/1.0 503 Service Unavailable\r\n\r\nService Unavailable"),
            ("version", ""),
            ("targets", ""),
        ]);
        let readiness = parse_readiness(Server::Prometheus, &starting).unwrap();
        assert_eq!(
            readiness.lacks(Server::Prometheus, "2.53.3").unwrap(),
            "/-/ready answers 503 Service Unavailable"
        );

        let down = sections(&[
            (
                "ready",
                "bash: connect: Connection refused\nbash: line 1: /dev/tcp/10.0.0.1/9090: Connection refused",
            ),
            ("version", ""),
            ("targets", ""),
        ]);
        let readiness = parse_readiness(Server::Prometheus, &down).unwrap();
        assert!(!readiness.ready);
        assert!(readiness.answer.contains("Connection refused"), "{}", readiness.answer);
        assert!(
            parse_readiness(Server::Prometheus, "@@capstan:ready\n").is_err(),
            "truncated"
        );
    }

    #[test]
    fn alertmanager_needs_no_targets_and_reports_its_version_in_status() {
        let status =
            "HTTP/1.0 200 OK\r\n\r\n{\"cluster\":{\"status\":\"ready\"},\"versionInfo\":{\"version\":\"0.28.1+ds\"}}";
        let text = sections(&[("ready", "HTTP/1.0 200 OK\r\n\r\nOK"), ("version", status)]);
        let readiness = parse_readiness(Server::Alertmanager, &text).unwrap();
        assert_eq!(readiness.version.as_deref(), Some("0.28.1+ds"));
        assert_eq!(readiness.lacks(Server::Alertmanager, "0.28.1"), None);
        assert!(readiness.lacks(Server::Alertmanager, "0.25.0").is_some());
    }

    #[test]
    fn the_script_asks_the_private_address_and_ends_with_the_marker() {
        let script = readiness_script(Server::Prometheus, "10.0.0.11");
        assert!(script.contains("/dev/tcp/10.0.0.11/9090"), "{script}");
        assert!(script.contains("/api/v1/targets?state=active"), "{script}");
        assert!(script.trim_end().ends_with("@@capstan:end'"), "{script}");
        let script = readiness_script(Server::Alertmanager, "10.0.0.11");
        assert!(script.contains("/dev/tcp/10.0.0.11/9093") && script.contains("/api/v2/status"));
        assert!(!script.contains("targets"));
    }

    #[test]
    fn replicas_not_ready_change_first() {
        assert_eq!(rollout_order(&[true, true]), [0, 1]);
        assert_eq!(rollout_order(&[true, false]), [1, 0]);
        assert_eq!(rollout_order(&[false, true, false]), [0, 2, 1]);
        assert_eq!(gated(&[true, true]), [true, true]);
        assert_eq!(gated(&[false, true]), [true, true]);
        assert_eq!(gated(&[false, false]), [false, false]);
        assert_eq!(upstream_version("v2.42.0"), "2.42.0");
        assert_eq!(upstream_version("0.25.0+ds"), "0.25.0");
    }
}
