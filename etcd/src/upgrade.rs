//! Changing the etcd version of a running cluster: which version each member runs, whether moving
//! to `versions.etcd` is a change etcd supports in place, and the order of the rollout.
//!
//! The facts come from one script per member (the installed binary's version, and the running
//! server's and the cluster's version from the member's local metrics listener); the decision is
//! pure and tested from data. etcd's policy: patch upgrades, and minor upgrades one minor version
//! at a time; the cluster version (major.minor) moves up by itself once every member runs the new
//! minor, and etcd never moves it back down in place. Patch downgrades keep the cluster version and
//! the storage format, so they are allowed (see docs/upgrade.md for the sources).

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use capstan_provisioner::facts::ProbeSections;
use capstan_provisioner::ops::{run_checked, OpError};
use capstan_provisioner::transport::Transport;

/// Marker understood by [`ProbeSections`].
const MARK: &str = "@@capstan:";

/// An etcd release version; a cluster version has patch 0 (etcd reports it as `3.5` or `3.5.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub fn new(major: u32, minor: u32, patch: u32) -> Version {
        Version { major, minor, patch }
    }

    /// `3.5.1`, `v3.5.1` or `3.5` (a cluster version). Pre-release suffixes are not etcd releases
    /// capstan installs, so they do not parse.
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim();
        let text = text.strip_prefix('v').unwrap_or(text);
        let mut parts = text.split('.');
        let number = |part: Option<&str>| -> Option<u32> {
            let part = part?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let major = number(parts.next())?;
        let minor = number(parts.next())?;
        let patch = match parts.next() {
            None => 0,
            some => number(some)?,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version::new(major, minor, patch))
    }

    /// The minor line (`3.5`), which is what the cluster version tracks.
    pub fn line(&self) -> MinorLine {
        MinorLine(self.major, self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct MinorLine(pub u32, pub u32);

impl fmt::Display for MinorLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// What one member's version looks like, as read on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionFacts {
    /// `etcd --version` of the installed binary.
    pub installed: Option<Version>,
    /// The running server's version (metrics), when etcd runs.
    pub running: Option<Version>,
    /// The cluster version this member sees (metrics), when etcd runs.
    pub cluster: Option<MinorLine>,
}

/// One round trip: the installed binary's version and, through the plain-HTTP metrics listener on
/// 127.0.0.1 (bash's /dev/tcp, so the host needs no curl), the running and cluster versions.
pub fn facts_script(binary: &str, metrics_port: Option<u16>) -> String {
    let binary = capstan_provisioner::ops::shell::quote(binary);
    let mut script = format!("echo '{MARK}installed'; {binary} --version 2>/dev/null | head -n 1\n");
    if let Some(port) = metrics_port {
        // /dev/tcp is bash's, and the remote command runs under sh.
        let fetch = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && \
             printf 'GET /metrics HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && \
             grep -E '^etcd_(server|cluster)_version' <&3"
        );
        script.push_str(&format!(
            "echo '{MARK}metrics'; bash -c {} 2>/dev/null\n",
            capstan_provisioner::ops::shell::quote(&fetch)
        ));
    }
    script.push_str(&format!("echo '{MARK}end'\n"));
    script
}

/// The value of `label="..."` in a Prometheus text line.
fn label_value<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let start = line.find(&format!("{label}=\""))? + label.len() + 2;
    let rest = &line[start..];
    Some(&rest[..rest.find('"')?])
}

pub fn parse_facts(text: &str) -> Result<VersionFacts, String> {
    let sections = ProbeSections::parse(text)?;
    let installed = sections
        .get("installed")
        .strip_prefix("etcd Version:")
        .and_then(Version::parse);
    let metrics = sections.get("metrics");
    let mut facts = VersionFacts {
        installed,
        ..VersionFacts::default()
    };
    // Both are gauges labelled with the version; a version seen earlier stays listed at 0.
    for line in metrics.lines().filter(|l| l.trim_end().ends_with("} 1")) {
        if line.starts_with("etcd_server_version") {
            facts.running = label_value(line, "server_version").and_then(Version::parse);
        } else if line.starts_with("etcd_cluster_version") {
            facts.cluster = label_value(line, "cluster_version")
                .and_then(Version::parse)
                .map(|v| v.line());
        }
    }
    Ok(facts)
}

