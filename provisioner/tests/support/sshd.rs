//! A real OpenSSH server on 127.0.0.1 for tests: temp host key, temp
//! authorized_keys, killed on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capstan_provisioner::ssh::{KnownHostsPolicy, SshTarget, SudoMode};

#[path = "require.rs"]
mod require;

pub const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Private key accepted for `user`.
    pub client_key: PathBuf,
    pub user: String,
    child: Child,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn keygen(path: &Path) {
    keygen_type(path, "ed25519");
}

pub fn keygen_type(path: &Path, key_type: &str) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", key_type, "-N", "", "-C", "capstan-test", "-f"])
        .arg(path));
}

/// Lets `public_key_file` log in too.
pub fn authorize(sshd: &Sshd, public_key_file: &Path) {
    use std::io::Write;
    let key = std::fs::read(public_key_file).expect("public key");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(sshd.dir.path().join("authorized_keys"))
        .expect("authorized_keys");
    file.write_all(&key).expect("append authorized key");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Whether a real sshd can run here; prints why not.
pub fn available() -> bool {
    require::require(&[
        require::file(SSHD, "sshd missing (apt-get install openssh-server)"),
        require::tool("ssh-keygen", "openssh-client"),
    ])
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Sshd {
    /// Starts sshd, or returns `None` (after printing why) when it cannot run.
    pub fn start() -> Option<Sshd> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // sshd's privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        keygen(&dir.path().join("host_key"));
        let client_key = dir.path().join("client_key");
        keygen(&client_key);
        std::fs::copy(dir.path().join("client_key.pub"), dir.path().join("authorized_keys")).expect("authorized_keys");
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\nAuthorizedKeysFile {dir}/authorized_keys\n\
             PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nMaxSessions 10\nMaxStartups 100\nLogLevel ERROR\n",
            dir = dir.path().display()
        );
        std::fs::write(dir.path().join("sshd_config"), config).expect("sshd_config");
        let child = spawn(dir.path(), port);
        let sshd = Sshd {
            dir,
            port,
            client_key,
            user: current_user(),
            child,
        };
        sshd.wait_ready();
        Some(sshd)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut probe) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                // Identify as a client so sshd does not log the probe as an error.
                use std::io::Write;
                let _ = probe.write_all(b"SSH-2.0-capstan-probe\r\n");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sshd did not listen on 127.0.0.1:{} within 10s", self.port);
    }

    /// Replaces the host key and restarts sshd on the same port.
    pub fn restart_with_new_host_key(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for name in ["host_key", "host_key.pub"] {
            let _ = std::fs::remove_file(self.dir.path().join(name));
        }
        keygen(&self.dir.path().join("host_key"));
        self.child = spawn(self.dir.path(), self.port);
        self.wait_ready();
    }

    pub fn known_hosts_file(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// `[127.0.0.1]:port <host key>` line, as `ssh-keyscan` would record it.
    pub fn known_hosts_line(&self) -> String {
        let public = std::fs::read_to_string(self.dir.path().join("host_key.pub")).expect("host key");
        let mut fields = public.split_whitespace();
        format!(
            "[127.0.0.1]:{} {} {}\n",
            self.port,
            fields.next().unwrap(),
            fields.next().unwrap()
        )
    }

    /// Trusts the current host key.
    pub fn trust_host_key(&self) {
        std::fs::write(self.known_hosts_file(), self.known_hosts_line()).expect("known_hosts");
    }

    /// A target for this server with the host key already trusted (strict).
    pub fn target(&self, name: &str) -> SshTarget {
        self.trust_host_key();
        self.target_with_file(name)
    }

    /// A target with its own, not yet existing known_hosts file.
    pub fn untrusted_target(&self, name: &str) -> SshTarget {
        SshTarget {
            known_hosts_file: self.dir.path().join(format!("known_hosts.{name}")),
            ..self.target_with_file(name)
        }
    }

    fn target_with_file(&self, name: &str) -> SshTarget {
        SshTarget {
            name: name.to_string(),
            address: "127.0.0.1".into(),
            port: self.port,
            user: self.user.clone(),
            identity_file: Some(self.client_key.clone()),
            agent: false,
            sudo: SudoMode::Auto,
            known_hosts: KnownHostsPolicy::Strict,
            known_hosts_file: self.known_hosts_file(),
            connect_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
            bastion: None,
        }
    }
}

fn spawn(dir: &Path, port: u16) -> Child {
    let _ = port;
    Command::new(SSHD)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(dir.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("sshd starts")
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
