//! The `capstan` binary: a thin layer over the library crates.
//!
//! Data goes to stdout (text or `--output json`), logs and progress to stderr. Errors end with a
//! `hint:` line when there is something useful to suggest; user errors never print a backtrace.
//! `cli.rs` defines every flag, `commands/` holds one module per command group, `output.rs` is
//! the one printer and `format.rs` how values look.

mod cli;
mod commands;
mod components;
mod format;
mod output;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use commands::{backup, check, completions, drill, etcd, init, inventory, kubeconfig, lab, lock, logs, reset, restore};
use output::{Failure, Output};

fn main() -> ExitCode {
    // Behave like other Unix tools when stdout is closed early (`capstan ... | head`): exit quietly
    // instead of panicking on a broken pipe.
    // SAFETY: resetting a signal disposition to its default before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let out = Output::new(cli.output, cli.verbose, cli.quiet);
    out.init_tracing();
    capstan_kubernetes::upgrade_apply::set_pre_upgrade_backup(commands::backup::create::pre_upgrade_backup);
    let result = run(cli, &out);
    match result {
        Ok(code) => code,
        Err(err) => {
            out.report_error(&err);
            ExitCode::from(err.downcast_ref::<Failure>().map(|f| f.exit_code).unwrap_or(1))
        }
    }
}

fn run(cli: Cli, out: &Output) -> anyhow::Result<ExitCode> {
    let inventory = cli.inventory.as_deref();
    match cli.command {
        Command::Lab(args) => lab::run(args, out),
        Command::Inventory(args) => inventory::run(args, inventory, out),
        Command::Init { out: path, force } => init::init(&path, force, out),
        Command::Check(args) => check::run(args, inventory, out),
        Command::Plan(args) => etcd::apply(args, true, inventory, out),
        Command::Apply(args) => etcd::apply(args, false, inventory, out),
        Command::Status(args) => etcd::status(args, inventory, out),
        Command::Kubeconfig { out: path } => kubeconfig::run(path.as_deref(), inventory, out),
        Command::Etcd(cmd) => etcd::etcd(cmd, inventory, out),
        Command::Backup(cmd) => backup::run(cmd, inventory, out),
        Command::Restore(args) => restore::restore(args, inventory, out),
        Command::Drill(args) => drill::run(args, inventory, out),
        Command::Logs(args) => logs::run(args, inventory, out),
        Command::Reset(args) => reset::reset(args, inventory, out),
        Command::Unlock(args) => lock::unlock(args, inventory, out),
        Command::Completions { shell } => completions::completions(shell),
        Command::Man { out_dir } => completions::man(out_dir, out),
    }
}
