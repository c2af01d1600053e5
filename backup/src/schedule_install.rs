//! Installing and removing the scheduled backups and drills on the etcd members (`capstan backup
//! schedule`, `capstan drill schedule`; what the timers run is in [`crate::schedule`]).
//!
//! Everything goes through the ops engine, so `--dry-run` shows diffs and a re-run changes
//! nothing: root-only files under [`CONFIG_DIR`], the binary at [`BINARY_PATH`] (shared by both
//! schedules), a oneshot service and its timer. The backup schedule also installs the state push
//! ([`crate::state_push`]) on every host holding components' state: the binary, its config, an
//! etcd client identity and a oneshot service started by a path unit and a timer. Each schedule is
//! installed on every member (each run asks its local etcd whether it leads), and the push on every
//! state host, so an install with one of them unreachable is refused.
//! The caller resolves flags and the inventory into a request ([`BackupInstall`], [`DrillInstall`]);
//! this module checks it, connects, plans and runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use capstan_etcd::config::{host_for_url, DEFAULT_CLIENT_PORT};
use capstan_etcd::inspect::{fetch_ca, inspect_hosts, EtcdHost, InspectError};
use capstan_etcd::pki::STATE_PUSH_CLIENT_CN;
use capstan_inventory::{Cluster, Role};
use capstan_provisioner::component::Component;
use capstan_provisioner::hint::Hint;
use capstan_provisioner::ops::shell::quote;
use capstan_provisioner::ops::{
    Absent, Command, Directory, File, OpError, Operation, OperationExt, RemovedUnit, Service, SystemdUnit,
};
use capstan_provisioner::pki::{key_matches, needs_reissue, CertRequest, IssuedCert, PkiError};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::report::RunReport;
use capstan_provisioner::runner::{HostOps, Mode, Progress, RunOptions, Runner};
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::{ExecOptions, Transport, TransportError};

use crate::access::unreachable_hosts;
use crate::ops::identity_recipients;
use crate::restore::{manifest_of, resolve};
use crate::schedule::{
    check_calendar, environment_file, DrillScheduleConfig, InstalledBinary, RetentionConfig, ScheduleConfig,
    ScheduleError, BINARY_PATH, CONFIG_DIR, CONFIG_PATH, DRILL_CACHE_DIR, DRILL_CONFIG_PATH, DRILL_DIR,
    DRILL_ENVIRONMENT_PATH, DRILL_IDENTITY_PATH, DRILL_INVENTORY_PATH, DRILL_KNOWN_HOSTS_PATH, DRILL_REPORT_DIR,
    DRILL_SERVICE_UNIT, DRILL_SSH_KEY_PATH, DRILL_TIMER_UNIT, ENVIRONMENT_PATH, INVENTORY_PATH, LOCAL_ENDPOINT,
    PKI_DIR, SERVICE_UNIT, TIMER_UNIT,
};
use crate::state::read_remote_files;
use crate::state_push::{
    PushConfig, PushFile, PUSH_CA_PATH, PUSH_CERT_PATH, PUSH_CONFIG_PATH, PUSH_KEY_PATH, PUSH_METRICS_FILE,
    PUSH_PATH_UNIT, PUSH_PKI_DIR, PUSH_SERVICE_UNIT, PUSH_TIMER_UNIT,
};
use crate::{metrics, BackupError, Encryption, Store, StoreUrl, VerifyTarget};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("etcd members unreachable over SSH: {}", hosts.join(", "))]
    Unreachable { hosts: Vec<String>, what: &'static str },
    #[error("hosts holding components' state unreachable over SSH: {}", hosts.join(", "))]
    StateHostsUnreachable { hosts: Vec<String> },
    #[error("{host}: reading the state push's client certificate: {reason}")]
    PushIdentity { host: String, reason: String },
    #[error("issuing the state push's etcd client certificate: {0}")]
    Issue(#[source] PkiError),
    #[error("{host}: checking the calendar: {source}")]
    CalendarCheck {
        host: String,
        #[source]
        source: TransportError,
    },
    #[error("invalid OnCalendar expression {calendar:?}: {detail}")]
    InvalidCalendar { calendar: String, detail: String },
    #[error("scheduled backups: {0}")]
    Recipients(#[source] BackupError),
    #[error(transparent)]
    IdentityFile(BackupError),
    #[error("{}: no X25519 identity (AGE-SECRET-KEY-1...) in the file", path.display())]
    NoIdentity { path: PathBuf },
    #[error("{} cannot decrypt the latest backup {id}: it is encrypted to {}, the identity's public key is {}",
        path.display(), recipients.join(", "), ours.join(", "))]
    IdentityCannotDecrypt {
        path: PathBuf,
        id: String,
        recipients: Vec<String>,
        ours: Vec<String>,
    },
    #[error("drill inventory {path}: {reason}")]
    DrillTarget {
        path: String,
        reason: String,
        hint: &'static str,
    },
    #[error("finding the running capstan executable: {0}")]
    Executable(#[source] std::io::Error),
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    DrillInventoryYaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("rendering {path}: {source}")]
    RenderConfig {
        path: &'static str,
        #[source]
        source: serde_yaml::Error,
    },
    #[error(transparent)]
    Template(#[from] capstan_templates::TemplateError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Op(#[from] OpError),
    #[error(transparent)]
    Backup(#[from] BackupError),
}

impl InstallError {
    /// A mistake in what was asked for (exit code 2), rather than a failure on the way.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            InstallError::InvalidCalendar { .. }
                | InstallError::DrillTarget { .. }
                | InstallError::Schedule(ScheduleError::Calendar { .. })
        )
    }
}

