//! Components' own state in backups: the files each component declares through
//! [`Component::state_files`] (key pairs and configuration the datastore does not hold), kept in
//! one age-encrypted tar object, and put back by a restore around the datastore's restore
//! (units of [`Component::restore_stopped_units`] stopped before it, started after the files are
//! back).
//!
//! Generic: nothing here knows which component a file belongs to beyond its name. The archive
//! names each file `<component><absolute path>` and carries its mode.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;

use capstan_inventory::{Cluster, Host};
use capstan_provisioner::component::{Component, StateFile};
use capstan_provisioner::facts::ProbeSections;
use capstan_provisioner::hint::Hint;
use capstan_provisioner::ops::shell::{quote, remote_sha256_by_size};
use capstan_provisioner::ops::{Command, File};
use capstan_provisioner::phases::PhaseContext;
use capstan_provisioner::pool::Connections;
use capstan_provisioner::report::RunReport;
use capstan_provisioner::runner::{HostOps, Mode, Progress, RunOptions, Runner};
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::{ExecOptions, Transport};

/// Marker understood by [`ProbeSections`].
const MARK: &str = "@@capstan:";

/// One file of a component's state, as backed up. The content is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct StateEntry {
    pub component: String,
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for StateEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateEntry")
            .field("component", &self.component)
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("size", &self.data.len())
            .finish()
    }
}

impl StateEntry {
    fn archive_name(&self) -> String {
        format!("{}{}", self.component, self.path)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{component}: no host with role {role} could be reached to read its state ({detail})")]
    Unreachable {
        component: String,
        role: String,
        detail: String,
    },
    #[error("{component}: {host} has only part of its state: {} missing", missing.join(", "))]
    Partial {
        component: String,
        host: String,
        missing: Vec<String>,
    },
    #[error("{host}: reading {component}'s state: {reason}")]
    Read {
        component: String,
        host: String,
        reason: String,
    },
    #[error("the state archive: {0}")]
    Archive(String),
    #[error("putting the state back: {0}")]
    Restore(String),
}

impl Hint for StateError {
    fn hint(&self) -> Option<String> {
        match self {
            StateError::Unreachable { .. } => Some("check the hosts with `capstan check`, then try again".into()),
            StateError::Partial { .. } => {
                Some("run `capstan apply` to complete the component on that host, then back up again".into())
            }
            StateError::Restore(_) => {
                Some("fix the cause shown above and run the same restore again: it continues where it stopped".into())
            }
            _ => None,
        }
    }
}

/// What [`collect`] found.
#[derive(Debug, Default)]
pub struct Collected {
    pub entries: Vec<StateEntry>,
    /// Enabled components with state whose files are on none of their hosts (not installed yet),
    /// each with the host asked: nothing of theirs is in the backup.
    pub not_installed: Vec<String>,
}

fn hosts_with_role<'c>(cluster: &'c Cluster, role: &str) -> Vec<&'c Host> {
    cluster
        .hosts
        .iter()
        .filter(|h| h.roles.iter().any(|r| r.as_str() == role))
        .collect()
}

/// The script printing each of `paths` as base64 in its own section (`missing` when absent).
fn read_script(paths: &[&str]) -> String {
    let mut script = String::new();
    for (i, path) in paths.iter().enumerate() {
        let path = quote(path);
        script.push_str(&format!(
            "echo '{MARK}file{i}'; if [ -f {path} ]; then base64 -w0 < {path} && echo; else echo missing; fi\n"
        ));
    }
    script.push_str(&format!("echo '{MARK}end'\n"));
    script
}

/// Each file's content from [`read_script`]'s output (`None`: missing).
fn parse_read(paths: &[&str], output: &str) -> Result<Vec<Option<Vec<u8>>>, String> {
    let sections = ProbeSections::parse(output)?;
    (0..paths.len())
        .map(|i| {
            let text = sections.get(&format!("file{i}"));
            if text == "missing" {
                return Ok(None);
            }
            data_encoding::BASE64
                .decode(text.as_bytes())
                .map(Some)
                .map_err(|e| format!("{}: invalid base64: {e}", paths[i]))
        })
        .collect()
}

