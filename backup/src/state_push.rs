//! Components' state for scheduled backups, pushed into etcd by the hosts that hold it.
//!
//! Scheduled backups run on the etcd members, which cannot (and should not) read other hosts'
//! files. So every host of a role that holds declared state files ([`Component::state_files`])
//! runs `capstan backup push-state` (a oneshot service, started by a `.path` unit when a state file
//! changes, by a daily timer and at boot): it reads the files locally, builds the same tar
//! [`crate::state::archive`] builds, age-encrypts it to the backup recipients and writes one
//! [`PushRecord`] to `/capstan/backup/state/<host>` — only when the plaintext's digest or the
//! recipients changed. The leader's scheduled backup copies the newest record's ciphertext into the
//! backup as `state.tar.age` without decrypting it ([`newest_push`]); the keys never lie in clear
//! on the members.
//!
//! [`Component::state_files`]: capstan_provisioner::component::Component::state_files

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use capstan_etcd::client::{error_chain, EtcdClient, EtcdEndpoint, EtcdTls, StoredValue};
use capstan_provisioner::hint::Hint;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::manifest::ObjectDigest;
use crate::state::{archive, StateEntry};

/// Where the pushes live in etcd: one key per host.
pub const STATE_PREFIX: &str = "/capstan/backup/state/";
/// What `capstan backup schedule` installs on each state host.
pub const PUSH_CONFIG_PATH: &str = "/etc/capstan/state-push.yaml";
pub const PUSH_PKI_DIR: &str = "/etc/capstan/state-push";
pub const PUSH_CA_PATH: &str = "/etc/capstan/state-push/ca.crt";
pub const PUSH_CERT_PATH: &str = "/etc/capstan/state-push/client.crt";
pub const PUSH_KEY_PATH: &str = "/etc/capstan/state-push/client.key";
pub const PUSH_SERVICE_UNIT: &str = "capstan-state-push.service";
pub const PUSH_PATH_UNIT: &str = "capstan-state-push.path";
pub const PUSH_TIMER_UNIT: &str = "capstan-state-push.timer";
pub const PUSH_METRICS_FILE: &str = capstan_monitoring::textfile_path!("capstan_state_push.prom");
/// The record's format version.
pub const RECORD_FORMAT: u32 = 1;

/// The etcd key of `host`'s push.
pub fn push_key(host: &str) -> String {
    format!("{STATE_PREFIX}{host}")
}

/// `/etc/capstan/state-push.yaml`: what one host pushes, to whom, through which etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    pub cluster: String,
    /// This host's inventory name (the key in etcd).
    pub host: String,
    pub files: Vec<PushFile>,
    /// age recipients (the backup schedule's); empty: pushed unencrypted.
    pub recipients: Vec<String>,
    /// The etcd members' client URLs.
    pub endpoints: Vec<String>,
    pub ca_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub metrics_file: PathBuf,
}

/// One declared state file on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushFile {
    pub component: String,
    pub path: String,
    pub mode: u32,
    #[serde(default)]
    pub optional: bool,
}

/// One host's push as stored in etcd. `data` is the age ciphertext of the state tar (the tar
/// itself when `recipients` is empty); its content is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct PushRecord {
    pub host: String,
    /// RFC 3339, when the push was written.
    pub time: String,
    /// Size and sha256 of the tar before encryption.
    pub plaintext: ObjectDigest,
    pub recipients: Vec<String>,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for PushRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushRecord")
            .field("host", &self.host)
            .field("time", &self.time)
            .field("plaintext", &self.plaintext)
            .field("recipients", &self.recipients)
            .field("size", &self.data.len())
            .finish()
    }
}

/// The JSON form in etcd.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: u32,
    host: String,
    time: String,
    plaintext: ObjectDigest,
    recipients: Vec<String>,
    /// base64
    data: String,
}

