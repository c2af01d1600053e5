//! logging's alert rules pass the real `promtool check rules`, and `promtool test rules` shows
//! the lag alert firing only after the lag stayed over its threshold. Needs promtool (Debian's
//! `prometheus` package, installed by scripts/setup.sh); skips naming what is missing.

#[path = "../../provisioner/tests/support/require.rs"]
mod require;

use std::process::Command;

use require::{require, tool};

fn promtool(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let output = Command::new("promtool").args(args).current_dir(dir).output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

const TESTS: &str = r#"rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'capstan_logging_upload_lag_seconds{instance="h2:9100", aggregator="h1"}'
        values: '0 0 1000x30'
    alert_rule_test:
      - eval_time: 8m
        alertname: CapstanLogShippingLagging
        exp_alerts: []
      - eval_time: 20m
        alertname: CapstanLogShippingLagging
        exp_alerts:
          - exp_labels: {severity: warning, instance: "h2:9100", aggregator: h1}
            exp_annotations:
              summary: "h2:9100 has not shipped its journal to h1 for 16m 40s"
              description: "Entries are kept in the host's own journal (budget logging.journal_max_mib) and shipped when the aggregator is reachable again; see docs/logging.md."
"#;

#[test]
fn promtool_accepts_the_rules_and_the_lag_alert_fires_only_when_lagging() {
    if !require(&[tool("promtool", "prometheus")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = capstan_logging::config::alert_rules().unwrap();
    std::fs::write(dir.path().join("rules.yml"), &rules).unwrap();
    let (ok, said) = promtool(&["check", "rules", "rules.yml"], dir.path());
    assert!(ok, "promtool rejected the rules:\n{said}\n{rules}");
    std::fs::write(dir.path().join("tests.yml"), TESTS).unwrap();
    let (ok, said) = promtool(&["test", "rules", "tests.yml"], dir.path());
    assert!(ok, "promtool test failed:\n{said}");
    // The test can fail: with a threshold above the lag, the alert would not fire.
    let lenient = rules.replace("> 900", "> 5000");
    std::fs::write(dir.path().join("rules.yml"), lenient).unwrap();
    let (ok, _) = promtool(&["test", "rules", "tests.yml"], dir.path());
    assert!(!ok, "promtool test passed without the alert firing");
}
