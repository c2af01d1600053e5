//! SSH transport over russh: one connection per host, one channel per command.
//!
//! Nothing russh-specific leaves this module: callers see [`SshTarget`],
//! [`SshTransport`] and the [`Transport`] trait.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use russh::client::{self, Handle, Msg};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Disconnect};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;

use crate::known_hosts::{append_known_host, fingerprint, HostKeyStatus, KnownHosts};
use crate::transport::{ExecOptions, ExecOutput, Transport, TransportError};

/// OpenSSH's default `MaxSessions` is 10; stay below it so other tools (and
/// a bastion's forwarding) still have room.
pub const MAX_CHANNELS_PER_CONNECTION: usize = 8;

/// Bytes read from a local stdin source per chunk sent to the remote command.
const STDIN_CHUNK: usize = 32 * 1024;

/// Longest command text quoted in error messages (commands can be long scripts).
const COMMAND_IN_ERROR_MAX: usize = 160;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SudoMode {
    /// sudo when the login user is not root.
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KnownHostsPolicy {
    /// Refuse unknown and changed host keys.
    #[default]
    Strict,
    /// Record unknown host keys; refuse changed ones.
    AcceptNew,
}

/// How to reach one host. Plain data: the CLI builds it from the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// Inventory name, used in messages.
    pub name: String,
    /// IP or DNS name to connect to (also the known_hosts name).
    pub address: String,
    pub port: u16,
    pub user: String,
    pub identity_file: Option<PathBuf>,
    /// Use the ssh-agent at `SSH_AUTH_SOCK`.
    pub agent: bool,
    pub sudo: SudoMode,
    pub known_hosts: KnownHostsPolicy,
    pub known_hosts_file: PathBuf,
    /// Bounds TCP connect, key exchange and authentication together.
    pub connect_timeout: Duration,
    /// Interval between keepalives; zero disables them.
    pub keepalive: Duration,
    pub bastion: Option<Box<SshTarget>>,
}

impl SshTarget {
    /// A target with the inventory defaults: port 22, root, strict host keys
    /// in `~/.ssh/known_hosts`, 10s connect timeout, 15s keepalive.
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> SshTarget {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        SshTarget {
            name: name.into(),
            address: address.into(),
            port: 22,
            user: "root".into(),
            identity_file: None,
            agent: false,
            sudo: SudoMode::Auto,
            known_hosts: KnownHostsPolicy::Strict,
            known_hosts_file: home.join(".ssh/known_hosts"),
            connect_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
            bastion: None,
        }
    }

