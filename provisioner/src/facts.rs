//! Facts: what a host is like, read with a command and a pure parser, cached
//! per host for the run (pyinfra style).
//!
//! [`HostFacts`] are gathered with one shell script printing `@@capstan:<name>`
//! delimited sections, so the whole set costs a single round trip.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::transport::{ExecOptions, ExecOutput, Transport, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum FactError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{host}: fact {fact}: {reason}")]
    Parse { host: String, fact: String, reason: String },
}

/// Local wall-clock times around the fact command (for clock offset).
#[derive(Debug, Clone, Copy)]
pub struct ExecTiming {
    pub started: SystemTime,
    pub finished: SystemTime,
}

/// A fact: a command and a parser of its output.
pub trait Fact: Send + Sync {
    type Output: Clone + Send + Sync + 'static;
    /// Cache key; must include any arguments (e.g. a path).
    fn key(&self) -> String;
    fn command(&self) -> String;
    /// Whether the command needs root.
    fn privileged(&self) -> bool {
        false
    }
    fn parse(&self, output: &ExecOutput, timing: ExecTiming) -> Result<Self::Output, String>;
}

/// Facts already read in this run, by host and fact key.
#[derive(Default)]
pub struct FactCache {
    entries: Mutex<HashMap<(String, String), Arc<dyn Any + Send + Sync>>>,
}

impl FactCache {
    pub fn new() -> FactCache {
        FactCache::default()
    }

    /// The cached value, or runs the fact's command on `t` and caches it.
    pub async fn get<F: Fact>(&self, t: &dyn Transport, fact: &F) -> Result<F::Output, FactError> {
        let key = (t.host().to_string(), fact.key());
        if let Some(cached) = self.lookup(&key) {
            if let Some(value) = cached.downcast_ref::<F::Output>() {
                return Ok(value.clone());
            }
        }
        let value = read_fact(t, fact).await?;
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(key, Arc::new(value.clone()));
        }
        Ok(value)
    }

    /// The cached value of `fact` on `host`, without running anything.
    pub fn cached<F: Fact>(&self, host: &str, fact: &F) -> Option<F::Output> {
        let cached = self.lookup(&(host.to_string(), fact.key()))?;
        cached.downcast_ref::<F::Output>().cloned()
    }

    /// Records a value read elsewhere (e.g. by a batched probe, see [`crate::ops::probe_batch`]).
    pub fn insert<F: Fact>(&self, host: &str, fact: &F, value: F::Output) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert((host.to_string(), fact.key()), Arc::new(value));
        }
    }

    /// Forgets everything known about `host` (after changing it).
    pub fn invalidate_host(&self, host: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|(h, _), _| h != host);
        }
    }

    fn lookup(&self, key: &(String, String)) -> Option<Arc<dyn Any + Send + Sync>> {
        self.entries.lock().ok()?.get(key).cloned()
    }
}

/// Runs a fact without caching.
pub async fn read_fact<F: Fact>(t: &dyn Transport, fact: &F) -> Result<F::Output, FactError> {
    let opts = ExecOptions {
        timeout: Duration::from_secs(60),
        privileged: fact.privileged(),
    };
    let started = SystemTime::now();
    let output = t.exec(&fact.command(), &opts).await?;
    let finished = SystemTime::now();
    fact.parse(&output, ExecTiming { started, finished })
        .map_err(|reason| FactError::Parse {
            host: t.host().to_string(),
            fact: fact.key(),
            reason,
        })
}

/// The raw result of one read-only command: what an operation's probe (see
/// [`crate::ops::Operation::probes`]) reads before the operation's pure parser sees it.
/// Run privileged, like the probes operations run through [`crate::ops::run_checked`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommandFact {
    command: String,
}

impl CommandFact {
    pub fn new(command: impl Into<String>) -> CommandFact {
        CommandFact {
            command: command.into(),
        }
    }
    pub fn command_str(&self) -> &str {
        &self.command
    }
}

impl Fact for CommandFact {
    type Output = ExecOutput;

    fn key(&self) -> String {
        format!("command {}", self.command)
    }

    fn command(&self) -> String {
        self.command.clone()
    }

