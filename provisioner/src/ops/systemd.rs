//! systemd units and services. Planning is pure (probe output → changes), so
//! it is tested here without systemd; applying needs systemd as PID 1.

use async_trait::async_trait;

use super::file::{Absent, File};
use super::shell::quote;
use super::{run_checked, Change, Footprint, OpError, Operation, Plan, Step, Trigger};
use crate::transport::Transport;

pub const SYSTEMD_UNIT_DIR: &str = "/etc/systemd/system";

/// A removed unit file: like [`Absent`], plus `systemctl daemon-reload` when it was there. Stop
/// and disable the unit first ([`Service`] with `enabled(false).running(false)`).
pub struct RemovedUnit {
    inner: Absent,
}

impl RemovedUnit {
    pub fn new(unit: &str) -> RemovedUnit {
        RemovedUnit {
            inner: Absent::new(&format!("{SYSTEMD_UNIT_DIR}/{unit}")),
        }
    }
}

#[async_trait]
impl Operation for RemovedUnit {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        self.inner.plan(t).await
    }
    fn probes(&self) -> Vec<String> {
        self.inner.probes()
    }
    fn triggers(&self) -> Vec<Trigger> {
        vec![Trigger::DaemonReload]
    }
}

const UNIT_SUFFIXES: &[&str] = &[
    "service",
    "socket",
    "timer",
    "target",
    "path",
    "mount",
    "automount",
    "swap",
    "slice",
];

fn validate_unit_name(name: &str, require_suffix: bool) -> Result<(), OpError> {
    let valid_chars = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.@-\\".contains(&b))
        && !name.starts_with('.')
        && !name.starts_with('-');
    if !valid_chars {
        return Err(OpError::Invalid(format!("{name:?} is not a valid systemd unit name")));
    }
    let has_suffix = name
        .rsplit_once('.')
        .is_some_and(|(_, suffix)| UNIT_SUFFIXES.contains(&suffix));
    if require_suffix && !has_suffix {
        return Err(OpError::Invalid(format!(
            "systemd unit {name:?} needs a type suffix, one of: .{}",
            UNIT_SUFFIXES.join(", .")
        )));
    }
    Ok(())
}

/// A unit file in /etc/systemd/system. When it changes, `systemctl
/// daemon-reload` runs once before the next op that is not a unit write.
pub struct SystemdUnit {
    name: String,
    file: File,
}

impl SystemdUnit {
    /// `name` includes the type suffix, e.g. "app.service".
    pub fn new(name: &str, content: impl Into<Vec<u8>>) -> Result<SystemdUnit, OpError> {
        validate_unit_name(name, true)?;
        let file = File::new(&format!("{SYSTEMD_UNIT_DIR}/{name}"), content)
            .mode(0o644)
            .owner("root")
            .group("root");
        Ok(SystemdUnit {
            name: name.to_string(),
            file,
        })
    }
}