pub async fn probe_versions(
    t: &dyn Transport,
    binary: &str,
    metrics_port: Option<u16>,
) -> Result<VersionFacts, OpError> {
    let output = run_checked(t, &facts_script(binary, metrics_port)).await?;
    parse_facts(&output.stdout_str()).map_err(|reason| OpError::Probe {
        host: t.host().to_string(),
        what: "etcd version".into(),
        reason,
    })
}

/// A version change etcd supports in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    PatchUpgrade,
    MinorUpgrade,
    PatchDowngrade,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::PatchUpgrade => "patch upgrade",
            Change::MinorUpgrade => "minor upgrade",
            Change::PatchDowngrade => "patch downgrade",
        })
    }
}

/// Why a version change is refused. Checked before anything changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeRefusal {
    #[error("{member} runs etcd {from}; {to} is another major version, which etcd cannot change in place")]
    MajorChange { member: String, from: Version, to: Version },
    #[error(
        "{member} runs etcd {from}; {to} would be a downgrade across minor versions ({} → {}), which etcd does not support in place",
        from.line(), to.line()
    )]
    MinorDowngrade { member: String, from: Version, to: Version },
    #[error("the cluster version is {cluster}; etcd {to} is older ({}) and etcd never lowers the cluster version in place", to.line())]
    ClusterAhead { cluster: MinorLine, to: Version },
    #[error("{member} runs etcd {from}; {to} skips {skipped}, and etcd upgrades one minor version at a time")]
    SkipsMinor {
        member: String,
        from: Version,
        to: Version,
        skipped: MinorLine,
    },
    #[error(
        "etcd {to} means a rolling restart of every member, but {} not healthy",
        list_is_are(down)
    )]
    Unhealthy { down: Vec<String>, to: Version },
    #[error("cannot tell which etcd version {member} runs (its metrics listener did not answer)")]
    UnknownVersion { member: String },
    #[error("versions.etcd changes to {to} while the membership changes too ({what})")]
    WithMembershipChange { to: Version, what: String },
}

fn list_is_are(names: &[String]) -> String {
    match names {
        [one] => format!("{one} is"),
        many => format!("{} are", many.join(", ")),
    }
}

impl UpgradeRefusal {
    pub fn hint(&self) -> String {
        match self {
            UpgradeRefusal::MajorChange { .. } => {
                "a major version change is a migration, not an upgrade: build a new cluster and restore a backup into it".into()
            }
            UpgradeRefusal::MinorDowngrade { from, .. } | UpgradeRefusal::ClusterAhead { to: from, .. } => format!(
                "set versions.etcd back to a {} release; to go back to the old minor version, restore the backup taken \
                 before the upgrade (`capstan restore`, docs/restore.md and docs/upgrade.md)",
                from.line()
            ),
            UpgradeRefusal::SkipsMinor { skipped, .. } => format!(
                "upgrade to the newest {skipped} release first (apply), then to the version you want"
            ),
            UpgradeRefusal::Unhealthy { .. } => {
                "bring the members back (`capstan status`, `journalctl -u etcd` on them) and apply again; a rollout \
                 only starts on a fully healthy cluster"
                    .into()
            }
            UpgradeRefusal::UnknownVersion { member } => format!(
                "check that etcd runs on {member} and answers on http://127.0.0.1:2381/metrics there"
            ),
            UpgradeRefusal::WithMembershipChange { .. } => {
                "change the version and the etcd hosts in separate applies: keep the old version while adding or \
                 removing hosts, then change versions.etcd"
                    .into()
            }
        }
    }
}

