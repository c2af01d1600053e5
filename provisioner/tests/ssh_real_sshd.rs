//! The SSH transport, uploads, facts and checks against a real OpenSSH server
//! on 127.0.0.1 (see `support/sshd.rs`). Skips when sshd is not installed.

#[path = "support/sshd.rs"]
mod sshd;

use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_provisioner::check::{run_checks, CheckConfig, CheckStatus, CheckTarget, RequiredPort};
use capstan_provisioner::component::Component;
use capstan_provisioner::facts::{gather_host_facts, FactCache};
use capstan_provisioner::pool::Connections;
use capstan_provisioner::ssh::{KnownHostsPolicy, SshTransport};
use capstan_provisioner::transport::{ExecOptions, RemoteFile, Transport, TransportError};
use capstan_provisioner::upload::{upload_file, UploadOutcome};
use sha2::{Digest, Sha256};
use sshd::Sshd;
use tokio::io::AsyncRead;

macro_rules! sshd_or_skip {
    () => {
        match Sshd::start() {
            Some(sshd) => sshd,
            None => return,
        }
    };
}

fn opts(secs: u64) -> ExecOptions {
    ExecOptions {
        timeout: Duration::from_secs(secs),
        privileged: false,
    }
}

#[tokio::test]
async fn exec_returns_stdout_stderr_and_exit_code() {
    let sshd = sshd_or_skip!();
    let started = Instant::now();
    let t = SshTransport::connect(&sshd.target("local")).await.expect("connects");
    let connect_time = started.elapsed();
    let out = t.exec("echo out; echo err >&2; exit 7", &opts(10)).await.unwrap();
    assert_eq!(out.stdout_str(), "out\n");
    assert_eq!(out.stderr_str(), "err\n");
    assert_eq!(out.exit_code, Some(7));

    // `sh -c` semantics with quotes that need escaping.
    let out = t
        .exec("printf '%s|' \"a b\" 'it'\\''s' $((6*7))", &opts(10))
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "a b|it's|42|");
    assert!(out.success());

    let started = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        assert!(t.exec("true", &opts(10)).await.unwrap().success());
    }
    let round_trip = started.elapsed() / rounds;
    eprintln!("MEASURED connect={connect_time:?} exec_round_trip={round_trip:?}");
    t.close().await;
    let err = t.exec("true", &opts(10)).await.unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
}

#[tokio::test]
async fn timeout_closes_the_channel() {
    let sshd = sshd_or_skip!();
    let t = SshTransport::connect(&sshd.target("local")).await.unwrap();
    let started = Instant::now();
    let err = t
        .exec(
            "sleep 5",
            &ExecOptions {
                timeout: Duration::from_millis(300),
                privileged: false,
            },
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(err, TransportError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("sleep 5"), "{err}");
    // The channel was released: the connection stays usable for more than
    // MaxSessions further commands.
    for _ in 0..12 {
        assert!(t.exec("true", &opts(10)).await.unwrap().success());
    }
}

/// Produces `len` pseudo-random bytes without holding them.
struct Pattern {
    remaining: u64,
    state: u64,
}

impl AsyncRead for Pattern {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.remaining).min(64 * 1024) as usize;
        let mut chunk = vec![0u8; n];
        for byte in chunk.iter_mut() {
            self.state = self
                .state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *byte = (self.state >> 56) as u8;
        }
        self.remaining -= n as u64;
        buf.put_slice(&chunk);
        std::task::Poll::Ready(Ok(()))
    }
}

