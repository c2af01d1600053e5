//! Pure checks and conversions for scalar values; each error is the "expected ..." part of a message.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Longest value, in characters, that a message repeats in full.
pub const SHOWN_CHARS: usize = 64;

/// A user-supplied value as messages show it: control characters (and bidirectional overrides)
/// escaped so they never reach a terminal raw, and long values cut short with their size noted.
pub fn show(text: &str) -> Shown<'_> {
    Shown(text)
}

pub struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let long = self.0.chars().nth(SHOWN_CHARS).is_some();
        let keep = if long { SHOWN_CHARS - 16 } else { SHOWN_CHARS };
        for c in self.0.chars().take(keep) {
            write_escaped(f, c)?;
        }
        if long {
            write!(f, "… ({} bytes in all)", self.0.len())?;
        }
        Ok(())
    }
}

fn write_escaped(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\n' => f.write_str("\\n"),
        '\t' => f.write_str("\\t"),
        '\r' => f.write_str("\\r"),
        c if is_unsafe_char(c) => write!(f, "\\u{{{:x}}}", c as u32),
        c => write!(f, "{c}"),
    }
}

/// Characters that could change how a terminal shows what follows them.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// `text` with every unsafe character escaped (no truncation): the last line of defence for
/// whole messages.
pub fn escape_all(text: &str) -> String {
    if !text.chars().any(is_unsafe_char) {
        return text.to_string();
    }
    struct All<'a>(&'a str);
    impl fmt::Display for All<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.chars().try_for_each(|c| write_escaped(f, c))
        }
    }
    All(text).to_string()
}

/// Parses `500ms`, `10s`, `5m`, `1h` and sums like `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a duration such as `500ms`, `10s`, `5m` or `1h`";
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{EXPECTED}, found nothing"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{EXPECTED}, found `{}`", show(text)));
        }
        let amount: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{EXPECTED}; `{}` is too large", show(text)))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "" => return Err(format!("{EXPECTED}; `{}` has no unit", show(text))),
            other => {
                return Err(format!(
                    "{EXPECTED}; unknown unit `{}` in `{}` (use ms, s, m or h)",
                    show(other),
                    show(text)
                ))
            }
        };
        rest = &rest[unit_len..];
        let part = u32::try_from(amount)
            .ok()
            .and_then(|amount| unit.checked_mul(amount))
            .ok_or_else(|| format!("{EXPECTED}; `{}` is too large", show(text)))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("{EXPECTED}; `{}` is too large", show(text)))?;
    }
    Ok(total)
}

/// The inverse of [`parse_duration`]: `1m30s`, `500ms`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    let mut out = String::new();
    let secs = duration.as_secs();
    for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] {
        let amount = secs / size % if size == 3600 { u64::MAX } else { 60 };
        if amount > 0 {
            out.push_str(&format!("{amount}{unit}"));
        }
    }
    let millis = duration.subsec_millis();
    if millis > 0 || out.is_empty() {
        if millis == 0 {
            out.push_str("0s");
        } else {
            out.push_str(&format!("{millis}ms"));
        }
    }
    out
}

/// Cluster names become systemd unit, file and DNS label parts.
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    let valid = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid cluster name `{}`: expected 1-63 characters of a-z, 0-9 and `-`, \
             not starting or ending with `-`",
            show(name)
        ))
    }
}

/// Host names become etcd member names and certificate names.
pub fn check_host_name(name: &str) -> Result<(), String> {
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if !name.is_empty() && name.len() <= 253 && labels_ok {
        Ok(())
    } else {
        Err(format!(
            "invalid host name `{}`: expected dot-separated labels of a-z, 0-9 and `-` \
             (each 1-63 characters, not starting or ending with `-`)",
            show(name)
        ))
    }
}