/// The content of each of `paths` on the host (`None`: missing), read in one exec. Errors carry
/// the command's stderr only: its stdout holds key material.
pub(crate) async fn read_remote_files(
    transport: &dyn Transport,
    paths: &[&str],
) -> Result<Vec<Option<Vec<u8>>>, String> {
    let output = transport
        .exec(&read_script(paths), &ExecOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    if !output.success() {
        return Err(output.stderr_str().trim().to_string());
    }
    parse_read(paths, &output.stdout_str())
}

/// Reads every enabled component's state files over SSH: per component and role, from the first
/// reachable host (inventory order) that has them all.
pub async fn collect(cluster: &Cluster, components: &[&dyn Component]) -> Result<Collected, StateError> {
    let mut collected = Collected::default();
    for component in components.iter().filter(|c| c.enabled(cluster)) {
        let mut by_role: BTreeMap<&'static str, Vec<StateFile>> = BTreeMap::new();
        for file in component.state_files(cluster) {
            by_role.entry(file.role).or_default().push(file);
        }
        for (role, files) in by_role {
            let hosts = hosts_with_role(cluster, role);
            let targets: Vec<_> = hosts.iter().map(|h| ssh_target(h)).collect();
            let (connections, failures) = Connections::connect(&targets, 8).await;
            let result = read_from_first(component.name(), &hosts, &connections, &files).await;
            connections.close_all().await;
            match result? {
                Some(entries) => collected.entries.extend(entries),
                None if connections.is_empty() => {
                    return Err(StateError::Unreachable {
                        component: component.name().into(),
                        role: role.into(),
                        detail: failures
                            .iter()
                            .map(|(host, e)| format!("{host}: {e}"))
                            .collect::<Vec<_>>()
                            .join("; "),
                    })
                }
                None => collected.not_installed.push(component.name().to_string()),
            }
        }
    }
    Ok(collected)
}

async fn read_from_first(
    component: &str,
    hosts: &[&Host],
    connections: &Connections,
    files: &[StateFile],
) -> Result<Option<Vec<StateEntry>>, StateError> {
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let mut partial = None;
    for host in hosts {
        let Some(transport) = connections.get(&host.name) else {
            continue;
        };
        let read_error = |reason: String| StateError::Read {
            component: component.into(),
            host: host.name.clone(),
            reason,
        };
        let contents = read_remote_files(transport.as_ref(), &paths)
            .await
            .map_err(read_error)?;
        let missing: Vec<String> = files
            .iter()
            .zip(&contents)
            .filter(|(f, c)| c.is_none() && !f.optional)
            .map(|(f, _)| f.path.clone())
            .collect();
        let required = files.iter().filter(|f| !f.optional).count();
        if missing.is_empty() {
            return Ok(Some(
                files
                    .iter()
                    .zip(contents)
                    .filter_map(|(f, c)| {
                        c.map(|data| StateEntry {
                            component: component.into(),
                            path: f.path.clone(),
                            mode: f.mode,
                            data,
                        })
                    })
                    .collect(),
            ));
        }
        if missing.len() < required && partial.is_none() {
            partial = Some(StateError::Partial {
                component: component.into(),
                host: host.name.clone(),
                missing,
            });
        }
    }
    // No host has all of it: half a state is an error, none means not installed yet.
    match partial {
        Some(err) => Err(err),
        None => Ok(None),
    }
}

/// The entries as a tar archive (each with its own mode).
pub fn archive(entries: &[StateEntry]) -> Result<Vec<u8>, StateError> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(entry.data.len() as u64);
        header.set_mode(entry.mode);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, entry.archive_name(), entry.data.as_slice())
            .map_err(|e| StateError::Archive(format!("{}: {e}", entry.path)))?;
    }
    builder.into_inner().map_err(|e| StateError::Archive(e.to_string()))
}

/// Reads an archive made by [`archive`]: the component is the first path segment.
pub fn unarchive(bytes: &[u8]) -> Result<Vec<StateEntry>, StateError> {
    let broken = |e: std::io::Error| StateError::Archive(e.to_string());
    let mut entries = Vec::new();
    let mut reader = tar::Archive::new(bytes);
    for entry in reader.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        let name = entry.path().map_err(broken)?.to_string_lossy().into_owned();
        let Some((component, rest)) = name.split_once('/') else {
            return Err(StateError::Archive(format!("{name}: not <component>/<path>")));
        };
        let mode = entry.header().mode().map_err(broken)?;
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(broken)?;
        entries.push(StateEntry {
            component: component.to_string(),
            path: format!("/{rest}"),
            mode,
            data,
        });
    }
    Ok(entries)
}