fn pattern_sha256(len: u64) -> String {
    let mut reader = Pattern {
        remaining: len,
        state: 1,
    };
    let mut hasher = Sha256::new();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    });
    hex::encode(hasher.finalize())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn stdin_streams_200_mib() {
    let sshd = sshd_or_skip!();
    const LEN: u64 = 200 << 20;
    let expected = tokio::task::spawn_blocking(|| pattern_sha256(LEN)).await.unwrap();
    let t = SshTransport::connect(&sshd.target("local")).await.unwrap();
    let rss_before = rss_kib();
    let started = Instant::now();
    let mut source = Pattern {
        remaining: LEN,
        state: 1,
    };
    let out = t
        .exec_with_stdin("sha256sum | cut -d' ' -f1; echo done >&2", &mut source, &opts(300))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let rss_growth_mib = rss_kib().saturating_sub(rss_before) / 1024;
    eprintln!("MEASURED stdin 200MiB in {elapsed:?}, rss growth {rss_growth_mib} MiB");
    assert!(out.success(), "{}", out.stderr_str());
    assert_eq!(out.stdout_str().trim(), expected);
    assert_eq!(out.stderr_str(), "done\n");
    assert!(
        rss_growth_mib < 100,
        "memory grew by {rss_growth_mib} MiB while streaming 200 MiB"
    );
}

#[tokio::test]
async fn remote_exiting_early_does_not_hang_stdin() {
    let sshd = sshd_or_skip!();
    let t = SshTransport::connect(&sshd.target("local")).await.unwrap();
    let mut source = Pattern {
        remaining: 50 << 20,
        state: 3,
    };
    let out = t.exec_with_stdin("exit 4", &mut source, &opts(30)).await.unwrap();
    assert_eq!(out.exit_code, Some(4));
}

#[tokio::test]
async fn twenty_concurrent_execs_share_one_connection() {
    let sshd = sshd_or_skip!();
    let t = Arc::new(SshTransport::connect(&sshd.target("local")).await.unwrap());
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let t = t.clone();
            tokio::spawn(async move { t.exec(&format!("sleep 0.3; echo {i}"), &opts(30)).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let out = task.await.unwrap().expect("exec succeeds despite MaxSessions 10");
        assert_eq!(out.stdout_str(), format!("{i}\n"));
    }
}

#[tokio::test]
async fn strict_refuses_unknown_host_key() {
    let sshd = sshd_or_skip!();
    let target = sshd.untrusted_target("local");
    let err = SshTransport::connect(&target).await.unwrap_err();
    let TransportError::HostKey { reason, .. } = &err else {
        panic!("expected a host key error, got {err:?}")
    };
    assert!(reason.contains("is not in") && reason.contains("SHA256:"), "{reason}");
    assert!(
        !target.known_hosts_file.exists(),
        "strict mode must not write known_hosts"
    );
    assert!(err.hint().is_some());
}

#[tokio::test]
async fn accept_new_records_then_refuses_changed_key() {
    let mut sshd = sshd_or_skip!();
    let mut target = sshd.untrusted_target("local");
    target.known_hosts = KnownHostsPolicy::AcceptNew;
    let t = SshTransport::connect(&target).await.expect("first contact is accepted");
    t.close().await;
    let recorded = std::fs::read_to_string(&target.known_hosts_file).unwrap();
    assert_eq!(recorded, sshd.known_hosts_line());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&target.known_hosts_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // Second contact with the same key: accepted, nothing appended.
    SshTransport::connect(&target).await.expect("known key").close().await;
    assert_eq!(std::fs::read_to_string(&target.known_hosts_file).unwrap(), recorded);

    sshd.restart_with_new_host_key();
    let err = SshTransport::connect(&target).await.unwrap_err();
    let TransportError::HostKey { reason, .. } = &err else {
        panic!("expected a host key error, got {err:?}")
    };
    let file_line = format!("{}:1", target.known_hosts_file.display());
    assert!(reason.contains("CHANGED") && reason.contains(&file_line), "{reason}");
    let new_key = std::fs::read_to_string(sshd.dir.path().join("host_key.pub")).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(sshd.dir.path().join("host_key.pub"))
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert!(
        reason.contains(&fingerprint),
        "{reason} should name {fingerprint} ({new_key})"
    );
    assert_eq!(
        std::fs::read_to_string(&target.known_hosts_file).unwrap(),
        recorded,
        "file untouched"
    );
}

#[tokio::test]
async fn wrong_key_is_an_auth_error() {
    let sshd = sshd_or_skip!();
    let mut target = sshd.target("local");
    let other = sshd.dir.path().join("other_key");
    sshd::keygen(&other);
    target.identity_file = Some(other);
    let err = SshTransport::connect(&target).await.unwrap_err();
    assert!(matches!(err, TransportError::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("rejected"), "{err}");
}

#[tokio::test]
async fn bastion_tunnels_to_target() {
    let sshd = sshd_or_skip!();
    let mut target = sshd.target("behind-bastion");
    target.bastion = Some(Box::new(sshd.target("bastion")));
    let t = SshTransport::connect(&target)
        .await
        .expect("connects through the bastion");
    let out = t.exec("echo via $SSH_CONNECTION", &opts(10)).await.unwrap();
    assert!(out.stdout_str().starts_with("via 127.0.0.1"), "{}", out.stdout_str());
    t.close().await;

    // Through the pool: two hosts share one bastion connection.
    let mut second = target.clone();
    second.name = "behind-bastion-2".into();
    let (connections, failures) = Connections::connect(&[target, second], 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    for (_, t) in connections.hosts() {
        assert!(t.exec("true", &opts(10)).await.unwrap().success());
    }
    connections.close_all().await;
}

#[tokio::test]
async fn upload_is_atomic_idempotent_and_fixes_mode() {
    let sshd = sshd_or_skip!();
    let t = SshTransport::connect(&sshd.target("local")).await.unwrap();
    let path = sshd.dir.path().join("sub dir/conf.txt");
    let content = b"hello 'world'\n".repeat(1000);
    let sha = hex::encode(Sha256::digest(&content));
    let dest = RemoteFile {
        path: path.display().to_string(),
        mode: 0o640,
        owner: None,
        group: None,
    };

    let outcome = upload_file(&t, &content[..], &sha, &dest).await.unwrap();
    assert_eq!(outcome, UploadOutcome::Written);
    assert_eq!(std::fs::read(&path).unwrap(), content);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640);
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temp files left behind: {leftovers:?}");

    assert_eq!(
        upload_file(&t, &content[..], &sha, &dest).await.unwrap(),
        UploadOutcome::Skipped
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    assert_eq!(
        upload_file(&t, &content[..], &sha, &dest).await.unwrap(),
        UploadOutcome::AttributesFixed
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&meta),
        inode,
        "mode fix must not rewrite the file"
    );

    // New content replaces the file by rename (new inode), never in place.
    let new_content = b"v2\n".to_vec();
    let new_sha = hex::encode(Sha256::digest(&new_content));
    assert_eq!(
        upload_file(&t, &new_content[..], &new_sha, &dest).await.unwrap(),
        UploadOutcome::Written
    );
    assert_eq!(std::fs::read(&path).unwrap(), new_content);
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()),
        inode
    );

    // Content that does not match the promised hash is rejected and leaves the file alone.
    let err = upload_file(&t, &b"tampered"[..], &sha, &dest).await.unwrap_err();
    assert!(err.to_string().contains("sha256"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), new_content);
    let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
    assert_eq!(leftovers, 1);
}

