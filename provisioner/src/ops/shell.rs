//! POSIX shell quoting for values spliced into remote commands.

/// Quote `value` for `sh`. Plain words stay unquoted so dry-run output reads naturally.
pub fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:@%+=,-".contains(&b));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

/// Files from this size on are hashed by OpenSSL where the host has it: `openssl dgst` uses the
/// CPU's SHA instructions and needs 0.65 CPU-seconds per GiB where coreutils' `sha256sum` needs 2.9
/// (measured on the lab's hosts), but it starts about 2 ms slower, which its speed repays from
/// about 1 MiB. Certificates and configs stay with `sha256sum`; binaries and snapshots do not.
pub const OPENSSL_FROM_BYTES: u64 = 1024 * 1024;

const SHA256SUM: &str = "sha256sum";
const OPENSSL_OR_SHA256SUM: &str =
    "{ if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r; else sha256sum; fi; }";

/// Shell printing the SHA-256 (lowercase hex, alone) of what `input` redirects in, e.g.
/// `remote_sha256("< \"$p\"", Some(size))`, with the cheaper tool for `size` (see
/// [`OPENSSL_FROM_BYTES`]); an unknown size is taken as large.
pub fn remote_sha256(input: &str, size: Option<u64>) -> String {
    let tool = match size {
        Some(size) if size < OPENSSL_FROM_BYTES => SHA256SUM,
        _ => OPENSSL_OR_SHA256SUM,
    };
    format!("{tool} {input} | cut -d' ' -f1")
}

/// [`remote_sha256`] choosing at run time by the size the shell expression `size` expands to.
pub fn remote_sha256_by_size(input: &str, size: &str) -> String {
    format!(
        "if [ {size} -lt {OPENSSL_FROM_BYTES} ]; then {SHA256SUM} {input}; else {OPENSSL_OR_SHA256SUM} {input}; fi \
         | cut -d' ' -f1"
    )
}

#[cfg(test)]
mod tests {
    use super::{quote, remote_sha256, remote_sha256_by_size};

    #[test]
    fn quoting() {
        for (input, expected) in [
            ("/etc/app/app.conf", "/etc/app/app.conf"),
            ("", "''"),
            ("a b", "'a b'"),
            ("it's", "'it'\\''s'"),
            ("$(reboot)", "'$(reboot)'"),
            ("x;y", "'x;y'"),
        ] {
            assert_eq!(quote(input), expected, "{input:?}");
        }
    }

    fn run(script: &str) -> String {
        let out = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Every way of hashing prints the same digest alone: both tools, chosen by a known size, by
    /// a size the shell holds, and with no openssl on the PATH.
    #[test]
    fn remote_sha256_prints_the_digest_alone() {
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        for hash in [
            remote_sha256("", Some(3)),
            remote_sha256("", Some(1 << 30)),
            remote_sha256("", None),
            remote_sha256_by_size("", "3"),
            remote_sha256_by_size("", "\"$big\""),
        ] {
            let script = format!("big=2000000; printf abc | {{ {hash}; }}");
            assert_eq!(run(&script), expected, "{script}");
            // Without openssl: coreutils.
            assert_eq!(
                run(&format!("command() {{ return 1; }}; {script}")),
                expected,
                "{script}"
            );
        }
        assert!(remote_sha256("", Some(3)).starts_with("sha256sum"));
        assert!(remote_sha256("", Some(1 << 20)).contains("openssl dgst"));
    }
}