/// An IPv4/IPv6 address or a DNS name.
pub fn check_address(address: &str) -> Result<(), String> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        let unusable = match ip.to_canonical() {
            IpAddr::V4(v4) => v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast(),
            IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
        };
        if unusable {
            return Err(format!(
                "`{}` is not a host's address (unspecified, broadcast or multicast): expected the address of one host",
                show(address)
            ));
        }
        return Ok(());
    }
    let expected = "expected an IPv4 address, an IPv6 address or a DNS name";
    let labels: Vec<&str> = address.trim_end_matches('.').split('.').collect();
    // A DNS name's last label is never all digits, so such input was meant to be an IPv4 address.
    let last_numeric = labels
        .last()
        .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
    if last_numeric && address.parse::<Ipv4Addr>().is_err() {
        return Err(format!("invalid IPv4 address `{}`: {expected}", show(address)));
    }
    if address.contains(':') {
        return Err(format!("invalid IPv6 address `{}`: {expected}", show(address)));
    }
    let labels_ok = labels.iter().all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if address.is_empty() || address.len() > 253 || !labels_ok {
        return Err(format!("invalid address `{}`: {expected}", show(address)));
    }
    Ok(())
}

/// The form in which two spellings of one address compare equal: IP addresses as Rust prints
/// them (`fd00:0:0::21` is `fd00::21`, `::ffff:10.0.0.1` is `10.0.0.1`), DNS names in lower case
/// without a trailing dot.
pub fn canonical_address(address: &str) -> String {
    match address.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) => address.trim_end_matches('.').to_ascii_lowercase(),
    }
}

/// A Linux network interface name: 1-15 bytes, no `/`, whitespace or `:`, not `.` or `..`.
pub fn check_interface(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid interface name `{}`: expected 1-15 characters without `/`, `:` or spaces, such as `eth0`",
            show(name)
        ))
    }
}

/// An age X25519 recipient (`age1...`), the only kind capstan's backups encrypt to.
pub fn check_recipient(text: &str) -> Result<(), String> {
    if text.starts_with("ssh-") {
        return Err(format!(
            "`{}` is an SSH public key; backups are encrypted to age X25519 recipients only (`age1...`, from age-keygen)",
            show(text)
        ));
    }
    if !text.starts_with("age1") {
        return Err(format!(
            "expected an age public key (`age1...`, from age-keygen), found `{}`",
            show(text)
        ));
    }
    // An age1 key is 62 characters; anything much longer is not one, whatever it decodes to.
    let parsed = if text.len() > 100 {
        Err("too long")
    } else {
        text.parse::<age::x25519::Recipient>().map(|_| ())
    };
    parsed.map_err(|reason| {
        format!(
            "`{}` is not a valid age recipient ({reason}); expected a complete `age1...` public key as age-keygen prints it",
            show(text)
        )
    })
}

/// A login name as `useradd` accepts it and a shell passes it through unquoted.
pub fn check_user(user: &str) -> Result<(), String> {
    let valid = (1..=32).contains(&user.len())
        && user.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid user name `{}`: expected 1-32 characters of a-z, A-Z, 0-9, `_`, `-` and `.`, \
             starting with a letter or `_`",
            show(user)
        ))
    }
}

/// A duration within `min..=max`, for settings where a huge value is surely a mistake.
pub fn check_duration_range(duration: Duration, min: Duration, max: Duration) -> Result<(), String> {
    if duration < min || duration > max {
        Err(format!(
            "expected a duration from {} to {}, found {}",
            format_duration(min),
            format_duration(max),
            format_duration(duration)
        ))
    } else {
        Ok(())
    }
}

/// `MAJOR.MINOR.PATCH` with an optional `-suffix`.
pub fn check_version(version: &str) -> Result<(), String> {
    let core = version.split_once('-').map_or(version, |(core, _)| core);
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        Ok(())
    } else {
        Err(format!(
            "invalid version `{}`: expected MAJOR.MINOR.PATCH such as `3.5.1`",
            show(version)
        ))
    }
}

