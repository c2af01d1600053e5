//! The one fact every path operation needs: what is at a path, with which
//! attributes and (for regular files) which sha256. One command per path; the runner
//! batches the commands of a host's ops into one round trip (see [`super::probe_batch`]).

use super::shell::quote;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    File,
    Directory,
    Symlink,
    /// A socket, fifo or device.
    Other,
}

impl PathKind {
    pub fn noun(self) -> &'static str {
        match self {
            PathKind::File => "a regular file",
            PathKind::Directory => "a directory",
            PathKind::Symlink => "a symlink",
            PathKind::Other => "a special file",
        }
    }
}

/// What a probe found at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathState {
    Absent,
    Present {
        kind: PathKind,
        /// Permission bits including setuid/setgid/sticky.
        mode: u32,
        uid: u32,
        user: String,
        gid: u32,
        group: String,
        size: u64,
        /// Only for regular files.
        sha256: Option<String>,
    },
}

/// Where capstan remembers the sha256 of each large file it wrote (the file's path below this
/// directory): one line `IDENTITY SHA256`, where IDENTITY is the file's device, inode, size, mtime
/// and ctime when it was written. A probe that finds the same identity trusts the remembered sum
/// instead of reading the whole file again (etcd's binaries: ~0.4 CPU-s per host per run). Any
/// write, rename over, chmod or chown changes the identity (the kernel sets ctime, which no caller
/// can set back), and then the file is hashed as before.
pub const CHECKSUM_DIR: &str = "/var/lib/capstan/checksums";
/// Files at least this large get a remembered checksum; smaller ones are hashed on every probe.
pub const REMEMBER_CHECKSUM_FROM: u64 = 1 << 20;
/// `stat` format of the identity a remembered checksum is bound to.
const IDENTITY_FORMAT: &str = "%d:%i:%s:%.9Y:%.9Z";

/// The probe: prints `absent`, or `KIND MODE UID USER GID GROUP SIZE` and,
/// for regular files, a second line with the sha256 (from stdin, so the path
/// never appears in the output to be parsed; or remembered, see [`CHECKSUM_DIR`]).
pub fn path_state_command(path: &str) -> String {
    path_state_command_in(path, CHECKSUM_DIR)
}

fn path_state_command_in(path: &str, checksum_dir: &str) -> String {
    format!(
        "p={}; c={}; if [ -L \"$p\" ]; then k=symlink; elif [ -d \"$p\" ]; then k=dir; elif [ -f \"$p\" ]; then k=file; \
         elif [ -e \"$p\" ]; then k=other; else echo absent; exit 0; fi; \
         set -f; set -- $(stat -c \"$k %a %u %U %g %G %s {IDENTITY_FORMAT}\" -- \"$p\"); echo \"$1 $2 $3 $4 $5 $6 $7\"; \
         if [ \"$k\" = file ]; then \
         if [ -f \"$c\" ] && read -r id sum < \"$c\" && [ \"$id\" = \"$8\" ]; then echo \"$sum  -\"; else {hash}; fi; fi",
        quote(path),
        quote(&format!("{checksum_dir}{path}")),
        hash = super::shell::remote_sha256_by_size("< \"$p\"", "\"$7\""),
    )
}

/// Shell that remembers `sha256` as the checksum of the file now at `path` (see [`CHECKSUM_DIR`]);
/// run right after writing it.
pub(crate) fn remember_checksum_command(path: &str, sha256: &str) -> String {
    remember_checksum_command_in(path, sha256, CHECKSUM_DIR)
}

fn remember_checksum_command_in(path: &str, sha256: &str, checksum_dir: &str) -> String {
    format!(
        "c={c}; mkdir -p -m 0700 -- {dir} \"${{c%/*}}\"; id=$(stat -c \"{IDENTITY_FORMAT}\" -- {p}); \
         printf '%s %s\\n' \"$id\" {sha256} > \"$c.tmp\"; mv -f -- \"$c.tmp\" \"$c\"",
        c = quote(&format!("{checksum_dir}{path}")),
        dir = quote(checksum_dir),
        p = quote(path),
    )
}

