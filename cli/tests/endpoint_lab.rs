//! The Kubernetes API endpoint through `capstan apply` on real lab machines running real haproxy
//! and keepalived (Debian packages from the lab's local apt repository).
//!
//! The control-plane machines run a STAND-IN FOR KUBE-APISERVER (`endpoint_lab/standin.rs`, this
//! test binary re-run on the machine as a systemd unit): a TLS server answering `/readyz` with the
//! API server certificate capstan issued, since capstan does not install the control plane yet.
//!
//! One lab of four machines, in order: a plan changes nothing; the local endpoint answers from a
//! node, preflight passes its ports (held by haproxy) and re-applying changes nothing; a stopped
//! control-plane machine is marked down within the check window while requests keep succeeding,
//! and up again when it returns; adding a node changes only that node; a membership change whose
//! config fails `haproxy -c` leaves the running config and every later host untouched; a
//! long-lived request survives the reload a control-plane membership change causes (same haproxy
//! master); the VIP, polled every 200 ms while its holder's haproxy is killed, is never on two
//! machines and moves within 5 s; back in local mode keepalived stops and the VIP is gone; a last
//! re-apply changes nothing, in two SSH execs per host.
//!
//! Needs root, the lab prerequisites and the lab apt repository with haproxy and keepalived
//! (scripts/setup.sh); skips naming what is missing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capstan_endpoint::config::{HealthCheck, APISERVER_PORT, STATS_PORT};
use capstan_endpoint::kube_pki::{APISERVER_CERT, APISERVER_KEY, CA_CERT};
use capstan_lab::{Lab, LabGuard, UpOptions};
use serde_json::Value;

mod support;
use support::{changed, json, lab, remote, require, run_capstan, Need, Run};

#[path = "endpoint_lab/standin.rs"]
mod standin;

const STANDIN_BINARY: &str = "/usr/local/bin/standin-apiserver";
const STANDIN_UNIT: &str = "standin-apiserver.service";

/// Not a test: the stand-in for kube-apiserver that the lab test runs on its control-plane
/// machines (this binary, started by `standin-apiserver.service` with the `STANDIN_*` variables).
/// Returns at once anywhere else.
#[test]
#[ignore = "the lab test's stand-in for kube-apiserver, run on lab machines"]
fn standin_apiserver_process() {
    let var = |name: &str| std::env::var(name).ok();
    let (Some(listen), Some(cert), Some(key)) = (var("STANDIN_LISTEN"), var("STANDIN_CERT"), var("STANDIN_KEY")) else {
        return;
    };
    let name = var("STANDIN_NAME").unwrap_or_else(|| "stand-in".into());
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(standin::serve(&listen, &cert, &key, &name))
        .unwrap();
}

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

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id() % 10000)
}

fn capstan_json(inventory: &Path, args: &[&str]) -> Value {
    let run: Run = run_capstan(Some(inventory), args, &[]);
    assert_eq!(
        run.code, 0,
        "capstan {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    json(&run)
}

fn apply(inventory: &Path) -> Value {
    capstan_json(inventory, &["apply", "--only", "endpoint", "--output", "json"])
}

/// Changed operations per host of an apply report.
fn changed_by_host(outcome: &Value) -> BTreeMap<String, u64> {
    outcome["summary"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["host"].as_str().unwrap().to_string(), h["changed"].as_u64().unwrap()))
        .collect()
}

/// An inventory of `hosts` (machine name, roles) with the lab's SSH settings and apt source.
fn write_inventory(lab: &Lab, path: &Path, hosts: &[(&str, &str)], extra: &str) {
    let generated = std::fs::read_to_string(&lab.inventory_path).unwrap();
    let apt_source = generated
        .lines()
        .find(|l| l.trim_start().starts_with("apt_source:"))
        .expect("the lab inventory names its apt repository")
        .trim()
        .to_string();
    let mut yaml = format!(
        "cluster:\n  name: {}\nssh:\n  user: root\n  identity_file: {:?}\n  known_hosts: strict\n  known_hosts_file: {:?}\nhosts:\n",
        lab.name,
        lab.key_path.display().to_string(),
        lab.known_hosts_path.display().to_string()
    );
    for (name, roles) in hosts {
        let m = lab.machines.iter().find(|m| m.name == *name).unwrap();
        yaml.push_str(&format!(
            "  - name: {name}\n    address: {}\n    roles: {roles}\n",
            m.ip
        ));
    }
    yaml.push_str(&format!("artifacts:\n  {apt_source}\n{extra}"));
    std::fs::write(path, yaml).unwrap();
}