    fn endpoint(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    /// Identifies a bastion so several hosts can share one connection to it.
    pub(crate) fn connection_key(&self) -> String {
        format!("{}@{}", self.user, self.endpoint())
    }
}

/// Quotes `s` as one word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:=@%+,".contains(&b));
    if safe {
        return s.to_string();
    }
    let mut quoted = String::with_capacity(s.len() + 2);
    quoted.push('\'');
    for c in s.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// The command line sent over SSH: always through `sh -c` (the login shell
/// may not be POSIX), under `sudo -n` when privileges are needed and the
/// login user lacks them.
pub fn wrap_command(command: &str, privileged: bool, user: &str, sudo: SudoMode) -> String {
    let use_sudo = privileged
        && match sudo {
            SudoMode::Auto => user != "root",
            SudoMode::Always => true,
            SudoMode::Never => false,
        };
    if use_sudo {
        format!("sudo -n -- sh -c {}", shell_quote(command))
    } else {
        format!("sh -c {}", shell_quote(command))
    }
}

fn shorten(command: &str) -> String {
    let one_line = command.replace('\n', "; ");
    if one_line.chars().count() <= COMMAND_IN_ERROR_MAX {
        one_line
    } else {
        let cut: String = one_line.chars().take(COMMAND_IN_ERROR_MAX).collect();
        format!("{cut}…")
    }
}

/// Verifies the server key against the known_hosts file. Any refusal is
/// stored in `refusal` because russh only reports "unknown key".
struct HostKeyVerifier {
    host: String,
    address: String,
    port: u16,
    policy: KnownHostsPolicy,
    file: PathBuf,
    refusal: Arc<Mutex<Option<String>>>,
}

impl HostKeyVerifier {
    fn verify(&self, key: &PublicKey) -> Result<(), String> {
        let known = KnownHosts::load(&self.file).map_err(|e| e.to_string())?;
        let name = crate::known_hosts::host_token(&self.address, self.port);
        match known.check(&self.address, self.port, key) {
            HostKeyStatus::Known => Ok(()),
            HostKeyStatus::Unknown => match self.policy {
                KnownHostsPolicy::Strict => Err(format!(
                    "{name} is not in {} (offered {} key {}); add it (e.g. ssh-keyscan -p {} {} >> {}) \
                     or use known_hosts: accept-new for first contact",
                    self.file.display(),
                    key.algorithm(),
                    fingerprint(key),
                    self.port,
                    self.address,
                    self.file.display()
                )),
                KnownHostsPolicy::AcceptNew => {
                    append_known_host(&self.file, &self.address, self.port, key)
                        .map_err(|e| format!("cannot record new host key in {}: {e}", self.file.display()))?;
                    tracing::info!(
                        host = %self.host,
                        "recorded new host key {} {} in {}",
                        key.algorithm(),
                        fingerprint(key),
                        self.file.display()
                    );
                    Ok(())
                }
            },
            HostKeyStatus::Changed { line, old_algorithm } => Err(format!(
                "HOST KEY CHANGED for {name}: {}:{line} has a different {old_algorithm} key; \
                 the host now offers {} key {}. This may be a man-in-the-middle attack",
                self.file.display(),
                key.algorithm(),
                fingerprint(key)
            )),
            HostKeyStatus::Revoked { line } => Err(format!(
                "the {} key {} offered by {name} is marked @revoked in {}:{line}",
                key.algorithm(),
                fingerprint(key),
                self.file.display()
            )),
        }
    }
}

impl client::Handler for HostKeyVerifier {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        match self.verify(&server_key.public_key()) {
            Ok(()) => Ok(true),
            Err(reason) => {
                if let Ok(mut slot) = self.refusal.lock() {
                    *slot = Some(reason);
                }
                Ok(false)
            }
        }
    }
}

/// A live SSH connection to one host.
pub struct SshTransport {
    name: String,
    user: String,
    sudo: SudoMode,
    handle: Handle<HostKeyVerifier>,
    channels: Semaphore,
    closed: AtomicBool,
    /// Kept alive while this connection tunnels through it.
    bastion: Option<Arc<SshTransport>>,
}

impl std::fmt::Debug for SshTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTransport")
            .field("name", &self.name)
            .field("user", &self.user)
            .finish()
    }
}

impl SshTransport {
    /// Connects and authenticates, through the target's bastion if it has one.
    pub async fn connect(target: &SshTarget) -> Result<SshTransport, TransportError> {
        let bastion = match &target.bastion {
            Some(bastion) => Some(Arc::new(Box::pin(SshTransport::connect(bastion)).await?)),
            None => None,
        };
        SshTransport::connect_via(target, bastion).await
    }

