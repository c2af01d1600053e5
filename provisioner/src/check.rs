//! Preflight checks: is each host fit to run its roles?
//!
//! Evaluation is pure (facts and probe output in, [`CheckResult`]s out);
//! [`run_checks`] does the IO and turns every per-host failure (unreachable,
//! authentication, host key) into a failed report instead of aborting.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::component::Component;
use crate::facts::{gather_host_facts, FactCache, HostFacts};
use crate::pool::Connections;
use crate::ssh::SshTarget;
use crate::transport::{ExecOptions, Transport, TransportError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
}

impl CheckResult {
    fn new(name: impl Into<String>, status: CheckStatus, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name: name.into(),
            status,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckError {
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    pub host: String,
    /// An authenticated SSH session was established (false on connect,
    /// host key and authentication failures).
    pub reachable: bool,
    pub facts: Option<HostFacts>,
    pub checks: Vec<CheckResult>,
    pub error: Option<CheckError>,
}

impl CheckReport {
    /// No error and no failed check.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.checks.iter().all(|c| c.status != CheckStatus::Fail)
    }
}

/// Thresholds. Clock skew: 2s is a warning (log correlation, short leases
/// suffer); 30s fails, because certificates capstan issues with a small
/// backdate would look not-yet-valid and the lease timing of clustered services becomes unreliable.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    pub min_free_disk_bytes: u64,
    /// Where the free-space requirement applies (must be one of `facts::DISK_PATHS`).
    pub disk_path: String,
    pub clock_warn_secs: f64,
    pub clock_fail_secs: f64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            min_free_disk_bytes: 2 << 30,
            disk_path: "/var/lib".into(),
            clock_warn_secs: 2.0,
            clock_fail_secs: 30.0,
        }
    }
}

pub const SUPPORTED_ARCHES: [&str; 2] = ["amd64", "arm64"];

pub fn check_init(facts: &HostFacts) -> CheckResult {
    let name = "init";
    if facts.init != "systemd" {
        return CheckResult::new(
            name,
            CheckStatus::Fail,
            format!("PID 1 is {:?}, capstan needs systemd", facts.init),
        );
    }
    match facts.systemd_state.as_deref() {
        Some("running") => CheckResult::new(name, CheckStatus::Pass, "systemd is running"),
        Some("degraded") => CheckResult::new(
            name,
            CheckStatus::Warn,
            "systemd is degraded: some units failed (systemctl --failed)",
        ),
        Some(state @ ("starting" | "initializing")) => CheckResult::new(
            name,
            CheckStatus::Warn,
            format!("systemd is still {state}; boot has not finished"),
        ),
        Some(state) => CheckResult::new(name, CheckStatus::Fail, format!("systemd state is {state}")),
        None => CheckResult::new(name, CheckStatus::Fail, "systemctl is not available"),
    }
}

pub fn check_arch(facts: &HostFacts) -> CheckResult {
    if SUPPORTED_ARCHES.contains(&facts.arch.as_str()) {
        CheckResult::new("arch", CheckStatus::Pass, facts.arch.clone())
    } else {
        CheckResult::new(
            "arch",
            CheckStatus::Fail,
            format!(
                "{} is not supported (supported: {})",
                facts.arch,
                SUPPORTED_ARCHES.join(", ")
            ),
        )
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

pub fn check_disk(facts: &HostFacts, config: &CheckConfig) -> CheckResult {
    let name = "disk";
    // /var/lib may be on / (then df reports /'s filesystem for it anyway).
    let free = facts
        .free_disk_bytes
        .get(&config.disk_path)
        .or_else(|| facts.free_disk_bytes.get("/"));
    match free {
        None => CheckResult::new(
            name,
            CheckStatus::Fail,
            format!("free space of {} is unknown", config.disk_path),
        ),
        Some(&free) if free >= config.min_free_disk_bytes => CheckResult::new(
            name,
            CheckStatus::Pass,
            format!("{} free on {}", gib(free), config.disk_path),
        ),
        Some(&free) => CheckResult::new(
            name,
            CheckStatus::Fail,
            format!(
                "{} free on {}, need at least {}",
                gib(free),
                config.disk_path,
                gib(config.min_free_disk_bytes)
            ),
        ),
    }
}

pub fn check_clock(facts: &HostFacts, config: &CheckConfig) -> CheckResult {
    let skew = facts.time_offset_secs;
    let detail = format!("clock is {:+.2}s off this machine's", skew);
    let status = if skew.abs() >= config.clock_fail_secs {
        CheckStatus::Fail
    } else if skew.abs() >= config.clock_warn_secs {
        CheckStatus::Warn
    } else {
        CheckStatus::Pass
    };
    let detail = if status == CheckStatus::Pass {
        detail
    } else {
        format!("{detail}; enable NTP (timedatectl set-ntp true)")
    };
    CheckResult::new("clock", status, detail)
}

/// A TCP port a role needs, and the process that legitimately holds it when
/// capstan already installed the service. Components declare them ([`Component::required_ports`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequiredPort {
    /// The inventory role whose hosts need the port.
    pub role: &'static str,
    pub port: u16,
    pub purpose: &'static str,
    pub owner: &'static str,
}

/// The ports a host with `roles` needs: for each of its roles in order, the ports `components`
/// declare for that role, each port once.
pub fn required_ports(components: &[&dyn Component], roles: &[String]) -> Vec<RequiredPort> {
    let mut ports: Vec<RequiredPort> = Vec::new();
    for role in roles {
        for component in components {
            for port in component.required_ports() {
                let seen = ports
                    .iter()
                    .any(|p| (p.port, p.purpose, p.owner) == (port.port, port.purpose, port.owner));
                if port.role == role && !seen {
                    ports.push(port);
                }
            }
        }
    }
    ports
}

/// One listening TCP socket from `ss -ltnH` (with `-p`: the process name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub address: String,
    pub port: u16,
    pub process: Option<String>,
}

