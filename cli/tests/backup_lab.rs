//! `capstan backup schedule` and `capstan drill schedule` on real lab machines running real
//! etcd, with backups on a real S3 server (moto) listening on the lab bridge's gateway address. Needs root, the lab
//! prerequisites, the artifact mirror, moto (`pip install 'moto[server]>=5.2.5'`) and age-keygen;
//! skips with a message naming what is missing. Test names contain `lab` so nextest's lab
//! group bounds concurrency.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use capstan_lab::{Lab, LabGuard, UpOptions};
use serde_json::Value;

mod support;
use support::s3::{capstan, capstan_ok, Moto, S3Lab, ServerProcess, BUCKET};
use support::{
    age_keygen, changed, json, lab, lab_inventory, mirror, mirror_and_version, remote, require, required, tool, MIRROR,
};

const METRICS: &str = "/var/lib/prometheus/node-exporter/capstan_backup.prom";
const SCHEDULER_METRICS: &str = "/var/lib/prometheus/node-exporter/capstan_backup_scheduler.prom";
/// Seconds between scheduled backups in the test (`*:*:0/20`).
const INTERVAL: u64 = 20;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Unix seconds of a backup id's start time (`YYYYMMDDTHHMMSSZ-xxxx`).
fn id_time(id: &str) -> u64 {
    let n = |range: std::ops::Range<usize>| id[range].parse::<i64>().unwrap();
    let (year, month, day) = (n(0..4), n(4..6), n(6..8));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + n(9..11) * 3600 + n(11..13) * 60 + n(13..15)) as u64
}

fn write_inventory(lab: &Lab, path: &Path, recipient: &str) {
    let extra = format!(
        "{}backup:\n  target: s3://{BUCKET}/scheduled\n  recipients: [{recipient}]\n  retention: {{keep_last: 20}}\n  schedule: \"*:*:0/{INTERVAL}\"\n",
        mirror_and_version("3.5.1")
    );
    std::fs::write(path, lab_inventory(lab, &lab.name, &lab.machines, &extra)).unwrap();
}

