//! OpenSSH `known_hosts` files: lookup (plain and hashed `|1|` entries,
//! `[host]:port` names, wildcards, negation, `@revoked`) and appending new keys.
//!
//! We parse the file ourselves rather than using russh's helper because a
//! refusal must name the file and line of the old key.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::{HashAlg, PublicKey};
use sha1::Sha1;

/// The name a host is recorded under: `host` for port 22, `[host]:port` otherwise.
pub fn host_token(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// `SHA256:<base64 without padding>`, as `ssh-keygen -l` prints it.
pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `|1|salt|hash`: HMAC-SHA1 of the host token keyed by the salt.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    /// Comma-separated patterns; `!` negates, `*` and `?` are wildcards.
    List(Vec<String>),
}

impl HostPattern {
    fn parse(field: &str) -> Option<HostPattern> {
        if let Some(rest) = field.strip_prefix("|1|") {
            let (salt, hash) = rest.split_once('|')?;
            let salt = BASE64.decode(salt.as_bytes()).ok()?;
            let hash = BASE64.decode(hash.as_bytes()).ok()?;
            return Some(HostPattern::Hashed { salt, hash });
        }
        Some(HostPattern::List(
            field.split(',').map(|p| p.to_ascii_lowercase()).collect(),
        ))
    }

