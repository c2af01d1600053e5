//! The README's demo command, run as a new user would: it must end with a passing drill report.
//! Needs root and the lab prerequisites (the demo installs the rest); skips with a message otherwise.

use std::path::Path;
use std::process::Command;

mod support;
use support::{lab, require};

#[test]
fn lab_readme_demo_ends_with_a_passing_drill() {
    if !require(&[lab()]) {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    assert!(
        readme.contains("bash scripts/demo.sh"),
        "the README names the demo command"
    );

    let lab = format!("demo-t{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    // CAPSTAN_BIN: the demo runs the binary under test instead of building its own.
    let out = Command::new("bash")
        .arg("scripts/demo.sh")
        .current_dir(repo)
        .env("CAPSTAN_DEMO_LAB", &lab)
        .env("CAPSTAN_DEMO_DIR", dir.path())
        .env("CAPSTAN_BIN", env!("CARGO_BIN_EXE_capstan"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run the demo");
    // The demo leaves its lab running for the user to explore; the test removes it.
    let down = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["lab", "down", "--name", &lab])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(down.status.success());
    assert!(stdout.contains("# capstan DR drill: PASSED"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("drill-report.json")).unwrap()).unwrap();
    assert_eq!(report["success"], true, "{report:#}");
    let text = report.to_string();
    assert!(text.contains("demo/key-2"), "the drill checked the demo's keys: {text}");
    assert!(stderr.contains("Try next:"), "{stderr}");
}
