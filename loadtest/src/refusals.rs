//! The flood path measured: listed senders from many 127.x addresses connect as fast as they can;
//! mxgate (embedded default policy, warm DNS cache) answers each with its 554 or 421 and closes.
//! Reports refusals per second and mxgate's CPU time per refusal. Bounded in count and time.

use crate::client::connect_from;
use crate::demo::{free_addr, MxgateProcess};
use crate::dnsbl::{demo_zones, DnsblServer, Zone};
use crate::scrape::cpu_seconds;
use crate::sink::{Sink, SinkConfig};
use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

#[derive(Debug, Clone, clap::Args)]
pub struct RefusalOptions {
    /// Connections to make in all.
    #[arg(long, default_value_t = 200_000)]
    pub connections: u64,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Stop after this many seconds even if connections remain.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
}

/// Listed sources: 127.0.100.0/23 (SBL, rejected) and 127.0.102.0/23 (PBL, deferred).
fn sources() -> Vec<IpAddr> {
    (0..1024u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 100, 0)) + i)))
        .collect()
}

/// One refused connection: connect, read the first reply, close. Returns its code.
async fn refused_once(target: SocketAddr, source: IpAddr) -> anyhow::Result<u16> {
    let mut stream = connect_from(target, Some(source)).await?;
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await??;
    if n < 3 {
        bail!("no reply");
    }
    Ok(std::str::from_utf8(&buf[..3])?.parse()?)
}

/// What a refusal flood measured.
#[derive(Debug, Clone, Copy)]
pub struct RefusalFigures {
    pub refused: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// mxgate's CPU time per refusal, in microseconds.
    pub cpu_us: f64,
    /// DNS queries during the flood (the cache is warm: expect 0).
    pub dns_queries: u64,
}

pub async fn run(opts: RefusalOptions) -> anyhow::Result<()> {
    let f = measure(opts).await?;
    println!(
        "refused {} connections in {:.2} s: {:.0} refusals/s; errors {}; mxgate CPU {:.1} us per refusal; \
         DNS queries during the flood: {} (warm cache)",
        f.refused, f.seconds, f.per_second, f.errors, f.cpu_us, f.dns_queries
    );
    Ok(())
}

/// Runs the refusal flood and returns its figures.
pub async fn measure(opts: RefusalOptions) -> anyhow::Result<RefusalFigures> {
    let mut zones = demo_zones();
    let zen =
        Zone::parse("127.0.0.2\n127.0.100.0/23 :127.0.0.2:SBL\n127.0.102.0/23 :127.0.0.10:PBL\n")
            .map_err(anyhow::Error::msg)?;
    zones[0] = ("zen.spamhaus.org", zen);
    let dns = DnsblServer::start(zones).await?;
    let sink = Sink::start(SinkConfig {
        expect_proxy: true,
        keep_bodies: false,
        ..SinkConfig::loopback()
    })
    .await?;
    let listen = free_addr()?;
    let resolver = dns.addr().to_string();
    // Metrics on, as in production: the admin listener serves them.
    let admin = free_addr()?.to_string();
    let gate = MxgateProcess::start_quiet(
        listen,
        sink.addr(),
        &["--resolver", &resolver, "--admin", &admin],
    )
    .await?;
    let sources = Arc::new(sources());

    // Warm the cache: one connection per source.
    for &source in sources.iter() {
        refused_once(listen, source).await?;
    }
    let queries_after_warmup = dns.queries();
    let cpu_of_gate = || cpu_seconds(gate.pid()).context("mxgate's CPU time from /proc");
    let cpu_before = cpu_of_gate()?;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(opts.seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.concurrency {
        let (sources, done, errors, next) =
            (sources.clone(), done.clone(), errors.clone(), next.clone());
        let total = opts.connections;
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    return;
                }
                let source = sources[(i as usize) % sources.len()];
                match refused_once(listen, source).await {
                    Ok(421 | 554) => done.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_of_gate()? - cpu_before;
    let refused = done.load(Ordering::Relaxed);
    let figures = RefusalFigures {
        refused,
        errors: errors.load(Ordering::Relaxed),
        seconds: elapsed,
        per_second: refused as f64 / elapsed,
        cpu_us: cpu / refused.max(1) as f64 * 1e6,
        dns_queries: dns.queries() - queries_after_warmup,
    };
    gate.stop().await?;
    dns.stop().await;
    sink.stop().await;
    Ok(figures)
}
