//! What a host looks like before a run, in one round trip: its architecture, the certificates
//! and kubeconfigs of [`crate::pki::host_credentials`] (kubeconfigs embed a key: they are read
//! into memory to decide whether they still fit, never logged), the public halves of the CAs and
//! the service-account key, and which secret files exist. The parser is pure and tested.

use std::collections::BTreeMap;

use capstan_provisioner::facts::{normalize_arch, ProbeSections};
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{run_checked, OpError};
use capstan_provisioner::transport::Transport;

use crate::paths::*;

const MARK: &str = "@@capstan:";

/// Files read whole (base64), by path.
pub fn read_paths(credential_paths: &[&'static str]) -> Vec<&'static str> {
    let mut paths = vec![CA_CERT, APISERVER_CERT, FRONT_PROXY_CA_CERT, SA_PUB, ETCD_CA_CERT];
    paths.extend(credential_paths.iter().copied());
    paths
}

/// Files only checked for presence (secrets read, when needed, from one host only).
pub const SECRET_PATHS: [&str; 4] = [CA_KEY, FRONT_PROXY_CA_KEY, SA_KEY, ENCRYPTION_CONFIG];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostProbe {
    pub arch: String,
    /// Content of every file of [`read_paths`] that exists.
    pub files: BTreeMap<String, String>,
    /// Which of [`SECRET_PATHS`] exist (non-empty).
    pub present: BTreeMap<String, bool>,
}

impl HostProbe {
    pub fn file(&self, path: &str) -> Option<&str> {
        self.files.get(path).map(String::as_str)
    }

    pub fn has(&self, path: &str) -> bool {
        self.present.get(path).copied().unwrap_or(false)
    }
}

pub fn probe_script(read: &[&str]) -> String {
    let mut script = String::new();
    let mut section = |name: &str, body: &str| script.push_str(&format!("echo '{MARK}{name}'; {body}\n"));
    section("arch", "uname -m");
    for path in SECRET_PATHS {
        section(
            &format!("present {path}"),
            &format!("[ -s {} ] && echo yes || echo no", quote(path)),
        );
    }
    for path in read {
        section(
            &format!("file {path}"),
            &format!("base64 -w0 {} 2>/dev/null; echo", quote(path)),
        );
    }
    section("end", "true");
    script
}

pub fn parse_probe(text: &str, read: &[&str]) -> Result<HostProbe, String> {
    let sections = ProbeSections::parse(text)?;
    let mut probe = HostProbe {
        arch: normalize_arch(sections.get("arch")),
        ..HostProbe::default()
    };
    for path in SECRET_PATHS {
        probe
            .present
            .insert(path.to_string(), sections.yes(&format!("present {path}")));
    }
    for path in read {
        if let Some(content) = sections.base64_text(&format!("file {path}"))? {
            probe.files.insert(path.to_string(), content);
        }
    }
    Ok(probe)
}

pub async fn probe_host(t: &dyn Transport, read: &[&str]) -> Result<HostProbe, OpError> {
    let output = run_checked(t, &probe_script(read)).await?;
    parse_probe(&output.stdout_str(), read).map_err(|reason| OpError::Probe {
        host: t.host().to_string(),
        what: "Kubernetes control-plane state".into(),
        reason,
    })
}

/// A secret file's content, read from the one host it is taken from (never part of a probe or a
/// log; an error carries stderr only).
pub async fn read_secret(t: &dyn Transport, path: &str) -> Result<String, OpError> {
    let output = run_checked(t, &format!("cat -- {}", quote(path))).await?;
    Ok(output.stdout_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_parses() {
        let read = read_paths(&[ADMIN_KUBECONFIG]);
        let mut text = String::from("@@capstan:arch\nx86_64\n");
        for path in SECRET_PATHS {
            let answer = if path == CA_KEY { "yes" } else { "no" };
            text.push_str(&format!("@@capstan:present {path}\n{answer}\n"));
        }
        for path in &read {
            let body = if *path == CA_CERT { "Q0EK" } else { "" };
            text.push_str(&format!("@@capstan:file {path}\n{body}\n"));
        }
        let probe = parse_probe(&format!("{text}@@capstan:end\n"), &read).unwrap();
        assert_eq!(probe.arch, "amd64");
        assert_eq!(probe.file(CA_CERT), Some("CA\n"));
        assert_eq!(probe.file(ADMIN_KUBECONFIG), None);
        assert!(probe.has(CA_KEY) && !probe.has(SA_KEY));
        assert!(parse_probe(&text, &read).is_err(), "a cut-short output is refused");
        assert!(probe_script(&read).contains("base64 -w0 /etc/kubernetes/admin.conf"));
    }
}