    fn privileged(&self) -> bool {
        true
    }

    fn parse(&self, output: &ExecOutput, _timing: ExecTiming) -> Result<ExecOutput, String> {
        Ok(output.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostFacts {
    /// `ID` from os-release, e.g. `debian`, `ubuntu`.
    pub os_id: String,
    pub os_version_id: String,
    pub os_pretty: String,
    /// `amd64`, `arm64`, or the raw `uname -m` for anything else.
    pub arch: String,
    pub kernel: String,
    /// Name of PID 1 (`systemd` on supported hosts).
    pub init: String,
    /// `systemctl is-system-running` (running, degraded, starting, ...), if systemctl exists.
    pub systemd_state: Option<String>,
    pub hostname: String,
    /// Global-scope addresses (no loopback, no link-local).
    pub addresses: Vec<IpAddr>,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Free bytes by path (`/`, `/var/lib`), for paths that exist.
    pub free_disk_bytes: BTreeMap<String, u64>,
    /// Remote clock minus local clock, in seconds; the error is at most half the round trip.
    pub time_offset_secs: f64,
}

/// Paths whose free space is reported.
pub const DISK_PATHS: [&str; 2] = ["/", "/var/lib"];

/// The [`HostFacts`] fact.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostFactsFact;

impl Fact for HostFactsFact {
    type Output = HostFacts;

    fn key(&self) -> String {
        "host".into()
    }

    fn command(&self) -> String {
        host_facts_script()
    }

    fn parse(&self, output: &ExecOutput, timing: ExecTiming) -> Result<HostFacts, String> {
        if !output.success() {
            return Err(format!(
                "script failed ({:?}): {}",
                output.exit_code,
                output.stderr_str().trim()
            ));
        }
        parse_host_facts(&output.stdout_str(), timing)
    }
}

/// Gathers [`HostFacts`] through the cache.
pub async fn gather_host_facts(t: &dyn Transport, cache: &FactCache) -> Result<HostFacts, FactError> {
    cache.get(t, &HostFactsFact).await
}

const MARK: &str = "@@capstan:";

/// POSIX sh; every probe tolerates absence so one missing tool does not hide the rest.
pub fn host_facts_script() -> String {
    let mut script = String::new();
    let mut section = |name: &str, body: &str| {
        script.push_str(&format!("echo '{MARK}{name}'; {body}\n"));
    };
    section("time", "date +%s.%N");
    section(
        "os-release",
        "cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null",
    );
    section("arch", "uname -m");
    section("kernel", "uname -r");
    section("init", "cat /proc/1/comm 2>/dev/null");
    section(
        "systemd-state",
        "command -v systemctl >/dev/null 2>&1 && systemctl is-system-running 2>/dev/null",
    );
    section("hostname", "hostname 2>/dev/null || cat /proc/sys/kernel/hostname");
    section("addresses", "ip -o addr show 2>/dev/null");
    section("cpus", "nproc 2>/dev/null || getconf _NPROCESSORS_ONLN");
    section("meminfo", "grep '^MemTotal:' /proc/meminfo");
    for path in DISK_PATHS {
        section(&format!("df {path}"), &format!("df -Pk {path} 2>/dev/null"));
    }
    section("end", "true");
    script
}

/// Splits script output into sections by marker line.
pub fn split_sections(text: &str) -> BTreeMap<String, String> {
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix(MARK) {
            if let Some((name, body)) = current.take() {
                sections.insert(name, body);
            }
            current = Some((name.trim().to_string(), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some((name, body)) = current {
        sections.insert(name, body);
    }
    sections
}

/// A probe script's output split into its sections ([`split_sections`]), refused when the `end`
/// section is missing (the output was cut short). Every component's probe parser reads through it.
#[derive(Debug, Clone)]
pub struct ProbeSections(BTreeMap<String, String>);

impl ProbeSections {
    pub fn parse(text: &str) -> Result<ProbeSections, String> {
        let sections = split_sections(text);
        if !sections.contains_key("end") {
            return Err("output is truncated (no end marker)".into());
        }
        Ok(ProbeSections(sections))
    }

    /// A section's text without surrounding blanks; empty when the section is missing.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map(|s| s.trim()).unwrap_or("")
    }

    /// A section's text as printed (line ends kept); empty when the section is missing.
    pub fn raw(&self, name: &str) -> &str {
        self.0.get(name).map(String::as_str).unwrap_or("")
    }

    /// The section says `yes`.
    pub fn yes(&self, name: &str) -> bool {
        self.get(name) == "yes"
    }

    /// A section holding a file's content in base64: `None` when empty, an error when it is not
    /// base64 of UTF-8 text.
    pub fn base64_text(&self, name: &str) -> Result<Option<String>, String> {
        let encoded = self.get(name);
        if encoded.is_empty() {
            return Ok(None);
        }
        let bytes = data_encoding::BASE64
            .decode(encoded.as_bytes())
            .map_err(|e| format!("{name}: invalid base64: {e}"))?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("{name}: not UTF-8 text"))
    }
}

pub fn parse_host_facts(text: &str, timing: ExecTiming) -> Result<HostFacts, String> {
    let sections = ProbeSections::parse(text)?;
    let section = |name: &str| sections.get(name);
    let os = parse_os_release(section("os-release"));
    let arch = section("arch");
    if arch.is_empty() {
        return Err("uname -m printed nothing".into());
    }
    let cpus = section("cpus")
        .parse::<u32>()
        .map_err(|_| format!("bad cpu count {:?}", section("cpus")))?;
    let memory_bytes = parse_meminfo_total(section("meminfo"))?;
    let mut free_disk_bytes = BTreeMap::new();
    for path in DISK_PATHS {
        if let Some(free) = parse_df_available(section(&format!("df {path}"))) {
            free_disk_bytes.insert(path.to_string(), free);
        }
    }
    let remote_time = parse_epoch(section("time")).ok_or_else(|| format!("bad date output {:?}", section("time")))?;
    let systemd_state = Some(section("systemd-state"))
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Ok(HostFacts {
        os_id: os.get("ID").cloned().unwrap_or_default(),
        os_version_id: os.get("VERSION_ID").cloned().unwrap_or_default(),
        os_pretty: os.get("PRETTY_NAME").cloned().unwrap_or_default(),
        arch: normalize_arch(arch),
        kernel: section("kernel").to_string(),
        init: section("init").to_string(),
        systemd_state,
        hostname: section("hostname").to_string(),
        addresses: parse_global_addresses(section("addresses")),
        cpus,
        memory_bytes,
        free_disk_bytes,
        time_offset_secs: clock_offset(remote_time, timing),
    })
}

/// `KEY=value` lines, with shell-style quotes removed.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.trim().split_once('=')?;
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            Some((key.to_string(), unquoted.replace("\\\"", "\"")))
        })
        .collect()
}

/// Debian/Go names for `uname -m` output.
pub fn normalize_arch(machine: &str) -> String {
    match machine.trim() {
        "x86_64" | "amd64" => "amd64".into(),
        "aarch64" | "arm64" | "armv8l" => "arm64".into(),
        other => other.to_string(),
    }
}

/// Global-scope addresses from `ip -o addr show`.
pub fn parse_global_addresses(text: &str) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let Some(family_at) = tokens.iter().position(|t| *t == "inet" || *t == "inet6") else {
            continue;
        };
        let global = tokens.windows(2).any(|w| w[0] == "scope" && w[1] == "global");
        let Some(cidr) = tokens.get(family_at + 1) else {
            continue;
        };
        let address = cidr.split('/').next().unwrap_or(cidr);
        if let (true, Ok(ip)) = (global, address.parse::<IpAddr>()) {
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    addresses
}

pub fn parse_meminfo_total(text: &str) -> Result<u64, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .ok_or("no MemTotal line")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("bad MemTotal line {line:?}"))?;
    Ok(kib * 1024)
}

