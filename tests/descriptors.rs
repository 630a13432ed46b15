//! Out of file descriptors, on the `mxgate` binary with its open file limit lowered from outside:
//! a connection it cannot accept waits in the listen queue, without mxgate spinning, and is served
//! once descriptors are available; a client accepted with none left for the backend gets
//! 421 4.3.2; the shortage is logged and counted apart from backend failures; nothing leaks.

mod common;

use common::{metrics, WAIT};
use mxgate_loadtest::client::SmtpClient;
use mxgate_loadtest::demo::{free_addr, next_log_line, MxgateProcess};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::broadcast;

/// How long a connection is left waiting in the listen queue while mxgate's CPU time is watched:
/// an observation window, not a wait for an event.
const WATCH: Duration = Duration::from_millis(1000);
/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: u64 = 100;

/// The descriptor numbers `pid` holds.
fn open_descriptors(pid: i32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The open file limit that leaves `pid` exactly `free` more descriptors: new descriptors take the
/// lowest free numbers, and only numbers below the limit are allowed.
fn limit_leaving(pid: i32, free: usize) -> u64 {
    let held = open_descriptors(pid);
    (0..)
        .filter(|n| !held.contains(n))
        .nth(free)
        .expect("a free number")
}

/// Sets the soft open file limit of `pid` (the hard one stays); returns the one it replaces.
fn set_soft_limit(pid: i32, soft: u64) -> u64 {
    let (mut old_soft, mut hard) = (0, 0);
    let nofile = rlimit::Resource::NOFILE;
    rlimit::prlimit(pid, nofile, None, Some((&mut old_soft, &mut hard))).unwrap();
    rlimit::prlimit(pid, nofile, Some((soft, hard)), None).expect("prlimit");
    old_soft
}

/// User and system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat(5); the first after the name is field 3.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The `mxgate` binary on `listen`, in front of `backend`, with its admin API on `admin`; the
/// policy file lives as long as the directory returned.
async fn start_gate(
    listen: SocketAddr,
    admin: SocketAddr,
    backend: SocketAddr,
) -> (MxgateProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let text = r#"
[server]
hostname = "mx.test"

[backend]
address = "127.0.0.1:10025"   # replaced by --backend
client_address = "v2"

[admission]
slots = 10

[[class]]
name = "neutral"
"#;
    std::fs::write(&policy, text).unwrap();
    let gate = common::mxgate_binary(&policy, listen, admin, backend, false).await;
    (gate, dir)
}

/// The next line of `log` that contains `needle`.
async fn wait_for_log(log: &mut broadcast::Receiver<String>, needle: &str) -> String {
    next_log_line(log, WAIT, |line| line.contains(needle))
        .await
        .unwrap_or_else(|| {
            panic!("mxgate never logged {needle:?} within {WAIT:?} (or exited first)")
        })
}

async fn greeted(stream: TcpStream) -> SmtpClient<TcpStream> {
    let mut client = SmtpClient::new(stream);
    let greeting = client.read_reply().await.expect("greeting");
    assert_eq!(greeting.code, 220, "greeting: {greeting}");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_waits_or_defers_and_recovers() {
    let sink = common::proxy_sink().await;
    let (listen, admin) = (free_addr().unwrap(), free_addr().unwrap());
    let (gate, _policy_dir) = start_gate(listen, admin, sink.addr()).await;
    let mut log = gate.log_lines();
    let pid = gate.pid() as i32;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(greeted(TcpStream::connect(listen).await.unwrap()).await);
    }

    // No descriptor left: the kernel completes the handshake, mxgate cannot accept.
    let normal_limit = set_soft_limit(pid, limit_leaving(pid, 0));
    let waiting = TcpStream::connect(listen).await.unwrap();
    let logged = wait_for_log(&mut log, "out of file descriptors").await;
    assert!(logged.contains("listen queue"), "{logged}");
    let (ticks_before, watch_started) = (cpu_ticks(pid), std::time::Instant::now());
    tokio::time::sleep(WATCH).await;
    let busy = cpu_ticks(pid) - ticks_before;
    assert!(
        busy * 4 < WATCH.as_millis() as u64 * TICKS_PER_SECOND / 1000,
        "mxgate spent {busy} ticks of CPU in {WATCH:?} while it could not accept: spinning"
    );
    let mut probe = [0u8; 64];
    assert!(
        matches!(waiting.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection mxgate could not accept was answered"
    );

    // Two descriptors available: the waiting connection is accepted and relayed.
    set_soft_limit(pid, limit_leaving(pid, 2));
    let mut waited = greeted(waiting).await;
    wait_for_log(&mut log, "file descriptors available again").await;

    // One descriptor: the client is accepted, the backend connection cannot be made.
    set_soft_limit(pid, limit_leaving(pid, 1));
    let mut deferred = SmtpClient::new(TcpStream::connect(listen).await.unwrap());
    let reply = deferred.read_reply().await.expect("a reply");
    assert_eq!(
        reply.text,
        "421 4.3.2 mx.test Service temporarily unavailable\r\n"
    );
    assert!(deferred.closed_by_server().await);
    let logged = wait_for_log(&mut log, "backend unavailable").await;
    assert!(logged.contains("out of file descriptors"), "{logged}");

    // The limit back: everything works, and nothing was lost or leaked.
    set_soft_limit(pid, normal_limit);
    let short_for = watch_started.elapsed();
    waited.command("EHLO waited.test").await.unwrap();
    let reply = waited
        .send_message(
            "a@waited.test",
            &["r@sink.test"],
            b"Subject: waited\r\n\r\nhi\r\n",
        )
        .await
        .unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    held.push(waited);
    held.push(greeted(TcpStream::connect(listen).await.unwrap()).await);

    let (body, samples) = metrics::scrape(admin, None).await;
    let failed_accepts = samples
        .get("mxgate_out_of_descriptors_total{at=\"accept\"}")
        .copied()
        .unwrap_or(0.0);
    // At most one try per 100 ms and worker (two workers) while descriptors were short, and a
    // few more around the changes of the limit.
    let bound = 2.0 * (short_for.as_millis() as f64 / 100.0 + 3.0);
    assert!(
        failed_accepts >= 1.0 && failed_accepts <= bound,
        "{failed_accepts} failed accepts in {short_for:?}:\n{body}"
    );
    assert_eq!(
        samples.get("mxgate_out_of_descriptors_total{at=\"backend\"}"),
        Some(&1.0),
        "{body}"
    );
    let backend_failures: f64 = samples
        .iter()
        .filter(|(key, _)| key.starts_with("mxgate_backend_connect_failures_total"))
        .map(|(_, value)| value)
        .sum();
    assert_eq!(
        backend_failures, 0.0,
        "a shortage of mxgate's own counted as a backend failure:\n{body}"
    );

    for client in &mut held {
        assert_eq!(client.command("QUIT").await.unwrap().code, 221);
    }
    metrics::wait_for_sample(admin, None, "mxgate_slots_in_use{class=\"neutral\"}", 0.0).await;
    common::assert_one_message_ending(&sink, b"\r\nhi\r\n");
    gate.stop().await.expect("mxgate stops cleanly");
}
