//! The harness stopped by a signal stops what it started: SIGTERM during the demo ends the mxgate it
//! runs, instead of leaving it behind as the signal's default action would.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A process's command name, state and parent, from /proc/PID/stat.
fn stat(pid: u32) -> Option<(String, char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((name.to_owned(), state, parent))
}

/// The processes whose parent is `parent`, with their command names.
fn children_of(parent: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (name, _, ppid) = stat(pid)?;
            (ppid == parent).then_some((pid, name))
        })
        .collect()
}

/// Whether `pid` is a live process (not gone, not a zombie waiting to be reaped).
fn running(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, state, _)| state != 'Z')
}

#[test]
fn sigterm_during_the_demo_stops_the_mxgate_it_started() {
    let mut harness = Command::new(env!("CARGO_BIN_EXE_mxgate-loadtest"))
        .arg("demo")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the harness");
    let started = Instant::now();
    let gate = loop {
        if let Some((pid, _)) = children_of(harness.id())
            .into_iter()
            .find(|(_, name)| name == "mxgate")
        {
            break pid;
        }
        if started.elapsed() > Duration::from_secs(60)
            || harness.try_wait().ok().flatten().is_some()
        {
            let _ = harness.kill();
            panic!("the demo started no mxgate (is target/<profile>/mxgate built?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(running(gate));

    let signalled = Command::new("kill")
        .args(["-TERM", &harness.id().to_string()])
        .status()
        .expect("run kill");
    assert!(signalled.success());
    let output = harness.wait_with_output().expect("the harness ends");
    // The harness sent SIGKILL before it exited; the kernel ends the process a moment later.
    let ended = Instant::now();
    while running(gate) && ended.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left_running = running(gate);
    if left_running {
        // Not left behind by this test either.
        let _ = Command::new("kill")
            .args(["-KILL", &gate.to_string()])
            .status();
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !left_running,
        "mxgate (pid {gate}) still ran 10 s after the harness ended"
    );
    assert!(!output.status.success(), "an interrupted run is a failure");
    assert!(
        stderr.contains("interrupted"),
        "the harness says it was interrupted: {stderr}"
    );
}
