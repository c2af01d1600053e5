//! Scheduled backups carry the components' state, on real lab machines: three etcd members and one
//! control-plane host holding Kubernetes' state files (made by openssl, as in kube_state_lab.rs;
//! kube binaries cannot run here). `capstan backup schedule` installs the state push on the
//! control-plane host (binary, config, etcd client identity, service + path unit + timer, real
//! systemd); the push writes the age-encrypted state into real etcd only when it changed; the
//! leader's scheduled backup to a real S3 server (moto) copies it in as `state.tar.age`, or fails
//! while nothing was pushed. Needs root, the lab prerequisites, the artifact mirror, moto, `age`
//! (age-keygen and age) and `openssl`; skips with a message naming what is missing. The name
//! contains `lab` so nextest's lab group bounds it.

use std::process::Command;
use std::time::{Duration, Instant};

use capstan_lab::Lab;

mod support;
use support::kube::{inventory, kube_state, put, sha256};
use support::s3::{capstan, capstan_ok, Moto, S3Lab, BUCKET};
use support::{changed, json, lab, mirror, remote, require, tool};

const PUSH_SERVICE: &str = "capstan-state-push.service";
const PUSH_METRICS: &str = "/var/lib/prometheus/node-exporter/capstan_state_push.prom";

/// Runs `command` on `host`; whether it succeeded, and its stdout and stderr.
fn remote_status(lab: &Lab, host: &str, command: &str) -> (bool, String) {
    let output = capstan_lab::ssh_command(&lab.name, host, Some(command))
        .unwrap()
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The revision that last wrote `host`'s push in etcd (asked on `member` with its own etcdctl and
/// peer certificate); `None` while there is none.
fn push_revision(lab: &Lab, member: &str, host: &str) -> Option<i64> {
    let out = remote(
        lab,
        member,
        &format!(
            "etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/etcd/pki/ca.crt --cert=/etc/etcd/pki/peer.crt \
             --key=/etc/etcd/pki/peer.key get /capstan/backup/state/{host} -w json"
        ),
    );
    let value: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    value["kvs"]
        .as_array()
        .and_then(|kvs| kvs.first())
        .map(|kv| kv["mod_revision"].as_i64().unwrap())
}

/// Object `name` of the test's backup target (`s3://BUCKET/pushed`), read through the backup
/// crate's own S3 store.
fn fetch(moto: &Moto, name: &str) -> Vec<u8> {
    for (key, value) in moto.environment() {
        std::env::set_var(key, value);
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let url = capstan_backup::StoreUrl::parse(&format!("s3://{BUCKET}/pushed")).unwrap();
        let options = capstan_backup::S3Options {
            path_style: true,
            ..Default::default()
        };
        let store = capstan_backup::open_store(&url, &options).await.unwrap();
        store.get_bytes(name).await.unwrap()
    })
}

/// Journal of `unit` on `host` since the test started it (message text only).
fn journal(lab: &Lab, host: &str, unit: &str) -> String {
    remote(lab, host, &format!("journalctl -u {unit} --no-pager -o cat"))
}

/// Starts the backup service on every member (each run asks whether it leads); the members whose
/// run failed, each with its journal.
fn scheduled_backup(lab: &Lab, members: &[&str]) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for member in members {
        let (ok, _) = remote_status(lab, member, "systemctl start capstan-backup.service");
        if !ok {
            failed.push((member.to_string(), journal(lab, member, "capstan-backup.service")));
        }
    }
    failed
}