/// How `from` → `to` is classified; `Ok(None)` when they are equal.
pub fn classify(member: &str, from: Version, to: Version) -> Result<Option<Change>, UpgradeRefusal> {
    let refusal_parts = || (member.to_string(), from, to);
    if from.major != to.major {
        let (member, from, to) = refusal_parts();
        return Err(UpgradeRefusal::MajorChange { member, from, to });
    }
    match from.minor.cmp(&to.minor) {
        Ordering::Greater => {
            let (member, from, to) = refusal_parts();
            Err(UpgradeRefusal::MinorDowngrade { member, from, to })
        }
        Ordering::Less if to.minor > from.minor + 1 => {
            let (member, from, to) = refusal_parts();
            Err(UpgradeRefusal::SkipsMinor {
                member,
                from,
                to,
                skipped: MinorLine(from.major, from.minor + 1),
            })
        }
        Ordering::Less => Ok(Some(Change::MinorUpgrade)),
        Ordering::Equal => Ok(match from.patch.cmp(&to.patch) {
            Ordering::Less => Some(Change::PatchUpgrade),
            Ordering::Greater => Some(Change::PatchDowngrade),
            Ordering::Equal => None,
        }),
    }
}

/// One current member as found before the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    pub name: String,
    pub healthy: bool,
    pub leader: bool,
    pub facts: VersionFacts,
}

/// One member's part of the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberUpgrade {
    pub name: String,
    /// The version it runs (for a member that is down: the version installed on it).
    pub from: Version,
    pub change: Change,
    /// Down before the run: a member caught mid-rollout, taken first.
    pub down: bool,
}

/// A version change of the cluster, decided before anything changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpgradePlan {
    pub target: Version,
    /// Members that change, in inventory order (the run takes them down member first, then
    /// followers, the leader last: see [`next_in_rollout`]).
    pub members: Vec<MemberUpgrade>,
    /// The leader before the run.
    pub leader: Option<String>,
    pub cluster_version: Option<MinorLine>,
}

impl UpgradePlan {
    pub fn member(&self, name: &str) -> Option<&MemberUpgrade> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The cluster version moves to the target's minor line once every member runs it.
    pub fn moves_cluster_version(&self) -> bool {
        self.cluster_version.is_some_and(|c| c < self.target.line())
            || self.members.iter().any(|m| m.change == Change::MinorUpgrade)
    }

    /// `3.5.0 → 3.5.1` (or `3.4.23, 3.5.0 → 3.5.1` when members differ).
    pub fn summary(&self) -> String {
        let froms: BTreeSet<Version> = self.members.iter().map(|m| m.from).collect();
        let froms: Vec<String> = froms.iter().map(Version::to_string).collect();
        format!("{} → {}", froms.join(", "), self.target)
    }
}