#[tokio::test]
async fn facts_from_localhost_are_sane() {
    let sshd = sshd_or_skip!();
    let t = SshTransport::connect(&sshd.target("local")).await.unwrap();
    let cache = FactCache::new();
    let started = Instant::now();
    let facts = gather_host_facts(&t, &cache).await.unwrap();
    let gather_time = started.elapsed();
    eprintln!("MEASURED facts gather {gather_time:?}: {facts:?}");
    let expected_arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(facts.arch, expected_arch);
    assert!(facts.cpus > 0 && facts.memory_bytes > 0);
    assert!(!facts.kernel.is_empty() && !facts.hostname.is_empty());
    assert!(
        facts.time_offset_secs.abs() < 1.0,
        "same machine, offset {}",
        facts.time_offset_secs
    );
    assert!(facts.free_disk_bytes.contains_key("/"));
    // Cached: the second read does not run a command (even with the connection closed).
    t.close().await;
    assert_eq!(gather_host_facts(&t, &cache).await.unwrap(), facts);
}

/// A stand-in for a component crate: the engine only sees the trait, the CLI lists the real ones.
struct TwoPorts;

impl Component for TwoPorts {
    fn name(&self) -> &'static str {
        "two-ports"
    }

    fn roles(&self) -> &'static [&'static str] {
        &["etcd"]
    }

    fn required_ports(&self) -> Vec<RequiredPort> {
        [(2379, "client"), (2380, "peer")]
            .map(|(port, purpose)| RequiredPort {
                role: "etcd",
                port,
                purpose,
                owner: "two-ports",
            })
            .to_vec()
    }
}

