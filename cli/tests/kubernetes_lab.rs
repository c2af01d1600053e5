//! The Kubernetes control plane on real lab machines.
//!
//! `plan_shows_every_step_and_the_units_verify` (always, given the lab): etcd, the API endpoint
//! and the nodes are applied for real on two machines (one control-plane host, one node); then
//! - without the Kubernetes release tarballs in the mirror, `apply --only kubernetes` refuses
//!   before changing anything;
//! - `plan --only kubernetes` prints the whole ordered sequence per host (the binaries it would
//!   install from which release, every PKI file, config, unit and service) and changes nothing;
//! - every unit capstan renders passes `systemd-analyze verify` on the machine that would run it.
//!   The binaries are absent (they cannot be downloaded here) and nothing stands in for them:
//!   the test copies the rendered unit files (only them) to the machine, runs verify, and accepts
//!   exactly one complaint per unit, that its ExecStart binary does not exist; anything else
//!   verify says fails the test. The copies are removed afterwards.
//!
//! `real_release_brings_up_a_cluster` (only with `CAPSTAN_KUBE_ARTIFACTS=DIR` holding the real
//! tarballs of the inventory's version): puts them in the mirror through
//! `lab/mirror/add-kube-artifacts.sh` (sha512 checked against the pins), applies everything, checks
//! the units' flags against the real binaries' `--help`, and runs `kubectl get nodes` through the
//! HA endpoint with `capstan kubeconfig`. Otherwise it skips, naming what is missing.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use capstan_lab::{Lab, LabGuard, UpOptions};
use serde_json::Value;

mod support;
use support::{capstan_ok, file, json, lab, mirror, remote, require, run_capstan, Need, MIRROR};

const VERSION: &str = capstan_inventory::DEFAULT_KUBERNETES_VERSION;

/// containerd, crun and the CNI plugins (the nodes component) in the artifact mirror.
fn mirror_runtime() -> Need {
    let sums = std::fs::read_to_string(Path::new(MIRROR).join("SHA256SUMS")).unwrap_or_default();
    match [
        "containerd-1.6.20-linux-amd64",
        "crun-1.8.1-linux-amd64",
        "cni-plugins-linux-amd64-v1.1.1",
    ]
    .iter()
    .find(|part| !sums.contains(*part))
    {
        Some(part) => Err(format!("artifact mirror {MIRROR} lacks {part} (run scripts/setup.sh)")),
        None => Ok(()),
    }
}

fn kube_in_mirror() -> bool {
    let sums = std::fs::read_to_string(Path::new(MIRROR).join("SHA256SUMS")).unwrap_or_default();
    sums.contains(&format!("v{VERSION}/kubernetes-server-linux-amd64.tar.gz"))
        && sums.contains(&format!("v{VERSION}/kubernetes-node-linux-amd64.tar.gz"))
}

/// Machine 1: etcd and the control plane; machine 2: a node.
fn inventory(lab: &Lab) -> String {
    let mut yaml = format!(
        "cluster:\n  name: {}\nssh:\n  user: root\n  identity_file: {:?}\n  known_hosts: strict\n  known_hosts_file: {:?}\n\
         artifacts:\n  mirror: \"file://{MIRROR}\"\n  apt_source: \"deb [trusted=yes] file:/srv/capstan-debs ./\"\n\
         versions:\n  etcd: \"3.5.1\"\n  containerd: \"1.6.20\"\n  runc: \"1.1.5\"\n  crun: \"1.8.1\"\n  cni_plugins: \"1.1.1\"\n\
         runtime:\n  lab_cgroupless: auto\n\
         kubernetes:\n  version: \"{VERSION}\"\n  audit_log: true\n\
         hosts:\n",
        lab.name,
        lab.key_path.display().to_string(),
        lab.known_hosts_path.display().to_string()
    );
    for (i, m) in lab.machines.iter().enumerate() {
        let roles = if i == 0 { "[etcd, control_plane]" } else { "[node]" };
        yaml.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: {roles}\n",
            m.name, m.ip
        ));
    }
    yaml
}

fn prerequisites() -> Vec<Need> {
    vec![
        lab(),
        support::tool("kubectl", "kubectl"),
        support::tool("openssl", "openssl"),
        mirror(),
        mirror_runtime(),
        file(
            "/var/cache/capstan/debs/Packages",
            "local Debian repository missing (run scripts/setup.sh)",
        ),
    ]
}

