//! The `mxgate` command line: run the proxy, or check a policy file.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use mxgate::policy::{ClientAddressMode, Policy};
use mxgate::server::Server;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "mxgate",
    version,
    about = "Inbound SMTP admission controller: a front proxy before your MTA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Policy file; without it, the embedded default policy (policies/default.toml).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Listen address, instead of the policy's server.listen (repeat for several).
        #[arg(long = "listen")]
        listen: Vec<SocketAddr>,
        /// Backend MTA address, instead of the policy's backend.address.
        #[arg(long)]
        backend: Option<SocketAddr>,
        /// How the backend learns the client address, instead of the policy's backend.client_address.
        #[arg(long, value_enum)]
        backend_proxy: Option<ClientAddressMode>,
        /// Admin HTTP address, instead of the policy's server.admin.
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// Validate a policy file: exit 0 if valid, 1 with `file:line:col: message` lines if not.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MXGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Check { file } => match Policy::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            policy,
            listen,
            backend,
            backend_proxy,
            admin,
        } => {
            let policy = match policy {
                Some(path) => match Policy::load(&path) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                },
                None => Policy::embedded_default(),
            };
            let overrides = Overrides {
                listen,
                backend,
                backend_proxy,
                admin,
            };
            match run(overrides.apply(policy)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mxgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

struct Overrides {
    listen: Vec<SocketAddr>,
    backend: Option<SocketAddr>,
    backend_proxy: Option<ClientAddressMode>,
    admin: Option<SocketAddr>,
}

impl Overrides {
    fn apply(self, mut policy: Policy) -> Policy {
        if !self.listen.is_empty() {
            policy.server.listen = self.listen;
        }
        if let Some(backend) = self.backend {
            policy.backend.address = backend;
        }
        if let Some(mode) = self.backend_proxy {
            policy.backend.client_address = mode;
        }
        if self.admin.is_some() {
            policy.server.admin = self.admin;
        }
        policy
    }
}

fn run(policy: Policy) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = Server::bind(policy).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        server.run(shutdown).await;
        Ok(())
    })
}

/// SIGTERM or SIGINT starts a graceful shutdown.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop mxgate with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
