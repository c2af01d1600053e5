//! `capstan logs`: the cluster's journals, from a logging host or the hosts themselves
//! (`capstan_logging::logs`). Entries on stdout (text lines, or one JSON object per line with
//! `--output json`), the source on stderr.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use capstan_logging::logs::{read_logs, LogQuery};

use crate::cli::LogsArgs;
use crate::commands::inventory::load;
use crate::output::{Failure, Output};

pub fn run(args: LogsArgs, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    let cluster = load(inventory)?;
    let query = LogQuery {
        hosts: args.hosts,
        units: args.units,
        since: args.since,
        until: args.until,
        grep: args.grep,
        lines: args.lines,
        follow: args.follow,
    };
    let json = out.json();
    let mut stdout = std::io::stdout().lock();
    let mut failed_write = None;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(read_logs(
        &cluster,
        &query,
        &mut |source| out.status(format!("source: {source}")),
        &mut |entry| {
            let line = match json {
                true => entry.json().to_string(),
                false => entry.text_line(),
            };
            if let Err(e) = writeln!(stdout, "{line}").and_then(|_| stdout.flush()) {
                failed_write.get_or_insert(e);
            }
        },
    ));
    result.map_err(|e| Failure::of(&e))?;
    if let Some(e) = failed_write {
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
}
