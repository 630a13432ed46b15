//! `mxgate-loadtest throughput`: the speed figures in one run, with the harness's own client and
//! sink. Messages per second straight to the sink, through haproxy (TCP mode) and through mxgate at
//! 50 and 500 concurrent sessions, with each proxy's CPU per 1,000 messages; refusals per second
//! from listed addresses; mxgate's memory per idle session. Bounded in count and time.

use crate::child::ChildProcess;
use crate::client::SmtpClient;
use crate::demo::{free_addr, mxgate_binary, MxgateProcess};
use crate::scrape::{memory_kib, thread_run_seconds};
use crate::sink::{Sink, SinkConfig};
use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct ThroughputOptions {
    /// Messages per measured run.
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// Runs per path and session count (the median is reported); paths alternate.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Concurrent sessions to measure at.
    #[arg(long, value_delimiter = ',', default_value = "50,500")]
    pub sessions: Vec<usize>,
    /// Connections refused in the refusal measurement.
    #[arg(long, default_value_t = 100_000)]
    pub refusals: u64,
    /// Idle sessions held for the memory measurement (each costs mxgate two descriptors).
    #[arg(long, default_value_t = 9_900)]
    pub idle_sessions: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per connection: each session reconnects after this many. 0: each session keeps
    /// one connection for the whole run.
    #[arg(long, default_value_t = 0)]
    pub per_connection: u64,
    /// Also measure mxgate with TLS on its hop to a sink of its own (`[backend.tls]`, STARTTLS).
    #[arg(long)]
    pub backend_tls: bool,
}

/// The policy of the throughput runs: no limit of mxgate's gets in the way of the load.
const BENCH_POLICY: &str = r#"
[server]
hostname = "bench.localdomain"
[backend]
address = "127.0.0.1:10025"
client_address = "none"
[admission]
slots = 20000
[[class]]
name = "bench"
messages_per_session = 1000000
recipients_per_message = 1000
connections_per_ip = 0
"#;

/// The `i`-th load source: 127.40.0.1 upward.
fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        40 + (i / 62_500) as u8,
        ((i / 250) % 250) as u8,
        (i % 250) as u8 + 1,
    ))
}

