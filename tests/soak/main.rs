//! A soak over real sockets: the `mxgate` binary in front of a sink, with DNS lists, STARTTLS and
//! small limits, while many senders from their own 127.x addresses deliver, pipeline, send junk,
//! go silent, garble TLS, half-close and reset, and meanwhile the backend restarts (and refuses
//! some recipients, crashes on others and hangs at a few), the policy is reloaded with other
//! limits and the DNS lists stall. Afterwards:
//! - every message a client was told was accepted is at the sink, under that client's address;
//! - no client waited for a reply that never came, or for a close that never came;
//! - every slot is free again and mxgate holds no more file descriptors than before;
//! - nothing panicked, a plain session still delivers, and SIGTERM stops mxgate cleanly.
//!
//! `SOAK_SENDERS` (default 6,000, about 10 s) and `SOAK_SEED` (default 1) change the run; a failure prints the
//! seed. Timing still varies between runs: the seed fixes what each sender does, not when.

#[path = "../common/mod.rs"]
mod common;
mod disorder;
mod senders;

use common::metrics;
use mxgate_loadtest::client::SmtpClient;
use mxgate_loadtest::demo::{free_addr, MxgateProcess};
use mxgate_loadtest::dnsbl::{demo_zones, DnsblServer};
use mxgate_loadtest::sink::SessionRecord;
use mxgate_loadtest::sink::Sink;
use proptest::test_runner::{RngAlgorithm, TestRng};
use senders::{Kind, Outcome, Sender};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const AT_ONCE: usize = 100;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rng(seed: u64, stream: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&stream.to_le_bytes());
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Small limits and timeouts, so that every way a session can end comes up within seconds.
fn policy(dns: SocketAddr, cert: &Path, key: &Path, slots: usize, messages: u32) -> String {
    format!(
        r#"
[server]
hostname = "mx.test"

[backend]
address = "127.0.0.1:10025"   # replaced by --backend
client_address = "v2"
connect_timeout = "2s"
reply_timeout = "1s"        # shorter than the backend restarts: a hung backend times out
data_reply_timeout = "3s"

[tls]
certificate = "{cert}"
key = "{key}"

[session]
idle_timeout = "2s"
max_duration = "8s"
max_command_line = 1024
max_junk_commands = 3
shutdown_grace = "3s"
tls_handshake_timeout = "2s"

[dns]
resolver = "{dns}"
budget = "200ms"
query_timeout = "1s"

[[dns.list]]
zone = "zen.spamhaus.org"
codes = "127.0.0.[2..11]"
name = "ZEN"
weight = 10

[[dns.list]]
zone = "list.dnswl.org"
codes = "127.0.[0..255].[1..3]"
name = "DNSWL"
weight = -5

[admission]
slots = {slots}
connections_per_prefix = 1000
connection_rate_per_ip = "6000/m"
connection_rate_per_prefix = "60000/m"

[[class]]
name = "trusted"
max_score = -1
connections_per_ip = 20
messages_per_session = 5
recipients_per_message = 4

[[class]]
name = "neutral"
max_score = 2
max_share = 0.8
connections_per_ip = 4
recipient_rate = "50/s"
messages_per_session = {messages}
recipients_per_message = 3

[[class]]
name = "listed"
max_score = 100
action = "defer"
"#,
        cert = cert.display(),
        key = key.display(),
    )
}

/// Mostly unknown senders, some listed (127.0.1.x in the test zones) and some allow-listed.
fn source(rng: &mut TestRng) -> IpAddr {
    use proptest::prelude::RngExt;
    match rng.random_range(0..100) {
        0..8 => ["127.0.1.2", "127.0.1.4", "127.0.1.10"][rng.random_range(0..3)]
            .parse()
            .unwrap(),
        8..15 => ["127.0.2.1", "127.0.2.2"][rng.random_range(0..2)]
            .parse()
            .unwrap(),
        _ => IpAddr::V4(Ipv4Addr::new(
            127,
            rng.random_range(10..60),
            rng.random_range(0..=255),
            rng.random_range(1..=254),
        )),
    }
}

