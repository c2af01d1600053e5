//! The `capstan` binary as a user runs it, on a real lab: lab up → check → fault injection → lab down.
//! Needs root and the lab prerequisites; skips with a message naming what is missing.

use std::process::{Command, Output};

mod support;
use support::{lab, require};

fn capstan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run capstan")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `capstan lab down` when dropped, so a failing assertion leaves nothing behind.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = capstan(&["lab", "down", "--name", &self.0]);
    }
}

#[test]
fn lab_up_check_isolate_down() {
    if !require(&[lab()]) {
        return;
    }
    let name = format!("cli-{}", std::process::id());
    let _down = Down(name.clone());

    let up = capstan(&["lab", "up", "--name", &name, "--hosts", "3"]);
    assert!(up.status.success(), "{}", stderr(&up));
    let inventory = stdout(&up).trim().to_string();
    assert!(
        inventory.ends_with("inventory.yaml"),
        "stdout is the inventory path: {inventory}"
    );

    let listed = capstan(&["lab", "list", "--output", "json"]);
    let labs: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let ours = labs
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name.as_str())
        .expect("lab listed");
    assert_eq!(ours["running"], 3);

    // check: 3 hosts, reachable, facts that match the machines.
    let check = capstan(&["-i", &inventory, "check", "--output", "json"]);
    assert!(check.status.success(), "{}{}", stdout(&check), stderr(&check));
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let hosts = report["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3);
    for (i, host) in hosts.iter().enumerate() {
        let expected = format!("{name}-{}", i + 1);
        assert_eq!(host["host"], expected.as_str());
        assert_eq!(host["reachable"], true);
        assert_eq!(host["facts"]["hostname"], expected.as_str());
        assert_eq!(host["facts"]["init"], "systemd");
        assert_eq!(host["facts"]["arch"], "amd64");
        assert!(host["facts"]["cpus"].as_u64().unwrap() >= 1);
    }

    // `lab ssh` runs a command with strict host key checking.
    let ssh = capstan(&["lab", "ssh", "--name", &name, &format!("{name}-2"), "--", "hostname"]);
    assert!(ssh.status.success(), "{}", stderr(&ssh));
    assert_eq!(stdout(&ssh).trim(), format!("{name}-2"));

    // An isolated host is reported per host, with a hint, and the exit code says so.
    let host3 = format!("{name}-3");
    assert!(capstan(&["lab", "isolate", "--name", &name, &host3]).status.success());
    let check = capstan(&["-i", &inventory, "check"]);
    assert!(!check.status.success());
    let text = stdout(&check);
    assert!(
        text.lines().any(|l| l.starts_with(&host3) && l.contains(" no ")),
        "{text}"
    );
    assert!(stderr(&check).contains("hint:"), "{}", stderr(&check));
    assert!(capstan(&["lab", "heal", "--name", &name, &host3]).status.success());
    assert!(capstan(&["-i", &inventory, "check"]).status.success());

    // A stopped machine comes back with its disk.
    assert!(
        capstan(&["lab", "ssh", "--name", &name, &host3, "--", "touch /root/kept"])
            .status
            .success()
    );
    assert!(capstan(&["lab", "stop", "--name", &name, &host3]).status.success());
    assert!(capstan(&["lab", "start", "--name", &name, &host3]).status.success());
    assert!(
        capstan(&["lab", "ssh", "--name", &name, &host3, "--", "test -f /root/kept"])
            .status
            .success()
    );

    // down leaves no processes, mounts, links or state.
    let status = capstan(&["lab", "status", "--name", &name, "--output", "json"]);
    let lab: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let dir = lab["dir"].as_str().unwrap().to_string();
    let bridge = lab["bridge"].as_str().unwrap().to_string();
    let down = capstan(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "{}", stderr(&down));
    assert!(!std::path::Path::new(&dir).exists());
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&dir));
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(
        !stdout(&links).contains(&format!(" {bridge}:")),
        "bridge {bridge} left behind"
    );
    let cmdlines = Command::new("pgrep").args(["-af", "systemd-nspawn"]).output().unwrap();
    assert!(!stdout(&cmdlines).contains(&dir), "nspawn processes left behind");
}

#[test]
fn malformed_inventory_reports_every_problem_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "cluster:\n  name: demo\nssh:\n  usr: root\nhosts:\n  - name: a\n    address: 10.0.0.1\n    roles: [etcd, dns]\n  - name: a\n    address: 10.0.0.300\n    roles: [etcd]\n",
    )
    .unwrap();
    let out = capstan(&["-i", path.to_str().unwrap(), "inventory", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let file = path.display().to_string();
    for expected in [
        format!("{file}:4:3: "),
        format!("{file}:8:19: "),
        format!("{file}:9:11: "),
        format!("{file}:10:14: "),
    ] {
        assert!(err.contains(&expected), "missing {expected} in:\n{err}");
    }
    assert!(err.contains("hint:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let bash = capstan(&["completions", "bash"]);
    assert!(bash.status.success());
    assert!(stdout(&bash).contains("inventory"));
    let man = capstan(&["man"]);
    assert!(man.status.success());
    assert!(stdout(&man).contains(".TH capstan"));
}

#[test]
fn init_writes_a_valid_starter_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.yaml");
    let path_str = path.to_str().unwrap();
    let init = capstan(&["init", "--out", path_str]);
    assert!(init.status.success(), "{}", stderr(&init));
    let check = capstan(&["-i", path_str, "inventory", "check"]);
    assert!(check.status.success(), "{}", stderr(&check));
    std::fs::write(&path, "mine").unwrap();
    let again = capstan(&["init", "--out", path_str]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("hint:"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
}
