//! Lab lifecycle: up, down, list, get, stop/start, isolate/heal, ssh.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, LabError, Result};
use crate::plan::{self, LabPlan};
use crate::sys::{self, FileLock};
use crate::{image, prereq, Paths, Progress, UpOptions};

const STATE_FILE: &str = "lab.json";
const KEY_FILE: &str = "id_ed25519";
const KNOWN_HOSTS_FILE: &str = "known_hosts";
/// etcd version written into lab inventories when a mirror is used: the newest one the mirror has.
pub const LAB_ETCD_VERSION: &str = "3.5.1";
/// The container runtime the lab mirror builds from Debian's packages (lab/mirror/build-mirror.sh).
pub const LAB_RUNTIME_VERSIONS: [(&str, &str); 4] = [
    ("containerd", "1.6.20"),
    ("runc", "1.1.5"),
    ("crun", "1.8.1"),
    ("cni_plugins", "1.1.1"),
];
const INVENTORY_FILE: &str = "inventory.yaml";
/// How long a machine gets to power off after SIGTERM before it is killed.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);

/// A lab as recorded in `<state dir>/lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lab {
    pub name: String,
    /// The lab's state dir.
    pub dir: PathBuf,
    pub subnet_index: u8,
    /// e.g. 10.231.0.0/24
    pub subnet: String,
    /// The bridge's own address (the build machine as seen from the lab), e.g. 10.231.0.1.
    pub gateway: String,
    pub bridge: String,
    /// Base rootfs every machine's overlay uses as its lower layer.
    pub image: PathBuf,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    pub key_path: PathBuf,
    pub known_hosts_path: PathBuf,
    pub inventory_path: PathBuf,
    pub artifact_mirror: Option<PathBuf>,
    /// Local flat apt repository (lab/mirror/build-debs.sh) bind-mounted read-only into every
    /// machine at [`APT_REPO_IN_MACHINE`] and named in the inventory's `artifacts.apt_source`.
    #[serde(default)]
    pub apt_repo: Option<PathBuf>,
    pub roles: Vec<String>,
    pub machines: Vec<Machine>,
}

/// Where every machine sees the lab's apt repository.
pub const APT_REPO_IN_MACHINE: &str = "/srv/capstan-debs";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Machine {
    /// Hostname, `<lab>-<i>`; what users and the inventory call it.
    pub name: String,
    /// Name given to systemd-nspawn --machine (short, it names the veth).
    pub nspawn_name: String,
    pub ip: String,
    /// PID of the systemd-nspawn process, when started.
    pub pid: Option<u32>,
    /// Host-side veth, `vb-<nspawn_name>`.
    pub veth: String,
    /// Overlay mount point (the machine's `/`).
    pub root: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// systemd-nspawn's console output.
    pub log: PathBuf,
    pub machine_id: String,
    /// Live check, filled by [`get`]/[`list`]; not stored.
    #[serde(skip)]
    pub running: bool,
}

/// One line of `capstan lab list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabSummary {
    pub name: String,
    pub machines: usize,
    pub running: usize,
    pub subnet: String,
    pub dir: PathBuf,
}

/// What [`down`] found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DownReport {
    /// Whether anything of the lab existed.
    pub existed: bool,
    pub processes_stopped: usize,
    pub unmounted: usize,
    pub links_deleted: usize,
}