/// Decides whether the current members can move to `target`, and which of them change.
/// `Ok(None)`: nothing to change (members that are down but already have `target` installed are
/// left to the usual converge). `membership_change` describes adds/removes planned in the same run.
pub fn plan_upgrade(
    members: &[MemberState],
    target: Version,
    membership_change: Option<&str>,
) -> Result<Option<UpgradePlan>, UpgradeRefusal> {
    let down: Vec<&MemberState> = members.iter().filter(|m| !m.healthy).collect();
    let mut changes = Vec::new();
    for member in members.iter().filter(|m| m.healthy) {
        let from = member.facts.running.ok_or_else(|| UpgradeRefusal::UnknownVersion {
            member: member.name.clone(),
        })?;
        if let Some(change) = classify(&member.name, from, target)? {
            changes.push(MemberUpgrade {
                name: member.name.clone(),
                from,
                change,
                down: false,
            });
        }
    }
    // A down member whose installed binary is not the target changes version too; its running
    // version is unknown, so the installed one stands for it.
    let mut down_changes = Vec::new();
    for member in &down {
        if let Some(installed) = member.facts.installed {
            if let Some(change) = classify(&member.name, installed, target)? {
                down_changes.push(MemberUpgrade {
                    name: member.name.clone(),
                    from: installed,
                    change,
                    down: true,
                });
            }
        }
    }
    if changes.is_empty() && down_changes.is_empty() {
        return Ok(None);
    }
    let cluster_version = members.iter().filter(|m| m.healthy).find_map(|m| m.facts.cluster);
    if let Some(cluster) = cluster_version {
        if target.line() < cluster {
            return Err(UpgradeRefusal::ClusterAhead { cluster, to: target });
        }
        if target.line() > MinorLine(cluster.0, cluster.1 + 1) {
            return Err(UpgradeRefusal::SkipsMinor {
                member: "the cluster".into(),
                from: Version::new(cluster.0, cluster.1, 0),
                to: target,
                skipped: MinorLine(cluster.0, cluster.1 + 1),
            });
        }
    }
    if !down.is_empty() && !caught_mid_rollout(members, &down) {
        return Err(UpgradeRefusal::Unhealthy {
            down: down.iter().map(|m| m.name.clone()).collect(),
            to: target,
        });
    }
    if let Some(what) = membership_change {
        return Err(UpgradeRefusal::WithMembershipChange {
            to: target,
            what: what.to_string(),
        });
    }
    let mut all: Vec<MemberUpgrade> = Vec::new();
    for member in members {
        let found = changes
            .iter()
            .chain(down_changes.iter())
            .find(|c| c.name == member.name);
        if let Some(change) = found {
            all.push(change.clone());
        }
    }
    Ok(Some(UpgradePlan {
        target,
        members: all,
        leader: members.iter().find(|m| m.leader).map(|m| m.name.clone()),
        cluster_version,
    }))
}

/// One member is down, the others keep quorum, and what is installed on it is a version no
/// healthy member runs: it stopped in the middle of an earlier rollout (its new binary failed to
/// come up). Changing the version then restarts only that member first (to go on, or back).
fn caught_mid_rollout(members: &[MemberState], down: &[&MemberState]) -> bool {
    let [only] = down else { return false };
    let healthy = members.len() - 1;
    if healthy < members.len() / 2 + 1 {
        return false;
    }
    let running: BTreeSet<Version> = members.iter().filter_map(|m| m.facts.running).collect();
    only.facts.installed.is_some_and(|v| !running.contains(&v))
}

