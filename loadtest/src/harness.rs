//! Runs one scenario against one target (an mxgate it starts, one already running, or the sink
//! directly): starts the DNS list server and the sink, plays the populations with a progress line,
//! scrapes mxgate's metrics, stops everything it started, and returns the figures.

use crate::demo::{free_addr, MxgateProcess};
use crate::dnsbl::{DnsblServer, Zone};
use crate::population::{self, RunClock};
use crate::scenario::{Population, Scenario};
use crate::scrape::{self, GateMetrics};
use crate::sink::{Sink, SinkConfig};
use crate::stats::{GoodMail, Percentiles, PopulationStats, PopulationSummary};
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the load goes to.
#[derive(Debug, Clone)]
pub enum Target {
    /// Start the `mxgate` binary with this policy (`None`: its embedded default).
    Mxgate { policy: Option<PathBuf> },
    /// An mxgate already running (see the scenario's `[gate]`).
    Attach {
        addr: SocketAddr,
        admin: Option<SocketAddr>,
    },
    /// Straight to the sink: what happens without a gate.
    Direct,
}

impl Target {
    pub fn label(&self) -> String {
        match self {
            Target::Mxgate { policy: Some(p) } => format!("mxgate ({})", p.display()),
            Target::Mxgate { policy: None } => "mxgate (embedded default policy)".into(),
            Target::Attach { addr, .. } => format!("mxgate at {addr}"),
            Target::Direct => "no gate (straight to the sink)".into(),
        }
    }
}

/// mxgate's own figures over the run.
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    pub metrics: GateMetrics,
    pub cpu_seconds: Option<f64>,
    pub cpu_ms_per_1000_messages: Option<f64>,
    pub peak_rss_kib: Option<u64>,
}

/// One run: the scenario against one target.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub target: String,
    pub seconds: f64,
    pub populations: Vec<PopulationSummary>,
    pub good: GoodMail,
    /// Time to delivery over all good mail, retries included.
    pub good_delivery_seconds: Percentiles,
    /// Recipients the sink received, by population: what the senders were told matches what
    /// arrived (a message deferred for some recipients arrives twice, split).
    pub sink_recipients: BTreeMap<String, u64>,
    pub gate: Option<GateReport>,
}

/// The DNS zones that list each population as its scenario says, with the RFC 5782 test entries.
pub fn zones_for(scenario: &Scenario) -> Vec<(&'static str, Zone)> {
    let mut zen = String::from("127.0.0.2 :127.0.0.2:test\n");
    let mut dnswl = String::from("127.0.0.2 :127.0.10.0:test\n");
    for (i, p) in scenario.populations.iter().enumerate() {
        for listing in &p.listed {
            let (zone, code) = listing.zone_and_code();
            let data = if zone == "zen.spamhaus.org" {
                &mut zen
            } else {
                &mut dnswl
            };
            data.push_str(&format!("{} :{code}:{}\n", Population::network(i), p.name));
        }
    }
    let parse = |text: &str| Zone::parse(text).unwrap_or_else(|e| panic!("generated zone: {e}"));
    vec![
        ("zen.spamhaus.org", parse(&zen)),
        ("list.dnswl.org", parse(&dnswl)),
    ]
}

