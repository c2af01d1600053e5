//! `capstan kubeconfig [--out FILE]`: an admin kubeconfig for the API endpoint, printed (data on
//! stdout) or written 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use capstan_kubernetes::kubeconfig::admin_kubeconfig;

use crate::commands::inventory::load;
use crate::output::{Failure, Output};

pub fn run(path: Option<&Path>, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    let cluster = load(inventory)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let text = runtime
        .block_on(admin_kubeconfig(&cluster))
        .map_err(|e| Failure::of(&e))?;
    match path {
        None => print!("{text}"),
        Some(path) => {
            // Replace rather than truncate, so the key never sits in a file with looser permissions.
            let _ = std::fs::remove_file(path);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
            file.write_all(text.as_bytes())
                .map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
            out.status(format!("wrote {} (0600)", path.display()));
        }
    }
    Ok(ExitCode::SUCCESS)
}
