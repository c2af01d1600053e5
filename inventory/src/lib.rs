//! Parses and validates the inventory YAML into a resolved cluster model.
//!
//! Reading happens in two steps, like ripgrep's argument handling: [`yaml`] builds a tree that
//! keeps source positions, then `validate` converts it into a [`Cluster`] while collecting every
//! problem as a [`Diagnostic`], so one run reports all mistakes in a file.

mod diagnostic;
mod kubespray;
mod model;
mod validate;
mod values;
mod yaml;

use std::path::{Path, PathBuf};

pub use diagnostic::{Diagnostic, Diagnostics};
pub use kubespray::import_kubespray;
pub use model::*;
pub use values::{format_duration, parse_duration};

/// Reads and validates the inventory at `path`; relative paths inside resolve against its directory.
pub fn load(path: &Path) -> Result<Cluster, Diagnostics> {
    let file_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| {
        Diagnostics(vec![Diagnostic {
            file: file_name.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read inventory: {error}"),
        }])
    })?;
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

fn check(text: &str, file_name: &str, base_dir: PathBuf, source_path: PathBuf) -> Result<Cluster, Diagnostics> {
    let mut sink = diagnostic::Sink::new(file_name);
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(error) => {
            sink.error(error.pos, format!("invalid YAML: {}", error.message));
            return sink.finish(None);
        }
    };
    let paths = validate::PathContext {
        base_dir,
        home: std::env::var_os("HOME")
            .filter(|home| !home.is_empty())
            .map(PathBuf::from),
    };
    let cluster = validate::cluster(&mut sink, root.as_ref(), &paths, source_path);
    sink.finish(cluster)
}
