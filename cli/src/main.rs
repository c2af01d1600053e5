//! The `capstan` binary: a thin layer over the library crates.
//!
//! Data goes to stdout (text or `--output json`), logs and progress to stderr. Errors end with a
//! `hint:` line when there is something useful to suggest; user errors never print a backtrace.

mod cli;
mod cmd_backup;
mod cmd_check;
mod cmd_drill;
mod cmd_drill_schedule;
mod cmd_etcd;
mod cmd_inventory;
mod cmd_lab;
mod cmd_restore;
mod components;
mod output;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};
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
    match cli.command {
        Command::Lab(args) => cmd_lab::run(args, out),
        Command::Inventory(args) => cmd_inventory::run(args, cli.inventory.as_deref(), out),
        Command::Init { out: path, force } => init(&path, force, out),
        Command::Check(args) => cmd_check::run(args, cli.inventory.as_deref(), out),
        Command::Plan(args) => cmd_etcd::apply(args, true, cli.inventory.as_deref(), out),
        Command::Apply(args) => cmd_etcd::apply(args, false, cli.inventory.as_deref(), out),
        Command::Status(args) => cmd_etcd::status(args, cli.inventory.as_deref(), out),
        Command::Etcd(cmd) => cmd_etcd::etcd(cmd, cli.inventory.as_deref(), out),
        Command::Backup(cmd) => cmd_backup::run(cmd, cli.inventory.as_deref(), out),
        Command::Restore(args) => cmd_restore::restore(args, cli.inventory.as_deref(), out),
        Command::Drill(mut args) => match args.command.take() {
            Some(command) => cmd_drill_schedule::run(command, cli.inventory.as_deref(), out),
            None => cmd_drill::drill(args, cli.inventory.as_deref(), out),
        },
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "capstan", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out_dir } => {
            let cmd = Cli::command();
            match out_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    clap_mangen::generate_to(cmd, &dir)?;
                    eprintln!("wrote man pages to {}", dir.display());
                }
                None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The starter inventory is the documented example, so the two never drift apart.
const STARTER_INVENTORY: &str = include_str!("../../examples/inventory.yaml");

fn init(path: &std::path::Path, force: bool, out: &Output) -> anyhow::Result<ExitCode> {
    if path.exists() && !force {
        return Err(
            Failure::new(format!("{} already exists; nothing written", path.display()))
                .hint("pass --force to overwrite it, or --out FILE to write elsewhere")
                .into(),
        );
    }
    std::fs::write(path, STARTER_INVENTORY)
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))?;
    out.status(format!(
        "wrote {}: edit the hosts, then run `capstan -i {} inventory check`",
        path.display(),
        path.display()
    ));
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}
