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

#[cfg(test)]
mod tests {
    use super::quote;

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
}
