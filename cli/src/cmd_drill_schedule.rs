//! `capstan drill schedule`: disaster-recovery drills on a calendar. A systemd timer on every
//! etcd member of the cluster; when it fires, only the etcd leader drills (like scheduled
//! backups), restoring the latest backup into dedicated drill hosts (another inventory), then
//! wiping them. Reports and Prometheus textfile metrics stay on the member. See docs/restore.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use capstan_backup::ops::identity_recipients;
use capstan_backup::restore::{manifest_of, resolve};
use capstan_backup::schedule::{
    check_calendar, environment_file, local_member_leads, DrillScheduleConfig, InstalledBinary, BINARY_PATH,
    CONFIG_DIR, CONFIG_PATH, DRILL_CACHE_DIR, DRILL_CONFIG_PATH, DRILL_DIR, DRILL_ENVIRONMENT_PATH,
    DRILL_IDENTITY_PATH, DRILL_INVENTORY_PATH, DRILL_KNOWN_HOSTS_PATH, DRILL_REPORT_DIR, DRILL_SERVICE_UNIT,
    DRILL_SSH_KEY_PATH, DRILL_TIMER_UNIT, LOCAL_ENDPOINT, PKI_DIR,
};
use capstan_backup::{BackupError, VerifyTarget};
use capstan_etcd::inspect::EtcdHost;
use capstan_inventory::{Cluster, Role};
use capstan_provisioner::ops::{Directory, File, OpError};
use capstan_provisioner::runner::HostOps;

use crate::cli::{BackupTargetArgs, DrillArgs, DrillCommand, DrillScheduleArgs};
use crate::cmd_backup::{
    backup_failure, converge_members, open, push_timer_units, reachable_members, schedule_removal_ops, target_url,
    validate_calendar_on,
};
use crate::cmd_inventory::load;
use crate::output::{Failure, Output};

pub fn run(command: DrillCommand, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    match command {
        DrillCommand::Schedule(args) => schedule(args, inventory, out),
        DrillCommand::Run { config } => run_member(&config, out),
    }
}

fn schedule(args: DrillScheduleArgs, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    let cluster = load(inventory)?;
    let runtime = tokio::runtime::Runtime::new()?;
    if args.remove {
        return runtime.block_on(async {
            let (hosts, connections) = reachable_members(&cluster, "the drill timer").await?;
            let plans = removal_ops(&hosts);
            let code = converge_members(
                plans,
                args.dry_run,
                "drill schedule removal",
                "capstan drill schedule --remove",
                out,
            )
            .await;
            connections.close_all().await;
            code
        });
    }
    let inputs = install_inputs(&cluster, &args)?;
    if let Some(path) = inputs.target.strip_prefix("file://") {
        out.status(format!(
            "warning: {path} is a directory on each member: a scheduled drill reads the backups in the leading \
             member's own copy of it; use S3, or a shared mount (e.g. NFS) at that path on every member"
        ));
    }
    runtime.block_on(async {
        check_identity_opens_latest(&args, &inputs).await?;
        let (hosts, connections) = reachable_members(&cluster, "the drill timer").await?;
        let plans = match install_ops(&cluster, &args, &inputs, &hosts).await {
            Ok(plans) => plans,
            Err(e) => {
                connections.close_all().await;
                return Err(e);
            }
        };
        let code = converge_members(plans, args.dry_run, "drill schedule", "capstan drill schedule", out).await;
        connections.close_all().await;
        code
    })
}

/// Everything the install needs, read and checked before connecting anywhere.
struct InstallInputs {
    on_calendar: String,
    target: String,
    identity: Vec<u8>,
    identity_path: PathBuf,
    drill: PreparedDrillInventory,
}

fn install_inputs(cluster: &Cluster, args: &DrillScheduleArgs) -> anyhow::Result<InstallInputs> {
    let required = |flag: &str| Failure::new(format!("{flag} is required (unless --remove)")).code(2);
    let on_calendar = args.on_calendar.clone().ok_or_else(|| required("--on-calendar"))?;
    check_calendar(&on_calendar).map_err(|e| Failure::new(e.to_string()).code(2))?;
    let identity_path = args.identity.clone().ok_or_else(|| required("--identity"))?;
    let recipients = identity_recipients(&identity_path).map_err(|e| {
        Failure::new(e.to_string()).hint("pass an age identity file (AGE-SECRET-KEY-1...), as written by age-keygen")
    })?;
    if recipients.is_empty() {
        return Err(Failure::new(format!(
            "{}: no X25519 identity (AGE-SECRET-KEY-1...) in the file",
            identity_path.display()
        ))
        .into());
    }
    let identity =
        std::fs::read(&identity_path).map_err(|e| Failure::new(format!("reading {}: {e}", identity_path.display())))?;
    let drill_path = args.drill_target.clone().ok_or_else(|| required("--drill-target"))?;
    let drill = prepare_drill_inventory(&drill_path, cluster)?;
    let target = target_url(&args.target, Some(cluster))?.to_string();
    Ok(InstallInputs {
        on_calendar,
        target,
        identity,
        identity_path,
        drill,
    })
}