/// `sessions` concurrent sessions deliver `messages` messages between them, each connection
/// `per_connection` of them (0: no limit); returns msg/s.
async fn deliver(
    target: SocketAddr,
    sessions: usize,
    messages: u64,
    per_connection: u64,
    body: Arc<Vec<u8>>,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_connection = match per_connection {
        0 => u64::MAX,
        n => n,
    };
    for i in 0..sessions {
        let (next, body) = (next.clone(), body.clone());
        tasks.spawn(async move {
            let mut more = true;
            while more {
                let mut client = SmtpClient::connect(target, Some(source(i))).await?;
                client.reply_timeout = Duration::from_secs(60);
                let greeting = client.read_reply().await?;
                if greeting.code != 220 {
                    bail!("greeting {greeting}");
                }
                client.command("EHLO load.test").await?;
                let mut sent = 0;
                while sent < per_connection {
                    more = next.fetch_add(1, Ordering::Relaxed) < messages;
                    if !more {
                        break;
                    }
                    let reply = client
                        .send_message("load@source.test", &["rcpt@sink.test"], &body)
                        .await?;
                    if reply.code != 250 {
                        bail!("message refused: {reply}");
                    }
                    sent += 1;
                }
                let _ = client.command("QUIT").await;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("load task")??;
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on {addr}")
}

/// haproxy in TCP mode in front of `backend`, if it is installed: `$HAPROXY_BIN`, else Debian's.
async fn start_haproxy(
    dir: &std::path::Path,
    backend: SocketAddr,
) -> anyhow::Result<Option<(ChildProcess, SocketAddr)>> {
    let bin = std::env::var_os("HAPROXY_BIN").unwrap_or_else(|| "/usr/sbin/haproxy".into());
    let bin = std::path::Path::new(&bin);
    if !bin.exists() {
        return Ok(None);
    }
    let listen = free_addr()?;
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n    maxconn 4000\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\nlisten smtp\n    bind {listen}\n    server sink {backend}\n"
        ),
    )?;
    let (child, _) = ChildProcess::spawn(Command::new(bin).args(["-db", "-f"]).arg(&config))
        .context("cannot start haproxy")?;
    wait_listening(listen).await?;
    Ok(Some((child, listen)))
}

/// `a[i] / b[i]`: runs of the same rep are a minute apart at most, so the ratio within a rep
/// removes most of the drift of a shared machine's load between reps.
fn paired_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// A distribution-free 95% confidence interval for the median: the order statistics `k` and
/// `n + 1 - k`, with `k` the largest rank such that P(Binomial(n, 1/2) < k) <= 2.5%. With too few
/// values for that, the whole range.
fn median_interval(values: &[f64]) -> (f64, f64) {
    let mut xs = values.to_vec();
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let half_n = 0.5f64.powi(n as i32);
    let (mut k, mut below, mut ways) = (0, 0.0, 1.0);
    while k < n && below + ways * half_n <= 0.025 {
        below += ways * half_n;
        // C(n, k + 1) from C(n, k).
        ways = ways * (n - k) as f64 / (k + 1) as f64;
        k += 1;
    }
    match k {
        0 => (xs[0], xs[n - 1]),
        k => (xs[k - 1], xs[n - k]),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

pub async fn run(opts: ThroughputOptions) -> anyhow::Result<()> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    // Removed when dropped: at the end, on an error, or when a signal ends the run.
    let scratch = tempfile::Builder::new()
        .prefix("mxgate-throughput-")
        .tempdir()?;
    let dir = scratch.path();
    let body = Arc::new({
        let mut b = b"Subject: throughput\r\n\r\n".to_vec();
        while b.len() + 78 <= opts.size {
            b.extend_from_slice(&[b'x'; 76]);
            b.extend_from_slice(b"\r\n");
        }
        b
    });
    let sink = Sink::start(SinkConfig {
        keep_bodies: false,
        keep_messages: false,
        ..SinkConfig::loopback()
    })
    .await?;
    let haproxy = start_haproxy(dir, sink.addr()).await?;
    let (gate, listen) = start_gate(dir, "bench-policy.toml", BENCH_POLICY, sink.addr()).await?;
    let tls_hop = match opts.backend_tls {
        true => Some(TlsHop::start(dir).await?),
        false => None,
    };

    println!(
        "open file limit {limit}; {} bytes per message; {} messages per run, median of {}\n",
        body.len(),
        opts.messages,
        opts.reps
    );
    println!("| sessions | path | msg/s (median) | proxy CPU ms per 1,000 msg | runs (msg/s) |");
    println!("| ---: | --- | ---: | ---: | --- |");
    let mut paths: Vec<(&str, SocketAddr, Option<u32>)> =
        vec![("direct to the sink", sink.addr(), None)];
    if let Some((child, addr)) = &haproxy {
        paths.push(("haproxy (TCP mode)", *addr, Some(child.pid())));
    }
    paths.push(("mxgate", listen, Some(gate.pid())));
    let mxgate_k = paths.len() - 1;
    if let Some(hop) = &tls_hop {
        paths.push((
            "mxgate, STARTTLS to its sink",
            hop.listen,
            Some(hop.gate.pid()),
        ));
    }
    let mut comparisons = Vec::new();
    let mut tls_costs = Vec::new();
    for &sessions in &opts.sessions {
        let mut rates = vec![Vec::new(); paths.len()];
        let mut cpu = vec![Vec::new(); paths.len()];
        for rep in 0..opts.reps {
            // The proxies swap places every rep, so neither always runs in the other's wake.
            let mut order: Vec<usize> = (0..paths.len()).collect();
            if rep % 2 == 1 {
                order[1..].reverse();
            }
            for k in order {
                let (_, addr, pid) = &paths[k];
                let before = pid.and_then(thread_run_seconds);
                let rate = deliver(
                    *addr,
                    sessions,
                    opts.messages,
                    opts.per_connection,
                    body.clone(),
                )
                .await
                .with_context(|| format!("{} at {sessions} sessions", paths[k].0))?;
                rates[k].push(rate);
                if let (Some(b), Some(a)) = (before, pid.and_then(thread_run_seconds)) {
                    cpu[k].push((a - b) / opts.messages as f64 * 1e6);
                }
            }
        }
        let mut medians = Vec::new();
        for (k, (name, _, _)) in paths.iter().enumerate() {
            let runs: Vec<String> = rates[k].iter().map(|r| format!("{r:.0}")).collect();
            let rate = median(&mut rates[k].clone());
            let per_k = match cpu[k].is_empty() {
                true => "-".to_owned(),
                false => format!("{:.1}", median(&mut cpu[k])),
            };
            println!(
                "| {sessions} | {name} | {rate:.0} | {per_k} | {} |",
                runs.join(", ")
            );
            medians.push(rate);
        }
        if haproxy.is_some() {
            comparisons.push((
                sessions,
                paired_ratios(&rates[mxgate_k], &rates[1]),
                paired_ratios(&cpu[mxgate_k], &cpu[1]),
            ));
        }
        if tls_hop.is_some() {
            let tls_k = mxgate_k + 1;
            tls_costs.push((
                sessions,
                paired_ratios(&rates[tls_k], &rates[mxgate_k]),
                paired_ratios(&cpu[tls_k], &cpu[mxgate_k]),
            ));
        }
    }
    for (sessions, rate, cpu) in comparisons {
        println!(
            "\nat {sessions} sessions, mxgate / haproxy within each rep (median, 95% interval of the median): {}",
            ratios_summary(&rate, &cpu)
        );
    }
    for (sessions, rate, cpu) in tls_costs {
        println!(
            "at {sessions} sessions, mxgate with STARTTLS to its sink / mxgate with a plain hop, within each rep: {}",
            ratios_summary(&rate, &cpu)
        );
    }
    gate.stop().await?;
    if let Some(hop) = tls_hop {
        hop.gate.stop().await?;
        hop.sink.stop().await;
    }
    if let Some((mut child, _)) = haproxy {
        let _ = child.signal_and_wait("TERM", Duration::from_secs(10)).await;
    }
    sink.stop().await;

    let refusals = crate::refusals::measure(crate::refusals::RefusalOptions {
        connections: opts.refusals,
        concurrency: 256,
        seconds: 30,
    })
    .await?;
    println!(
        "\nrefusals: {:.0} per second from listed addresses ({} refused in {:.2} s), mxgate CPU {:.1} us each",
        refusals.per_second, refusals.refused, refusals.seconds, refusals.cpu_us
    );

    let idle = idle_memory(dir, opts.idle_sessions).await?;
    println!(
        "idle sessions: {} held (greeted, EHLO answered, backend connected); mxgate RSS {:.1} MiB before, {:.1} MiB with them, peak {:.1} MiB: {:.1} KiB per idle session",
        idle.sessions,
        idle.rss_before_kib as f64 / 1024.0,
        idle.rss_with_kib as f64 / 1024.0,
        idle.peak_kib as f64 / 1024.0,
        idle.per_session_kib
    );
    Ok(())
}

/// mxgate (only warnings logged) on a free loopback address in front of `backend`, its policy
/// `text` written to `file` in `dir`.
async fn start_gate(
    dir: &std::path::Path,
    file: &str,
    text: &str,
    backend: SocketAddr,
) -> anyhow::Result<(MxgateProcess, SocketAddr)> {
    let policy = dir.join(file);
    std::fs::write(&policy, text)?;
    let listen = free_addr()?;
    let policy_arg = policy.display().to_string();
    let gate = MxgateProcess::start_quiet(listen, backend, &["--policy", &policy_arg]).await?;
    Ok((gate, listen))
}

/// Paired ratios of message rate and CPU per message: their medians and 95% intervals.
fn ratios_summary(rate: &[f64], cpu: &[f64]) -> String {
    let ((rate_low, rate_high), (cpu_low, cpu_high)) =
        (median_interval(rate), median_interval(cpu));
    format!(
        "message rate {:.3} ({rate_low:.3} - {rate_high:.3}), CPU per message {:.3} ({cpu_low:.3} - {cpu_high:.3})",
        median(&mut rate.to_vec()),
        median(&mut cpu.to_vec()),
    )
}

/// A second mxgate whose hop to a sink of its own is in TLS: `[backend.tls]` with STARTTLS, the
/// sink's certificate (made here for 127.0.0.1) as the one trusted.
struct TlsHop {
    sink: Sink,
    gate: MxgateProcess,
    listen: SocketAddr,
}

impl TlsHop {
    async fn start(dir: &std::path::Path) -> anyhow::Result<TlsHop> {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
        let ca = dir.join("sink-cert.pem");
        std::fs::write(&ca, certified.cert.pem())?;
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
        let sink = Sink::start(SinkConfig {
            tls: Some(Arc::new(server)),
            keep_bodies: false,
            keep_messages: false,
            ..SinkConfig::loopback()
        })
        .await?;
        let table = format!("\n[backend.tls]\nmode = \"starttls\"\nca = {:?}\n", ca);
        let policy = format!("{BENCH_POLICY}{table}");
        let (gate, listen) = start_gate(dir, "bench-policy-tls.toml", &policy, sink.addr()).await?;
        Ok(TlsHop { sink, gate, listen })
    }
}

struct IdleMemory {
    sessions: usize,
    rss_before_kib: u64,
    rss_with_kib: u64,
    peak_kib: u64,
    per_session_kib: f64,
}

/// Holds `sessions` admitted, relayed and idle sessions open on a fresh mxgate and reads its
/// memory. The sink runs as its own process so each process stays within its descriptor limit.
async fn idle_memory(dir: &std::path::Path, sessions: usize) -> anyhow::Result<IdleMemory> {
    let sink_addr = free_addr()?;
    let loadtest = std::env::current_exe()?;
    let (mut sink, _) = ChildProcess::spawn(
        Command::new(&loadtest)
            .args(["sink", "--listen", &sink_addr.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
    .context("cannot start a sink process")?;
    wait_listening(sink_addr).await?;
    let _ = mxgate_binary()?;
    let policy = BENCH_POLICY.replace(
        "slots = 20000",
        "slots = 20000\nmax_tracked_addresses = 20000",
    );
    let (gate, listen) = start_gate(dir, "idle-policy.toml", &policy, sink_addr).await?;
    // One session first, so that buffers and runtimes that exist once are in the baseline.
    let mut warm = SmtpClient::connect(listen, Some(source(0))).await?;
    warm.read_reply().await?;
    warm.command("EHLO warm.test").await?;
    let (_, rss_before_kib) = memory_kib(gate.pid()).context("mxgate memory")?;
    let mut held = Vec::with_capacity(sessions);
    let mut opening = tokio::task::JoinSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 1..=sessions {
        opening.spawn(async move {
            let mut client = SmtpClient::connect(listen, Some(source(i))).await?;
            client.reply_timeout = Duration::from_secs(60);
            let greeting = client.read_reply().await?;
            let ehlo = client.command("EHLO idle.test").await?;
            if greeting.code != 220 || ehlo.code != 250 {
                bail!("not admitted: {greeting} / {ehlo}");
            }
            anyhow::Ok(client)
        });
        // Keep the handshakes in flight bounded.
        while opening.len() >= 256 {
            held.push(opening.join_next().await.context("opening")???);
        }
        if Instant::now() > deadline {
            bail!("opening {sessions} sessions took over two minutes");
        }
    }
    while let Some(done) = opening.join_next().await {
        held.push(done??);
    }
    let (peak_kib, rss_with_kib) = memory_kib(gate.pid()).context("mxgate memory")?;
    drop(held);
    drop(warm);
    gate.stop().await?;
    let _ = sink.signal_and_wait("INT", Duration::from_secs(20)).await;
    Ok(IdleMemory {
        sessions,
        rss_before_kib,
        rss_with_kib,
        peak_kib,
        per_session_kib: rss_with_kib.saturating_sub(rss_before_kib) as f64 / sessions as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paired_ratio_is_the_median_of_ratios_within_reps() {
        // Rep 2 ran while the machine was slow for both: its ratio still counts as 1.0.
        let mxgate = [110.0, 55.0, 90.0];
        let haproxy = [100.0, 55.0, 100.0];
        assert_eq!(median(&mut paired_ratios(&mxgate, &haproxy)), 1.0);
        // The ratio of the medians would say 90 / 100.
        assert_eq!(
            median(&mut mxgate.to_vec()) / median(&mut haproxy.to_vec()),
            0.9
        );
    }

    #[test]
    fn the_median_interval_takes_the_binomial_order_statistics() {
        let ranks = |n: usize| median_interval(&(1..=n).map(|i| i as f64).collect::<Vec<_>>());
        // P(B(25, 1/2) < 8) = 2.2% <= 2.5% < P(B(25, 1/2) < 9) = 5.4%: ranks 8 and 18.
        assert_eq!(ranks(25), (8.0, 18.0));
        // P(B(9, 1/2) < 2) = 1.95%: ranks 2 and 8.
        assert_eq!(ranks(9), (2.0, 8.0));
        // Five values cannot give 95% (P(B(5, 1/2) < 1) = 3.1%): the whole range.
        assert_eq!(ranks(5), (1.0, 5.0));
        assert_eq!(median_interval(&[]), (0.0, 0.0));
    }

    #[test]
    fn the_median_of_an_odd_count_is_the_middle_value() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
