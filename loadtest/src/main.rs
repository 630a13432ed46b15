//! `mxgate-loadtest`: the demo, and the sink MTA on its own.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use mxgate_loadtest::dnsbl;
use mxgate_loadtest::sink::{Sink, SinkConfig};
use std::future::Future;
use std::net::SocketAddr;

#[derive(Parser)]
#[command(
    name = "mxgate-loadtest",
    about = "mxgate's test peers and load harness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the sink MTA and mxgate on loopback, play a few senders, show what mxgate decided.
    Demo,
    /// Run a scenario (loadtest/scenarios/*.toml): sender populations against mxgate, a report
    /// with plots. With --compare, the same scenario against a second policy or no gate.
    Run {
        /// The scenario file.
        scenario: std::path::PathBuf,
        /// Policy for mxgate, instead of the scenario's `[gate] policy`.
        #[arg(long)]
        policy: Option<std::path::PathBuf>,
        /// A/B: run again against this policy file, or `direct` (no gate, straight to the sink).
        #[arg(long)]
        compare: Option<String>,
        /// Where report.json, report.md and the SVG plots go (default: target/loadtest/<scenario>).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Serve DNS list zones on a loopback UDP port until Ctrl-C or SIGTERM: the built-in test zones
    /// (zen.spamhaus.org, list.dnswl.org) or `--zone NAME=FILE` (rbldnsd ip4set data).
    Dnsbl {
        #[arg(long, default_value = "127.0.0.1:5353")]
        listen: SocketAddr,
        #[arg(long = "zone")]
        zones: Vec<String>,
    },
    /// Measure refusals per second: listed senders flood mxgate (embedded default policy, warm cache).
    Refusals(mxgate_loadtest::refusals::RefusalOptions),
    /// The speed figures in one run: msg/s direct, through haproxy and through mxgate at 50 and
    /// 500 sessions, CPU per 1,000 messages, refusals per second, memory per idle session.
    Throughput(mxgate_loadtest::throughput::ThroughputOptions),
    /// Run the sink MTA until Ctrl-C or SIGTERM, then print what each session delivered.
    Sink {
        #[arg(long, default_value = "127.0.0.1:10025")]
        listen: SocketAddr,
        /// Require a PROXY v1/v2 header on each connection.
        #[arg(long)]
        proxy: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo => until_stopped(mxgate_loadtest::demo::run()).await?,
        Command::Run {
            scenario,
            policy,
            compare,
            out,
        } => {
            let run = mxgate_loadtest::report::run_scenario(&scenario, policy, compare, out);
            until_stopped(run).await?;
        }
        Command::Refusals(opts) => until_stopped(mxgate_loadtest::refusals::run(opts)).await?,
        Command::Throughput(opts) => until_stopped(mxgate_loadtest::throughput::run(opts)).await?,
        Command::Dnsbl { listen, zones } => {
            let zones = if zones.is_empty() {
                dnsbl::demo_zones()
                    .into_iter()
                    .map(|(n, z)| (n.to_owned(), z))
                    .collect()
            } else {
                let mut loaded = Vec::new();
                for spec in zones {
                    let (name, file) = spec
                        .split_once('=')
                        .ok_or_else(|| anyhow::anyhow!("--zone {spec:?}: write NAME=FILE"))?;
                    let data = std::fs::read_to_string(file)?;
                    let zone =
                        dnsbl::Zone::parse(&data).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
                    loaded.push((name.to_owned(), zone));
                }
                loaded
            };
            let server = dnsbl::DnsblServer::start_on(
                listen,
                zones.iter().map(|(n, z)| (n.as_str(), z.clone())).collect(),
            )
            .await?;
            eprintln!("DNS lists on {} (UDP)", server.addr());
            stop_signal().await?;
            eprintln!("{} queries answered", server.queries());
            server.stop().await;
        }
        Command::Sink { listen, proxy } => {
            let mut config = SinkConfig::loopback();
            config.listen = listen;
            config.expect_proxy = proxy;
            config.keep_bodies = false;
            config.keep_messages = false;
            let sink = Sink::start(config).await?;
            eprintln!("sink listening on {}", sink.addr());
            stop_signal().await?;
            // The report comes after every session has ended: printed before, it would miss the
            // messages accepted while it was being written.
            for s in sink.stop().await {
                println!(
                    "session {} from {} ({}): {} messages",
                    s.id, s.client, s.announced_by, s.messages
                );
            }
        }
    }
    Ok(())
}

/// Runs a harness command until it ends or Ctrl-C or SIGTERM comes. On a signal the command is
/// dropped, and with it the processes it started (mxgate, haproxy), each killed when its handle
/// drops: a signal's default action would end the harness at once and leave them running.
async fn until_stopped<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::select! {
        done = work => done,
        signal = stop_signal() => {
            signal?;
            anyhow::bail!("interrupted; the processes this run started are stopped")
        }
    }
}

/// Ctrl-C (SIGINT) or SIGTERM: the servers started here stop on either.
async fn stop_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
