//! `capstan restore` and `capstan drill` (being built; see the restore issue).

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{DrillArgs, RestoreArgs};
use crate::output::{Failure, Output};

pub fn restore(_args: RestoreArgs, _inventory: Option<&Path>, _out: &Output) -> anyhow::Result<ExitCode> {
    Err(Failure::new("restore is not available yet").into())
}

pub fn drill(_args: DrillArgs, _inventory: Option<&Path>, _out: &Output) -> anyhow::Result<ExitCode> {
    Err(Failure::new("drills are not available yet").into())
}
