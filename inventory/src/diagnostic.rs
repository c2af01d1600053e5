//! Errors found in an inventory, each tied to a position in the file.

use std::fmt;

use serde::Serialize;

use crate::values::escape_all;
use crate::yaml::Pos;

/// Longest message kept, in bytes; values inside messages are already cut short, this is the
/// last line of defence.
const MAX_MESSAGE_BYTES: usize = 2048;
/// Most diagnostics kept for one file; a generated or corrupted file can hold millions of mistakes.
pub const MAX_DIAGNOSTICS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The inventory is rejected.
    Error,
    /// Worth fixing, but the inventory is still usable (for example a key file that does not exist yet).
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem in an inventory file.
///
/// `line` and `column` are 1-based; both are 0 when the problem concerns the whole file (for
/// example when it cannot be read). Messages never contain raw control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
    /// What to do about it, when there is something more specific than the message. Not part
    /// of the one-line text form (which the message alone must make clear), but of the JSON one.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem with the whole file, such as it being unreadable.
    pub fn file_error(file: &str, message: impl Into<String>, hint: Option<String>) -> Self {
        Diagnostic {
            file: escape_all(file),
            line: 0,
            column: 0,
            severity: Severity::Error,
            message: clean(message.into()),
            hint: hint.map(clean),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}: {}", self.file, self.severity, self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.column, self.severity, self.message
            )?;
        }
        Ok(())
    }
}

/// Every problem found in one inventory file, ordered by position.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

/// What `--output json` prints for a rejected inventory.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub valid: bool,
    pub errors: usize,
    pub warnings: usize,
    pub diagnostics: &'a [Diagnostic],
}

impl Diagnostics {
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn errors(&self) -> usize {
        self.0.iter().filter(|d| d.severity == Severity::Error).count()
    }

    /// A serialisable summary listing every diagnostic (file, line, column, severity, message, hint).
    pub fn report(&self) -> Report<'_> {
        let errors = self.errors();
        Report {
            valid: errors == 0,
            errors,
            warnings: self.0.len() - errors,
            diagnostics: &self.0,
        }
    }

    /// The closing advice after the list: positional problems are fixed in the file, a file
    /// that could not be read at all needs something else.
    pub fn closing_hint(&self) -> String {
        let whole_file = self.0.iter().find(|d| d.line == 0 && d.severity == Severity::Error);
        match whole_file {
            Some(diagnostic) => diagnostic
                .hint
                .clone()
                .unwrap_or_else(|| "check the inventory path; see docs/inventory.md".into()),
            None => "every problem above is listed with file:line:column; see docs/inventory.md".into(),
        }
    }
}

impl fmt::Display for Diagnostics {
    /// One `file:line:col: error: message` line per problem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}
impl std::error::Error for Diagnostics {}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Escapes control characters and caps the length of a message.
fn clean(message: String) -> String {
    let mut message = escape_all(&message);
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// Collects diagnostics for one file while it is being checked.
pub(crate) struct Sink {
    file: String,
    found: Vec<Diagnostic>,
    dropped: usize,
}

impl Sink {
    pub fn new(file: &str) -> Self {
        Sink {
            file: escape_all(file),
            found: Vec::new(),
            dropped: 0,
        }
    }

    fn push(&mut self, pos: Pos, severity: Severity, message: String, hint: Option<String>) {
        if self.found.len() >= MAX_DIAGNOSTICS {
            self.dropped += 1;
            return;
        }
        self.found.push(Diagnostic {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            severity,
            message: clean(message),
            hint: hint.map(clean),
        });
    }

    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.push(pos, Severity::Error, message.into(), None);
    }

    pub fn error_with_hint(&mut self, pos: Pos, message: impl Into<String>, hint: Option<String>) {
        self.push(pos, Severity::Error, message.into(), hint);
    }

    pub fn warning(&mut self, pos: Pos, message: impl Into<String>, hint: Option<String>) {
        self.push(pos, Severity::Warning, message.into(), hint);
    }

    /// Errors so far (warnings do not count).
    pub fn count(&self) -> usize {
        self.found.iter().filter(|d| d.severity == Severity::Error).count() + self.dropped
    }

    pub fn has_errors(&self) -> bool {
        self.count() > 0
    }

    /// The value with its warnings, or every diagnostic when there is an error (or no value).
    pub fn finish<T>(mut self, value: Option<T>) -> Result<(T, Diagnostics), Diagnostics> {
        // Conversion and cross-host checks run in separate passes; sorting restores file order.
        self.found.sort_by_key(|d| (d.line, d.column));
        if self.dropped > 0 {
            let last = self.found.last().map_or(Pos::default(), |d| Pos {
                line: d.line,
                column: d.column,
            });
            self.found.push(Diagnostic {
                file: self.file.clone(),
                line: last.line,
                column: last.column,
                severity: Severity::Error,
                message: format!(
                    "... and {} more problems (only the first {MAX_DIAGNOSTICS} are listed)",
                    self.dropped
                ),
                hint: None,
            });
        }
        match value {
            Some(value) if !self.has_errors() => Ok((value, Diagnostics(self.found))),
            // A rejected file lists its errors only; warnings follow once it is accepted.
            _ => {
                self.found.retain(|d| d.severity == Severity::Error);
                Err(Diagnostics(self.found))
            }
        }
    }
}
