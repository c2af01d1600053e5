//! Real labs: systemd-nspawn machines with systemd and sshd, reached with the system ssh client.
//! Needs root, debootstrap, systemd-container, iproute2, openssh-client and overlayfs; without them
//! each test prints what is missing and returns. The first run builds the base image (~2-3 min).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use capstan_lab::{LabError, LabGuard, UpOptions};

/// Returns why the lab cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if let Err(e) = capstan_lab::check_prerequisites() {
        return Some(e.to_string());
    }
    let has_ssh = std::process::Command::new("ssh").arg("-V").output().is_ok();
    (!has_ssh).then(|| "'ssh' not found; apt-get install -y openssh-client".to_string())
}

macro_rules! require_lab {
    () => {
        if let Some(why) = missing_prerequisite() {
            eprintln!("SKIPPED: lab prerequisites missing: {why}");
            return;
        }
    };
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

/// Runs `cmd` on `host` through `ssh_command`; returns (success, stdout).
fn ssh(lab: &str, host: &str, cmd: &str) -> (bool, String) {
    let out = capstan_lab::ssh_command(lab, host, Some(cmd))
        .expect("ssh command")
        .output()
        .expect("run ssh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn port_open(ip: &str) -> bool {
    let addr: SocketAddr = format!("{ip}:22").parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

/// Live (non-zombie) systemd-nspawn processes whose command line mentions `dir`.
fn nspawn_processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
        if state.is_some_and(|s| s.starts_with('Z')) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("systemd-nspawn") && cmdline.contains(&needle) {
            found.push(cmdline);
        }
    }
    found
}

fn assert_gone(lab: &capstan_lab::Lab) {
    assert!(
        nspawn_processes_under(&lab.dir).is_empty(),
        "nspawn left: {:?}",
        nspawn_processes_under(&lab.dir)
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = lab.dir.to_string_lossy();
    assert!(
        !mounts.lines().any(|l| l.contains(dir.as_ref())),
        "mounts left under {dir}"
    );
    for link in lab
        .machines
        .iter()
        .map(|m| m.veth.as_str())
        .chain([lab.bridge.as_str()])
    {
        assert!(!Path::new("/sys/class/net").join(link).exists(), "link {link} left");
    }
    assert!(!lab.dir.exists(), "state dir {} left", lab.dir.display());
    assert!(matches!(capstan_lab::get(&lab.name), Err(LabError::NotFound(_))));
}

#[test]
fn two_machine_lab_lifecycle() {
    require_lab!();
    let name = unique("t-life");
    let guard = LabGuard::up(UpOptions::new(&name, 2)).expect("lab up");
    let lab = guard.lab().clone();
    assert_eq!(lab.machines.len(), 2);
    let (m1, m2) = (&lab.machines[0], &lab.machines[1]);

    for m in &lab.machines {
        let (ok, hostname) = ssh(&name, &m.name, "hostname");
        assert!(ok, "ssh to {} failed", m.name);
        assert_eq!(hostname, m.name);
        // The machine may still be finishing boot: wait for a settled state.
        let (_, state) = ssh(&name, &m.name, "systemctl is-system-running --wait");
        assert!(state == "running" || state == "degraded", "{}: {state}", m.name);
        let (_, id) = ssh(&name, &m.name, "cat /etc/machine-id");
        assert_eq!(id, m.machine_id);
    }
    let (_, id1) = ssh(&name, &m1.name, "cat /etc/ssh/ssh_host_ed25519_key.pub");
    let (_, id2) = ssh(&name, &m2.name, "cat /etc/ssh/ssh_host_ed25519_key.pub");
    assert_ne!(id1, id2, "machines must have their own host keys");

    // Strict checking really is on: with an empty known_hosts the same command is refused.
    let empty = lab.dir.join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let refused = std::process::Command::new("ssh")
        .arg("-i")
        .arg(&lab.key_path)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", empty.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
        ])
        .arg(format!("root@{}", m1.ip))
        .arg("true")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Host key verification failed"));

    let ping = |from: &str, to: &str| ssh(&name, from, &format!("ping -c1 -W2 {to}")).0;
    assert!(ping(&m1.name, &m2.ip), "{} cannot reach {}", m1.name, m2.ip);
    assert!(ping(&m2.name, &m1.name), "{} cannot reach {} by name", m2.name, m1.name);

    assert!(ssh(&name, &m2.name, "echo kept > /root/marker && sync").0);
    capstan_lab::stop(&name, &m2.name).expect("stop");
    let live = capstan_lab::get(&name).unwrap();
    assert!(!live.machine(&m2.name).unwrap().running);
    assert!(live.machine(&m1.name).unwrap().running);
    assert!(!port_open(&m2.ip));
    assert!(matches!(
        capstan_lab::stop(&name, &m2.name),
        Err(LabError::NotRunning { .. })
    ));
    capstan_lab::start(&name, &m2.name).expect("start");
    assert_eq!(ssh(&name, &m2.name, "hostname").1, m2.name);
    // Disk state survives a power cycle.
    assert_eq!(ssh(&name, &m2.name, "cat /root/marker").1, "kept");
    let summary = capstan_lab::list().unwrap();
    let mine = summary.iter().find(|s| s.name == name).unwrap();
    assert_eq!((mine.machines, mine.running), (2, 2));

    capstan_lab::isolate(&name, &m2.name).expect("isolate");
    assert!(!ping(&m1.name, &m2.ip), "isolated machine still reachable");
    assert!(!port_open(&m2.ip));
    capstan_lab::heal(&name, &m2.name).expect("heal");
    let reachable = (0..20).any(|_| {
        std::thread::sleep(Duration::from_millis(250));
        ping(&m1.name, &m2.ip)
    });
    assert!(reachable, "healed machine unreachable");

    drop(guard);
    assert_gone(&lab);
}

