//! `capstan check`: connect to every host in parallel, gather facts, run preflight checks (ports:
//! those [`components::ALL`] declare for each host's roles).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use capstan_provisioner::check::{run_checks, CheckConfig, CheckReport, CheckStatus, CheckTarget};
use capstan_provisioner::targets::ssh_target;

use crate::cli::CheckArgs;
use crate::cmd_inventory::load;
use crate::components;
use crate::output::{table, Failure, Output};

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
    let runtime = tokio::runtime::Runtime::new()?;
    let reports = runtime.block_on(run_checks(
        &targets,
        components::ALL,
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
    let mut rows = vec![[
        "HOST",
        "REACHABLE",
        "OS",
        "ARCH",
        "CPUS",
        "MEMORY",
        "FREE /var/lib",
        "CLOCK",
        "CHECKS",
    ]
    .map(String::from)
    .to_vec()];
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
            if report.reachable { "yes" } else { "no" }.into(),
            facts.map(|f| f.os_pretty.clone()).unwrap_or_else(|| "-".into()),
            facts.map(|f| f.arch.clone()).unwrap_or_else(|| "-".into()),
            facts.map(|f| f.cpus.to_string()).unwrap_or_else(|| "-".into()),
            facts.map(|f| human_bytes(f.memory_bytes)).unwrap_or_else(|| "-".into()),
            facts
                .and_then(|f| f.free_disk_bytes.get("/var/lib").copied())
                .map(human_bytes)
                .unwrap_or_else(|| "-".into()),
            facts
                .map(|f| format!("{:+.3}s", f.time_offset_secs))
                .unwrap_or_else(|| "-".into()),
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

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn human_bytes_picks_the_largest_unit() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
