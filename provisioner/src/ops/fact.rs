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

/// The probe: prints `absent`, or `KIND MODE UID USER GID GROUP SIZE` and,
/// for regular files, a second line with the sha256 (from stdin, so the path
/// never appears in the output to be parsed).
pub fn path_state_command(path: &str) -> String {
    format!(
        "p={}; if [ -L \"$p\" ]; then k=symlink; elif [ -d \"$p\" ]; then k=dir; elif [ -f \"$p\" ]; then k=file; \
         elif [ -e \"$p\" ]; then k=other; else echo absent; exit 0; fi; \
         stat -c \"$k %a %u %U %g %G %s\" -- \"$p\"; if [ \"$k\" = file ]; then sha256sum < \"$p\"; fi",
        quote(path)
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
}
