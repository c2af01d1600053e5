//! `capstan backup ...` (being built; see the backup issue).

use std::path::Path;
use std::process::ExitCode;

use crate::cli::BackupCommand;
use crate::output::{Failure, Output};

pub fn run(_cmd: BackupCommand, _inventory: Option<&Path>, _out: &Output) -> anyhow::Result<ExitCode> {
    Err(Failure::new("backups are not available yet").into())
}
