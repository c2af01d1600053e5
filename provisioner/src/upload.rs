//! Idempotent, atomic file upload over any [`Transport`].
//!
//! Desired state (content hash, mode, owner) is compared with what the host
//! has; content is only streamed when the hash differs, into a temp file
//! beside the destination that is verified and then renamed over it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use crate::ssh::shell_quote;
use crate::transport::{ExecOptions, RemoteFile, Transport, TransportError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Content, mode and owner already matched.
    Skipped,
    /// Only mode and/or owner were wrong; fixed in place without re-uploading.
    AttributesFixed,
    /// Content was uploaded.
    Written,
}

impl UploadOutcome {
    pub fn changed(self) -> bool {
        self != UploadOutcome::Skipped
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("invalid upload of {path}: {reason}")]
    InvalidRequest { path: String, reason: String },
    #[error("{host}: {step} for {path} failed (exit {exit}): {stderr}")]
    Remote {
        host: String,
        step: &'static str,
        path: String,
        exit: String,
        stderr: String,
    },
    #[error("{host}: the local content for {path} has sha256 {actual}, but {expected} was expected")]
    SourceMismatch {
        host: String,
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{host}: {path} has sha256 {actual} after upload, expected {expected}; left unchanged")]
    RemoteMismatch {
        host: String,
        path: String,
        expected: String,
        actual: String,
    },
}

/// What the host currently has at the destination path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFileState {
    pub sha256: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Output marker of [`probe_command`] for a missing file.
const ABSENT: &str = "absent";

pub fn probe_command(path: &str) -> String {
    let p = shell_quote(path);
    format!(
        "if [ -f {p} ]; then {hash} && stat -c '%a %U %G' -- {p}; \
         elif [ -e {p} ]; then echo 'not a regular file' >&2; exit 2; else echo {ABSENT}; fi",
        // Uploads are the large files (artifacts, snapshots).
        hash = crate::ops::shell::remote_sha256(&format!("< {p}"), None),
    )
}

/// Parses [`probe_command`] output; `None` when the file does not exist.
pub fn parse_probe(stdout: &str) -> Result<Option<RemoteFileState>, String> {
    let mut lines = stdout.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().ok_or("empty output")?;
    if first == ABSENT {
        return Ok(None);
    }
    if first.len() != 64 || !first.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("unexpected sha256sum output {first:?}"));
    }
    let stat = lines.next().ok_or("missing stat output")?;
    let fields: Vec<&str> = stat.split_whitespace().collect();
    let [mode, owner, group] = fields.as_slice() else {
        return Err(format!("unexpected stat output {stat:?}"));
    };
    let mode = u32::from_str_radix(mode, 8).map_err(|_| format!("unexpected mode {mode:?}"))?;
    Ok(Some(RemoteFileState {
        sha256: first.to_ascii_lowercase(),
        mode,
        owner: owner.to_string(),
        group: group.to_string(),
    }))
}

/// Which attributes differ from the desired file (ignoring unspecified owner/group).
fn attributes_match(state: &RemoteFileState, dest: &RemoteFile) -> bool {
    state.mode == dest.mode & 0o7777
        && dest.owner.as_ref().is_none_or(|o| *o == state.owner)
        && dest.group.as_ref().is_none_or(|g| *g == state.group)
}

/// `chmod`/`chown` commands bringing `path` to the desired attributes.
fn attribute_commands(path: &str, dest: &RemoteFile) -> String {
    let p = shell_quote(path);
    let mut commands = vec![format!("chmod {:04o} -- {p}", dest.mode & 0o7777)];
    match (&dest.owner, &dest.group) {
        (Some(owner), Some(group)) => {
            commands.push(format!("chown -- {} {p}", shell_quote(&format!("{owner}:{group}"))))
        }
        (Some(owner), None) => commands.push(format!("chown -- {} {p}", shell_quote(owner))),
        (None, Some(group)) => commands.push(format!("chgrp -- {} {p}", shell_quote(group))),
        (None, None) => {}
    }
    commands.join(" && ")
}

