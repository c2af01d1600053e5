//! Where output goes and how it looks: data on stdout, everything else on stderr.

use std::io::IsTerminal;

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
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn code(mut self, code: u8) -> Self {
        self.exit_code = code;
        self
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
        let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal();
        Output {
            format,
            verbose,
            quiet,
            color,
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

    /// Print a value as pretty JSON on stdout.
    pub fn print_json<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
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

/// Render rows as an aligned text table (first row is the header).
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["HOST".into(), "OK".into(), "CHANGED".into()],
            vec!["demo-1".into(), "12".into(), "0".into()],
        ];
        assert_eq!(table(&rows), "HOST    OK  CHANGED\ndemo-1  12  0\n");
    }
}
