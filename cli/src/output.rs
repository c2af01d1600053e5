//! Where output goes and how it looks: data on stdout, everything else on stderr. The one
//! printer every command writes through; library code gets its reporter and progress from here.

use std::process::ExitCode;
use std::sync::Arc;

use capstan_backup::schedule_install::InstallError;
use capstan_provisioner::component::RunContext;
use capstan_provisioner::hint::Hint;
use capstan_provisioner::report::{render_changes, render_summary, Reporter, RunReport};
use capstan_provisioner::runner::{self, NoProgress, Progress};

use crate::cli::OutputFormat;

/// An error already explained to the user, carrying the exit code and an optional hint.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub hint: Option<String>,
    pub exit_code: u8,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: None,
            exit_code: 1,
        }
    }
    /// A library error: its message, and its [`Hint`] when it has one.
    pub fn of<E: std::fmt::Display + Hint + ?Sized>(error: &E) -> Self {
        Failure::new(error.to_string()).maybe_hint(error.hint())
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
    pub fn code(mut self, code: u8) -> Self {
        self.exit_code = code;
        self
    }
}

/// A schedule install error as the user sees it: a mistake in what was asked exits 2.
impl From<InstallError> for Failure {
    fn from(error: InstallError) -> Failure {
        let failure = Failure::of(&error);
        if error.is_usage() {
            failure.code(2)
        } else {
            failure
        }
    }
}

pub struct Output {
    pub format: OutputFormat,
    pub verbose: u8,
    pub quiet: bool,
    pub color: bool,
}

impl Output {
    pub fn new(format: OutputFormat, verbose: u8, quiet: bool) -> Self {
        Output {
            format,
            verbose,
            quiet,
            color: runner::color_enabled(),
        }
    }

    pub fn init_tracing(&self) {
        let level = match (self.quiet, self.verbose) {
            (true, _) => "error",
            (false, 0) => "warn",
            (false, 1) => "info",
            (false, 2) => "debug",
            _ => "trace",
        };
        let filter = tracing_subscriber::EnvFilter::try_from_env("CAPSTAN_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(self.color)
            .with_target(false)
            .without_time()
            .init();
    }

    pub fn json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// A progress or status line for humans (stderr; silent with `-q`).
    pub fn status(&self, line: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    /// Where library code writes its step lines: stderr, or nowhere with `-q`.
    pub fn reporter(&self) -> Reporter {
        if self.quiet {
            Reporter::sink()
        } else {
            Reporter::stderr()
        }
    }

    /// Live per-host progress of operation runs: bars on a terminal, lines otherwise, none with `-q`.
    pub fn progress(&self) -> Arc<dyn Progress> {
        if self.quiet {
            Arc::new(NoProgress)
        } else {
            runner::stderr_progress()
        }
    }

    /// How a cluster run (plan, apply, reset) reports: this output's progress and step lines.
    pub fn run_context(&self, mode: runner::Mode, concurrency: usize) -> RunContext {
        RunContext {
            mode,
            concurrency: concurrency.max(1),
            progress: self.progress(),
            out: self.reporter(),
        }
    }

    /// Progress lines of a lab coming up (`lab: ...` on stderr), none with `-q`.
    pub fn lab_progress(&self) -> capstan_lab::Progress {
        if self.quiet {
            Arc::new(|_: &str| {})
        } else {
            capstan_lab::stderr_progress()
        }
    }

    /// Print a value as pretty JSON on stdout.
    pub fn print_json<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }

    /// The end of a run of operations on the members (schedule installs and removals): the
    /// changes (dry run or `-v`) and the summary on stdout, a tally on stderr, and the exit status;
    /// `rerun` is the command the hint suggests after a failure.
    pub fn finish_run(&self, report: &RunReport, dry_run: bool, what: &str, rerun: &str) -> anyhow::Result<ExitCode> {
        if self.json() {
            self.print_json(&serde_json::json!({ "dry_run": dry_run, "summary": report }))?;
        } else {
            if dry_run || self.verbose > 0 {
                print!("{}", render_changes(report, self.color, false));
            }
            print!("{}", render_summary(report, self.color));
        }
        let totals = report.totals();
        self.status(format!(
            "{what}{} in {:.1}s: {} ok, {} {}, {} failed",
            if dry_run { " (dry run, nothing changed)" } else { "" },
            report.elapsed.as_secs_f64(),
            totals.ok,
            totals.changed,
            if dry_run { "would change" } else { "changed" },
            totals.failed
        ));
        if report.success() {
            return Ok(ExitCode::SUCCESS);
        }
        Err(Failure::new(format!("failed on {}", report.failed_hosts().join(", ")))
            .hint(format!("see the errors above; fix them and run `{rerun}` again"))
            .into())
    }

    pub fn report_error(&self, err: &anyhow::Error) {
        let (prefix, hint_prefix) = if self.color {
            ("\x1b[1;31merror\x1b[0m", "\x1b[1;36mhint\x1b[0m")
        } else {
            ("error", "hint")
        };
        match err.downcast_ref::<Failure>() {
            Some(failure) => {
                eprintln!("{prefix}: {}", failure.message);
                if let Some(hint) = &failure.hint {
                    eprintln!("{hint_prefix}: {hint}");
                }
            }
            None => {
                eprintln!("{prefix}: {err:#}");
            }
        }
    }
}
