//! `capstan reset`: remove what capstan installed, through `capstan_provisioner::reset` (each
//! component's clean-up, last-installed first). This asks for confirmation, offers a final backup,
//! holds the cluster lock and prints the outcome.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use capstan_inventory::{Cluster, Role};
use capstan_provisioner::reset::{ResetError, ResetPlan};
use capstan_provisioner::runner::Mode;

use crate::cli::ResetArgs;
use crate::commands::backup::create::{create, CreateArgs};
use crate::commands::etcd::print_cluster_outcome;
use crate::commands::inventory::load;
use crate::commands::lock::locked_without_etcd;
use crate::output::{Failure, Output};

pub fn reset(args: ResetArgs, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    let cluster = load(inventory)?;
    let plan = ResetPlan::new(crate::components::ALL, &cluster, &args.hosts).map_err(|e| {
        let failure = Failure::of(&e);
        match e {
            ResetError::UnknownHosts { .. } => failure.code(2),
            _ => failure,
        }
    })?;
    let refusals = plan.refusals(&cluster);
    if args.force {
        for refusal in &refusals {
            out.status(format!("warning: --force overrides: {refusal}"));
        }
    } else if let Some(first) = refusals.first() {
        for other in &refusals[1..] {
            out.status(format!("also: {other}"));
        }
        return Err(Failure::of(first).into());
    }
    let hosts = plan.hosts();
    let takes_etcd = cluster
        .hosts
        .iter()
        .any(|h| hosts.contains(&h.name.as_str()) && h.roles.contains(&Role::Etcd));
    let mut final_backup = args.final_backup;
    if !args.dry_run && !args.yes {
        confirm(&cluster, &hosts, plan.whole_cluster(&cluster))?;
        if takes_etcd && !final_backup && cluster.backup.is_some() {
            final_backup = ask_yes_no(
                "take a final backup to the inventory's backup target first? [Y/n] ",
                true,
            )?;
        }
    }
    let mode = if args.dry_run { Mode::DryRun } else { Mode::Apply };
    let ctx = out.run_context(mode, args.concurrency);
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(async {
        if final_backup && !args.dry_run {
            if !takes_etcd {
                out.status("no etcd host is being reset: no final backup needed");
            } else {
                out.status("==> reset: final backup");
                let backup = CreateArgs::from_inventory();
                create(&cluster, &backup, out).await?;
            }
        }
        let run = async {
            plan.run(&cluster, &ctx)
                .await
                .map_err(|e| anyhow::Error::from(Failure::of(&e)))
        };
        if args.dry_run {
            run.await
        } else {
            locked_without_etcd(&cluster, out, run).await
        }
    })?;

    print_cluster_outcome(&outcome, &cluster, false, out)?;
    let totals = outcome.summary.totals();
    out.status(format!(
        "reset{} of {} in {:.1}s: {} ok, {} {}, {} failed",
        if args.dry_run {
            " (dry run, nothing changed)"
        } else {
            ""
        },
        hosts.join(", "),
        outcome.summary.elapsed.as_secs_f64(),
        totals.ok,
        totals.changed,
        if args.dry_run { "would change" } else { "changed" },
        totals.failed
    ));
    if outcome.success() {
        return Ok(ExitCode::SUCCESS);
    }
    Err(
        Failure::new(outcome.error.clone().unwrap_or_else(|| "reset failed".into()))
            .maybe_hint(outcome.hint.clone())
            .into(),
    )
}

/// The operator types the cluster's name (from a terminal or a pipe); anything else stops.
fn confirm(cluster: &Cluster, hosts: &[&str], whole: bool) -> Result<(), Failure> {
    let scope = if whole {
        format!("every host of cluster {} ({})", cluster.name, hosts.join(", "))
    } else {
        format!("{} of cluster {}", hosts.join(", "), cluster.name)
    };
    eprintln!(
        "capstan reset removes everything capstan installed from {scope}: services, binaries, configuration, \
         certificates (the cluster CA's key included) and data (etcd's included)."
    );
    eprint!("type the cluster name ({}) to go on: ", cluster.name);
    let _ = std::io::stderr().flush();
    let answer = read_line()?;
    if answer.trim() != cluster.name {
        return Err(Failure::new("not confirmed; nothing was changed")
            .hint("type the cluster's name exactly, or pass --yes in scripts"));
    }
    Ok(())
}

fn ask_yes_no(question: &str, default: bool) -> Result<bool, Failure> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let answer = read_line()?;
    Ok(match answer.trim().to_ascii_lowercase().as_str() {
        "" => default,
        "y" | "yes" => true,
        _ => false,
    })
}

fn read_line() -> Result<String, Failure> {
    let mut line = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::new(format!("reading the answer: {e}")))?;
    if read == 0 {
        return Err(
            Failure::new("no answer (standard input is closed); nothing was changed")
                .hint("pass --yes to reset without asking")
                .code(2),
        );
    }
    Ok(line)
}
