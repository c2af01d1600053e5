//! What a host looks like before a run, in one round trip: its logging PKI files (public parts;
//! keys only as "present"). The parser is pure and tested from captured output.

use capstan_provisioner::facts::ProbeSections;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{run_checked, OpError};
use capstan_provisioner::transport::Transport;

use crate::pki::{CA_CERT, CA_KEY, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_PEM};

const MARK: &str = "@@capstan:";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostProbe {
    pub ca_cert: Option<String>,
    pub has_ca_key: bool,
    pub client_cert: Option<String>,
    pub has_client_key: bool,
    pub server_cert: Option<String>,
    pub has_server_pem: bool,
}

pub fn probe_script() -> String {
    let mut script = String::new();
    let mut section = |name: &str, body: &str| script.push_str(&format!("echo '{MARK}{name}'; {body}\n"));
    for (name, path) in [
        ("ca-key", CA_KEY),
        ("client-key", CLIENT_KEY),
        ("server-pem", SERVER_PEM),
    ] {
        section(name, &format!("[ -s {} ] && echo yes || echo no", quote(path)));
    }
    for (name, path) in [
        ("ca-cert", CA_CERT),
        ("client-cert", CLIENT_CERT),
        ("server-cert", SERVER_CERT),
    ] {
        section(name, &format!("base64 -w0 {} 2>/dev/null; echo", quote(path)));
    }
    section("end", "true");
    script
}

pub fn parse_probe(text: &str) -> Result<HostProbe, String> {
    let sections = ProbeSections::parse(text)?;
    let yes = |name: &str| sections.get(name) == "yes";
    Ok(HostProbe {
        ca_cert: sections.base64_text("ca-cert")?,
        has_ca_key: yes("ca-key"),
        client_cert: sections.base64_text("client-cert")?,
        has_client_key: yes("client-key"),
        server_cert: sections.base64_text("server-cert")?,
        has_server_pem: yes("server-pem"),
    })
}

pub async fn probe_host(t: &dyn Transport) -> Result<HostProbe, OpError> {
    let output = run_checked(t, &probe_script()).await?;
    parse_probe(&output.stdout_str()).map_err(|reason| OpError::Probe {
        host: t.host().to_string(),
        what: "logging state".into(),
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
        let text = "@@capstan:ca-key\nno\n@@capstan:client-key\nyes\n@@capstan:server-pem\nno\n\
                    @@capstan:ca-cert\nQ0EK\n@@capstan:client-cert\n\n@@capstan:server-cert\n\n@@capstan:end\n";
        assert_eq!(
            parse_probe(text).unwrap(),
            HostProbe {
                ca_cert: Some("CA\n".into()),
                has_client_key: true,
                ..HostProbe::default()
            }
        );
        assert!(parse_probe("@@capstan:ca-key\nyes\n").is_err());
        assert!(probe_script().contains("/etc/capstan/logging/aggregator.crt"));
    }
}