impl Hint for InstallError {
    fn hint(&self) -> Option<String> {
        match self {
            InstallError::Inspect(_) => Some("give at least one host the etcd role and run `capstan apply`".into()),
            InstallError::StateHostsUnreachable { .. } => Some(
                "each of them pushes its components' state for the scheduled backups; run `capstan check` and \
                 try again when all are up"
                    .into(),
            ),
            InstallError::Unreachable { what, .. } => Some(format!(
                "every etcd member gets {what}; run `capstan check` and try again when all are up"
            )),
            InstallError::IdentityFile(_) => {
                Some("pass an age identity file (AGE-SECRET-KEY-1...), as written by age-keygen".into())
            }
            InstallError::InvalidCalendar { .. } => {
                Some("see `man systemd.time` (CALENDAR EVENTS), e.g. '*-*-* 02:00:00' or 'hourly'".into())
            }
            InstallError::Recipients(_) => Some(
                "set backup.recipients in the inventory (age-keygen prints a recipient; keep the identity offline)"
                    .into(),
            ),
            InstallError::IdentityCannotDecrypt { .. } => Some(
                "pass the identity of one of the backup's recipients (or add the drill key to backup.recipients)"
                    .into(),
            ),
            InstallError::DrillTarget { hint, .. } => Some(hint.to_string()),
            InstallError::Schedule(e) => e.hint(),
            InstallError::Backup(e) => e.hint(),
            _ => None,
        }
    }
}

/// The two schedules installed on the members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Backup,
    Drill,
}

impl Schedule {
    /// What every member gets (for messages).
    pub fn what(self) -> &'static str {
        match self {
            Schedule::Backup => "the timer",
            Schedule::Drill => "the drill timer",
        }
    }
    /// The units' templates, without `.service` / `.timer`.
    fn template(self) -> &'static str {
        match self {
            Schedule::Backup => "backup/capstan-backup",
            Schedule::Drill => "drill/capstan-drill",
        }
    }
    fn config_path(self) -> &'static str {
        match self {
            Schedule::Backup => CONFIG_PATH,
            Schedule::Drill => DRILL_CONFIG_PATH,
        }
    }
    fn environment_path(self) -> &'static str {
        match self {
            Schedule::Backup => ENVIRONMENT_PATH,
            Schedule::Drill => DRILL_ENVIRONMENT_PATH,
        }
    }
    /// The oneshot service and its timer.
    fn units(self) -> (&'static str, &'static str) {
        match self {
            Schedule::Backup => (SERVICE_UNIT, TIMER_UNIT),
            Schedule::Drill => (DRILL_SERVICE_UNIT, DRILL_TIMER_UNIT),
        }
    }
    /// The files and directories that are this schedule's alone.
    fn own_paths(self) -> &'static [&'static str] {
        match self {
            Schedule::Backup => &[
                CONFIG_PATH,
                ENVIRONMENT_PATH,
                INVENTORY_PATH,
                metrics::DEFAULT_METRICS_FILE,
                metrics::SCHEDULER_METRICS_FILE,
            ],
            Schedule::Drill => &[
                DRILL_CONFIG_PATH,
                DRILL_ENVIRONMENT_PATH,
                DRILL_IDENTITY_PATH,
                DRILL_DIR,
                DRILL_REPORT_DIR,
                // Left behind, they would keep the drill alerts going after the schedule is gone.
                capstan_monitoring::textfile_path!("capstan_drill.prom"),
                capstan_monitoring::textfile_path!("capstan_drill_scheduler.prom"),
            ],
        }
    }
    /// The other schedule's config: while it exists, the shared binary and directory stay.
    fn other_config(self) -> &'static str {
        match self {
            Schedule::Backup => Schedule::Drill.config_path(),
            Schedule::Drill => Schedule::Backup.config_path(),
        }
    }
}

/// A backup schedule to install, checked before anything connects.
#[derive(Debug, Clone)]
pub struct BackupInstall {
    on_calendar: String,
    target: StoreUrl,
    s3_path_style: bool,
    recipients: Vec<String>,
    retention: RetentionConfig,
    inventory: Vec<u8>,
    state: StateHolders,
}

/// The hosts holding components' state ([`Component::state_files`]) and the files each pushes
/// into etcd for the scheduled backups ([`crate::state_push`]).
#[derive(Debug, Clone, Default)]
pub struct StateHolders {
    /// Inventory order; only hosts with at least one file.
    hosts: Vec<(String, Vec<PushFile>)>,
}

impl StateHolders {
    /// Every host of a role holding a state file of an enabled component, with those files.
    pub fn of(cluster: &Cluster, components: &[&dyn Component]) -> StateHolders {
        let declared: Vec<_> = components
            .iter()
            .filter(|c| c.enabled(cluster))
            .flat_map(|c| c.state_files(cluster).into_iter().map(move |f| (c.name(), f)))
            .collect();
        let hosts = cluster
            .hosts
            .iter()
            .map(|host| {
                let files: Vec<PushFile> = declared
                    .iter()
                    .filter(|(_, f)| host.roles.iter().any(|r| r.as_str() == f.role))
                    .map(|(component, f)| PushFile {
                        component: component.to_string(),
                        path: f.path.clone(),
                        mode: f.mode,
                        optional: f.optional,
                    })
                    .collect();
                (host.name.clone(), files)
            })
            .filter(|(_, files)| !files.is_empty())
            .collect();
        StateHolders { hosts }
    }