/// Available bytes from `df -Pk <path>`; `None` when df failed (path missing).
pub fn parse_df_available(text: &str) -> Option<u64> {
    let line = text.lines().nth(1)?;
    // Parse from the capacity column (`NN%`) leftwards: the filesystem name may contain spaces.
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let capacity_at = tokens
        .iter()
        .position(|t| t.ends_with('%') && t[..t.len() - 1].parse::<u8>().is_ok())?;
    let kib = tokens.get(capacity_at.checked_sub(1)?)?.parse::<u64>().ok()?;
    Some(kib * 1024)
}

/// Seconds since the epoch from `date +%s.%N` (busybox prints `%N` literally).
pub fn parse_epoch(text: &str) -> Option<f64> {
    let text = text.trim();
    let (secs, fraction) = text.split_once('.').unwrap_or((text, ""));
    let secs = secs.parse::<i64>().ok()?;
    let fraction = if !fraction.is_empty() && fraction.bytes().all(|b| b.is_ascii_digit()) {
        format!("0.{fraction}").parse::<f64>().unwrap_or(0.0)
    } else {
        0.0
    };
    Some(secs as f64 + fraction)
}

/// Remote time minus the local midpoint of the exchange.
pub fn clock_offset(remote_epoch: f64, timing: ExecTiming) -> f64 {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let midpoint = (secs(timing.started) + secs(timing.finished)) / 2.0;
    remote_epoch - midpoint
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real output of `host_facts_script()` on a Debian 12 container (no systemd as PID 1).
    const DEBIAN_CONTAINER: &str = "\
@@capstan:time
1795837406.604823861
@@capstan:os-release
PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"
NAME=\"Debian GNU/Linux\"
VERSION_ID=\"12\"
VERSION=\"12 (bookworm)\"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL=\"https://www.debian.org/\"
@@capstan:arch
x86_64
@@capstan:kernel
6.18.44-fc-v669
@@capstan:init
process_api
@@capstan:systemd-state
offline
@@capstan:hostname
vm
@@capstan:addresses
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
1: lo    inet6 ::1/128 scope host \\       valid_lft forever preferred_lft forever
4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever preferred_lft forever
4: eth0    inet6 fd00::2/64 scope global nodad \\       valid_lft forever preferred_lft forever
4: eth0    inet6 fe80::fc:ff:fe00:1/64 scope link \\       valid_lft forever preferred_lft forever
@@capstan:cpus
2
@@capstan:meminfo
MemTotal:       24684084 kB
@@capstan:df /
Filesystem     1024-blocks     Used Available Capacity Mounted on
/dev/vda         264212084 16162436  79123452      17% /
@@capstan:df /var/lib
Filesystem     1024-blocks     Used Available Capacity Mounted on
/dev/vda         264212084 16162436  79123452      17% /
@@capstan:end
";

    /// An Ubuntu arm64 host with systemd (df for /var/lib missing: separate mount absent is fine,
    /// but here /var/lib does not exist, so df printed nothing).
    const UBUNTU_ARM: &str = "\
@@capstan:time
1795837400.5
@@capstan:os-release
PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"
VERSION_ID=\"24.04\"
ID=ubuntu
@@capstan:arch
aarch64
@@capstan:kernel
6.8.0-45-generic
@@capstan:init
systemd
@@capstan:systemd-state
degraded
@@capstan:hostname
node-a
@@capstan:addresses
2: enp0s1    inet 10.0.0.7/24 metric 100 brd 10.0.0.255 scope global dynamic enp0s1\\       valid_lft 3000sec preferred_lft 3000sec
2: enp0s1    inet 10.0.0.7/24 scope global secondary enp0s1\\       valid_lft forever preferred_lft forever
@@capstan:cpus
4
@@capstan:meminfo
MemTotal:        8123456 kB
@@capstan:df /
Filesystem     1024-blocks    Used Available Capacity Mounted on
/dev/mapper/ubuntu--vg-ubuntu--lv 30787492 9876543 19321012 34% /
@@capstan:df /var/lib
@@capstan:end
";

    fn timing_at(epoch: f64, rtt: f64) -> ExecTiming {
        let start = UNIX_EPOCH + Duration::from_secs_f64(epoch - rtt / 2.0);
        ExecTiming {
            started: start,
            finished: start + Duration::from_secs_f64(rtt),
        }
    }

    #[test]
    fn parses_debian_container() {
        let facts = parse_host_facts(DEBIAN_CONTAINER, timing_at(1795837406.0, 0.2)).unwrap();
        assert_eq!(facts.os_id, "debian");
        assert_eq!(facts.os_version_id, "12");
        assert_eq!(facts.os_pretty, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(facts.arch, "amd64");
        assert_eq!(facts.kernel, "6.18.44-fc-v669");
        assert_eq!(facts.init, "process_api");
        assert_eq!(facts.systemd_state.as_deref(), Some("offline"));
        assert_eq!(facts.hostname, "vm");
        assert_eq!(
            facts.addresses,
            vec!["192.0.2.2".parse::<IpAddr>().unwrap(), "fd00::2".parse().unwrap()]
        );
        assert_eq!(facts.cpus, 2);
        assert_eq!(facts.memory_bytes, 24684084 * 1024);
        assert_eq!(facts.free_disk_bytes.get("/"), Some(&(79123452 * 1024)));
        assert_eq!(facts.free_disk_bytes.get("/var/lib"), Some(&(79123452 * 1024)));
        assert!(
            (facts.time_offset_secs - 0.6048).abs() < 0.001,
            "{}",
            facts.time_offset_secs
        );
    }

    #[test]
    fn parses_ubuntu_arm_with_missing_df() {
        let facts = parse_host_facts(UBUNTU_ARM, timing_at(1795837410.5, 0.01)).unwrap();
        assert_eq!(facts.arch, "arm64");
        assert_eq!(facts.init, "systemd");
        assert_eq!(facts.systemd_state.as_deref(), Some("degraded"));
        assert_eq!(facts.addresses, vec!["10.0.0.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(facts.free_disk_bytes.get("/"), Some(&(19321012 * 1024)));
        assert_eq!(facts.free_disk_bytes.get("/var/lib"), None);
        assert!((facts.time_offset_secs + 10.0).abs() < 0.001);
    }

    #[test]
    fn truncated_or_broken_output_is_an_error() {
        let truncated = DEBIAN_CONTAINER.replace("@@capstan:end\n", "");
        assert!(parse_host_facts(&truncated, timing_at(0.0, 0.0))
            .unwrap_err()
            .contains("truncated"));
        let bad_cpus = DEBIAN_CONTAINER.replace("@@capstan:cpus\n2\n", "@@capstan:cpus\n\n");
        assert!(parse_host_facts(&bad_cpus, timing_at(0.0, 0.0))
            .unwrap_err()
            .contains("cpu"));
    }

    #[test]
    fn arch_names_normalise() {
        for (raw, expected) in [
            ("x86_64", "amd64"),
            ("aarch64", "arm64"),
            ("arm64", "arm64"),
            ("riscv64", "riscv64"),
        ] {
            assert_eq!(normalize_arch(raw), expected);
        }
    }

    #[test]
    fn epoch_parsing_tolerates_busybox() {
        assert_eq!(parse_epoch("100.5"), Some(100.5));
        assert_eq!(parse_epoch("100.%N"), Some(100.0));
        assert_eq!(parse_epoch("100"), Some(100.0));
        assert_eq!(parse_epoch("soon"), None);
    }

    #[test]
    fn os_release_unquotes() {
        let parsed = parse_os_release("ID='rocky'\nNAME=\"Rocky \\\"Linux\\\"\"\nBAD\n");
        assert_eq!(parsed.get("ID").map(String::as_str), Some("rocky"));
        assert_eq!(parsed.get("NAME").map(String::as_str), Some("Rocky \"Linux\""));
        assert_eq!(parsed.len(), 2);
    }

    #[test]
    fn script_runs_locally_and_parses() {
        // The script is POSIX sh: run it here to make sure it parses on a real system.
        let started = SystemTime::now();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(host_facts_script())
            .output()
            .unwrap();
        let timing = ExecTiming {
            started,
            finished: SystemTime::now(),
        };
        let facts = parse_host_facts(&String::from_utf8_lossy(&out.stdout), timing).unwrap();
        assert!(facts.cpus > 0 && facts.memory_bytes > 0);
        assert!(facts.time_offset_secs.abs() < 1.0, "{}", facts.time_offset_secs);
        assert!(facts.free_disk_bytes.contains_key("/"));
    }
}
