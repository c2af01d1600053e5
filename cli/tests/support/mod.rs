//! Shared by the CLI's lab tests: what they need (`require`), running the `capstan` binary under
//! test and keeping its output, commands on lab machines, and reading capstan's JSON reports.

#![allow(dead_code)]

#[path = "../../../provisioner/tests/support/require.rs"]
mod require;

pub mod kube;
pub mod s3;

// Each test binary uses a part of these.
#[allow(unused_imports)]
pub use require::{file, need, require, required, tool, Need};

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use capstan_lab::{Lab, Machine};
use serde_json::Value;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `capstan [-i inventory] args...` with `env` added, logging the command, exit code and time.
pub fn run_capstan(inventory: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Run {
    let started = Instant::now();
    let mut command = Command::new(env!("CARGO_BIN_EXE_capstan"));
    if let Some(inventory) = inventory {
        command.arg("-i").arg(inventory);
    }
    let output = command
        .args(args)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run capstan");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!(
        "capstan {} -> {} in {:.1}s",
        args.join(" "),
        run.code,
        started.elapsed().as_secs_f64()
    );
    run
}

/// [`run_capstan`] with an inventory, asserting that it succeeds (panics with its output otherwise).
pub fn capstan_ok(inventory: &Path, args: &[&str]) -> Run {
    let run = run_capstan(Some(inventory), args, &[]);
    assert_eq!(
        run.code, 0,
        "capstan {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    run
}

/// The artifact mirror scripts/setup.sh builds (etcd 3.4.23, 3.5.0, 3.5.1).
pub const MIRROR: &str = "/var/cache/capstan/mirror";

/// Root and the lab's tools (systemd-nspawn, debootstrap, ...).
pub fn lab() -> Need {
    need("lab prerequisites missing", capstan_lab::check_prerequisites())
}

/// The artifact mirror scripts/setup.sh builds.
pub fn mirror() -> Need {
    file(
        Path::new(MIRROR).join("SHA256SUMS"),
        "artifact mirror missing (run scripts/setup.sh)",
    )
}

/// These etcd releases in the artifact mirror.
pub fn mirror_etcd(versions: &[&str]) -> Need {
    let sums = std::fs::read_to_string(Path::new(MIRROR).join("SHA256SUMS")).unwrap_or_default();
    match versions.iter().find(|v| !sums.contains(&format!("etcd-v{v}-linux-"))) {
        Some(version) => Err(format!(
            "artifact mirror {MIRROR} lacks etcd {version} (run scripts/setup.sh)"
        )),
        None => Ok(()),
    }
}

/// An inventory named `cluster` of `machines` (all in the etcd role) reached with the lab's SSH
/// key and known_hosts, followed by `extra` (more top-level YAML).
pub fn lab_inventory<'m>(
    lab: &Lab,
    cluster: &str,
    machines: impl IntoIterator<Item = &'m Machine>,
    extra: &str,
) -> String {
    let mut yaml = format!(
        "cluster:\n  name: {cluster}\nssh:\n  user: root\n  identity_file: {:?}\n  known_hosts: strict\n  known_hosts_file: {:?}\nhosts:\n",
        lab.key_path.display().to_string(),
        lab.known_hosts_path.display().to_string()
    );
    for m in machines {
        yaml.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: [etcd]\n",
            m.name, m.ip
        ));
    }
    yaml.push_str(extra);
    yaml
}

/// A 3-machine lab named `<prefix><pid>` with an inventory of etcd `version` on every machine
/// (in a temp dir kept as long as the returned value).
pub struct EtcdLab {
    pub guard: capstan_lab::LabGuard,
    pub lab: Lab,
    pub inventory: std::path::PathBuf,
    pub work: tempfile::TempDir,
}

pub fn etcd_lab(prefix: &str, version: &str) -> EtcdLab {
    let guard = capstan_lab::LabGuard::up(capstan_lab::UpOptions::new(
        format!("{prefix}{}", std::process::id() % 10000),
        3,
    ))
    .expect("lab up");
    let lab = guard.lab().clone();
    let work = tempfile::tempdir().unwrap();
    let inventory = work.path().join("inventory.yaml");
    std::fs::write(
        &inventory,
        lab_inventory(&lab, &lab.name, &lab.machines, &mirror_and_version(version)),
    )
    .unwrap();
    EtcdLab {
        guard,
        lab,
        inventory,
        work,
    }
}

/// `artifacts.mirror` pointing at [`MIRROR`] and `versions.etcd`.
pub fn mirror_and_version(version: &str) -> String {
    format!("artifacts:\n  mirror: \"file://{MIRROR}\"\nversions:\n  etcd: \"{version}\"\n")
}

/// Runs `command` on lab machine `host` over SSH; panics (with its stderr) unless it succeeds.
/// Its stdout, trimmed.
pub fn remote(lab: &Lab, host: &str, command: &str) -> String {
    let output = capstan_lab::ssh_command(&lab.name, host, Some(command))
        .unwrap()
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{host}: {command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The main PID of etcd on each of `hosts` (0 when it is not running).
pub fn etcd_pids(lab: &Lab, hosts: &[&str]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| remote(lab, h, "systemctl show -p MainPID --value etcd"))
        .collect()
}

/// stdout of a run, as JSON.
pub fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stdout))
}

/// Changed operations summed over hosts, from an apply-style JSON report.
pub fn changed(outcome: &Value) -> u64 {
    outcome["summary"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["changed"].as_u64().unwrap())
        .sum()
}

/// A new age identity written to `path` (`age-keygen -o`); its public recipient (`age1…`).
/// `capstan drill` of the latest backup in `target`, decrypted with `identity`, its report at
/// `report` (`.json` and `.md`), with `env`.
pub fn drill(target: &str, identity: &Path, report: &Path, env: &[(&str, &str)]) -> Run {
    let args = [
        "drill",
        "--target",
        target,
        "--identity",
        identity.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ];
    run_capstan(None, &args, env)
}

pub fn age_keygen(path: &Path) -> String {
    let keygen = Command::new("age-keygen").arg("-o").arg(path).output().unwrap();
    assert!(keygen.status.success(), "age-keygen failed");
    let recipient = String::from_utf8_lossy(&keygen.stderr)
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    recipient
}
