//! What a host looks like before a run, in one round trip: its Kubernetes PKI files (public
//! parts; the CA key only as "present"), and its IPv4 addresses per interface (for keepalived).
//! The parser is pure and tested from captured output.

use capstan_provisioner::facts::ProbeSections;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{run_checked, OpError};
use capstan_provisioner::transport::Transport;

use crate::config::KEEPALIVED_CONFIG;
use crate::kube_pki::{APISERVER_CERT, APISERVER_KEY, CA_CERT, CA_KEY};

const MARK: &str = "@@capstan:";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostProbe {
    pub ca_cert: Option<String>,
    pub has_ca_key: bool,
    pub apiserver_cert: Option<String>,
    pub has_apiserver_key: bool,
    /// `ip -o -4 addr show`.
    pub addresses: String,
    /// keepalived's config is capstan's (a VIP was configured here).
    pub capstan_keepalived: bool,
}

pub fn probe_script() -> String {
    let mut script = String::new();
    let mut section = |name: &str, body: &str| script.push_str(&format!("echo '{MARK}{name}'; {body}\n"));
    for (name, path) in [("ca-key", CA_KEY), ("apiserver-key", APISERVER_KEY)] {
        section(name, &format!("[ -s {} ] && echo yes || echo no", quote(path)));
    }
    for (name, path) in [("ca-cert", CA_CERT), ("apiserver-cert", APISERVER_CERT)] {
        section(name, &format!("base64 -w0 {} 2>/dev/null; echo", quote(path)));
    }
    section("addresses", "ip -o -4 addr show 2>/dev/null");
    section(
        "keepalived",
        &format!(
            "grep -qs '^# Written by capstan' {} && echo yes || echo no",
            quote(KEEPALIVED_CONFIG)
        ),
    );
    section("end", "true");
    script
}

pub fn parse_probe(text: &str) -> Result<HostProbe, String> {
    let sections = ProbeSections::parse(text)?;
    let get = |name: &str| sections.get(name);
    let content = |name: &str| sections.base64_text(name);
    Ok(HostProbe {
        ca_cert: content("ca-cert")?,
        has_ca_key: get("ca-key") == "yes",
        apiserver_cert: content("apiserver-cert")?,
        has_apiserver_key: get("apiserver-key") == "yes",
        addresses: sections.raw("addresses").to_string(),
        capstan_keepalived: get("keepalived") == "yes",
    })
}

pub async fn probe_host(t: &dyn Transport) -> Result<HostProbe, OpError> {
    let output = run_checked(t, &probe_script()).await?;
    parse_probe(&output.stdout_str()).map_err(|reason| OpError::Probe {
        host: t.host().to_string(),
        what: "API endpoint state".into(),
        reason,
    })
}

/// The CA key, read from the one host it is taken from (never part of a probe or a log).
pub async fn read_ca_key(t: &dyn Transport) -> Result<String, OpError> {
    let output = run_checked(t, &format!("cat {}", quote(CA_KEY))).await?;
    Ok(output.stdout_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_parses() {
        let text = "@@capstan:ca-key\nyes\n@@capstan:apiserver-key\nno\n@@capstan:ca-cert\nQ0EK\n\
                    @@capstan:apiserver-cert\n\n@@capstan:addresses\n2: host0    inet 10.1.0.2/24 scope global host0\n\
                    @@capstan:keepalived\nyes\n@@capstan:end\n";
        let probe = parse_probe(text).unwrap();
        assert_eq!(
            probe,
            HostProbe {
                ca_cert: Some("CA\n".into()),
                has_ca_key: true,
                apiserver_cert: None,
                has_apiserver_key: false,
                addresses: "2: host0    inet 10.1.0.2/24 scope global host0\n".into(),
                capstan_keepalived: true,
            }
        );
        assert!(parse_probe("@@capstan:ca-key\nyes\n").is_err());
        assert!(parse_probe("@@capstan:ca-cert\n!!\n@@capstan:end\n").is_err());
    }
}
