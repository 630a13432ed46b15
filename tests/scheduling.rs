//! The `mxgate` binary puts its worker threads in the scheduling policy `server.scheduling` names:
//! `SCHED_BATCH` by default, `SCHED_OTHER` for `normal` even when started under `SCHED_BATCH`.
//! Only the workers: the main thread keeps the policy it was started with.

mod common;

use mxgate::policy::Scheduling;
use mxgate_loadtest::demo::{free_addr, MxgateProcess};
use std::collections::BTreeMap;

/// Linux's numbers for the policies (sched(7)), as field 41 of /proc/PID/task/TID/stat gives them.
const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

/// Each thread of `pid` by name, with its scheduling policy.
fn thread_policies(pid: u32) -> BTreeMap<String, u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task");
    tasks
        .map(|task| {
            let path = task.unwrap().path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap();
            let stat = std::fs::read_to_string(path.join("stat")).unwrap();
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            // Field 41 of proc(5); the first after the name is field 3.
            let policy = after_name.split(' ').nth(41 - 3).unwrap().parse().unwrap();
            (format!("{} ({})", name.trim(), path.display()), policy)
        })
        .collect()
}

/// mxgate with one worker and `server_extra` in `[server]`; started once its worker listens, which
/// it does only after setting its policy.
async fn start_gate(server_extra: &str) -> (MxgateProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let text = format!(
        "[server]\nworkers = 1\n{server_extra}\n\n[backend]\naddress = \"127.0.0.1:10025\"\n\n[[class]]\nname = \"neutral\"\n"
    );
    std::fs::write(&policy, text).unwrap();
    let [listen, admin, backend] = [(); 3].map(|()| free_addr().expect("a free port"));
    let gate = common::mxgate_binary(&policy, listen, admin, backend, false).await;
    (gate, dir)
}

/// Starts mxgate with `server_extra`, asserts its worker's policy and that every other thread has
/// `others` (the policy it was started with), and stops it.
async fn assert_policies(server_extra: &str, worker: u32, others: u32) {
    let (gate, _dir) = start_gate(server_extra).await;
    let threads = thread_policies(gate.pid());
    let of = |is_worker: bool| -> Vec<u32> {
        threads
            .iter()
            .filter(|(name, _)| name.starts_with("mxgate-worker-") == is_worker)
            .map(|(_, &policy)| policy)
            .collect()
    };
    assert_eq!(of(true), [worker], "{server_extra:?}: {threads:?}");
    assert!(
        of(false).iter().all(|&p| p == others),
        "{server_extra:?}: only the worker changes: {threads:?}"
    );
    gate.stop().await.unwrap();
}

#[tokio::test]
async fn workers_run_under_sched_batch_by_default_and_under_sched_other_when_told() {
    assert_policies("", SCHED_BATCH, SCHED_OTHER).await;
    // Started under SCHED_BATCH (inherited from this thread), told `normal`: the worker leaves it.
    mxgate::scheduling::apply(Scheduling::Batch).unwrap();
    assert_policies("scheduling = \"normal\"", SCHED_OTHER, SCHED_BATCH).await;
}