/// Which of the `remaining` members (names) to change next: a member that is down first (it costs
/// no vote), then followers, the current leader last, so a rollout causes at most one election
/// (a stopping leader hands leadership over).
pub fn next_in_rollout(remaining: &[(&str, bool)], leader: Option<&str>) -> usize {
    if let Some(i) = remaining.iter().position(|(_, down)| *down) {
        return i;
    }
    remaining
        .iter()
        .position(|(name, _)| Some(*name) != leader)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // data-driven case tables
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn versions_parse() {
        assert_eq!(Version::parse("3.5.1"), Some(Version::new(3, 5, 1)));
        assert_eq!(Version::parse("v3.4.23"), Some(Version::new(3, 4, 23)));
        assert_eq!(Version::parse("3.5"), Some(Version::new(3, 5, 0)));
        for bad in ["", "3", "3.5.1.2", "3.5.x", "3.6.0-rc.1", "-3.5.1", "3..1"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
        assert!(v("3.4.23") < v("3.5.0"));
        assert!(v("3.5.9") < v("3.5.10"));
    }

    #[test]
    fn classifies_every_path() {
        // (from, to) → Ok(change) or the refusal's message
        let cases: &[(&str, &str, Result<Option<Change>, &str>)] = &[
            ("3.5.0", "3.5.1", Ok(Some(Change::PatchUpgrade))),
            ("3.5.1", "3.5.1", Ok(None)),
            ("3.4.23", "3.5.1", Ok(Some(Change::MinorUpgrade))),
            ("3.5.1", "3.5.0", Ok(Some(Change::PatchDowngrade))),
            (
                "3.5.1",
                "3.4.23",
                Err("a runs etcd 3.5.1; 3.4.23 would be a downgrade across minor versions (3.5 → 3.4), which etcd does not support in place"),
            ),
            (
                "3.4.23",
                "3.6.0",
                Err("a runs etcd 3.4.23; 3.6.0 skips 3.5, and etcd upgrades one minor version at a time"),
            ),
            (
                "3.5.1",
                "4.0.0",
                Err("a runs etcd 3.5.1; 4.0.0 is another major version, which etcd cannot change in place"),
            ),
        ];
        for (from, to, expected) in cases {
            let got = classify("a", v(from), v(to)).map_err(|e| e.to_string());
            assert_eq!(got, (*expected).map_err(String::from), "{from} → {to}");
        }
    }

    fn member(name: &str, healthy: bool, leader: bool, installed: &str, running: &str, cluster: &str) -> MemberState {
        MemberState {
            name: name.into(),
            healthy,
            leader,
            facts: VersionFacts {
                installed: Version::parse(installed),
                running: Version::parse(running),
                cluster: Version::parse(cluster).map(|c| c.line()),
            },
        }
    }

    #[test]
    fn plans_a_patch_upgrade_of_every_member() {
        let members = [
            member("a", true, true, "3.5.0", "3.5.0", "3.5"),
            member("b", true, false, "3.5.0", "3.5.0", "3.5"),
            member("c", true, false, "3.5.0", "3.5.0", "3.5"),
        ];
        let plan = plan_upgrade(&members, v("3.5.1"), None).unwrap().unwrap();
        assert_eq!(plan.summary(), "3.5.0 → 3.5.1");
        assert_eq!(plan.leader.as_deref(), Some("a"));
        assert_eq!(plan.members.len(), 3);
        assert!(plan.members.iter().all(|m| m.change == Change::PatchUpgrade && !m.down));
        assert!(!plan.moves_cluster_version());
        assert_eq!(plan_upgrade(&members, v("3.5.0"), None), Ok(None));
    }

    #[test]
    fn resumes_a_minor_upgrade_stopped_halfway() {
        let members = [
            member("a", true, true, "3.4.23", "3.4.23", "3.4"),
            member("b", true, false, "3.5.1", "3.5.1", "3.4"),
            member("c", true, false, "3.4.23", "3.4.23", "3.4"),
        ];
        let plan = plan_upgrade(&members, v("3.5.1"), None).unwrap().unwrap();
        let names: Vec<&str> = plan.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert!(plan.moves_cluster_version());
        assert_eq!(plan.summary(), "3.4.23 → 3.5.1");
        // Going back to 3.4 from there would downgrade b across minor versions.
        let refused = plan_upgrade(&members, v("3.4.23"), None).unwrap_err();
        assert!(matches!(refused, UpgradeRefusal::MinorDowngrade { ref member, .. } if member == "b"));
    }

    #[test]
    fn refuses_before_anything_changes() {
        let healthy = |name: &str, leader: bool| member(name, true, leader, "3.5.1", "3.5.1", "3.5");
        let three = [healthy("a", true), healthy("b", false), healthy("c", false)];
        let refused = |members: &[MemberState], to: &str, change: Option<&str>| {
            plan_upgrade(members, v(to), change).unwrap_err().to_string()
        };
        assert_eq!(
            refused(&three, "3.4.23", None),
            "a runs etcd 3.5.1; 3.4.23 would be a downgrade across minor versions (3.5 → 3.4), which etcd does not support in place"
        );
        assert_eq!(
            refused(&three, "3.5.2", Some("1 to add")),
            "versions.etcd changes to 3.5.2 while the membership changes too (1 to add)"
        );
        // A member simply down (old version installed) blocks a version change...
        let one_down = [
            healthy("a", true),
            member("b", false, false, "3.5.1", "", ""),
            healthy("c", false),
        ];
        assert_eq!(
            refused(&one_down, "3.5.2", None),
            "etcd 3.5.2 means a rolling restart of every member, but b is not healthy"
        );
        // ...but not a run without a version change.
        assert_eq!(plan_upgrade(&one_down, v("3.5.1"), None), Ok(None));
        let two_down = [
            healthy("a", true),
            member("b", false, false, "3.5.2", "", ""),
            member("c", false, false, "3.5.1", "", ""),
        ];
        assert_eq!(
            refused(&two_down, "3.5.1", None),
            "etcd 3.5.1 means a rolling restart of every member, but b, c are not healthy"
        );
        let unknown = [member("a", true, true, "3.5.1", "", "")];
        assert!(refused(&unknown, "3.5.2", None).contains("cannot tell which etcd version a runs"));
        // The cluster version is the floor even where a member's own version is not.
        let ahead = [member("a", true, true, "3.5.1", "3.5.1", "3.6")];
        assert_eq!(
            refused(&ahead, "3.5.0", None),
            "the cluster version is 3.6; etcd 3.5.0 is older (3.5) and etcd never lowers the cluster version in place"
        );
    }

    #[test]
    fn a_member_caught_mid_rollout_goes_on_or_back() {
        // b got 3.5.1 and did not come back; a and c still run 3.5.0.
        let members = [
            member("a", true, true, "3.5.0", "3.5.0", "3.5"),
            member("b", false, false, "3.5.1", "", ""),
            member("c", true, false, "3.5.0", "3.5.0", "3.5"),
        ];
        let back = plan_upgrade(&members, v("3.5.0"), None).unwrap().unwrap();
        assert_eq!(
            back.members,
            [MemberUpgrade {
                name: "b".into(),
                from: v("3.5.1"),
                change: Change::PatchDowngrade,
                down: true
            }]
        );
        let on = plan_upgrade(&members, v("3.5.1"), None).unwrap().unwrap();
        let names: Vec<(&str, bool)> = on.members.iter().map(|m| (m.name.as_str(), m.down)).collect();
        assert_eq!(names, [("a", false), ("c", false)]);
    }

    #[test]
    fn rollout_order_is_down_member_then_followers_then_leader() {
        let cases: &[(&[(&str, bool)], Option<&str>, usize)] = &[
            (&[("a", false), ("b", false), ("c", false)], Some("a"), 1),
            (&[("a", false), ("b", false), ("c", false)], Some("c"), 0),
            (&[("a", false)], Some("a"), 0),
            (&[("a", false), ("b", true)], Some("b"), 1),
            (&[("a", false), ("b", false)], None, 0),
        ];
        for (remaining, leader, expected) in cases {
            assert_eq!(
                next_in_rollout(remaining, *leader),
                *expected,
                "{remaining:?} {leader:?}"
            );
        }
    }

    #[test]
    fn parses_version_facts() {
        let out = "@@capstan:installed\netcd Version: 3.5.1\n@@capstan:metrics\n\
                   etcd_cluster_version{cluster_version=\"3.4\"} 1\n\
                   etcd_cluster_version{cluster_version=\"3.5\"} 0\n\
                   etcd_server_version{server_version=\"3.5.1\"} 1\n@@capstan:end\n";
        assert_eq!(
            parse_facts(out).unwrap(),
            VersionFacts {
                installed: Some(v("3.5.1")),
                running: Some(v("3.5.1")),
                cluster: Some(MinorLine(3, 4)),
            }
        );
        let stopped = "@@capstan:installed\netcd Version: 3.4.23\n@@capstan:metrics\n@@capstan:end\n";
        assert_eq!(
            parse_facts(stopped).unwrap(),
            VersionFacts {
                installed: Some(v("3.4.23")),
                ..VersionFacts::default()
            }
        );
        assert!(parse_facts("@@capstan:installed\n").is_err());
        assert!(facts_script("/usr/local/bin/etcd", Some(2381)).contains("bash -c 'exec 3<>/dev/tcp/127.0.0.1/2381"));
    }
}