/// One apt sources line in the one-line format: `deb [OPTIONS] URI SUITE [COMPONENT…]`. Returns it
/// with surrounding blanks removed.
pub fn check_apt_source(line: &str) -> Result<String, String> {
    let line = line.trim();
    if line.contains(['\n', '\r', '\0']) {
        return Err("expected one line, found a line break".to_string());
    }
    let expected = "expected `deb [OPTIONS] URI SUITE [COMPONENT…]` such as \
                    `deb http://repo.example/debian bookworm main` or `deb [trusted=yes] file:/srv/debs ./`";
    let Some(rest) = line.strip_prefix("deb ") else {
        return Err(format!("{expected}, found `{}`", show(line)));
    };
    let rest = rest.trim_start();
    let rest = match rest.strip_prefix('[') {
        Some(options) => match options.split_once(']') {
            Some((_, after)) => after,
            None => return Err(format!("unclosed `[` in `{}`", show(line))),
        },
        None => rest,
    };
    let words: Vec<&str> = rest.split_whitespace().collect();
    let uri_ok = words.first().is_some_and(|uri| {
        ["http://", "https://", "file:/", "cdrom:"]
            .iter()
            .any(|s| uri.starts_with(s))
    });
    if words.len() < 2 || !uri_ok {
        return Err(format!("{expected}, found `{}`", show(line)));
    }
    // A suite that is a path (flat repository, `./`) takes no components; a named suite needs one.
    if !words[1].ends_with('/') && words.len() < 3 {
        return Err(format!(
            "suite `{}` needs at least one component (such as `main`)",
            show(words[1])
        ));
    }
    Ok(line.to_string())
}

/// S3 bucket naming rules (the subset that matters for building URLs).
pub fn check_bucket(bucket: &str) -> Result<(), String> {
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid S3 bucket `{}`: expected 3-63 characters of a-z, 0-9, `.` and `-`",
            show(bucket)
        ))
    }
}

/// The candidate closest to `input` by edit distance, if close enough to be a likely typo.
///
/// Only inputs about as long as a candidate can be close, so long inputs are never compared:
/// the time spent is bounded whatever the input.
pub fn closest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    const LONGEST: usize = 128;
    if input.len() > LONGEST * 4 || input.chars().count() > LONGEST {
        return None;
    }
    candidates
        .into_iter()
        .filter(|candidate| candidate.len() <= LONGEST)
        .map(|candidate| (edit_distance(input, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len().max(input.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Optimal string alignment distance: edits plus adjacent swaps, the commonest typo.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (text, millis) in [
            ("500ms", 500),
            ("10s", 10_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("2h0m1s", 7_201_000),
            ("0s", 0),
        ] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(parsed, Duration::from_millis(millis), "{text}");
            assert_eq!(parse_duration(&format_duration(parsed)).unwrap(), parsed);
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        for bad in ["10", "ten", "10x", "s", "", "1.5s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        for good in ["10.0.0.1", "::1", "fe80::1", "node-1.example.com", "localhost"] {
            assert!(check_address(good).is_ok(), "{good}");
        }
        for bad in ["10.0.0.300", "10.0.0", "no_underscores", "-a.b", "1:2:3", ""] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn suggestions() {
        let keys = ["identity_file", "user", "port", "known_hosts", "known_hosts_file"];
        assert_eq!(closest("identiy_file", keys), Some("identity_file"));
        assert_eq!(closest("prot", keys), Some("port"));
        assert_eq!(closest("known_host", keys), Some("known_hosts"));
        assert_eq!(closest("zzzzzz", keys), None);
        // A huge input is never compared character by character.
        let huge = "k".repeat(5 << 20);
        let started = std::time::Instant::now();
        assert_eq!(closest(&huge, keys), None);
        assert!(started.elapsed() < std::time::Duration::from_millis(200));
    }

    #[test]
    fn apt_source_lines() {
        for ok in [
            "deb http://deb.debian.org/debian bookworm main",
            "deb [trusted=yes] file:/srv/capstan-debs ./",
            "  deb [arch=amd64 signed-by=/k.gpg] https://r.example/d bookworm main contrib ",
        ] {
            assert!(check_apt_source(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("http://deb.debian.org/debian bookworm main", "expected `deb"),
            ("deb [trusted=yes file:/srv ./", "unclosed"),
            ("deb ftp.example bookworm main", "expected `deb"),
            ("deb http://r.example/d bookworm", "needs at least one component"),
            ("deb http://r.example/d ./\ndeb http://x/ ./", "line break"),
        ] {
            let err = check_apt_source(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
