//! `monitoring`: Prometheus's retention and storage on the `monitoring` hosts, Alertmanager's
//! receivers and mail relay, and the alert rules' `for:` override.

use std::collections::HashMap;
use std::path::PathBuf;

use super::Checker;
use crate::model::*;
use crate::values::show;
use crate::yaml::{Node, Pos};

/// Ten years: beyond that a typo is likelier than a wish.
const MAX_RETENTION_DAYS: u64 = 3650;

const KEYS: &[&str] = &["retention_days", "storage_path", "receivers", "smtp", "alert_for"];
const RECEIVER_KEYS: &[&str] = &["name", "webhooks", "emails", "severities"];
const SMTP_KEYS: &[&str] = &[
    "smarthost",
    "from",
    "require_tls",
    "username",
    "password_file",
    "password_env",
];

/// A receiver's name: Alertmanager's config and logs carry it.
fn check_receiver_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("expected 1 to 63 characters, found `{}`", show(name)));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!(
            "expected letters, digits, `-` or `_` in a receiver name, found `{}`",
            show(name)
        ));
    }
    Ok(())
}

/// An `http://` or `https://` URL with a host.
fn check_webhook(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("expected an http:// or https:// URL, found `{}`", show(url)))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "expected an http(s) URL with a host and no spaces, found `{}`",
            show(url)
        ));
    }
    Ok(())
}

/// `local@domain`, one `@`, no spaces.
fn check_email(address: &str) -> Result<(), String> {
    let valid = match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !address.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',')
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "expected an email address like ops@example.com, found `{}`",
            show(address)
        ))
    }
}

/// A login name: printable, no spaces (it goes into Alertmanager's YAML as a string).
fn check_smtp_username(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("expected a login name without spaces, found `{}`", show(name)));
    }
    Ok(())
}

/// An environment variable's name: letters, digits and `_`, not starting with a digit.
fn check_env_name(name: &str) -> Result<(), String> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected an environment variable name like `SMTP_PASSWORD`, found `{}`",
            show(name)
        ))
    }
}

/// `host:port` (a name, IPv4, or `[IPv6]`).
fn check_smarthost(text: &str) -> Result<(), String> {
    let invalid = || format!("expected `host:port` of the mail relay, found `{}`", show(text));
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    if host.is_empty() || !port_ok || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    Ok(())
}

/// A Prometheus duration of one unit (`30s`, `5m`, `1h`), at least one second.
fn check_prometheus_duration(text: &str) -> Result<(), String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let number = digits.parse::<u64>().ok();
    let ok = matches!(unit, "ms" | "s" | "m" | "h" | "d" | "w")
        && number.is_some_and(|n| n > 0 && (unit != "ms" || n >= 1000));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a duration like `30s`, `5m` or `1h` (at least 1s), found `{}`",
            show(text)
        ))
    }
}

impl Checker<'_, '_> {
    pub(super) fn monitoring(&mut self, node: &Node) -> MonitoringSettings {
        let mut monitoring = MonitoringSettings::default();
        let Some(section) = self.section(node, "`monitoring`", KEYS) else {
            return monitoring;
        };
        if let Some(days) = section
            .get("retention_days")
            .and_then(|n| self.unsigned(n, "retention_days", 1, MAX_RETENTION_DAYS))
        {
            monitoring.retention_days = days as u32;
        }
        if let Some(node) = section.get("storage_path") {
            match self.string(node, "storage_path") {
                Some(path) if path.starts_with('/') && path.len() > 1 => monitoring.storage_path = PathBuf::from(path),
                Some(path) => self.error(
                    node.pos,
                    format!(
                        "`storage_path`: expected an absolute path on the hosts (not `/`), found `{}`",
                        show(&path)
                    ),
                ),
                None => {}
            }
        }
        if let Some(node) = section.get("alert_for") {
            monitoring.alert_for = self.checked(node, "alert_for", check_prometheus_duration);
        }
        if let Some(node) = section.get("smtp") {
            monitoring.smtp = self.smtp(node);
        }
        let mut first_email: Option<Pos> = None;
        if let Some(node) = section.get("receivers") {
            monitoring.receivers = self.receivers(node, &mut first_email);
        }
        if let (Some(pos), None) = (first_email, &monitoring.smtp) {
            if section.get("smtp").is_none() {
                self.error(
                    pos,
                    "`emails`: email receivers need `monitoring.smtp` (smarthost, from) to send through",
                );
            }
        }
        monitoring
    }

    fn smtp(&mut self, node: &Node) -> Option<SmtpSettings> {
        let section = self.section(node, "`monitoring.smtp`", SMTP_KEYS)?;
        let smarthost = section
            .get("smarthost")
            .and_then(|n| self.checked(n, "smarthost", check_smarthost));
        let from = section.get("from").and_then(|n| self.checked(n, "from", check_email));
        let require_tls = match section.get("require_tls") {
            Some(n) => self.boolean(n, "require_tls")?,
            None => true,
        };
        for (key, value) in [("smarthost", &smarthost), ("from", &from)] {
            if section.get(key).is_none() {
                self.error(node.pos, format!("`monitoring.smtp`: `{key}` is required"));
            } else if value.is_none() {
                return None;
            }
        }
        let auth = self.smtp_auth(node, &section);
        Some(SmtpSettings {
            smarthost: smarthost?,
            from: from?,
            require_tls,
            auth: auth?,
        })
    }