/// A scheduled drill that cannot decrypt the backups would fail every time: check the identity
/// against the newest complete backup's recipients now (when there is one).
async fn check_identity_opens_latest(args: &DrillScheduleArgs, inputs: &InstallInputs) -> anyhow::Result<()> {
    let url = capstan_backup::StoreUrl::parse(&inputs.target).map_err(|e| Failure::new(e.to_string()).code(2))?;
    let store = open(&url, &args.target).await?;
    let id = match resolve(&store, &VerifyTarget::Latest).await {
        Ok(id) => id,
        Err(BackupError::NoCompleteBackup { .. }) => return Ok(()),
        Err(e) => return Err(backup_failure(e).into()),
    };
    let manifest = manifest_of(&store, &id).await.map_err(backup_failure)?;
    if !manifest.encrypted {
        return Ok(());
    }
    let ours = identity_recipients(&inputs.identity_path).map_err(|e| Failure::new(e.to_string()))?;
    if manifest.recipients.iter().any(|r| ours.contains(r)) {
        return Ok(());
    }
    Err(Failure::new(format!(
        "{} cannot decrypt the latest backup {id}: it is encrypted to {}, the identity's public key is {}",
        inputs.identity_path.display(),
        manifest.recipients.join(", "),
        ours.join(", ")
    ))
    .hint("pass the identity of one of the backup's recipients (or add the drill key to backup.recipients)")
    .into())
}

/// The drill hosts' inventory as the members will use it: SSH key and known_hosts pointing at
/// the root-only copies next to it.
struct PreparedDrillInventory {
    yaml: String,
    ssh_key: Vec<u8>,
    known_hosts: Vec<u8>,
}

