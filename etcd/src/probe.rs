//! What an etcd host looks like before a run, in one round trip: whether it has etcd data, which
//! PKI files exist, its current certificates (public), its current config file and whether etcd
//! runs. The CA key is deliberately not part of the probe; it is read separately and only from the
//! one member it is taken from.
//!
//! The parser is pure and tested from captured output.

use capstan_provisioner::facts::{normalize_arch, ProbeSections};
use capstan_provisioner::ops::probe_batch::run_batch;
use capstan_provisioner::ops::run_checked;

use crate::upgrade::{facts_script, parse_facts, VersionFacts};
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::OpError;
use capstan_provisioner::transport::Transport;

use super::config::{InitialClusterState, PkiPaths, DEFAULT_CONFIG_FILE};

/// Marker understood by [`ProbeSections`].
const MARK: &str = "@@capstan:";

/// The probed state of one etcd host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberProbe {
    /// `uname -m`, normalised (amd64, arm64).
    pub arch: String,
    /// The data dir holds a member (`member/` exists): etcd has run here.
    pub has_data: bool,
    pub ca_cert: Option<String>,
    pub has_ca_key: bool,
    pub server_cert: Option<String>,
    pub has_server_key: bool,
    pub peer_cert: Option<String>,
    pub has_peer_key: bool,
    /// The current `etcd.conf.yml`.
    pub config: Option<String>,
    pub active: bool,
    pub main_pid: Option<u32>,
}

/// The probe script for `data_dir` and the PKI files in `pki`.
pub fn probe_script(data_dir: &str, pki: &PkiPaths) -> String {
    let mut script = String::new();
    let mut section = |name: &str, body: &str| script.push_str(&format!("echo '{MARK}{name}'; {body}\n"));
    section("arch", "uname -m");
    section(
        "data",
        &format!("[ -d {}/member ] && echo yes || echo no", quote(data_dir)),
    );
    for (name, path) in [
        ("ca-key", ca_key_path(pki)),
        ("server-key", pki.server_key_file.clone()),
        ("peer-key", pki.peer_key_file.clone()),
    ] {
        section(name, &format!("[ -s {} ] && echo yes || echo no", quote(&path)));
    }
    // base64 keeps the bytes exact (line endings included), so unchanged files compare equal.
    for (name, path) in [
        ("ca-cert", &pki.ca_file),
        ("server-cert", &pki.server_cert_file),
        ("peer-cert", &pki.peer_cert_file),
        ("config", &DEFAULT_CONFIG_FILE.to_string()),
    ] {
        section(name, &format!("base64 -w0 {} 2>/dev/null; echo", quote(path)));
    }
    section("active", "systemctl is-active etcd 2>/dev/null");
    section("pid", "systemctl show -p MainPID --value etcd 2>/dev/null");
    section("end", "true");
    script
}

/// Where the CA key lives next to the CA certificate.
pub fn ca_key_path(pki: &PkiPaths) -> String {
    pki.ca_file.trim_end_matches(".crt").to_string() + ".key"
}

pub fn parse_probe(text: &str) -> Result<MemberProbe, String> {
    let sections = ProbeSections::parse(text)?;
    let get = |name: &str| sections.get(name);
    let content = |name: &str| sections.base64_text(name);
    let yes = |name: &str| sections.yes(name);
    Ok(MemberProbe {
        arch: normalize_arch(get("arch")),
        has_data: yes("data"),
        ca_cert: content("ca-cert")?,
        has_ca_key: yes("ca-key"),
        server_cert: content("server-cert")?,
        has_server_key: yes("server-key"),
        peer_cert: content("peer-cert")?,
        has_peer_key: yes("peer-key"),
        config: content("config")?,
        active: get("active") == "active",
        main_pid: get("pid").parse().ok().filter(|pid| *pid != 0),
    })
}

pub async fn probe_member(t: &dyn Transport, data_dir: &str, pki: &PkiPaths) -> Result<MemberProbe, OpError> {
    let output = run_checked(t, &probe_script(data_dir, pki)).await?;
    parse_probe(&output.stdout_str()).map_err(|reason| OpError::Probe {
        host: t.host().to_string(),
        what: "etcd member state".into(),
        reason,
    })
}

