//! `capstan check`: connect to every host in parallel, gather facts, run preflight checks (ports:
//! those the inventory enables among [`components::ALL`] declare for each host's roles).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use capstan_provisioner::check::{run_checks, CheckConfig, CheckReport, CheckStatus, CheckTarget};
use capstan_provisioner::component::Component;
use capstan_provisioner::targets::ssh_target;

use crate::cli::CheckArgs;
use crate::commands::inventory::load;
use crate::components;
use crate::format::{header, human_bytes, or_dash, table, yes_no};
use crate::output::{Failure, Output};

pub fn run(args: CheckArgs, inventory: Option<&Path>, out: &Output) -> anyhow::Result<ExitCode> {
    let cluster = load(inventory)?;
    let targets: Vec<CheckTarget> = cluster
        .hosts
        .iter()
        .map(|h| CheckTarget {
            target: ssh_target(h),
            roles: h.roles.iter().map(|r| r.as_str().to_string()).collect(),
        })
        .collect();
    out.status(format!("checking {} hosts of cluster {}", targets.len(), cluster.name));
    let started = Instant::now();
    // Only what the inventory enables: monitoring's node_exporter port on every host, say, only
    // when some host is `monitoring`.
    let enabled: Vec<&dyn Component> = components::ALL
        .iter()
        .copied()
        .filter(|c| c.enabled(&cluster))
        .collect();
    let runtime = tokio::runtime::Runtime::new()?;
    let reports = runtime.block_on(run_checks(
        &targets,
        &enabled,
        &CheckConfig::default(),
        args.concurrency,
    ));
    let elapsed = started.elapsed();

    if out.json() {
        out.print_json(&serde_json::json!({ "elapsed_secs": elapsed.as_secs_f64(), "hosts": reports }))?;
    } else {
        print!("{}", render(&reports));
    }
    let failed: Vec<&CheckReport> = reports.iter().filter(|r| !r.passed()).collect();
    out.status(format!(
        "{} hosts checked in {:.2}s: {} passed, {} failed",
        reports.len(),
        elapsed.as_secs_f64(),
        reports.len() - failed.len(),
        failed.len()
    ));
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let names: Vec<&str> = failed.iter().map(|r| r.host.as_str()).collect();
    let hint = failed
        .iter()
        .find_map(|r| r.error.as_ref().and_then(|e| e.hint.clone()))
        .unwrap_or_else(|| "fix the failed checks above, then run `capstan check` again".into());
    Err(Failure::new(format!(
        "{} of {} hosts failed: {}",
        failed.len(),
        reports.len(),
        names.join(", ")
    ))
    .hint(hint)
    .into())
}

fn render(reports: &[CheckReport]) -> String {
    let mut rows = vec![header(&[
        "HOST",
        "REACHABLE",
        "OS",
        "ARCH",
        "CPUS",
        "MEMORY",
        "FREE /var/lib",
        "CLOCK",
        "CHECKS",
    ])];
    let mut details = String::new();
    for report in reports {
        let facts = report.facts.as_ref();
        let failed = report.checks.iter().filter(|c| c.status == CheckStatus::Fail).count();
        let warned = report.checks.iter().filter(|c| c.status == CheckStatus::Warn).count();
        let checks = match (&report.error, failed, warned) {
            (Some(_), _, _) => "error".to_string(),
            (None, 0, 0) => format!("{} passed", report.checks.len()),
            (None, f, w) => format!("{f} failed, {w} warnings"),
        };
        rows.push(vec![
            report.host.clone(),
            yes_no(report.reachable),
            or_dash(facts.map(|f| &f.os_pretty)),
            or_dash(facts.map(|f| &f.arch)),
            or_dash(facts.map(|f| f.cpus)),
            or_dash(facts.map(|f| human_bytes(f.memory_bytes))),
            or_dash(
                facts
                    .and_then(|f| f.free_disk_bytes.get("/var/lib").copied())
                    .map(human_bytes),
            ),
            or_dash(facts.map(|f| format!("{:+.3}s", f.time_offset_secs))),
            checks,
        ]);
        if let Some(error) = &report.error {
            // Transport errors already start with the host name.
            let message = error
                .message
                .strip_prefix(&format!("{}: ", report.host))
                .unwrap_or(&error.message);
            details.push_str(&format!("{}: {message}\n", report.host));
            if let Some(hint) = &error.hint {
                details.push_str(&format!("  hint: {hint}\n"));
            }
        }
        for check in report.checks.iter().filter(|c| c.status != CheckStatus::Pass) {
            let status = if check.status == CheckStatus::Fail {
                "FAIL"
            } else {
                "warn"
            };
            details.push_str(&format!("{}: {status} {}: {}\n", report.host, check.name, check.detail));
        }
    }
    let mut text = table(&rows);
    if !details.is_empty() {
        text.push('\n');
        text.push_str(&details);
    }
    text
}