#[tokio::test]
async fn checks_report_unreachable_hosts_without_aborting() {
    let sshd = sshd_or_skip!();
    let reachable = sshd.target("up");
    let mut closed_port = sshd.target("down");
    // Nothing listens on a freshly released port.
    closed_port.port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut bad_key = sshd.untrusted_target("unknown-key");
    bad_key.name = "unknown-key".into();
    let targets = vec![
        CheckTarget {
            target: reachable,
            roles: vec!["etcd".into()],
        },
        CheckTarget {
            target: closed_port,
            roles: vec!["etcd".into()],
        },
        CheckTarget {
            target: bad_key,
            roles: vec![],
        },
    ];
    let reports = run_checks(&targets, &[&TwoPorts], &CheckConfig::default(), 8).await;
    assert_eq!(
        reports.iter().map(|r| r.host.as_str()).collect::<Vec<_>>(),
        ["up", "down", "unknown-key"]
    );

    let up = &reports[0];
    assert!(up.reachable && up.error.is_none(), "{up:?}");
    assert!(up.facts.is_some());
    let names: Vec<&str> = up.checks.iter().map(|c| c.name.as_str()).collect();
    for expected in ["init", "arch", "disk", "clock", "port 2379", "port 2380"] {
        assert!(names.contains(&expected), "missing check {expected} in {names:?}");
    }
    let arch = up.checks.iter().find(|c| c.name == "arch").unwrap();
    assert_eq!(arch.status, CheckStatus::Pass);

    let down = &reports[1];
    assert!(!down.reachable && !down.passed());
    let error = down.error.as_ref().unwrap();
    assert!(error.message.contains("cannot connect"), "{}", error.message);
    assert!(error.hint.as_deref().unwrap_or("").contains("sshd"));

    let unknown = &reports[2];
    assert!(!unknown.reachable);
    assert!(
        unknown.error.as_ref().unwrap().message.contains("host key"),
        "{unknown:?}"
    );
    assert!(unknown.error.as_ref().unwrap().hint.is_some());
    serde_json::to_string(&reports).unwrap();
}

/// A non-root login user with passwordless sudo: privileged commands run as root.
#[tokio::test]
async fn privileged_exec_uses_sudo_for_non_root_users() {
    let sshd = sshd_or_skip!();
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let have_tools = ["/usr/sbin/useradd", "/usr/sbin/userdel", "/usr/bin/sudo"]
        .iter()
        .all(|p| std::path::Path::new(p).exists());
    if !is_root || !have_tools {
        eprintln!("SKIP: needs root, useradd and sudo (apt-get install sudo) to create a throwaway sudo user");
        return;
    }
    let user = format!("capst{}", std::process::id() % 100000);
    let sudoers = format!("/etc/sudoers.d/{user}");
    let created = std::process::Command::new("useradd")
        .args(["-m", "-s", "/bin/sh", "-p", "*", &user])
        .status()
        .unwrap();
    assert!(created.success(), "useradd failed");
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.1);
            let _ = std::process::Command::new("userdel")
                .args(["-r", "-f", &self.0])
                .output();
        }
    }
    let _cleanup = Cleanup(user.clone(), sudoers.clone());
    std::fs::write(&sudoers, format!("{user} ALL=(ALL) NOPASSWD: ALL\n")).unwrap();

    let mut target = sshd.target("sudo-host");
    target.user = user.clone();
    let t = SshTransport::connect(&target).await.expect("non-root login");
    let unprivileged = t.exec("id -un", &opts(10)).await.unwrap();
    assert_eq!(unprivileged.stdout_str().trim(), user);
    let privileged = t
        .exec(
            "id -un; printf '%s' \"it's $((1+1))\"",
            &ExecOptions {
                timeout: Duration::from_secs(10),
                privileged: true,
            },
        )
        .await
        .unwrap();
    assert!(privileged.success(), "{}", privileged.stderr_str());
    assert_eq!(privileged.stdout_str(), "root\nit's 2");
    t.close().await;
}