impl Lab {
    /// Finds a machine by hostname (`demo-1`), index (`1`), nspawn name or IP.
    pub fn machine(&self, host: &str) -> Result<&Machine> {
        let index = host.parse::<usize>().ok();
        self.machines
            .iter()
            .enumerate()
            .find(|(i, m)| m.name == host || m.nspawn_name == host || m.ip == host || index == Some(i + 1))
            .map(|(_, m)| m)
            .ok_or_else(|| LabError::NoSuchHost {
                lab: self.name.clone(),
                host: host.to_string(),
                known: self
                    .machines
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn machine_mut(&mut self, host: &str) -> Result<&mut Machine> {
        let name = self.machine(host)?.name.clone();
        Ok(self
            .machines
            .iter_mut()
            .find(|m| m.name == name)
            .expect("machine found above"))
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn save(&self) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|source| LabError::State {
            path: self.state_path(),
            source,
        })?;
        sys::write_atomic(&self.state_path(), &json, 0o644)
    }

    fn refresh_running(&mut self) {
        for m in &mut self.machines {
            m.running = m.pid.is_some_and(|pid| nspawn_alive(pid, &m.nspawn_name));
        }
    }
}

/// Whether `pid` is still the systemd-nspawn of machine `nspawn_name` (guards against pid reuse).
fn nspawn_alive(pid: u32, nspawn_name: &str) -> bool {
    let flag = format!("--machine={nspawn_name}");
    sys::cmdline(pid)
        .is_some_and(|args| args.first().is_some_and(|a| a.ends_with("systemd-nspawn")) && args.contains(&flag))
}

fn load(paths: &Paths, name: &str) -> Result<Option<Lab>> {
    let path = paths.lab_dir(name).join(STATE_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| LabError::State { path, source })
}

/// The lab with live `running` flags.
pub fn get(name: &str) -> Result<Lab> {
    get_in(&Paths::from_env(), name)
}

pub(crate) fn get_in(paths: &Paths, name: &str) -> Result<Lab> {
    plan::validate_name(name)?;
    let mut lab = load(paths, name)?.ok_or_else(|| LabError::NotFound(name.to_string()))?;
    lab.refresh_running();
    Ok(lab)
}

/// Every lab under the state root, sorted by name.
pub fn list() -> Result<Vec<LabSummary>> {
    let paths = Paths::from_env();
    let entries = match std::fs::read_dir(&paths.state_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx(|| format!("listing {}", paths.state_root.display())),
    };
    let mut labs = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if plan::validate_name(&name).is_err() {
            continue;
        }
        if let Ok(Some(mut lab)) = load(&paths, &name) {
            lab.refresh_running();
            labs.push(LabSummary {
                running: lab.machines.iter().filter(|m| m.running).count(),
                machines: lab.machines.len(),
                subnet: lab.subnet,
                dir: lab.dir,
                name: lab.name,
            });
        }
    }
    labs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(labs)
}

/// Creates and boots a lab, returning once every machine accepts SSH.
///
/// On error the partly created lab is left in place (its nspawn logs help diagnose);
/// [`down`] removes it.
pub fn up(opts: UpOptions) -> Result<Lab> {
    plan::validate_name(&opts.name)?;
    plan::validate_hosts(opts.hosts)?;
    for role in &opts.roles {
        if role.is_empty() || !role.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(LabError::InvalidName {
                name: role.clone(),
                reason: "a role is lowercase letters and '_'",
            });
        }
    }
    prereq::check_prerequisites()?;
    let progress = opts.progress.clone();
    let started = Instant::now();
    let image = image::ensure_image(&opts.paths, &opts.debian_mirror, &*progress)?;

    let mut lab = allocate(&opts, image)?;
    progress(&format!(
        "lab {} on {} (bridge {}), state in {}",
        lab.name,
        lab.subnet,
        lab.bridge,
        lab.dir.display()
    ));
    sys::run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            &format!("capstan-lab-{}", lab.name),
            "-f",
            &lab.key_path.to_string_lossy(),
        ],
    )?;
    let user_key = read_trimmed(&lab.key_path.with_extension("pub"))?;

    ensure_bridge(&lab)?;
    let hosts_file = hosts_file(&lab);
    let mut known_hosts = String::new();
    for m in &lab.machines {
        let host_key = prepare_machine(&lab, m, &user_key, &hosts_file)?;
        known_hosts.push_str(&format!("{},{} {host_key}\n", m.ip, m.name));
    }
    sys::write_atomic(&lab.known_hosts_path, known_hosts.as_bytes(), 0o644)?;
    std::fs::create_dir_all(lab.dir.join("backups"))
        .ctx(|| format!("creating {}", lab.dir.join("backups").display()))?;
    write_inventory(&lab, &lab.inventory_path)?;
    if let Some(out) = &opts.inventory_out {
        write_inventory(&lab, out)?;
        progress(&format!("inventory copied to {}", out.display()));
    }

    if let Some(raised) = sys::raise_inotify_limits()? {
        progress(&raised);
    }
    progress(&format!("booting {} machines", lab.machines.len()));
    for i in 0..lab.machines.len() {
        let pid = spawn_machine(&lab, &lab.machines[i])?;
        lab.machines[i].pid = Some(pid);
        lab.save()?;
    }
    wait_for_ssh(&lab, &lab.machines.iter().collect::<Vec<_>>(), opts.ssh_timeout)?;
    lab.refresh_running();
    progress(&format!(
        "lab {} is up ({} machines, {:.1} s); inventory: {}",
        lab.name,
        lab.machines.len(),
        started.elapsed().as_secs_f64(),
        lab.inventory_path.display()
    ));
    Ok(lab)
}