/// [`probe_member`] and the versions ([`crate::upgrade::probe_versions`]) in one round trip.
/// The versions are `None` when only that part could not be read (a planner that needs them
/// asks again).
pub async fn probe_member_and_versions(
    t: &dyn Transport,
    data_dir: &str,
    pki: &PkiPaths,
    metrics_port: Option<u16>,
) -> Result<(MemberProbe, Option<VersionFacts>), OpError> {
    let commands = [
        probe_script(data_dir, pki),
        facts_script(crate::config::DEFAULT_ETCD_BINARY, metrics_port),
    ];
    let outputs = run_batch(t, &commands).await?;
    let [member, versions] = &outputs[..] else {
        return Err(OpError::Probe {
            host: t.host().to_string(),
            what: "etcd member state".into(),
            reason: format!("expected 2 outputs, got {}", outputs.len()),
        });
    };
    let probe = parse_probe(&member.stdout_str()).map_err(|reason| OpError::Probe {
        host: t.host().to_string(),
        what: "etcd member state".into(),
        reason,
    })?;
    let versions = versions
        .success()
        .then(|| parse_facts(&versions.stdout_str()).ok())
        .flatten();
    Ok((probe, versions))
}

/// The values of an existing config that only matter for a member's first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapValues {
    pub initial_cluster: String,
    pub initial_cluster_state: InitialClusterState,
    pub initial_cluster_token: String,
}

/// Reads `initial-cluster`, `initial-cluster-state` and `initial-cluster-token` from a config
/// file capstan wrote (one `key: "json string"` per line). `None` when any is missing.
pub fn parse_bootstrap_values(config: &str) -> Option<BootstrapValues> {
    let value = |key: &str| -> Option<String> {
        config.lines().find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?.trim();
            match serde_json::from_str::<String>(rest) {
                Ok(s) => Some(s),
                Err(_) => Some(rest.to_string()),
            }
        })
    };
    let state = match value("initial-cluster-state")?.as_str() {
        "new" => InitialClusterState::New,
        "existing" => InitialClusterState::Existing,
        _ => return None,
    };
    Some(BootstrapValues {
        initial_cluster: value("initial-cluster")?,
        initial_cluster_state: state,
        initial_cluster_token: value("initial-cluster-token")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_running_member() {
        let b64 = |s: &str| data_encoding::BASE64.encode(s.as_bytes());
        let cert = "-----BEGIN CERTIFICATE-----\r\nAA\r\n-----END CERTIFICATE-----\r\n";
        let config = "name: \"a\"\ninitial-cluster: \"a=https://10.0.0.1:2380\"\n\
                      initial-cluster-state: \"new\"\ninitial-cluster-token: \"demo-1a2b\"\n";
        let out = format!(
            "@@capstan:arch\nx86_64\n@@capstan:data\nyes\n@@capstan:ca-key\nyes\n@@capstan:server-key\nno\n\
             @@capstan:ca-cert\n{}\n@@capstan:server-cert\n\n@@capstan:peer-cert\n\n\
             @@capstan:config\n{}\n@@capstan:active\nactive\n@@capstan:pid\n4242\n@@capstan:end\n",
            b64(cert),
            b64(config)
        );
        let out = out.as_str();
        let probe = parse_probe(out).unwrap();
        assert_eq!(probe.arch, "amd64");
        assert!(probe.has_data && probe.has_ca_key && probe.active);
        assert_eq!(probe.main_pid, Some(4242));
        assert_eq!(probe.ca_cert.as_deref(), Some(cert), "exact bytes, CRLF kept");
        assert!(!probe.has_server_key);
        assert_eq!(probe.server_cert, None);
        let values = parse_bootstrap_values(&probe.config.unwrap()).unwrap();
        assert_eq!(
            values,
            BootstrapValues {
                initial_cluster: "a=https://10.0.0.1:2380".into(),
                initial_cluster_state: InitialClusterState::New,
                initial_cluster_token: "demo-1a2b".into(),
            }
        );
    }

    #[test]
    fn parses_a_fresh_host_and_rejects_truncated_output() {
        let out = "@@capstan:arch\naarch64\n@@capstan:data\nno\n@@capstan:ca-key\nno\n@@capstan:config\n\n\
                   @@capstan:active\ninactive\n@@capstan:pid\n0\n@@capstan:end\n";
        let probe = parse_probe(out).unwrap();
        assert_eq!(
            probe,
            MemberProbe {
                arch: "arm64".into(),
                ..MemberProbe::default()
            }
        );
        assert!(parse_probe("@@capstan:arch\nx86_64\n").is_err());
        assert!(parse_probe("@@capstan:config\n!!\n@@capstan:end\n").is_err());
    }

    #[test]
    fn bootstrap_values_need_every_key() {
        assert_eq!(parse_bootstrap_values("initial-cluster: \"a=x\"\n"), None);
        assert_eq!(
            parse_bootstrap_values(
                "initial-cluster: \"a=x\"\ninitial-cluster-state: \"bogus\"\ninitial-cluster-token: \"t\"\n"
            ),
            None
        );
    }
}
