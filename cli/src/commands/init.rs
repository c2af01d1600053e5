//! `capstan init`: write the starter inventory.

use std::path::Path;
use std::process::ExitCode;

use crate::output::{Failure, Output};

/// The starter inventory is the documented example, so the two never drift apart.
const STARTER_INVENTORY: &str = include_str!("../../../examples/inventory.yaml");

pub fn init(path: &Path, force: bool, out: &Output) -> anyhow::Result<ExitCode> {
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
