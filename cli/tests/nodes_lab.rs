//! The nodes component on real lab machines: containerd with the lab-only crun runtime, the CNI
//! bridge network with routes between nodes, and a container on each node started by containerd
//! from a busybox image this test builds and imports. Then a node is added: only it and the
//! routes change, and re-applying changes nothing.
//!
//! Needs root, the lab prerequisites, the artifact mirror with containerd, crun and the CNI
//! plugins, the local Debian repository (iptables, crun's libraries) and a static busybox on this
//! machine (Debian's busybox-static); skips with a message naming what is missing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use capstan_lab::{Lab, LabGuard, UpOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod support;
use support::{capstan_ok, file, json, lab, mirror, remote, require, run_capstan, Need, MIRROR};

const BUSYBOX: &str = "/bin/busybox";
const IMAGE: &str = "capstan.test/busybox:1";
const WRAPPER: &str = "/usr/local/lib/capstan/crun-lab-cgroupless";

/// containerd, crun and the CNI plugins in the artifact mirror.
fn mirror_runtime() -> Need {
    let sums = std::fs::read_to_string(Path::new(MIRROR).join("SHA256SUMS")).unwrap_or_default();
    for part in [
        "containerd-1.6.20-linux-amd64",
        "crun-1.8.1-linux-amd64",
        "cni-plugins-linux-amd64-v1.1.1",
    ] {
        if !sums.contains(part) {
            return Err(format!("artifact mirror {MIRROR} lacks {part} (run scripts/setup.sh)"));
        }
    }
    Ok(())
}

/// The inventory: the first machine runs etcd and pods, the others pods.
fn inventory(lab: &Lab, count: usize) -> String {
    inventory_with(lab, count, "auto")
}

fn inventory_with(lab: &Lab, count: usize, lab_cgroupless: &str) -> String {
    let mut yaml = format!(
        "cluster:\n  name: {}\nssh:\n  user: root\n  identity_file: {:?}\n  known_hosts: strict\n  known_hosts_file: {:?}\n\
         artifacts:\n  mirror: \"file://{MIRROR}\"\n  apt_source: \"deb [trusted=yes] file:/srv/capstan-debs ./\"\n\
         versions:\n  etcd: \"3.5.1\"\n  containerd: \"1.6.20\"\n  runc: \"1.1.5\"\n  crun: \"1.8.1\"\n  cni_plugins: \"1.1.1\"\n\
         network:\n  pod_cidr: 10.244.0.0/16\n  node_prefix: 24\n\
         runtime:\n  lab_cgroupless: {lab_cgroupless}\n\
         hosts:\n",
        lab.name,
        lab.key_path.display().to_string(),
        lab.known_hosts_path.display().to_string()
    );
    for (i, m) in lab.machines.iter().take(count).enumerate() {
        let roles = if i == 0 { "[etcd, node]" } else { "[node]" };
        yaml.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: {roles}\n",
            m.name, m.ip
        ));
    }
    yaml
}

fn tar_entry(builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, data).unwrap();
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An OCI image archive (`ctr images import` format) of one layer: a static busybox and links.
fn busybox_image() -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX).unwrap();
    let mut layer = tar::Builder::new(Vec::new());
    for dir in ["bin", "tmp", "etc", "proc", "sys", "dev"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_mtime(0);
        layer.append_data(&mut header, dir, &[][..]).unwrap();
    }
    tar_entry(&mut layer, "bin/busybox", 0o755, &busybox);
    for applet in ["sh", "ip", "ping", "sleep", "cat"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        header.set_mtime(0);
        layer
            .append_link(&mut header, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).unwrap();
    let gz = gz.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["/bin/sleep", "3600"], "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha(&layer))] },
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&config)), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{}", sha(&gz)), "size": gz.len() }],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len(),
            "annotations": { "io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "1" },
        }],
    }))
    .unwrap();
    let mut archive = tar::Builder::new(Vec::new());
    tar_entry(&mut archive, "oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#);
    for blob in [&gz, &config, &manifest] {
        tar_entry(&mut archive, &format!("blobs/sha256/{}", sha(blob)), 0o644, blob);
    }
    tar_entry(&mut archive, "index.json", 0o644, &index);
    archive.into_inner().unwrap()
}