#[async_trait]
impl Operation for SystemdUnit {
    fn footprint(&self) -> Vec<Footprint> {
        self.file.footprint()
    }
    fn self_contained(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("systemd unit {}", self.name)
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        self.file.plan(t).await
    }
    fn probes(&self) -> Vec<String> {
        self.file.probes()
    }
    fn triggers(&self) -> Vec<Trigger> {
        vec![Trigger::DaemonReload]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnablementState {
    Enabled,
    Disabled,
    /// static, indirect, generated, alias, transient: nothing to enable.
    Static,
    Masked,
    NotFound,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveState {
    Active,
    Reloading,
    Activating,
    Deactivating,
    Inactive,
    Failed,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    pub enabled: EnablementState,
    pub active: ActiveState,
}

fn service_probe_command(name: &str) -> String {
    let name = quote(name);
    format!(
        "printf 'enabled=%s\\nactive=%s\\n' \"$(systemctl is-enabled {name} 2>/dev/null)\" \"$(systemctl is-active {name} 2>/dev/null)\""
    )
}

/// Parse `enabled=…` / `active=…` lines printed by the service probe.
pub fn parse_service_state(stdout: &str) -> Result<ServiceState, String> {
    let mut enabled = None;
    let mut active = None;
    for line in stdout.lines() {
        if let Some(value) = line.strip_prefix("enabled=") {
            enabled = Some(match value.trim() {
                "enabled" | "enabled-runtime" => EnablementState::Enabled,
                "disabled" => EnablementState::Disabled,
                "static" | "indirect" | "generated" | "alias" | "transient" | "linked" | "linked-runtime" => {
                    EnablementState::Static
                }
                "masked" | "masked-runtime" => EnablementState::Masked,
                "" | "not-found" => EnablementState::NotFound,
                other => EnablementState::Other(other.to_string()),
            });
        } else if let Some(value) = line.strip_prefix("active=") {
            active = Some(match value.trim() {
                "active" => ActiveState::Active,
                "reloading" => ActiveState::Reloading,
                "activating" => ActiveState::Activating,
                "deactivating" => ActiveState::Deactivating,
                "inactive" | "" | "unknown" => ActiveState::Inactive,
                "failed" => ActiveState::Failed,
                other => ActiveState::Other(other.to_string()),
            });
        }
    }
    match (enabled, active) {
        (Some(enabled), Some(active)) => Ok(ServiceState { enabled, active }),
        _ => Err(format!("expected enabled= and active= lines, got {stdout:?}")),
    }
}

/// Changes that bring `state` to the wanted enablement/activity (None = don't care).
pub fn plan_service(
    name: &str,
    want_enabled: Option<bool>,
    want_running: Option<bool>,
    state: &ServiceState,
) -> Result<Vec<Change>, String> {
    let masked = state.enabled == EnablementState::Masked;
    if masked && (want_enabled == Some(true) || want_running == Some(true)) {
        return Err(format!("{name} is masked; unmask it first (systemctl unmask {name})"));
    }
    let unit = quote(name);
    let change = |verb: &str| Change {
        summary: format!("{verb} {name}"),
        diff: None,
        steps: vec![Step::Run(format!("systemctl {verb} {unit}"))],
    };
    let mut changes = Vec::new();
    match want_enabled {
        Some(true) if !matches!(state.enabled, EnablementState::Enabled | EnablementState::Static) => {
            changes.push(change("enable"))
        }
        Some(false) if state.enabled == EnablementState::Enabled => changes.push(change("disable")),
        _ => {}
    }
    let running = matches!(
        state.active,
        ActiveState::Active | ActiveState::Reloading | ActiveState::Activating
    );
    match want_running {
        Some(true) if !running => changes.push(change("start")),
        Some(false) if running => changes.push(change("stop")),
        _ => {}
    }
    Ok(changes)
}

/// A service enabled at boot and/or running (or not).
#[derive(Debug, Clone)]
pub struct Service {
    name: String,
    enabled: Option<bool>,
    running: Option<bool>,
}

impl Service {
    pub fn new(name: &str) -> Result<Service, OpError> {
        validate_unit_name(name, false)?;
        Ok(Service {
            name: name.to_string(),
            enabled: None,
            running: None,
        })
    }
    pub fn enabled(mut self, enabled: bool) -> Service {
        self.enabled = Some(enabled);
        self
    }
    pub fn running(mut self, running: bool) -> Service {
        self.running = Some(running);
        self
    }
}

#[async_trait]
impl Operation for Service {
    fn describe(&self) -> String {
        format!("service {}", self.name)
    }
    fn probes(&self) -> Vec<String> {
        vec![service_probe_command(&self.name)]
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        let probe_error = |reason: String| OpError::Probe {
            host: t.host().to_string(),
            what: format!("service {}", self.name),
            reason,
        };
        let output = run_checked(t, &service_probe_command(&self.name)).await?;
        let state = parse_service_state(&output.stdout_str()).map_err(probe_error)?;
        let changes =
            plan_service(&self.name, self.enabled, self.running, &state).map_err(|reason| OpError::Refused {
                host: t.host().to_string(),
                reason,
            })?;
        Ok(Plan { changes })
    }
}

/// Restart a service. Always a change: queued by handlers only when needed.
#[derive(Debug, Clone)]
pub struct Restart {
    service: String,
}

impl Restart {
    pub fn new(service: &str) -> Result<Restart, OpError> {
        validate_unit_name(service, false)?;
        Ok(Restart {
            service: service.to_string(),
        })
    }
}

#[async_trait]
impl Operation for Restart {
    fn describe(&self) -> String {
        format!("restart {} (notified)", self.service)
    }
    async fn plan(&self, _t: &dyn Transport) -> Result<Plan, OpError> {
        Ok(Plan::single(Change {
            summary: format!("restart {}", self.service),
            diff: None,
            steps: vec![Step::Run(format!("systemctl restart {}", quote(&self.service)))],
        }))
    }
}

/// `systemctl daemon-reload`, queued by handlers after unit files changed.
#[derive(Debug, Clone, Default)]
pub struct DaemonReload;

#[async_trait]
impl Operation for DaemonReload {
    fn describe(&self) -> String {
        "systemd daemon-reload".to_string()
    }
    /// Plans from nothing on the host and writes no path: it is queued and batched with the unit
    /// writes before it (the runner never reorders queued steps).
    fn self_contained(&self) -> bool {
        true
    }
    async fn plan(&self, _t: &dyn Transport) -> Result<Plan, OpError> {
        Ok(Plan::single(Change {
            summary: "reload systemd unit files".to_string(),
            diff: None,
            steps: vec![Step::Run("systemctl daemon-reload".to_string())],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_service_probe() {
        let cases: Vec<(&str, Result<ServiceState, ()>)> = vec![
            (
                "enabled=enabled\nactive=active\n",
                Ok(ServiceState {
                    enabled: EnablementState::Enabled,
                    active: ActiveState::Active,
                }),
            ),
            (
                "enabled=\nactive=inactive\n",
                Ok(ServiceState {
                    enabled: EnablementState::NotFound,
                    active: ActiveState::Inactive,
                }),
            ),
            (
                "enabled=static\nactive=failed\n",
                Ok(ServiceState {
                    enabled: EnablementState::Static,
                    active: ActiveState::Failed,
                }),
            ),
            (
                "enabled=masked\nactive=inactive\n",
                Ok(ServiceState {
                    enabled: EnablementState::Masked,
                    active: ActiveState::Inactive,
                }),
            ),
            (
                "enabled=bad-setting\nactive=maintenance\n",
                Ok(ServiceState {
                    enabled: EnablementState::Other("bad-setting".into()),
                    active: ActiveState::Other("maintenance".into()),
                }),
            ),
            ("enabled=enabled\n", Err(())),
            ("garbage", Err(())),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_service_state(input).map_err(|_| ()), expected, "{input:?}");
        }
    }

    #[allow(clippy::type_complexity)] // data-driven case tables
    #[test]
    fn plans_services() {
        use ActiveState::*;
        use EnablementState::*;
        let cases: Vec<(
            EnablementState,
            ActiveState,
            Option<bool>,
            Option<bool>,
            Result<Vec<&str>, ()>,
        )> = vec![
            (Enabled, Active, Some(true), Some(true), Ok(vec![])),
            (
                Disabled,
                Inactive,
                Some(true),
                Some(true),
                Ok(vec!["systemctl enable app", "systemctl start app"]),
            ),
            (
                NotFound,
                Inactive,
                Some(true),
                Some(true),
                Ok(vec!["systemctl enable app", "systemctl start app"]),
            ),
            (Static, Failed, Some(true), Some(true), Ok(vec!["systemctl start app"])),
            (Enabled, Activating, Some(true), Some(true), Ok(vec![])),
            (
                Enabled,
                Active,
                Some(false),
                Some(false),
                Ok(vec!["systemctl disable app", "systemctl stop app"]),
            ),
            (Disabled, Inactive, Some(false), Some(false), Ok(vec![])),
            (Enabled, Inactive, None, Some(true), Ok(vec!["systemctl start app"])),
            (Disabled, Active, Some(true), None, Ok(vec!["systemctl enable app"])),
            (Masked, Inactive, Some(true), None, Err(())),
            (Masked, Inactive, Some(false), Some(false), Ok(vec![])),
        ];
        for (enabled, active, want_enabled, want_running, expected) in cases {
            let state = ServiceState { enabled, active };
            let got = plan_service("app", want_enabled, want_running, &state).map(|changes| {
                changes
                    .iter()
                    .flat_map(|c| c.steps.iter().map(Step::display))
                    .collect::<Vec<_>>()
            });
            let expected = expected.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(
                got.map_err(|_| ()),
                expected,
                "{state:?} {want_enabled:?} {want_running:?}"
            );
        }
    }

    #[test]
    fn unit_names() {
        assert!(SystemdUnit::new("app.service", "").is_ok());
        assert!(SystemdUnit::new("capstan-backup.timer", "").is_ok());
        assert!(SystemdUnit::new("app", "").is_err());
        assert!(SystemdUnit::new("../etc/passwd.service", "").is_err());
        assert!(SystemdUnit::new("a b.service", "").is_err());
        assert!(Service::new("app").is_ok());
        assert!(Service::new("app;reboot").is_err());
    }
}
