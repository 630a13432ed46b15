//! `mxgate-loadtest`: the demo, and the sink MTA on its own.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use mxgate_loadtest::sink::{Sink, SinkConfig};
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
    /// Run the sink MTA until Ctrl-C, then print what each session delivered.
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
        Command::Demo => mxgate_loadtest::demo::run().await?,
        Command::Sink { listen, proxy } => {
            let mut config = SinkConfig::loopback();
            config.listen = listen;
            config.expect_proxy = proxy;
            config.keep_bodies = false;
            let sink = Sink::start(config).await?;
            eprintln!("sink listening on {}", sink.addr());
            tokio::signal::ctrl_c().await?;
            for s in sink.sessions() {
                println!(
                    "session {} from {} ({}): {} messages",
                    s.id, s.client, s.announced_by, s.messages
                );
            }
            sink.stop().await;
        }
    }
    Ok(())
}
