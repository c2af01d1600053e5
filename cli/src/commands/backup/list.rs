//! `capstan backup list`: the backups in the target, newest first.

use std::process::ExitCode;
use std::time::SystemTime;

use capstan_backup::{BackupSummary, StoreUrl};

use super::open;
use crate::cli::BackupTargetArgs;
use crate::format::{header, human_age, human_bytes, or_dash, table, yes_no};
use crate::output::{Failure, Output};

pub(super) async fn list(url: &StoreUrl, args: &BackupTargetArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let store = open(url, args).await?;
    let backups = capstan_backup::list(&store).await.map_err(|e| Failure::of(&e))?;
    if out.json() {
        out.print_json(&backups)?;
    } else {
        print!("{}", render_list(&backups, SystemTime::now()));
    }
    Ok(ExitCode::SUCCESS)
}

fn render_list(backups: &[BackupSummary], now: SystemTime) -> String {
    let mut rows = vec![header(&["ID", "AGE", "SIZE", "REVISION", "ENCRYPTED", "COMPLETE"])];
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for backup in backups.iter().rev() {
        let age = (now - backup.id.timestamp().unix_timestamp()).max(0);
        rows.push(vec![
            backup.id.to_string(),
            human_age(age),
            human_bytes(backup.size),
            or_dash(backup.revision),
            // An unencrypted backup holds the CA key in the clear: shouted.
            or_dash(backup.encrypted.map(|e| if e { "yes" } else { "NO" })),
            yes_no(backup.complete),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_backup::BackupId;

    #[test]
    fn list_shows_newest_first_with_ages() {
        let id = BackupId::parse("20261128T041500Z-3f9a").unwrap();
        let backups = vec![BackupSummary {
            id: id.clone(),
            created: "2026-11-28T04:15:00Z".into(),
            size: 3 * 1024 * 1024,
            revision: Some(42),
            encrypted: Some(true),
            complete: true,
            cluster: Some("demo".into()),
            problem: None,
        }];
        let now =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(id.timestamp().unix_timestamp() as u64 + 7300);
        assert_eq!(
            render_list(&backups, now),
            "ID                     AGE  SIZE     REVISION  ENCRYPTED  COMPLETE\n\
             20261128T041500Z-3f9a  2h   3.0 MiB  42        yes        yes\n"
        );
    }
}