    pub fn host_names(&self) -> Vec<String> {
        self.hosts.iter().map(|(name, _)| name.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    fn files(&self, host: &str) -> Option<&[PushFile]> {
        self.hosts.iter().find(|(h, _)| h == host).map(|(_, f)| f.as_slice())
    }
}

impl BackupInstall {
    /// Scheduled backups of `cluster` to `target` on `on_calendar`, encrypted to the inventory's
    /// `backup.recipients` (always: the timer has nobody to say --no-encryption), with the state of
    /// `components` pushed by the hosts holding it.
    pub fn new(
        cluster: &Cluster,
        on_calendar: String,
        target: StoreUrl,
        s3_path_style: bool,
        components: &[&dyn Component],
    ) -> Result<BackupInstall, InstallError> {
        check_calendar(&on_calendar)?;
        let backup = cluster.backup.as_ref();
        let recipients = backup.map(|b| b.recipients.clone()).unwrap_or_default();
        Encryption::from_args(&recipients, false).map_err(InstallError::Recipients)?;
        Ok(BackupInstall {
            on_calendar,
            target,
            s3_path_style,
            recipients,
            retention: backup.map(|b| b.retention).unwrap_or_default().into(),
            inventory: read(&cluster.source_path)?,
            state: StateHolders::of(cluster, components),
        })
    }

    /// A file:// target is a directory on each member: backups land on whichever leads.
    pub fn local_directory(&self) -> Option<&Path> {
        match &self.target {
            StoreUrl::File { path } => Some(path),
            _ => None,
        }
    }

    /// The hosts that push components' state (and their files).
    pub fn state(&self) -> &StateHolders {
        &self.state
    }
}

/// A drill schedule to install, checked before anything connects.
#[derive(Debug, Clone)]
pub struct DrillInstall {
    on_calendar: String,
    target: StoreUrl,
    s3_path_style: bool,
    identity_path: PathBuf,
    identity: Vec<u8>,
    recipients: Vec<String>,
    drill: DrillInventory,
    expect_keys: Vec<String>,
}

impl DrillInstall {
    /// Scheduled drills of the backups in `target`, decrypted with the age identity at
    /// `identity_path`, into the hosts of the drill inventory `drill` (loaded from `drill_path`),
    /// which must share no host with `cluster`.
    #[allow(clippy::too_many_arguments)] // one request's fields, each resolved by the caller
    pub fn new(
        cluster: &Cluster,
        on_calendar: String,
        target: StoreUrl,
        s3_path_style: bool,
        identity_path: &Path,
        drill_path: &Path,
        drill: &Cluster,
        expect_keys: Vec<String>,
    ) -> Result<DrillInstall, InstallError> {
        check_calendar(&on_calendar)?;
        let recipients = identity_recipients(identity_path).map_err(InstallError::IdentityFile)?;
        if recipients.is_empty() {
            return Err(InstallError::NoIdentity {
                path: identity_path.to_path_buf(),
            });
        }
        let identity = read(identity_path)?;
        let drill = DrillInventory::prepare(drill_path, drill, cluster)?;
        Ok(DrillInstall {
            on_calendar,
            target,
            s3_path_style,
            identity_path: identity_path.to_path_buf(),
            identity,
            recipients,
            drill,
            expect_keys,
        })
    }

    pub fn target(&self) -> &StoreUrl {
        &self.target
    }

    /// A file:// target is a directory on each member: a drill reads the leader's copy.
    pub fn local_directory(&self) -> Option<&Path> {
        match &self.target {
            StoreUrl::File { path } => Some(path),
            _ => None,
        }
    }

    /// A scheduled drill that cannot decrypt the backups would fail every time: check the
    /// identity against the newest complete backup's recipients (when there is one).
    pub async fn check_identity_opens_latest(&self, store: &Arc<dyn Store>) -> Result<(), InstallError> {
        let id = match resolve(store, &VerifyTarget::Latest).await {
            Ok(id) => id,
            Err(BackupError::NoCompleteBackup { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let manifest = manifest_of(store, &id).await?;
        if !manifest.encrypted || manifest.recipients.iter().any(|r| self.recipients.contains(r)) {
            return Ok(());
        }
        Err(InstallError::IdentityCannotDecrypt {
            path: self.identity_path.clone(),
            id: id.to_string(),
            recipients: manifest.recipients.clone(),
            ours: self.recipients.clone(),
        })
    }
}

/// The drill hosts' inventory as the members use it: SSH key and known_hosts pointing at the
/// root-only copies next to it.
#[derive(Debug, Clone)]
struct DrillInventory {
    yaml: String,
    ssh_key: Vec<u8>,
    known_hosts: Vec<u8>,
}

impl DrillInventory {
    fn prepare(path: &Path, drill: &Cluster, cluster: &Cluster) -> Result<DrillInventory, InstallError> {
        let refuse = |reason: String, hint: &'static str| InstallError::DrillTarget {
            path: path.display().to_string(),
            reason,
            hint,
        };
        let hosts: Vec<_> = drill.hosts_with_role(Role::Etcd).collect();
        for host in &hosts {
            if let Some(same) = cluster
                .hosts
                .iter()
                .find(|h| h.address == host.address || h.private_address == host.private_address)
            {
                return Err(refuse(
                    format!(
                        "drill host {} ({}) is host {} of cluster {}: each drill wipes its drill hosts",
                        host.name, host.address, same.name, cluster.name
                    ),
                    "list dedicated machines in the drill inventory, never the cluster's own",
                ));
            }
        }
        if let Some(mirror) = drill.artifacts.mirror.as_deref().filter(|m| m.starts_with("file://")) {
            return Err(refuse(
                format!(
                    "artifacts.mirror {mirror} is a directory on this machine, but scheduled drills run on the etcd members"
                ),
                "serve the mirror over http(s) and point artifacts.mirror at it, or leave it out (upstream downloads)",
            ));
        }
        let first = hosts.first().ok_or_else(|| {
            refuse(
                "no host with the etcd role".into(),
                "give the drill hosts `roles: [etcd]`",
            )
        })?;
        let key_path = first.ssh.identity_file.clone().ok_or_else(|| {
            refuse(
                "no ssh.identity_file: scheduled drills have no ssh-agent".into(),
                "set ssh.identity_file in the drill inventory (the key is copied to the members, root-only)",
            )
        })?;
        for host in &hosts {
            if host.ssh.bastion.is_some() {
                return Err(refuse(
                    format!(
                        "host {} goes through a bastion, which scheduled drills do not support yet",
                        host.name
                    ),
                    "give the members direct SSH access to the drill hosts",
                ));
            }
            if host.ssh.identity_file.as_ref() != Some(&key_path)
                || host.ssh.known_hosts_file != first.ssh.known_hosts_file
            {
                return Err(refuse(
                    format!(
                        "host {} uses another SSH key or known_hosts file than {}",
                        host.name, first.name
                    ),
                    "use one ssh.identity_file and known_hosts_file for all drill hosts",
                ));
            }
        }
        let ssh_key = read(&key_path)?;
        let known_hosts = match std::fs::read(&first.ssh.known_hosts_file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(InstallError::Read {
                    path: first.ssh.known_hosts_file.clone(),
                    source,
                })
            }
        };
        let text = std::fs::read_to_string(path).map_err(|source| InstallError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let yaml = rewrite_ssh_paths(&text).map_err(|source| InstallError::DrillInventoryYaml {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(DrillInventory {
            yaml,
            ssh_key,
            known_hosts,
        })
    }
}

/// The inventory with the SSH key and known_hosts set once at the top (the members' copies)
/// and per-host overrides of them removed. Comments are not kept: the copy is generated.
fn rewrite_ssh_paths(text: &str) -> Result<String, serde_yaml::Error> {
    use serde_yaml::{Mapping, Value};
    let mut doc: Value = serde_yaml::from_str(text)?;
    let key = |k: &str| Value::String(k.to_string());
    if let Some(root) = doc.as_mapping_mut() {
        let ssh = root.entry(key("ssh")).or_insert_with(|| Value::Mapping(Mapping::new()));
        if !ssh.is_mapping() {
            *ssh = Value::Mapping(Mapping::new());
        }
        if let Some(ssh) = ssh.as_mapping_mut() {
            ssh.insert(key("identity_file"), key(DRILL_SSH_KEY_PATH));
            ssh.insert(key("known_hosts_file"), key(DRILL_KNOWN_HOSTS_PATH));
            ssh.insert(key("agent"), Value::Bool(false));
        }
        if let Some(hosts) = root.get_mut("hosts").and_then(Value::as_sequence_mut) {
            for host in hosts {
                if let Some(ssh) = host.get_mut("ssh").and_then(Value::as_mapping_mut) {
                    for field in ["identity_file", "known_hosts_file", "agent"] {
                        ssh.remove(field);
                    }
                }
            }
        }
    }
    Ok(format!(
        "# Managed by capstan (`capstan drill schedule`): the drill hosts, as the etcd members reach them.\n{}",
        serde_yaml::to_string(&doc)?
    ))
}

/// Install the backup schedule on every etcd member of `cluster`, and the state push on every host
/// holding components' state (or, in [`Mode::DryRun`], show what that would change).
pub async fn install_backup_schedule(
    cluster: &Cluster,
    install: &BackupInstall,
    mode: Mode,
    progress: Arc<dyn Progress>,
) -> Result<RunReport, InstallError> {
    let state_hosts = install.state.host_names();
    let member_files = |host: &EtcdHost, ops: &mut HostOps, local: &LocalFiles| -> Result<(), InstallError> {
        let config = ScheduleConfig {
            cluster: cluster.name.clone(),
            member: host.name().to_string(),
            target: install.target.to_string(),
            s3_path_style: install.s3_path_style,
            recipients: install.recipients.clone(),
            retention: install.retention,
            inventory: INVENTORY_PATH.into(),
            pki_dir: PKI_DIR.into(),
            local_endpoint: LOCAL_ENDPOINT.into(),
            metrics_file: metrics::DEFAULT_METRICS_FILE.into(),
            state_hosts: state_hosts.clone(),
        };
        let config_yaml = managed_yaml("capstan backup schedule", CONFIG_PATH, &config)?;
        ops.push(root_only(CONFIG_PATH, config_yaml.into_bytes(), false));
        ops.push(root_only(
            ENVIRONMENT_PATH,
            local.environment.clone().into_bytes(),
            true,
        ));
        ops.push(root_only(INVENTORY_PATH, install.inventory.clone(), true));
        Ok(())
    };
    let push = StatePlan::Install {
        holders: &install.state,
        recipients: &install.recipients,
    };
    install_schedule(
        cluster,
        Schedule::Backup,
        &install.on_calendar,
        mode,
        progress,
        member_files,
        push,
    )
    .await
}

/// Install the drill schedule on every etcd member of `cluster` (or, in [`Mode::DryRun`], show
/// what that would change).
pub async fn install_drill_schedule(
    cluster: &Cluster,
    install: &DrillInstall,
    mode: Mode,
    progress: Arc<dyn Progress>,
) -> Result<RunReport, InstallError> {
    let member_files = |host: &EtcdHost, ops: &mut HostOps, local: &LocalFiles| -> Result<(), InstallError> {
        let config = DrillScheduleConfig {
            cluster: cluster.name.clone(),
            member: host.name().to_string(),
            target: install.target.to_string(),
            s3_path_style: install.s3_path_style,
            identity: DRILL_IDENTITY_PATH.into(),
            drill_inventory: DRILL_INVENTORY_PATH.into(),
            expect_keys: install.expect_keys.clone(),
            report: Path::new(DRILL_REPORT_DIR).join("latest"),
            pki_dir: PKI_DIR.into(),
            local_endpoint: LOCAL_ENDPOINT.into(),
        };
        let config_yaml = managed_yaml("capstan drill schedule", DRILL_CONFIG_PATH, &config)?;
        let drill = &install.drill;
        ops.push(root_only(DRILL_CONFIG_PATH, config_yaml.into_bytes(), false));
        ops.push(root_only(
            DRILL_ENVIRONMENT_PATH,
            local.environment.clone().into_bytes(),
            true,
        ));
        ops.push(root_only(DRILL_IDENTITY_PATH, install.identity.clone(), true));
        ops.push(Directory::new(DRILL_DIR).mode(0o700).owner("root").group("root"));
        ops.push(root_only(DRILL_INVENTORY_PATH, drill.yaml.clone().into_bytes(), false));
        ops.push(root_only(DRILL_SSH_KEY_PATH, drill.ssh_key.clone(), true));
        ops.push(root_only(DRILL_KNOWN_HOSTS_PATH, drill.known_hosts.clone(), false));
        Ok(())
    };
    install_schedule(
        cluster,
        Schedule::Drill,
        &install.on_calendar,
        mode,
        progress,
        member_files,
        StatePlan::None,
    )
    .await
}

/// What a schedule's install or removal does on the hosts holding components' state.
#[derive(Clone, Copy)]
enum StatePlan<'a> {
    None,
    /// The push installed, encrypting to `recipients`.
    Install {
        holders: &'a StateHolders,
        recipients: &'a [String],
    },
    /// The push removed.
    Remove(&'a StateHolders),
}

impl StatePlan<'_> {
    fn holders(&self) -> Option<&StateHolders> {
        match self {
            StatePlan::None => None,
            StatePlan::Install { holders, .. } | StatePlan::Remove(holders) => Some(holders),
        }
    }
}

/// The state hosts as the plans see them: each one's transport (a member's own connection when it
/// is one) and, for an install, the push identity it gets and the etcd endpoints.
struct StateSide {
    hosts: Vec<(String, Arc<dyn Transport>)>,
    identities: BTreeMap<String, IssuedCert>,
    ca_pem: String,
    endpoints: Vec<String>,
}

/// Install `schedule` on every member: the shared directory and binary, the files
/// `member_files` pushes for the member, then the units, rendered for `on_calendar`; and the state
/// push on the state hosts (`push`).
async fn install_schedule(
    cluster: &Cluster,
    schedule: Schedule,
    on_calendar: &str,
    mode: Mode,
    progress: Arc<dyn Progress>,
    member_files: impl Fn(&EtcdHost, &mut HostOps, &LocalFiles) -> Result<(), InstallError>,
    push: StatePlan<'_>,
) -> Result<RunReport, InstallError> {
    let local = LocalFiles::read()?;
    let (service, timer) = schedule.units();
    let context = serde_json::json!({
        "cluster_name": cluster.name,
        "binary": BINARY_PATH,
        "config_file": schedule.config_path(),
        "environment_file": schedule.environment_path(),
        "cache_dir": DRILL_CACHE_DIR,
        "on_calendar": on_calendar,
        "service": service,
    });
    let template = schedule.template();
    let service_unit = capstan_templates::render(&format!("{template}.service"), &context)?;
    let timer_unit = capstan_templates::render(&format!("{template}.timer"), &context)?;
    let plans = |hosts: &[EtcdHost], side: &StateSide| -> Result<Vec<HostOps>, InstallError> {
        let mut plans = Vec::new();
        for (host, transport) in connected(hosts) {
            let mut ops = HostOps::new(transport);
            ops.push(Directory::new(CONFIG_DIR).mode(0o700).owner("root").group("root"));
            ops.push(InstalledBinary::new(&local.executable, BINARY_PATH)?);
            member_files(host, &mut ops, &local)?;
            ops.push(SystemdUnit::new(service, service_unit.as_str())?);
            ops.push(SystemdUnit::new(timer, timer_unit.as_str())?.notify([timer]));
            ops.push(Service::new(timer)?.enabled(true).running(true));
            plans.push(ops);
        }
        if let StatePlan::Install { holders, recipients } = push {
            for (name, transport) in &side.hosts {
                let files = holders.files(name).unwrap_or_default();
                let index = match connected(hosts).position(|(h, _)| h.name() == name) {
                    Some(index) => index,
                    None => {
                        let mut ops = HostOps::new(transport.clone());
                        ops.push(Directory::new(CONFIG_DIR).mode(0o700).owner("root").group("root"));
                        ops.push(InstalledBinary::new(&local.executable, BINARY_PATH)?);
                        plans.push(ops);
                        plans.len() - 1
                    }
                };
                push_install_ops(cluster, name, files, recipients, side, &mut plans[index])?;
            }
        }
        Ok(plans)
    };
    on_members(cluster, schedule, Some(on_calendar), mode, progress, push, plans).await
}

/// The state push on one host: its client identity, config and units.
fn push_install_ops(
    cluster: &Cluster,
    host: &str,
    files: &[PushFile],
    recipients: &[String],
    side: &StateSide,
    ops: &mut HostOps,
) -> Result<(), InstallError> {
    let identity = side.identities.get(host).ok_or_else(|| InstallError::PushIdentity {
        host: host.into(),
        reason: "no identity was prepared".into(),
    })?;
    let config = PushConfig {
        cluster: cluster.name.clone(),
        host: host.into(),
        files: files.to_vec(),
        recipients: recipients.to_vec(),
        endpoints: side.endpoints.clone(),
        ca_cert: PUSH_CA_PATH.into(),
        client_cert: PUSH_CERT_PATH.into(),
        client_key: PUSH_KEY_PATH.into(),
        metrics_file: PUSH_METRICS_FILE.into(),
    };
    let yaml = managed_yaml("capstan backup schedule", PUSH_CONFIG_PATH, &config)?;
    ops.push(Directory::new(PUSH_PKI_DIR).mode(0o700).owner("root").group("root"));
    ops.push(root_only(PUSH_CA_PATH, side.ca_pem.clone().into_bytes(), false));
    ops.push(root_only(PUSH_CERT_PATH, identity.cert_pem.clone().into_bytes(), false));
    ops.push(root_only(PUSH_KEY_PATH, identity.key_pem.clone().into_bytes(), true));
    ops.push(root_only(PUSH_CONFIG_PATH, yaml.into_bytes(), false));
    // The path unit also watches the config: new recipients are pushed at once.
    let mut watched: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    watched.push(PUSH_CONFIG_PATH);
    let context = serde_json::json!({
        "cluster_name": cluster.name,
        "binary": BINARY_PATH,
        "config_file": PUSH_CONFIG_PATH,
        "service": PUSH_SERVICE_UNIT,
        "paths": watched,
    });
    let render = |kind: &str| capstan_templates::render(&format!("backup/capstan-state-push.{kind}"), &context);
    ops.push(SystemdUnit::new(PUSH_SERVICE_UNIT, render("service")?.as_str())?);
    ops.push(SystemdUnit::new(PUSH_PATH_UNIT, render("path")?.as_str())?.notify([PUSH_PATH_UNIT]));
    ops.push(SystemdUnit::new(PUSH_TIMER_UNIT, render("timer")?.as_str())?.notify([PUSH_TIMER_UNIT]));
    ops.push(Service::new(PUSH_PATH_UNIT)?.enabled(true).running(true));
    ops.push(Service::new(PUSH_TIMER_UNIT)?.enabled(true).running(true));
    Ok(())
}

/// Uninstall `schedule` from every etcd member: stop and remove its units and its files, and the
/// shared binary and directory unless the other schedule still uses them; for the backup
/// schedule, the state push from the hosts of `state` too.
pub async fn remove_schedule(
    cluster: &Cluster,
    schedule: Schedule,
    state: &StateHolders,
    mode: Mode,
    progress: Arc<dyn Progress>,
) -> Result<RunReport, InstallError> {
    let push = match schedule {
        Schedule::Backup if !state.is_empty() => StatePlan::Remove(state),
        _ => StatePlan::None,
    };
    let plans = |hosts: &[EtcdHost], side: &StateSide| -> Result<Vec<HostOps>, InstallError> {
        let (service, timer) = schedule.units();
        let mut plans = Vec::new();
        let pushes = |name: &str| side.hosts.iter().any(|(h, _)| h == name);
        for (host, transport) in connected(hosts) {
            let mut ops = HostOps::new(transport);
            push_timer_removal(&mut ops, service, timer);
            for path in schedule.own_paths() {
                ops.push(Absent::new(path));
            }
            if pushes(host.name()) {
                for op in push_teardown_ops() {
                    ops.ops.push(op);
                }
            }
            push_shared_removal(&mut ops, schedule.other_config());
            plans.push(ops);
        }
        for (name, transport) in &side.hosts {
            if connected(hosts).any(|(h, _)| h.name() == name) {
                continue;
            }
            let mut ops = HostOps::new(transport.clone());
            for op in push_teardown_ops() {
                ops.ops.push(op);
            }
            push_shared_removal(&mut ops, schedule.other_config());
            plans.push(ops);
        }
        Ok(plans)
    };
    on_members(cluster, schedule, None, mode, progress, push, plans).await
}

/// Connect to every member (refusing when any is unreachable), and to the state hosts of `push`
/// that are not members; let the first member judge `calendar`, plan with `plans` and run the
/// plans in `mode`; the connections are closed on every path.
async fn on_members(
    cluster: &Cluster,
    schedule: Schedule,
    calendar: Option<&str>,
    mode: Mode,
    progress: Arc<dyn Progress>,
    push: StatePlan<'_>,
    plans: impl FnOnce(&[EtcdHost], &StateSide) -> Result<Vec<HostOps>, InstallError>,
) -> Result<RunReport, InstallError> {
    let (hosts, connections) = reachable_members(cluster, schedule.what()).await?;
    let others = match connect_state_hosts(cluster, push, &hosts).await {
        Ok(others) => others,
        Err(e) => {
            connections.close_all().await;
            return Err(e);
        }
    };
    let result = async {
        if let (Some(calendar), Some(first)) = (calendar, hosts.first()) {
            validate_calendar_on(first, calendar).await?;
        }
        let side = state_side(cluster, push, &hosts, &others).await?;
        let plans = plans(&hosts, &side)?;
        let runner = Runner::new(
            RunOptions {
                mode,
                ..RunOptions::default()
            },
            progress,
        );
        Ok(runner.run(plans).await)
    }
    .await;
    connections.close_all().await;
    others.close_all().await;
    result
}

/// The state hosts that are not etcd members, connected; every one must be reachable.
async fn connect_state_hosts(
    cluster: &Cluster,
    push: StatePlan<'_>,
    members: &[EtcdHost],
) -> Result<Connections, InstallError> {
    let names: Vec<String> = push.holders().map(StateHolders::host_names).unwrap_or_default();
    let targets: Vec<_> = cluster
        .hosts
        .iter()
        .filter(|h| names.contains(&h.name) && !members.iter().any(|m| m.name() == h.name))
        .map(ssh_target)
        .collect();
    let (connections, failures) = Connections::connect(&targets, 8).await;
    if !failures.is_empty() {
        connections.close_all().await;
        return Err(InstallError::StateHostsUnreachable {
            hosts: failures.iter().map(|(h, e)| format!("{h} ({e})")).collect(),
        });
    }
    Ok(connections)
}

/// Each state host's transport; for an install also the etcd CA (read from the members), each
/// host's push identity (its current one while it fits, else a new one) and the endpoints.
async fn state_side(
    cluster: &Cluster,
    push: StatePlan<'_>,
    members: &[EtcdHost],
    others: &Connections,
) -> Result<StateSide, InstallError> {
    let mut side = StateSide {
        hosts: Vec::new(),
        identities: BTreeMap::new(),
        ca_pem: String::new(),
        endpoints: Vec::new(),
    };
    let Some(holders) = push.holders() else {
        return Ok(side);
    };
    for name in holders.host_names() {
        let transport = connected(members)
            .find(|(h, _)| h.name() == name)
            .map(|(_, t)| t)
            .or_else(|| others.get(&name));
        if let Some(transport) = transport {
            side.hosts.push((name, transport));
        }
    }
    if !matches!(push, StatePlan::Install { .. }) {
        return Ok(side);
    }
    let ca = fetch_ca(members).await?;
    let request = CertRequest::client(STATE_PUSH_CLIENT_CN);
    for (name, transport) in &side.hosts {
        let current = read_push_identity(name, transport.as_ref()).await?;
        let keep = current.filter(|c| {
            key_matches(&c.cert_pem, &c.key_pem)
                && needs_reissue(Some(&c.cert_pem), &ca, &request, SystemTime::now()).is_none()
        });
        let identity = match keep {
            Some(identity) => identity,
            None => ca.issue(&request).map_err(InstallError::Issue)?,
        };
        side.identities.insert(name.clone(), identity);
    }
    side.ca_pem = ca.cert_pem().to_string();
    side.endpoints = cluster
        .hosts_with_role(Role::Etcd)
        .map(|h| format!("https://{}:{DEFAULT_CLIENT_PORT}", host_for_url(&h.private_address)))
        .collect();
    Ok(side)
}

/// The push identity a host holds (certificate and key both present), if any.
async fn read_push_identity(host: &str, transport: &dyn Transport) -> Result<Option<IssuedCert>, InstallError> {
    let fail = |reason: String| InstallError::PushIdentity {
        host: host.into(),
        reason,
    };
    let text = |data: Option<Vec<u8>>| {
        data.map(|bytes| String::from_utf8(bytes).map_err(|_| fail("not text".into())))
            .transpose()
    };
    let mut files = read_remote_files(transport, &[PUSH_CERT_PATH, PUSH_KEY_PATH])
        .await
        .map_err(fail)?
        .into_iter();
    let (cert_pem, key_pem) = (text(files.next().flatten())?, text(files.next().flatten())?);
    Ok(cert_pem
        .zip(key_pem)
        .map(|(cert_pem, key_pem)| IssuedCert { cert_pem, key_pem }))
}

/// Every etcd member, connected; an error naming the unreachable ones (`what` gets installed
/// on every member, so a partial install is refused).
pub async fn reachable_members(
    cluster: &Cluster,
    what: &'static str,
) -> Result<(Vec<EtcdHost>, Connections), InstallError> {
    let (hosts, connections) = inspect_hosts(cluster, 8, None).await?;
    let unreachable = unreachable_hosts(&hosts);
    if !unreachable.is_empty() {
        connections.close_all().await;
        return Err(InstallError::Unreachable {
            hosts: unreachable,
            what,
        });
    }
    Ok((hosts, connections))
}

fn connected(hosts: &[EtcdHost]) -> impl Iterator<Item = (&EtcdHost, Arc<dyn Transport>)> {
    hosts.iter().filter_map(|h| h.transport.clone().map(|t| (h, t)))
}

/// Let one member's systemd judge the calendar expression before it goes into a unit.
async fn validate_calendar_on(host: &EtcdHost, calendar: &str) -> Result<(), InstallError> {
    let Some(transport) = &host.transport else {
        return Ok(());
    };
    let command = format!("systemd-analyze calendar -- {}", quote(calendar));
    let output = transport
        .exec(&command, &ExecOptions::default())
        .await
        .map_err(|source| InstallError::CalendarCheck {
            host: host.name().to_string(),
            source,
        })?;
    if output.success() {
        return Ok(());
    }
    Err(InstallError::InvalidCalendar {
        calendar: calendar.to_string(),
        detail: output.stderr_str().trim().to_string(),
    })
}

/// What both schedules copy from this machine: the running capstan binary and the S3 settings
/// of its environment.
struct LocalFiles {
    executable: PathBuf,
    environment: String,
}

impl LocalFiles {
    fn read() -> Result<LocalFiles, InstallError> {
        Ok(LocalFiles {
            environment: environment_file(|name| std::env::var(name).ok())?,
            executable: std::env::current_exe().map_err(InstallError::Executable)?,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, InstallError> {
    std::fs::read(path).map_err(|source| InstallError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn root_only(path: &str, content: Vec<u8>, sensitive: bool) -> File {
    File::new(path, content)
        .mode(0o600)
        .owner("root")
        .group("root")
        .sensitive(sensitive)
}

fn managed_yaml(command: &str, path: &'static str, config: &impl serde::Serialize) -> Result<String, InstallError> {
    let yaml = serde_yaml::to_string(config).map_err(|source| InstallError::RenderConfig { path, source })?;
    Ok(format!(
        "# Managed by capstan (`{command}`); changes here are overwritten.\n{yaml}"
    ))
}

/// Stop a schedule's timer and service and remove both units.
/// Everything both schedules install on a member, as removals (`capstan reset`): the timers
/// stopped and disabled, units, configs, credentials, reports and metrics, the shared binary, the
/// config directory and the drills' artifact cache.
pub fn teardown_ops() -> Vec<Arc<dyn Operation>> {
    let mut ops: Vec<Arc<dyn Operation>> = Vec::new();
    for schedule in [Schedule::Drill, Schedule::Backup] {
        let (service, timer) = schedule.units();
        if let Ok(timer) = Service::new(timer) {
            ops.push(Arc::new(timer.enabled(false).running(false)));
        }
        if let Ok(service) = Service::new(service) {
            ops.push(Arc::new(service.running(false)));
        }
        ops.push(Arc::new(RemovedUnit::new(timer)));
        ops.push(Arc::new(RemovedUnit::new(service)));
        for path in schedule.own_paths() {
            ops.push(Arc::new(Absent::new(path)));
        }
    }
    ops.extend(push_teardown_ops());
    for path in [BINARY_PATH, CONFIG_DIR, DRILL_CACHE_DIR] {
        ops.push(Arc::new(Absent::new(path)));
    }
    ops
}

/// The state push on a host, as removals: its path unit and timer stopped and disabled, its
/// service stopped, the three units, its config, client identity and metrics.
pub fn push_teardown_ops() -> Vec<Arc<dyn Operation>> {
    let mut ops: Vec<Arc<dyn Operation>> = Vec::new();
    for unit in [PUSH_PATH_UNIT, PUSH_TIMER_UNIT] {
        if let Ok(service) = Service::new(unit) {
            ops.push(Arc::new(service.enabled(false).running(false)));
        }
    }
    if let Ok(service) = Service::new(PUSH_SERVICE_UNIT) {
        ops.push(Arc::new(service.running(false)));
    }
    for unit in [PUSH_PATH_UNIT, PUSH_TIMER_UNIT, PUSH_SERVICE_UNIT] {
        ops.push(Arc::new(RemovedUnit::new(unit)));
    }
    for path in [PUSH_CONFIG_PATH, PUSH_PKI_DIR, PUSH_METRICS_FILE] {
        ops.push(Arc::new(Absent::new(path)));
    }
    ops
}

fn push_timer_removal(ops: &mut HostOps, service: &str, timer: &str) {
    // Unit names are constants that pass validation; a failure here is a bug.
    if let Ok(timer) = Service::new(timer) {
        ops.push(timer.enabled(false).running(false));
    }
    if let Ok(service) = Service::new(service) {
        ops.push(service.running(false));
    }
    ops.push(RemovedUnit::new(timer));
    ops.push(RemovedUnit::new(service));
}

/// The binary and /etc/capstan are shared by the backup and drill schedules: the binary goes
/// when the other schedule's config (`other_config`) is absent too, the directory when empty.
fn push_shared_removal(ops: &mut HostOps, other_config: &str) {
    let binary = quote(BINARY_PATH);
    ops.push(
        Command::new(&format!("remove {BINARY_PATH}"), &format!("rm -f -- {binary}"))
            .unless(&format!("[ ! -e {binary} ] || [ -e {} ]", quote(other_config))),
    );
    let dir = quote(CONFIG_DIR);
    ops.push(
        Command::new(
            &format!("remove empty directory {CONFIG_DIR}"),
            &format!("rmdir -- {dir}"),
        )
        .unless(&format!("[ ! -d {dir} ] || [ -n \"$(ls -A -- {dir})\" ]")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_paths_are_rewritten_once_at_the_top() {
        let text = "cluster: {name: drill}\nssh:\n  user: root\n  identity_file: ./id\nhosts:\n  - name: d-1\n    address: 10.0.0.5\n    roles: [etcd]\n    ssh: {port: 2222, identity_file: /x, known_hosts_file: /y, agent: true}\n";
        let yaml = rewrite_ssh_paths(text).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(doc["ssh"]["identity_file"].as_str(), Some(DRILL_SSH_KEY_PATH));
        assert_eq!(doc["ssh"]["known_hosts_file"].as_str(), Some(DRILL_KNOWN_HOSTS_PATH));
        assert_eq!(doc["ssh"]["user"].as_str(), Some("root"));
        let host_ssh = doc["hosts"][0]["ssh"].as_mapping().unwrap();
        assert_eq!(host_ssh.len(), 1, "{yaml}");
        assert_eq!(doc["hosts"][0]["ssh"]["port"].as_u64(), Some(2222));
    }

    #[test]
    fn ssh_section_is_created_when_missing() {
        let yaml = rewrite_ssh_paths("cluster: {name: drill}\nhosts: []\n").unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(doc["ssh"]["agent"].as_bool(), Some(false));
        assert!(yaml.starts_with("# Managed by capstan"), "{yaml}");
    }
}
