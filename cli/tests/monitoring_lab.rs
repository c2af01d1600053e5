//! Monitoring on real lab machines: three etcd members, two of them also `monitoring`. After one
//! apply, both Prometheus replicas (each with its own `replica` label) report every target up:
//! node_exporter on every machine, every etcd member's metrics listener on its private address,
//! both Prometheus servers and both Alertmanagers; `amtool cluster show` lists both Alertmanager
//! peers. A second apply changes nothing. Alerts reach a webhook receiver this test runs on the
//! lab bridge (its own instrument, like curl); the inventory shortens every `for:` to 10s. With
//! both Alertmanagers up, breaking the scheduled backups' target fires CapstanBackupFailed,
//! delivered exactly once (the two Alertmanagers agree over gossip who sends); with one
//! Alertmanager killed, stopping an etcd member fires etcdMembersDown, again exactly once.
//!
//! Needs root, the lab prerequisites, curl, age-keygen and the artifact mirror with etcd,
//! Prometheus, node_exporter and Alertmanager; skips with a message naming what is missing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_lab::{Lab, LabGuard, UpOptions};
use serde_json::Value;

mod support;
use support::{
    age_keygen, capstan_ok, changed, json, lab, mirror, mirror_and_version, mirror_etcd, remote, require, tool, Need,
    MIRROR,
};

const ETCD: &str = "3.5.1";

/// Prometheus and node_exporter in the artifact mirror (the inventory's default versions).
fn mirror_monitoring() -> Need {
    let sums = std::fs::read_to_string(Path::new(MIRROR).join("SHA256SUMS")).unwrap_or_default();
    for part in [
        format!(
            "prometheus-{}.linux-amd64",
            capstan_inventory::DEFAULT_PROMETHEUS_VERSION
        ),
        format!(
            "node_exporter-{}.linux-amd64",
            capstan_inventory::DEFAULT_NODE_EXPORTER_VERSION
        ),
        format!(
            "alertmanager-{}.linux-amd64",
            capstan_inventory::DEFAULT_ALERTMANAGER_VERSION
        ),
    ] {
        if !sums.contains(&part) {
            return Err(format!("artifact mirror {MIRROR} lacks {part} (run scripts/setup.sh)"));
        }
    }
    Ok(())
}

fn curl() -> Need {
    match Command::new("curl").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("curl missing (apt-get install curl; scripts/setup.sh)".into()),
    }
}

/// Where the scheduled backups go on the members (the test later breaks it).
const BACKUP_DIR: &str = "/var/backups/capstan-lab";

/// Three etcd members; the first two also run Prometheus and Alertmanager. Every alert waits 10s
/// (`alert_for`) and goes to `webhook`; backups every 20 seconds to [`BACKUP_DIR`].
fn inventory(lab: &Lab, webhook: &str, recipient: &str) -> String {
    let mut yaml = format!(
        "cluster:\n  name: {}\nssh:\n  user: root\n  identity_file: {:?}\n  known_hosts: strict\n  known_hosts_file: {:?}\n{}\
         monitoring:\n  retention_days: 2\n  alert_for: 10s\n  receivers:\n    - {{name: lab-hook, webhooks: [\"{webhook}\"]}}\n\
         backup:\n  target: file://{BACKUP_DIR}\n  recipients: [{recipient}]\n  retention: {{keep_last: 3}}\n  schedule: \"*:*:0/20\"\n\
         hosts:\n",
        lab.name,
        lab.key_path.display().to_string(),
        lab.known_hosts_path.display().to_string(),
        mirror_and_version(ETCD),
    );
    for (i, m) in lab.machines.iter().enumerate() {
        let roles = if i < 2 { "[etcd, monitoring]" } else { "[etcd]" };
        yaml.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: {roles}\n",
            m.name, m.ip
        ));
    }
    yaml
}