fn prepare_drill_inventory(path: &Path, cluster: &Cluster) -> anyhow::Result<PreparedDrillInventory> {
    let drill = load(Some(path))?;
    let shown = path.display();
    let refuse = |reason: String, hint: &str| -> anyhow::Error {
        Failure::new(format!("--drill-target {shown}: {reason}"))
            .hint(hint.to_string())
            .code(2)
            .into()
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
            format!("artifacts.mirror {mirror} is a directory on this machine, but scheduled drills run on the etcd members"),
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
        if host.ssh.identity_file.as_ref() != Some(&key_path) || host.ssh.known_hosts_file != first.ssh.known_hosts_file
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
    let ssh_key = std::fs::read(&key_path).map_err(|e| Failure::new(format!("reading {}: {e}", key_path.display())))?;
    let known_hosts = match std::fs::read(&first.ssh.known_hosts_file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Failure::new(format!("reading {}: {e}", first.ssh.known_hosts_file.display())).into()),
    };
    let text = std::fs::read_to_string(path).map_err(|e| Failure::new(format!("reading {shown}: {e}")))?;
    let yaml = rewrite_ssh_paths(&text).map_err(|e| Failure::new(format!("{shown}: {e}")))?;
    Ok(PreparedDrillInventory {
        yaml,
        ssh_key,
        known_hosts,
    })
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

async fn install_ops(
    cluster: &Cluster,
    args: &DrillScheduleArgs,
    inputs: &InstallInputs,
    hosts: &[EtcdHost],
) -> anyhow::Result<Vec<HostOps>> {
    if let Some(first) = hosts.first() {
        validate_calendar_on(first, &inputs.on_calendar).await?;
    }
    let environment = environment_file(|name| std::env::var(name).ok()).map_err(|e| Failure::new(e.to_string()))?;
    let executable =
        std::env::current_exe().map_err(|e| Failure::new(format!("finding the running capstan executable: {e}")))?;
    let context = serde_json::json!({
        "cluster_name": cluster.name,
        "binary": BINARY_PATH,
        "config_file": DRILL_CONFIG_PATH,
        "environment_file": DRILL_ENVIRONMENT_PATH,
        "cache_dir": DRILL_CACHE_DIR,
        "on_calendar": inputs.on_calendar,
        "service": DRILL_SERVICE_UNIT,
    });
    let render = |name: &str| capstan_templates::render(name, &context).map_err(|e| Failure::new(e.to_string()));
    let service_unit = render("drill/capstan-drill.service")?;
    let timer_unit = render("drill/capstan-drill.timer")?;
    let op_failure = |e: OpError| Failure::new(e.to_string());
    let root_only = |path: &str, content: Vec<u8>, sensitive: bool| {
        File::new(path, content)
            .mode(0o600)
            .owner("root")
            .group("root")
            .sensitive(sensitive)
    };

    let mut plans = Vec::new();
    for host in hosts {
        let Some(transport) = host.transport.clone() else {
            continue;
        };
        let config = DrillScheduleConfig {
            cluster: cluster.name.clone(),
            member: host.name().to_string(),
            target: inputs.target.clone(),
            s3_path_style: args.target.s3_path_style,
            identity: DRILL_IDENTITY_PATH.into(),
            drill_inventory: DRILL_INVENTORY_PATH.into(),
            expect_keys: crate::cmd_drill::merged_keys(&args.expect_keys, Some(cluster)),
            report: Path::new(DRILL_REPORT_DIR).join("latest"),
            pki_dir: PKI_DIR.into(),
            local_endpoint: LOCAL_ENDPOINT.into(),
        };
        let config_yaml = format!(
            "# Managed by capstan (`capstan drill schedule`); changes here are overwritten.\n{}",
            serde_yaml::to_string(&config).map_err(|e| Failure::new(format!("rendering {DRILL_CONFIG_PATH}: {e}")))?
        );
        let mut ops = HostOps::new(transport);
        ops.push(Directory::new(CONFIG_DIR).mode(0o700).owner("root").group("root"));
        ops.push(InstalledBinary::new(&executable, BINARY_PATH).map_err(op_failure)?);
        ops.push(root_only(DRILL_CONFIG_PATH, config_yaml.into_bytes(), false));
        ops.push(root_only(
            DRILL_ENVIRONMENT_PATH,
            environment.clone().into_bytes(),
            true,
        ));
        ops.push(root_only(DRILL_IDENTITY_PATH, inputs.identity.clone(), true));
        ops.push(Directory::new(DRILL_DIR).mode(0o700).owner("root").group("root"));
        ops.push(root_only(
            DRILL_INVENTORY_PATH,
            inputs.drill.yaml.clone().into_bytes(),
            false,
        ));
        ops.push(root_only(DRILL_SSH_KEY_PATH, inputs.drill.ssh_key.clone(), true));
        ops.push(root_only(
            DRILL_KNOWN_HOSTS_PATH,
            inputs.drill.known_hosts.clone(),
            false,
        ));
        push_timer_units(
            &mut ops,
            (DRILL_SERVICE_UNIT, &service_unit),
            (DRILL_TIMER_UNIT, &timer_unit),
        )?;
        plans.push(ops);
    }
    Ok(plans)
}

fn removal_ops(hosts: &[EtcdHost]) -> Vec<HostOps> {
    schedule_removal_ops(
        hosts,
        (DRILL_SERVICE_UNIT, DRILL_TIMER_UNIT),
        &[
            DRILL_CONFIG_PATH,
            DRILL_ENVIRONMENT_PATH,
            DRILL_IDENTITY_PATH,
            DRILL_DIR,
            DRILL_REPORT_DIR,
        ],
        CONFIG_PATH,
    )
}

/// `capstan drill run --config FILE` on a member (the timer's service): the leader drills the
/// latest backup into the drill hosts; the others exit 0 at once.
fn run_member(config_path: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| Failure::new(format!("reading {}: {e}", config_path.display())))?;
    let config: DrillScheduleConfig = serde_yaml::from_str(&text).map_err(|e| {
        Failure::new(format!("{}: {e}", config_path.display())).hint("run `capstan drill schedule` again")
    })?;
    let leads = tokio::runtime::Runtime::new()?
        .block_on(local_member_leads(&config.pki_dir, &config.local_endpoint))
        .map_err(|e| Failure::new(format!("{}: {e}", config.member)))?;
    if !leads {
        out.status(format!(
            "{}: not the etcd leader; the leader runs this drill",
            config.member
        ));
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(dir) = config.report.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Failure::new(format!("creating {}: {e}", dir.display())))?;
    }
    out.status(format!(
        "{}: the etcd leader; drilling the latest backup",
        config.member
    ));
    let args = DrillArgs {
        command: None,
        from: "latest".into(),
        target: BackupTargetArgs {
            target: Some(config.target.clone()),
            s3_path_style: config.s3_path_style,
        },
        identity: Some(config.identity.clone()),
        drill_target: config.drill_inventory.display().to_string(),
        report: Some(config.report.clone()),
        expect_keys: config.expect_keys.clone(),
        keep: false,
    };
    crate::cmd_drill::drill(args, None, out)
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
