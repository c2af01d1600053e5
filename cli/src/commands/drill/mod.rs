//! `capstan drill` (a restore into a throwaway target, verified, reported: `run.rs`) and
//! `capstan drill schedule` / the timer's `drill run` (`schedule.rs`). See docs/restore.md.

mod run;
mod schedule;

use std::path::Path;
use std::process::ExitCode;

use crate::cli::DrillArgs;
use crate::output::Output;

pub fn run(mut args: DrillArgs, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    match args.command.take() {
        Some(command) => schedule::run(command, inventory, out),
        None => run::drill(args, inventory, out),
    }
}
