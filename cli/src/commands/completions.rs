//! `capstan completions` and `capstan man`: generated from the one clap definition (`cli.rs`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::output::Output;

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    clap_complete::generate(shell, &mut Cli::command(), "capstan", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn man(out_dir: Option<PathBuf>, out: &Output) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(cmd, &dir)?;
            out.status(format!("wrote man pages to {}", dir.display()));
        }
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
    }
    Ok(ExitCode::SUCCESS)
}
