//! Kubernetes' version-skew policy, as a pure calculator: whether a set of running versions is
//! inside the policy, and whether an upgrade to a target version stays inside it at every step of
//! capstan's rollout order (API servers one at a time, then controller-managers and schedulers,
//! then nodes).
//!
//! The policy (kubernetes.io, "Version Skew Policy"):
//! - API servers of one cluster are within one minor version of each other;
//! - kube-controller-manager and kube-scheduler are never newer than the oldest API server and at
//!   most one minor older than the newest;
//! - kubelet and kube-proxy are never newer than the oldest API server and at most three minors
//!   older than the newest;
//! - an upgrade moves one minor version at a time (patch changes are free).
//!
//! Every refusal names the component, host and versions involved and what to do instead.

use std::fmt;

use serde::Serialize;

/// A Kubernetes release version (`1.31.2`, `v1.31.2`; `1.31` means `1.31.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KubeVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> KubeVersion {
        KubeVersion { major, minor, patch }
    }

    /// Parses `1.31.2`, `v1.31.2` or `1.31`. A build suffix (`v1.31.2+k3s1`, `-rc.0`) does not
    /// parse: capstan installs only official releases.
    pub fn parse(text: &str) -> Option<KubeVersion> {
        let text = text.trim();
        let text = text.strip_prefix('v').unwrap_or(text);
        let number = |part: &str| -> Option<u32> {
            (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse().ok())
                .flatten()
        };
        let parts: Vec<&str> = text.split('.').collect();
        match parts.as_slice() {
            [major, minor] => Some(KubeVersion::new(number(major)?, number(minor)?, 0)),
            [major, minor, patch] => Some(KubeVersion::new(number(major)?, number(minor)?, number(patch)?)),
            _ => None,
        }
    }

    /// `1.31`.
    pub fn minor_line(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }

    /// Minor versions from `other` up to `self` (negative when `self` is older); `None` across a
    /// major version.
    fn minors_after(&self, other: &KubeVersion) -> Option<i64> {
        (self.major == other.major).then(|| i64::from(self.minor) - i64::from(other.minor))
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The Kubernetes components the policy speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubeComponent {
    ApiServer,
    ControllerManager,
    Scheduler,
    Kubelet,
    KubeProxy,
}

impl KubeComponent {
    pub const ALL: [KubeComponent; 5] = [
        KubeComponent::ApiServer,
        KubeComponent::ControllerManager,
        KubeComponent::Scheduler,
        KubeComponent::Kubelet,
        KubeComponent::KubeProxy,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            KubeComponent::ApiServer => "kube-apiserver",
            KubeComponent::ControllerManager => "kube-controller-manager",
            KubeComponent::Scheduler => "kube-scheduler",
            KubeComponent::Kubelet => "kubelet",
            KubeComponent::KubeProxy => "kube-proxy",
        }
    }

    /// How many minors older than the newest API server this component may be.
    fn max_minors_behind(&self) -> i64 {
        match self {
            KubeComponent::ApiServer => 1,
            KubeComponent::ControllerManager | KubeComponent::Scheduler => 1,
            KubeComponent::Kubelet | KubeComponent::KubeProxy => 3,
        }
    }
}

impl fmt::Display for KubeComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One running (or installed) Kubernetes component on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Running {
    pub host: String,
    pub component: KubeComponent,
    pub version: KubeVersion,
}

impl Running {
    pub fn new(host: &str, component: KubeComponent, version: KubeVersion) -> Running {
        Running {
            host: host.to_string(),
            component,
            version,
        }
    }

    fn describe(&self) -> String {
        format!("{} {} on {}", self.component, self.version, self.host)
    }
}

/// A way a set of versions breaks the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Violation {
    /// Two API servers more than one minor apart.
    ApiServersApart { oldest: Running, newest: Running },
    /// A component newer than the oldest API server.
    NewerThanApiServer { component: Running, api_server: Running },
    /// A component further behind the newest API server than the policy allows.
    TooFarBehind {
        component: Running,
        api_server: Running,
        allowed: i64,
    },
    /// A different major version than the API servers.
    OtherMajor { component: Running, api_server: Running },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::ApiServersApart { oldest, newest } => write!(
                f,
                "API servers must be within one minor version of each other, but {} and {} are {} apart",
                oldest.describe(),
                newest.describe(),
                plural_minors(newest.version.minors_after(&oldest.version).unwrap_or(0))
            ),
            Violation::NewerThanApiServer { component, api_server } => write!(
                f,
                "{} is newer than the oldest API server ({}); {} must never be newer than kube-apiserver",
                component.describe(),
                api_server.describe(),
                component.component
            ),
            Violation::TooFarBehind {
                component,
                api_server,
                allowed,
            } => write!(
                f,
                "{} is {} behind the newest API server ({}); {} may be at most {} older",
                component.describe(),
                plural_minors(api_server.version.minors_after(&component.version).unwrap_or(0)),
                api_server.describe(),
                component.component,
                plural_minors(*allowed)
            ),
            Violation::OtherMajor { component, api_server } => write!(
                f,
                "{} and {} differ in major version",
                component.describe(),
                api_server.describe()
            ),
        }
    }
}