pub fn parse_ss_listeners(text: &str) -> Vec<Listener> {
    text.lines()
        .filter_map(|line| {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            // State Recv-Q Send-Q Local Peer [users:((...))]
            let local = tokens.get(3)?;
            let (address, port) = local.rsplit_once(':')?;
            let port = port.parse().ok()?;
            let process = line
                .split_once("users:((\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(name, _)| name.to_string());
            Some(Listener {
                address: address.to_string(),
                port,
                process,
            })
        })
        .collect()
}

/// Linux truncates process names (`comm`) to 15 bytes.
fn same_process(seen: &str, expected: &str) -> bool {
    let expected: String = expected.chars().take(15).collect();
    seen == expected
}

pub fn check_ports(listeners: &[Listener], required: &[RequiredPort]) -> Vec<CheckResult> {
    required
        .iter()
        .map(|req| {
            let name = format!("port {}", req.port);
            let holders: Vec<&Listener> = listeners.iter().filter(|l| l.port == req.port).collect();
            if holders.is_empty() {
                return CheckResult::new(name, CheckStatus::Pass, format!("free for {}", req.purpose));
            }
            let names: Vec<String> = holders
                .iter()
                .map(|l| format!("{} on {}", l.process.as_deref().unwrap_or("unknown process"), l.address))
                .collect();
            if holders
                .iter()
                .all(|l| l.process.as_deref().is_some_and(|p| same_process(p, req.owner)))
            {
                CheckResult::new(
                    name,
                    CheckStatus::Pass,
                    format!("already served by {} ({})", req.owner, names.join(", ")),
                )
            } else {
                CheckResult::new(
                    name,
                    CheckStatus::Fail,
                    format!("needed for {} but in use by {}", req.purpose, names.join(", ")),
                )
            }
        })
        .collect()
}

/// All pure checks on gathered facts.
pub fn evaluate_facts(facts: &HostFacts, config: &CheckConfig) -> Vec<CheckResult> {
    vec![
        check_init(facts),
        check_arch(facts),
        check_disk(facts, config),
        check_clock(facts, config),
    ]
}

/// The report for a host we could not connect to.
pub fn unreachable_report(host: &str, error: &TransportError) -> CheckReport {
    CheckReport {
        host: host.to_string(),
        reachable: false,
        facts: None,
        checks: Vec::new(),
        error: Some(CheckError {
            message: error.to_string(),
            hint: error.hint().map(str::to_string),
        }),
    }
}

/// Listing with process names needs root; fall back to bare ports.
const LISTENERS_COMMAND: &str = "ss -ltnpH 2>/dev/null || ss -ltnH";

/// Runs every check on one connected host, the port checks on `required` (see [`required_ports`]).
pub async fn check_host(
    t: &dyn Transport,
    required: &[RequiredPort],
    config: &CheckConfig,
    cache: &FactCache,
) -> CheckReport {
    let mut report = CheckReport {
        host: t.host().to_string(),
        reachable: true,
        facts: None,
        checks: Vec::new(),
        error: None,
    };
    let facts = match gather_host_facts(t, cache).await {
        Ok(facts) => facts,
        Err(e) => {
            let hint = match &e {
                crate::facts::FactError::Transport(te) => te.hint().map(str::to_string),
                crate::facts::FactError::Parse { .. } => None,
            };
            report.error = Some(CheckError {
                message: e.to_string(),
                hint,
            });
            return report;
        }
    };
    report.checks = evaluate_facts(&facts, config);
    report.facts = Some(facts);

    if !required.is_empty() {
        let opts = ExecOptions {
            timeout: Duration::from_secs(30),
            privileged: true,
        };
        match t.exec(LISTENERS_COMMAND, &opts).await {
            Ok(out) if out.success() => {
                report
                    .checks
                    .extend(check_ports(&parse_ss_listeners(&out.stdout_str()), required));
            }
            Ok(out) => report.checks.push(CheckResult::new(
                "ports",
                CheckStatus::Warn,
                format!(
                    "cannot list listening ports (is iproute2 installed?): {}",
                    out.stderr_str().trim()
                ),
            )),
            Err(e) => report.checks.push(CheckResult::new(
                "ports",
                CheckStatus::Warn,
                format!("cannot list listening ports: {e}"),
            )),
        }
    }
    report
}

/// A host to check and the roles it will have.
#[derive(Debug, Clone)]
pub struct CheckTarget {
    pub target: SshTarget,
    pub roles: Vec<String>,
}

/// Connects to every host (bounded parallelism), checks each (ports: those `components` declare
/// for the host's roles), closes the connections. Reports come back in the order of `targets`.
pub async fn run_checks(
    targets: &[CheckTarget],
    components: &[&dyn Component],
    config: &CheckConfig,
    parallelism: usize,
) -> Vec<CheckReport> {
    let ssh_targets: Vec<SshTarget> = targets.iter().map(|t| t.target.clone()).collect();
    let (connections, failures) = Connections::connect(&ssh_targets, parallelism).await;
    let cache = FactCache::new();
    let (connections_ref, cache_ref, failures_ref) = (&connections, &cache, &failures);
    let reports: Vec<CheckReport> = stream::iter(targets)
        .map(|target| async move {
            let name = &target.target.name;
            match connections_ref.get(name) {
                Some(t) => {
                    let required = required_ports(components, &target.roles);
                    check_host(t.as_ref(), &required, config, cache_ref).await
                }
                None => match failures_ref.get(name) {
                    Some(error) => unreachable_report(name, error),
                    None => unreachable_report(
                        name,
                        &TransportError::Other {
                            host: name.clone(),
                            reason: "no connection was attempted".into(),
                        },
                    ),
                },
            }
        })
        .buffered(parallelism.max(1))
        .collect()
        .await;
    connections.close_all().await;
    reports
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn facts() -> HostFacts {
        HostFacts {
            os_id: "debian".into(),
            os_version_id: "12".into(),
            os_pretty: "Debian GNU/Linux 12 (bookworm)".into(),
            arch: "amd64".into(),
            kernel: "6.1.0".into(),
            init: "systemd".into(),
            systemd_state: Some("running".into()),
            hostname: "node-1".into(),
            addresses: vec![],
            cpus: 2,
            memory_bytes: 4 << 30,
            free_disk_bytes: BTreeMap::from([("/".to_string(), 10 << 30), ("/var/lib".to_string(), 10 << 30)]),
            time_offset_secs: 0.1,
        }
    }

    #[test]
    fn init_states() {
        let cases = [
            ("systemd", Some("running"), CheckStatus::Pass),
            ("systemd", Some("degraded"), CheckStatus::Warn),
            ("systemd", Some("starting"), CheckStatus::Warn),
            ("systemd", Some("maintenance"), CheckStatus::Fail),
            ("systemd", None, CheckStatus::Fail),
            ("init", Some("offline"), CheckStatus::Fail),
        ];
        for (init, state, expected) in cases {
            let f = HostFacts {
                init: init.into(),
                systemd_state: state.map(Into::into),
                ..facts()
            };
            assert_eq!(check_init(&f).status, expected, "{init} {state:?}");
        }
    }

    #[test]
    fn arch_support() {
        assert_eq!(check_arch(&facts()).status, CheckStatus::Pass);
        assert_eq!(
            check_arch(&HostFacts {
                arch: "arm64".into(),
                ..facts()
            })
            .status,
            CheckStatus::Pass
        );
        let r = check_arch(&HostFacts {
            arch: "riscv64".into(),
            ..facts()
        });
        assert_eq!(r.status, CheckStatus::Fail);
        assert!(r.detail.contains("riscv64"));
    }

    #[test]
    fn disk_threshold_and_fallback_to_root() {
        let config = CheckConfig::default();
        assert_eq!(check_disk(&facts(), &config).status, CheckStatus::Pass);
        let low = HostFacts {
            free_disk_bytes: BTreeMap::from([("/var/lib".to_string(), 1 << 30)]),
            ..facts()
        };
        let r = check_disk(&low, &config);
        assert_eq!(r.status, CheckStatus::Fail);
        assert!(
            r.detail.contains("1.0 GiB") && r.detail.contains("2.0 GiB"),
            "{}",
            r.detail
        );
        let root_only = HostFacts {
            free_disk_bytes: BTreeMap::from([("/".to_string(), 3 << 30)]),
            ..facts()
        };
        assert_eq!(check_disk(&root_only, &config).status, CheckStatus::Pass);
        let unknown = HostFacts {
            free_disk_bytes: BTreeMap::new(),
            ..facts()
        };
        assert_eq!(check_disk(&unknown, &config).status, CheckStatus::Fail);
    }

    #[test]
    fn clock_thresholds() {
        let config = CheckConfig::default();
        for (offset, expected) in [
            (0.5, CheckStatus::Pass),
            (-2.5, CheckStatus::Warn),
            (29.0, CheckStatus::Warn),
            (-31.0, CheckStatus::Fail),
        ] {
            let f = HostFacts {
                time_offset_secs: offset,
                ..facts()
            };
            assert_eq!(check_clock(&f, &config).status, expected, "{offset}");
        }
    }

    /// Two made-up components; real ones live in their own crates.
    struct Store;
    struct Web;

    impl Component for Store {
        fn name(&self) -> &'static str {
            "store"
        }
        fn roles(&self) -> &'static [&'static str] {
            &["db"]
        }
        fn required_ports(&self) -> Vec<RequiredPort> {
            vec![
                RequiredPort {
                    role: "db",
                    port: 5000,
                    purpose: "store clients",
                    owner: "store",
                },
                RequiredPort {
                    role: "db",
                    port: 5001,
                    purpose: "store peers",
                    owner: "store",
                },
            ]
        }
    }

    impl Component for Web {
        fn name(&self) -> &'static str {
            "web"
        }
        fn roles(&self) -> &'static [&'static str] {
            &["front", "db"]
        }
        fn required_ports(&self) -> Vec<RequiredPort> {
            vec![
                RequiredPort {
                    role: "front",
                    port: 80,
                    purpose: "web server",
                    owner: "web-server-with-a-long-name",
                },
                RequiredPort {
                    role: "db",
                    port: 80,
                    purpose: "web server",
                    owner: "web-server-with-a-long-name",
                },
            ]
        }
    }

    #[test]
    fn ports_follow_the_host_roles_once_each() {
        let components: [&dyn Component; 2] = [&Web, &Store];
        let ports = |roles: &[&str]| -> Vec<u16> {
            let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
            required_ports(&components, &roles).iter().map(|p| p.port).collect()
        };
        assert_eq!(ports(&["db", "front", "db", "other"]), [80, 5000, 5001]);
        assert_eq!(ports(&["front"]), [80]);
        assert_eq!(ports(&["other"]), Vec::<u16>::new());
    }

    #[test]
    fn ports_free_or_held_by_their_owner_pass() {
        let listeners = parse_ss_listeners(
            "LISTEN 0 128 0.0.0.0:80 0.0.0.0:* users:((\"web-server-with\",pid=1,fd=3))\n\
             LISTEN 0 128 [::]:5000 [::]:* users:((\"nginx\",pid=2,fd=3))\n",
        );
        let results = check_ports(&listeners, &Store.required_ports());
        let statuses: Vec<(&str, CheckStatus)> = results.iter().map(|r| (r.name.as_str(), r.status)).collect();
        assert_eq!(
            statuses,
            [("port 5000", CheckStatus::Fail), ("port 5001", CheckStatus::Pass)]
        );
        assert!(results[0].detail.contains("nginx on [::]"), "{}", results[0].detail);
        let web = check_ports(&listeners, &Web.required_ports()[..1]);
        assert_eq!(web[0].status, CheckStatus::Pass, "comm names are truncated to 15 bytes");
    }

    #[test]
    fn unreachable_hosts_become_failed_reports_with_hint() {
        let error = TransportError::Connect {
            host: "n1".into(),
            addr: "10.0.0.1:22".into(),
            reason: "refused".into(),
        };
        let report = unreachable_report("n1", &error);
        assert!(!report.reachable && !report.passed());
        let err = report.error.unwrap();
        assert!(err.message.contains("refused"));
        assert!(err.hint.unwrap().contains("sshd"));
        let json = serde_json::to_value(unreachable_report("n1", &error)).unwrap();
        assert_eq!(json["reachable"], false);
    }
}