/// Runs `command` on `host` with `input` on its stdin; its stdout.
fn remote_with_input(lab: &Lab, host: &str, command: &str, input: &[u8]) -> String {
    let mut child = capstan_lab::ssh_command(&lab.name, host, Some(command))
        .unwrap()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{host}: {command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Imports the image and starts container `pod` on `host` with containerd (CNI networking, the
/// runtime and snapshotter capstan configured); the container's address.
fn start_container(lab: &Lab, host: &str, image: &[u8]) -> String {
    let config = remote(lab, host, "cat /etc/containerd/config.toml");
    let snapshotter = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("snapshotter = "))
        .map(|s| s.trim_matches('"').to_string())
        .expect("snapshotter in the containerd config");
    let runtime = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("BinaryName = "))
        .map(|s| s.trim_matches('"').to_string())
        .expect("BinaryName in the containerd config");
    assert_eq!(runtime, WRAPPER, "the lab machines get the lab-only runtime");
    remote_with_input(
        lab,
        host,
        &format!("ctr -n capstan-test images import --snapshotter {snapshotter} -"),
        image,
    );
    remote(
        lab,
        host,
        &format!(
            "ctr -n capstan-test run -d --cni --snapshotter {snapshotter} --runc-binary {runtime} {IMAGE} pod /bin/sleep 600"
        ),
    );
    let addr = remote(
        lab,
        host,
        "ctr -n capstan-test task exec --exec-id addr pod /bin/ip -4 -o addr show eth0",
    );
    addr.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("{host}: no address in {addr:?}"))
        .to_string()
}

fn in_subnet(ip: &str, subnet: &str) -> bool {
    let net: ipnet::Ipv4Net = subnet.parse().unwrap();
    net.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap())
}