/// A session from `source`, greeted and past EHLO.
async fn greeted(gate: SocketAddr, source: &str) -> SmtpClient<tokio::net::TcpStream> {
    let mut client = SmtpClient::connect(gate, Some(source.parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(client.read_reply().await.unwrap().code, 220);
    assert_eq!(client.command("EHLO soak.test").await.unwrap().code, 250);
    client
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Polls `/metrics` until every class's slots are free again; returns what is still in use.
async fn slots_in_use_settled(admin: SocketAddr) -> f64 {
    settled(
        || async {
            let (_, samples) = metrics::scrape(admin, None).await;
            samples
                .iter()
                .filter(|(key, _)| key.starts_with("mxgate_slots_in_use"))
                .map(|(_, value)| value)
                .sum::<f64>()
        },
        |used| *used == 0.0,
    )
    .await
}

/// Polls `read` every 100 ms until `good` holds of its value or `common::WAIT` passes (sessions end
/// by their own timeouts, which nothing signals); returns the last value.
async fn settled<T, F: std::future::Future<Output = T>>(
    mut read: impl FnMut() -> F,
    good: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let value = read().await;
        if good(&value) || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// mxgate in front of a sink, with its DNS lists, certificate and policy file.
struct Rig {
    _dir: tempfile::TempDir,
    tls: Arc<rustls::ClientConfig>,
    dns: Arc<DnsblServer>,
    /// Taken by a test that restarts or stops it.
    sink: Option<Sink>,
    listen: SocketAddr,
    admin: SocketAddr,
    policy_file: PathBuf,
    policy_for: Arc<dyn Fn(usize, u32) -> String + Send + Sync>,
    gate: MxgateProcess,
    panics: Arc<AtomicUsize>,
    log_watch: tokio::task::JoinHandle<()>,
}

impl Rig {
    async fn start() -> Rig {
        std::env::set_var("MXGATE_BIN", env!("CARGO_BIN_EXE_mxgate"));
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, tls) = common::test_certificate(dir.path(), "mx.test");
        let dns = DnsblServer::start(demo_zones()).await.unwrap();
        let sink = Sink::start(disorder::sink_config(free_addr().unwrap()))
            .await
            .unwrap();
        let dns_addr = dns.addr();
        let policy_for =
            Arc::new(move |slots, messages| policy(dns_addr, &cert, &key, slots, messages));
        let policy_file = dir.path().join("policy.toml");
        std::fs::write(&policy_file, policy_for(80, 3)).unwrap();
        let (listen, admin) = (free_addr().unwrap(), free_addr().unwrap());
        let args = [
            "--policy",
            policy_file.to_str().unwrap(),
            "--admin",
            &admin.to_string(),
        ];
        let gate = MxgateProcess::start_quiet(listen, sink.addr(), &args)
            .await
            .unwrap();
        let mut log = gate.log_lines();
        let panics = Arc::new(AtomicUsize::new(0));
        let counted = panics.clone();
        let log_watch = tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match log.recv().await {
                    Ok(line) if line.contains("panicked") => {
                        eprintln!("mxgate | {line}");
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Rig {
            _dir: dir,
            tls,
            dns: Arc::new(dns),
            sink: Some(sink),
            listen,
            admin,
            policy_file,
            policy_for,
            gate,
            panics,
            log_watch,
        }
    }

    /// SIGTERM: mxgate must exit with status 0, without having panicked.
    async fn stop(self, seed: u64) {
        self.gate
            .stop()
            .await
            .expect("mxgate stops cleanly on SIGTERM");
        self.log_watch.await.unwrap();
        let panics = self.panics.load(Ordering::Relaxed);
        assert_eq!(panics, 0, "seed {seed}: mxgate panicked");
        if let Some(sink) = self.sink {
            sink.stop().await;
        }
    }

    /// One message from 127.0.2.1, delivered and counted in `tally`.
    async fn deliver_one(&self, tally: &mut Tally) {
        let mut client = greeted(self.listen, "127.0.2.1").await;
        common::deliver(&mut client).await;
        assert_eq!(client.command("QUIT").await.unwrap().code, 221);
        assert!(client.closed_by_server().await);
        *tally
            .told_accepted
            .entry(client_ip("127.0.2.1"))
            .or_default() += 1;
    }
}

fn client_ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// What the senders were told, and what should never have happened to them.
#[derive(Default)]
struct Tally {
    told_accepted: HashMap<IpAddr, u32>,
    ends: BTreeMap<String, usize>,
    violations: Vec<String>,
}

/// Runs `count` senders, `AT_ONCE` at a time, until all have ended. `halfway` runs once half of
/// them have started. A sender that may find mxgate gone before it greets is told so.
async fn run_senders(
    rig: &Rig,
    seed: u64,
    count: usize,
    tally: &mut Tally,
    halfway: impl FnOnce(),
    greeting_may_fail: bool,
) {
    let started = std::time::Instant::now();
    let at_once = Arc::new(Semaphore::new(AT_ONCE));
    let mut tasks = tokio::task::JoinSet::new();
    let mut choices = rng(seed, 4);
    let mut halfway = Some(halfway);
    for i in 0..count {
        if i == count / 2 {
            if let Some(halfway) = halfway.take() {
                halfway();
            }
        }
        let sender = Sender {
            kind: Kind::pick(&mut choices),
            source: source(&mut choices),
            gate: rig.listen,
            tls: rig.tls.clone(),
            rng: rng(seed, 100 + i as u64),
            greeting_may_fail,
        };
        let permit = at_once.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let source = sender.source;
            let outcome = sender.run().await;
            drop(permit);
            (source, outcome)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (source, outcome): (IpAddr, Outcome) = joined.expect("a sender panicked");
        *tally.told_accepted.entry(source).or_default() += outcome.accepted;
        let end = format!("{:?}: {}", outcome.kind, outcome.end);
        *tally.ends.entry(end).or_default() += 1;
        tally.violations.extend(outcome.violation);
    }
    println!(
        "soak: senders done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for (end, count) in &tally.ends {
        println!("  {count:6} {end}");
    }
}

/// No sender saw a broken promise, and every message one was told was accepted is in `records`,
/// under its address.
fn assert_kept(seed: u64, tally: &Tally, records: &[SessionRecord]) {
    assert!(
        tally.violations.is_empty(),
        "seed {seed}: {:#?}",
        tally.violations
    );
    let mut at_sink: HashMap<IpAddr, u32> = HashMap::new();
    for record in records {
        *at_sink.entry(record.client).or_default() += record.messages;
    }
    let lost: Vec<_> = tally
        .told_accepted
        .iter()
        .filter(|(ip, told)| at_sink.get(ip).copied().unwrap_or(0) < **told)
        .collect();
    let told: u32 = tally.told_accepted.values().sum();
    let delivered: u32 = at_sink.values().sum();
    println!("soak: {told} messages told accepted, {delivered} at the sinks");
    assert!(told > 1, "seed {seed}: nothing was delivered in the soak");
    assert!(
        lost.is_empty(),
        "seed {seed}: accepted, not at the sink: {lost:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_keeps_every_promise() {
    let seed = env_number("SOAK_SEED", 1);
    let senders = env_number("SOAK_SENDERS", 6_000) as usize;
    println!("soak: seed {seed}, {senders} senders, {AT_ONCE} at once");
    let mut rig = Rig::start().await;
    let mut tally = Tally::default();
    // A first session opens what mxgate keeps open (its DNS sockets among them): the baseline.
    rig.deliver_one(&mut tally).await;
    let descriptors_before = open_descriptors(rig.gate.pid());

    let done = CancellationToken::new();
    let sink = rig.sink.take().unwrap();
    let backend = sink.addr();
    let backend_restarts =
        tokio::spawn(disorder::restart_backend(sink, rng(seed, 1), done.clone()));
    let policy_for = rig.policy_for.clone();
    let reloads = tokio::spawn(disorder::reload_policy(
        rig.policy_file.clone(),
        move |slots, messages| policy_for(slots, messages),
        rig.gate.pid(),
        rng(seed, 2),
        done.clone(),
    ));
    let dns_stalls = tokio::spawn({
        let (dns, rng, done) = (rig.dns.clone(), rng(seed, 3), done.clone());
        async move { disorder::stall_dns(&dns, rng, done).await }
    });
    run_senders(&rig, seed, senders, &mut tally, || {}, false).await;
    done.cancel();
    let records = backend_restarts.await.unwrap();
    println!("soak: {} reloads", reloads.await.unwrap());
    dns_stalls.await.unwrap();
    assert_kept(seed, &tally, &records);

    let used = slots_in_use_settled(rig.admin).await;
    assert_eq!(used, 0.0, "seed {seed}: slots still in use");
    // Sessions have ended (their slots are free); their sockets close as their tasks finish.
    let pid = rig.gate.pid();
    let descriptors = settled(
        || async move { open_descriptors(pid) },
        |open| *open <= descriptors_before,
    )
    .await;
    assert!(
        descriptors <= descriptors_before,
        "seed {seed}: mxgate holds {descriptors} descriptors, {descriptors_before} before the soak"
    );

    // The backend of the last restart is gone; a new one on the same address takes mail again.
    rig.sink = Some(Sink::start(disorder::sink_config(backend)).await.unwrap());
    rig.deliver_one(&mut tally).await;
    rig.stop(seed).await;
}

/// SIGTERM in the middle of the load: sessions in a transaction finish it, the others get
/// `421 4.3.0`, nothing told accepted is lost, and mxgate exits cleanly. Senders that come after
/// the listener closed are refused by the kernel, and those still in its queue may be reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_keeps_every_promise() {
    let seed = env_number("SOAK_SEED", 1);
    let senders = env_number("SOAK_SENDERS", 6_000) as usize / 2;
    let mut rig = Rig::start().await;
    let mut tally = Tally::default();
    rig.deliver_one(&mut tally).await;
    let pid = rig.gate.pid();
    let terminate = move || {
        let term = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(term.success(), "SIGTERM to mxgate {pid}");
    };
    run_senders(&rig, seed, senders, &mut tally, terminate, true).await;
    let sink = rig.sink.take().unwrap();
    rig.stop(seed).await;
    assert_kept(seed, &tally, &sink.stop().await);
    let refused_after = tally.ends.keys().any(|end| end.contains("connect"));
    assert!(
        refused_after,
        "seed {seed}: nobody came after the listener closed"
    );
}