impl PushRecord {
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            format: RECORD_FORMAT,
            host: self.host.clone(),
            time: self.time.clone(),
            plaintext: self.plaintext.clone(),
            recipients: self.recipients.clone(),
            data: data_encoding::BASE64.encode(&self.data),
        };
        serde_json::to_vec(&wire).expect("a record serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<PushRecord, String> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if wire.format != RECORD_FORMAT {
            return Err(format!(
                "format {} (this capstan reads format {RECORD_FORMAT})",
                wire.format
            ));
        }
        OffsetDateTime::parse(&wire.time, &Rfc3339).map_err(|e| format!("time {:?}: {e}", wire.time))?;
        let data = data_encoding::BASE64
            .decode(wire.data.as_bytes())
            .map_err(|e| format!("data: {e}"))?;
        Ok(PushRecord {
            host: wire.host,
            time: wire.time,
            plaintext: wire.plaintext,
            recipients: wire.recipients,
            data,
        })
    }

    fn at(&self) -> OffsetDateTime {
        OffsetDateTime::parse(&self.time, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// Whether this push is encrypted to exactly `recipients` (order and duplicates aside).
    pub fn encrypted_to(&self, recipients: &[String]) -> bool {
        same_recipients(&self.recipients, recipients)
    }
}

fn same_recipients(a: &[String], b: &[String]) -> bool {
    let set = |list: &[String]| list.iter().map(|r| r.trim().to_string()).collect::<BTreeSet<_>>();
    set(a) == set(b)
}

/// Whether a push of a tar with `plaintext` to `recipients` must be written, given the record in
/// etcd (`None`: none, or one this capstan cannot read).
pub fn needs_push(previous: Option<&PushRecord>, plaintext: &ObjectDigest, recipients: &[String]) -> bool {
    match previous {
        None => true,
        Some(record) => record.plaintext != *plaintext || !record.encrypted_to(recipients),
    }
}

/// The newest push among those of `hosts` (by time, then host name for a stable choice).
pub fn newest_push<'r>(records: &'r [PushRecord], hosts: &[String]) -> Option<&'r PushRecord> {
    records
        .iter()
        .filter(|r| hosts.contains(&r.host))
        .max_by(|a, b| (a.at(), &a.host).cmp(&(b.at(), &b.host)))
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("reading {path}: {source}")]
    Config {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    ConfigYaml { path: String, reason: String },
    #[error("{host}: required state file(s) missing: {}", missing.join(", "))]
    Missing { host: String, missing: Vec<String> },
    #[error("{host}: reading {path}: {reason}")]
    ReadFile { host: String, path: String, reason: String },
    #[error("{host}: the state archive: {reason}")]
    Archive { host: String, reason: String },
    #[error("{host}: encrypting the state: {reason}")]
    Encrypt { host: String, reason: String },
    #[error("etcd ({endpoints}): {reason}")]
    Etcd { endpoints: String, reason: String },
    #[error("the pushed state of {host} in etcd ({key}) is unreadable: {reason}")]
    Record { host: String, key: String, reason: String },
    #[error("no host holding components' state ({}) has pushed it to etcd ({STATE_PREFIX}): \
             a backup without it cannot restore them", hosts.join(", "))]
    NothingPushed { hosts: Vec<String> },
}

impl Hint for PushError {
    fn hint(&self) -> Option<String> {
        match self {
            PushError::Missing { .. } => {
                Some("run `capstan apply` to complete the component on this host; the next push follows".into())
            }
            PushError::Config { .. } | PushError::ConfigYaml { .. } => {
                Some("run `capstan backup schedule` again to rewrite it".into())
            }
            PushError::NothingPushed { .. } => Some(
                "on those hosts: `systemctl status capstan-state-push.service` and `journalctl -u \
                 capstan-state-push.service` say why; `capstan backup schedule` installs the push"
                    .into(),
            ),
            PushError::Etcd { .. } => Some("check `capstan status`: is etcd healthy?".into()),
            _ => None,
        }
    }
}

