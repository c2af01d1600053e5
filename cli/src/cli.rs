//! The one definition of every flag: help, completions and man pages are generated from it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "capstan",
    version,
    about = "Install, back up, restore and verify highly available clusters over SSH"
)]
#[command(propagate_version = true)]
pub struct Cli {
    /// Inventory file describing the cluster.
    #[arg(short, long, global = true, env = "CAPSTAN_INVENTORY", value_name = "FILE")]
    pub inventory: Option<PathBuf>,

    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Format of the data printed on stdout.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Local lab of real Debian machines (systemd-nspawn) for tests, demos and drills.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Validate, show or import inventories.
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// Write a commented starter inventory (asks nothing).
    Init {
        /// Where to write it.
        #[arg(long, value_name = "FILE", default_value = "inventory.yaml")]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Connect to every host, gather facts and run preflight checks.
    Check(CheckArgs),
    /// Show what `apply` would change (unified diffs for files); changes nothing.
    Plan(ApplyArgs),
    /// Converge the hosts to the inventory: etcd (install, TLS, bootstrap, scale, rolling restarts).
    Apply(ApplyArgs),
    /// Health of the cluster: every etcd member, leader, version, db size, raft index/term, cert expiry.
    Status(StatusArgs),
    /// An admin kubeconfig (RBAC-bound `capstan-admin`, fresh certificate) for the API endpoint.
    Kubeconfig {
        /// Write it here (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// etcd operator tools.
    #[command(subcommand)]
    Etcd(EtcdCommand),
    /// Encrypted etcd snapshots to S3 or a directory: create, list, verify, prune, schedule.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Bring up etcd on the inventory's hosts from a backup (new addresses, same CA).
    Restore(RestoreArgs),
    /// Disaster-recovery drill: restore a backup into a throwaway cluster, verify it, report RTO/RPO.
    Drill(DrillArgs),
    /// Read the cluster's journals: from a logging host (merged by time across hosts), or from
    /// each host's own journal when no logging host is configured or reachable.
    Logs(LogsArgs),
    /// Remove what capstan installed (services, binaries, config, certificates, data), component by
    /// component in reverse order, after a confirmation; `--dry-run` shows it.
    Reset(ResetArgs),
    /// Remove the cluster lock another run holds (a run that died frees it by itself within 30s).
    Unlock(UnlockArgs),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (or write one page per subcommand into a directory).
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Boot N machines and write a ready-to-use inventory (its path is printed on stdout).
    Up(LabUpArgs),
    /// Remove a lab: machines, mounts, links and state (also after a crash).
    Down(LabNameArgs),
    /// List labs.
    List,
    /// Show a lab's machines: addresses, pids, running or not.
    Status(LabNameArgs),
    /// Open a shell on a lab machine, or run a command there.
    Ssh {
        #[command(flatten)]
        lab: LabNameArgs,
        /// Machine name (e.g. demo-1).
        host: String,
        /// Command to run instead of a shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Power a machine off.
    Stop(LabHostArgs),
    /// Boot a stopped machine.
    Start(LabHostArgs),
    /// Cut a machine off the lab network.
    Isolate(LabHostArgs),
    /// Reconnect an isolated machine.
    Heal(LabHostArgs),
}

#[derive(Debug, Args)]
pub struct LabNameArgs {
    /// Lab name.
    #[arg(long, default_value = "capstan")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct LabHostArgs {
    #[command(flatten)]
    pub lab: LabNameArgs,
    /// Machine name (e.g. demo-1).
    pub host: String,
}

#[derive(Debug, Args)]
pub struct LabUpArgs {
    #[command(flatten)]
    pub lab: LabNameArgs,
    /// Number of machines.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Also write the inventory here (with absolute paths).
    #[arg(long, value_name = "FILE")]
    pub inventory_out: Option<PathBuf>,
    /// Artifact mirror directory to point the inventory at.
    #[arg(long, value_name = "DIR", env = "CAPSTAN_MIRROR_DIR")]
    pub mirror: Option<PathBuf>,
    /// Roles every machine gets in the inventory, e.g. `etcd,node` for etcd plus the container runtime
    /// and pod network.
    #[arg(long, value_name = "ROLE,...", value_delimiter = ',', default_value = "etcd")]
    pub roles: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Validate the inventory; every problem is reported with file:line:column.
    Check,
    /// Print the resolved model (effective per-host settings).
    Show {
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
    },
    /// Convert another tool's inventory into a capstan inventory (printed on stdout).
    Import {
        /// The format of the source inventory.
        #[arg(long, value_enum)]
        from: ImportFormat,
        /// The source inventory file.
        file: PathBuf,
        /// Write here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImportFormat {
    /// Kubespray / Ansible YAML inventory (kube_control_plane, etcd, kube_node groups).
    Kubespray,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// How many hosts to work on at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// How many hosts to work on at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Run only these components (comma-separated, e.g. `--only etcd`); the others, including
    /// the ones these come after, are left as they are.
    #[arg(long, value_delimiter = ',', value_name = "COMPONENT")]
    pub only: Vec<String>,
    /// Also print the commands each change runs (plan) or ran (apply).
    #[arg(long)]
    pub show_commands: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Only this host's entries (an inventory name; repeat for more).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only this systemd unit's entries (repeat for more).
    #[arg(short = 'u', long = "unit", value_name = "UNIT")]
    pub units: Vec<String>,
    /// Entries from this time on (journalctl's syntax: `2026-12-01 10:00`, `-1h`, `today`).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Entries up to this time (journalctl's syntax).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<String>,
    /// Only entries whose message matches this regular expression.
    #[arg(short = 'g', long, value_name = "RE")]
    pub grep: Option<String>,
    /// The last N entries of all hosts together (default 500 without --since).
    #[arg(short = 'n', long, value_name = "N")]
    pub lines: Option<usize>,
    /// Keep printing new entries (polls every 2 s; stop with Ctrl-C).
    #[arg(short = 'f', long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Reset only these hosts (comma-separated inventory names); default: every host.
    #[arg(long, value_delimiter = ',', value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Do not ask for confirmation (scripts).
    #[arg(long)]
    pub yes: bool,
    /// Reset even when the other hosts would be left broken (e.g. etcd without quorum).
    #[arg(long)]
    pub force: bool,
    /// Show what would be removed on each host and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Take a backup to the inventory's backup target first (asked interactively otherwise).
    #[arg(long)]
    pub final_backup: bool,
    /// How many hosts to work on at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Required: remove the lock whoever holds it (prints whom it overrode).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Give up on a member after this many seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum EtcdCommand {
    /// Write ca.crt, an admin client.crt/client.key (0600) and an `endpoints` file for etcdctl.
    Credentials {
        /// Directory to write into (created 0700).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct BackupTargetArgs {
    /// Where backups live: s3://bucket/prefix or file:///path (default: the inventory's backup.target).
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Use path-style S3 addressing (MinIO, Ceph and other self-hosted S3 servers).
    #[arg(long)]
    pub s3_path_style: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a backup now: etcd snapshot + cluster PKI + inventory, age-encrypted; prints the backup id.
    Create {
        #[command(flatten)]
        target: BackupTargetArgs,
        /// age recipient (age1...); repeatable. Default: the inventory's backup.recipients.
        #[arg(long = "recipient", short = 'r', value_name = "AGE_RECIPIENT")]
        recipients: Vec<String>,
        /// File with one age recipient per line.
        #[arg(long, value_name = "FILE")]
        recipients_file: Option<PathBuf>,
        /// Store the backup unencrypted (the cluster's CA key included). Must be said explicitly.
        #[arg(long)]
        no_encryption: bool,
    },
    /// List backups (id, age, size, revision, encrypted, complete).
    List {
        #[command(flatten)]
        target: BackupTargetArgs,
    },
    /// Download and check a backup: ciphertext hash, decryption, plaintext hash, etcd's snapshot hash.
    Verify {
        /// Backup id, or `latest`.
        id: String,
        #[command(flatten)]
        target: BackupTargetArgs,
        /// age identity file to decrypt with; without it only what is checkable without decrypting is checked.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Install (or remove) a systemd timer on the etcd members that takes backups on a calendar.
    Schedule {
        #[command(flatten)]
        target: BackupTargetArgs,
        /// systemd OnCalendar expression (default: the inventory's backup.schedule).
        #[arg(long, value_name = "CALENDAR")]
        on_calendar: Option<String>,
        /// Uninstall the timer, service, binary and credentials.
        #[arg(long)]
        remove: bool,
        /// Show what would change on each member (with diffs) and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// One scheduled backup on an etcd member (what the installed timer runs).
    #[command(hide = true)]
    Run {
        /// The member's schedule config, written by `capstan backup schedule`.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Push this host's components' state into etcd for scheduled backups (what the state push
    /// service runs on the hosts holding it).
    #[command(hide = true)]
    PushState {
        /// The host's push config, written by `capstan backup schedule`.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Delete backups outside the retention policy (and incomplete ones); never the newest complete backup.
    Prune {
        #[command(flatten)]
        target: BackupTargetArgs,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup id, or `latest`.
    #[arg(long, value_name = "ID")]
    pub from: String,
    #[command(flatten)]
    pub target: BackupTargetArgs,
    /// age identity file to decrypt the backup with.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Restore even onto hosts that already run etcd with data (a safety snapshot is taken first).
    #[arg(long)]
    pub force: bool,
    /// Add this much to the restored revision (Kubernetes watch caches); needs etcd 3.5.10+ (with --mark-compacted).
    #[arg(long, value_name = "N", requires = "mark_compacted")]
    pub bump_revision: Option<u64>,
    /// Mark the bumped revisions compacted (with --bump-revision).
    #[arg(long, requires = "bump_revision")]
    pub mark_compacted: bool,
    /// Show what the restore would change on each member (with the commands) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DrillArgs {
    #[command(subcommand)]
    pub command: Option<DrillCommand>,
    /// Backup id, or `latest`.
    #[arg(long, value_name = "ID", default_value = "latest")]
    pub from: String,
    #[command(flatten)]
    pub target: BackupTargetArgs,
    /// age identity file to decrypt the backup with.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Where to restore: `lab` (a fresh local lab, the default) or an inventory file.
    #[arg(long = "drill-target", value_name = "lab|INVENTORY", default_value = "lab")]
    pub drill_target: String,
    /// Write the report here (FILE.json and FILE.md).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// A key or prefix (ending in `*`) that must exist after the restore; repeatable.
    #[arg(long = "expect-key", value_name = "KEY")]
    pub expect_keys: Vec<String>,
    /// Keep the drill target running afterwards (a lab, or etcd with its data on the inventory's hosts).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Install (or remove) a systemd timer on the etcd members that drills the latest backup into
    /// dedicated drill hosts on a calendar, writing a report and Prometheus textfile metrics.
    Schedule(DrillScheduleArgs),
    /// One scheduled drill on an etcd member (what the installed timer runs).
    #[command(hide = true)]
    Run {
        /// The member's drill config, written by `capstan drill schedule`.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct DrillScheduleArgs {
    #[command(flatten)]
    pub target: BackupTargetArgs,
    /// age identity file the scheduled drills decrypt with (copied to the members, root-only).
    #[arg(long, value_name = "FILE", required_unless_present = "remove")]
    pub identity: Option<PathBuf>,
    /// Inventory of the dedicated hosts each drill restores into (their etcd is wiped after each drill).
    #[arg(long = "drill-target", value_name = "INVENTORY", required_unless_present = "remove")]
    pub drill_target: Option<PathBuf>,
    /// systemd OnCalendar expression, e.g. 'Sun *-*-* 04:00:00' or 'weekly'.
    #[arg(long, value_name = "CALENDAR", required_unless_present = "remove")]
    pub on_calendar: Option<String>,
    /// A key or prefix (ending in `*`) that must exist after each restore; repeatable.
    #[arg(long = "expect-key", value_name = "KEY")]
    pub expect_keys: Vec<String>,
    /// Uninstall the timer, service, drill config and credentials.
    #[arg(long)]
    pub remove: bool,
    /// Show what would change on each member (with diffs) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}
