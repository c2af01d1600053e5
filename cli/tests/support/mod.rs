//! Shared by the CLI's lab tests: running the `capstan` binary under test and keeping its output.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `capstan [-i inventory] args...` with `env` added, logging the command, exit code and time.
pub fn run_capstan(inventory: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Run {
    let started = Instant::now();
    let mut command = Command::new(env!("CARGO_BIN_EXE_capstan"));
    if let Some(inventory) = inventory {
        command.arg("-i").arg(inventory);
    }
    let output = command
        .args(args)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run capstan");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!(
        "capstan {} -> {} in {:.1}s",
        args.join(" "),
        run.code,
        started.elapsed().as_secs_f64()
    );
    run
}