impl PushConfig {
    pub fn load(path: &Path) -> Result<PushConfig, PushError> {
        let text = std::fs::read_to_string(path).map_err(|source| PushError::Config {
            path: path.display().to_string(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|e| PushError::ConfigYaml {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    fn read_pem(&self, path: &Path) -> Result<String, PushError> {
        std::fs::read_to_string(path).map_err(|e| PushError::ReadFile {
            host: self.host.clone(),
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    fn etcd_error(&self, reason: String) -> PushError {
        PushError::Etcd {
            endpoints: self.endpoints.join(","),
            reason,
        }
    }

    async fn client(&self) -> Result<EtcdClient, PushError> {
        let tls = EtcdTls {
            ca_cert_pem: self.read_pem(&self.ca_cert)?,
            client_cert_pem: self.read_pem(&self.client_cert)?,
            client_key_pem: self.read_pem(&self.client_key)?,
        };
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| EtcdEndpoint::parse(e).map_err(|e| self.etcd_error(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        EtcdClient::connect(&endpoints, &tls)
            .await
            .map_err(|e| self.etcd_error(error_chain(&e)))
    }
}

/// The declared files as they are on this host (missing optional ones left out).
pub fn read_local(host: &str, files: &[PushFile]) -> Result<Vec<StateEntry>, PushError> {
    let mut entries = Vec::new();
    let mut missing = Vec::new();
    for file in files {
        match std::fs::read(&file.path) {
            Ok(data) => entries.push(StateEntry {
                component: file.component.clone(),
                path: file.path.clone(),
                mode: file.mode,
                data,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !file.optional {
                    missing.push(file.path.clone());
                }
            }
            Err(e) => {
                return Err(PushError::ReadFile {
                    host: host.into(),
                    path: file.path.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }
    if !missing.is_empty() {
        return Err(PushError::Missing {
            host: host.into(),
            missing,
        });
    }
    Ok(entries)
}

fn digest(data: &[u8]) -> ObjectDigest {
    ObjectDigest {
        size: data.len() as u64,
        sha256: hex::encode(Sha256::digest(data)),
    }
}

/// `plain` encrypted to `recipients` (unchanged when there are none: an unencrypted schedule).
fn encrypt(plain: &[u8], recipients: &[String]) -> Result<Vec<u8>, String> {
    if recipients.is_empty() {
        return Ok(plain.to_vec());
    }
    let parsed = recipients
        .iter()
        .map(|r| crate::ops::parse_recipient(r).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut writer = encryptor.wrap_output(&mut out).map_err(|e| e.to_string())?;
    writer.write_all(plain).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// What one push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// A new record was written: the state (or the recipients) changed.
    Written { files: usize, plaintext: ObjectDigest },
    /// etcd already holds this state for these recipients: nothing written.
    Unchanged { files: usize },
}

/// One push: read the files, archive, compare with etcd's record, encrypt and write if it differs.
pub async fn push_state(config: &PushConfig) -> Result<PushOutcome, PushError> {
    let entries = read_local(&config.host, &config.files)?;
    let plain = archive(&entries).map_err(|e| PushError::Archive {
        host: config.host.clone(),
        reason: e.to_string(),
    })?;
    let plaintext = digest(&plain);
    let client = config.client().await?;
    let key = push_key(&config.host);
    let previous = client
        .get(&key)
        .await
        .map_err(|e| config.etcd_error(error_chain(&e)))?
        // A record this capstan cannot read is replaced.
        .and_then(|bytes| PushRecord::decode(&bytes).ok());
    if !needs_push(previous.as_ref(), &plaintext, &config.recipients) {
        return Ok(PushOutcome::Unchanged { files: entries.len() });
    }
    let data = encrypt(&plain, &config.recipients).map_err(|reason| PushError::Encrypt {
        host: config.host.clone(),
        reason,
    })?;
    let record = PushRecord {
        host: config.host.clone(),
        time: OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_else(|_| OffsetDateTime::now_utc().to_string()),
        plaintext: plaintext.clone(),
        recipients: config.recipients.clone(),
        data,
    };
    client
        .put(&key, &record.encode())
        .await
        .map_err(|e| config.etcd_error(error_chain(&e)))?;
    Ok(PushOutcome::Written {
        files: entries.len(),
        plaintext,
    })
}

/// The push metrics (textfile collector): when it last ran, whether it succeeded, when it last
/// succeeded (carried over from `previous` on a failure).
pub fn render_metrics(cluster: &str, host: &str, at: f64, ok: bool, previous: &str) -> String {
    let labels = format!("cluster=\"{cluster}\",host=\"{host}\"");
    let last_success = if ok {
        Some(at)
    } else {
        previous
            .lines()
            .find(|l| l.starts_with("capstan_state_push_last_success_timestamp_seconds{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let mut text = format!(
        "# HELP capstan_state_push_last_run_timestamp_seconds When this host last pushed its components' state.\n\
         # TYPE capstan_state_push_last_run_timestamp_seconds gauge\n\
         capstan_state_push_last_run_timestamp_seconds{{{labels}}} {at}\n\
         # HELP capstan_state_push_last_result 1 if the last push succeeded (or had nothing to write), else 0.\n\
         # TYPE capstan_state_push_last_result gauge\n\
         capstan_state_push_last_result{{{labels}}} {}\n",
        u8::from(ok)
    );
    if let Some(success) = last_success {
        text.push_str(&format!(
            "# HELP capstan_state_push_last_success_timestamp_seconds When a push last succeeded.\n\
             # TYPE capstan_state_push_last_success_timestamp_seconds gauge\n\
             capstan_state_push_last_success_timestamp_seconds{{{labels}}} {success}\n"
        ));
    }
    text
}

/// [`push_state`], then the metrics written (a failure to write them is returned as a warning).
pub async fn run_push(config: &PushConfig) -> (Result<PushOutcome, PushError>, Option<String>) {
    let result = push_state(config).await;
    let at = OffsetDateTime::now_utc().unix_timestamp() as f64;
    let previous = std::fs::read_to_string(&config.metrics_file).unwrap_or_default();
    let text = render_metrics(&config.cluster, &config.host, at, result.is_ok(), &previous);
    let warning = crate::metrics::write_atomic(&config.metrics_file, &text)
        .err()
        .map(|e| format!("writing metrics to {}: {e}", config.metrics_file.display()));
    (result, warning)
}

/// The records under [`STATE_PREFIX`] of `hosts` (others are ignored: a host no longer in the
/// inventory); one of theirs that cannot be read is an error.
pub fn records_of(values: &[StoredValue], hosts: &[String]) -> Result<Vec<PushRecord>, PushError> {
    let mut records = Vec::new();
    for value in values {
        let Some(host) = value.key.strip_prefix(STATE_PREFIX) else {
            continue;
        };
        if !hosts.iter().any(|h| h == host) {
            continue;
        }
        let record = PushRecord::decode(&value.value).map_err(|reason| PushError::Record {
            host: host.into(),
            key: value.key.clone(),
            reason,
        })?;
        if record.host != host {
            return Err(PushError::Record {
                host: host.into(),
                key: value.key.clone(),
                reason: format!("it names host {}", record.host),
            });
        }
        records.push(record);
    }
    Ok(records)
}

/// The newest push of `hosts` in etcd, or why there is none.
pub async fn fetch_newest(client: &EtcdClient, hosts: &[String]) -> Result<PushRecord, PushError> {
    let values = client.get_prefix(STATE_PREFIX).await.map_err(|e| PushError::Etcd {
        endpoints: client
            .endpoints()
            .iter()
            .map(EtcdEndpoint::as_str)
            .collect::<Vec<_>>()
            .join(","),
        reason: error_chain(&e),
    })?;
    let records = records_of(&values, hosts)?;
    newest_push(&records, hosts)
        .cloned()
        .ok_or_else(|| PushError::NothingPushed { hosts: hosts.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(host: &str, time: &str, sha: &str, recipients: &[&str]) -> PushRecord {
        PushRecord {
            host: host.into(),
            time: time.into(),
            plaintext: ObjectDigest {
                size: 10,
                sha256: sha.into(),
            },
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            data: vec![0, 1, 2, 254, 255],
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let r = record("cp-1", "2026-12-01T19:00:00Z", "ab", &["age1x"]);
        let bytes = r.encode();
        assert_eq!(PushRecord::decode(&bytes).unwrap(), r);
        assert!(!format!("{r:?}").contains("254"), "the data is not in Debug");
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("\"format\":1") && text.contains("\"host\":\"cp-1\""),
            "{text}"
        );
        let future = text.replace("\"format\":1", "\"format\":2");
        assert!(PushRecord::decode(future.as_bytes()).unwrap_err().contains("format 2"));
        let bad_time = text.replace("2026-12-01T19:00:00Z", "yesterday");
        assert!(PushRecord::decode(bad_time.as_bytes()).unwrap_err().contains("time"));
        assert!(PushRecord::decode(b"{}").is_err());
    }

    #[test]
    fn a_push_is_written_only_when_the_state_or_recipients_change() {
        let digest = |sha: &str| ObjectDigest {
            size: 10,
            sha256: sha.into(),
        };
        let recipients = vec!["age1b".to_string(), "age1a".to_string()];
        assert!(needs_push(None, &digest("ab"), &recipients));
        let previous = record("cp-1", "2026-12-01T19:00:00Z", "ab", &["age1a", "age1b"]);
        assert!(!needs_push(Some(&previous), &digest("ab"), &recipients), "order aside");
        assert!(needs_push(Some(&previous), &digest("cd"), &recipients), "content");
        assert!(
            needs_push(Some(&previous), &digest("ab"), &["age1a".to_string()]),
            "recipients"
        );
        let mut other_size = digest("ab");
        other_size.size = 11;
        assert!(needs_push(Some(&previous), &other_size, &recipients));
    }

    #[test]
    fn the_newest_push_of_the_inventory_hosts_is_chosen() {
        let records = vec![
            record("cp-1", "2026-12-01T19:00:00Z", "a", &[]),
            record("cp-2", "2026-12-01T20:00:00.5+01:00", "b", &[]),
            record("cp-3", "2026-12-01T19:30:00Z", "c", &[]),
            record("gone", "2026-12-02T00:00:00Z", "d", &[]),
        ];
        let hosts = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        // cp-2's time is 19:00:00.5 UTC: cp-3 is newest.
        assert_eq!(
            newest_push(&records, &hosts(&["cp-1", "cp-2", "cp-3"])).unwrap().host,
            "cp-3"
        );
        assert_eq!(newest_push(&records, &hosts(&["cp-1", "cp-2"])).unwrap().host, "cp-2");
        assert!(newest_push(&records, &hosts(&["cp-9"])).is_none());
    }

    #[test]
    fn stored_values_are_read_for_the_inventory_hosts_only() {
        let value = |key: &str, value: Vec<u8>| StoredValue {
            key: key.into(),
            value,
            mod_revision: 1,
        };
        let good = record("cp-1", "2026-12-01T19:00:00Z", "a", &[]);
        let hosts = vec!["cp-1".to_string()];
        let values = vec![
            value("/capstan/backup/state/cp-1", good.encode()),
            value("/capstan/backup/state/old", b"garbage".to_vec()),
        ];
        assert_eq!(records_of(&values, &hosts).unwrap(), vec![good.clone()]);
        let wrong_host = vec![value(
            "/capstan/backup/state/cp-1",
            record("cp-2", "2026-12-01T19:00:00Z", "a", &[]).encode(),
        )];
        assert!(records_of(&wrong_host, &hosts)
            .unwrap_err()
            .to_string()
            .contains("names host cp-2"));
        let broken = vec![value("/capstan/backup/state/cp-1", b"{".to_vec())];
        assert!(matches!(records_of(&broken, &hosts), Err(PushError::Record { .. })));
    }

    #[test]
    fn local_files_missing_required_fail_optional_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("a.key");
        std::fs::write(&present, b"secret").unwrap();
        let file = |path: &Path, optional| PushFile {
            component: "comp".into(),
            path: path.display().to_string(),
            mode: 0o600,
            optional,
        };
        let gone = dir.path().join("gone");
        let entries = read_local("cp-1", &[file(&present, false), file(&gone, true)]).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].data, b"secret");
        let err = read_local("cp-1", &[file(&present, false), file(&gone, false)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cp-1: required state file(s) missing: {}", gone.display())
        );
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn encryption_is_to_the_recipients_or_none() {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let sealed = encrypt(b"plain tar", std::slice::from_ref(&recipient)).unwrap();
        assert!(sealed.starts_with(b"age-encryption.org/v1"));
        let decryptor = age::Decryptor::new(sealed.as_slice()).unwrap();
        let mut reader = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut back).unwrap();
        assert_eq!(back, b"plain tar");
        assert_eq!(encrypt(b"plain tar", &[]).unwrap(), b"plain tar");
    }

    #[test]
    fn metrics_keep_the_last_success_over_a_failure() {
        let ok = render_metrics("c", "cp-1", 100.0, true, "");
        assert!(ok.contains("capstan_state_push_last_success_timestamp_seconds{cluster=\"c\",host=\"cp-1\"} 100\n"));
        let failed = render_metrics("c", "cp-1", 200.0, false, &ok);
        assert!(
            failed.contains("capstan_state_push_last_result{cluster=\"c\",host=\"cp-1\"} 0\n"),
            "{failed}"
        );
        assert!(
            failed.contains("last_success_timestamp_seconds{cluster=\"c\",host=\"cp-1\"} 100\n"),
            "{failed}"
        );
    }
}