fn get(url: &str) -> Option<Value> {
    let output = Command::new("curl")
        .args(["-sf", "--max-time", "5", url])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// (job, instance, health) of every active target.
fn targets(prometheus: &str) -> Vec<(String, String, String)> {
    let Some(answer) = get(&format!("http://{prometheus}:9090/api/v1/targets?state=active")) else {
        return Vec::new();
    };
    let mut targets: Vec<(String, String, String)> = answer["data"]["activeTargets"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (s(&t["labels"]["job"]), s(&t["labels"]["instance"]), s(&t["health"]))
        })
        .collect();
    targets.sort();
    targets
}

/// The webhook receiver: every JSON body Alertmanager posts, in order of arrival.
#[derive(Clone, Default)]
struct Webhook {
    received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    /// Listens on `address:0` (the lab bridge's address on this machine); its URL.
    fn start(address: &str) -> (Webhook, String) {
        let listener = TcpListener::bind((address, 0)).expect("bind the webhook receiver");
        let url = format!("http://{}/alerts", listener.local_addr().unwrap());
        let hook = Webhook::default();
        let shared = hook.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let hook = shared.clone();
                std::thread::spawn(move || hook.serve(stream));
            }
        });
        (hook, url)
    }

    /// HTTP/1.1 requests on one connection (Alertmanager keeps it alive), each answered 200.
    fn serve(&self, stream: std::net::TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        loop {
            let mut length = 0usize;
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                self.received.lock().unwrap().push(value);
            }
            if writer
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .is_err()
            {
                return;
            }
        }
    }

    /// Notifications of `alertname` with `status` (`firing`, `resolved`) so far.
    fn count(&self, alertname: &str, status: &str) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n["groupLabels"]["alertname"] == alertname && n["status"] == status)
            .count()
    }

    /// Waits up to `limit` for the first such notification; how long it took.
    fn wait_for(&self, alertname: &str, status: &str, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.count(alertname, status) > 0 {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        None
    }
}