fn temp_path(dest: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (dir, base) = match dest.rsplit_once('/') {
        Some((dir, base)) => (dir, base),
        None => (".", dest),
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{dir}/.{base}.capstan-{}-{nanos:x}-{n}.tmp", std::process::id())
}

fn validate(dest: &RemoteFile, expected_sha256: &str) -> Result<String, UploadError> {
    let invalid = |reason: &str| UploadError::InvalidRequest {
        path: dest.path.clone(),
        reason: reason.into(),
    };
    if !dest.path.starts_with('/') || dest.path.ends_with('/') {
        return Err(invalid("the destination must be an absolute file path"));
    }
    if dest.mode > 0o7777 {
        return Err(invalid("mode has bits beyond 0o7777"));
    }
    let expected = expected_sha256.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("expected_sha256 must be 64 hex digits"));
    }
    Ok(expected)
}

/// Reads the remote file's hash, mode and owner (privileged).
pub async fn remote_file_state(t: &dyn Transport, path: &str) -> Result<Option<RemoteFileState>, UploadError> {
    let opts = ExecOptions {
        timeout: PROBE_TIMEOUT,
        privileged: true,
    };
    let out = t.exec(&probe_command(path), &opts).await?;
    if !out.success() {
        return Err(remote_error(t, "inspecting the existing file", path, &out));
    }
    parse_probe(&out.stdout_str()).map_err(|reason| UploadError::Remote {
        host: t.host().to_string(),
        step: "inspecting the existing file",
        path: path.to_string(),
        exit: "0".into(),
        stderr: reason,
    })
}

fn remote_error(t: &dyn Transport, step: &'static str, path: &str, out: &crate::transport::ExecOutput) -> UploadError {
    UploadError::Remote {
        host: t.host().to_string(),
        step,
        path: path.to_string(),
        exit: out.exit_code.map_or_else(|| "by signal".to_string(), |c| c.to_string()),
        stderr: out.stderr_str().trim().to_string(),
    }
}

/// Makes `dest` hold the content of `src` (whose sha256 the caller knows),
/// with the given mode and owner. Streams `src` only when the content differs.
pub async fn upload_file(
    t: &dyn Transport,
    src: impl AsyncRead + Send + Unpin,
    expected_sha256: &str,
    dest: &RemoteFile,
) -> Result<UploadOutcome, UploadError> {
    let expected = validate(dest, expected_sha256)?;
    let current = remote_file_state(t, &dest.path).await?;
    let opts = ExecOptions {
        timeout: PROBE_TIMEOUT,
        privileged: true,
    };
    if let Some(state) = &current {
        if state.sha256 == expected {
            if attributes_match(state, dest) {
                return Ok(UploadOutcome::Skipped);
            }
            let out = t.exec(&attribute_commands(&dest.path, dest), &opts).await?;
            if !out.success() {
                return Err(remote_error(t, "fixing mode/owner", &dest.path, &out));
            }
            return Ok(UploadOutcome::AttributesFixed);
        }
    }

    let temp = temp_path(&dest.path);
    let q_temp = shell_quote(&temp);
    let parent = dest
        .path
        .rsplit_once('/')
        .map(|(d, _)| d)
        .filter(|d| !d.is_empty())
        .unwrap_or("/");
    // umask 077: the content is private until chmod gives it its final mode.
    let write = format!("mkdir -p -- {} && umask 077 && cat > {q_temp}", shell_quote(parent));
    let mut hashing = HashingReader {
        inner: src,
        hasher: Sha256::new(),
    };
    let upload_opts = ExecOptions {
        timeout: UPLOAD_TIMEOUT,
        privileged: true,
    };
    let out = t.exec_with_stdin(&write, &mut hashing, &upload_opts).await;
    let cleanup = format!("rm -f -- {q_temp}");
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            let _ = t.exec(&cleanup, &opts).await;
            return Err(e.into());
        }
    };
    if !out.success() {
        let _ = t.exec(&cleanup, &opts).await;
        return Err(remote_error(t, "writing the temp file", &dest.path, &out));
    }
    let sent = hex::encode(hashing.hasher.finalize());
    if sent != expected {
        let _ = t.exec(&cleanup, &opts).await;
        return Err(UploadError::SourceMismatch {
            host: t.host().to_string(),
            path: dest.path.clone(),
            expected,
            actual: sent,
        });
    }
    // Verify what landed, then rename over the destination atomically.
    let finish = format!(
        "{attrs} && actual=$({hash}) && \
         if [ \"$actual\" != {expected} ]; then rm -f -- {q_temp}; echo \"sha256-mismatch $actual\"; exit 3; fi && \
         mv -f -- {q_temp} {dest_q}",
        attrs = attribute_commands(&temp, dest),
        hash = crate::ops::shell::remote_sha256(&format!("< {q_temp}"), None),
        dest_q = shell_quote(&dest.path),
    );
    let out = t.exec(&finish, &opts).await?;
    if out.exit_code == Some(3) {
        let actual = out
            .stdout_str()
            .trim()
            .trim_start_matches("sha256-mismatch ")
            .to_string();
        return Err(UploadError::RemoteMismatch {
            host: t.host().to_string(),
            path: dest.path.clone(),
            expected,
            actual,
        });
    }
    if !out.success() {
        let _ = t.exec(&cleanup, &opts).await;
        return Err(remote_error(t, "installing the uploaded file", &dest.path, &out));
    }
    Ok(UploadOutcome::Written)
}

