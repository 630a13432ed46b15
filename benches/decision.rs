//! Criterion bench of an admission decision with a warm DNS cache (the flood path's decision), and
//! its latency percentiles over 200,000 decisions (target: p99 under 10 microseconds).

use criterion::{criterion_group, criterion_main, Criterion};
use mxgate::admission::assess;
use mxgate::policy::{Policy, EMBEDDED_DEFAULT};
use mxgate::reputation::dnsbl::lists::DnsLists;
use mxgate::reputation::dnsbl::lookup::{Answer, DnsLookup, LookupFuture};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Answers like ZEN and DNSWL would: the RFC 5782 test entries, and PBL for every other address.
struct FakeLists;

impl DnsLookup for FakeLists {
    fn lookup_a(&self, name: String, _deadline: Duration) -> LookupFuture<'_> {
        Box::pin(async move {
            let code = if name.starts_with("1.0.0.127.")
                || name.ends_with("dnswl.org.") && !name.starts_with("2.0.0.127.")
            {
                None
            } else if name.starts_with("2.0.0.127.") {
                Some("127.0.0.2")
            } else {
                Some("127.0.0.10")
            };
            match code {
                Some(c) => Answer::Records {
                    codes: vec![c.parse().unwrap()],
                    ttl: Duration::from_secs(3600),
                },
                None => Answer::NotListed {
                    ttl: Some(Duration::from_secs(3600)),
                },
            }
        })
    }
}

fn setup(rt: &tokio::runtime::Runtime) -> (Policy, Arc<DnsLists>, IpAddr) {
    let policy = Policy::parse("default", EMBEDDED_DEFAULT, None).unwrap();
    let lists = DnsLists::new(policy.dns.lists.clone(), Arc::new(FakeLists));
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    rt.block_on(async {
        assert!(lists.self_test().await.is_empty());
        let warm = assess(&policy, &lists, ip).await;
        assert_eq!(policy.class(warm.decision.class()).name, "suspect");
    });
    (policy, lists, ip)
}

fn decision(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (policy, lists, ip) = setup(&rt);
    c.bench_function("decision, warm cache (PBL-listed client, 2 lists)", |b| {
        b.iter(|| rt.block_on(assess(&policy, &lists, std::hint::black_box(ip))))
    });

    // Percentiles: criterion reports means and medians; the target is on the tail.
    let mut samples: Vec<u128> = rt.block_on(async {
        let mut samples = Vec::with_capacity(200_000);
        for _ in 0..200_000 {
            let start = Instant::now();
            std::hint::black_box(assess(&policy, &lists, ip).await);
            samples.push(start.elapsed().as_nanos());
        }
        samples
    });
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "decision latency over {} warm-cache decisions: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        samples.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        samples[samples.len() - 1]
    );
}

criterion_group!(benches, decision);
criterion_main!(benches);