/// Runs `command` on `host`: whether it succeeded, and its stdout (trimmed) or stderr.
fn try_remote(lab: &Lab, host: &str, command: &str) -> (bool, String) {
    let output = capstan_lab::ssh_command(&lab.name, host, Some(command))
        .unwrap()
        .output()
        .unwrap();
    let text = if output.status.success() {
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    } else {
        String::from_utf8_lossy(&output.stderr).trim().to_string()
    };
    (output.status.success(), text)
}

fn readyz_command(address: &str) -> String {
    format!("curl -sS --fail --max-time 10 --cacert {CA_CERT} https://{address}:6443/readyz")
}

/// Copies this test binary to `host` and runs it there as the stand-in's unit (enabled, so it
/// comes back when the machine boots again).
fn install_standin(lab: &Lab, host: &str) {
    let exe = std::env::current_exe().unwrap();
    let status = capstan_lab::ssh_command(
        &lab.name,
        host,
        Some(&format!(
            "cat > {STANDIN_BINARY}.tmp && chmod 755 {STANDIN_BINARY}.tmp && mv {STANDIN_BINARY}.tmp {STANDIN_BINARY}"
        )),
    )
    .unwrap()
    .stdin(std::fs::File::open(&exe).unwrap())
    .stdout(Stdio::null())
    .status()
    .unwrap();
    assert!(status.success(), "{host}: copying the stand-in failed");
    #[derive(serde::Serialize)]
    struct Unit {
        listen: String,
        cert: &'static str,
        key: &'static str,
        binary: &'static str,
    }
    let unit = capstan_templates::render(
        "lab/standin-apiserver.service",
        Unit {
            listen: format!("0.0.0.0:{APISERVER_PORT}"),
            cert: APISERVER_CERT,
            key: APISERVER_KEY,
            binary: STANDIN_BINARY,
        },
    )
    .unwrap();
    let mut child = capstan_lab::ssh_command(
        &lab.name,
        host,
        Some(&format!(
            "cat > /etc/systemd/system/{STANDIN_UNIT} && systemctl daemon-reload && systemctl enable --now {STANDIN_UNIT}"
        )),
    )
    .unwrap()
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(unit.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "{host}: starting the stand-in failed");
}