/// `(op, status)` of every op of `host` in a plan/apply JSON report of one component, in order.
fn host_ops(report: &Value, host: &str) -> Vec<String> {
    report["summary"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["host"] == host)
        .flat_map(|h| h["ops"].as_array().unwrap().iter())
        .map(|op| format!("{} [{}]", op["op"].as_str().unwrap(), op["status"].as_str().unwrap()))
        .collect()
}

/// The position of the first op containing `needle`; panics naming the list when there is none.
fn position(ops: &[String], needle: &str) -> usize {
    ops.iter()
        .position(|op| op.contains(needle))
        .unwrap_or_else(|| panic!("no op `{needle}` in:\n{}", ops.join("\n")))
}

/// The phases of the first component of a plan/apply JSON report, in order.
fn phase_names(report: &Value) -> Vec<&str> {
    report["components"][0]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect()
}

fn cluster(inventory: &Path) -> capstan_inventory::Cluster {
    capstan_inventory::load(inventory).expect("inventory loads")
}

fn write_remote(lab: &Lab, host: &str, path: &str, content: &str) {
    let mut child = capstan_lab::ssh_command(&lab.name, host, Some(&format!("cat > {path}")))
        .unwrap()
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(content.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{host}: write {path}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `systemd-analyze verify` of `unit` (copied into /etc/systemd/system on `host` for the check
/// and removed after); its complaints.
fn verify_unit(lab: &Lab, host: &str, unit: &str, content: &str) -> Vec<String> {
    let path = format!("/etc/systemd/system/{unit}");
    write_remote(lab, host, &path, content);
    let output = capstan_lab::ssh_command(
        &lab.name,
        host,
        Some(&format!("systemd-analyze verify {path} 2>&1; rm -f {path}")),
    )
    .unwrap()
    .output()
    .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn plan_shows_every_step_and_the_units_verify() {
    if !require(&prerequisites()) {
        return;
    }
    let started = Instant::now();
    let guard = LabGuard::up(UpOptions::new(format!("kcp{}", std::process::id() % 10000), 2)).expect("lab up");
    let lab = guard.lab();
    let dir = tempfile::tempdir().unwrap();
    let inventory_path = dir.path().join("inventory.yaml");
    std::fs::write(&inventory_path, inventory(lab)).unwrap();
    let (cp, node) = (lab.machines[0].name.clone(), lab.machines[1].name.clone());
    capstan_ok(&inventory_path, &["apply", "--only", "etcd,endpoint,nodes"]);
    eprintln!(
        "etcd, endpoint, nodes applied in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let untouched = "test ! -e /etc/kubernetes/encryption-config.yaml && test ! -e /etc/systemd/system/kube-apiserver.service \
                     && test ! -e /usr/local/bin/kube-apiserver && test ! -e /etc/kubernetes/kubelet.conf && echo untouched";

    // Without the tarballs, apply refuses before any change, naming what to supply.
    if !kube_in_mirror() {
        let refused = run_capstan(Some(&inventory_path), &["apply", "--only", "kubernetes"], &[]);
        assert_ne!(refused.code, 0, "{}", refused.stderr);
        assert!(
            refused.stderr.contains(&format!("kubernetes-server {VERSION}"))
                && refused.stderr.contains("CAPSTAN_KUBE_ARTIFACTS"),
            "{}",
            refused.stderr
        );
        assert_eq!(remote(lab, &cp, untouched), "untouched");
    }

    // The plan: every step, per host, in order, changing nothing.
    let plan_started = Instant::now();
    let plan = json(&capstan_ok(
        &inventory_path,
        &["plan", "--only", "kubernetes", "--output", "json"],
    ));
    eprintln!("plan in {:.1}s", plan_started.elapsed().as_secs_f64());
    let phases = phase_names(&plan);
    assert_eq!(phases, ["control plane", "node agents", "cluster addons"], "{plan:#}");
    let cp_ops = host_ops(&plan, &cp);
    let node_ops = host_ops(&plan, &node);
    eprintln!("{cp}:\n  {}\n{node}:\n  {}", cp_ops.join("\n  "), node_ops.join("\n  "));
    let cp_order = [
        "artifact /usr/local/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl}",
        "file /etc/kubernetes/pki/front-proxy-ca.crt",
        "file /etc/kubernetes/pki/front-proxy-ca.key",
        "file /etc/kubernetes/pki/etcd-ca.crt",
        "file /etc/kubernetes/pki/sa.pub",
        "file /etc/kubernetes/pki/sa.key",
        "file /etc/kubernetes/encryption-config.yaml",
        "file /etc/kubernetes/pki/apiserver-kubelet-client.crt",
        "file /etc/kubernetes/pki/front-proxy-client.crt",
        "file /etc/kubernetes/pki/apiserver-etcd-client.crt",
        // The controller-manager's and scheduler's serving certificates (cluster CA).
        "file /etc/kubernetes/pki/controller-manager-serving.crt",
        "file /etc/kubernetes/pki/controller-manager-serving.key",
        "file /etc/kubernetes/pki/scheduler-serving.crt",
        "file /etc/kubernetes/pki/scheduler-serving.key",
        "file /etc/kubernetes/controller-manager.conf",
        "file /etc/kubernetes/scheduler.conf",
        "file /etc/kubernetes/admin.conf",
        "file /etc/kubernetes/super-admin.conf",
        "file /etc/kubernetes/audit-policy.yaml",
        "file /etc/kubernetes/kube-scheduler.yaml",
        "kube-apiserver.service",
        "kube-controller-manager.service",
        "kube-scheduler.service",
        // The cluster addons phase, after the units: RBAC first, then CoreDNS.
        "api ClusterRoleBinding capstan:cluster-admins [changed]",
        "api ClusterRoleBinding capstan:kubelet-api-admin [changed]",
        "api ClusterRole capstan:metrics-reader [changed]",
        "api ClusterRoleBinding capstan:metrics-reader [changed]",
        "api ServiceAccount kube-system/coredns [changed]",
        "api ConfigMap kube-system/coredns [changed]",
        "api Deployment kube-system/coredns [changed]",
        "api Service kube-system/kube-dns [changed]",
        "api PodDisruptionBudget kube-system/coredns [changed]",
    ];
    let positions: Vec<usize> = cp_order.iter().map(|op| position(&cp_ops, op)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order: {positions:?}\n{}",
        cp_ops.join("\n")
    );
    for op in &cp_ops {
        assert!(
            !op.contains("kubelet.conf") && !op.contains("kubelet.service") && !op.contains("kubelet-serving"),
            "{cp} is no node: {op}"
        );
    }
    let node_order = [
        "artifact /usr/local/bin/{kubelet,kube-proxy}",
        "file /etc/kubernetes/kubelet.conf",
        // kubelet's serving certificate (cluster CA), which the API server verifies.
        "file /etc/kubernetes/pki/kubelet-serving.crt",
        "file /etc/kubernetes/pki/kubelet-serving.key",
        "file /etc/kubernetes/kube-proxy.conf",
        "file /var/lib/kubelet/config.yaml",
        "file /var/lib/kube-proxy/config.yaml",
        "kubelet.service",
        "kube-proxy.service",
    ];
    let positions: Vec<usize> = node_order.iter().map(|op| position(&node_ops, op)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order: {positions:?}\n{}",
        node_ops.join("\n")
    );
    for op in &node_ops {
        assert!(
            !op.contains("super-admin") && !op.contains("kube-apiserver") && !op.contains("ca.key"),
            "{node}: {op}"
        );
    }
    // Each object is applied through the HA endpoint, said in the change.
    let endpoint = format!("https://{}:6443", lab.machines[0].ip);
    let addons = plan["components"][0]["summary"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["host"] == cp.as_str())
        .flat_map(|h| h["ops"].as_array().unwrap().iter())
        .filter(|op| op["op"].as_str().unwrap().starts_with("api "))
        .map(|op| op["changes"][0]["summary"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert_eq!(addons.len(), 11, "{addons:?}");
    for summary in &addons {
        assert!(
            summary.contains(&format!(" via {endpoint} (once the API server answers)")),
            "{summary}"
        );
    }
    for op in &node_ops {
        assert!(!op.starts_with("api "), "{node}: {op}");
    }

    // The text plan names the release the binaries come from.
    let text = capstan_ok(&inventory_path, &["plan", "--only", "kubernetes"]);
    assert!(
        text.stdout.contains("kubernetes-server-linux-amd64.tar.gz")
            || text.stdout.contains(&format!("kubernetes-server {VERSION}")),
        "{}",
        text.stdout
    );
    if !kube_in_mirror() {
        assert_eq!(remote(lab, &cp, untouched), "untouched");
        assert_eq!(remote(lab, &node, untouched), "untouched");
    }

    // Another version (the previous minor) in the inventory with nothing installed is an install of that version,
    // not an upgrade: the versions come from the hosts' binaries.
    let newer = inventory(lab).replace(&format!("version: \"{VERSION}\""), &format!("version: \"{OLDER}\""));
    assert_ne!(newer, inventory(lab));
    let newer_path = dir.path().join("inventory-older.yaml");
    std::fs::write(&newer_path, &newer).unwrap();
    let plan_newer = json(&capstan_ok(
        &newer_path,
        &["plan", "--only", "kubernetes", "--output", "json"],
    ));
    let newer_phases = phase_names(&plan_newer);
    assert_eq!(newer_phases, ["control plane", "node agents", "cluster addons"]);

    // A second operator holding the cluster lock: apply (also with a version change) refuses
    // at once, naming the holder, and changes nothing.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let other = runtime.block_on(hold_lock(&cluster(&newer_path)));
    let refused = run_capstan(Some(&newer_path), &["apply", "--only", "kubernetes"], &[]);
    let released = runtime.block_on(other.release());
    assert!(released.is_empty(), "{released:?}");
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("the cluster is locked by")
            && refused
                .stderr
                .contains(&format!("(pid {}) running `{OTHER_OPERATOR}`", std::process::id())),
        "{}",
        refused.stderr
    );
    if !kube_in_mirror() {
        assert_eq!(remote(lab, &cp, untouched), "untouched");
    }

    // The whole cluster plan: every component in dependency order, the ones already applied
    // without changes, Kubernetes last.
    let whole = json(&capstan_ok(&inventory_path, &["plan", "--output", "json"]));
    let components: Vec<&str> = whole["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["component"].as_str().unwrap())
        .collect();
    assert_eq!(components, ["etcd", "endpoint", "nodes", "kubernetes"], "{whole:#}");

    // `capstan kubeconfig`: the RBAC-bound admin, for the endpoint, 0600, signed by the host's CA.
    let kubeconfig = dir.path().join("admin.conf");
    capstan_ok(&inventory_path, &["kubeconfig", "--out", kubeconfig.to_str().unwrap()]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let view = Command::new("kubectl")
        .args(["config", "view", "--raw", "-o", "json", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(view.status.success(), "{}", String::from_utf8_lossy(&view.stderr));
    let view: Value = serde_json::from_slice(&view.stdout).unwrap();
    assert_eq!(
        view["clusters"][0]["cluster"]["server"],
        format!("https://{}:6443", lab.machines[0].ip)
    );
    assert_eq!(view["users"][0]["name"], "capstan-admin");
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let config = capstan_kubernetes::kubeconfig::Kubeconfig::parse(&text).expect("capstan's kubeconfig reads back");
    assert_eq!(config.ca_pem, remote(lab, &cp, "cat /etc/kubernetes/pki/ca.crt") + "\n");
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(config.cert_pem.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&subject.stdout).trim(),
        "subject=CN=capstan-admin,O=capstan:cluster-admins"
    );

    // Every unit, on the machine that would run it, through systemd-analyze verify.
    let cluster = cluster(&inventory_path);
    let cp_host = cluster.host(&cp).unwrap();
    let node_host = cluster.host(&node).unwrap();
    use capstan_kubernetes::config;
    let units = [
        (
            &cp,
            "kube-apiserver.service",
            config::apiserver_unit(&cluster, cp_host).unwrap(),
        ),
        (
            &cp,
            "kube-controller-manager.service",
            config::controller_manager_unit(&cluster, cp_host).unwrap(),
        ),
        (
            &cp,
            "kube-scheduler.service",
            config::scheduler_unit(&cluster, cp_host).unwrap(),
        ),
        (
            &node,
            "kubelet.service",
            config::kubelet_unit(&cluster, node_host).unwrap(),
        ),
        (
            &node,
            "kube-proxy.service",
            config::kube_proxy_unit(&cluster, node_host).unwrap(),
        ),
    ];
    for (host, unit, content) in units {
        let binary = unit.trim_end_matches(".service");
        let complaints = verify_unit(lab, host, unit, &content);
        eprintln!("systemd-analyze verify {unit} on {host}: {complaints:?}");
        let expected = format!("{unit}: Command /usr/local/bin/{binary} is not executable: No such file or directory");
        assert_eq!(
            complaints,
            [expected],
            "{unit}: verify says more than that the binary is absent"
        );
    }
    eprintln!("kubernetes lab test: {:.0}s", started.elapsed().as_secs_f64());
}

const OTHER_OPERATOR: &str = "capstan apply (another operator's Kubernetes upgrade)";

/// The cluster lock, taken as another operator's run would (the host lock file on the
/// inventory's first host), through capstan's lock code.
async fn hold_lock(cluster: &capstan_inventory::Cluster) -> capstan_provisioner::lock::ClusterLock {
    use capstan_provisioner::lock::{ClusterLock, HostFileLock, LockHolder, LockMode, LockStore, DEFAULT_LOCK_TTL};
    let transport =
        capstan_provisioner::ssh::SshTransport::connect(&capstan_provisioner::targets::ssh_target(&cluster.hosts[0]))
            .await
            .expect("ssh to the first host");
    let store: std::sync::Arc<dyn LockStore> = std::sync::Arc::new(HostFileLock::new(std::sync::Arc::new(transport)));
    ClusterLock::acquire(
        vec![store],
        LockHolder::this_process(OTHER_OPERATOR, LockMode::Change),
        DEFAULT_LOCK_TTL,
        capstan_provisioner::report::Reporter::sink(),
    )
    .await
    .expect("the lock is free")
}

/// The tarballs of [`VERSION`] under `CAPSTAN_KUBE_ARTIFACTS`.
fn kube_artifacts() -> Result<String, String> {
    let dir = std::env::var("CAPSTAN_KUBE_ARTIFACTS").map_err(|_| {
        format!(
            "CAPSTAN_KUBE_ARTIFACTS is not set: set it to a directory holding the official \
             kubernetes-server-linux-amd64.tar.gz and kubernetes-node-linux-amd64.tar.gz of Kubernetes {VERSION} \
             (https://dl.k8s.io/v{VERSION}/), which cannot be downloaded on this machine"
        )
    })?;
    for name in [
        "kubernetes-server-linux-amd64.tar.gz",
        "kubernetes-node-linux-amd64.tar.gz",
    ] {
        let found = Command::new("find")
            .args([&dir, "-name", name])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if !found {
            return Err(format!(
                "CAPSTAN_KUBE_ARTIFACTS={dir} holds no {name} (Kubernetes {VERSION})"
            ));
        }
    }
    Ok(dir)
}

#[test]
fn real_release_brings_up_a_cluster() {
    let mut needs = prerequisites();
    let artifacts = kube_artifacts();
    needs.push(artifacts.as_ref().map(|_| ()).map_err(Clone::clone));
    if !require(&needs) {
        return;
    }
    let started = Instant::now();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/mirror/add-kube-artifacts.sh");
    let added = Command::new("bash")
        .arg(&script)
        .arg(MIRROR)
        .env("CAPSTAN_KUBE_ARTIFACTS", artifacts.unwrap())
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert!(
        kube_in_mirror(),
        "the mirror holds Kubernetes {VERSION} after add-kube-artifacts.sh"
    );

    let guard = LabGuard::up(UpOptions::new("kube-e2e", 2)).expect("lab up");
    let lab = guard.lab();
    let dir = tempfile::tempdir().unwrap();
    let inventory_path = dir.path().join("inventory.yaml");
    std::fs::write(&inventory_path, inventory(lab)).unwrap();
    let cp = lab.machines[0].name.clone();
    capstan_ok(&inventory_path, &["apply"]);

    // Every flag a unit passes is one the real binary knows.
    let cluster = cluster(&inventory_path);
    let host = cluster.host(&cp).unwrap();
    for (binary, unit) in [
        (
            "kube-apiserver",
            capstan_kubernetes::config::apiserver_unit(&cluster, host).unwrap(),
        ),
        (
            "kube-controller-manager",
            capstan_kubernetes::config::controller_manager_unit(&cluster, host).unwrap(),
        ),
        (
            "kube-scheduler",
            capstan_kubernetes::config::scheduler_unit(&cluster, host).unwrap(),
        ),
    ] {
        let help = remote(lab, &cp, &format!("/usr/local/bin/{binary} --help 2>&1 || true"));
        for flag in unit.split_whitespace().filter(|w| w.starts_with("--")) {
            let name = flag.split('=').next().unwrap();
            assert!(
                help.contains(&format!("{name} ")) || help.contains(&format!("{name}=")),
                "{binary} has no {name}"
            );
        }
    }

    // The cluster addons phase applied the bootstrap RBAC and CoreDNS through the endpoint.
    let super_admin = "kubectl --kubeconfig /etc/kubernetes/super-admin.conf";
    remote(
        lab,
        &cp,
        &format!(
            "{super_admin} get clusterrolebinding capstan:cluster-admins capstan:kubelet-api-admin capstan:metrics-reader \
             && {super_admin} get clusterrole capstan:metrics-reader \
             && {super_admin} -n kube-system get serviceaccount/coredns configmap/coredns deployment/coredns service/kube-dns poddisruptionbudget/coredns"
        ),
    );
    let dns_ip = remote(
        lab,
        &cp,
        &format!("{super_admin} -n kube-system get service kube-dns -o jsonpath='{{.spec.clusterIP}}'"),
    );
    assert_eq!(dns_ip, cluster.kubernetes.dns_service_ip().to_string());
    let replicas = remote(
        lab,
        &cp,
        &format!("{super_admin} -n kube-system get deployment coredns -o jsonpath='{{.spec.replicas}}'"),
    );
    assert_eq!(replicas, "2");
    // A re-run changes nothing, the server-side applies included.
    let again = json(&capstan_ok(
        &inventory_path,
        &["apply", "--only", "kubernetes", "--output", "json"],
    ));
    let changed: u64 = again["summary"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["changed"].as_u64().unwrap())
        .sum();
    assert_eq!(changed, 0, "{again:#}");

    let kubeconfig = dir.path().join("admin.conf");
    capstan_ok(&inventory_path, &["kubeconfig", "--out", kubeconfig.to_str().unwrap()]);
    let nodes = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "nodes", "-o", "wide"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&nodes.stdout);
    eprintln!("kubectl get nodes:\n{listed}{}", String::from_utf8_lossy(&nodes.stderr));
    assert!(nodes.status.success());
    assert!(listed.contains(&lab.machines[1].name), "{listed}");

    // A drill of a backup of this cluster: the drill lab gets the control plane installed on the
    // restored state (the tarballs are on the mirror now) and the Kubernetes checks run and pass.
    let identity = dir.path().join("identity.txt");
    let recipient = support::age_keygen(&identity);
    let target = format!("file://{}", dir.path().join("backups").display());
    capstan_ok(
        &inventory_path,
        &["backup", "create", "--target", &target, "-r", &recipient],
    );
    let report = dir.path().join("drill");
    let drill = support::drill(&target, &identity, &report, &[]);
    assert_eq!(drill.code, 0, "{}\n{}", drill.stdout, drill.stderr);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("drill.json")).unwrap()).unwrap();
    for name in ["API ready", "expected namespaces", "objects readable"] {
        let check = json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == format!("kubernetes: {name}"))
            .unwrap_or_else(|| panic!("no check {name}: {json:#}"));
        assert_eq!(
            (check["ok"].as_bool(), check["skipped"].as_bool()),
            (Some(true), Some(false)),
            "{check}"
        );
    }
    eprintln!("kubernetes e2e: {:.0}s", started.elapsed().as_secs_f64());
}

/// The previous pinned minor: an upgrade from it to [`VERSION`] is one minor.
const OLDER: &str = "1.31.0";
const NEXT: &str = VERSION;

/// The tarballs of `version` are in the mirror.
fn in_mirror(version: &str) -> bool {
    let sums = std::fs::read_to_string(Path::new(MIRROR).join("SHA256SUMS")).unwrap_or_default();
    sums.contains(&format!("v{version}/kubernetes-server-linux-amd64.tar.gz"))
        && sums.contains(&format!("v{version}/kubernetes-node-linux-amd64.tar.gz"))
}

/// [`OLDER`] → [`VERSION`] through `capstan apply` (only with both releases' tarballs under
/// `CAPSTAN_KUBE_ARTIFACTS`): the plan shows the order, the apply takes a backup, upgrades and
/// leaves every node Ready and schedulable at the new version; going back a minor is refused
/// before anything changes.
#[test]
fn real_release_upgrades_one_minor() {
    let mut needs = prerequisites();
    needs.push(support::tool("age-keygen", "age"));
    let artifacts = kube_artifacts();
    needs.push(artifacts.as_ref().map(|_| ()).map_err(Clone::clone));
    if let Ok(dir) = &artifacts {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/mirror/add-kube-artifacts.sh");
        let added = Command::new("bash")
            .arg(&script)
            .arg(MIRROR)
            .env("CAPSTAN_KUBE_ARTIFACTS", dir)
            .output()
            .unwrap();
        assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
        if !in_mirror(OLDER) {
            needs.push(Err(format!(
                "CAPSTAN_KUBE_ARTIFACTS holds no kubernetes-server/node-linux-amd64.tar.gz of {OLDER} (the version upgraded from)"
            )));
        }
    }
    if !require(&needs) {
        return;
    }
    let guard = LabGuard::up(UpOptions::new("kube-upg", 2)).expect("lab up");
    let lab = guard.lab();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let inventory_path = dir.join("inventory.yaml");
    let started = Instant::now();
    let identity = dir.join("identity.txt");
    let recipient = support::age_keygen(&identity);
    let backups = dir.join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let with_backup = |version: &str| {
        inventory(lab).replace(&format!("version: \"{VERSION}\""), &format!("version: \"{version}\""))
            + &format!(
                "backup:\n  target: \"file://{}\"\n  recipients: [{recipient}]\n",
                backups.display()
            )
    };
    let inventory_path = inventory_path.as_path();
    std::fs::write(inventory_path, with_backup(OLDER)).unwrap();
    capstan_ok(inventory_path, &["apply"]);
    eprintln!("{OLDER} applied in {:.0}s", started.elapsed().as_secs_f64());
    std::fs::write(inventory_path, with_backup(NEXT)).unwrap();
    let plan = json(&capstan_ok(
        inventory_path,
        &["plan", "--only", "kubernetes", "--output", "json"],
    ));
    let phases = phase_names(&plan);
    assert_eq!(phases, ["upgrade", "control plane", "node agents", "cluster addons"]);
    let (cp, node) = (lab.machines[0].name.as_str(), lab.machines[1].name.as_str());
    let steps: Vec<String> = plan["summary"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| {
            h["ops"].as_array().unwrap().iter().filter_map(move |op| {
                let name = op["op"].as_str().unwrap();
                name.starts_with("upgrade ")
                    .then(|| format!("{} {name}", h["host"].as_str().unwrap()))
            })
        })
        .collect();
    assert_eq!(
        steps,
        [
            format!("{cp} upgrade backup"),
            format!("{cp} upgrade kube-apiserver"),
            format!("{cp} upgrade control plane"),
            format!("{node} upgrade node"),
        ]
    );
    capstan_ok(inventory_path, &["apply"]);
    let sums = std::fs::read_dir(&backups).unwrap().count();
    assert!(sums > 0, "the upgrade took a backup into {}", backups.display());
    let versions = remote(
        lab,
        cp,
        "kubectl --kubeconfig /etc/kubernetes/super-admin.conf get nodes \
         -o jsonpath='{range .items[*]}{.metadata.name} {.status.nodeInfo.kubeletVersion} {.status.conditions[?(@.type==\"Ready\")].status} {.spec.unschedulable}{\"\\n\"}{end}'",
    );
    assert_eq!(versions.lines().count(), 1, "one node (machine 2): {versions}");
    for line in versions.lines() {
        assert!(
            line.contains(&format!(" v{NEXT} True")) && !line.ends_with("true"),
            "{versions}"
        );
    }
    assert_eq!(
        remote(lab, cp, "/usr/local/bin/kube-apiserver --version"),
        format!("Kubernetes v{NEXT}")
    );

    // Back a minor: refused at inspection, nothing changed.
    std::fs::write(inventory_path, with_backup(OLDER)).unwrap();
    let refused = run_capstan(Some(inventory_path), &["apply", "--only", "kubernetes"], &[]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("minor-version downgrade"), "{}", refused.stderr);
    assert_eq!(
        remote(lab, cp, "/usr/local/bin/kube-apiserver --version"),
        format!("Kubernetes v{NEXT}")
    );
    eprintln!(
        "install {OLDER} and upgrade to {NEXT}: {:.0}s",
        started.elapsed().as_secs_f64()
    );
}