/// `amtool cluster show` on `host`, asking its own Alertmanager, until it names every address
/// in `peers` (gossip settles within seconds) or 60s pass; its last output.
fn cluster_show(lab: &Lab, host: &str, ip: &str, peers: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shown = remote(
            lab,
            host,
            &format!("/usr/local/bin/amtool cluster show -o extended --alertmanager.url=http://{ip}:9093 2>&1 || true"),
        );
        if peers.iter().all(|p| shown.contains(&format!("{p}:9094"))) || Instant::now() > deadline {
            return shown;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// One value of an instant query on `prometheus` (host:port), by the given label.
fn query(prometheus: &str, promql: &str, label: &str) -> Vec<(String, f64)> {
    let url = format!(
        "http://{prometheus}/api/v1/query?query={}",
        promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    let Some(answer) = get(&url) else {
        return Vec::new();
    };
    answer["data"]["result"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["metric"][label].as_str().unwrap_or_default().to_string(),
                r["value"][1].as_str().unwrap_or("0").parse().unwrap_or(0.0),
            )
        })
        .collect()
}

#[test]
fn replicas_scrape_everything_and_alerts_reach_the_webhook_once() {
    if !require(&[
        lab(),
        mirror(),
        mirror_etcd(&[ETCD]),
        mirror_monitoring(),
        curl(),
        tool("age-keygen", "age"),
    ]) {
        return;
    }
    let started = Instant::now();
    let guard = LabGuard::up(UpOptions::new("mon-lab", 3)).expect("lab up");
    let lab = guard.lab();
    let dir = tempfile::tempdir().unwrap();
    let recipient = age_keygen(&dir.path().join("identity.txt"));
    let (webhook, webhook_url) = Webhook::start(&lab.gateway);
    let inventory_path = dir.path().join("inventory.yaml");
    std::fs::write(&inventory_path, inventory(lab, &webhook_url, &recipient)).unwrap();
    let ips: Vec<String> = lab.machines.iter().map(|m| m.ip.to_string()).collect();
    let names: Vec<&str> = lab.machines.iter().map(|m| m.name.as_str()).collect();
    let lab_up = started.elapsed();

    let first = json(&capstan_ok(&inventory_path, &["apply", "--output", "json"]));
    assert!(changed(&first) > 0);
    let applied = started.elapsed();

    let mut expected: Vec<(String, String, String)> = Vec::new();
    for ip in &ips {
        expected.push(("etcd".into(), format!("{ip}:2381"), "up".into()));
        expected.push(("node".into(), format!("{ip}:9100"), "up".into()));
    }
    for ip in &ips[..2] {
        expected.push(("prometheus".into(), format!("{ip}:9090"), "up".into()));
        expected.push(("alertmanager".into(), format!("{ip}:9093"), "up".into()));
    }
    expected.sort();
    for (i, replica) in ips[..2].iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = targets(replica);
        while seen != expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(2));
            seen = targets(replica);
        }
        assert_eq!(seen, expected, "replica {replica}: targets not all up");
        // The replicas differ in their `replica` external label: the machine's name.
        let config = get(&format!("http://{replica}:9090/api/v1/status/config")).expect("config");
        let yaml = config["data"]["yaml"].as_str().unwrap();
        let name = names[i];
        assert!(yaml.contains(&format!("replica: {name}")), "{yaml}");
        assert_eq!(
            remote(lab, name, "stat -c '%a %U' /var/lib/prometheus/data"),
            "750 prometheus"
        );
        // capstan's rules are loaded.
        let rules = get(&format!("http://{replica}:9090/api/v1/rules")).expect("rules");
        let mut groups: Vec<&str> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        groups.sort_unstable();
        assert_eq!(groups, ["capstan-etcd", "capstan-hosts", "capstan-meta", "capstan-own"]);
    }
    let all_up = started.elapsed();
    // The third machine runs neither Prometheus nor Alertmanager.
    assert_eq!(
        remote(lab, names[2], "systemctl is-active prometheus alertmanager || true"),
        "inactive\ninactive"
    );
    // Both Alertmanagers gossip: each lists both peers.
    for (i, ip) in ips[..2].iter().enumerate() {
        let shown = cluster_show(lab, names[i], ip, &ips[..2]);
        for peer in &ips[..2] {
            assert!(shown.contains(&format!("{peer}:9094")), "{}: {shown}", names[i]);
        }
        assert!(shown.contains("ready"), "{shown}");
    }
    // The certificate expiry metric is there for etcd's certificates (a year ahead).
    let expiries = query(
        &format!("{}:9090", ips[0]),
        "capstan_certificate_expiry_timestamp_seconds - time()",
        "path",
    );
    assert!(
        expiries
            .iter()
            .any(|(path, left)| path == "/etc/etcd/pki/server.crt" && *left > 300.0 * 86400.0),
        "{expiries:?}"
    );

    let again = json(&capstan_ok(&inventory_path, &["apply", "--output", "json"]));
    assert_eq!(changed(&again), 0, "{again:#}");

    // Scheduled backups (every 20s) succeed: no backup alert.
    capstan_ok(&inventory_path, &["backup", "schedule"]);
    let prometheus = format!("{}:9090", ips[0]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut results = Vec::new();
    while Instant::now() < deadline {
        results = query(&prometheus, "capstan_backup_last_result", "instance");
        if !results.is_empty() && results.iter().all(|(_, ok)| *ok == 1.0) {
            break;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    let journals = || {
        names
            .iter()
            .map(|n| remote(lab, n, "journalctl -u capstan-backup --no-pager -n 15 -o cat || true"))
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert!(
        !results.is_empty() && results.iter().all(|(_, ok)| *ok == 1.0),
        "scheduled backups do not succeed: {results:?}\n{}",
        journals()
    );
    let watchdog = webhook.count("Watchdog", "firing");
    assert_eq!(watchdog, 0, "severity none is not routed to the lab receiver");

    // Both Alertmanagers up; the backup target breaks (a file where the directory was):
    // CapstanBackupFailed, exactly once (the two Alertmanagers agree over gossip who sends).
    assert_eq!(
        webhook.count("CapstanBackupFailed", "firing"),
        0,
        "{:?}\n{}",
        webhook.received.lock().unwrap(),
        journals()
    );
    for name in &names {
        remote(lab, name, &format!("rm -rf {BACKUP_DIR} && touch {BACKUP_DIR}"));
    }
    let fired = webhook
        .wait_for("CapstanBackupFailed", "firing", Duration::from_secs(180))
        .expect("CapstanBackupFailed reached the webhook");
    eprintln!(
        "backup target broken -> CapstanBackupFailed at the webhook: {:.0}s",
        fired.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(45));
    assert_eq!(webhook.count("CapstanBackupFailed", "firing"), 1, "duplicates");
    for name in &names {
        remote(lab, name, &format!("rm -f {BACKUP_DIR}"));
    }

    // One Alertmanager killed; then an etcd member stops: etcdMembersDown, exactly once (both
    // Prometheus replicas send it; the surviving Alertmanager notifies once).
    remote(
        lab,
        names[1],
        "kill -KILL $(systemctl show -p MainPID --value alertmanager) && systemctl stop alertmanager",
    );
    remote(lab, names[2], "systemctl stop etcd");
    let fired = webhook
        .wait_for("etcdMembersDown", "firing", Duration::from_secs(180))
        .expect("etcdMembersDown reached the webhook");
    eprintln!(
        "etcd member stopped -> etcdMembersDown at the webhook: {:.0}s",
        fired.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(45));
    assert_eq!(webhook.count("etcdMembersDown", "firing"), 1, "duplicates");
    // `capstan status` shows the targets down and the alert firing (and fails: a member is down).
    let status = support::run_capstan(Some(&inventory_path), &["status", "--output", "json"], &[]);
    assert_ne!(status.code, 0, "{}", status.stdout);
    let status = json(&status);
    let monitoring = &status["monitoring"];
    let down: Vec<String> = monitoring["targets_down"]
        .as_array()
        .unwrap_or_else(|| panic!("{status:#}"))
        .iter()
        .map(|t| format!("{} {}", t["job"].as_str().unwrap(), t["instance"].as_str().unwrap()))
        .collect();
    // The killed Alertmanager and the stopped member.
    assert_eq!(
        down,
        [format!("alertmanager {}:9093", ips[1]), format!("etcd {}:2381", ips[2])],
        "{monitoring:#}"
    );
    let firing: Vec<&str> = monitoring["alerts_firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert"].as_str().unwrap())
        .collect();
    assert!(
        firing.contains(&"etcdMembersDown") && firing.contains(&"Watchdog"),
        "{firing:?}"
    );
    remote(lab, names[2], "systemctl start etcd");
    remote(lab, names[1], "systemctl start alertmanager");
    let shown = cluster_show(lab, names[1], &ips[1], &ips[..2]);
    assert!(shown.contains(&format!("{}:9094", ips[0])), "{shown}");
    let alerts_done = started.elapsed();

    // Numbers for the docs: RSS and Prometheus's own scrape and rule evaluation timings.
    for (i, name) in names.iter().enumerate() {
        let rss = |process: &str| remote(lab, name, &format!("ps -o rss= -C {process} || echo -"));
        eprintln!(
            "{name}: RSS KiB prometheus {} alertmanager {} node_exporter {} etcd {}",
            if i < 2 { rss("prometheus") } else { "-".into() },
            if i < 2 { rss("alertmanager") } else { "-".into() },
            rss("node_exporter"),
            rss("etcd"),
        );
    }
    for (job, seconds) in query(&prometheus, "avg by (job) (scrape_duration_seconds)", "job") {
        eprintln!("scrape duration, job {job}: {:.1} ms", seconds * 1000.0);
    }
    for (group, seconds) in query(&prometheus, "prometheus_rule_group_last_duration_seconds", "rule_group") {
        eprintln!("rule group {group}: last evaluation {:.2} ms", seconds * 1000.0);
    }
    eprintln!(
        "monitoring lab test: lab up {:.1}s, apply {:.1}s, all targets up {:.1}s, alerts {:.1}s, total {:.1}s",
        lab_up.as_secs_f64(),
        (applied - lab_up).as_secs_f64(),
        (all_up - applied).as_secs_f64(),
        (alerts_done - all_up).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The versions the lab mirror has of each (bookworm's and trixie's Debian builds).
const OLD: [(&str, &str); 3] = [
    ("prometheus", "2.42.0"),
    ("alertmanager", "0.25.0"),
    ("node_exporter", "1.5.0"),
];
const NEW: [(&str, &str); 3] = [
    ("prometheus", "2.53.3"),
    ("alertmanager", "0.28.1"),
    ("node_exporter", "1.9.0"),
];

fn mirror_has(versions: &[(&str, &str)]) -> Need {
    let sums = std::fs::read_to_string(Path::new(MIRROR).join("SHA256SUMS")).unwrap_or_default();
    for (project, version) in versions {
        let part = format!("{project}-{version}.linux-amd64");
        if !sums.contains(&part) {
            return Err(format!("artifact mirror {MIRROR} lacks {part} (run scripts/setup.sh)"));
        }
    }
    Ok(())
}

/// The SMTP password file next to the inventory (`password_file` is relative to it).
const SMTP_PASSWORD_FILE: &str = "smtp-password";

/// Three etcd members, the first two also `monitoring`, on the given monitoring versions; an email
/// receiver for critical alerts through an authenticating relay (the password in
/// [`SMTP_PASSWORD_FILE`]).
fn rollout_inventory(lab: &Lab, versions: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "cluster:\n  name: {}\nssh:\n  user: root\n  identity_file: {:?}\n  known_hosts: strict\n  known_hosts_file: {:?}\n{}",
        lab.name,
        lab.key_path.display().to_string(),
        lab.known_hosts_path.display().to_string(),
        mirror_and_version(ETCD),
    );
    for (project, version) in versions {
        yaml.push_str(&format!("  {project}: \"{version}\"\n"));
    }
    yaml.push_str(&format!(
        "monitoring:\n  retention_days: 2\n  smtp: {{smarthost: '{}:2525', from: alerts@example.com, username: capstan, password_file: {SMTP_PASSWORD_FILE}}}\n\
         \x20 receivers:\n    - {{name: mail, emails: [ops@example.com], severities: [critical]}}\nhosts:\n",
        lab.gateway
    ));
    for (i, m) in lab.machines.iter().enumerate() {
        let roles = if i < 2 { "[etcd, monitoring]" } else { "[etcd]" };
        yaml.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: {roles}\n",
            m.name, m.ip
        ));
    }
    yaml
}

/// When `service` on `host` last started, in seconds since the epoch (µs precision; the lab
/// machines share this machine's clock).
fn started_at(lab: &Lab, host: &str, service: &str) -> f64 {
    let text = remote(
        lab,
        host,
        &format!("date -d \"$(systemctl show --timestamp=us -p ExecMainStartTimestamp --value {service})\" +%s.%6N"),
    );
    text.parse()
        .unwrap_or_else(|_| panic!("{host}: {service} start time `{text}`"))
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One look at both replicas: (when, Prometheus answers with a target up, Alertmanager ready), per replica.
type Sample = (f64, [bool; 2], [bool; 2]);

fn sample(ips: &[String]) -> Sample {
    let scraping = |ip: &String| targets(ip).iter().any(|(_, _, health)| health == "up");
    let ready = |ip: &String| {
        Command::new("curl")
            .args([
                "-sf",
                "--max-time",
                "2",
                "-o",
                "/dev/null",
                &format!("http://{ip}:9093/-/ready"),
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    (
        now(),
        [scraping(&ips[0]), scraping(&ips[1])],
        [ready(&ips[0]), ready(&ips[1])],
    )
}

/// The version `/api/v1/status/buildinfo` (Prometheus) or `/api/v2/status` (Alertmanager) reports.
fn running_version(ip: &str, port: u16) -> String {
    let (path, pointer) = if port == 9090 {
        ("/api/v1/status/buildinfo", "/data/version")
    } else {
        ("/api/v2/status", "/versionInfo/version")
    };
    get(&format!("http://{ip}:{port}{path}"))
        .and_then(|v| v.pointer(pointer).and_then(Value::as_str).map(String::from))
        .unwrap_or_default()
}

/// Checks that a server restarted on both replicas one after the other: both started during the
/// rollout, and between the two starts a sample shows the first one serving again.
fn restarted_in_turn(
    what: &str,
    starts: [f64; 2],
    rollout_began: f64,
    samples: &[Sample],
    serving: impl Fn(&Sample, usize) -> bool,
) {
    assert!(
        starts.iter().all(|s| *s > rollout_began),
        "{what}: not restarted on both replicas during the rollout: {starts:?} (began {rollout_began})"
    );
    let (first, second) = if starts[0] < starts[1] { (0, 1) } else { (1, 0) };
    let between = samples
        .iter()
        .any(|s| s.0 > starts[first] && s.0 < starts[second] && serving(s, first));
    assert!(
        between,
        "{what}: replica {} restarted at {:.2} before replica {} (started {:.2}) was seen serving again",
        second + 1,
        starts[second],
        first + 1,
        starts[first]
    );
    eprintln!(
        "{what}: replica {} started {:.1}s after replica {}",
        second + 1,
        starts[second] - starts[first],
        first + 1
    );
}

#[test]
fn version_change_rolls_one_replica_at_a_time() {
    if !require(&[
        lab(),
        mirror(),
        mirror_etcd(&[ETCD]),
        mirror_has(&OLD),
        mirror_has(&NEW),
        curl(),
    ]) {
        return;
    }
    let started = Instant::now();
    let guard = LabGuard::up(UpOptions::new("mon-roll", 3)).expect("lab up");
    let lab = guard.lab();
    let dir = tempfile::tempdir().unwrap();
    let inventory_path = dir.path().join("inventory.yaml");
    std::fs::write(&inventory_path, rollout_inventory(lab, &OLD)).unwrap();
    let password_path = dir.path().join(SMTP_PASSWORD_FILE);
    let passwords = ["first-Lab-passw0rd", "second-Lab-passw0rd"];
    std::fs::write(&password_path, format!("{}\n", passwords[0])).unwrap();
    let ips: Vec<String> = lab.machines.iter().map(|m| m.ip.to_string()).collect();
    let names: Vec<&str> = lab.machines.iter().map(|m| m.name.as_str()).collect();
    let lab_up = started.elapsed();

    // The SMTP password reaches the monitoring hosts (0640 root:alertmanager), never any output.
    let secret_kept = |run: &support::Run, password: &str, names: &[&str]| {
        assert!(
            !run.stdout.contains(password) && !run.stderr.contains(password),
            "the SMTP password appeared in capstan's output"
        );
        for name in names {
            assert_eq!(
                remote(lab, name, "stat -c '%a %U %G' /etc/alertmanager/smtp_password"),
                "640 root alertmanager"
            );
            assert_eq!(remote(lab, name, "cat /etc/alertmanager/smtp_password"), password);
            assert!(!remote(lab, name, "cat /etc/alertmanager/alertmanager.yml").contains(password));
        }
    };
    let run = capstan_ok(&inventory_path, &["apply", "--output", "json"]);
    secret_kept(&run, passwords[0], &names[..2]);
    let first = json(&run);
    assert!(changed(&first) > 0);
    let applied = started.elapsed();
    for ip in &ips[..2] {
        assert!(running_version(ip, 9090).starts_with("2.42.0"), "{ip}");
        assert!(running_version(ip, 9093).starts_with("0.25.0"), "{ip}");
    }
    let rss = |what: &str| {
        for name in &names[..2] {
            let rss = |process: &str| remote(lab, name, &format!("ps -o rss= -C {process} || echo -"));
            eprintln!(
                "{what}: {name}: RSS KiB prometheus {} alertmanager {} node_exporter {}",
                rss("prometheus"),
                rss("alertmanager"),
                rss("node_exporter")
            );
        }
    };
    rss("before the version change");
    // apply returns once both replicas are ready; their first scrape may come a few seconds later.
    // The watcher below asserts that one replica always serves, so it starts from both serving.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = sample(&ips);
        if s.1 == [true, true] && s.2 == [true, true] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both replicas never served before the version change: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The version change (and a new SMTP password), watched from outside: both replicas every
    // ~half second.
    std::fs::write(&inventory_path, rollout_inventory(lab, &NEW)).unwrap();
    std::fs::write(&password_path, passwords[1]).unwrap();
    let plan = support::run_capstan(Some(&inventory_path), &["plan", "-v"], &[]);
    let shown = format!("{}{}", plan.stdout, plan.stderr);
    assert!(shown.contains("/etc/alertmanager/smtp_password"), "{shown}");
    assert!(!shown.contains(passwords[1]), "the SMTP password appeared in the plan");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, ips) = (stop.clone(), ips.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push(sample(&ips));
                std::thread::sleep(Duration::from_millis(300));
            }
            samples
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let rollout_began = now();
    let rolled = Instant::now();
    let run = capstan_ok(&inventory_path, &["apply", "--output", "json"]);
    let rollout = rolled.elapsed();
    let change = json(&run);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = watcher.join().unwrap();
    assert!(changed(&change) > 0);
    assert!(samples.len() > 10, "{} samples", samples.len());
    for s in &samples {
        assert!(
            s.1[0] || s.1[1],
            "at {:.2} no Prometheus replica answered with a target up: {samples:?}",
            s.0
        );
        assert!(s.2[0] || s.2[1], "at {:.2} no Alertmanager was ready: {samples:?}", s.0);
    }
    let starts = |service: &str| [started_at(lab, names[0], service), started_at(lab, names[1], service)];
    restarted_in_turn(
        "Alertmanager",
        starts("alertmanager"),
        rollout_began,
        &samples,
        |s, i| s.2[i],
    );
    restarted_in_turn("Prometheus", starts("prometheus"), rollout_began, &samples, |s, i| {
        s.1[i]
    });
    for (i, ip) in ips[..2].iter().enumerate() {
        assert!(
            running_version(ip, 9090).starts_with("2.53.3"),
            "{ip}: {}",
            running_version(ip, 9090)
        );
        assert!(
            running_version(ip, 9093).starts_with("0.28.1"),
            "{ip}: {}",
            running_version(ip, 9093)
        );
        assert!(
            remote(lab, names[i], "/usr/local/bin/node_exporter --version 2>&1 | head -n1").contains("1.9.0"),
            "{}",
            names[i]
        );
    }
    rss("after the version change");
    secret_kept(&run, passwords[1], &names[..2]);

    let again = json(&capstan_ok(&inventory_path, &["apply", "--output", "json"]));
    assert_eq!(changed(&again), 0, "{again:#}");
    eprintln!(
        "monitoring rollout lab test: lab up {:.1}s, first apply {:.1}s, version change (rolling) {:.1}s over {} samples, total {:.1}s",
        lab_up.as_secs_f64(),
        (applied - lab_up).as_secs_f64(),
        rollout.as_secs_f64(),
        samples.len(),
        started.elapsed().as_secs_f64()
    );
}