fn complete_backups(inventory: &Path, moto: &Moto) -> Vec<String> {
    let list = capstan_ok(
        inventory,
        moto,
        &["backup", "list", "--s3-path-style", "--output", "json"],
    );
    json(&list)
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["complete"].as_bool() == Some(true))
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn lab_backup_schedule_one_backup_per_interval_with_metrics() {
    if !require(&[lab(), mirror(), tool("age-keygen", "age")]) {
        return;
    }
    let Some(s3) = S3Lab::up("bs", 3) else {
        return;
    };
    let (lab, moto, work) = (&s3.lab, &s3.moto, &s3.work);
    let (identity, recipient) = (&s3.identity, &s3.recipient);
    let inventory = work.path().join("inventory.yaml");
    write_inventory(lab, &inventory, recipient);
    let hosts: Vec<&str> = lab.machines.iter().map(|m| m.name.as_str()).collect();

    capstan_ok(&inventory, moto, &["apply"]);

    // Install: binary, config, credentials, units on every member; the timer runs.
    // The timer may fire while `schedule` is still running: count intervals from its start.
    let installed_at = unix_now();
    let first = capstan_ok(
        &inventory,
        moto,
        &["backup", "schedule", "--s3-path-style", "--output", "json"],
    );
    assert!(changed(&json(&first)) >= 8 * 3, "{}", first.stdout);
    assert!(
        !first.stderr.contains("capstan-lab-secret"),
        "a secret leaked: {}",
        first.stderr
    );
    for host in &hosts {
        assert_eq!(
            remote(
                lab,
                host,
                "stat -c '%a %U' /etc/capstan/backup.env /etc/capstan/backup.yaml /etc/capstan"
            ),
            "600 root\n600 root\n700 root"
        );
        assert_eq!(remote(lab, host, "systemctl is-active capstan-backup.timer"), "active");
        assert_eq!(
            remote(lab, host, "systemctl is-enabled capstan-backup.timer"),
            "enabled"
        );
    }
    // Re-running changes nothing.
    let again = capstan_ok(
        &inventory,
        moto,
        &["backup", "schedule", "--s3-path-style", "--output", "json"],
    );
    assert_eq!(changed(&json(&again)), 0, "{}", again.stdout);

    // Let the timer fire two or three times.
    std::thread::sleep(Duration::from_secs(50));
    let backups = complete_backups(&inventory, moto);
    // A run that started at the last boundary may still be uploading (allowed for below).
    let ended_at = unix_now();
    eprintln!("scheduled backups: {backups:?}");
    let fired: Vec<u64> = (installed_at / INTERVAL + 1..=ended_at / INTERVAL).collect();
    let mut slots: Vec<u64> = backups.iter().map(|id| id_time(id) / INTERVAL).collect();
    slots.sort_unstable();
    let distinct = {
        let mut d = slots.clone();
        d.dedup();
        d
    };
    assert_eq!(
        distinct.len(),
        slots.len(),
        "more than one backup in an interval: {backups:?}"
    );
    assert!(
        slots.iter().all(|slot| fired.contains(slot)),
        "backup outside the fired intervals {fired:?}: {backups:?}"
    );
    assert!(
        slots.len() >= fired.len().saturating_sub(1) && slots.len() >= 2,
        "expected one backup for each of the {} fired intervals, got {backups:?}",
        fired.len()
    );

    // Every member's timer fired; followers stood back.
    let journals: Vec<String> = hosts
        .iter()
        .map(|h| remote(lab, h, "journalctl -u capstan-backup.service --no-pager -o cat"))
        .collect();
    let skipped = journals.iter().filter(|j| j.contains("not the etcd leader")).count();
    assert!(skipped >= 2, "followers did not run or did not skip: {journals:#?}");
    // Every member's runs write the scheduler metrics: its timer fired, led or not.
    let scheduler: Vec<String> = hosts
        .iter()
        .map(|h| remote(lab, h, &format!("cat {SCHEDULER_METRICS}")))
        .collect();
    for (host, text) in hosts.iter().zip(&scheduler) {
        let sample = text
            .lines()
            .find(|l| l.starts_with("capstan_backup_scheduler_last_run_timestamp_seconds{"))
            .unwrap_or_else(|| panic!("{host}: {text}"));
        assert!(sample.contains(&format!("member=\"{host}\"")), "{sample}");
        let at: u64 = sample.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(at >= installed_at, "{host}: stale scheduler run in {text}");
        // The staleness alerts divide by the interval: the next run must be there, one interval on.
        let next: f64 = text
            .lines()
            .find(|l| l.starts_with("capstan_backup_scheduler_next_run_timestamp_seconds{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{host}: no next run in {text}"));
        assert!(
            next > at as f64,
            "{host}: next run {next} not after the run {at}: {text}"
        );
    }
    let led: Vec<bool> = scheduler
        .iter()
        .filter_map(|t| t.lines().find(|l| l.starts_with("capstan_backup_scheduler_leader{")))
        .map(|l| l.ends_with(" 1"))
        .collect();
    assert_eq!(led.len(), hosts.len(), "{scheduler:#?}");
    assert!(
        led.contains(&true) && led.contains(&false),
        "expected a leader and followers: {scheduler:#?}"
    );

    // Metrics on the leader(s) that backed up, result 1, recent success.
    let metrics: Vec<String> = hosts
        .iter()
        .map(|h| remote(lab, h, &format!("cat {METRICS} 2>/dev/null || true")))
        .collect();
    let written: Vec<&String> = metrics.iter().filter(|m| !m.is_empty()).collect();
    assert!(!written.is_empty(), "no member wrote {METRICS}");
    let cluster = format!("{{cluster=\"{}\"}}", lab.name);
    let newest = written
        .iter()
        .filter_map(|m| {
            m.lines()
                .find(|l| l.starts_with(&format!("capstan_backup_last_success_timestamp_seconds{cluster}")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0);
    assert!(newest >= installed_at, "stale success timestamp in {written:#?}");
    assert!(
        written
            .iter()
            .any(|m| m.contains(&format!("capstan_backup_last_result{cluster} 1"))),
        "{written:#?}"
    );

    // The scheduled backups are real, complete and decryptable.
    let verify = capstan_ok(
        &inventory,
        moto,
        &[
            "backup",
            "verify",
            "latest",
            "--s3-path-style",
            "--identity",
            identity.to_str().unwrap(),
        ],
    );
    assert!(verify.stdout.contains("verified"), "{}", verify.stdout);

    // Remove everything; removing again changes nothing.
    let removed = capstan_ok(
        &inventory,
        moto,
        &["backup", "schedule", "--remove", "--output", "json"],
    );
    assert!(changed(&json(&removed)) >= 3 * 5, "{}", removed.stdout);
    for host in &hosts {
        assert_eq!(
            remote(
                lab,
                host,
                "ls /etc/systemd/system/capstan-backup.timer /etc/capstan /usr/local/bin/capstan 2>/dev/null | wc -l"
            ),
            "0"
        );
        assert_ne!(
            remote(lab, host, "systemctl is-active capstan-backup.timer || true"),
            "active"
        );
    }
    let removed_again = capstan_ok(
        &inventory,
        moto,
        &["backup", "schedule", "--remove", "--output", "json"],
    );
    assert_eq!(changed(&json(&removed_again)), 0, "{}", removed_again.stdout);

    // An operator backup still works with the first member (the first CA holder) powered off:
    // the CA comes from another member and only reachable members are snapshot sources.
    capstan_lab::stop(&lab.name, hosts[0]).expect("stop the first member");
    let manual = capstan_ok(&inventory, moto, &["backup", "create", "--s3-path-style"]);
    let id = manual.stdout.trim();
    assert!(
        complete_backups(&inventory, moto).iter().any(|b| b == id),
        "{id} not listed"
    );
    assert!(
        !manual.stderr.contains(&lab.machines[0].ip),
        "snapshot from the stopped member: {}",
        manual.stderr
    );
}

/// The artifact mirror served over HTTP on one address (what scheduled drills on the members
/// download etcd from).
fn http_mirror(host: &str) -> Result<ServerProcess, String> {
    ServerProcess::start(
        &[
            "python3",
            "-m",
            "http.server",
            "--bind",
            "{host}",
            "--directory",
            MIRROR,
            "{port}",
        ],
        host,
    )
}

#[test]
fn lab_drill_schedule_runs_once_on_the_leader_into_drill_hosts() {
    if !require(&[
        lab(),
        mirror(),
        tool("age-keygen", "age"),
        tool("etcdctl", "etcd-client"),
    ]) {
        return;
    }
    let guard = LabGuard::up(UpOptions::new(format!("ds{}", std::process::id() % 10000), 4)).expect("lab up");
    let lab = guard.lab().clone();
    let Some(moto) = required("no S3 server", Moto::start(&lab.gateway)) else {
        return;
    };
    let mirror = http_mirror(&lab.gateway).expect("http mirror");
    let work = tempfile::tempdir().unwrap();
    let identity = work.path().join("identity.txt");
    let recipient = age_keygen(&identity);
    let other_identity = work.path().join("other.txt");
    age_keygen(&other_identity);

    // Three members; the fourth machine is the dedicated drill host.
    let members: Vec<&capstan_lab::Machine> = lab.machines[..3].iter().collect();
    let drill_host = &lab.machines[3];
    let hosts: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let inventory = work.path().join("inventory.yaml");
    std::fs::write(
        &inventory,
        lab_inventory(
            &lab,
            &lab.name,
            members.iter().copied(),
            &format!(
                "{}backup:\n  target: s3://{BUCKET}/drilled\n  recipients: [{recipient}]\ndrill:\n  expect_keys: [\"drill/*\"]\n",
                mirror_and_version("3.5.1")
            ),
        ),
    )
    .unwrap();
    let drill_yaml = |mirror_url: &str, machines: &[&capstan_lab::Machine]| {
        lab_inventory(
            &lab,
            "drill",
            machines.iter().copied(),
            &format!("artifacts:\n  mirror: \"{mirror_url}\"\nversions:\n  etcd: \"3.5.1\"\n"),
        )
    };
    let drill_inventory = work.path().join("drill.yaml");
    std::fs::write(&drill_inventory, drill_yaml(&mirror.url, &[drill_host])).unwrap();

    capstan_ok(&inventory, &moto, &["apply"]);
    let creds = work.path().join("creds");
    capstan_ok(
        &inventory,
        &moto,
        &["etcd", "credentials", "--out", creds.to_str().unwrap()],
    );
    let endpoints = std::fs::read_to_string(creds.join("endpoints")).unwrap();
    let put = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--cacert={}", creds.join("ca.crt").display()))
        .arg(format!("--cert={}", creds.join("client.crt").display()))
        .arg(format!("--key={}", creds.join("client.key").display()))
        .arg(format!("--endpoints={}", endpoints.trim()))
        .args(["put", "drill/marker", "present"])
        .output()
        .unwrap();
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    capstan_ok(&inventory, &moto, &["backup", "create", "--s3-path-style"]);

    let schedule = |drill: &Path, identity: &Path, extra: &[&str]| {
        let mut args = vec![
            "drill",
            "schedule",
            "--s3-path-style",
            "--identity",
            identity.to_str().unwrap(),
            "--drill-target",
            drill.to_str().unwrap(),
            "--on-calendar",
            "*:*:0/30",
            "--expect-key",
            "drill/marker",
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        capstan(&inventory, &moto, &args)
    };

    // Refused before anything changes: a drill host that is a cluster member, a mirror that is
    // a directory on this machine, an identity that cannot open the backups.
    let bad = work.path().join("bad.yaml");
    std::fs::write(&bad, drill_yaml(&mirror.url, &[members[0]])).unwrap();
    let run = schedule(&bad, &identity, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("each drill wipes its drill hosts"),
        "{}",
        run.stderr
    );
    std::fs::write(&bad, drill_yaml(&format!("file://{MIRROR}"), &[drill_host])).unwrap();
    let run = schedule(&bad, &identity, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("scheduled drills run on the etcd members"),
        "{}",
        run.stderr
    );
    let run = schedule(&drill_inventory, &other_identity, &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("cannot decrypt the latest backup"),
        "{}",
        run.stderr
    );
    // A dry run shows the changes and makes none.
    let dry = schedule(&drill_inventory, &identity, &["--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(changed(&json(&dry)) >= 12 * 3, "{}", dry.stdout);
    for host in &hosts {
        assert_eq!(remote(&lab, host, "ls /etc/capstan 2>/dev/null | wc -l"), "0");
    }

    let installed = schedule(&drill_inventory, &identity, &[]);
    assert_eq!(installed.code, 0, "{}", installed.stderr);
    assert!(changed(&json(&installed)) >= 12 * 3, "{}", installed.stdout);
    assert!(
        !installed.stderr.contains("AGE-SECRET-KEY"),
        "a secret leaked: {}",
        installed.stderr
    );
    for host in &hosts {
        assert_eq!(
            remote(
                &lab,
                host,
                "stat -c '%a %U' /etc/capstan/drill-identity.txt /etc/capstan/drill/id /etc/capstan/drill.env"
            ),
            "600 root\n600 root\n600 root"
        );
        assert_eq!(remote(&lab, host, "systemctl is-active capstan-drill.timer"), "active");
    }
    let again = schedule(&drill_inventory, &identity, &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(changed(&json(&again)), 0, "{}", again.stdout);

    // Wait for a drill: the leader writes a passing report and metrics; the others stand back.
    let deadline = Instant::now() + Duration::from_secs(180);
    let drilled = loop {
        let reports: Vec<(&str, String)> = hosts
            .iter()
            .map(|h| {
                (
                    *h,
                    remote(&lab, h, "cat /var/lib/capstan/drills/latest.json 2>/dev/null || true"),
                )
            })
            .filter(|(_, r)| !r.is_empty())
            .collect();
        if !reports.is_empty() {
            break reports;
        }
        assert!(Instant::now() < deadline, "no scheduled drill finished within 180 s");
        std::thread::sleep(Duration::from_secs(3));
    };
    assert_eq!(drilled.len(), 1, "more than one member drilled: {drilled:#?}");
    let (leader, report) = &drilled[0];
    let report: Value = serde_json::from_str(report).unwrap();
    assert_eq!(report["success"], Value::Bool(true), "{report:#}");
    // The key from --expect-key and the prefix from the inventory's drill.expect_keys.
    for key in ["drill/marker", "drill/*"] {
        assert!(
            report["checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"].as_str().unwrap() == format!("key {key} exists") && c["ok"] == Value::Bool(true)),
            "{key}: {report:#}"
        );
    }
    let metrics = remote(&lab, leader, "cat /var/lib/prometheus/node-exporter/capstan_drill.prom");
    assert!(
        metrics.contains("capstan_drill_success{") && metrics.contains("} 1"),
        "{metrics}"
    );
    let followers: Vec<&&str> = hosts.iter().filter(|h| *h != leader).collect();
    // A follower whose timer was installed just after a tick runs at the next one (30 s later).
    for host in &followers {
        let deadline = Instant::now() + Duration::from_secs(75);
        loop {
            let journal = remote(&lab, host, "journalctl -u capstan-drill.service --no-pager -o cat");
            if journal.contains("not the etcd leader") {
                break;
            }
            assert!(Instant::now() < deadline, "{host}: {journal}");
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    // Every member, leader or not, says when its drill timer ran and the schedule's interval (30 s
    // here; the drill-stale alert doubles it).
    for host in &hosts {
        let scheduler = remote(
            &lab,
            host,
            "cat /var/lib/prometheus/node-exporter/capstan_drill_scheduler.prom",
        );
        let value = |name: &str| -> f64 {
            scheduler
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{host}: no {name}: {scheduler}"))
        };
        assert!(
            value("capstan_drill_scheduler_last_run_timestamp_seconds{") > 1.7e9,
            "{scheduler}"
        );
        assert_eq!(
            value("capstan_drill_schedule_interval_seconds{"),
            30.0,
            "{host}: {scheduler}"
        );
    }
    // The drill host was wiped afterwards.
    assert_eq!(
        remote(
            &lab,
            &drill_host.name,
            "systemctl is-active etcd || true; ls -d /var/lib/etcd 2>/dev/null | wc -l"
        ),
        "inactive\n0"
    );

    // Remove; removing again changes nothing.
    let removed = schedule(&drill_inventory, &identity, &["--remove"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    for host in &hosts {
        assert_eq!(
            remote(
                &lab,
                host,
                "ls /etc/systemd/system/capstan-drill.timer /etc/capstan /usr/local/bin/capstan /var/lib/capstan/drills \
                 /var/lib/prometheus/node-exporter/capstan_drill.prom /var/lib/prometheus/node-exporter/capstan_drill_scheduler.prom \
                 2>/dev/null | wc -l"
            ),
            "0"
        );
    }
    let removed_again = schedule(&drill_inventory, &identity, &["--remove"]);
    assert_eq!(changed(&json(&removed_again)), 0, "{}", removed_again.stdout);
}

#[test]
fn backup_id_times_parse() {
    // 2026-11-28T04:15:00Z
    assert_eq!(id_time("20261128T041500Z-3f9a"), 1_795_839_300);
    assert_eq!(id_time("19700101T000020Z-0000"), 20);
}