/// How far a restore moves etcd's revision on (with `--mark-compacted`) when some enabled
/// component keeps watches on it (declares units to stop): watchers then see a compaction and
/// relist instead of missing the events between the backup and the restore. The size etcd's and
/// Kubernetes' documentation use for this; `None` when no component watches.
pub fn default_revision_bump(cluster: &Cluster, components: &[&dyn Component]) -> Option<u64> {
    components
        .iter()
        .any(|c| c.enabled(cluster) && !c.restore_stopped_units().is_empty())
        .then_some(1_000_000_000)
}

/// Putting components' state back during a restore, on connections to every host of the roles
/// involved. Every change is an op run in the restore's mode, so a dry run shows them.
pub struct StateRestore {
    /// Per host: the files to write and the units to stop/start.
    hosts: Vec<RestoreHost>,
    connections: Connections,
    phases: PhaseContext<()>,
    /// Backed-up files no enabled component declares any more (left out).
    pub ignored: Vec<String>,
}

struct RestoreHost {
    name: String,
    files: Vec<StateEntry>,
    units: Vec<&'static str>,
}

impl StateRestore {
    /// Connects to the hosts that get files back or have units to stop; every one must be
    /// reachable (a host left out would keep the old state).
    pub async fn connect(
        cluster: &Cluster,
        components: &[&dyn Component],
        entries: &[StateEntry],
        mode: Mode,
        progress: Arc<dyn Progress>,
    ) -> Result<StateRestore, StateError> {
        let mut per_host: BTreeMap<String, RestoreHost> = BTreeMap::new();
        let mut declared: BTreeSet<(String, String)> = BTreeSet::new();
        let enabled: Vec<&&dyn Component> = components.iter().filter(|c| c.enabled(cluster)).collect();
        for component in &enabled {
            let host_entry = |per_host: &mut BTreeMap<String, RestoreHost>, host: &Host| {
                per_host.entry(host.name.clone()).or_insert_with(|| RestoreHost {
                    name: host.name.clone(),
                    files: Vec::new(),
                    units: Vec::new(),
                });
            };
            for unit in component.restore_stopped_units() {
                for host in hosts_with_role(cluster, unit.role) {
                    host_entry(&mut per_host, host);
                    per_host.get_mut(&host.name).expect("inserted").units.push(unit.unit);
                }
            }
            for file in component.state_files(cluster) {
                declared.insert((component.name().to_string(), file.path.clone()));
                let Some(entry) = entries
                    .iter()
                    .find(|e| e.component == component.name() && e.path == file.path)
                else {
                    continue;
                };
                for host in hosts_with_role(cluster, file.role) {
                    host_entry(&mut per_host, host);
                    per_host.get_mut(&host.name).expect("inserted").files.push(StateEntry {
                        mode: file.mode,
                        ..entry.clone()
                    });
                }
            }
        }
        let ignored = entries
            .iter()
            .filter(|e| !declared.contains(&(e.component.clone(), e.path.clone())))
            .map(|e| format!("{}: {}", e.component, e.path))
            .collect();
        let targets: Vec<_> = cluster
            .hosts
            .iter()
            .filter(|h| per_host.contains_key(&h.name))
            .map(ssh_target)
            .collect();
        let (connections, failures) = Connections::connect(&targets, 8).await;
        if !failures.is_empty() {
            connections.close_all().await;
            return Err(StateError::Restore(format!(
                "cannot reach {}",
                failures
                    .iter()
                    .map(|(h, e)| format!("{h} ({e})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let runner = Runner::new(RunOptions { mode, concurrency: 8 }, progress);
        Ok(StateRestore {
            hosts: per_host.into_values().collect(),
            connections,
            phases: PhaseContext::with_output((), runner, Box::new(std::io::sink())),
            ignored,
        })
    }

    fn transport(&self, host: &str) -> Arc<dyn Transport> {
        self.connections.get(host).expect("every host was connected")
    }

    async fn run(&self, phase: &str, hosts: Vec<HostOps>) -> Result<RunReport, StateError> {
        let hosts: Vec<HostOps> = hosts.into_iter().filter(|h| !h.ops.is_empty()).collect();
        if hosts.is_empty() {
            return Ok(RunReport {
                mode: self.phases.mode(),
                hosts: Vec::new(),
                elapsed: std::time::Duration::ZERO,
            });
        }
        let report = self.phases.run_ops(phase, hosts, self.phases.mode()).await;
        match report {
            Ok(report) if report.success() => Ok(report),
            Ok(report) => Err(StateError::Restore(format!(
                "{phase}: failed on {}",
                report.failed_hosts().join(", ")
            ))),
            Err(e) => Err(StateError::Restore(format!("{phase}: {e}"))),
        }
    }

    /// One op per declared unit on each host.
    fn unit_ops(&self, op: impl Fn(&str) -> Command) -> Vec<HostOps> {
        self.hosts
            .iter()
            .map(|h| {
                let mut ops = HostOps::new(self.transport(&h.name));
                for unit in &h.units {
                    ops.push(op(unit));
                }
                ops
            })
            .collect()
    }

    /// Stops the declared units where they run (before the datastore is restored).
    pub async fn stop_units(&self) -> Result<RunReport, StateError> {
        let hosts = self.unit_ops(|unit| {
            Command::new(
                &format!("stop {unit} while the datastore is restored"),
                &format!("systemctl stop {unit}"),
            )
            .unless(&format!("! systemctl is-active -q {unit}"))
        });
        self.run("stop the units that use the datastore", hosts).await
    }

    /// Writes the backed-up files (root, their mode), then starts the declared units that are
    /// installed (on fresh hosts they are not yet: `capstan apply` installs them, with this state).
    pub async fn put_back_and_start(&self) -> Result<Vec<RunReport>, StateError> {
        let files = self
            .hosts
            .iter()
            .map(|h| {
                let mut ops = HostOps::new(self.transport(&h.name));
                for entry in &h.files {
                    ops.push(
                        File::new(&entry.path, entry.data.clone())
                            .mode(entry.mode)
                            .owner("root")
                            .group("root")
                            .sensitive(true),
                    );
                }
                ops
            })
            .collect();
        let put = self.run("put the components' backed-up state back", files).await?;
        let starts = self.unit_ops(|unit| {
            Command::new(&format!("start {unit}"), &format!("systemctl start {unit}")).unless(&format!(
                "systemctl is-active -q {unit} || ! systemctl cat {unit} >/dev/null 2>&1"
            ))
        });
        let started = self.run("start the units again", starts).await?;
        Ok(vec![put, started])
    }

    /// How many files go back onto how many hosts.
    pub fn describe(&self) -> String {
        let files = self
            .hosts
            .iter()
            .flat_map(|h| h.files.iter().map(|f| (&f.component, &f.path)))
            .collect::<BTreeSet<_>>()
            .len();
        let units: BTreeSet<&str> = self.hosts.iter().flat_map(|h| h.units.iter().copied()).collect();
        format!(
            "{files} file(s) on {} host(s); units stopped meanwhile: {}",
            self.hosts.iter().filter(|h| !h.files.is_empty()).count(),
            if units.is_empty() {
                "none".to_string()
            } else {
                units.into_iter().collect::<Vec<_>>().join(", ")
            }
        )
    }

    pub async fn close(self) {
        self.connections.close_all().await;
    }
}

/// A drill's check of the components' restored state: every backed-up file that an enabled
/// component declares is, on every host of its role, byte for byte the backed-up one with its
/// declared mode, root-owned. One check per component (hosts that cannot be read fail it).
pub async fn verify_restored(
    cluster: &Cluster,
    components: &[&dyn Component],
    entries: &[StateEntry],
) -> Vec<crate::drill_report::DrillCheck> {
    use crate::drill_report::DrillCheck;
    use sha2::Digest;
    let mut checks = Vec::new();
    for component in components.iter().filter(|c| c.enabled(cluster)) {
        let mut expected: BTreeMap<String, Vec<(StateFile, String)>> = BTreeMap::new();
        for file in component.state_files(cluster) {
            let Some(entry) = entries
                .iter()
                .find(|e| e.component == component.name() && e.path == file.path)
            else {
                continue;
            };
            let sum = hex::encode(sha2::Sha256::digest(&entry.data));
            for host in hosts_with_role(cluster, file.role) {
                expected
                    .entry(host.name.clone())
                    .or_default()
                    .push((file.clone(), sum.clone()));
            }
        }
        if expected.is_empty() {
            continue;
        }
        let name = format!("{}: state files restored", component.name());
        let targets: Vec<_> = cluster
            .hosts
            .iter()
            .filter(|h| expected.contains_key(&h.name))
            .map(ssh_target)
            .collect();
        let (connections, failures) = Connections::connect(&targets, 8).await;
        let mut problems: Vec<String> = failures
            .iter()
            .map(|(h, e)| format!("{h}: unreachable ({e})"))
            .collect();
        let mut files = 0;
        for (host, wanted) in &expected {
            let Some(transport) = connections.get(host) else {
                continue;
            };
            let script: String = wanted
                .iter()
                .map(|(file, _)| {
                    let path = quote(&file.path);
                    // One stat: mode, owner and group printed, the size picks the hash tool.
                    let hash = remote_sha256_by_size(&format!("< {path}"), "\"$4\"");
                    format!(
                        "if [ -f {path} ]; then set -- $(stat -c '%a %U %G %s' {path}); printf '%s %s %s ' \"$1\" \"$2\" \"$3\"; \
                         {hash}; else echo missing; fi\n"
                    )
                })
                .collect();
            let output = match transport.exec(&script, &ExecOptions::default()).await {
                Ok(output) if output.success() => output.stdout_str().to_string(),
                Ok(output) => {
                    problems.push(format!("{host}: {}", output.stderr_str().trim()));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("{host}: {e}"));
                    continue;
                }
            };
            let lines: Vec<&str> = output.lines().collect();
            for (i, (file, sum)) in wanted.iter().enumerate() {
                let want = format!("{:o} root root {sum}", file.mode);
                match lines.get(i) {
                    Some(line) if line.trim() == want => files += 1,
                    Some(line) if line.trim() == "missing" => problems.push(format!("{host}:{} missing", file.path)),
                    Some(line) => {
                        let seen: Vec<&str> = line.split_whitespace().collect();
                        problems.push(match seen.as_slice() {
                            [_, _, _, got] if *got != sum => format!("{host}:{} differs from the backup", file.path),
                            [mode, owner, group, _] => {
                                format!(
                                    "{host}:{} is {mode} {owner}:{group}, not {:o} root:root",
                                    file.path, file.mode
                                )
                            }
                            _ => format!("{host}:{}: unreadable ({line})", file.path),
                        })
                    }
                    None => problems.push(format!("{host}:{}: no answer", file.path)),
                }
            }
        }
        connections.close_all().await;
        checks.push(if problems.is_empty() {
            DrillCheck::new(
                name,
                true,
                format!(
                    "{files} file(s) on {} host(s) identical to the backup, modes and owner kept",
                    expected.len()
                ),
            )
        } else {
            DrillCheck::new(name, false, problems.join("; "))
        });
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_output_parses_present_and_missing_files() {
        let files = ["/etc/a b/ca.key", "/etc/x"];
        let script = read_script(&files);
        assert!(script.contains("if [ -f '/etc/a b/ca.key' ]"), "{script}");
        let output = "@@capstan:file0\naGVsbG8K\n@@capstan:file1\nmissing\n@@capstan:end\n";
        assert_eq!(
            parse_read(&files, output).unwrap(),
            vec![Some(b"hello\n".to_vec()), None]
        );
        assert!(parse_read(&files, "@@capstan:file0\naGVsbG8K\n").is_err(), "truncated");
        assert!(parse_read(&files, "@@capstan:file0\n!!\n@@capstan:end\n").is_err());
    }

    #[test]
    fn archive_round_trips_names_modes_and_bytes() {
        let entries = vec![
            StateEntry {
                component: "kube".into(),
                path: "/etc/k/pki/ca.key".into(),
                mode: 0o600,
                data: vec![0, 1, 2, 255],
            },
            StateEntry {
                component: "other".into(),
                path: "/etc/o/conf.yaml".into(),
                mode: 0o640,
                data: b"x: 1\n".to_vec(),
            },
        ];
        let back = unarchive(&archive(&entries).unwrap()).unwrap();
        assert_eq!(back, entries);
        assert!(!format!("{:?}", back[0]).contains("255"), "content is not in Debug");
    }
}
