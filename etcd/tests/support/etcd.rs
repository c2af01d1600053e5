//! Test support: real etcd clusters as local processes on 127.0.0.1. Shared by the etcd crate's
//! and the backup crate's tests (`#[path]` includes this file).
//!
//! Each member gets its own ports, a server and a peer certificate from capstan's PKI, and a
//! config file rendered from capstan's template, so a passing test means the PKI, the template
//! and the client all work against a real etcd. Everything lives in a temporary directory and the
//! processes are killed when the [`LocalCluster`] is dropped.
//!
//! Binaries: `$CAPSTAN_ETCD_BIN_DIR/etcd`, `/usr/bin/etcd` (Debian's etcd-server),
//! `/usr/local/bin/etcd`, and `/opt/etcd-*/etcd`.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capstan_etcd::client::{EtcdClient, EtcdEndpoint, EtcdTls};
use capstan_etcd::config::{
    render_member_config, ClusterMember, InitialClusterState, MemberConfig, MemberSettings, PkiPaths,
};
use capstan_etcd::pki::{generate_ca, ADMIN_CLIENT_CN};
use capstan_provisioner::pki::{CertKind, CertRequest, CertificateAuthority};

pub type HarnessResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct EtcdBinary {
    pub path: PathBuf,
    /// e.g. `3.5.1`
    pub version: String,
}

fn candidate_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(dir) = std::env::var_os("CAPSTAN_ETCD_BIN_DIR") {
        paths.push(Path::new(&dir).join("etcd"));
    }
    paths.push(PathBuf::from("/usr/bin/etcd"));
    paths.push(PathBuf::from("/usr/local/bin/etcd"));
    if let Ok(entries) = fs::read_dir("/opt") {
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("etcd"))
            })
            .collect();
        dirs.sort();
        paths.extend(dirs.into_iter().map(|d| d.join("etcd")));
    }
    paths
}

fn binary_version(path: &Path) -> Option<String> {
    let output = Command::new(path).arg("--version").output().ok()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("etcd Version: "))
        .map(|v| v.trim().to_string())
}

/// Every etcd binary found, first occurrence of each version.
pub fn etcd_binaries() -> Vec<EtcdBinary> {
    let mut found: Vec<EtcdBinary> = Vec::new();
    for path in candidate_paths() {
        if !path.is_file() {
            continue;
        }
        if let Some(version) = binary_version(&path) {
            if !found.iter().any(|b| b.version == version) {
                found.push(EtcdBinary { path, version });
            }
        }
    }
    found
}

/// The first etcd binary whose version starts with `minor` (e.g. `"3.5."`), or `None` after
/// printing why the calling test is skipped.
pub fn etcd_binary(minor: &str) -> Option<EtcdBinary> {
    let binaries = etcd_binaries();
    let found = binaries.iter().find(|b| b.version.starts_with(minor)).cloned();
    if found.is_none() {
        let seen: Vec<String> = binaries
            .iter()
            .map(|b| format!("{} ({})", b.version, b.path.display()))
            .collect();
        eprintln!(
            "SKIPPED: no etcd {minor}x binary. Set CAPSTAN_ETCD_BIN_DIR to a directory containing `etcd`, \
             or install it as /usr/bin/etcd, /usr/local/bin/etcd or /opt/etcd-<version>/etcd. Found: [{}]",
            seen.join(", ")
        );
    }
    found
}

/// Reserve `count` distinct free TCP ports on 127.0.0.1. They are released before etcd binds
/// them, so another process could in principle grab one; startup then fails loudly.
fn free_ports(count: usize) -> HarnessResult<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> HarnessResult<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

pub struct LocalMember {
    pub spec: ClusterMember,
    pub metrics_port: u16,
    pub dir: PathBuf,
    pub config_yaml: String,
    child: Option<Child>,
}

