//! `capstan lab ...`: a thin layer over `capstan_lab`.

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use capstan_lab::{LabError, UpOptions};

use crate::cli::{LabCommand, LabUpArgs};
use crate::format::{header, or_dash, table};
use crate::output::{Failure, Output};

pub fn run(args: LabCommand, out: &Output) -> anyhow::Result<ExitCode> {
    match args {
        LabCommand::Up(args) => up(args, out),
        LabCommand::Down(args) => {
            let report = capstan_lab::down(&args.name).map_err(lab_failure)?;
            if out.json() {
                out.print_json(&report)?;
            } else if report.existed {
                out.status(format!(
                    "lab {}: removed ({} processes stopped, {} mounts, {} links)",
                    args.name, report.processes_stopped, report.unmounted, report.links_deleted
                ));
            } else {
                out.status(format!("lab {}: nothing to remove", args.name));
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::List => {
            let labs = capstan_lab::list().map_err(lab_failure)?;
            if out.json() {
                out.print_json(&labs)?;
            } else if labs.is_empty() {
                out.status("no labs");
            } else {
                let mut rows = vec![header(&["NAME", "MACHINES", "RUNNING", "SUBNET", "DIR"])];
                for lab in &labs {
                    rows.push(vec![
                        lab.name.clone(),
                        lab.machines.to_string(),
                        lab.running.to_string(),
                        lab.subnet.clone(),
                        lab.dir.display().to_string(),
                    ]);
                }
                print!("{}", table(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status(args) => {
            let lab = capstan_lab::get(&args.name).map_err(lab_failure)?;
            if out.json() {
                out.print_json(&lab)?;
            } else {
                println!(
                    "lab {} on {} (bridge {}), inventory {}",
                    lab.name,
                    lab.subnet,
                    lab.bridge,
                    lab.inventory_path.display()
                );
                let mut rows = vec![header(&["MACHINE", "ADDRESS", "STATE", "PID"])];
                for m in &lab.machines {
                    rows.push(vec![
                        m.name.clone(),
                        m.ip.clone(),
                        if m.running { "running" } else { "stopped" }.into(),
                        or_dash(m.pid),
                    ]);
                }
                print!("{}", table(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Ssh { lab, host, command } => {
            let remote = (!command.is_empty()).then(|| command.join(" "));
            let mut cmd = capstan_lab::ssh_command(&lab.name, &host, remote.as_deref()).map_err(lab_failure)?;
            // Replace this process so the terminal, signals and exit code belong to ssh.
            let err = cmd.exec();
            Err(Failure::new(format!("cannot run ssh: {err}"))
                .hint("apt-get install openssh-client")
                .into())
        }
        LabCommand::Stop(args) => host_action(capstan_lab::stop, "stopped", args, out),
        LabCommand::Start(args) => host_action(capstan_lab::start, "started", args, out),
        LabCommand::Isolate(args) => host_action(capstan_lab::isolate, "isolated", args, out),
        LabCommand::Heal(args) => host_action(capstan_lab::heal, "reconnected", args, out),
    }
}

fn up(args: LabUpArgs, out: &Output) -> anyhow::Result<ExitCode> {
    if args.hosts == 0 {
        return Err(Failure::new("--hosts must be at least 1").code(2).into());
    }
    capstan_lab::check_prerequisites().map_err(lab_failure)?;
    let known: Vec<&str> = capstan_inventory::Role::ALL.iter().map(|r| r.as_str()).collect();
    if let Some(unknown) = args.roles.iter().find(|r| !known.contains(&r.as_str())) {
        return Err(Failure::new(format!("--roles: unknown role `{unknown}`"))
            .hint(format!("roles are {}", known.join(", ")))
            .code(2)
            .into());
    }
    let mut opts = UpOptions::new(args.lab.name.clone(), args.hosts);
    opts.artifact_mirror = args.mirror;
    opts.roles = args.roles.clone();
    opts.inventory_out = args.inventory_out.clone();
    opts.progress = out.lab_progress();
    let started = std::time::Instant::now();
    let lab = capstan_lab::up(opts).map_err(|err| {
        let name = &args.lab.name;
        match err {
            LabError::AlreadyExists(_) | LabError::InvalidName { .. } | LabError::InvalidHostCount { .. } => {
                lab_failure(err)
            }
            other => Failure::new(other.to_string())
                .hint(format!(
                    "the partial lab is kept for inspection; remove it with `capstan lab down --name {name}`"
                ))
                .into(),
        }
    })?;
    let inventory = args.inventory_out.unwrap_or_else(|| lab.inventory_path.clone());
    out.status(format!(
        "lab {}: {} machines up on {} in {:.1}s",
        lab.name,
        lab.machines.len(),
        lab.subnet,
        started.elapsed().as_secs_f64()
    ));
    if out.json() {
        out.print_json(&serde_json::json!({ "inventory": inventory, "lab": lab }))?;
    } else {
        println!("{}", inventory.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn host_action(
    action: fn(&str, &str) -> capstan_lab::Result<()>,
    done: &str,
    args: crate::cli::LabHostArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    action(&args.lab.name, &args.host).map_err(lab_failure)?;
    out.status(format!("lab {}: {} {done}", args.lab.name, args.host));
    Ok(ExitCode::SUCCESS)
}

fn lab_failure(err: LabError) -> anyhow::Error {
    // The lab's messages already say what to do (install X, run as root, remove the old lab).
    Failure::new(err.to_string()).into()
}
