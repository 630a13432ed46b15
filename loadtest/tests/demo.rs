//! README.md's first command, run as a fresh machine runs it: `mxgate-loadtest demo` starts its
//! peers and mxgate, goes through every step, checks each outcome, and writes its report.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The demo takes about 17 s; past this it is stuck, and is stopped rather than waited for.
const DEMO_DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn the_demo_goes_as_the_readme_says() {
    // The demo writes its report under the working directory's target/loadtest/demo.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let demo = Command::new(env!("CARGO_BIN_EXE_mxgate-loadtest"))
        .arg("demo")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    // A watchdog: SIGTERM at the deadline, on which the harness stops the mxgate it started.
    let pid = demo.id().to_string();
    let (finished, deadline) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let overran = deadline.recv_timeout(DEMO_DEADLINE).is_err();
        if overran {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
        overran
    });
    let output = demo.wait_with_output().expect("wait for the demo");
    let _ = finished.send(());
    let overran = watchdog.join().expect("the watchdog ends");

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !overran,
        "the demo did not finish within {DEMO_DEADLINE:?}:\n{stderr}\n--- its output ---\n{stdout}"
    );
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