/// Runs `scenario` against `target`.
pub async fn run(scenario: &Scenario, target: &Target) -> anyhow::Result<RunReport> {
    let dns_listen = scenario
        .gate
        .dns
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let dns = DnsblServer::start_on(dns_listen, zones_for(scenario))
        .await
        .context("cannot start the DNS list server")?;
    let sink = Sink::start(SinkConfig {
        listen: scenario
            .gate
            .sink
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        expect_proxy: !matches!(target, Target::Direct),
        keep_bodies: false,
        idle_timeout: Duration::from_secs(300),
        ..SinkConfig::loopback()
    })
    .await
    .context("cannot start the sink")?;

    let mut gate = None;
    let (addr, admin) = match target {
        Target::Direct => (sink.addr(), None),
        Target::Attach { addr, admin } => (*addr, *admin),
        Target::Mxgate { policy } => {
            let (listen, admin) = (free_addr()?, free_addr()?);
            let (resolver, admin_text) = (dns.addr().to_string(), admin.to_string());
            let mut args = vec![
                "--backend-proxy",
                "v2",
                "--resolver",
                &resolver,
                "--admin",
                &admin_text,
            ];
            let policy_text;
            if let Some(p) = policy {
                policy_text = p.display().to_string();
                args.extend(["--policy", &policy_text]);
            }
            gate = Some(MxgateProcess::start_quiet(listen, sink.addr(), &args).await?);
            (listen, Some(admin))
        }
    };
    let pid = gate.as_ref().map(|g| g.pid());
    let cpu_before = pid.and_then(scrape::cpu_seconds);

    let clock = RunClock::new(scenario.duration, scenario.drain);
    let stop_scraping = CancellationToken::new();
    let scraper = match admin {
        Some(admin) => {
            let (baseline_taken, baseline) = tokio::sync::oneshot::channel();
            let scraper = tokio::spawn(scrape::scrape(
                admin,
                Duration::from_millis(250),
                clock.start,
                stop_scraping.clone(),
                baseline_taken,
            ));
            let _ = baseline.await;
            Some(scraper)
        }
        None => None,
    };
    let stats: Vec<Arc<PopulationStats>> = scenario
        .populations
        .iter()
        .map(|_| Arc::new(PopulationStats::default()))
        .collect();
    let mut tasks = JoinSet::new();
    for (i, p) in scenario.populations.iter().enumerate() {
        population::spawn(i, p, addr, clock, stats[i].clone(), &mut tasks);
    }
    let label = format!("{} / {}", scenario.name, target.label());
    let progress = tokio::spawn(progress(label, clock, stats.clone()));
    while tasks.join_next().await.is_some() {}
    progress.abort();
    eprintln!();
    stop_scraping.cancel();
    let metrics = match scraper {
        Some(s) => Some(s.await.context("metrics scraper")?),
        None => None,
    };
    let seconds = clock.start.elapsed().as_secs_f64();

    let cpu_after = pid.and_then(scrape::cpu_seconds);
    let peak_rss_kib = pid.and_then(scrape::memory_kib).map(|(peak, _)| peak);
    if let Some(gate) = gate {
        gate.stop().await?;
    }
    let mut sink_recipients = BTreeMap::new();
    for message in sink.messages() {
        let name = Population::index_of(message.client)
            .and_then(|i| scenario.populations.get(i))
            .map_or("(unknown)", |p| p.name.as_str());
        *sink_recipients.entry(name.to_owned()).or_insert(0) += message.rcpts.len() as u64;
    }
    sink.stop().await;
    dns.stop().await;

    let populations: Vec<PopulationSummary> = scenario
        .populations
        .iter()
        .zip(&stats)
        .map(|(p, s)| s.summary(&p.name, p.is_good()))
        .collect();
    let mut good_latencies: Vec<f64> = scenario
        .populations
        .iter()
        .zip(&stats)
        .filter(|(p, _)| p.is_good())
        .flat_map(|(_, s)| s.latencies())
        .collect();
    good_latencies.sort_by(f64::total_cmp);
    let delivered: u64 = populations.iter().map(|p| p.messages_delivered).sum();
    let cpu_seconds = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
    let gate = metrics.map(|metrics| GateReport {
        metrics,
        cpu_seconds,
        cpu_ms_per_1000_messages: cpu_seconds
            .filter(|_| delivered > 0)
            .map(|s| s * 1000.0 / delivered as f64 * 1000.0),
        peak_rss_kib,
    });
    Ok(RunReport {
        scenario: scenario.name.clone(),
        target: target.label(),
        seconds,
        good: GoodMail::of(&populations),
        good_delivery_seconds: Percentiles::of_sorted(&good_latencies),
        populations,
        sink_recipients,
        gate,
    })
}

/// One line on stderr, rewritten every second.
async fn progress(label: String, clock: RunClock, stats: Vec<Arc<PopulationStats>>) {
    let total = (clock.hard_end - clock.start).as_secs();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let tried: u64 = stats.iter().map(|s| s.tried()).sum();
        let delivered: u64 = stats.iter().map(|s| s.delivered_count()).sum();
        let phase = match Instant::now() < clock.offer_until {
            true => "offering",
            false => "draining",
        };
        eprint!(
            "\r[{label}] {:>3}s of at most {total}s ({phase}): {tried} connections, {delivered} messages delivered   ",
            clock.start.elapsed().as_secs()
        );
    }
}