/// Hashes what passes through, so we know the bytes sent match the expected hash.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll {
            this.hasher.update(&buf.filled()[before..]);
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(mode: u32, owner: Option<&str>, group: Option<&str>) -> RemoteFile {
        RemoteFile {
            path: "/etc/x y/conf".into(),
            mode,
            owner: owner.map(Into::into),
            group: group.map(Into::into),
        }
    }

    #[test]
    fn probe_output_parses() {
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(parse_probe("absent\n"), Ok(None));
        assert_eq!(
            parse_probe(&format!("{sha}\n644 root root\n")),
            Ok(Some(RemoteFileState {
                sha256: sha.into(),
                mode: 0o644,
                owner: "root".into(),
                group: "root".into()
            }))
        );
        assert_eq!(
            parse_probe(&format!("{sha}\n4755 app app\n")).unwrap().unwrap().mode,
            0o4755
        );
        assert!(parse_probe("").is_err());
        assert!(parse_probe("nothex\n644 a b").is_err());
        assert!(parse_probe(&format!("{sha}\n644 root")).is_err());
    }

    #[test]
    fn attributes_compare_only_what_is_specified() {
        let state = RemoteFileState {
            sha256: String::new(),
            mode: 0o644,
            owner: "root".into(),
            group: "adm".into(),
        };
        assert!(attributes_match(&state, &dest(0o644, None, None)));
        assert!(attributes_match(&state, &dest(0o644, Some("root"), Some("adm"))));
        assert!(!attributes_match(&state, &dest(0o600, None, None)));
        assert!(!attributes_match(&state, &dest(0o644, Some("app"), None)));
        assert!(!attributes_match(&state, &dest(0o644, None, Some("root"))));
    }

    #[test]
    fn attribute_commands_quote_paths() {
        assert_eq!(
            attribute_commands("/etc/x y/conf", &dest(0o640, None, None)),
            "chmod 0640 -- '/etc/x y/conf'"
        );
        assert_eq!(
            attribute_commands("/a", &dest(0o600, Some("app"), Some("app"))),
            "chmod 0600 -- /a && chown -- app:app /a"
        );
        assert_eq!(
            attribute_commands("/a", &dest(0o600, None, Some("adm"))),
            "chmod 0600 -- /a && chgrp -- adm /a"
        );
    }

    #[test]
    fn temp_file_sits_beside_destination() {
        let temp = temp_path("/etc/capstan/app.conf");
        assert!(temp.starts_with("/etc/capstan/.app.conf.capstan-"), "{temp}");
        assert_ne!(temp_path("/a/b"), temp_path("/a/b"));
    }

    #[test]
    fn requests_are_validated() {
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(validate(&dest(0o644, None, None), sha).is_ok());
        assert!(validate(&dest(0o644, None, None), "abc").is_err());
        let relative = RemoteFile {
            path: "etc/x".into(),
            ..dest(0o644, None, None)
        };
        assert!(validate(&relative, sha).is_err());
        assert!(validate(&dest(0o17777, None, None), sha).is_err());
    }
}