/// Picks the subnet and records the lab's state file, under a global lock so concurrent
/// `up`s never share a subnet or a name.
fn allocate(opts: &UpOptions, image: PathBuf) -> Result<Lab> {
    let paths = &opts.paths;
    std::fs::create_dir_all(&paths.state_root).ctx(|| format!("creating {}", paths.state_root.display()))?;
    let _lock = FileLock::acquire(&paths.state_root.join(".lock"))?;
    let dir = paths.lab_dir(&opts.name);
    if dir.exists() {
        return Err(LabError::AlreadyExists(opts.name.clone()));
    }
    let mut used_by_labs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&paths.state_root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(Some(other)) = load(paths, &name) {
                used_by_labs.push(other.subnet_index);
            }
        }
    }
    let mut on_host = sys::run("ip", &["-o", "-4", "addr", "show"])?;
    on_host.push_str(&sys::run("ip", &["-4", "route", "show"])?);
    let index = plan::allocate_subnet(&used_by_labs, &plan::subnets_in_ip_output(&on_host))?;
    let plan = plan::plan(&opts.name, opts.hosts, index)?;
    let artifact_mirror = opts.artifact_mirror.clone().or_else(|| {
        let default = paths.default_mirror_dir();
        default.is_dir().then_some(default)
    });
    // The lab machines reach no package mirror: Debian packages capstan installs come from a
    // local repository when one was built (it has an index).
    let apt_repo = Some(paths.default_apt_repo_dir()).filter(|dir| dir.join("Packages").is_file());
    let mut lab = lab_from_plan(&opts.name, &dir, &plan, image, artifact_mirror, &opts.roles)?;
    lab.apt_repo = apt_repo;
    std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .ctx(|| format!("chmod {}", dir.display()))?;
    lab.save()?;
    Ok(lab)
}