    fn matches(&self, token: &str) -> bool {
        match self {
            HostPattern::Hashed { salt, hash } => {
                let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(token.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            HostPattern::List(patterns) => {
                let mut matched = false;
                for pattern in patterns {
                    if let Some(negated) = pattern.strip_prefix('!') {
                        if wildcard_match(negated, token) {
                            return false;
                        }
                    } else if wildcard_match(pattern, token) {
                        matched = true;
                    }
                }
                matched
            }
        }
    }
}

/// Glob match with `*` (any run) and `?` (one character), as OpenSSH's `match_pattern`.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((star, consumed)) = backtrack {
            pi = star + 1;
            ti = consumed + 1;
            backtrack = Some((star, consumed + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    revoked: bool,
    hosts: HostPattern,
    key: PublicKey,
}

/// What the file says about the key a host presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyStatus {
    Known,
    /// No entry names this host.
    Unknown,
    /// The host is listed, but with other keys. `line` is 1-based, preferring
    /// an entry with the same algorithm as the presented key.
    Changed {
        line: usize,
        old_algorithm: String,
    },
    /// The key is marked `@revoked` on `line`.
    Revoked {
        line: usize,
    },
}

/// A parsed known_hosts file. Malformed lines are skipped, as OpenSSH does.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read known_hosts file {path}: {source}")]
pub struct KnownHostsError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl KnownHosts {
    /// Reads `path`; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<KnownHosts, KnownHostsError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(KnownHosts::parse(path, &text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KnownHosts {
                path: path.to_path_buf(),
                entries: Vec::new(),
            }),
            Err(source) => Err(KnownHostsError {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> KnownHosts {
        let entries = text
            .lines()
            .enumerate()
            .filter_map(|(index, line)| parse_line(index + 1, line))
            .collect();
        KnownHosts {
            path: path.to_path_buf(),
            entries,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of usable entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn check(&self, host: &str, port: u16, key: &PublicKey) -> HostKeyStatus {
        let token = host_token(host, port);
        let for_host: Vec<&Entry> = self.entries.iter().filter(|e| e.hosts.matches(&token)).collect();
        if let Some(revoked) = for_host
            .iter()
            .find(|e| e.revoked && e.key.key_data() == key.key_data())
        {
            return HostKeyStatus::Revoked { line: revoked.line };
        }
        let trusted: Vec<&&Entry> = for_host.iter().filter(|e| !e.revoked).collect();
        if trusted.iter().any(|e| e.key.key_data() == key.key_data()) {
            return HostKeyStatus::Known;
        }
        let Some(first) = trusted.first() else {
            return HostKeyStatus::Unknown;
        };
        let old = trusted
            .iter()
            .find(|e| e.key.algorithm() == key.algorithm())
            .unwrap_or(first);
        HostKeyStatus::Changed {
            line: old.line,
            old_algorithm: old.key.algorithm().to_string(),
        }
    }

    /// Key algorithms recorded for the host, so the client can prefer them
    /// (as OpenSSH does) instead of failing on a key of another type.
    pub(crate) fn algorithms_for(&self, host: &str, port: u16) -> Vec<russh::keys::Algorithm> {
        let token = host_token(host, port);
        let mut algorithms = Vec::new();
        for entry in self.entries.iter().filter(|e| !e.revoked && e.hosts.matches(&token)) {
            let algorithm = entry.key.algorithm();
            if !algorithms.contains(&algorithm) {
                algorithms.push(algorithm);
            }
        }
        algorithms
    }
}

fn parse_line(line_no: usize, line: &str) -> Option<Entry> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut rest = line;
    let mut revoked = false;
    if let Some(marker_rest) = rest.strip_prefix('@') {
        let (marker, after) = marker_rest.split_once(char::is_whitespace)?;
        match marker {
            "revoked" => revoked = true,
            // Certificate authorities are not supported: such lines never match.
            _ => return None,
        }
        rest = after.trim_start();
    }
    let (hosts, key_text) = rest.split_once(char::is_whitespace)?;
    let hosts = HostPattern::parse(hosts)?;
    let key = PublicKey::from_openssh(key_text.trim()).ok()?;
    Some(Entry {
        line: line_no,
        revoked,
        hosts,
        key,
    })
}

/// Appends `key` for `host:port`, creating the file (0600) and its directory
/// (0700) when missing.
pub(crate) fn append_known_host(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    let mut key = key.clone();
    key.set_comment("");
    let key_text = key.to_openssh().map_err(std::io::Error::other)?;
    let mut file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    // A file whose last line lacks a newline would otherwise swallow ours.
    let needs_newline = std::fs::read(path)?.last().is_some_and(|b| *b != b'\n');
    let prefix = if needs_newline { "\n" } else { "" };
    writeln!(file, "{prefix}{} {}", host_token(host, port), key_text.trim())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real keys produced by ssh-keygen.
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDHw723rBDJ5iUMjoiHYrpL6VeTiH6gILbSPZGd3SaaK";
    const ED25519_OTHER: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMbpxUN6I2onLhjFKlLqXCQEXUMBsoNYinczfQTTzdL+";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).expect("test key parses")
    }

    fn known(text: &str) -> KnownHosts {
        KnownHosts::parse(Path::new("/tmp/kh"), text)
    }

    #[test]
    fn host_token_brackets_non_default_ports() {
        assert_eq!(host_token("Example.COM", 22), "example.com");
        assert_eq!(host_token("10.0.0.1", 2222), "[10.0.0.1]:2222");
    }

    #[test]
    fn wildcards_follow_openssh() {
        let cases = [
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "example.com", false),
            ("10.0.0.?", "10.0.0.7", true),
            ("10.0.0.?", "10.0.0.17", false),
            ("*", "anything", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("[10.0.0.1]:2222", "[10.0.0.1]:2222", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(wildcard_match(pattern, text), expected, "{pattern} vs {text}");
        }
    }

    #[test]
    fn plain_entries_known_unknown_changed() {
        let file = known(&format!(
            "# comment\n\nother.host {ED25519_OTHER}\nweb1,10.0.0.5 {ED25519}\n"
        ));
        assert_eq!(file.len(), 2);
        assert_eq!(file.check("10.0.0.5", 22, &key(ED25519)), HostKeyStatus::Known);
        assert_eq!(file.check("10.0.0.6", 22, &key(ED25519)), HostKeyStatus::Unknown);
        assert_eq!(
            file.check("web1", 22, &key(ED25519_OTHER)),
            HostKeyStatus::Changed {
                line: 4,
                old_algorithm: "ssh-ed25519".into()
            }
        );
        // Same host on another port is a different entry.
        assert_eq!(file.check("10.0.0.5", 2222, &key(ED25519)), HostKeyStatus::Unknown);
    }

    #[test]
    fn bracketed_port_entries() {
        let file = known(&format!("[127.0.0.1]:2222 {ED25519}\n"));
        assert_eq!(file.check("127.0.0.1", 2222, &key(ED25519)), HostKeyStatus::Known);
        assert_eq!(file.check("127.0.0.1", 22, &key(ED25519)), HostKeyStatus::Unknown);
    }

    #[test]
    fn hashed_entries_match_by_hmac() {
        // Output of `ssh-keygen -H` for "10.0.0.5" and "[10.0.0.5]:2222".
        let file = known(&format!(
            "|1|3mVIyUmrqrgRlm544o4ZLw0FaiE=|uixRpL15JZMjdW/tPIm1f+KHUNw= {ED25519}\n\
             |1|cQmdHBEBEGzspncMFgGer89U3yA=|swW/c+fiDWALxn+dUZnVv2PTxsQ= {ED25519}\n"
        ));
        assert_eq!(file.len(), 2);
        assert_eq!(file.check("10.0.0.5", 22, &key(ED25519)), HostKeyStatus::Known);
        assert_eq!(file.check("10.0.0.5", 2222, &key(ED25519)), HostKeyStatus::Known);
        assert_eq!(file.check("10.0.0.6", 22, &key(ED25519)), HostKeyStatus::Unknown);
        assert!(matches!(
            file.check("10.0.0.5", 22, &key(ED25519_OTHER)),
            HostKeyStatus::Changed { line: 1, .. }
        ));
    }

    #[test]
    fn negation_excludes_a_host() {
        let file = known(&format!("10.0.0.*,!10.0.0.9 {ED25519}\n"));
        assert_eq!(file.check("10.0.0.8", 22, &key(ED25519)), HostKeyStatus::Known);
        assert_eq!(file.check("10.0.0.9", 22, &key(ED25519)), HostKeyStatus::Unknown);
    }

    #[test]
    fn revoked_and_cert_authority_markers() {
        let file = known(&format!("@revoked * {ED25519}\n@cert-authority * {ED25519_OTHER}\n"));
        assert_eq!(file.check("any", 22, &key(ED25519)), HostKeyStatus::Revoked { line: 1 });
        assert_eq!(file.check("any", 22, &key(ED25519_OTHER)), HostKeyStatus::Unknown);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let file = known(&format!(
            "garbage\nhost ssh-ed25519 notbase64!!\n|1|bad {ED25519}\nok {ED25519}\n"
        ));
        assert_eq!(file.len(), 1);
        assert_eq!(file.check("ok", 22, &key(ED25519)), HostKeyStatus::Known);
    }

    #[test]
    fn append_creates_private_file_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        append_known_host(&path, "127.0.0.1", 2200, &key(ED25519)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"# no newline")
            .unwrap();
        append_known_host(&path, "web1", 22, &key(ED25519_OTHER)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let file = KnownHosts::load(&path).unwrap();
        assert_eq!(file.check("127.0.0.1", 2200, &key(ED25519)), HostKeyStatus::Known);
        assert_eq!(file.check("web1", 22, &key(ED25519_OTHER)), HostKeyStatus::Known);
    }

    #[test]
    fn fingerprint_is_openssh_sha256() {
        // `ssh-keygen -lf` of the same key.
        assert_eq!(
            fingerprint(&key(ED25519)),
            "SHA256:prmb8W2Lqq6CvmMHrtJvoyu6xf7xAlUDFMpt3GKTWnE"
        );
    }
}