    /// `username` with exactly one of `password_file`/`password_env`, or none of the three.
    /// `Some(None)`: no authentication; `None`: an error was reported.
    fn smtp_auth(&mut self, node: &Node, section: &super::Section<'_>) -> Option<Option<SmtpAuth>> {
        let username = section
            .get("username")
            .map(|n| (n, self.checked(n, "username", check_smtp_username)));
        let file = section.get("password_file").map(|n| (n, self.path(n, "password_file")));
        let env = section
            .get("password_env")
            .map(|n| (n, self.checked(n, "password_env", check_env_name)));
        let password = match (file, env) {
            (Some((n, _)), Some(_)) => {
                self.error(
                    n.pos,
                    "`monitoring.smtp`: expected one of `password_file` or `password_env`, found both",
                );
                return None;
            }
            (Some((_, path)), None) => Some(SecretSource::File(path?)),
            (None, Some((_, name))) => Some(SecretSource::Env(name?)),
            (None, None) => None,
        };
        match (username, password) {
            (None, None) => Some(None),
            (Some((_, username)), Some(password)) => Some(Some(SmtpAuth {
                username: username?,
                password,
            })),
            (Some((n, _)), None) => {
                self.error(
                    n.pos,
                    "`monitoring.smtp`: `username` needs its password: `password_file` (a file on this machine) or `password_env` (an environment variable)",
                );
                None
            }
            (None, Some(_)) => {
                self.error(node.pos, "`monitoring.smtp`: a password needs `username`");
                None
            }
        }
    }

    fn receivers(&mut self, node: &Node, first_email: &mut Option<Pos>) -> Vec<AlertReceiver> {
        let Some(items) = self.list(node, "receivers", "receivers (name, webhooks, emails, severities)") else {
            return Vec::new();
        };
        let mut names: HashMap<String, Pos> = HashMap::new();
        let mut receivers = Vec::new();
        for item in items {
            let Some(section) = self.section(item, "a receiver in `monitoring.receivers`", RECEIVER_KEYS) else {
                continue;
            };
            let name = match section.get("name") {
                Some(n) => self.checked(n, "name", check_receiver_name).map(|name| (name, n.pos)),
                None => {
                    self.error(item.pos, "receiver: `name` is required");
                    None
                }
            };
            if let Some((name, pos)) = &name {
                if let Some(first) = names.get(name) {
                    self.error(
                        *pos,
                        format!(
                            "`name`: receiver `{}` is named twice (first at line {})",
                            show(name),
                            first.line
                        ),
                    );
                } else {
                    names.insert(name.clone(), *pos);
                }
            }
            let webhooks = self.checked_list(section.get("webhooks"), "webhooks", "URLs", check_webhook);
            let emails = self.checked_list(section.get("emails"), "emails", "email addresses", check_email);
            if let Some(n) = section.get("emails") {
                if first_email.is_none() && emails.as_ref().is_some_and(|e| !e.is_empty()) {
                    *first_email = Some(n.pos);
                }
            }
            let severities = match section.get("severities") {
                Some(n) => self.severities(n),
                None => Some(DEFAULT_RECEIVER_SEVERITIES.iter().map(|s| s.to_string()).collect()),
            };
            let (Some((name, _)), Some(webhooks), Some(emails), Some(severities)) =
                (name, webhooks, emails, severities)
            else {
                continue;
            };
            if webhooks.is_empty() && emails.is_empty() {
                self.error(
                    item.pos,
                    format!(
                        "receiver `{}`: expected at least one of `webhooks` or `emails`",
                        show(&name)
                    ),
                );
                continue;
            }
            receivers.push(AlertReceiver {
                name,
                webhooks,
                emails,
                severities,
            });
        }
        receivers
    }

    /// A list of strings, each passing `check`; `None` after any error.
    fn checked_list(
        &mut self,
        node: Option<&Node>,
        key: &str,
        expected: &str,
        check: fn(&str) -> Result<(), String>,
    ) -> Option<Vec<String>> {
        let Some(node) = node else {
            return Some(Vec::new());
        };
        let items = self.list(node, key, expected)?;
        let values: Vec<String> = items.iter().filter_map(|item| self.checked(item, key, check)).collect();
        (values.len() == items.len()).then_some(values)
    }

    fn severities(&mut self, node: &Node) -> Option<Vec<String>> {
        let items = self.list(node, "severities", "severities")?;
        if items.is_empty() {
            self.error(
                node.pos,
                format!("`severities`: expected at least one of {}", ALERT_SEVERITIES.join(", ")),
            );
            return None;
        }
        let options: Vec<(&str, &str)> = ALERT_SEVERITIES.iter().map(|s| (*s, *s)).collect();
        let values: Vec<String> = items
            .iter()
            .filter_map(|item| self.choice(item, "severities", &options).map(str::to_string))
            .collect();
        (values.len() == items.len()).then_some(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_checks() {
        assert!(check_webhook("http://10.0.0.1:9999/hook").is_ok());
        assert!(check_webhook("https://hooks.example.com").is_ok());
        assert!(check_webhook("ftp://x").is_err());
        assert!(check_webhook("http:///x").is_err());
        assert!(check_webhook("http://a b").is_err());
        assert!(check_email("ops@example.com").is_ok());
        assert!(check_email("ops@example").is_err());
        assert!(check_email("a@b@c.d").is_err());
        assert!(check_smarthost("mail.example.com:587").is_ok());
        assert!(check_smarthost("[fd00::1]:25").is_ok());
        assert!(check_smarthost("mail.example.com").is_err());
        assert!(check_smarthost("mail:0").is_err());
        assert!(check_prometheus_duration("10s").is_ok());
        assert!(check_prometheus_duration("5m").is_ok());
        assert!(check_prometheus_duration("1500ms").is_ok());
        assert!(check_prometheus_duration("0s").is_err());
        assert!(check_prometheus_duration("1m30s").is_err());
        assert!(check_prometheus_duration("ten").is_err());
        assert!(check_receiver_name("on-call_1").is_ok());
        assert!(check_receiver_name("on call").is_err());
    }
}