    /// Connects through an already open bastion connection (`target.bastion`
    /// is ignored), so many hosts can share one bastion connection.
    pub async fn connect_via(
        target: &SshTarget,
        bastion: Option<Arc<SshTransport>>,
    ) -> Result<SshTransport, TransportError> {
        let connect = connect_and_authenticate(target, bastion.as_deref());
        let handle = match tokio::time::timeout(target.connect_timeout, connect).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(TransportError::Connect {
                    host: target.name.clone(),
                    addr: target.endpoint(),
                    reason: format!(
                        "timed out after {}s (connect, key exchange and authentication)",
                        target.connect_timeout.as_secs_f64()
                    ),
                })
            }
        };
        Ok(SshTransport {
            name: target.name.clone(),
            user: target.user.clone(),
            sudo: target.sudo,
            handle,
            channels: Semaphore::new(MAX_CHANNELS_PER_CONNECTION),
            closed: AtomicBool::new(false),
            bastion,
        })
    }

    /// The login user.
    pub fn user(&self) -> &str {
        &self.user
    }

    fn other(&self, reason: impl Into<String>) -> TransportError {
        TransportError::Other {
            host: self.name.clone(),
            reason: reason.into(),
        }
    }

    async fn open_channel(&self) -> Result<russh::Channel<Msg>, TransportError> {
        if self.closed.load(Ordering::SeqCst) || self.handle.is_closed() {
            return Err(self.other("the SSH connection is closed"));
        }
        self.handle
            .channel_open_session()
            .await
            .map_err(|e| self.other(format!("cannot open an SSH channel: {e}")))
    }

    async fn run(
        &self,
        command: &str,
        stdin: Option<&mut (dyn AsyncRead + Send + Unpin)>,
        opts: &ExecOptions,
    ) -> Result<ExecOutput, TransportError> {
        let wrapped = wrap_command(command, opts.privileged, &self.user, self.sudo);
        // One line per round trip: `CAPSTAN_LOG=capstan_provisioner::ssh=debug` counts them.
        tracing::debug!(host = %self.name, "exec {}", shorten(command));
        let _permit = self
            .channels
            .acquire()
            .await
            .map_err(|_| self.other("the SSH connection is closed"))?;
        let channel = self.open_channel().await?;
        let (mut reader, writer) = channel.split();
        let outcome = tokio::time::timeout(opts.timeout, self.exchange(&wrapped, stdin, &mut reader, &writer)).await;
        if outcome.is_err() {
            // Best effort: sshd delivers this to the command's shell; closing
            // the channel alone leaves a command that never writes running.
            let _ = writer.signal(russh::Sig::TERM).await;
        }
        // Always close: a finished channel is closed by the server already.
        let _ = writer.close().await;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout {
                host: self.name.clone(),
                secs: opts.timeout.as_secs(),
                command: shorten(command),
            }),
        }
    }

    async fn exchange(
        &self,
        wrapped: &str,
        stdin: Option<&mut (dyn AsyncRead + Send + Unpin)>,
        reader: &mut ChannelReadHalf,
        writer: &ChannelWriteHalf<Msg>,
    ) -> Result<ExecOutput, TransportError> {
        writer
            .exec(true, wrapped)
            .await
            .map_err(|e| self.other(format!("cannot start command: {e}")))?;
        let send = async {
            if let Some(stdin) = stdin {
                let mut buf = vec![0u8; STDIN_CHUNK];
                loop {
                    let n = stdin.read(&mut buf).await.map_err(|e| LocalInputError(e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    // A send failure means the remote side closed; the receiver reports why.
                    if writer.data_bytes(buf[..n].to_vec()).await.is_err() {
                        return Ok(());
                    }
                }
            }
            let _ = writer.eof().await;
            Ok::<(), LocalInputError>(())
        };
        let receive = collect_output(reader);
        tokio::pin!(send, receive);
        let mut sending = true;
        loop {
            tokio::select! {
                sent = &mut send, if sending => {
                    sending = false;
                    if let Err(LocalInputError(reason)) = sent {
                        return Err(self.other(format!("reading the input for the remote command failed: {reason}")));
                    }
                }
                received = &mut receive => {
                    return received.map_err(|reason| self.other(reason));
                }
            }
        }
    }
}

struct LocalInputError(String);

async fn collect_output(reader: &mut ChannelReadHalf) -> Result<ExecOutput, String> {
    let mut output = ExecOutput::default();
    while let Some(message) = reader.wait().await {
        match message {
            ChannelMsg::Data { data } => output.stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, ext: 1 } => output.stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => output.exit_code = Some(exit_status),
            ChannelMsg::Failure => return Err("the server refused to run the command".into()),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    Ok(output)
}

#[async_trait]
impl Transport for SshTransport {
    fn host(&self) -> &str {
        &self.name
    }

    async fn exec(&self, command: &str, opts: &ExecOptions) -> Result<ExecOutput, TransportError> {
        self.run(command, None, opts).await
    }

    async fn exec_with_stdin(
        &self,
        command: &str,
        stdin: &mut (dyn AsyncRead + Send + Unpin),
        opts: &ExecOptions,
    ) -> Result<ExecOutput, TransportError> {
        self.run(command, Some(stdin), opts).await
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.channels.close();
        let _ = self.handle.disconnect(Disconnect::ByApplication, "", "en").await;
        if let Some(bastion) = &self.bastion {
            // Shared bastions are closed by whoever owns them (see `pool`).
            if Arc::strong_count(bastion) == 1 {
                bastion.close().await;
            }
        }
    }
}

fn client_config(target: &SshTarget, known_algorithms: Vec<russh::keys::Algorithm>) -> client::Config {
    let mut preferred = russh::Preferred::default();
    if !known_algorithms.is_empty() {
        // Ask for the key types we already know first, as OpenSSH does, so a
        // host with several host keys is not mistaken for a changed one.
        let mut order = known_algorithms;
        for algorithm in preferred.key.iter() {
            if !order.contains(algorithm) {
                order.push(algorithm.clone());
            }
        }
        preferred.key = order.into();
    }
    // AES-GCM first: with AES-NI (every x86-64 and arm64 server of the last decade) it is the
    // cheapest cipher on both ends, which is what bulk uploads (binaries, snapshots) pay for.
    preferred.cipher = std::borrow::Cow::Borrowed(&[
        russh::cipher::AES_256_GCM,
        russh::cipher::CHACHA20_POLY1305,
        russh::cipher::AES_256_CTR,
        russh::cipher::AES_192_CTR,
        russh::cipher::AES_128_CTR,
    ]);
    client::Config {
        keepalive_interval: (!target.keepalive.is_zero()).then_some(target.keepalive),
        keepalive_max: 3,
        nodelay: true,
        preferred,
        ..Default::default()
    }
}

async fn connect_and_authenticate(
    target: &SshTarget,
    bastion: Option<&SshTransport>,
) -> Result<Handle<HostKeyVerifier>, TransportError> {
    let connect_error = |reason: String| TransportError::Connect {
        host: target.name.clone(),
        addr: target.endpoint(),
        reason,
    };
    let known = KnownHosts::load(&target.known_hosts_file).map_err(|e| TransportError::HostKey {
        host: target.name.clone(),
        reason: e.to_string(),
    })?;
    let config = Arc::new(client_config(
        target,
        known.algorithms_for(&target.address, target.port),
    ));
    let refusal = Arc::new(Mutex::new(None));
    let verifier = HostKeyVerifier {
        host: target.name.clone(),
        address: target.address.clone(),
        port: target.port,
        policy: target.known_hosts,
        file: target.known_hosts_file.clone(),
        refusal: refusal.clone(),
    };
    let connected = match bastion {
        Some(bastion) => {
            let tunnel = bastion
                .handle
                .channel_open_direct_tcpip(target.address.clone(), u32::from(target.port), "127.0.0.1", 0)
                .await
                .map_err(|e| connect_error(format!("bastion {} cannot open a tunnel: {e}", bastion.name)))?;
            client::connect_stream(config, tunnel.into_stream(), verifier).await
        }
        None => {
            let socket = tokio::net::TcpStream::connect((target.address.as_str(), target.port))
                .await
                .map_err(|e| connect_error(e.to_string()))?;
            let _ = socket.set_nodelay(true);
            client::connect_stream(config, socket, verifier).await
        }
    };
    let mut handle = match connected {
        Ok(handle) => handle,
        Err(e) => {
            let refused = refusal.lock().ok().and_then(|mut slot| slot.take());
            return Err(match refused {
                Some(reason) => TransportError::HostKey {
                    host: target.name.clone(),
                    reason,
                },
                None => connect_error(format!("SSH handshake failed: {e}")),
            });
        }
    };
    authenticate(&mut handle, target).await?;
    Ok(handle)
}

async fn authenticate(handle: &mut Handle<HostKeyVerifier>, target: &SshTarget) -> Result<(), TransportError> {
    let auth_error = |reason: String| TransportError::Auth {
        host: target.name.clone(),
        user: target.user.clone(),
        reason,
    };
    if target.identity_file.is_none() && !target.agent {
        return Err(auth_error("no identity_file is set and ssh-agent use is off".into()));
    }
    let rsa_hash = handle.best_supported_rsa_hash().await.ok().flatten().flatten();
    let mut tried = Vec::new();
    if let Some(path) = &target.identity_file {
        let key = load_private_key(path).map_err(auth_error)?;
        let fp = fingerprint(key.public_key());
        let hash = if key.algorithm().is_rsa() { rsa_hash } else { None };
        let result = handle
            .authenticate_publickey(target.user.clone(), PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .map_err(|e| auth_error(format!("public key authentication failed: {e}")))?;
        if result.success() {
            return Ok(());
        }
        tried.push(format!("key {} ({fp})", path.display()));
    }
    if target.agent {
        let mut agent = AgentClient::connect_env()
            .await
            .map_err(|e| auth_error(format!("cannot reach ssh-agent via SSH_AUTH_SOCK: {e}")))?;
        let identities = agent
            .request_identities()
            .await
            .map_err(|e| auth_error(format!("cannot list ssh-agent keys: {e}")))?;
        for identity in identities {
            let AgentIdentity::PublicKey { key, .. } = identity else {
                continue;
            };
            let fp = fingerprint(&key);
            let hash = if key.algorithm().is_rsa() { rsa_hash } else { None };
            match handle
                .authenticate_publickey_with(target.user.clone(), key, hash, &mut agent)
                .await
            {
                Ok(result) if result.success() => return Ok(()),
                Ok(_) => tried.push(format!("agent key {fp}")),
                Err(e) => tried.push(format!("agent key {fp} (signing failed: {e})")),
            }
        }
        if tried.is_empty() {
            return Err(auth_error("ssh-agent holds no keys".into()));
        }
    }
    Err(auth_error(format!("the server rejected {}", tried.join(", "))))
}

/// Reads an unencrypted OpenSSH/PEM private key, refusing files others can
/// read (as OpenSSH does) and passphrase-protected ones with a way out.
fn load_private_key(path: &Path) -> Result<russh::keys::PrivateKey, String> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read identity file {}: {e}", path.display()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "identity file {} has permissions {mode:04o}, which let other users read it; run chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read identity file {}: {e}", path.display()))?;
    russh::keys::decode_secret_key(&text, None).map_err(|e| match e {
        russh::keys::Error::KeyIsEncrypted => format!(
            "identity file {} is passphrase-protected and capstan does not prompt for passphrases; \
             load it into ssh-agent (ssh-add {}) and set ssh.agent: true",
            path.display(),
            path.display()
        ),
        other => format!("identity file {} is not a usable private key: {other}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_safe_words_alone() {
        for word in ["ls", "/var/lib/app", "a=b", "k8s-1.30_x", "user@host:22", "50%"] {
            assert_eq!(shell_quote(word), word);
        }
    }

    #[test]
    fn shell_quote_wraps_everything_else() {
        let cases = [
            ("", "''"),
            ("a b", "'a b'"),
            ("it's", "'it'\\''s'"),
            ("$(rm -rf /)", "'$(rm -rf /)'"),
            ("a\nb", "'a\nb'"),
            ("'", "''\\'''"),
            ("\"x\" `y` \\z", "'\"x\" `y` \\z'"),
        ];
        for (input, expected) in cases {
            assert_eq!(shell_quote(input), expected, "input {input:?}");
        }
    }

    /// Round trip through a real /bin/sh: the quoted word must come back byte for byte.
    #[test]
    fn shell_quote_round_trips_through_sh() {
        let inputs = [
            "",
            "plain",
            "two words",
            "it's",
            "'''",
            "$HOME `id` $(id) \\ \" ; | & > < * ? ~ # !",
            "tab\there\nnewline",
            "ünïcødé",
        ];
        for input in inputs {
            let script = format!("printf %s {}", shell_quote(input));
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), input, "script {script}");
        }
    }

    #[test]
    fn wrap_command_uses_sudo_only_when_needed() {
        assert_eq!(wrap_command("id -u", true, "root", SudoMode::Auto), "sh -c 'id -u'");
        assert_eq!(
            wrap_command("id -u", true, "admin", SudoMode::Auto),
            "sudo -n -- sh -c 'id -u'"
        );
        assert_eq!(wrap_command("id -u", false, "admin", SudoMode::Auto), "sh -c 'id -u'");
        assert_eq!(wrap_command("id -u", true, "admin", SudoMode::Never), "sh -c 'id -u'");
        assert_eq!(
            wrap_command("id -u", true, "root", SudoMode::Always),
            "sudo -n -- sh -c 'id -u'"
        );
    }

    #[test]
    fn wrapped_command_runs_nested_quotes_through_sh() {
        let command = "printf '%s|' \"a b\" 'c'\\''d'";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(wrap_command(command, false, "root", SudoMode::Auto))
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b|c'd|");
    }

    #[test]
    fn long_commands_are_shortened_in_errors() {
        let long = "x".repeat(500);
        assert_eq!(shorten(&long).chars().count(), COMMAND_IN_ERROR_MAX + 1);
        assert_eq!(shorten("a\nb"), "a; b");
    }

    #[test]
    fn encrypted_and_world_readable_keys_are_refused_clearly() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "secret", "-f"])
            .arg(&path)
            .status();
        let Ok(status) = status else {
            eprintln!("skipping: ssh-keygen not found (apt-get install openssh-client)");
            return;
        };
        assert!(status.success());
        let err = load_private_key(&path).unwrap_err();
        assert!(err.contains("passphrase-protected") && err.contains("ssh-add"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_private_key(&path).unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
