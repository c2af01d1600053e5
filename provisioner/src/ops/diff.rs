//! How a content change is shown: a unified diff for text, a checksum line otherwise.

use similar::TextDiff;

/// Files larger than this (either side) are never diffed line by line.
pub const DIFF_LIMIT_BYTES: usize = 1024 * 1024;

fn as_text(bytes: &[u8]) -> Option<&str> {
    if bytes.len() > DIFF_LIMIT_BYTES || bytes.contains(&0) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// Describe the change from `old` (None = file absent, or content not fetched)
/// to `new`. Text on both sides gives a unified diff; anything else a summary.
pub fn render_file_diff(
    path: &str,
    old: Option<&[u8]>,
    old_sha: Option<&str>,
    new: Option<&[u8]>,
    new_sha: &str,
) -> String {
    let old_text = match old {
        Some(bytes) => as_text(bytes),
        None if old_sha.is_none() => Some(""),
        None => None,
    };
    match (old_text, new.and_then(as_text)) {
        (Some(old_text), Some(new_text)) => {
            let old_header = if old_sha.is_none() {
                "/dev/null".to_string()
            } else {
                format!("{path} (remote)")
            };
            TextDiff::from_lines(old_text, new_text)
                .unified_diff()
                .context_radius(3)
                .header(&old_header, &format!("{path} (desired)"))
                .to_string()
        }
        _ => match old_sha {
            Some(old_sha) => format!(
                "binary file changed (sha256 {} → {})",
                super::short_sha(old_sha),
                super::short_sha(new_sha)
            ),
            None => format!("new binary file (sha256 {})", super::short_sha(new_sha)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::type_complexity)] // data-driven case tables
    #[test]
    fn diffs() {
        let a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        let big = vec![b'x'; DIFF_LIMIT_BYTES + 1];
        let cases: Vec<(Option<&[u8]>, Option<&str>, Option<&[u8]>, &str)> = vec![
            (
                Some(b"one\ntwo\n"),
                Some(a),
                Some(b"one\nthree\n"),
                "--- /f (remote)\n+++ /f (desired)\n@@ -1,2 +1,2 @@\n one\n-two\n+three\n",
            ),
            (
                None,
                None,
                Some(b"new\n"),
                "--- /dev/null\n+++ /f (desired)\n@@ -0,0 +1 @@\n+new\n",
            ),
            (
                Some(b"\0\x01"),
                Some(a),
                Some(b"text\n"),
                "binary file changed (sha256 aaaaaaaaaaaa → bbbbbbbbbbbb)",
            ),
            (
                Some(b"text\n"),
                Some(a),
                Some(&big),
                "binary file changed (sha256 aaaaaaaaaaaa → bbbbbbbbbbbb)",
            ),
            (
                None,
                Some(a),
                None,
                "binary file changed (sha256 aaaaaaaaaaaa → bbbbbbbbbbbb)",
            ),
            (None, None, None, "new binary file (sha256 bbbbbbbbbbbb)"),
        ];
        for (old, old_sha, new, expected) in cases {
            assert_eq!(render_file_diff("/f", old, old_sha, new, b), expected);
        }
    }
}
