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

/// The components of a reset report, in the order they ran.
fn component_order(report: &serde_json::Value) -> Vec<&str> {
    report["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["component"].as_str().unwrap())
        .collect()
}

fn position_in(order: &[&str], name: &str) -> usize {
    order
        .iter()
        .position(|c| *c == name)
        .unwrap_or_else(|| panic!("{name} missing from {order:?}"))
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
    round_trip("rs", false);
}

/// With monitoring too (node_exporter everywhere, Prometheus and Alertmanager on two hosts, system
/// users): the same round trip.
#[test]
fn reset_lab_with_monitoring() {
    let sums = std::fs::read_to_string(Path::new(support::MIRROR).join("SHA256SUMS")).unwrap_or_default();
    let monitoring = if ["prometheus-", "node_exporter-", "alertmanager-"]
        .iter()
        .all(|p| sums.contains(p))
    {
        Ok(())
    } else {
        Err("artifact mirror lacks Prometheus, node_exporter or Alertmanager (run scripts/setup.sh)".to_string())
    };
    if !require(&[lab(), mirror_etcd(&["3.5.1"]), monitoring]) {
        return;
    }
    round_trip("rm", true);
}

/// Shadow's backup copies record the last change to the user database: after a system user was
/// added and removed they hold the database as it was with the user, so they differ from before.
const USER_DATABASE_BACKUPS: &[&str] = &["/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-"];

fn round_trip(prefix: &str, with_monitoring: bool) {
    let EtcdLab {
        guard: _guard,
        lab,
        inventory,
        work: _work,
    } = etcd_lab(prefix, "3.5.1");
    if with_monitoring {
        let text = std::fs::read_to_string(&inventory).unwrap();
        let text = text.replacen("roles: [etcd]", "roles: [etcd, monitoring]", 2);
        std::fs::write(&inventory, text).unwrap();
    }
    let hosts: Vec<String> = lab.machines.iter().map(|m| m.name.clone()).collect();
    let (before_all, before): (Vec<BTreeSet<String>>, Vec<BTreeSet<String>>) =
        hosts.iter().map(|h| trees(&lab, h)).unzip();

    assert!(
        before.iter().all(|t| t.len() > 1000),
        "the listing is too short to mean anything"
    );
    capstan_ok(&inventory, &["apply"]);
    let applied_tree = tree(&lab, &hosts[0]);
    let mut expected = vec![" /usr/local/bin/etcd", " /etc/etcd/pki/ca.key", " /var/lib/etcd/member"];
    if with_monitoring {
        expected.extend([
            " /usr/local/bin/node_exporter",
            " /usr/local/bin/prometheus",
            " /etc/alertmanager",
        ]);
    }
    for installed in expected {
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
    let order = component_order(&done);
    let position = |name: &str| position_in(&order, name);
    assert!(position("backup-schedules") < position("etcd"), "{order:?}");
    assert_eq!(order.last(), Some(&"capstan"), "the engine's own clean-up last");
    if with_monitoring {
        assert!(position("monitoring") < position("etcd"), "{order:?}");
    }

    let exception =
        |line: &String| with_monitoring && USER_DATABASE_BACKUPS.iter().any(|b| line.ends_with(&format!(" {b}")));
    for ((host, before), before_all) in hosts.iter().zip(&before).zip(&before_all) {
        assert_tree_as_before(&lab, host, before, before_all, &exception);
    }

    // A second reset finds nothing to remove.
    let again = json(&capstan_ok(&inventory, &["reset", "--yes", "--output", "json"]));
    assert_eq!(changed(&again), 0, "{again:#}");

    // And apply works again from scratch.
    let applied = json(&capstan_ok(&inventory, &["apply", "--output", "json"]));
    assert!(changed(&applied) > 10, "{applied:#}");
    capstan_ok(&inventory, &["status", "--timeout", "3"]);
}

/// The trees of `host` now against `before` (and, for the log, `before_all`, volatile paths
/// included): equal, apart from the lines `exception` accepts (printed).
fn assert_tree_as_before(
    lab: &Lab,
    host: &str,
    before: &BTreeSet<String>,
    before_all: &BTreeSet<String>,
    exception: &dyn Fn(&String) -> bool,
) {
    let (after_all, after) = trees(lab, host);
    let volatile: Vec<&String> = after_all
        .symmetric_difference(before_all)
        .filter(|l| !after.contains(*l) && !before.contains(*l))
        .collect();
    eprintln!(
        "{host}: differences in volatile paths (ignored):\n{}",
        volatile.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    let gone: Vec<&String> = before.difference(&after).filter(|l| !exception(l)).collect();
    let added: Vec<&String> = after.difference(before).filter(|l| !exception(l)).collect();
    let excepted: Vec<&String> = after.symmetric_difference(before).filter(|l| exception(l)).collect();
    eprintln!("{host}: {} excepted differences: {excepted:#?}", excepted.len());
    assert!(
        gone.is_empty() && added.is_empty(),
        "{host}: the file trees differ from before the apply\nmissing now:\n{}\nnew now:\n{}",
        gone.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        added.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
}

/// containerd, crun and the CNI plugins in the artifact mirror, and the local Debian repository.
fn node_parts() -> support::Need {
    let sums = std::fs::read_to_string(Path::new(support::MIRROR).join("SHA256SUMS")).unwrap_or_default();
    for part in [
        "containerd-1.6.20-linux-amd64",
        "crun-1.8.1-linux-amd64",
        "cni-plugins-linux-amd64-v1.1.1",
    ] {
        if !sums.contains(part) {
            return Err(format!("artifact mirror lacks {part} (run scripts/setup.sh)"));
        }
    }
    if !Path::new("/var/cache/capstan/debs/Packages").exists() {
        return Err("local Debian repository missing (run scripts/setup.sh)".into());
    }
    Ok(())
}

/// Debian's package database and apt's caches: they change with every package installed.
const PACKAGE_STATE: &[&str] = &[
    "/var/lib/dpkg/",
    "/var/lib/apt/",
    "/var/cache/apt/",
    "/var/cache/debconf/",
    "/etc/alternatives/",
    "/etc/ld.so.cache",
    // netbase's maintainer script writes it (not in `dpkg -L netbase`); netbase comes with iptables.
    "/etc/networks",
];

fn installed_packages(lab: &Lab, host: &str) -> BTreeSet<String> {
    remote(lab, host, "dpkg-query -W -f '${Package}\\n'")
        .lines()
        .map(str::to_string)
        .collect()
}

/// The path a listing line names (after the first " /").
fn listed_path(line: &str) -> &str {
    line.find(" /").map(|i| &line[i + 1..]).unwrap_or(line)
}

/// Nodes (containerd, crun, the CNI pod network, modules and sysctl files) and the endpoint's
/// teardown on a lab of etcd+node and node hosts: apply → reset → the trees as before, except
/// the Debian packages the Package op installed (capstan keeps no record of what was installed
/// before it, so reset leaves packages: their files and dpkg's database are the listed
/// exceptions) → a second reset changes nothing → apply again works.
#[test]
fn reset_lab_with_nodes() {
    if !require(&[lab(), support::mirror(), mirror_etcd(&["3.5.1"]), node_parts()]) {
        return;
    }
    let started = std::time::Instant::now();
    let guard = capstan_lab::LabGuard::up(capstan_lab::UpOptions::new(
        format!("rn{}", std::process::id() % 10000),
        2,
    ))
    .expect("lab up");
    let lab = guard.lab().clone();
    let work = tempfile::tempdir().unwrap();
    let inventory = work.path().join("inventory.yaml");
    let mut yaml = format!(
        "cluster:\n  name: {}\nssh:\n  user: root\n  identity_file: {:?}\n  known_hosts: strict\n  known_hosts_file: {:?}\n\
         artifacts:\n  mirror: \"file://{}\"\n  apt_source: \"deb [trusted=yes] file:/srv/capstan-debs ./\"\n\
         versions:\n  etcd: \"3.5.1\"\n  containerd: \"1.6.20\"\n  runc: \"1.1.5\"\n  crun: \"1.8.1\"\n  cni_plugins: \"1.1.1\"\n\
         network:\n  pod_cidr: 10.244.0.0/16\n  node_prefix: 24\n\
         runtime:\n  lab_cgroupless: auto\n\
         hosts:\n",
        lab.name,
        lab.key_path.display().to_string(),
        lab.known_hosts_path.display().to_string(),
        support::MIRROR,
    );
    for (i, m) in lab.machines.iter().enumerate() {
        let roles = if i == 0 { "[etcd, node]" } else { "[node]" };
        yaml.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: {roles}\n",
            m.name, m.ip
        ));
    }
    std::fs::write(&inventory, yaml).unwrap();
    let hosts: Vec<String> = lab.machines.iter().map(|m| m.name.clone()).collect();
    let (before_all, before): (Vec<BTreeSet<String>>, Vec<BTreeSet<String>>) =
        hosts.iter().map(|h| trees(&lab, h)).unzip();
    let packages_before: Vec<BTreeSet<String>> = hosts.iter().map(|h| installed_packages(&lab, h)).collect();

    capstan_ok(&inventory, &["apply"]);
    eprintln!("apply: {:?}", started.elapsed());
    let applied = tree(&lab, &hosts[1]);
    for installed in [
        " /usr/local/bin/containerd",
        " /usr/local/bin/crun",
        " /opt/cni/bin/bridge",
        " /etc/cni/net.d/10-capstan.conflist",
        " /etc/sysctl.d/90-capstan-nodes.conf",
        " /etc/modules-load.d/capstan-nodes.conf",
        " /etc/apt/sources.list.d/capstan.list",
    ] {
        assert!(
            applied.iter().any(|l| l.ends_with(installed)),
            "the listing misses{installed} after apply"
        );
    }
    let network = |host: &str| {
        remote(
            &lab,
            host,
            "systemctl is-active containerd || true; ip -4 route show proto 203; ip link show cni0 >/dev/null 2>&1 && echo cni0; \
             iptables -w -t nat -S | grep -c CAPSTAN-POD-MASQ || true",
        )
    };
    let up = network(&hosts[0]);
    assert!(up.starts_with("active") && up.contains("via"), "{up}");

    let plan = json(&capstan_ok(&inventory, &["reset", "--dry-run", "--output", "json"]));
    assert!(changed(&plan) > 10, "{plan:#}");
    assert_eq!(network(&hosts[0]), up, "a dry run changed the pod network");

    let reset_started = std::time::Instant::now();
    let done = json(&capstan_ok(&inventory, &["reset", "--yes", "--output", "json"]));
    eprintln!("reset: {:?}", reset_started.elapsed());
    assert!(changed(&done) > 10, "{done:#}");
    let order = component_order(&done);
    let position = |name: &str| position_in(&order, name);
    assert!(position("nodes") < position("etcd"), "{order:?}");
    for host in &hosts {
        // Routes, masquerading chain and bridge gone; containerd no longer a unit.
        assert_eq!(network(host).trim(), "inactive\n0", "{host}");
    }

    for (i, host) in hosts.iter().enumerate() {
        let new_packages: BTreeSet<String> = installed_packages(&lab, host)
            .difference(&packages_before[i])
            .cloned()
            .collect();
        eprintln!("{host}: packages installed by apply and left by reset: {new_packages:?}");
        let package_files: BTreeSet<String> = if new_packages.is_empty() {
            BTreeSet::new()
        } else {
            let names: Vec<&str> = new_packages.iter().map(String::as_str).collect();
            remote(&lab, host, &format!("dpkg -L {} | sort -u", names.join(" ")))
                .lines()
                .map(str::to_string)
                .collect()
        };
        let exception = |line: &String| {
            let path = listed_path(line);
            PACKAGE_STATE
                .iter()
                .any(|p| path.starts_with(p) || path == p.trim_end_matches('/'))
                || package_files.contains(path)
        };
        assert_tree_as_before(&lab, host, &before[i], &before_all[i], &exception);
    }

    let again = json(&capstan_ok(&inventory, &["reset", "--yes", "--output", "json"]));
    assert_eq!(changed(&again), 0, "{again:#}");

    let applied = json(&capstan_ok(&inventory, &["apply", "--output", "json"]));
    assert!(changed(&applied) > 10, "{applied:#}");
    assert!(network(&hosts[0]).starts_with("active"));
    eprintln!("reset_lab_with_nodes: {:?}", started.elapsed());
}
