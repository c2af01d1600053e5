//! Logging on real lab machines: systemd-journal-upload on every machine, systemd-journal-remote
//! behind capstan's mutual-TLS haproxy on the first, from the lab's apt repository.
//!
//! - a `logger` line on each machine is readable through `capstan logs` within 10 s;
//! - a second apply changes nothing;
//! - a client certificate of another CA is refused (the same command with the cluster's passes);
//! - the aggregator is powered off while the other machines write numbered lines (60 s by
//!   default; `CAPSTAN_LOGGING_OUTAGE_SECS=300` for the issue's 5-minute run): after it returns,
//!   every number is there (missing and duplicate lines counted; duplicates are allowed);
//! - the uploader is SIGKILLed mid-stream and the sending machine powered off and on: none missing;
//! - under a flood, the aggregator's storage stays within its budget (and lines/s shipped are
//!   measured).
//!
//! Needs root, the lab prerequisites and the lab's apt repository with systemd-journal-remote
//! and haproxy; skips with a message naming what is missing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use capstan_lab::{Lab, LabGuard, UpOptions};
use serde_json::Value;

mod support;
use support::{capstan_ok, changed, json, lab, remote, require, run_capstan, Need};

/// The lab's apt repository holds `packages`.
fn apt_repo_has(packages: &[&str]) -> Need {
    let index = capstan_lab::Paths::from_env().default_apt_repo_dir().join("Packages");
    let text = std::fs::read_to_string(&index).unwrap_or_default();
    match packages
        .iter()
        .find(|p| !text.lines().any(|l| l == format!("Package: {p}")))
    {
        Some(missing) => Err(format!(
            "lab apt repository {} lacks {missing} (run scripts/setup.sh)",
            index.display()
        )),
        None => Ok(()),
    }
}

fn needs() -> bool {
    require(&[lab(), apt_repo_has(&["systemd-journal-remote", "haproxy"])])
}

/// The first machine is the aggregator (and the one etcd member; like the others, a `monitoring` host, so the alert
/// rules are written too; only `--only logging` is applied).
fn inventory(lab: &Lab, logging: &str) -> String {
    let mut yaml = format!(
        "cluster:\n  name: {}\nssh:\n  user: root\n  identity_file: {:?}\n  known_hosts: strict\n  known_hosts_file: {:?}\n\
         artifacts:\n  apt_source: \"deb [trusted=yes] file:{} ./\"\nlogging:\n{logging}hosts:\n",
        lab.name,
        lab.key_path.display().to_string(),
        lab.known_hosts_path.display().to_string(),
        "/srv/capstan-debs",
    );
    for (i, m) in lab.machines.iter().enumerate() {
        let roles = if i == 0 {
            "[etcd, logging, monitoring]"
        } else {
            "[monitoring]"
        };
        yaml.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: {roles}\n",
            m.name, m.ip
        ));
    }
    yaml
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id() % 10000)
}

/// `capstan logs ARGS --output json`: the entries and stderr (which names the source).
fn logs(inventory: &Path, args: &[&str]) -> (Vec<Value>, String) {
    let mut all: Vec<&str> = vec!["logs"];
    all.extend(args);
    all.extend(["--output", "json"]);
    let run = run_capstan(Some(inventory), &all, &[]);
    assert_eq!(run.code, 0, "capstan logs failed: {}", run.stderr);
    let entries = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (entries, run.stderr)
}

