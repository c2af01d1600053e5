//! `capstan backup verify`: download a backup and check every object (and, with an identity,
//! the decrypted contents and etcd's own snapshot hash).

use std::path::Path;
use std::process::ExitCode;

use capstan_backup::{StoreUrl, VerifyReport};

use super::{open, parse_which};
use crate::cli::BackupTargetArgs;
use crate::output::{Failure, Output};

pub(super) async fn verify(
    url: &StoreUrl,
    args: &BackupTargetArgs,
    id: &str,
    identity: Option<&Path>,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let which = parse_which(id)?;
    let store = open(url, args).await?;
    let report = capstan_backup::verify(&store, &which, identity)
        .await
        .map_err(|e| Failure::of(&e))?;
    if out.json() {
        out.print_json(&report)?;
    } else {
        print!("{}", render_verify(&report));
    }
    if report.ok() {
        return Ok(ExitCode::SUCCESS);
    }
    Err(Failure::new(format!(
        "backup {} failed verification ({} problems; see above)",
        report.id,
        report.problems.len()
    ))
    .into())
}

fn render_verify(report: &VerifyReport) -> String {
    let mut text = String::new();
    for object in &report.objects {
        let problems: Vec<_> = report.problems.iter().filter(|p| p.object == object.name).collect();
        let mut checked = vec!["stored sha256"];
        if object.plaintext_checked {
            checked.push("plaintext sha256");
        }
        if object.etcd_hash_checked {
            checked.push("etcd snapshot hash");
        }
        let verdict = if problems.is_empty() { "ok" } else { "FAILED" };
        text.push_str(&format!("{}: {verdict} ({})\n", object.name, checked.join(", ")));
        for problem in problems {
            text.push_str(&format!(
                "  {}: expected {}, got {}\n",
                problem.check, problem.expected, problem.actual
            ));
        }
    }
    for note in &report.notes {
        text.push_str(&format!("note: {note}\n"));
    }
    text.push_str(&format!(
        "backup {}: {}\n",
        report.id,
        match (report.ok(), report.plaintext_checked) {
            (true, true) => "verified",
            (true, false) => "stored objects intact (contents NOT verified: not decrypted)",
            (false, _) => "CORRUPTED",
        }
    ));
    text
}
