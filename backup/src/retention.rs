//! Which backups prune keeps: grandfather-father-son retention, decided purely from ids,
//! completeness and the current time.
//!
//! Among complete backups, newest first, a backup is kept when it is one of the newest
//! `keep_last`, or the newest of its day (UTC) while fewer than `daily` days have a kept daily
//! backup, and likewise per ISO week (`weekly`) and calendar month (`monthly`). Periods without
//! backups don't use up the count, so backups stopping never makes prune delete the last ones.
//! The newest complete backup is always kept. Incomplete backups (no manifest) are deleted once
//! older than a grace period; younger ones may still be being written.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::id::BackupId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub keep_last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

/// The inventory's `backup.retention`.
impl From<capstan_inventory::Retention> for Retention {
    fn from(r: capstan_inventory::Retention) -> Retention {
        Retention {
            keep_last: r.keep_last,
            daily: r.daily,
            weekly: r.weekly,
            monthly: r.monthly,
        }
    }
}

/// How long an incomplete backup is left alone by default: longer than any backup takes.
pub const DEFAULT_INCOMPLETE_GRACE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: BackupId,
    /// When the backup started: the manifest's precise time when there is one, else the id's
    /// (ids only have second precision, so two backups of one second sort by creation time).
    pub created: OffsetDateTime,
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action", content = "reasons")]
pub enum Decision {
    /// Kept, with the rules that keep it (e.g. `last`, `daily`, `newest`, `in-progress`).
    Keep(Vec<&'static str>),
    Delete(&'static str),
}

/// One decision per candidate, in the candidates' order.
pub fn decide(candidates: &[Candidate], retention: &Retention, now: OffsetDateTime, grace: Duration) -> Vec<Decision> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| (candidates[i].created, &candidates[i].id);
        key(b).cmp(&key(a))
    });

    let mut reasons: Vec<Vec<&'static str>> = vec![Vec::new(); candidates.len()];
    let mut days = BTreeSet::new();
    let mut weeks = BTreeSet::new();
    let mut months = BTreeSet::new();
    let mut kept_last = 0u32;
    let mut newest_seen = false;
    for &index in order.iter().filter(|&&i| candidates[i].complete) {
        let date = candidates[index].created.to_offset(time::UtcOffset::UTC).date();
        let reasons = &mut reasons[index];
        if !newest_seen {
            newest_seen = true;
            reasons.push("newest");
        }
        if kept_last < retention.keep_last {
            kept_last += 1;
            reasons.push("last");
        }
        if (days.len() as u32) < retention.daily && days.insert(date) {
            reasons.push("daily");
        }
        let (iso_year, week, _) = date.to_iso_week_date();
        if (weeks.len() as u32) < retention.weekly && weeks.insert((iso_year, week)) {
            reasons.push("weekly");
        }
        if (months.len() as u32) < retention.monthly && months.insert((date.year(), date.month() as u8)) {
            reasons.push("monthly");
        }
    }

    candidates
        .iter()
        .zip(reasons)
        .map(|(candidate, reasons)| {
            if candidate.complete {
                if reasons.is_empty() {
                    Decision::Delete("outside retention")
                } else {
                    Decision::Keep(reasons)
                }
            } else if now - candidate.created > grace {
                Decision::Delete("incomplete")
            } else {
                Decision::Keep(vec!["in-progress"])
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn id(at: OffsetDateTime, n: u16) -> BackupId {
        BackupId::with_suffix(at, n)
    }

    fn complete(at: OffsetDateTime) -> Candidate {
        Candidate {
            id: id(at, 0),
            created: at,
            complete: true,
        }
    }

    fn kept(candidates: &[Candidate], retention: Retention, now: OffsetDateTime) -> Vec<String> {
        decide(candidates, &retention, now, DEFAULT_INCOMPLETE_GRACE)
            .into_iter()
            .zip(candidates)
            .filter(|(d, _)| matches!(d, Decision::Keep(_)))
            .map(|(_, c)| c.id.to_string()[..15].to_string())
            .collect()
    }

    const NONE: Retention = Retention {
        keep_last: 0,
        daily: 0,
        weekly: 0,
        monthly: 0,
    };

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let now = datetime!(2026-11-28 12:00 UTC);
        let backups: Vec<Candidate> = (0..5)
            .map(|h| complete(datetime!(2026-11-28 00:00 UTC) + time::Duration::hours(h)))
            .collect();
        let retention = Retention { keep_last: 2, ..NONE };
        assert_eq!(kept(&backups, retention, now), ["20261128T030000", "20261128T040000"]);
    }

    #[test]
    fn daily_weekly_monthly_keep_the_newest_of_each_period() {
        let now = datetime!(2026-11-28 12:00 UTC);
        // Two backups a day for 70 days, at 01:00 and 13:00.
        let start = datetime!(2026-09-19 01:00 UTC);
        let backups: Vec<Candidate> = (0..140)
            .map(|i| complete(start + time::Duration::hours(12 * i)))
            .collect();
        let daily = kept(&backups, Retention { daily: 3, ..NONE }, now);
        assert_eq!(daily, ["20261125T130000", "20261126T130000", "20261127T130000"]);
        let weekly = kept(&backups, Retention { weekly: 2, ..NONE }, now);
        // 2026-11-27 is a Friday: its week's newest backup, and the previous week's (Sunday 22nd).
        assert_eq!(weekly, ["20261122T130000", "20261127T130000"]);
        let monthly = kept(&backups, Retention { monthly: 3, ..NONE }, now);
        assert_eq!(monthly, ["20260930T130000", "20261031T130000", "20261127T130000"]);
        let combined = kept(
            &backups,
            Retention {
                keep_last: 1,
                daily: 2,
                weekly: 2,
                monthly: 2,
            },
            now,
        );
        assert_eq!(
            combined,
            [
                "20261031T130000",
                "20261122T130000",
                "20261126T130000",
                "20261127T130000"
            ]
        );
    }

    #[test]
    fn backups_of_the_same_second_are_ordered_by_creation_time() {
        let now = datetime!(2026-11-28 12:00 UTC);
        let second = datetime!(2026-11-28 11:00 UTC);
        let earlier = Candidate {
            id: id(second, 0xffff),
            created: second + time::Duration::milliseconds(100),
            complete: true,
        };
        let later = Candidate {
            id: id(second, 0x0001),
            created: second + time::Duration::milliseconds(900),
            complete: true,
        };
        let decisions = decide(
            &[earlier, later],
            &Retention { keep_last: 1, ..NONE },
            now,
            DEFAULT_INCOMPLETE_GRACE,
        );
        assert_eq!(
            decisions,
            [
                Decision::Delete("outside retention"),
                Decision::Keep(vec!["newest", "last"])
            ]
        );
    }

    #[test]
    fn the_newest_complete_backup_is_always_kept() {
        let now = datetime!(2026-11-28 12:00 UTC);
        let backups = vec![
            complete(datetime!(2026-01-01 00:00 UTC)),
            complete(datetime!(2026-02-01 00:00 UTC)),
        ];
        assert_eq!(kept(&backups, NONE, now), ["20260201T000000"]);
    }

    #[test]
    fn incomplete_backups_are_deleted_after_the_grace_period_only() {
        let now = datetime!(2026-11-28 12:00 UTC);
        let backups = vec![
            complete(datetime!(2026-11-27 00:00 UTC)),
            Candidate {
                id: id(datetime!(2026-11-28 11:30 UTC), 1),
                created: datetime!(2026-11-28 11:30 UTC),
                complete: false,
            },
            Candidate {
                id: id(datetime!(2026-11-28 10:00 UTC), 2),
                created: datetime!(2026-11-28 10:00 UTC),
                complete: false,
            },
        ];
        let decisions = decide(
            &backups,
            &Retention { keep_last: 5, ..NONE },
            now,
            DEFAULT_INCOMPLETE_GRACE,
        );
        assert_eq!(
            decisions,
            [
                Decision::Keep(vec!["newest", "last"]),
                Decision::Keep(vec!["in-progress"]),
                Decision::Delete("incomplete"),
            ]
        );
    }
}
