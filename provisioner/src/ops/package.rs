//! Debian packages from the distribution (or an air-gapped site's own apt repository).

use async_trait::async_trait;

use super::shell::quote;
use super::{run_checked, Change, File, OpError, Operation, Plan, Step};
use crate::transport::Transport;

/// Where capstan writes the apt source the inventory names (`artifacts.apt_source`).
pub const APT_SOURCE_FILE: &str = "/etc/apt/sources.list.d/capstan.list";

/// Ensure Debian packages are installed: probes `dpkg-query`, and installs only the missing ones
/// with `apt-get install --no-install-recommends`, after refreshing the package lists. With an
/// apt source (see [`apt_source_file`]) only that source's lists are refreshed, so a host that
/// reaches nothing but its site's repository (air-gapped, or a lab machine) does not wait for
/// the distribution's mirrors.
#[derive(Debug, Clone)]
pub struct Package {
    names: Vec<String>,
    apt_source: Option<String>,
}

impl Package {
    pub fn new<I, S>(names: I) -> Package
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Package {
            names: names.into_iter().map(Into::into).collect(),
            apt_source: None,
        }
    }

    /// Refresh only [`APT_SOURCE_FILE`] before installing (put [`apt_source_file`] before this op).
    pub fn from_source(mut self, apt_source: Option<&str>) -> Package {
        self.apt_source = apt_source.map(str::to_string);
        self
    }

    fn probe_command(&self) -> String {
        let names: Vec<String> = self.names.iter().map(|n| quote(n)).collect();
        // dpkg-query exits 1 when a package is unknown; the output still lists the known ones.
        format!(
            "dpkg-query -W -f='${{Package}} ${{db:Status-Abbrev}}\\n' {} 2>/dev/null; true",
            names.join(" ")
        )
    }

    fn install_command(&self, missing: &[&str]) -> String {
        let update = match self.apt_source {
            Some(_) => format!(
                "apt-get update -qq -o Dir::Etc::sourcelist={APT_SOURCE_FILE} -o Dir::Etc::sourceparts=- \
                 -o APT::Get::List-Cleanup=0"
            ),
            None => "apt-get update -qq".to_string(),
        };
        let names: Vec<String> = missing.iter().map(|n| quote(n)).collect();
        format!(
            "export DEBIAN_FRONTEND=noninteractive; {update} && apt-get install -y -qq --no-install-recommends \
             -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold {}",
            names.join(" ")
        )
    }
}

/// The packages of `wanted` that `dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n'` does not show
/// as installed ("ii").
pub fn missing_packages<'a>(wanted: &'a [String], dpkg_query_output: &str) -> Vec<&'a str> {
    let installed: Vec<&str> = dpkg_query_output
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            let status = words.next()?;
            // Status-Abbrev: desired ("i" = install), status ("i" = installed), error flag.
            (status.starts_with("ii")).then_some(name)
        })
        .map(|name| name.split(':').next().unwrap_or(name))
        .collect();
    wanted
        .iter()
        .map(String::as_str)
        .filter(|w| !installed.contains(w))
        .collect()
}

/// The apt source file for an inventory's `artifacts.apt_source` line.
pub fn apt_source_file(line: &str) -> File {
    File::new(
        APT_SOURCE_FILE,
        format!("# written by capstan (inventory: artifacts.apt_source)\n{line}\n"),
    )
    .mode(0o644)
}

#[async_trait]
impl Operation for Package {
    fn self_contained(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("packages {}", self.names.join(", "))
    }
    fn probes(&self) -> Vec<String> {
        vec![self.probe_command()]
    }
    async fn plan(&self, t: &dyn Transport) -> Result<Plan, OpError> {
        if self.names.is_empty() {
            return Ok(Plan::unchanged());
        }
        if let Some(bad) = self
            .names
            .iter()
            .find(|n| n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || "+-.:".contains(c)))
        {
            return Err(OpError::Invalid(format!("package name {bad:?}")));
        }
        let output = run_checked(t, &self.probe_command()).await?;
        let missing = missing_packages(&self.names, &output.stdout_str());
        if missing.is_empty() {
            return Ok(Plan::unchanged());
        }
        Ok(Plan::single(Change {
            summary: format!(
                "install package{} {}",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", ")
            ),
            diff: None,
            steps: vec![Step::Run(self.install_command(&missing))],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_packages_are_recognised_by_status() {
        let wanted: Vec<String> = ["haproxy", "keepalived", "iptables", "crun"].map(String::from).to_vec();
        // Real dpkg-query output: installed, removed with config left ("rc"), half-installed.
        let output = "haproxy ii \nkeepalived rc \niptables:amd64 ii \ncrun iF \n";
        assert_eq!(missing_packages(&wanted, output), vec!["keepalived", "crun"]);
        assert_eq!(
            missing_packages(&wanted, ""),
            vec!["haproxy", "keepalived", "iptables", "crun"]
        );
    }

    #[test]
    fn a_site_source_restricts_the_refresh_to_it() {
        let op = Package::new(["haproxy"]).from_source(Some("deb [trusted=yes] file:/srv/debs ./"));
        let cmd = op.install_command(&["haproxy"]);
        assert!(
            cmd.contains(&format!("Dir::Etc::sourcelist={APT_SOURCE_FILE}")),
            "{cmd}"
        );
        assert!(cmd.contains("Dir::Etc::sourceparts=-"), "{cmd}");
        assert!(cmd.ends_with(" haproxy"), "{cmd}");
        let plain = Package::new(["haproxy"]).install_command(&["haproxy"]);
        assert!(plain.contains("apt-get update -qq &&"), "{plain}");
    }
}
