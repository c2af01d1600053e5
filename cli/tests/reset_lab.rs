//! `capstan reset` on real lab machines: apply → reset (confirmed on standard input) leaves the
//! hosts' file trees as they were before the apply; a second reset changes nothing; apply works
//! again from scratch. Also: `--dry-run` changes nothing, a partial reset that would break etcd's
//! quorum is refused, a wrong confirmation stops. Needs root, the lab prerequisites and etcd
//! 3.5.1 in the artifact mirror; skips with a message naming what is missing.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use capstan_lab::Lab;

mod support;
use support::{capstan_ok, changed, etcd_lab, json, lab, mirror_etcd, remote, require, run_capstan, EtcdLab, Run};

/// The trees capstan may write to, listed with type, mode, owner and (for files) a checksum.
const TREES: &str = "/etc /usr/local /var/lib /var/cache /opt /srv";

/// Paths that change on a running Debian machine whatever capstan does (systemd's own state).
const VOLATILE: &[&str] = &[
    "/var/lib/systemd/",
    "/etc/machine-id",
    "/var/cache/ldconfig/",
    "/etc/ld.so.cache",
];

/// The listing of [`TREES`] on `host`, and the same without the [`VOLATILE`] paths.
fn trees(lab: &Lab, host: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let all = full_tree(lab, host);
    let volatile = |line: &&String| VOLATILE.iter().any(|v| line.contains(&format!(" {v}")));
    let kept: BTreeSet<String> = all.iter().filter(|l| !volatile(l)).cloned().collect();
    eprintln!(
        "{host}: {} paths listed, {} of them volatile",
        all.len(),
        all.len() - kept.len()
    );
    (all, kept)
}

fn tree(lab: &Lab, host: &str) -> BTreeSet<String> {
    trees(lab, host).1
}

fn full_tree(lab: &Lab, host: &str) -> BTreeSet<String> {
    let listing = remote(
        lab,
        host,
        &format!(
            "find {TREES} -xdev \\( -type f -printf '%y %m %u:%g %s %p\\n' -o -printf '%y %m %u:%g - %p\\n' \\) 2>/dev/null | sort; \
             find /etc -xdev -type f -exec sha256sum {{}} + 2>/dev/null | sort -k2"
        ),
    );
    listing.lines().map(str::to_string).collect()
}

fn reset_with_answer(inventory: &Path, answer: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .arg("-i")
        .arg(inventory)
        .args(["reset", "--output", "json"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(answer.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn reset_lab_leaves_the_hosts_as_capstan_found_them() {
    if !require(&[lab(), mirror_etcd(&["3.5.1"])]) {
        return;
    }
    let EtcdLab {
        guard: _guard,
        lab,
        inventory,
        work: _work,
    } = etcd_lab("rs", "3.5.1");
    let hosts: Vec<String> = lab.machines.iter().map(|m| m.name.clone()).collect();
    let (before_all, before): (Vec<BTreeSet<String>>, Vec<BTreeSet<String>>) =
        hosts.iter().map(|h| trees(&lab, h)).unzip();

    assert!(
        before.iter().all(|t| t.len() > 1000),
        "the listing is too short to mean anything"
    );
    capstan_ok(&inventory, &["apply"]);
    let applied_tree = tree(&lab, &hosts[0]);
    for installed in [" /usr/local/bin/etcd", " /etc/etcd/pki/ca.key", " /var/lib/etcd/member"] {
        assert!(
            applied_tree.iter().any(|l| l.ends_with(installed)),
            "the listing misses{installed} after apply"
        );
    }
    let active = |host: &str| remote(&lab, host, "systemctl is-active etcd || true");

    // A dry run shows the removals and changes nothing.
    let plan = capstan_ok(&inventory, &["reset", "--dry-run", "--output", "json"]);
    let planned = json(&plan);
    assert!(changed(&planned) > 10, "{planned:#}");
    assert_eq!(active(&hosts[0]), "active");

    // Two of three members would leave etcd without quorum: refused without --force.
    let partial = run_capstan(
        Some(&inventory),
        &["reset", "--yes", "--hosts", &format!("{},{}", hosts[0], hosts[1])],
        &[],
    );
    assert_ne!(partial.code, 0);
    assert!(
        partial.stderr.contains("fewer than the quorum of 2") && partial.stderr.contains("--force"),
        "{}",
        partial.stderr
    );
    assert_eq!(active(&hosts[0]), "active");

    // A wrong answer stops before anything changes.
    let wrong = reset_with_answer(&inventory, "nope\n");
    assert_ne!(wrong.code, 0);
    assert!(wrong.stderr.contains("not confirmed"), "{}", wrong.stderr);
    assert_eq!(active(&hosts[0]), "active");

    // The cluster's name confirms (no backup target in this inventory: no backup question).
    let reset = reset_with_answer(&inventory, &format!("{}\n", lab.name));
    assert_eq!(reset.code, 0, "{}", reset.stderr);
    assert!(
        reset.stderr.contains(&format!("type the cluster name ({})", lab.name)),
        "{}",
        reset.stderr
    );
    let done = json(&reset);
    assert!(changed(&done) > 10, "{done:#}");
    let order: Vec<&str> = done["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["component"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["backup-schedules", "etcd", "capstan"],
        "last installed first, the engine's own last"
    );

    for ((host, before), before_all) in hosts.iter().zip(&before).zip(&before_all) {
        let (after_all, after) = trees(&lab, host);
        let volatile: Vec<&String> = after_all.symmetric_difference(before_all).collect();
        eprintln!(
            "{host}: differences in volatile paths (ignored):\n{}",
            volatile.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        );
        let gone: Vec<&String> = before.difference(&after).collect();
        let added: Vec<&String> = after.difference(before).collect();
        assert!(
            gone.is_empty() && added.is_empty(),
            "{host}: the file trees differ from before the apply\nmissing now:\n{}\nnew now:\n{}",
            gone.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
            added.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        );
    }

    // A second reset finds nothing to remove.
    let again = json(&capstan_ok(&inventory, &["reset", "--yes", "--output", "json"]));
    assert_eq!(changed(&again), 0, "{again:#}");

    // And apply works again from scratch.
    let applied = json(&capstan_ok(&inventory, &["apply", "--output", "json"]));
    assert!(changed(&applied) > 10, "{applied:#}");
    capstan_ok(&inventory, &["status", "--timeout", "3"]);
}