#[test]
fn lab_state_push_carries_the_control_planes_state_into_scheduled_backups() {
    if !require(&[
        lab(),
        mirror(),
        tool("age-keygen", "age"),
        tool("age", "age"),
        tool("openssl", "openssl"),
    ]) {
        return;
    }
    let started = Instant::now();
    let Some(s3) = S3Lab::up("push", 4) else {
        return;
    };
    let (lab, moto, work) = (&s3.lab, &s3.moto, &s3.work);
    let (identity, recipient) = (&s3.identity, &s3.recipient);
    let inventory_path = work.path().join("inventory.yaml");
    inventory(
        lab,
        &inventory_path,
        &[(0, "etcd"), (1, "etcd"), (2, "etcd"), (3, "control_plane")],
        &format!(
            "backup:\n  target: s3://{BUCKET}/pushed\n  recipients: [{recipient}]\n  retention: {{keep_last: 20}}\n  \
             schedule: \"*-*-* 04:00:00\"\n"
        ),
    );
    let members: Vec<&str> = lab.machines[..3].iter().map(|m| m.name.as_str()).collect();
    let cp = lab.machines[3].name.as_str();
    capstan_ok(&inventory_path, moto, &["apply", "--only", "etcd"]);
    eprintln!("PUSH LAB: cluster up at {:.1}s", started.elapsed().as_secs_f64());

    // Install: the members' timer, and the push on the control-plane host.
    let schedule = ["backup", "schedule", "--s3-path-style", "--output", "json"];
    // A dry run shows the push's changes on the control-plane host and makes none.
    let dry = capstan_ok(
        &inventory_path,
        moto,
        &["backup", "schedule", "--s3-path-style", "--dry-run", "--output", "json"],
    );
    assert!(
        dry.stdout.contains("/etc/capstan/state-push.yaml") && changed(&json(&dry)) > 0,
        "{}",
        dry.stdout
    );
    assert_eq!(
        remote(
            lab,
            cp,
            "ls /etc/capstan /usr/local/bin/capstan 2>&1 | grep -c 'No such' || true"
        ),
        "2",
        "a dry run changed the control-plane host"
    );
    let first = capstan_ok(&inventory_path, moto, &schedule);
    assert!(
        first
            .stderr
            .contains(&format!("pushed to etcd by {cp} for the scheduled backups")),
        "{}",
        first.stderr
    );
    assert!(!first.stderr.contains("do not carry"), "{}", first.stderr);
    assert_eq!(
        remote(
            lab,
            cp,
            "stat -c '%a %U' /usr/local/bin/capstan /etc/capstan/state-push.yaml /etc/capstan/state-push/client.key"
        ),
        "755 root\n600 root\n600 root"
    );
    let subject = remote(
        lab,
        cp,
        "openssl x509 -noout -subject -nameopt RFC2253 -in /etc/capstan/state-push/client.crt && \
         openssl verify -CAfile /etc/capstan/state-push/ca.crt /etc/capstan/state-push/client.crt",
    );
    assert!(subject.starts_with("subject=CN=capstan-state-push,"), "{subject}");
    assert!(subject.ends_with(": OK"), "{subject}");
    for unit in ["capstan-state-push.path", "capstan-state-push.timer"] {
        assert_eq!(
            remote(lab, cp, &format!("systemctl is-active {unit}")),
            "active",
            "{unit}"
        );
        assert_eq!(
            remote(lab, cp, &format!("systemctl is-enabled {unit}")),
            "enabled",
            "{unit}"
        );
    }
    let config = remote(lab, cp, "cat /etc/capstan/state-push.yaml");
    assert!(
        config.contains(recipient.as_str()) && config.contains("/etc/kubernetes/pki/sa.key"),
        "{config}"
    );
    for member in &members {
        let text = remote(lab, member, "cat /etc/capstan/backup.yaml");
        assert!(text.contains(&format!("state_hosts:\n- {cp}")), "{member}: {text}");
    }

    // Nothing on the host yet: the push fails naming the missing files (journal and metric).
    let (ok, _) = remote_status(lab, cp, &format!("systemctl start {PUSH_SERVICE}"));
    assert!(!ok, "a push without the state files must fail");
    let log = journal(lab, cp, PUSH_SERVICE);
    assert!(
        log.contains("required state file(s) missing") && log.contains("/etc/kubernetes/pki/ca.key"),
        "{log}"
    );
    let metrics = remote(lab, cp, &format!("cat {PUSH_METRICS}"));
    assert!(
        metrics.contains(&format!(
            "capstan_state_push_last_result{{cluster=\"{}\",host=\"{cp}\"}} 0",
            lab.name
        )),
        "{metrics}"
    );
    assert_eq!(push_revision(lab, members[0], cp), None);

    // The leader refuses a scheduled backup that could not restore the control plane.
    let failed = scheduled_backup(lab, &members);
    assert_eq!(failed.len(), 1, "exactly the leader fails: {failed:#?}");
    let (leader, log) = &failed[0];
    assert!(
        log.contains(&format!(
            "no host holding components' state ({cp}) has pushed it to etcd"
        )),
        "{leader}: {log}"
    );
    let backup_metrics = remote(lab, leader, "cat /var/lib/prometheus/node-exporter/capstan_backup.prom");
    assert!(
        backup_metrics.contains(&format!("capstan_backup_last_result{{cluster=\"{}\"}} 0", lab.name)),
        "{backup_metrics}"
    );

    // The state files arrive (path unit held off while they are written one by one); a push
    // writes them.
    let mut state = kube_state(work.path());
    remote(lab, cp, "systemctl stop capstan-state-push.path");
    for (path, content, mode) in &state {
        put(lab, cp, path, content, mode);
    }
    remote(lab, cp, "systemctl start capstan-state-push.path");
    remote(lab, cp, &format!("systemctl start {PUSH_SERVICE}"));
    let log = journal(lab, cp, PUSH_SERVICE);
    assert!(log.contains(&format!("{cp}: pushed 7 state file(s)")), "{log}");
    for (_, content, _) in &state {
        let needle = String::from_utf8_lossy(&content[content.len() / 2..content.len() / 2 + 16]).into_owned();
        assert!(!log.contains(&needle), "file content in the journal");
    }
    let written = push_revision(lab, members[0], cp).expect("the push is in etcd");

    // Unchanged files: the next push writes nothing.
    remote(lab, cp, &format!("systemctl start {PUSH_SERVICE}"));
    assert!(
        journal(lab, cp, PUSH_SERVICE).contains("etcd already holds this state (7 file(s)); nothing written"),
        "{}",
        journal(lab, cp, PUSH_SERVICE)
    );
    assert_eq!(push_revision(lab, members[0], cp), Some(written));

    // A changed file: the path unit starts the push by itself, which writes.
    let secret = support::kube::run(Command::new("openssl").args(["rand", "-base64", "32"]));
    let rotated = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    \
         providers:\n      - aescbc:\n          keys:\n            - name: key2\n              secret: {}\n      - identity: {{}}\n",
        String::from_utf8(secret).unwrap().trim()
    );
    let config_entry = state
        .iter_mut()
        .find(|(path, _, _)| path == capstan_kubernetes::paths::ENCRYPTION_CONFIG)
        .expect("the encryption config is state");
    config_entry.1 = rotated.into_bytes();
    put(lab, cp, &config_entry.0, &config_entry.1, config_entry.2);
    let deadline = Instant::now() + Duration::from_secs(30);
    let rewritten = loop {
        match push_revision(lab, members[0], cp) {
            Some(revision) if revision > written => break revision,
            _ if Instant::now() > deadline => panic!(
                "the path unit did not push the changed file within 30 s:\n{}",
                journal(lab, cp, PUSH_SERVICE)
            ),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    eprintln!("PUSH LAB: pushes checked at {:.1}s", started.elapsed().as_secs_f64());

    // Installing again changes nothing (the push identity is kept while it fits) and pushes nothing.
    let again = capstan_ok(&inventory_path, moto, &schedule);
    assert_eq!(changed(&json(&again)), 0, "{}", again.stdout);
    assert_eq!(push_revision(lab, members[0], cp), Some(rewritten));

    // The leader's scheduled backup now carries the pushed state.
    let failed = scheduled_backup(lab, &members);
    assert!(failed.is_empty(), "{failed:#?}");
    let list = capstan_ok(
        &inventory_path,
        moto,
        &["backup", "list", "--s3-path-style", "--output", "json"],
    );
    let complete: Vec<String> = json(&list)
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["complete"].as_bool() == Some(true))
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(complete.len(), 1, "{}", list.stdout);
    let id = &complete[0];
    let verify = capstan_ok(
        &inventory_path,
        moto,
        &[
            "backup",
            "verify",
            id,
            "--s3-path-style",
            "--identity",
            identity.to_str().unwrap(),
            "--output",
            "json",
        ],
    );
    let report = json(&verify);
    let objects: Vec<&str> = report["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(objects.contains(&"state.tar.age"), "{}", verify.stdout);
    assert_eq!(
        report["problems"].as_array().map(Vec::len),
        Some(0),
        "{}",
        verify.stdout
    );
    assert_eq!(report["plaintext_checked"], true, "{}", verify.stdout);

    // Decrypted, it is exactly the host's files (content and mode).
    let stored = work.path().join("state.tar.age");
    std::fs::write(&stored, fetch(moto, &format!("{id}/state.tar.age"))).unwrap();
    let plain = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(&stored)
        .output()
        .unwrap();
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    let entries = capstan_backup::state::unarchive(&plain.stdout).unwrap();
    let got: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| (e.path.clone(), sha256(&e.data), format!("{:o}", e.mode)))
        .collect();
    let want: Vec<(String, String, String)> = state
        .iter()
        .map(|(path, content, mode)| (path.clone(), sha256(content), mode.to_string()))
        .collect();
    assert_eq!(got, want);
    assert!(entries.iter().all(|e| e.component == "kubernetes"), "{entries:?}");

    // Removal takes the push off the control-plane host too.
    let removed = capstan_ok(
        &inventory_path,
        moto,
        &["backup", "schedule", "--remove", "--output", "json"],
    );
    assert!(changed(&json(&removed)) > 0, "{}", removed.stdout);
    assert_eq!(
        remote(
            lab,
            cp,
            "ls /usr/local/bin/capstan /etc/capstan /etc/systemd/system/capstan-state-push.path 2>&1 | grep -c 'No such' || true"
        ),
        "3"
    );
    let again = capstan(
        &inventory_path,
        moto,
        &["backup", "schedule", "--remove", "--output", "json"],
    );
    assert_eq!(changed(&json(&again)), 0, "{}", again.stdout);
    eprintln!("PUSH LAB: total {:.1}s", started.elapsed().as_secs_f64());
}