fn plural_minors(n: i64) -> String {
    if n == 1 {
        "1 minor version".into()
    } else {
        format!("{n} minor versions")
    }
}

/// Every way `running` breaks the policy (empty: inside it); of equal versions, the first listed
/// is named. Without an API server there is
/// nothing to compare against, so nothing is reported.
pub fn violations(running: &[Running]) -> Vec<Violation> {
    let api: Vec<&Running> = running
        .iter()
        .filter(|r| r.component == KubeComponent::ApiServer)
        .collect();
    let (Some(oldest), Some(newest)) = (
        api.iter().min_by_key(|r| r.version).copied(),
        api.iter().rev().max_by_key(|r| r.version).copied(),
    ) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    match newest.version.minors_after(&oldest.version) {
        None => found.push(Violation::OtherMajor {
            component: newest.clone(),
            api_server: oldest.clone(),
        }),
        Some(apart) if apart > 1 => found.push(Violation::ApiServersApart {
            oldest: oldest.clone(),
            newest: newest.clone(),
        }),
        Some(_) => {}
    }
    for r in running.iter().filter(|r| r.component != KubeComponent::ApiServer) {
        let (Some(ahead), Some(behind)) = (
            r.version.minors_after(&oldest.version),
            newest.version.minors_after(&r.version),
        ) else {
            found.push(Violation::OtherMajor {
                component: r.clone(),
                api_server: oldest.clone(),
            });
            continue;
        };
        // Patch versions count too: a 1.31.3 kubelet against a 1.31.2 API server is newer.
        if ahead > 0 || (ahead == 0 && r.version > oldest.version) {
            found.push(Violation::NewerThanApiServer {
                component: r.clone(),
                api_server: oldest.clone(),
            });
        } else if behind > r.component.max_minors_behind() {
            found.push(Violation::TooFarBehind {
                component: r.clone(),
                api_server: newest.clone(),
                allowed: r.component.max_minors_behind(),
            });
        }
    }
    found
}

/// Why an upgrade plan is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Refusal {
    /// The target does not parse as a Kubernetes release.
    InvalidTarget { text: String },
    /// The cluster is already outside the policy; fix that first.
    AlreadyOutOfPolicy { violations: Vec<Violation> },
    /// A major version change.
    MajorChange { from: KubeVersion, to: KubeVersion },
    /// More than one minor above the newest API server.
    SkipsMinor { newest_api: Running, target: KubeVersion },
    /// A minor downgrade of some component.
    MinorDowngrade { component: Running, target: KubeVersion },
    /// A step of the rollout would leave the cluster outside the policy.
    StepOutOfPolicy { step: String, violation: Violation },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::InvalidTarget { text } => {
                write!(
                    f,
                    "`{text}` is not a Kubernetes release version (expected MAJOR.MINOR.PATCH, e.g. 1.31.2)"
                )
            }
            Refusal::AlreadyOutOfPolicy { violations } => {
                write!(f, "the cluster is already outside the version-skew policy: ")?;
                let parts: Vec<String> = violations.iter().map(ToString::to_string).collect();
                f.write_str(&parts.join("; "))
            }
            Refusal::MajorChange { from, to } => {
                write!(
                    f,
                    "{from} -> {to} changes the major version, which Kubernetes does not support in place"
                )
            }
            Refusal::SkipsMinor { newest_api, target } => write!(
                f,
                "{} -> {target} skips {}: Kubernetes upgrades one minor version at a time; upgrade to the newest \
                 {}.x first",
                newest_api.describe(),
                skipped(&newest_api.version, target),
                KubeVersion::new(newest_api.version.major, newest_api.version.minor + 1, 0).minor_line()
            ),
            Refusal::MinorDowngrade { component, target } => write!(
                f,
                "{} -> {target} is a minor-version downgrade, which Kubernetes does not support in place (its \
                 storage and APIs may have moved on); restore the backup taken before the upgrade instead",
                component.describe()
            ),
            Refusal::StepOutOfPolicy { step, violation } => {
                write!(
                    f,
                    "{step} would leave the cluster outside the version-skew policy: {violation}"
                )
            }
        }
    }
}

