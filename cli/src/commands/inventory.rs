//! `capstan inventory check|show|import`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use capstan_inventory::Cluster;

use crate::cli::{ImportFormat, InventoryCommand};
use crate::output::{Failure, Output};

pub fn run(args: InventoryCommand, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    match args {
        InventoryCommand::Check => {
            let cluster = load_reporting(inventory, Some(out))?;
            let etcd = cluster.hosts_with_role(capstan_inventory::Role::Etcd).count();
            if out.json() {
                out.print_json(&serde_json::json!({
                    "valid": true, "cluster": cluster.name, "hosts": cluster.hosts.len(), "etcd_members": etcd,
                    "diagnostics": cluster.warnings.0,
                }))?;
            } else {
                cluster.warnings.iter().for_each(|warning| out.status(warning));
                println!(
                    "{}: ok (cluster {}, {} hosts, {} etcd members)",
                    cluster.source_path.display(),
                    cluster.name,
                    cluster.hosts.len(),
                    etcd
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        InventoryCommand::Show { host } => {
            let cluster = load_reporting(inventory, Some(out))?;
            match host {
                Some(name) => {
                    let host = cluster.host(&name).ok_or_else(|| {
                        let known: Vec<&str> = cluster.hosts.iter().map(|h| h.name.as_str()).collect();
                        Failure::new(format!("no host named `{name}` in {}", cluster.source_path.display()))
                            .hint(format!("hosts are: {}", known.join(", ")))
                    })?;
                    print_data(out, host)?;
                }
                None => print_data(out, &cluster)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        InventoryCommand::Import {
            from: ImportFormat::Kubespray,
            file,
            out: out_file,
        } => {
            let converted = capstan_inventory::import_kubespray_file(&file).map_err(|diags| {
                let hint = "fix the source inventory, or write the capstan inventory by hand";
                invalid(diags, hint, Some(out))
            })?;
            match out_file {
                Some(path) => {
                    std::fs::write(&path, converted)?;
                    out.status(format!("wrote {}", path.display()));
                    println!("{}", path.display());
                }
                None => print!("{converted}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_data<T: serde::Serialize>(out: &Output, value: &T) -> anyhow::Result<()> {
    if out.json() {
        out.print_json(value)
    } else {
        print!("{}", serde_yaml::to_string(value)?);
        Ok(())
    }
}

/// With `--output json`, the diagnostics also go to stdout as one JSON document.
fn invalid(diags: capstan_inventory::Diagnostics, hint: &str, out: Option<&Output>) -> Failure {
    if let Some(out) = out.filter(|out| out.json()) {
        let _ = out.print_json(&diags.report());
    }
    let count = diags.len();
    let noun = if count == 1 { "problem" } else { "problems" };
    Failure::new(format!("{count} {noun} found:\n{}", diags.to_string().trim_end()))
        .hint(hint)
        .code(2)
}

/// The inventory path from `-i`/`CAPSTAN_INVENTORY`, or `./inventory.yaml` when that exists.
pub fn inventory_path(inventory: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = inventory {
        return Ok(path.to_path_buf());
    }
    let default = PathBuf::from("inventory.yaml");
    if default.exists() {
        return Ok(default);
    }
    Err(Failure::new("no inventory given")
        .hint("pass -i FILE (or set CAPSTAN_INVENTORY); `capstan lab up` writes one for a local lab")
        .code(2)
        .into())
}

/// Load and validate the inventory, turning diagnostics into a user-facing failure.
pub fn load(inventory: Option<&Path>) -> anyhow::Result<Cluster> {
    load_reporting(inventory, None)
}

fn load_reporting(inventory: Option<&Path>, out: Option<&Output>) -> anyhow::Result<Cluster> {
    let path = inventory_path(inventory)?;
    capstan_inventory::load(&path).map_err(|diags| {
        let hint = diags.closing_hint();
        invalid(diags, &hint, out).into()
    })
}