#[test]
fn down_cleans_a_half_failed_up_and_is_idempotent() {
    require_lab!();
    let name = unique("t-half");
    let mut opts = UpOptions::new(&name, 1);
    // A zero SSH timeout fails `up` right after the machine was spawned: mounts, bridge and a
    // running nspawn are all left behind for `down`.
    opts.ssh_timeout = Duration::ZERO;
    let err = capstan_lab::up(opts).expect_err("up must time out");
    let lab = capstan_lab::get(&name).expect("state of the half-failed lab");
    match &err {
        LabError::SshTimeout { machine, log, .. } => {
            assert_eq!(machine, &format!("{name}-1"));
            assert!(log.exists(), "nspawn log {} missing", log.display());
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("nspawn log"));

    let report = capstan_lab::down(&name).expect("down");
    assert!(report.existed);
    assert!(report.unmounted >= 1);
    assert_gone(&lab);
    let again = capstan_lab::down(&name).expect("second down");
    assert!(!again.existed);
}

#[test]
fn duplicate_names_and_bad_input_are_rejected() {
    require_lab!();
    let name = unique("t-dup");
    let guard = LabGuard::up(UpOptions::new(&name, 1)).expect("lab up");
    assert!(matches!(
        LabGuard::up(UpOptions::new(&name, 1)),
        Err(LabError::AlreadyExists(_))
    ));
    // The failed duplicate must not have torn down the existing lab.
    assert_eq!(ssh(&name, "1", "hostname").1, format!("{name}-1"));
    assert!(matches!(
        capstan_lab::ssh_command(&name, "nope", None),
        Err(LabError::NoSuchHost { .. })
    ));
    assert!(matches!(
        capstan_lab::start(&name, "1"),
        Err(LabError::AlreadyRunning { .. })
    ));
    drop(guard);
}

#[test]
fn input_errors_need_no_root() {
    assert!(matches!(
        capstan_lab::up(UpOptions::new("Bad_Name", 1)),
        Err(LabError::InvalidName { .. })
    ));
    assert!(matches!(
        capstan_lab::up(UpOptions::new("ok", 0)),
        Err(LabError::InvalidHostCount { .. })
    ));
    assert!(matches!(
        capstan_lab::get("no-such-lab-here"),
        Err(LabError::NotFound(_))
    ));
    assert!(matches!(capstan_lab::down("../etc"), Err(LabError::InvalidName { .. })));
}

/// Live processes whose environment carries `container_uuid=<machine-id>`.
fn container_processes(machine_id: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let environ = String::from_utf8_lossy(&environ).replace('-', "");
        if environ.contains(&format!("container_uuid={machine_id}")) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn down_kills_a_machine_whose_nspawn_was_killed() {
    require_lab!();
    let name = unique("t-orphan");
    let guard = LabGuard::up(UpOptions::new(&name, 1)).expect("lab up");
    let lab = guard.lab().clone();
    let m = &lab.machines[0];
    let status = std::process::Command::new("kill")
        .args(["-KILL", &m.pid.unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(500));
    // SIGKILL does not reach the container: it keeps running without its nspawn.
    assert!(!capstan_lab::get(&name).unwrap().machines[0].running);
    assert!(!container_processes(&m.machine_id).is_empty());

    let report = capstan_lab::down(&name).expect("down");
    assert!(report.processes_stopped >= 1);
    assert!(
        container_processes(&m.machine_id).is_empty(),
        "orphaned machine survived down"
    );
    // (No port check here: a lab in a parallel test may already reuse the freed subnet.)
    assert_gone(&lab);
    drop(guard);
}
