//! Parses and validates the inventory YAML into a resolved cluster model.
//!
//! Reading happens in two steps, like ripgrep's argument handling: [`yaml`] builds a tree that
//! keeps source positions, then `validate` converts it into a [`Cluster`] while collecting every
//! problem as a [`Diagnostic`], so one run reports all mistakes in a file.
//!
//! Every input is read with bounded resources: files larger than [`MAX_FILE_BYTES`] are refused,
//! and the YAML reader limits nesting depth, the number of values and what aliases copy.

mod calendar;
mod diagnostic;
mod kubespray;
mod model;
mod validate;
mod values;
mod yaml;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use calendar::check_calendar;
pub use diagnostic::{Diagnostic, Diagnostics, Report, Severity, MAX_DIAGNOSTICS};
pub use kubespray::{import_kubespray, import_kubespray_file, KubesprayFormat};
pub use model::*;
pub use values::{format_duration, parse_duration};
pub use yaml::{MAX_ALIAS_BYTES, MAX_DEPTH, MAX_NODES};

/// Largest file read as an inventory (or as a source for `inventory import`).
pub const MAX_FILE_BYTES: usize = 8 << 20;

/// Reads and validates the inventory at `path`; relative paths inside resolve against its directory.
///
/// Warnings (see [`Severity::Warning`]) do not reject the inventory; they are in [`Cluster::warnings`].
pub fn load(path: &Path) -> Result<Cluster, Diagnostics> {
    let file_name = path.display().to_string();
    let text = read_text(path, &file_name, "inventory")?;
    let absolute = validate::absolute(path);
    let base_dir = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
    check(&text, &file_name, base_dir, absolute)
}

/// Validates inventory `text`; `file_name` appears in diagnostics and relative paths resolve
/// against `base_dir`.
pub fn parse_str(text: &str, file_name: &str, base_dir: &Path) -> Result<Cluster, Diagnostics> {
    let base_dir = validate::absolute(base_dir);
    let source_path = base_dir.join(file_name);
    check(text, file_name, base_dir, source_path)
}

/// Reads a whole text file of at most [`MAX_FILE_BYTES`]; a non-UTF-8 byte is reported at its
/// line and column.
pub(crate) fn read_text(path: &Path, file_name: &str, what: &str) -> Result<String, Diagnostics> {
    let fail = |message: String, hint: &str| {
        Diagnostics(vec![Diagnostic::file_error(file_name, message, Some(hint.to_string()))])
    };
    let file = std::fs::File::open(path).map_err(|error| {
        fail(
            format!("cannot read {what}: {error}"),
            "check the path and its permissions",
        )
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| {
            fail(
                format!("cannot read {what}: {error}"),
                "check the path and its permissions",
            )
        })?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(fail(
            format!(
                "the {what} is larger than {} MiB (limit of the inventory reader)",
                MAX_FILE_BYTES >> 20
            ),
            "check that the path names the right file",
        ));
    }
    decode(bytes, file_name)
}

/// UTF-8 text from `bytes`, or a diagnostic at the first invalid byte.
pub(crate) fn decode(bytes: Vec<u8>, file_name: &str) -> Result<String, Diagnostics> {
    String::from_utf8(bytes).map_err(|error| {
        let bytes = error.as_bytes();
        let offset = error.utf8_error().valid_up_to();
        let before = &bytes[..offset];
        let line_start = before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        // Valid up to `offset`, so the line's start decodes.
        let column = std::str::from_utf8(&before[line_start..]).map_or(1, |s| s.chars().count() + 1);
        let mut sink = diagnostic::Sink::new(file_name);
        sink.error_with_hint(
            yaml::Pos { line, column },
            format!(
                "invalid UTF-8: byte 0x{:02x} at byte offset {offset} is not valid UTF-8",
                bytes[offset]
            ),
            Some("save the file as UTF-8".into()),
        );
        match sink.finish::<()>(None) {
            Err(diagnostics) => diagnostics,
            Ok(_) => unreachable!("an error was recorded"),
        }
    })
}

fn check(text: &str, file_name: &str, base_dir: PathBuf, source_path: PathBuf) -> Result<Cluster, Diagnostics> {
    let mut sink = diagnostic::Sink::new(file_name);
    if text.len() > MAX_FILE_BYTES {
        sink.error(
            yaml::Pos { line: 1, column: 1 },
            format!(
                "the inventory is larger than {} MiB (limit of the inventory reader)",
                MAX_FILE_BYTES >> 20
            ),
        );
        return sink.finish::<Cluster>(None).map(|(cluster, _)| cluster);
    }
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(error) => {
            sink.error_with_hint(error.pos, format!("invalid YAML: {}", error.message), error.hint);
            return sink.finish::<Cluster>(None).map(|(cluster, _)| cluster);
        }
    };
    let paths = validate::PathContext {
        base_dir,
        home: std::env::var_os("HOME")
            .filter(|home| !home.is_empty())
            .map(PathBuf::from),
    };
    let cluster = validate::cluster(&mut sink, root.as_ref(), &paths, source_path);
    let (mut cluster, warnings) = sink.finish(cluster)?;
    cluster.warnings = warnings;
    Ok(cluster)
}
