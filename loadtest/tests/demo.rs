//! README.md's first command, run as a fresh machine runs it: `mxgate-loadtest demo` starts its
//! peers and mxgate, goes through every step, checks each outcome, and writes its report.

use std::process::Command;

#[test]
fn the_demo_goes_as_the_readme_says() {
    // The demo writes its report under the working directory's target/loadtest/demo.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = Command::new(env!("CARGO_BIN_EXE_mxgate-loadtest"))
        .arg("demo")
        .current_dir(dir.path())
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the demo failed ({}):\n{stderr}\n--- its output ---\n{stdout}",
        output.status
    );
    assert!(
        stdout.contains("checks went as README.md describes the demo"),
        "the demo ended without its checks:\n{stdout}"
    );
    let report = std::fs::read_to_string(dir.path().join("target/loadtest/demo/report.json"))
        .expect("the demo wrote its report");
    let report: serde_json::Value = serde_json::from_str(&report).expect("the report is JSON");
    assert_eq!(report["scenario"], "demo", "{report}");
}