/// Numbers of the lines `"<token> <n>"` per host.
fn numbers(entries: &[Value], token: &str) -> BTreeMap<String, Vec<u64>> {
    let mut by_host: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for entry in entries {
        let message = entry["MESSAGE"].as_str().unwrap_or_default();
        if let Some(n) = message.strip_prefix(&format!("{token} ")).and_then(|n| n.parse().ok()) {
            by_host
                .entry(entry["host"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(n);
        }
    }
    by_host
}

/// (missing, duplicates) of `0..=last` in `seen`.
fn missing_and_duplicates(seen: &[u64], last: u64) -> (u64, u64) {
    let mut counts = vec![0u64; last as usize + 1];
    for &n in seen {
        if n <= last {
            counts[n as usize] += 1;
        }
    }
    let missing = counts.iter().filter(|&&c| c == 0).count() as u64;
    let duplicates = counts.iter().map(|&c| c.saturating_sub(1)).sum();
    (missing, duplicates)
}

/// Starts writing `"<token> <n>"` lines, `count` of them at about 20 a second, in a transient
/// unit; each written number is recorded in /var/tmp/<token>.last (replaced by a rename, so a
/// power-off never leaves it empty).
fn start_writer(lab: &Lab, host: &str, token: &str, count: u64) {
    remote(
        lab,
        host,
        &format!(
            "systemd-run --quiet --unit=writer-{token} -p SyslogIdentifier=capstan-seq sh -c \
             'i=0; while [ $i -lt {count} ]; do echo \"{token} $i\"; echo $i > /var/tmp/{token}.next; mv /var/tmp/{token}.next /var/tmp/{token}.last; i=$((i+1)); sleep 0.05; done'"
        ),
    );
}

fn last_written(lab: &Lab, host: &str, token: &str) -> u64 {
    remote(lab, host, &format!("cat /var/tmp/{token}.last"))
        .parse()
        .expect("a number")
}

/// Polls `capstan logs` until each of `expected` (host → last number) has every number, or
/// `within` passes. The numbers seen per host.
fn wait_for_numbers(
    inventory: &Path,
    token: &str,
    expected: &BTreeMap<String, u64>,
    within: Duration,
) -> BTreeMap<String, Vec<u64>> {
    let deadline = Instant::now() + within;
    loop {
        let (entries, _) = logs(inventory, &["--since", "-30min", "--grep", &format!("^{token} ")]);
        let seen = numbers(&entries, token);
        let complete = expected.iter().all(|(host, last)| {
            seen.get(host)
                .map(|s| missing_and_duplicates(s, *last).0 == 0)
                .unwrap_or(false)
        });
        if complete || Instant::now() > deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn metric(lab: &Lab, host: &str, name: &str) -> f64 {
    let text = remote(
        lab,
        host,
        "systemctl start capstan-logging-lag.service; cat /var/lib/prometheus/node-exporter/capstan_logging.prom",
    );
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

fn report(what: &str, seen: &BTreeMap<String, Vec<u64>>, expected: &BTreeMap<String, u64>) -> u64 {
    let mut missing_total = 0;
    for (host, last) in expected {
        let (missing, duplicates) = missing_and_duplicates(seen.get(host).map(Vec::as_slice).unwrap_or(&[]), *last);
        eprintln!(
            "{what}: {host}: {} lines written, {missing} missing, {duplicates} duplicates",
            last + 1
        );
        missing_total += missing;
    }
    missing_total
}

#[test]
fn ships_every_host_over_mutual_tls_and_loses_nothing_across_outages() {
    if !needs() {
        return;
    }
    let started = Instant::now();
    let guard = LabGuard::up(UpOptions::new("log-lab", 3)).expect("lab up");
    let lab = guard.lab();
    let dir = tempfile::tempdir().unwrap();
    let inventory_path = dir.path().join("inventory.yaml");
    std::fs::write(&inventory_path, inventory(lab, "  journal_max_mib: 256\n")).unwrap();
    let names: Vec<String> = lab.machines.iter().map(|m| m.name.clone()).collect();
    let aggregator = names[0].clone();

    let first = json(&capstan_ok(
        &inventory_path,
        &["apply", "--only", "logging", "--output", "json"],
    ));
    assert!(changed(&first) > 0);
    let applied = started.elapsed();
    let again = json(&capstan_ok(
        &inventory_path,
        &["apply", "--only", "logging", "--output", "json"],
    ));
    assert_eq!(changed(&again), 0, "second apply changed something: {again:#}");
    for name in &names {
        assert_eq!(
            remote(lab, name, "stat -c '%a %U' /etc/capstan/logging/client.key"),
            "600 capstan-journal-upload"
        );
        assert!(remote(lab, name, "cat /etc/prometheus/rules/capstan-logging.rules.yml")
            .contains("capstan_logging_upload_lag_seconds"));
    }
    assert_eq!(
        remote(lab, &aggregator, "stat -c '%a %U' /etc/capstan/logging/ca.key"),
        "600 root"
    );
    assert_eq!(
        remote(
            lab,
            &names[1],
            "test -e /etc/capstan/logging/ca.key && echo yes || echo no"
        ),
        "no"
    );

    // A line on each machine, readable through the aggregator within 10 s.
    let token = unique("hello");
    for name in &names {
        remote(lab, name, &format!("logger -t capstan-test '{token} from {name}'"));
    }
    let logged = Instant::now();
    let mut hosts_seen: Vec<String>;
    let stderr = loop {
        let (entries, stderr) = logs(&inventory_path, &["--grep", &token]);
        hosts_seen = entries
            .iter()
            .map(|e| e["host"].as_str().unwrap_or_default().to_string())
            .collect();
        hosts_seen.sort();
        hosts_seen.dedup();
        if hosts_seen == names || logged.elapsed() > Duration::from_secs(10) {
            break stderr;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let visible_after = logged.elapsed();
    assert_eq!(hosts_seen, names, "not every machine's line within 10 s");
    assert!(stderr.contains(&format!("source: aggregator {aggregator}")), "{stderr}");
    // A filter by host reads only that host's journal.
    let (entries, _) = logs(&inventory_path, &["--grep", &token, "--host", &names[2]]);
    assert_eq!(entries.len(), 1, "{entries:?}");

    // A client certificate of another CA, with a cluster host's name, is refused; the same
    // command with the cluster's certificate passes.
    let foreign_ca = capstan_provisioner::pki::CertificateAuthority::generate("another CA").unwrap();
    let foreign = foreign_ca
        .issue(&capstan_provisioner::pki::CertRequest::client(&names[1]))
        .unwrap();
    let upload = |key: &str, cert: &str| {
        remote(
            lab,
            &names[1],
            &format!(
                "timeout 30 /lib/systemd/systemd-journal-upload --follow=no --file=/var/tmp/one.journal \
                 --url=https://{}:19532 --key={key} --cert={cert} --trust=/etc/capstan/logging/ca.crt 2>&1; echo rc=$?",
                lab.machines[0].ip
            ),
        )
    };
    remote(
        lab,
        &names[1],
        &format!(
            "umask 077; cat > /var/tmp/foreign.key <<'EOF'\n{}EOF\ncat > /var/tmp/foreign.crt <<'EOF'\n{}EOF\n\
             logger -t capstan-test one-entry; rm -f /var/tmp/one.journal; \
             journalctl -t capstan-test -n 1 -o export | /lib/systemd/systemd-journal-remote --output=/var/tmp/one.journal - 2>/dev/null; true",
            foreign.key_pem, foreign.cert_pem
        ),
    );
    let refused = upload("/var/tmp/foreign.key", "/var/tmp/foreign.crt");
    assert!(
        !refused.ends_with("rc=0") && refused.contains("failed"),
        "a foreign client certificate was accepted: {refused}"
    );
    let accepted = upload("/etc/capstan/logging/client.key", "/etc/capstan/logging/client.crt");
    assert!(
        accepted.ends_with("rc=0"),
        "the cluster's client certificate was refused: {accepted}"
    );
    eprintln!("foreign CA: {refused}");

    // The aggregator powered off while the others write numbered lines.
    let outage = std::env::var("CAPSTAN_LOGGING_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60u64);
    let token = unique("outage");
    capstan_lab::stop(&lab.name, &aggregator).expect("power off the aggregator");
    let writers = &names[1..];
    for name in writers {
        start_writer(lab, name, &token, outage * 20);
    }
    let before_check = (outage * 2 / 3).max(30);
    std::thread::sleep(Duration::from_secs(before_check));
    let pending = metric(lab, &names[1], "capstan_logging_upload_pending_entries");
    let lag = metric(lab, &names[1], "capstan_logging_upload_lag_seconds");
    eprintln!(
        "during the outage on {}: {pending} entries pending, lag {lag} s",
        names[1]
    );
    assert!(pending > 100.0 && lag > 20.0, "pending {pending}, lag {lag}");
    // With the aggregator away, `capstan logs` reads the hosts' own journals and says so.
    let fallback_started = Instant::now();
    let (entries, stderr) = logs(
        &inventory_path,
        &[
            "--since",
            "-10min",
            "--grep",
            &format!("^{token} "),
            "--host",
            &names[1],
        ],
    );
    assert!(
        stderr.contains("source: the hosts' own journals (no logging host reachable"),
        "{stderr}"
    );
    assert!(!entries.is_empty() && entries.iter().all(|e| e["host"] == names[1].as_str()));
    eprintln!(
        "fallback to the hosts' journals: {} entries in {:.1}s",
        entries.len(),
        fallback_started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs((outage + 5).saturating_sub(before_check)));
    let expected: BTreeMap<String, u64> = writers
        .iter()
        .map(|n| (n.clone(), last_written(lab, n, &token)))
        .collect();
    capstan_lab::start(&lab.name, &aggregator).expect("power on the aggregator");
    let back = Instant::now();
    let seen = wait_for_numbers(&inventory_path, &token, &expected, Duration::from_secs(240));
    let catch_up = back.elapsed();
    let lines: u64 = expected.values().map(|l| l + 1).sum();
    assert_eq!(report("outage", &seen, &expected), 0, "lines missing after the outage");

    // The uploader SIGKILLed mid-stream, then the sending machine powered off and on.
    let token = unique("kill");
    let sender = names[1].clone();
    start_writer(lab, &sender, &token, 40 * 20);
    std::thread::sleep(Duration::from_secs(10));
    let unit = format!("capstan-journal-upload@{aggregator}");
    let pid = remote(lab, &sender, &format!("systemctl show -p MainPID --value {unit}"));
    assert_ne!(pid, "0", "{unit} is not running");
    remote(lab, &sender, &format!("kill -KILL {pid}"));
    std::thread::sleep(Duration::from_secs(1));
    assert_ne!(
        remote(lab, &sender, &format!("systemctl show -p MainPID --value {unit}")),
        pid,
        "the uploader survived SIGKILL"
    );
    std::thread::sleep(Duration::from_secs(10));
    capstan_lab::stop(&lab.name, &sender).expect("power off the sender");
    capstan_lab::start(&lab.name, &sender).expect("power on the sender");
    let expected: BTreeMap<String, u64> = [(sender.clone(), last_written(lab, &sender, &token))].into();
    let seen = wait_for_numbers(&inventory_path, &token, &expected, Duration::from_secs(120));
    assert_eq!(
        report("kill + power cycle", &seen, &expected),
        0,
        "lines missing after SIGKILL and power cycle"
    );

    eprintln!(
        "logging lab test: apply {:.1}s, line visible after {:.1}s, outage {outage}s with {lines} lines: caught up {:.1}s after the aggregator was back, total {:.1}s",
        applied.as_secs_f64(),
        visible_after.as_secs_f64(),
        catch_up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn aggregator_storage_stays_within_budget_under_a_flood() {
    if !needs() {
        return;
    }
    const BUDGET_MIB: u64 = 48;
    const UNITS: u64 = 10;
    const LINES_PER_UNIT: u64 = 10_000;
    let started = Instant::now();
    let guard = LabGuard::up(UpOptions::new("log-flood", 2)).expect("lab up");
    let lab = guard.lab();
    let dir = tempfile::tempdir().unwrap();
    let inventory_path = dir.path().join("inventory.yaml");
    std::fs::write(
        &inventory_path,
        inventory(
            lab,
            &format!("  journal_max_mib: 512\n  aggregator_max_mib: {BUDGET_MIB}\n"),
        ),
    )
    .unwrap();
    let aggregator = lab.machines[0].name.clone();
    let sender = lab.machines[1].name.clone();
    capstan_ok(&inventory_path, &["apply", "--only", "logging", "--output", "json"]);
    // Let the first upload of each journal settle.
    std::thread::sleep(Duration::from_secs(5));

    // Each transient unit has its own rate-limit allowance in journald, so several of them get
    // every line into the sender's journal.
    let token = unique("flood");
    let flood_started = Instant::now();
    remote(
        lab,
        &sender,
        &format!(
            "for u in $(seq 1 {UNITS}); do systemd-run --quiet --unit=flood-{token}-$u -p SyslogIdentifier={token} -p LogRateLimitIntervalSec=0 \
             sh -c \"seq -f '{token} $u %g padding-padding-padding-padding-padding-padding-padding-padding' 1 {LINES_PER_UNIT}\"; done"
        ),
    );
    let in_journal: u64 = loop {
        std::thread::sleep(Duration::from_secs(1));
        let active = remote(
            lab,
            &sender,
            &format!("systemctl list-units --state=active --no-legend 'flood-{token}-*' | wc -l"),
        );
        if active != "0" {
            continue;
        }
        // journald may still be reading what the units wrote: wait until the count settles.
        let count = || -> u64 {
            remote(lab, &sender, &format!("journalctl -t {token} -o cat | wc -l"))
                .parse()
                .unwrap()
        };
        let mut last = count();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = count();
            if now == last {
                break;
            }
            last = now;
        }
        break last;
    };
    let mut max_bytes = 0u64;
    let shipped = loop {
        let bytes: u64 = remote(lab, &aggregator, "du -sb /var/log/journal/remote | cut -f1")
            .parse()
            .unwrap();
        max_bytes = max_bytes.max(bytes);
        let pending = metric(lab, &sender, "capstan_logging_upload_pending_entries");
        if pending < 50.0 {
            break flood_started.elapsed();
        }
        assert!(
            flood_started.elapsed() < Duration::from_secs(300),
            "the flood was not shipped in 5 minutes ({pending} pending)"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    for _ in 0..10 {
        let bytes: u64 = remote(lab, &aggregator, "du -sb /var/log/journal/remote | cut -f1")
            .parse()
            .unwrap();
        max_bytes = max_bytes.max(bytes);
        std::thread::sleep(Duration::from_secs(1));
    }
    // The flood's last line has reached the aggregator (a few entries may still have been pending
    // above) before retention runs; retention drops the oldest entries, never the newest, so it
    // is still there afterwards.
    let newest = remote(lab, &sender, &format!("journalctl -t {token} -n 1 -o cat"));
    let newest_stored = || {
        logs(&inventory_path, &["--host", &sender, "--grep", &format!("^{newest}$")])
            .0
            .len()
    };
    let arrival = Instant::now();
    while newest_stored() == 0 {
        assert!(
            arrival.elapsed() < Duration::from_secs(60),
            "the newest flood line ({newest}) did not reach the aggregator in 60 s"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    remote(lab, &aggregator, "systemctl start capstan-journal-vacuum.service");
    let entries = newest_stored();
    assert_eq!(entries, 1, "the newest flood line ({newest}) is gone after vacuuming");
    let after: u64 = remote(lab, &aggregator, "du -sb /var/log/journal/remote | cut -f1")
        .parse()
        .unwrap();
    let per_sender: Vec<String> = remote(lab, &aggregator, "du -sb /var/log/journal/remote/*/")
        .lines()
        .map(str::to_string)
        .collect();
    let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
    eprintln!(
        "flood: {in_journal} of {} lines reached the sender's journal; shipped in {:.1}s ({:.0} lines/s); \
         aggregator storage max {:.1} MiB while flooding, {:.1} MiB after vacuum (budget {BUDGET_MIB} MiB): {per_sender:?}; total {:.1}s",
        UNITS * LINES_PER_UNIT,
        shipped.as_secs_f64(),
        in_journal as f64 / shipped.as_secs_f64(),
        mib(max_bytes),
        mib(after),
        started.elapsed().as_secs_f64()
    );
    // journald itself may drop part of a flood (its stream buffers); what matters here is that the
    // aggregator got more than a sender's share, so retention had work to do.
    assert!(
        mib(max_bytes) > (BUDGET_MIB / 2) as f64,
        "the flood ({in_journal} lines) never filled a sender's share"
    );
    assert!(
        mib(after) <= BUDGET_MIB as f64,
        "storage after vacuum {:.1} MiB over the budget",
        mib(after)
    );
    assert!(
        mib(max_bytes) <= 2.0 * BUDGET_MIB as f64,
        "storage reached {:.1} MiB",
        mib(max_bytes)
    );
}