fn lab_from_plan(
    name: &str,
    dir: &Path,
    plan: &LabPlan,
    image: PathBuf,
    artifact_mirror: Option<PathBuf>,
    roles: &[String],
) -> Result<Lab> {
    let machines = plan
        .machines
        .iter()
        .map(|m| {
            let base = dir.join("machines").join(&m.hostname);
            Ok(Machine {
                name: m.hostname.clone(),
                nspawn_name: m.nspawn_name.clone(),
                ip: m.ip.clone(),
                pid: None,
                veth: m.veth.clone(),
                root: base.join("root"),
                upper: base.join("upper"),
                work: base.join("work"),
                log: base.join("nspawn.log"),
                machine_id: sys::random_hex16()?,
                running: false,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Lab {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        subnet_index: plan.subnet_index,
        subnet: plan.subnet.clone(),
        gateway: plan.gateway.clone(),
        bridge: plan.bridge.clone(),
        image,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        key_path: dir.join(KEY_FILE),
        known_hosts_path: dir.join(KNOWN_HOSTS_FILE),
        inventory_path: dir.join(INVENTORY_FILE),
        artifact_mirror,
        apt_repo: None,
        roles: roles.to_vec(),
        machines,
    })
}

fn ensure_bridge(lab: &Lab) -> Result<()> {
    if !sys::link_exists(&lab.bridge) {
        sys::run("ip", &["link", "add", "name", &lab.bridge, "type", "bridge"])?;
    }
    let addrs = sys::run("ip", &["-o", "-4", "addr", "show", "dev", &lab.bridge])?;
    let cidr = format!("{}/24", lab.gateway);
    if !addrs.contains(&format!(" {cidr} ")) {
        sys::run("ip", &["addr", "add", &cidr, "dev", &lab.bridge])?;
    }
    sys::run("ip", &["link", "set", &lab.bridge, "up"]).map(|_| ())
}

fn hosts_file(lab: &Lab) -> String {
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for m in &lab.machines {
        hosts.push_str(&format!("{}\t{}\n", m.ip, m.name));
    }
    hosts
}

fn mount_overlay(lab: &Lab, m: &Machine) -> Result<()> {
    for dir in [&m.root, &m.upper, &m.work] {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    if sys::is_mounted(&m.root) {
        return Ok(());
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lab.image.display(),
        m.upper.display(),
        m.work.display()
    );
    sys::run(
        "mount",
        &["-t", "overlay", "overlay", "-o", &options, &m.root.to_string_lossy()],
    )
    .map(|_| ())
}

/// Mounts the machine's overlay and writes its identity; returns its public host key line.
fn prepare_machine(lab: &Lab, m: &Machine, user_key: &str, hosts: &str) -> Result<String> {
    mount_overlay(lab, m)?;
    let root = &m.root;
    let put = |rel: &str, contents: &str, mode: u32| -> Result<()> {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        sys::write_atomic(&path, contents.as_bytes(), mode)
    };
    put("etc/hostname", &format!("{}\n", m.name), 0o644)?;
    put("etc/machine-id", &format!("{}\n", m.machine_id), 0o444)?;
    put("etc/hosts", hosts, 0o644)?;
    put(
        "etc/systemd/network/10-capstan-host0.network",
        &format!(
            "[Match]\nName=host0\n\n[Network]\nAddress={}/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
            m.ip
        ),
        0o644,
    )?;
    let ssh_dir = root.join("root/.ssh");
    std::fs::create_dir_all(&ssh_dir).ctx(|| format!("creating {}", ssh_dir.display()))?;
    std::fs::set_permissions(&ssh_dir, std::fs::Permissions::from_mode(0o700))
        .ctx(|| format!("chmod {}", ssh_dir.display()))?;
    put("root/.ssh/authorized_keys", &format!("{user_key}\n"), 0o600)?;

    let host_key = root.join("etc/ssh/ssh_host_ed25519_key");
    if !host_key.exists() {
        sys::run(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                &format!("root@{}", m.name),
                "-f",
                &host_key.to_string_lossy(),
            ],
        )?;
    }
    let public = read_trimmed(&host_key.with_extension("pub"))?;
    // known_hosts wants "type key"; drop the comment.
    Ok(public.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
}

fn read_trimmed(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .ctx(|| format!("reading {}", path.display()))
}

/// Starts systemd-nspawn detached in its own session; returns its pid.
fn spawn_machine(lab: &Lab, m: &Machine) -> Result<u32> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&m.log)
        .ctx(|| format!("opening {}", m.log.display()))?;
    let log_err = log.try_clone().ctx(|| format!("opening {}", m.log.display()))?;
    let mut cmd = Command::new("systemd-nspawn");
    cmd.arg("--boot")
        .arg("--register=no")
        .arg("--keep-unit")
        .arg("--console=read-only")
        .arg("--link-journal=no")
        .arg(format!("--network-bridge={}", lab.bridge))
        .arg(format!("--machine={}", m.nspawn_name))
        .arg(format!("--hostname={}", m.name))
        .args(
            lab.apt_repo
                .iter()
                .map(|dir| format!("--bind-ro={}:{APT_REPO_IN_MACHINE}", dir.display())),
        )
        .arg(format!("--uuid={}", m.machine_id))
        .arg("-D")
        .arg(&m.root)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: setsid is async-signal-safe; it detaches nspawn from our session and terminal so
    // the machine outlives the command that started it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().ctx(|| format!("starting systemd-nspawn for {}", m.name))?;
    Ok(child.id())
}

/// Waits until every machine's sshd sends its banner; fails fast if a machine's nspawn dies.
fn wait_for_ssh(lab: &Lab, machines: &[&Machine], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    std::thread::scope(|scope| {
        let handles: Vec<_> = machines
            .iter()
            .map(|m| scope.spawn(move || wait_one(m, deadline, timeout)))
            .collect();
        let mut first_error = None;
        for h in handles {
            let result = h.join().unwrap_or_else(|_| {
                Err(LabError::Cleanup {
                    what: format!("lab {}", lab.name),
                    reason: "ssh wait thread panicked".to_string(),
                })
            });
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}

fn wait_one(m: &Machine, deadline: Instant, timeout: Duration) -> Result<()> {
    let addr: SocketAddr = format!("{}:22", m.ip).parse().map_err(|_| LabError::NoSuchHost {
        lab: String::new(),
        host: m.ip.clone(),
        known: String::new(),
    })?;
    loop {
        if ssh_banner(&addr) {
            return Ok(());
        }
        if !m.pid.is_some_and(|pid| nspawn_alive(pid, &m.nspawn_name)) {
            return Err(LabError::MachineExited {
                machine: m.name.clone(),
                log: m.log.clone(),
            });
        }
        if Instant::now() >= deadline {
            return Err(LabError::SshTimeout {
                machine: m.name.clone(),
                ip: m.ip.clone(),
                seconds: timeout.as_secs(),
                log: m.log.clone(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ssh_banner(addr: &SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 8 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.starts_with(b"SSH-2.0")
}

/// Writes the lab's inventory to `path`. Paths inside are relative (`./id_ed25519`) when `path`
/// is in the lab's state dir, absolute otherwise, so they resolve from wherever the file lives.
pub fn write_inventory(lab: &Lab, path: &Path) -> Result<()> {
    let in_state_dir = path.parent() == Some(lab.dir.as_path());
    let file_ref = |p: &Path, rel: &str| {
        if in_state_dir {
            format!("./{rel}")
        } else {
            p.display().to_string()
        }
    };
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""));
    let roles = lab.roles.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
    let mut yaml = format!(
        "# Written by `capstan lab up` for lab {name}; state in {dir}.\n\
         cluster:\n  name: {name}\n\
         ssh:\n  user: root\n  identity_file: {key}\n  known_hosts: strict\n  known_hosts_file: {kh}\n\
         hosts:\n",
        name = lab.name,
        dir = lab.dir.display(),
        key = q(&file_ref(&lab.key_path, KEY_FILE)),
        kh = q(&file_ref(&lab.known_hosts_path, KNOWN_HOSTS_FILE)),
    );
    for m in &lab.machines {
        yaml.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: [{roles}]\n",
            m.name, m.ip
        ));
    }
    if lab.artifact_mirror.is_some() || lab.apt_repo.is_some() {
        yaml.push_str("artifacts:\n");
    }
    if let Some(mirror) = &lab.artifact_mirror {
        let abs = std::path::absolute(mirror).unwrap_or_else(|_| mirror.clone());
        yaml.push_str(&format!("  mirror: {}\n", q(&format!("file://{}", abs.display()))));
    }
    if lab.apt_repo.is_some() {
        yaml.push_str(&format!(
            "  apt_source: \"deb [trusted=yes] file:{APT_REPO_IN_MACHINE} ./\"\n"
        ));
    }
    let runs_pods = lab.roles.iter().any(|r| r == "node" || r == "control_plane");
    if lab.artifact_mirror.is_some() {
        // The newest etcd the lab mirror carries (lab/mirror/build-mirror.sh), and the container
        // runtime it builds from Debian's packages.
        yaml.push_str(&format!("versions:\n  etcd: \"{LAB_ETCD_VERSION}\"\n"));
        if runs_pods {
            for (name, version) in LAB_RUNTIME_VERSIONS {
                yaml.push_str(&format!("  {name}: \"{version}\"\n"));
            }
        }
    }
    if runs_pods {
        // Lab machines are nspawn containers on a cgroup v1 host with read-only controllers: only
        // crun without cgroups runs containers there (docs/nodes.md, "Lab-only runtime setting").
        yaml.push_str("runtime:\n  lab_cgroupless: auto\n");
    }
    let etcd_members = if lab.roles.iter().any(|r| r == "etcd") {
        lab.machines.len()
    } else {
        0
    };
    if etcd_members % 2 == 0 && etcd_members > 0 {
        // Labs are test beds: an even member count is allowed there so 2- and 4-machine labs work.
        yaml.push_str("etcd:\n  allow_even_members: true\n");
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    }
    sys::write_atomic(path, yaml.as_bytes(), 0o644)
}

/// Removes everything of a lab: nspawn processes, overlay mounts, veths, bridge, state dir.
/// Works from stale or missing state (e.g. after a crash or a half-failed `up`); idempotent.
pub fn down(name: &str) -> Result<DownReport> {
    down_in(&Paths::from_env(), name)
}

pub(crate) fn down_in(paths: &Paths, name: &str) -> Result<DownReport> {
    plan::validate_name(name)?;
    let dir = paths.lab_dir(name);
    // A corrupt state file must not block cleanup: fall back to what /proc shows.
    let lab = load(paths, name).ok().flatten();
    let mut report = DownReport {
        existed: dir.exists() || lab.is_some(),
        ..DownReport::default()
    };

    let dir_str = dir.to_string_lossy().into_owned();
    let mut pids = sys::nspawn_pids(|args| {
        args.windows(2)
            .any(|w| w[0] == "-D" && Path::new(&w[1]).starts_with(&dir_str))
    });
    if let Some(lab) = &lab {
        for m in &lab.machines {
            if let Some(pid) = m.pid.filter(|pid| nspawn_alive(*pid, &m.nspawn_name)) {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    // Without a state file, the running machines still name the lab's bridge.
    let mut links: Vec<String> = pids
        .iter()
        .filter_map(|pid| sys::cmdline(*pid))
        .flatten()
        .filter_map(|arg| arg.strip_prefix("--network-bridge=").map(str::to_string))
        .collect();
    if !pids.is_empty() {
        report.existed = true;
        report.processes_stopped = pids.len();
        let survivors = sys::terminate(&pids, |pid| sys::cmdline(pid).is_some(), POWEROFF_GRACE);
        if !survivors.is_empty() {
            return Err(LabError::Cleanup {
                what: format!("lab {name}"),
                reason: format!("systemd-nspawn processes {survivors:?} survive SIGKILL"),
            });
        }
    }

    let uuids: Vec<String> = lab
        .iter()
        .flat_map(|l| l.machines.iter().map(|m| m.machine_id.clone()))
        .collect();
    let orphans = sys::kill_orphan_containers(&dir, &uuids);
    if !orphans.is_empty() {
        report.existed = true;
        report.processes_stopped += orphans.len();
    }

    for mount in sys::mounts_under(&dir) {
        report.existed = true;
        sys::unmount(&mount)?;
        report.unmounted += 1;
    }

    if let Some(lab) = &lab {
        links.extend(lab.machines.iter().map(|m| m.veth.clone()));
        links.push(lab.bridge.clone());
    }
    links.sort();
    links.dedup();
    for link in &links {
        if sys::link_exists(link) {
            sys::delete_link(link)?;
            report.links_deleted += 1;
        }
    }

    let still_mounted = sys::mounts_under(&dir);
    if !still_mounted.is_empty() {
        // Deleting through a live overlay would write whiteouts over the machine; refuse.
        return Err(LabError::Cleanup {
            what: dir.display().to_string(),
            reason: format!("still mounted: {still_mounted:?}"),
        });
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
    }
    Ok(report)
}

/// Powers a machine off (SIGTERM to its systemd-nspawn, SIGKILL after 30 s). Its overlay, and so
/// its disk state, stays for [`start`].
pub fn stop(name: &str, host: &str) -> Result<()> {
    let paths = Paths::from_env();
    let mut lab = get_in(&paths, name)?;
    let m = lab.machine_mut(host)?;
    let Some(pid) = m.pid.filter(|_| m.running) else {
        return Err(LabError::NotRunning {
            machine: m.name.clone(),
        });
    };
    let nspawn_name = m.nspawn_name.clone();
    let survivors = sys::terminate(&[pid], |p| nspawn_alive(p, &nspawn_name), POWEROFF_GRACE);
    if !survivors.is_empty() {
        return Err(LabError::Cleanup {
            what: m.name.clone(),
            reason: format!("systemd-nspawn {pid} survives SIGKILL"),
        });
    }
    sys::kill_orphan_containers(&m.root, std::slice::from_ref(&m.machine_id));
    m.pid = None;
    m.running = false;
    let veth = m.veth.clone();
    sys::delete_link(&veth)?;
    lab.save()
}

/// Boots a stopped machine again on its existing overlay and waits for its sshd.
pub fn start(name: &str, host: &str) -> Result<()> {
    start_with(name, host, Duration::from_secs(120), &crate::stderr_progress())
}

pub(crate) fn start_with(name: &str, host: &str, timeout: Duration, progress: &Progress) -> Result<()> {
    let paths = Paths::from_env();
    let mut lab = get_in(&paths, name)?;
    let m = lab.machine(host)?.clone();
    if let Some(pid) = m.pid.filter(|_| m.running) {
        return Err(LabError::AlreadyRunning { machine: m.name, pid });
    }
    // A machine whose nspawn was killed may still be running headless; never boot it twice.
    sys::kill_orphan_containers(&m.root, std::slice::from_ref(&m.machine_id));
    ensure_bridge(&lab)?;
    mount_overlay(&lab, &m)?;
    // A veth left by a killed nspawn would make the new one fail to attach.
    sys::delete_link(&m.veth)?;
    progress(&format!("booting {}", m.name));
    let pid = spawn_machine(&lab, &m)?;
    let stored = lab.machine_mut(host)?;
    stored.pid = Some(pid);
    stored.running = true;
    let started = stored.clone();
    lab.save()?;
    wait_for_ssh(&lab, &[&started], timeout)
}

/// Cuts a machine off the network by taking its host-side veth down.
pub fn isolate(name: &str, host: &str) -> Result<()> {
    set_link(name, host, "down")
}

/// Reconnects a machine isolated with [`isolate`].
pub fn heal(name: &str, host: &str) -> Result<()> {
    set_link(name, host, "up")
}

fn set_link(name: &str, host: &str, state: &str) -> Result<()> {
    let lab = get(name)?;
    let m = lab.machine(host)?;
    if !m.running {
        return Err(LabError::NotRunning {
            machine: m.name.clone(),
        });
    }
    sys::run("ip", &["link", "set", &m.veth, state]).map(|_| ())
}

/// `ssh` to a machine as root with the lab's key and strict checking against its known_hosts.
/// With `remote_command`, runs it; without, opens a login shell. The caller runs or execs it.
pub fn ssh_command(name: &str, host: &str, remote_command: Option<&str>) -> Result<Command> {
    let lab = get(name)?;
    let m = lab.machine(host)?;
    let mut cmd = Command::new("ssh");
    cmd.arg("-i")
        .arg(&lab.key_path)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", lab.known_hosts_path.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg("--")
        .arg(format!("root@{}", m.ip));
    if let Some(remote) = remote_command {
        cmd.arg(remote);
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_lab(dir: &Path) -> Lab {
        let plan = plan::plan("demo", 2, 4).unwrap();
        lab_from_plan(
            "demo",
            dir,
            &plan,
            PathBuf::from("/images/x"),
            Some(PathBuf::from("/srv/mirror")),
            &["etcd".to_string(), "node".to_string()],
        )
        .unwrap()
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("capstan-lab-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn inventory_in_state_dir_uses_relative_paths() {
        let dir = temp_dir("inv-rel");
        let lab = sample_lab(&dir);
        write_inventory(&lab, &lab.inventory_path).unwrap();
        let text = std::fs::read_to_string(&lab.inventory_path).unwrap();
        assert!(text.contains("  name: demo\n"));
        assert!(text.contains("identity_file: \"./id_ed25519\""));
        assert!(text.contains("known_hosts_file: \"./known_hosts\""));
        assert!(text.contains("known_hosts: strict"));
        assert!(text.contains("  - name: demo-2\n    address: 10.231.4.12\n    roles: [etcd, node]\n"));
        assert!(text.contains("mirror: \"file:///srv/mirror\""));
        // Two machines, both etcd: the lab allows the even member count explicitly.
        assert!(text.contains("etcd:\n  allow_even_members: true\n"), "{text}");
        // Node machines: the mirror's container runtime, and the lab-only runtime setting.
        assert!(text.contains("  containerd: \"1.6.20\"\n"), "{text}");
        assert!(text.contains("runtime:\n  lab_cgroupless: auto\n"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn inventory_elsewhere_uses_absolute_paths() {
        let dir = temp_dir("inv-abs");
        let lab = sample_lab(&dir.join("state"));
        let out = dir.join("elsewhere/inventory.yaml");
        write_inventory(&lab, &out).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let key = format!("identity_file: \"{}\"", lab.key_path.display());
        assert!(text.contains(&key), "{text}");
        let kh = format!("known_hosts_file: \"{}\"", lab.known_hosts_path.display());
        assert!(text.contains(&kh), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn machines_are_found_by_name_index_or_ip() {
        let lab = sample_lab(Path::new("/nonexistent"));
        for host in ["demo-2", "2", "10.231.4.12", "cs4-2"] {
            assert_eq!(lab.machine(host).unwrap().name, "demo-2", "{host}");
        }
        let err = lab.machine("demo-3").unwrap_err().to_string();
        assert!(err.contains("demo-1, demo-2"), "{err}");
    }
}
