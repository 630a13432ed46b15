//! The `mxgate` command line: run the proxy, check a policy file, explain a decision.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use mxgate::live::Live;
use mxgate::net::descriptors;
use mxgate::policy::{ClientAddressMode, Overrides, Policy, PolicySource};
use mxgate::server::{self, Server};
use mxgate::telemetry::admin::{self, AdminState};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Validate and lint a policy file: exit 0 if valid (warnings printed), 1 with every
    /// `file:line:col: message` if not.
    #[command(group(clap::ArgGroup::new("policy_file").required(true).args(["file", "policy"])))]
    Check {
        /// The policy file to check.
        file: Option<PathBuf>,
        /// The same, spelt as `run` and `explain` take it.
        #[arg(long, value_name = "FILE", conflicts_with = "file")]
        policy: Option<PathBuf>,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
    },
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
        Command::Check {
            file,
            policy,
            strict,
        } => match file.or(policy) {
            Some(file) => check(&file, strict),
            // clap already refuses this; kept as an error, not a panic.
            None => {
                eprintln!("mxgate check: name the policy file (FILE or --policy FILE)");
                ExitCode::from(2)
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
            let source = PolicySource {
                path: policy,
                overrides: Overrides {
                    listen,
                    backend,
                    backend_proxy,
                    admin,
                    resolver,
                },
            };
            match run(source) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mxgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `mxgate check`: errors and warnings on stderr, a summary on stdout.
fn check(file: &std::path::Path, strict: bool) -> ExitCode {
    match Policy::load(file) {
        Ok(policy) => {
            for warning in &policy.warnings {
                eprintln!("{warning}");
            }
            let n = policy.warnings.len();
            if strict && n > 0 {
                eprintln!("{}: {n} warning(s), refused with --strict", file.display());
                return ExitCode::FAILURE;
            }
            match n {
                0 => println!("{}: ok", file.display()),
                n => println!("{}: ok, {n} warning(s)", file.display()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{}: {} error(s)", file.display(), e.issues.len());
            ExitCode::FAILURE
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

/// One single-threaded runtime per worker thread, each accepting on its own SO_REUSEPORT listeners;
/// the main thread's runtime runs the housekeeping, the admin API and the signals. A worker that
/// stops for any reason stops them all.
fn run(source: PolicySource) -> anyhow::Result<()> {
    // Every session holds two descriptors: take the whole hard limit, as haproxy does.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let policy = match source.load() {
        Ok(policy) => policy,
        Err(e) => anyhow::bail!("{e}"),
    };
    for warning in &policy.warnings {
        tracing::warn!("{warning}");
    }
    let needed = descriptors::needed_for(policy.admission.slots);
    if let Some(limit) = descriptors::open_file_limit().filter(|&limit| limit < needed) {
        tracing::warn!(
            open_file_limit = limit,
            needed,
            "the open file limit is below what admission.slots needs (two descriptors per session, plus room for listeners and refusals): when it runs out, new connections wait in the listen queue; raise it (LimitNOFILE)"
        );
    }
    let main_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the main runtime")?;
    // The file's policy was linted; `--admin` may have moved the admin address since.
    if let Some(addr) = mxgate::policy::lint::exposed_admin_address(&policy) {
        tracing::warn!(admin = %addr, "the admin API is not on loopback and has no token: anyone who reaches it can reload the policy");
    }
    let admin = match policy.server.admin {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .with_context(|| format!("cannot listen for the admin API on {addr}"))?;
            Some((listener, mxgate::telemetry::install()?))
        }
        None => None,
    };
    let workers = policy.server.workers;
    let spin = policy.server.spin_before_sleep;
    let scheduling = policy.server.scheduling;
    let sets = server::bind_per_worker(&policy.server.listen, workers)?;
    let live = main_runtime.block_on(Live::start(policy, source))?;
    let shutdown = CancellationToken::new();
    let listening = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(workers);
    for (i, listeners) in sets.into_iter().enumerate() {
        let (live, shutdown) = (live.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name(format!("mxgate-worker-{i}"))
            .spawn(move || -> std::io::Result<()> {
                let _stop_all_on_exit = shutdown.clone().drop_guard();
                // A worker that keeps the kernel's default policy still relays: only slower.
                if let Err(e) = mxgate::scheduling::apply(scheduling) {
                    tracing::warn!(error = %e, "the worker keeps its scheduling policy");
                }
                // Sockets and timers only: signals and child processes are the main thread's.
                // Before it sleeps, a worker yields after a busy turn and spins after a light one
                // (session/park.rs, session/spin.rs).
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .on_thread_park(|| {
                        mxgate::session::park::before_sleep();
                    })
                    .build()?;
                runtime.block_on(async {
                    if !spin.is_zero() {
                        tokio::spawn(mxgate::session::spin::spinner(spin));
                    }
                    // A child token per worker: its sessions wait on a token no other thread touches.
                    Server::from_std(listeners, live)?
                        .run(shutdown.child_token())
                        .await;
                    Ok(())
                })
            })
            .context("cannot start a worker thread")?;
        threads.push(thread);
    }
    tracing::info!(
        workers,
        scheduling = scheduling.as_str(),
        "worker threads started"
    );
    listening.store(true, Ordering::Relaxed);
    main_runtime.block_on(async {
        tokio::spawn(server::housekeeping(live.clone(), shutdown.clone()));
        if let Some((listener, handle)) = admin {
            let state = Arc::new(AdminState {
                live: live.clone(),
                metrics: Some(handle),
                listening: listening.clone(),
            });
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let stop = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = admin::serve(listener, state, stop.clone()).await {
                    tracing::error!(error = %e, "admin API stopped");
                }
            });
        }
        stop_on_signal(live, shutdown).await;
        listening.store(false, Ordering::Relaxed);
        anyhow::Ok(())
    })?;
    for thread in threads {
        match thread.join() {
            Ok(result) => result.context("worker failed")?,
            Err(_) => anyhow::bail!("a worker thread panicked"),
        }
    }
    Ok(())
}

/// SIGHUP reloads the policy; SIGTERM or SIGINT starts a graceful shutdown, and so does a worker
/// that stopped.
async fn stop_on_signal(live: Arc<Live>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        shutdown.cancel();
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the policy");
                // The outcome is logged (and counted) by the reload itself.
                let _ = live.reload().await;
                continue;
            }
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = shutdown.cancelled() => tracing::error!("a worker stopped; stopping"),
        }
        break;
    }
    shutdown.cancel();
}