impl LocalMember {
    pub fn endpoint(&self) -> EtcdEndpoint {
        EtcdEndpoint::parse(&self.spec.client_url()).expect("harness builds valid URLs")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The member's process id while it runs.
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct LocalCluster {
    pub binary: EtcdBinary,
    pub ca: CertificateAuthority,
    pub admin_tls: EtcdTls,
    pub members: Vec<LocalMember>,
    pub token: String,
    /// Wall-clock time from spawning the processes to every member answering a linearizable read.
    pub startup: Duration,
    dir: tempfile::TempDir,
}

impl LocalCluster {
    /// Start `size` members named `m1..mN` and wait until every one is healthy.
    pub async fn start(binary: &EtcdBinary, size: usize) -> HarnessResult<LocalCluster> {
        let dir = tempfile::Builder::new().prefix("capstan-etcd-").tempdir()?;
        let ca = generate_ca("local-test")?;
        let admin = ca.issue(&CertRequest::client(ADMIN_CLIENT_CN))?;
        let admin_tls = EtcdTls {
            ca_cert_pem: ca.cert_pem().to_string(),
            client_cert_pem: admin.cert_pem,
            client_key_pem: admin.key_pem,
        };
        let ports = free_ports(size * 3)?;
        let specs: Vec<(ClusterMember, u16)> = (0..size)
            .map(|i| {
                let spec = ClusterMember {
                    client_port: ports[3 * i],
                    peer_port: ports[3 * i + 1],
                    ..ClusterMember::new(format!("m{}", i + 1), "127.0.0.1")
                };
                (spec, ports[3 * i + 2])
            })
            .collect();
        let all: Vec<ClusterMember> = specs.iter().map(|(spec, _)| spec.clone()).collect();
        let mut cluster = LocalCluster {
            binary: binary.clone(),
            ca,
            admin_tls,
            members: Vec::new(),
            token: format!("capstan-test-{}", std::process::id()),
            startup: Duration::ZERO,
            dir,
        };
        let started = Instant::now();
        for (spec, metrics_port) in specs {
            let member = cluster.spawn_member(spec, metrics_port, &all, InitialClusterState::New)?;
            cluster.members.push(member);
        }
        for index in 0..cluster.members.len() {
            cluster.wait_healthy(index).await?;
        }
        cluster.startup = started.elapsed();
        Ok(cluster)
    }

    fn spawn_member(
        &self,
        spec: ClusterMember,
        metrics_port: u16,
        all: &[ClusterMember],
        state: InitialClusterState,
    ) -> HarnessResult<LocalMember> {
        let member_dir = self.dir.path().join(&spec.name);
        let pki_dir = member_dir.join("pki");
        fs::create_dir_all(&pki_dir)?;
        let paths = PkiPaths::under(pki_dir.to_str().ok_or("temp dir path is not UTF-8")?);
        let addresses = [spec.address.as_str()];
        let server = self
            .ca
            .issue(&CertRequest::member(CertKind::Server, &spec.name, &addresses))?;
        let peer = self
            .ca
            .issue(&CertRequest::member(CertKind::Peer, &spec.name, &addresses))?;
        write_file(Path::new(&paths.ca_file), self.ca.cert_pem(), 0o644)?;
        write_file(Path::new(&paths.server_cert_file), &server.cert_pem, 0o644)?;
        write_file(Path::new(&paths.server_key_file), &server.key_pem, 0o600)?;
        write_file(Path::new(&paths.peer_cert_file), &peer.cert_pem, 0o644)?;
        write_file(Path::new(&paths.peer_key_file), &peer.key_pem, 0o600)?;

        let settings = MemberSettings {
            data_dir: member_dir
                .join("data")
                .to_str()
                .ok_or("temp dir path is not UTF-8")?
                .to_string(),
            pki: paths,
            metrics_port: Some(metrics_port),
            // Room for the ~100 MB databases of the backup interruption tests.
            quota_backend_bytes: 1024 * 1024 * 1024,
            ..MemberSettings::default()
        };
        let config = MemberConfig::new(&self.token, all, &spec.name, state, &settings)?;
        let config_yaml = render_member_config(&config)?;
        let config_file = member_dir.join("etcd.conf.yml");
        write_file(&config_file, &config_yaml, 0o644)?;

        let log = fs::File::create(member_dir.join("etcd.log"))?;
        let child = Command::new(&self.binary.path)
            .arg(format!("--config-file={}", config_file.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(LocalMember {
            spec,
            metrics_port,
            dir: member_dir,
            config_yaml,
            child: Some(child),
        })
    }

    pub fn endpoints(&self) -> Vec<EtcdEndpoint> {
        self.members.iter().map(LocalMember::endpoint).collect()
    }

    pub async fn client(&self) -> HarnessResult<EtcdClient> {
        Ok(EtcdClient::connect(&self.endpoints(), &self.admin_tls).await?)
    }

    pub fn member(&self, name: &str) -> Option<&LocalMember> {
        self.members.iter().find(|m| m.spec.name == name)
    }

    /// Poll member `index` until a linearizable read succeeds; on timeout or process exit, fail
    /// with the member's log.
    async fn wait_healthy(&mut self, index: usize) -> HarnessResult<()> {
        let client = EtcdClient::connect(&[self.members[index].endpoint()], &self.admin_tls).await?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let health = client.health(&self.members[index].endpoint()).await;
            if health.healthy {
                return Ok(());
            }
            let member = &mut self.members[index];
            if !member.is_running() || Instant::now() > deadline {
                return Err(format!(
                    "etcd {} member {} did not become healthy (last error: {:?}); log:\n{}",
                    self.binary.version,
                    member.spec.name,
                    health.error,
                    tail(&member.log(), 40)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `member add` a new member `name` through the running cluster, start it with
    /// `initial-cluster-state: existing`, and wait until it is healthy. Returns its member id.
    pub async fn add_member(&mut self, name: &str) -> HarnessResult<(u64, String)> {
        let ports = free_ports(3)?;
        let spec = ClusterMember {
            client_port: ports[0],
            peer_port: ports[1],
            ..ClusterMember::new(name, "127.0.0.1")
        };
        let added = self.client().await?.member_add(name, &[spec.peer_url()]).await?;
        let mut all: Vec<ClusterMember> = self.members.iter().map(|m| m.spec.clone()).collect();
        all.push(spec.clone());
        let member = self.spawn_member(spec, ports[2], &all, InitialClusterState::Existing)?;
        self.members.push(member);
        self.wait_healthy(self.members.len() - 1).await?;
        Ok((added.id, added.initial_cluster))
    }

    /// Kill member `name`'s process and forget it (after `member remove`).
    pub fn stop_member(&mut self, name: &str) {
        if let Some(index) = self.members.iter().position(|m| m.spec.name == name) {
            let mut member = self.members.remove(index);
            member.kill();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
