//! Pure checks and conversions for scalar values; each error is the "expected ..." part of a message.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

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
            return Err(format!("{EXPECTED}, found `{text}`"));
        }
        let amount: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{EXPECTED}; `{text}` is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "" => return Err(format!("{EXPECTED}; `{text}` has no unit")),
            other => {
                return Err(format!(
                    "{EXPECTED}; unknown unit `{other}` in `{text}` (use ms, s, m or h)"
                ))
            }
        };
        rest = &rest[unit_len..];
        let part = u32::try_from(amount)
            .ok()
            .and_then(|amount| unit.checked_mul(amount))
            .ok_or_else(|| format!("{EXPECTED}; `{text}` is too large"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("{EXPECTED}; `{text}` is too large"))?;
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
            "invalid cluster name `{name}`: expected 1-63 characters of a-z, 0-9 and `-`, \
             not starting or ending with `-`"
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
            "invalid host name `{name}`: expected dot-separated labels of a-z, 0-9 and `-` \
             (each 1-63 characters, not starting or ending with `-`)"
        ))
    }
}

/// An IPv4/IPv6 address or a DNS name.
pub fn check_address(address: &str) -> Result<(), String> {
    if address.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let expected = "expected an IPv4 address, an IPv6 address or a DNS name";
    let labels: Vec<&str> = address.trim_end_matches('.').split('.').collect();
    // A DNS name's last label is never all digits, so such input was meant to be an IPv4 address.
    let last_numeric = labels
        .last()
        .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
    if last_numeric && address.parse::<Ipv4Addr>().is_err() {
        return Err(format!("invalid IPv4 address `{address}`: {expected}"));
    }
    if address.contains(':') {
        return Err(format!("invalid IPv6 address `{address}`: {expected}"));
    }
    let labels_ok = labels.iter().all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if address.is_empty() || address.len() > 253 || !labels_ok {
        return Err(format!("invalid address `{address}`: {expected}"));
    }
    Ok(())
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
            "invalid version `{version}`: expected MAJOR.MINOR.PATCH such as `3.5.1`"
        ))
    }
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
            "invalid S3 bucket `{bucket}`: expected 3-63 characters of a-z, 0-9, `.` and `-`"
        ))
    }
}

/// The candidate closest to `input` by edit distance, if close enough to be a likely typo.
pub fn closest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
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
    }
}
