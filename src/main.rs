//! The `mxgate` command line: run the proxy, check a policy file, explain a decision.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use mxgate::policy::{ClientAddressMode, Policy};
use mxgate::server::{self, Server};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
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
        /// DNS resolver for the DNS lists, instead of the policy's dns.resolver.
        #[arg(long)]
        resolver: Option<SocketAddr>,
    },
    /// Show the decision for a client address and every reason behind it.
    Explain {
        /// Policy file; without it, the embedded default policy.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// DNS resolver for the DNS lists, instead of the policy's dns.resolver.
        #[arg(long)]
        resolver: Option<SocketAddr>,
        /// The client address.
        ip: std::net::IpAddr,
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
        Command::Explain {
            policy,
            resolver,
            ip,
        } => {
            let Some(mut policy) = load_or_default(policy) else {
                return ExitCode::FAILURE;
            };
            if resolver.is_some() {
                policy.dns.resolver = resolver;
            }
            match explain(policy, ip) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mxgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            policy,
            listen,
            backend,
            backend_proxy,
            admin,
            resolver,
        } => {
            let Some(policy) = load_or_default(policy) else {
                return ExitCode::FAILURE;
            };
            let overrides = Overrides {
                listen,
                backend,
                backend_proxy,
                admin,
                resolver,
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

/// The policy file, or the embedded default; `None` (after printing the errors) if invalid.
fn load_or_default(path: Option<PathBuf>) -> Option<Policy> {
    match path {
        Some(path) => match Policy::load(&path) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("{e}");
                None
            }
        },
        None => Some(Policy::embedded_default()),
    }
}

/// Runs the same assessment a connection from `ip` would get, lists self-tested first.
fn explain(policy: Policy, ip: std::net::IpAddr) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let lists = server::dns_lists(&policy).await?;
        let verdict = mxgate::admission::assess(&policy, &lists, ip).await;
        Ok(mxgate::admission::render(&policy, &verdict))
    })
}

struct Overrides {
    listen: Vec<SocketAddr>,
    backend: Option<SocketAddr>,
    backend_proxy: Option<ClientAddressMode>,
    admin: Option<SocketAddr>,
    resolver: Option<SocketAddr>,
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
        if self.resolver.is_some() {
            policy.dns.resolver = self.resolver;
        }
        policy
    }
}

/// One single-threaded runtime per worker thread, each accepting on its own SO_REUSEPORT listeners;
/// the main thread waits for a signal. A worker that stops for any reason stops them all.
fn run(policy: Policy) -> anyhow::Result<()> {
    mxgate::telemetry::install(policy.server.admin)?;
    // The main thread's runtime does the DNS lists' self-tests and waits for signals.
    let main_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the main runtime")?;
    let lists = main_runtime.block_on(server::dns_lists(&policy))?;
    let admission = mxgate::admission::gate::AdmissionState::new(&policy);
    let workers = policy.server.workers;
    let sets = server::bind_per_worker(&policy.server.listen, workers)?;
    let policy = Arc::new(policy);
    let shutdown = CancellationToken::new();
    let mut threads = Vec::with_capacity(workers);
    for (i, listeners) in sets.into_iter().enumerate() {
        let (policy, lists, admission, shutdown) = (
            policy.clone(),
            lists.clone(),
            admission.clone(),
            shutdown.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("mxgate-worker-{i}"))
            .spawn(move || -> std::io::Result<()> {
                let _stop_all_on_exit = shutdown.clone().drop_guard();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    // A child token per worker: its sessions wait on a token no other thread touches.
                    Server::from_std(listeners, policy, lists, admission)?
                        .run(shutdown.child_token())
                        .await;
                    Ok(())
                })
            })
            .context("cannot start a worker thread")?;
        threads.push(thread);
    }
    main_runtime.block_on(async {
        tokio::spawn(server::housekeeping(
            policy.clone(),
            lists.clone(),
            admission.clone(),
            shutdown.clone(),
        ));
        stop_on_signal(shutdown).await;
    });
    for thread in threads {
        match thread.join() {
            Ok(result) => result.context("worker failed")?,
            Err(_) => anyhow::bail!("a worker thread panicked"),
        }
    }
    Ok(())
}

/// SIGTERM or SIGINT starts a graceful shutdown; so does a worker that stopped.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        shutdown.cancel();
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = shutdown.cancelled() => tracing::error!("a worker stopped; stopping"),
    }
    shutdown.cancel();
}