#[tokio::test]
async fn rsa_and_ecdsa_keys_authenticate() {
    let sshd = sshd_or_skip!();
    for key_type in ["rsa", "ecdsa"] {
        let key = sshd.dir.path().join(format!("client_{key_type}"));
        sshd::keygen_type(&key, key_type);
        sshd::authorize(&sshd, &key.with_extension("pub"));
        let mut target = sshd.target(key_type);
        target.identity_file = Some(key);
        let t = SshTransport::connect(&target)
            .await
            .unwrap_or_else(|e| panic!("{key_type}: {e}"));
        assert!(t.exec("true", &opts(10)).await.unwrap().success());
        t.close().await;
    }
}

/// Runs a real ssh-agent holding the client key (killed on drop).
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn agent_authentication() {
    let sshd = sshd_or_skip!();
    let socket = sshd.dir.path().join("agent.sock");
    let Ok(child) = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        eprintln!("SKIP: ssh-agent not found (apt-get install openssh-client)");
        return;
    };
    let _agent = Agent(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let added = std::process::Command::new("ssh-add")
        .arg(&sshd.client_key)
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "ssh-add: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    // Only this test reads SSH_AUTH_SOCK.
    std::env::set_var("SSH_AUTH_SOCK", &socket);
    let mut target = sshd.target("agent");
    target.identity_file = None;
    target.agent = true;
    let t = SshTransport::connect(&target).await.expect("agent key accepted");
    assert!(t.exec("true", &opts(10)).await.unwrap().success());
    t.close().await;
}

/// A TCP peer that never speaks SSH: the connect timeout bounds the handshake too.
#[tokio::test]
async fn connect_timeout_covers_a_silent_server() {
    let sshd = sshd_or_skip!();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut target = sshd.target("silent");
    target.port = silent.local_addr().unwrap().port();
    target.connect_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = SshTransport::connect(&target).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(err, TransportError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
    drop(silent);
}

/// Over a real SSH connection, the probes of a host's list travel in one exec, and a run with
/// nothing to do costs exactly that one.
#[tokio::test]
async fn a_no_op_run_over_ssh_is_one_exec() {
    use capstan_provisioner::ops::{Absent, Directory, File, Service};
    use capstan_provisioner::runner::{HostOps, Mode, NoProgress, RunOptions, Runner};
    use capstan_provisioner::transport::CountingTransport;

    let sshd = sshd_or_skip!();
    let ssh: Arc<dyn Transport> = Arc::new(SshTransport::connect(&sshd.target("local")).await.unwrap());
    let counting = Arc::new(CountingTransport::new(ssh.clone()));
    let base = sshd.dir.path().join("probe batch");
    let path = |rel: &str| base.join(rel).display().to_string();
    let ops = || {
        let mut ops = HostOps::new(counting.clone()).with(Directory::new(&path("conf")).mode(0o750));
        for i in 0..8 {
            ops.push(File::new(&path(&format!("conf/file-{i}")), format!("it's file {i}\n")).mode(0o640));
        }
        ops.push(Absent::new(&path("conf/old")));
        ops.push(Service::new("capstan-test-no-such-unit").unwrap().enabled(false));
        ops
    };
    let runner = || {
        Runner::new(
            RunOptions {
                mode: Mode::Apply,
                concurrency: 1,
            },
            Arc::new(NoProgress),
        )
    };
    let first = runner().run(vec![ops()]).await;
    assert!(first.success(), "{first:#?}");
    assert_eq!(first.totals().changed, 9);
    counting.reset();
    let second = runner().run(vec![ops()]).await;
    assert!(second.success(), "{second:#?}");
    assert_eq!((second.totals().changed, second.totals().ok), (0, 11));
    assert_eq!(counting.execs(), 1, "{:#?}", counting.commands());
    ssh.close().await;
}