fn skipped(from: &KubeVersion, to: &KubeVersion) -> String {
    let lines: Vec<String> = (from.minor + 1..to.minor)
        .map(|m| KubeVersion::new(from.major, m, 0).minor_line())
        .collect();
    lines.join(", ")
}

impl Refusal {
    /// What the operator can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            Refusal::InvalidTarget { .. } => Some("set versions.kubernetes to a release such as 1.31.2".into()),
            Refusal::AlreadyOutOfPolicy { .. } => Some(
                "bring the listed components back inside the policy (upgrade the lagging ones to the API servers' \
                 minor version) before changing versions.kubernetes"
                    .into(),
            ),
            Refusal::SkipsMinor { .. } => {
                Some("set versions.kubernetes to the next minor release, apply, then move on".into())
            }
            Refusal::StepOutOfPolicy { .. } => Some(
                "upgrade the lagging components to a version within the policy first (one minor at a time), then \
                 retry"
                    .into(),
            ),
            Refusal::MajorChange { .. } | Refusal::MinorDowngrade { .. } => None,
        }
    }
}

/// One step of the rollout, in order, with the component instances it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedStep {
    pub host: String,
    pub component: KubeComponent,
    pub from: KubeVersion,
    pub to: KubeVersion,
}

/// The upgrade of `running` to `target`, step by step in capstan's order, each intermediate state
/// checked against the policy. Components already at `target` have no step. Empty: nothing to do.
pub fn plan_upgrade(running: &[Running], target: &str) -> Result<Vec<PlannedStep>, Refusal> {
    let target = KubeVersion::parse(target).ok_or_else(|| Refusal::InvalidTarget {
        text: target.to_string(),
    })?;
    let before = violations(running);
    if !before.is_empty() {
        return Err(Refusal::AlreadyOutOfPolicy { violations: before });
    }
    for r in running {
        if r.version.major != target.major {
            return Err(Refusal::MajorChange {
                from: r.version,
                to: target,
            });
        }
        if target.minor < r.version.minor {
            return Err(Refusal::MinorDowngrade {
                component: r.clone(),
                target,
            });
        }
    }
    if let Some(newest) = running
        .iter()
        .filter(|r| r.component == KubeComponent::ApiServer)
        .rev()
        .max_by_key(|r| r.version)
    {
        if target.minor > newest.version.minor + 1 {
            return Err(Refusal::SkipsMinor {
                newest_api: newest.clone(),
                target,
            });
        }
    }
    // capstan's order: API servers one at a time, controller-managers, schedulers, then nodes.
    let order = |c: KubeComponent| match c {
        KubeComponent::ApiServer => 0,
        KubeComponent::ControllerManager => 1,
        KubeComponent::Scheduler => 2,
        KubeComponent::Kubelet | KubeComponent::KubeProxy => 3,
    };
    let mut todo: Vec<usize> = (0..running.len()).filter(|&i| running[i].version != target).collect();
    todo.sort_by_key(|&i| {
        (
            order(running[i].component),
            running[i].host.clone(),
            running[i].component,
        )
    });
    let mut state = running.to_vec();
    let mut steps = Vec::new();
    for i in todo {
        state[i].version = target;
        let step = format!(
            "upgrading {} on {} from {} to {target}",
            running[i].component, running[i].host, running[i].version
        );
        if let Some(violation) = violations(&state).into_iter().next() {
            return Err(Refusal::StepOutOfPolicy { step, violation });
        }
        steps.push(PlannedStep {
            host: running[i].host.clone(),
            component: running[i].component,
            from: running[i].version,
            to: target,
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> KubeVersion {
        KubeVersion::parse(text).unwrap()
    }

    /// `"cp1 kube-apiserver 1.30.2, n1 kubelet 1.29.0"`.
    fn cluster(spec: &str) -> Vec<Running> {
        spec.split(',')
            .map(|part| {
                let words: Vec<&str> = part.split_whitespace().collect();
                let component = KubeComponent::ALL.into_iter().find(|c| c.name() == words[1]).unwrap();
                Running::new(words[0], component, v(words[2]))
            })
            .collect()
    }

    #[test]
    fn versions_parse() {
        assert_eq!(KubeVersion::parse("1.31.2"), Some(KubeVersion::new(1, 31, 2)));
        assert_eq!(KubeVersion::parse("v1.31.2"), Some(KubeVersion::new(1, 31, 2)));
        assert_eq!(KubeVersion::parse("1.31"), Some(KubeVersion::new(1, 31, 0)));
        for bad in ["", "1", "1.31.2.1", "v1.31.2+k3s1", "1.31.0-rc.0", "1..2", "a.b.c"] {
            assert_eq!(KubeVersion::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn policy_table() {
        let cases: &[(&str, &[&str])] = &[
            (
                "cp1 kube-apiserver 1.30.2, cp2 kube-apiserver 1.30.2, n1 kubelet 1.30.2",
                &[],
            ),
            // HA API servers one minor apart: allowed.
            ("cp1 kube-apiserver 1.31.0, cp2 kube-apiserver 1.30.2", &[]),
            (
                "cp1 kube-apiserver 1.32.0, cp2 kube-apiserver 1.30.2",
                &[
                    "API servers must be within one minor version of each other, but kube-apiserver 1.30.2 on cp2 and \
                   kube-apiserver 1.32.0 on cp1 are 2 minor versions apart",
                ],
            ),
            // The controller-manager must not be newer than the oldest API server.
            (
                "cp1 kube-apiserver 1.31.0, cp2 kube-apiserver 1.30.2, cp1 kube-controller-manager 1.31.0",
                &[
                    "kube-controller-manager 1.31.0 on cp1 is newer than the oldest API server (kube-apiserver 1.30.2 \
                   on cp2); kube-controller-manager must never be newer than kube-apiserver",
                ],
            ),
            // ...and at most one minor older than the newest.
            ("cp1 kube-apiserver 1.31.0, cp1 kube-scheduler 1.30.9", &[]),
            (
                "cp1 kube-apiserver 1.31.0, cp1 kube-scheduler 1.29.9",
                &[
                    "kube-scheduler 1.29.9 on cp1 is 2 minor versions behind the newest API server (kube-apiserver \
                   1.31.0 on cp1); kube-scheduler may be at most 1 minor version older",
                ],
            ),
            // kubelet: three minors behind is fine, four is not.
            (
                "cp1 kube-apiserver 1.31.0, n1 kubelet 1.28.0, n1 kube-proxy 1.28.0",
                &[],
            ),
            (
                "cp1 kube-apiserver 1.31.0, n1 kubelet 1.27.15",
                &[
                    "kubelet 1.27.15 on n1 is 4 minor versions behind the newest API server (kube-apiserver 1.31.0 on \
                   cp1); kubelet may be at most 3 minor versions older",
                ],
            ),
            // With HA API servers apart, kubelets count from the newest and must not pass the oldest.
            (
                "cp1 kube-apiserver 1.31.0, cp2 kube-apiserver 1.30.0, n1 kubelet 1.27.0, n2 kubelet 1.31.0",
                &[
                    "kubelet 1.27.0 on n1 is 4 minor versions behind the newest API server (kube-apiserver 1.31.0 on \
                     cp1); kubelet may be at most 3 minor versions older",
                    "kubelet 1.31.0 on n2 is newer than the oldest API server (kube-apiserver 1.30.0 on cp2); kubelet \
                     must never be newer than kube-apiserver",
                ],
            ),
            // A newer patch is newer.
            (
                "cp1 kube-apiserver 1.31.2, n1 kubelet 1.31.3",
                &[
                    "kubelet 1.31.3 on n1 is newer than the oldest API server (kube-apiserver 1.31.2 on cp1); kubelet \
                   must never be newer than kube-apiserver",
                ],
            ),
            (
                "cp1 kube-apiserver 1.31.2, n1 kube-proxy 2.0.0",
                &["kube-proxy 2.0.0 on n1 and kube-apiserver 1.31.2 on cp1 differ in major version"],
            ),
            // Nothing to compare against without an API server.
            ("n1 kubelet 1.20.0, n2 kubelet 1.31.0", &[]),
        ];
        for (spec, expected) in cases {
            let found: Vec<String> = violations(&cluster(spec)).iter().map(ToString::to_string).collect();
            let expected: Vec<String> = expected
                .iter()
                .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            assert_eq!(found, expected, "{spec}");
        }
    }

    fn steps(plan: &[PlannedStep]) -> Vec<String> {
        plan.iter()
            .map(|s| format!("{} {} {}->{}", s.host, s.component, s.from, s.to))
            .collect()
    }

    const HA_130: &str = "cp1 kube-apiserver 1.30.4, cp2 kube-apiserver 1.30.4, cp1 kube-controller-manager 1.30.4, \
                          cp2 kube-controller-manager 1.30.4, cp1 kube-scheduler 1.30.4, cp2 kube-scheduler 1.30.4, \
                          n1 kubelet 1.30.4, n1 kube-proxy 1.30.4, n2 kubelet 1.29.8, n2 kube-proxy 1.29.8";

    #[test]
    fn an_allowed_upgrade_orders_api_servers_then_control_plane_then_nodes() {
        let plan = plan_upgrade(&cluster(HA_130), "1.31.1").unwrap();
        assert_eq!(
            steps(&plan),
            [
                "cp1 kube-apiserver 1.30.4->1.31.1",
                "cp2 kube-apiserver 1.30.4->1.31.1",
                "cp1 kube-controller-manager 1.30.4->1.31.1",
                "cp2 kube-controller-manager 1.30.4->1.31.1",
                "cp1 kube-scheduler 1.30.4->1.31.1",
                "cp2 kube-scheduler 1.30.4->1.31.1",
                "n1 kubelet 1.30.4->1.31.1",
                "n1 kube-proxy 1.30.4->1.31.1",
                "n2 kubelet 1.29.8->1.31.1",
                "n2 kube-proxy 1.29.8->1.31.1",
            ]
        );
        // A patch upgrade is a plan too; components already at the target have no step.
        let plan = plan_upgrade(&cluster("cp1 kube-apiserver 1.31.1, n1 kubelet 1.31.0"), "v1.31.1").unwrap();
        assert_eq!(steps(&plan), ["n1 kubelet 1.31.0->1.31.1"]);
        assert!(plan_upgrade(&cluster("cp1 kube-apiserver 1.31.1"), "1.31.1")
            .unwrap()
            .is_empty());
        // A half-done upgrade (one API server moved) continues.
        let plan = plan_upgrade(
            &cluster("cp1 kube-apiserver 1.31.1, cp2 kube-apiserver 1.30.4"),
            "1.31.1",
        )
        .unwrap();
        assert_eq!(steps(&plan), ["cp2 kube-apiserver 1.30.4->1.31.1"]);
    }

    #[test]
    fn refusals_explain_themselves() {
        let cases: &[(&str, &str, &str)] = &[
            (
                HA_130,
                "1.32.0",
                "kube-apiserver 1.30.4 on cp1 -> 1.32.0 skips 1.31: Kubernetes upgrades one minor \
              version at a time; upgrade to the newest 1.31.x first",
            ),
            (
                HA_130,
                "1.29.9",
                "kube-apiserver 1.30.4 on cp1 -> 1.29.9 is a minor-version downgrade",
            ),
            (HA_130, "2.0.0", "1.30.4 -> 2.0.0 changes the major version"),
            (HA_130, "latest", "`latest` is not a Kubernetes release version"),
            // A kubelet three minors behind blocks the API servers' next minor.
            (
                "cp1 kube-apiserver 1.30.4, n1 kubelet 1.27.3",
                "1.31.0",
                "upgrading kube-apiserver on cp1 from 1.30.4 to 1.31.0 would leave the cluster outside the \
                 version-skew policy: kubelet 1.27.3 on n1 is 4 minor versions behind the newest API server \
                 (kube-apiserver 1.31.0 on cp1); kubelet may be at most 3 minor versions older",
            ),
            // A scheduler one minor behind blocks it too.
            (
                "cp1 kube-apiserver 1.30.4, cp1 kube-scheduler 1.29.1",
                "1.31.0",
                "upgrading kube-apiserver on cp1 from 1.30.4 to 1.31.0 would leave the cluster outside the \
                 version-skew policy: kube-scheduler 1.29.1 on cp1 is 2 minor versions behind",
            ),
            (
                "cp1 kube-apiserver 1.30.4, cp2 kube-apiserver 1.28.0",
                "1.30.4",
                "the cluster is already outside the version-skew policy: API servers must be within one minor \
                 version of each other, but kube-apiserver 1.28.0 on cp2 and kube-apiserver 1.30.4 on cp1 are 2 \
                 minor versions apart",
            ),
        ];
        for (spec, target, expected) in cases {
            let refusal = plan_upgrade(&cluster(spec), target).unwrap_err();
            let expected = expected.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                refusal.to_string().starts_with(&expected),
                "{spec} -> {target}:\n got: {refusal}\nwant: {expected}"
            );
        }
        let refusal = plan_upgrade(&cluster(HA_130), "1.32.0").unwrap_err();
        assert!(refusal.hint().unwrap().contains("next minor"));
    }
}