/// haproxy's view of each API server from `host`'s statistics page: server name → status
/// (`UP`, `DOWN`, `UP 1/2`, ...).
fn server_states(lab: &Lab, host: &str) -> BTreeMap<String, String> {
    let csv = remote(
        lab,
        host,
        &format!("curl -sS 'http://127.0.0.1:{STATS_PORT}/stats;csv'"),
    );
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().trim_start_matches("# ").split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (proxy, server, status) = (column("pxname"), column("svname"), column("status"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(proxy) == Some(&"kube-apiserver") && !["FRONTEND", "BACKEND"].contains(&f[server]))
        .map(|f| (f[server].to_string(), f[status].to_string()))
        .collect()
}

/// Polls `check` every 100 ms until it is true; the time it took, or a panic naming `what`.
fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if check() {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn haproxy_main_pid(lab: &Lab, host: &str) -> String {
    remote(lab, host, "systemctl show -p MainPID --value haproxy")
}

/// The machines holding `vip`, read in each machine's network namespace from this machine
/// (no SSH, so one sample of every machine takes milliseconds).
fn vip_holders(lab: &Lab, hosts: &[&str], vip: &str) -> Vec<String> {
    let live = capstan_lab::get(&lab.name).unwrap();
    hosts
        .iter()
        .filter(|host| {
            let m = live.machines.iter().find(|m| m.name == **host).unwrap();
            let nspawn = m.pid.expect("running machine");
            let children = std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).unwrap();
            let init = children.split_whitespace().next().expect("the machine's init");
            let output = Command::new("nsenter")
                .args(["-t", init, "-n", "ip", "-o", "-4", "addr", "show"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&output.stdout).contains(&format!("inet {vip}/"))
        })
        .map(|h| h.to_string())
        .collect()
}

#[test]
fn endpoint_on_lab_machines() {
    if !require(&[
        lab(),
        apt_repo_has(&["haproxy", "keepalived"]),
        support::tool("nsenter", "util-linux"),
    ]) {
        return;
    }
    let started = Instant::now();
    let guard = LabGuard::up(UpOptions::new(unique("ep"), 4)).expect("lab up");
    let lab = guard.lab().clone();
    let names: Vec<&str> = lab.machines.iter().map(|m| m.name.as_str()).collect();
    let (cp1, cp2, n1, extra) = (names[0], names[1], names[2], names[3]);
    let work = tempfile::tempdir().unwrap();
    let inventory = work.path().join("inventory.yaml");
    let base = [(cp1, "[etcd, control_plane]"), (cp2, "[control_plane]"), (n1, "[node]")];

    // 1. The endpoint on two control-plane machines and a node: a plan changes nothing, apply
    //    converges, a re-apply changes nothing.
    write_inventory(&lab, &inventory, &base, "");
    let plan = capstan_json(&inventory, &["plan", "--only", "endpoint", "--output", "json"]);
    assert!(changed(&plan) > 0, "{plan:#}");
    let (installed, _) = try_remote(&lab, n1, "dpkg-query -W haproxy");
    assert!(!installed, "plan installed haproxy");
    let first = apply(&inventory);
    assert!(changed(&first) > 0, "{first:#}");
    let again = apply(&inventory);
    assert_eq!(changed(&again), 0, "re-apply changed something: {again:#}");
    assert_eq!(
        remote(&lab, n1, "ss -ltnH 'sport = :6443' | awk '{print $4}'"),
        "127.0.0.1:6443",
        "a node's endpoint listens on loopback only"
    );

    // Preflight knows the endpoint's ports: held by haproxy now, they pass.
    let check = run_capstan(Some(&inventory), &["check", "--output", "json"], &[]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    for host in json(&check)["hosts"].as_array().unwrap() {
        for port in ["port 6443", "port 8404"] {
            let result = host["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == port)
                .unwrap_or_else(|| panic!("{port} checked: {host:#}"));
            assert_eq!(result["status"], "pass", "{result:#}");
            assert!(result["detail"].as_str().unwrap().contains("haproxy"), "{result:#}");
        }
    }

    // 2. Stand-ins for kube-apiserver on the control-plane machines, with capstan's certificate.
    for cp in [cp1, cp2] {
        install_standin(&lab, cp);
    }
    let all_up = |host: &str| server_states(&lab, host).values().all(|s| s == "UP");
    let took = wait_for("both API servers up", Duration::from_secs(20), || all_up(n1));
    eprintln!("both stand-ins marked up {:.1}s after starting", took.as_secs_f64());
    let mut answered_by = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (ok, text) = try_remote(&lab, n1, &readyz_command("127.0.0.1"));
        assert!(ok, "readyz through the endpoint failed: {text}");
        answered_by.insert(text);
    }
    assert_eq!(
        answered_by,
        [format!("ok from {cp1}"), format!("ok from {cp2}")]
            .into_iter()
            .collect(),
        "requests are spread over both API servers"
    );

    // 3. A stopped control-plane machine is marked down within the check window; requests keep
    //    succeeding; when it returns it is marked up.
    let window = Duration::from_millis(HealthCheck::DEFAULT.down_within_ms().into());
    let stopping = Instant::now();
    capstan_lab::stop(&lab.name, cp2).unwrap();
    let stopped = Instant::now();
    let mut requests = 0;
    let down_after = wait_for(
        "the stopped machine marked down",
        window + Duration::from_secs(1),
        || {
            let (ok, text) = try_remote(&lab, n1, &readyz_command("127.0.0.1"));
            assert!(ok, "a request failed while {cp2} was down: {text}");
            requests += 1;
            server_states(&lab, n1).get(cp2).is_some_and(|s| s.starts_with("DOWN"))
        },
    );
    eprintln!(
        "{cp2} marked down {:.1}s after it was gone ({:.1}s after the power-off began; check window {:.0}s); \
         {requests} requests meanwhile, all answered",
        down_after.as_secs_f64(),
        (stopped - stopping).as_secs_f64() + down_after.as_secs_f64(),
        window.as_secs_f64()
    );
    for _ in 0..5 {
        let (ok, text) = try_remote(&lab, n1, &readyz_command("127.0.0.1"));
        assert!(ok && text == format!("ok from {cp1}"), "{text}");
    }
    capstan_lab::start(&lab.name, cp2).unwrap();
    let up_after = wait_for("the returned machine marked up", Duration::from_secs(30), || all_up(n1));
    eprintln!("{cp2} marked up {:.1}s after its sshd answered", up_after.as_secs_f64());

    // 4. Adding a node changes only that node.
    let with_node = [base[0], base[1], base[2], (extra, "[node]")];
    write_inventory(&lab, &inventory, &with_node, "");
    let added = changed_by_host(&apply(&inventory));
    assert!(added[extra] > 0, "{added:?}");
    for host in [cp1, cp2, n1] {
        assert_eq!(added[host], 0, "adding {extra} changed {host}: {added:?}");
    }

    // 5. A control-plane membership change whose config fails validation on the first host: the
    //    running config there is untouched and haproxy keeps serving, and no later host is changed.
    //    (`haproxy -c` fails because the haproxy user is gone; the running workers do not care.)
    let grown = [base[0], base[1], base[2], (extra, "[control_plane, node]")];
    let config_sum = |host: &str| remote(&lab, host, "sha256sum /etc/haproxy/haproxy.cfg");
    let (cp1_config, n1_config, cp1_master) = (config_sum(cp1), config_sum(n1), haproxy_main_pid(&lab, cp1));
    remote(
        &lab,
        cp1,
        "cp -p /etc/passwd /root/passwd.saved && sed -i '/^haproxy:/d' /etc/passwd",
    );
    write_inventory(&lab, &inventory, &grown, "");
    let refused = run_capstan(Some(&inventory), &["apply", "--only", "endpoint"], &[]);
    remote(&lab, cp1, "mv /root/passwd.saved /etc/passwd");
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    // haproxy's own complaint, about the staging file.
    assert!(
        refused.stderr.contains("haproxy.cfg.capstan-new") && refused.stderr.contains("haproxy"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        config_sum(cp1),
        cp1_config,
        "the failed config replaced the running one"
    );
    assert_eq!(config_sum(n1), n1_config, "a host after the failing one was changed");
    assert_eq!(haproxy_main_pid(&lab, cp1), cp1_master);
    assert_eq!(
        remote(&lab, cp1, "ls /etc/haproxy/ | grep -c capstan-new || true"),
        "0",
        "the staging file is removed"
    );
    let (ok, text) = try_remote(&lab, cp1, &readyz_command("127.0.0.1"));
    assert!(ok, "{text}");

    // 6. The same change, now valid, re-renders and reloads haproxy everywhere (one host at a
    //    time); a long-lived request through the endpoint survives it, with the same master.
    let master_before = haproxy_main_pid(&lab, n1);
    let watch = {
        let lab = lab.clone();
        let n1 = n1.to_string();
        std::thread::spawn(move || {
            try_remote(
                &lab,
                &n1,
                &format!("curl -sS --fail --no-buffer --max-time 60 --cacert {CA_CERT} 'https://127.0.0.1:6443/watch?seconds=12'"),
            )
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let membership = apply(&inventory);
    let reloaded = changed_by_host(&membership);
    assert!(reloaded[n1] > 0, "{reloaded:?}");
    let text = membership.to_string();
    assert!(text.contains("(validated, then reloaded)"), "{membership:#}");
    assert!(!text.contains("restart haproxy"), "{membership:#}");
    assert_eq!(
        haproxy_main_pid(&lab, n1),
        master_before,
        "haproxy was restarted, not reloaded"
    );
    let (ok, streamed) = watch.join().unwrap();
    assert!(ok, "the long-lived request failed: {streamed}");
    assert!(streamed.ends_with("done"), "{streamed}");
    assert_eq!(
        streamed.lines().filter(|l| l.starts_with("tick ")).count(),
        60,
        "{streamed}"
    );
    assert!(
        remote(&lab, n1, "cat /etc/haproxy/haproxy.cfg").contains(&format!("server {extra} ")),
        "the new control-plane host is a backend"
    );
    // The new control-plane host runs no stand-in: it is marked down, requests still succeed.
    wait_for("the new API server marked down", Duration::from_secs(15), || {
        server_states(&lab, n1)
            .get(extra)
            .is_some_and(|s| s.starts_with("DOWN"))
    });
    let (ok, text) = try_remote(&lab, n1, &readyz_command("127.0.0.1"));
    assert!(ok, "{text}");

    // 7. A VIP on the control-plane machines: it moves within 5 s when its holder's haproxy is
    //    killed, and is never on two machines.
    let vip = {
        let prefix = lab.subnet.split('/').next().unwrap();
        let octets: Vec<&str> = prefix.split('.').collect();
        format!("{}.{}.{}.200", octets[0], octets[1], octets[2])
    };
    write_inventory(
        &lab,
        &inventory,
        &grown,
        &format!("api_endpoint:\n  mode: vip\n  address: {vip}\n"),
    );
    apply(&inventory);
    // The certificate now names the VIP; the stand-ins load it when they start (kube-apiserver
    // reloads its serving certificate by itself).
    for cp in [cp1, cp2] {
        remote(&lab, cp, &format!("systemctl restart {STANDIN_UNIT}"));
    }
    let control_plane = [cp1, cp2, extra];
    wait_for("one VIP holder", Duration::from_secs(15), || {
        vip_holders(&lab, &control_plane, &vip).len() == 1
    });
    wait_for("both API servers up again", Duration::from_secs(20), || {
        let states = server_states(&lab, n1);
        states[cp1] == "UP" && states[cp2] == "UP"
    });
    let (ok, text) = try_remote(&lab, n1, &readyz_command(&vip));
    assert!(ok, "readyz through the VIP failed: {text}");
    let holder = vip_holders(&lab, &control_plane, &vip).remove(0);
    remote(
        &lab,
        &holder,
        "systemctl kill --signal=SIGKILL haproxy; systemctl stop haproxy",
    );
    let killed = Instant::now();
    let mut samples = 0;
    let mut moved_after = None;
    while killed.elapsed() < Duration::from_secs(8) {
        let holders = vip_holders(&lab, &control_plane, &vip);
        samples += 1;
        assert!(holders.len() <= 1, "the VIP is on {holders:?} at once");
        if moved_after.is_none() && holders.len() == 1 && holders[0] != holder {
            moved_after = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let moved_after = moved_after.expect("the VIP moved away from the host whose haproxy was killed");
    eprintln!(
        "VIP {vip} moved from {holder} {:.1}s after its haproxy was killed ({samples} samples, never on two machines)",
        moved_after.as_secs_f64()
    );
    assert!(moved_after <= Duration::from_secs(5), "{moved_after:?}");
    let new_holder = vip_holders(&lab, &control_plane, &vip).remove(0);
    let (ok, text) = try_remote(&lab, n1, &readyz_command(&vip));
    assert!(ok, "readyz through the moved VIP failed: {text}");

    // 8. Re-applying brings the killed haproxy back and changes nothing else; the VIP stays
    //    (nopreempt).
    let repaired = changed_by_host(&apply(&inventory));
    assert_eq!(
        repaired.values().sum::<u64>(),
        1,
        "only the stopped haproxy is started: {repaired:?}"
    );
    assert_eq!(repaired[&holder], 1, "{repaired:?}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        vip_holders(&lab, &control_plane, &vip),
        [new_holder],
        "the VIP moved back"
    );

    // 9. Back to the local mode: keepalived stops and the VIP is gone everywhere.
    write_inventory(&lab, &inventory, &grown, "");
    let retired = changed_by_host(&apply(&inventory));
    let vip_gone = wait_for("the VIP released", Duration::from_secs(5), || {
        vip_holders(&lab, &control_plane, &vip).is_empty()
    });
    eprintln!(
        "back to local mode: the VIP was released {:.1}s after the apply",
        vip_gone.as_secs_f64()
    );
    for host in control_plane {
        assert!(retired[host] > 0, "{retired:?}");
        assert_eq!(remote(&lab, host, "systemctl is-active keepalived || true"), "inactive");
    }
    assert_eq!(retired[n1], 0, "{retired:?}");

    // 10. A no-op re-apply changes nothing and costs each host two SSH execs (its probe, and every
    //    op's probes in one batch), the CA holder one more (its key). sshd logs one line per exec.
    let hosts = [cp1, cp2, n1, extra];
    for host in hosts {
        remote(
            &lab,
            host,
            "sed -i '/^LogLevel/d' /etc/ssh/sshd_config && echo 'LogLevel VERBOSE' >>/etc/ssh/sshd_config && systemctl reload ssh",
        );
    }
    let epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let since = epoch() + 1;
    while epoch() < since {
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = apply(&inventory);
    assert_eq!(changed(&last), 0, "re-apply changed something: {last:#}");
    let until = epoch() + 1;
    std::thread::sleep(Duration::from_secs(2));
    let execs: BTreeMap<&str, u32> = hosts
        .iter()
        .map(|host| {
            let count = remote(
                &lab,
                host,
                &format!(
                    "journalctl -u ssh --since @{since} --until @{until} --no-pager -o cat | grep -c 'Starting session: command' || true"
                ),
            );
            (*host, count.parse().unwrap())
        })
        .collect();
    eprintln!("SSH execs of a no-op re-apply per host: {execs:?}");
    // cp1, the first host, also holds the CA and the etcd member the cluster lock reads: 2 probes
    // + the CA, then the lock: taking and releasing its file, and etcd's probe for the lock's key.
    assert_eq!(execs[cp1], 6, "{execs:?}");
    for host in [cp2, n1, extra] {
        assert_eq!(execs[host], 2, "{execs:?}");
    }
    eprintln!("endpoint lab test took {:.0}s", started.elapsed().as_secs_f64());
}