/// Parse the output of [`path_state_command`].
pub fn parse_path_state(stdout: &str) -> Result<PathState, String> {
    let mut lines = stdout.lines();
    let first = lines.next().ok_or("empty output")?.trim();
    if first == "absent" {
        return Ok(PathState::Absent);
    }
    let fields: Vec<&str> = first.split_whitespace().collect();
    let [kind, mode, uid, user, gid, group, size] = fields[..] else {
        return Err(format!("expected 7 fields, got {first:?}"));
    };
    let kind = match kind {
        "file" => PathKind::File,
        "dir" => PathKind::Directory,
        "symlink" => PathKind::Symlink,
        "other" => PathKind::Other,
        other => return Err(format!("unknown kind {other:?}")),
    };
    let number = |name: &str, value: &str, radix: u32| {
        u64::from_str_radix(value, radix).map_err(|_| format!("{name} {value:?} is not a number"))
    };
    let mode = number("mode", mode, 8)? as u32;
    let uid = number("uid", uid, 10)? as u32;
    let gid = number("gid", gid, 10)? as u32;
    let size = number("size", size, 10)?;
    let sha256 = if kind == PathKind::File {
        let line = lines.next().ok_or("missing sha256 line for a regular file")?;
        let sha = line.split_whitespace().next().unwrap_or_default();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("bad sha256 line {line:?}"));
        }
        Some(sha.to_ascii_lowercase())
    } else {
        None
    };
    Ok(PathState::Present {
        kind,
        mode,
        uid,
        user: user.to_string(),
        gid,
        group: group.to_string(),
        size,
        sha256,
    })
}

/// Does the remote principal (name and numeric id) match the desired one?
/// A desired value that is all digits is compared as an id.
pub(crate) fn principal_matches(desired: &str, id: u32, name: &str) -> bool {
    if !desired.is_empty() && desired.bytes().all(|b| b.is_ascii_digit()) {
        desired.parse::<u32>().ok() == Some(id)
    } else {
        desired == name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_probe_outputs() {
        let file = format!("file 644 0 root 0 root 0\n{SHA}  -\n");
        let cases: Vec<(&str, Result<PathState, ()>)> = vec![
            ("absent\n", Ok(PathState::Absent)),
            (
                &file,
                Ok(PathState::Present {
                    kind: PathKind::File,
                    mode: 0o644,
                    uid: 0,
                    user: "root".into(),
                    gid: 0,
                    group: "root".into(),
                    size: 0,
                    sha256: Some(SHA.into()),
                }),
            ),
            (
                "dir 2750 998 app 997 app 4096\n",
                Ok(PathState::Present {
                    kind: PathKind::Directory,
                    mode: 0o2750,
                    uid: 998,
                    user: "app".into(),
                    gid: 997,
                    group: "app".into(),
                    size: 4096,
                    sha256: None,
                }),
            ),
            ("", Err(())),
            ("file 644 0 root 0 root 0\n", Err(())),
            ("file 6x4 0 root 0 root 0\nabc  -\n", Err(())),
            ("dir 755 0 root\n", Err(())),
            ("fifo 644 0 root 0 root 0\n", Err(())),
            ("file 644 0 root 0 root 3\nnot-a-sha  -\n", Err(())),
        ];
        for (input, expected) in cases {
            let got = parse_path_state(input).map_err(|_| ());
            assert_eq!(got, expected, "input {input:?}");
        }
    }

    #[test]
    fn principals() {
        assert!(principal_matches("root", 0, "root"));
        assert!(principal_matches("0", 0, "root"));
        assert!(!principal_matches("app", 0, "root"));
        assert!(!principal_matches("998", 0, "root"));
    }

    fn sh(script: &str) -> String {
        let out = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn remembered_checksums_are_used_only_while_the_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let sums = dir.path().join("sums");
        let sums = sums.to_str().unwrap();
        let file = dir.path().join("bin").join("tool");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"").unwrap();
        let path = file.to_str().unwrap();
        let probe = path_state_command_in(path, sums);

        // Nothing remembered: the file is read.
        let state = parse_path_state(&sh(&probe)).unwrap();
        assert!(
            matches!(&state, PathState::Present { sha256: Some(s), .. } if s == SHA),
            "{state:?}"
        );

        // Remembered (a marker sum, to see which one the probe reports): trusted while unchanged.
        let marker = "ab".repeat(32);
        sh(&remember_checksum_command_in(path, &marker, sums));
        let state = parse_path_state(&sh(&probe)).unwrap();
        assert!(
            matches!(&state, PathState::Present { sha256: Some(s), .. } if *s == marker),
            "{state:?}"
        );

        // Any change to the file (here: its mode, which moves ctime) and it is read again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        sh(&format!("chmod 600 {}", quote(path)));
        let state = parse_path_state(&sh(&probe)).unwrap();
        assert!(
            matches!(&state, PathState::Present { sha256: Some(s), mode: 0o600, .. } if s == SHA),
            "{state:?}"
        );

        // Replaced by another file with the same size and mtime: a new inode, read again.
        sh(&remember_checksum_command_in(path, &marker, sums));
        sh(&format!("cp -p {p} {p}.new && mv {p}.new {p}", p = quote(path)));
        let state = parse_path_state(&sh(&probe)).unwrap();
        assert!(
            matches!(&state, PathState::Present { sha256: Some(s), .. } if s == SHA),
            "{state:?}"
        );
    }
}
