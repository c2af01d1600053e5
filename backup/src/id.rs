//! Backup ids: `YYYYMMDDTHHMMSSZ-xxxx`, a UTC timestamp (so ids sort by age) and 4 random hex
//! digits (so two backups in the same second don't collide).

use std::fmt;
use std::io::Read;

use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

use crate::error::BackupError;

const TIMESTAMP_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct BackupId(String);

impl BackupId {
    /// A new id for a backup started at `now`.
    pub fn generate(now: OffsetDateTime) -> BackupId {
        let mut random = [0u8; 2];
        // The suffix only has to differ between backups of the same second; should urandom be
        // unreadable, the sub-second clock is still good enough for that.
        if std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .is_err()
        {
            random = (now.nanosecond() as u16).to_be_bytes();
        }
        Self::with_suffix(now, u16::from_be_bytes(random))
    }

    pub fn with_suffix(now: OffsetDateTime, suffix: u16) -> BackupId {
        let utc = now.to_offset(UtcOffset::UTC);
        let stamp = utc
            .format(TIMESTAMP_FORMAT)
            .expect("the format has only numeric fields");
        BackupId(format!("{stamp}-{suffix:04x}"))
    }

    pub fn parse(text: &str) -> Result<BackupId, BackupError> {
        let invalid = || BackupError::InvalidId { id: text.to_string() };
        let (stamp, suffix) = text.split_once('-').ok_or_else(invalid)?;
        if suffix.len() != 4 || !suffix.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(invalid());
        }
        PrimitiveDateTime::parse(stamp, TIMESTAMP_FORMAT).map_err(|_| invalid())?;
        Ok(BackupId(text.to_string()))
    }

    /// When the backup was started (UTC, second precision).
    pub fn timestamp(&self) -> OffsetDateTime {
        let stamp = &self.0[..self.0.len() - 5];
        PrimitiveDateTime::parse(stamp, TIMESTAMP_FORMAT)
            .expect("ids are validated on construction")
            .assume_utc()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn ids_are_sortable_timestamps_with_a_suffix() {
        let id = BackupId::with_suffix(datetime!(2026-11-28 04:15:00 UTC), 0x3f9a);
        assert_eq!(id.as_str(), "20261128T041500Z-3f9a");
        assert_eq!(id.timestamp(), datetime!(2026-11-28 04:15:00 UTC));
        assert_eq!(BackupId::parse("20261128T041500Z-3f9a").unwrap(), id);
        let later = BackupId::with_suffix(datetime!(2026-11-28 04:15:01 UTC), 0);
        assert!(later > id);
    }

    #[test]
    fn offsets_are_normalized_to_utc() {
        let id = BackupId::with_suffix(datetime!(2026-11-28 05:15:00 +01:00), 1);
        assert_eq!(id.as_str(), "20261128T041500Z-0001");
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "latest",
            "20261128T041500Z",
            "20261128T041500Z-3F9A",
            "20261128T041500Z-3f9",
            "20261328T041500Z-3f9a",
            "20261128T041500-3f9a",
            "../20261128T041500Z-3f9a",
        ] {
            assert!(BackupId::parse(bad).is_err(), "{bad}");
        }
    }
}