/// `capstan status` pod subnets by host.
fn pod_subnets(inventory: &Path) -> BTreeMap<String, String> {
    let status = json(&capstan_ok(
        inventory,
        &["status", "--timeout", "5", "--output", "json"],
    ));
    status["pod_network"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no pod_network in {status:#}"))
        .iter()
        .map(|n| {
            (
                n["host"].as_str().unwrap().to_string(),
                n["pod_subnet"].as_str().expect("assigned").to_string(),
            )
        })
        .collect()
}

/// Routes capstan manages on `host` (`subnet via address`), sorted.
fn routes(lab: &Lab, host: &str) -> Vec<String> {
    let mut lines: Vec<String> = remote(lab, host, "ip -4 route show proto 203")
        .lines()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect();
    lines.sort();
    lines
}

fn expected_routes(lab: &Lab, host: &str, subnets: &BTreeMap<String, String>) -> Vec<String> {
    let mut lines: Vec<String> = subnets
        .iter()
        .filter(|(h, _)| h.as_str() != host)
        .map(|(h, s)| {
            let ip = lab.machines.iter().find(|m| &m.name == h).unwrap().ip.to_string();
            format!("{s} via {ip}")
        })
        .collect();
    lines.sort();
    lines
}

/// Changed op names per host, from an apply's JSON report.
fn changed_ops(outcome: &Value) -> BTreeMap<String, Vec<String>> {
    let mut changed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for host in outcome["summary"]["hosts"].as_array().unwrap() {
        let ops = host["ops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|op| op["status"] == "changed")
            .map(|op| op["op"].as_str().unwrap().to_string())
            .collect();
        changed.insert(host["host"].as_str().unwrap().to_string(), ops);
    }
    changed
}

fn total_changed(outcome: &Value) -> usize {
    changed_ops(outcome).values().map(Vec::len).sum()
}

#[test]
fn containers_on_two_nodes_reach_each_other_and_a_new_node_changes_only_itself_and_routes() {
    let apt: Need = file(
        "/var/cache/capstan/debs/Packages",
        "local Debian repository missing (run scripts/setup.sh)",
    );
    if !require(&[
        lab(),
        mirror(),
        mirror_runtime(),
        apt,
        file(
            BUSYBOX,
            "static busybox missing (apt-get install busybox-static; scripts/setup.sh)",
        ),
    ]) {
        return;
    }
    let started = Instant::now();
    let guard = LabGuard::up(UpOptions::new("nodes-net", 3)).expect("lab up");
    let lab = guard.lab();
    let dir = tempfile::tempdir().unwrap();
    let inventory_path = dir.path().join("inventory.yaml");
    let [m1, m2, m3] = [0, 1, 2].map(|i| lab.machines[i].name.clone());

    // Without the lab-only setting, the lab's machines (read-only cgroups) are refused, with the
    // setting named, before any node changes (etcd, which comes first, converges).
    std::fs::write(&inventory_path, inventory_with(lab, 2, "never")).unwrap();
    let refused = run_capstan(Some(&inventory_path), &["apply"], &[]);
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("read-only") && refused.stderr.contains("runtime.lab_cgroupless: auto"),
        "{}",
        refused.stderr
    );
    let untouched = "test ! -e /etc/containerd && test ! -e /etc/cni && echo untouched";
    assert_eq!(remote(lab, &m1, untouched), "untouched");

    // Two nodes: the plan changes nothing; apply sets up runtime and pod network from nothing.
    std::fs::write(&inventory_path, inventory(lab, 2)).unwrap();
    let plan = json(&capstan_ok(&inventory_path, &["plan", "--output", "json"]));
    assert!(total_changed(&plan) > 0, "the plan shows the changes");
    assert_eq!(remote(lab, &m2, untouched), "untouched");
    let first = json(&capstan_ok(&inventory_path, &["apply", "--output", "json"]));
    assert!(total_changed(&first) > 0);
    let subnets = pod_subnets(&inventory_path);
    assert_eq!(subnets.len(), 2, "{subnets:?}");
    assert_ne!(subnets[&m1], subnets[&m2]);
    let pod_cidr: ipnet::Ipv4Net = "10.244.0.0/16".parse().unwrap();
    for host in [&m1, &m2] {
        let subnet: ipnet::Ipv4Net = subnets[host].parse().unwrap();
        assert!(pod_cidr.contains(&subnet) && subnet.prefix_len() == 24, "{subnet}");
        assert_eq!(routes(lab, host), expected_routes(lab, host, &subnets), "{host}");
    }

    // A container on each node, from an image built here, gets an address from its node's subnet.
    let image = busybox_image();
    let ip1 = start_container(lab, &m1, &image);
    let ip2 = start_container(lab, &m2, &image);
    assert!(in_subnet(&ip1, &subnets[&m1]), "{ip1} not in {}", subnets[&m1]);
    assert!(in_subnet(&ip2, &subnets[&m2]), "{ip2} not in {}", subnets[&m2]);
    // Each reaches the other node's container and the other node's host.
    let ping = |host: &str, target: &str| {
        remote(
            lab,
            host,
            &format!(
                "ctr -n capstan-test task exec --exec-id ping-{} pod /bin/ping -c 1 -W 3 {target}",
                target.replace('.', "-")
            ),
        )
    };
    ping(&m1, &ip2);
    ping(&m2, &ip1);
    ping(&m1, &lab.machines[1].ip.to_string());
    ping(&m2, &lab.machines[0].ip.to_string());

    // Re-applying changes nothing.
    let again = json(&capstan_ok(&inventory_path, &["apply", "--output", "json"]));
    assert_eq!(total_changed(&again), 0, "{:#?}", changed_ops(&again));

    // A route lost on a node (deleted by hand) is found and put back, and only that changes.
    remote(lab, &m1, &format!("ip -4 route del {} proto 203", subnets[&m2]));
    assert!(routes(lab, &m1).is_empty());
    let mended = json(&capstan_ok(&inventory_path, &["apply", "--output", "json"]));
    let mended_ops = changed_ops(&mended);
    assert_eq!(
        mended_ops[m1.as_str()],
        ["pod network: 1 route(s) and masquerading"],
        "{mended_ops:#?}"
    );
    assert!(mended_ops[m2.as_str()].is_empty(), "{mended_ops:#?}");
    assert_eq!(routes(lab, &m1), expected_routes(lab, &m1, &subnets));

    // A third node: it gets everything; the others only their routes; no subnet moves.
    std::fs::write(&inventory_path, inventory(lab, 3)).unwrap();
    let grown = json(&capstan_ok(&inventory_path, &["apply", "--output", "json"]));
    let changed = changed_ops(&grown);
    for host in [&m1, &m2] {
        for op in &changed[host.as_str()] {
            assert!(
                op == "file /usr/local/lib/capstan/pod-network" || op.starts_with("pod network: "),
                "{host}: unexpected change {op}: {changed:#?}"
            );
        }
        assert!(!changed[host.as_str()].is_empty(), "{host} got no route: {changed:#?}");
    }
    assert!(changed[m3.as_str()].len() > 5, "{changed:#?}");
    let grown_subnets = pod_subnets(&inventory_path);
    assert_eq!(grown_subnets[&m1], subnets[&m1]);
    assert_eq!(grown_subnets[&m2], subnets[&m2]);
    for host in [&m1, &m2, &m3] {
        assert_eq!(routes(lab, host), expected_routes(lab, host, &grown_subnets), "{host}");
    }
    let ip3 = start_container(lab, &m3, &image);
    assert!(in_subnet(&ip3, &grown_subnets[&m3]));
    ping(&m1, &ip3);
    let settled = json(&capstan_ok(&inventory_path, &["apply", "--output", "json"]));
    assert_eq!(total_changed(&settled), 0, "{:#?}", changed_ops(&settled));

    // Removing the third node takes its route away everywhere else.
    std::fs::write(&inventory_path, inventory(lab, 2)).unwrap();
    capstan_ok(&inventory_path, &["apply", "--output", "json"]);
    for host in [&m1, &m2] {
        assert_eq!(routes(lab, host), expected_routes(lab, host, &subnets), "{host}");
    }
    eprintln!("nodes lab test: {:.1}s", started.elapsed().as_secs_f64());
}
