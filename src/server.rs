//! The server: listeners, the admission decision for each connection, session tasks, and a graceful
//! shutdown that lets transactions in progress finish.

use crate::admission::gate::{AdmissionPermit, AdmissionState};
use crate::admission::{assess, lists_not_counted, log_fields, matching_rule, pregreet, Decision};
use crate::live::Live;
use crate::net::descriptors::{self, Report, ShortageLog};
use crate::policy::{Policy, PolicySource};
use crate::reputation::dnsbl::lists::DnsLists;
use crate::reputation::dnsbl::lookup::{DnsLookup, HickoryLookup, NoLookup, ResolverError};
use crate::session::driver::{self, SessionSetup};
use crate::session::refuse::{self, RejectLimits};
use crate::session::stop::StopSignal;
use crate::telemetry;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    // `reason`, not `source`: the message already says it, and error chains would say it twice.
    #[error("cannot listen on {addr}: {reason} (is another MTA, or another mxgate, on that port; or is the capability to bind it missing?)")]
    Bind { addr: SocketAddr, reason: io::Error },
    #[error(transparent)]
    Resolver(#[from] ResolverError),
}

/// The policy's DNS lists with a resolver, self-tested once: lists that fail stay out of scoring.
pub async fn dns_lists(policy: &Policy) -> Result<Arc<DnsLists>, ResolverError> {
    // Without lists no resolver is needed (nor /etc/resolv.conf read).
    let lookup: Arc<dyn DnsLookup> = if policy.dns.lists.entries.is_empty() {
        Arc::new(NoLookup)
    } else {
        Arc::new(HickoryLookup::new(policy.dns.resolver)?)
    };
    let lists = DnsLists::new(policy.dns.lists.clone(), lookup);
    if !lists.is_empty() {
        lists.self_test().await;
    }
    Ok(lists)
}

/// Bound listeners, ready to serve.
pub struct Server {
    listeners: Vec<TcpListener>,
    live: Arc<Live>,
    /// Whether this server runs the periodic DNS list self-test and rate pruning (once per process,
    /// not per worker).
    runs_housekeeping: bool,
}

/// Once per process: the DNS lists' periodic self-test (restarted when a reload brings new lists),
/// the occupancy gauges (every second) and the pruning of idle rate state (every minute).
pub async fn housekeeping(live: Arc<Live>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut last_prune = tokio::time::Instant::now();
    let mut tested: Option<(Arc<DnsLists>, Duration, CancellationToken)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let current = live.current();
        let interval = current.policy.dns.self_test_interval;
        let same = tested
            .as_ref()
            .is_some_and(|(lists, i, _)| Arc::ptr_eq(lists, &current.lists) && *i == interval);
        if !same {
            if let Some((_, _, stop)) = tested.take() {
                stop.cancel();
            }
            let stop = shutdown.child_token();
            if !current.lists.is_empty() {
                tokio::spawn(
                    current
                        .lists
                        .clone()
                        .self_test_every(interval, stop.clone()),
                );
            }
            tested = Some((current.lists.clone(), interval, stop));
        }
        live.admission().publish(&current.policy);
        if last_prune.elapsed() >= crate::admission::rate::PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            live.admission().prune();
        }
    }
}

/// How often the timer driver of a runtime that runs sessions wakes by itself.
const TIMER_PACE: Duration = Duration::from_secs(1);

/// Keeps the runtime's timer driver waking at least every [`TIMER_PACE`]. Tokio wakes its own driver
/// (an eventfd write, then one more `epoll_wait`) whenever a new timer is due before the wake-up the
/// driver planned; with every session's timers minutes away, each backend connect timeout (seconds)
/// was such a timer, and cost a wasted wake-up per connection. This costs one a second.
async fn pace_timer_driver(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TIMER_PACE);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
    }
}

/// Binds each address `workers` times with SO_REUSEPORT, so that one single-threaded runtime per core
/// accepts its own share of connections (no work stealing, no cross-thread wake-ups on the hot path).
/// Returns one set of listeners per worker.
pub fn bind_per_worker(
    addrs: &[SocketAddr],
    workers: usize,
) -> Result<Vec<Vec<std::net::TcpListener>>, ServerError> {
    use socket2::{Domain, Socket, Type};
    let mut sets: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    for &addr in addrs {
        // SO_REUSEPORT would let a second mxgate (or anything of the same user) share the port
        // silently, each deciding with its own policy: probe with a plain bind first.
        if addr.port() != 0 {
            if let Err(source) = std::net::TcpListener::bind(addr) {
                return Err(ServerError::Bind {
                    addr,
                    reason: source,
                });
            }
        }
        for set in &mut sets {
            let bind = || -> io::Result<std::net::TcpListener> {
                let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.set_reuse_port(true)?;
                socket.set_nonblocking(true)?;
                // Accepted sockets inherit it on Linux: no setsockopt per session.
                socket.set_tcp_nodelay(true)?;
                socket.bind(&addr.into())?;
                socket.listen(1024)?;
                Ok(socket.into())
            };
            set.push(bind().map_err(|source| ServerError::Bind {
                addr,
                reason: source,
            })?);
        }
    }
    Ok(sets)
}

/// How long an accept loop waits after a failed accept before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Beyond the grace period, how long to wait for sessions to write their 421 and close.
const CLOSE_MARGIN: Duration = Duration::from_secs(5);

impl Server {
    /// Binds every listen address of the policy, for a single runtime (tests, embedding); sets up
    /// and self-tests the DNS lists. Reloads re-validate the same policy (no file).
    pub async fn bind(policy: Policy) -> Result<Server, ServerError> {
        Server::bind_live(Live::start(policy, PolicySource::default()).await?).await
    }

    /// Binds the listen addresses of the live policy, for a single runtime; this server runs the
    /// housekeeping.
    pub async fn bind_live(live: Arc<Live>) -> Result<Server, ServerError> {
        let policy = live.policy();
        let mut listeners = Vec::with_capacity(policy.server.listen.len());
        for &addr in &policy.server.listen {
            let bound = async {
                let listener = TcpListener::bind(addr).await?;
                // Accepted sockets inherit TCP_NODELAY (see bind_per_worker).
                socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
                io::Result::Ok(listener)
            };
            let listener = bound
                .await
                .map_err(|reason| ServerError::Bind { addr, reason })?;
            listeners.push(listener);
        }
        Ok(Server {
            listeners,
            live,
            runs_housekeeping: true,
        })
    }

    /// A server over listeners bound by [`bind_per_worker`], inside the runtime that will run it.
    /// The caller runs the [`housekeeping`].
    pub fn from_std(listeners: Vec<std::net::TcpListener>, live: Arc<Live>) -> io::Result<Server> {
        let listeners = listeners
            .into_iter()
            .map(TcpListener::from_std)
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Server {
            listeners,
            live,
            runs_housekeeping: false,
        })
    }

    /// The admission state (slot pool, limits) this server decides with.
    pub fn admission(&self) -> Arc<AdmissionState> {
        self.live.admission().clone()
    }

    /// The policy in force, for reloads.
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }

    /// Replaces the admission state, e.g. with one on a controlled clock (tests).
    pub fn with_admission(mut self, admission: Arc<AdmissionState>) -> Self {
        let current = self.live.current();
        self.live = Live::with_parts(
            (*current.policy).clone(),
            current.lists.clone(),
            admission,
            self.live.source().clone(),
        );
        self
    }

    /// The addresses actually bound (port 0 in the policy becomes a real port).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` is cancelled, then waits for sessions to end (at most the grace period
    /// and a few seconds for their 421).
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        if self.runs_housekeeping {
            tokio::spawn(housekeeping(self.live.clone(), shutdown.clone()));
        }
        tokio::spawn(pace_timer_driver(shutdown.clone()));
        let stop = StopSignal::following(shutdown.clone());
        let backend = self.live.policy().backend.address;
        let backend_tls = match &self.live.policy().backend.tls {
            Some(tls) => tls.mode.as_str(),
            None => "none",
        };
        // One line per listener and worker: each worker has its own SO_REUSEPORT sockets.
        let worker = std::thread::current().name().unwrap_or("main").to_owned();
        for listener in self.listeners {
            let local = listener
                .local_addr()
                .map_or_else(|e| format!("unknown ({e})"), |addr| addr.to_string());
            tracing::info!(target: "mxgate::startup", listen = %local, backend = %backend, backend_tls = %backend_tls, worker = %worker, "listening");
            tracker.spawn(accept_loop(
                listener,
                self.live.clone(),
                tracker.clone(),
                shutdown.clone(),
                stop.clone(),
            ));
        }
        shutdown.cancelled().await;
        tracing::info!("shutting down: no new connections; sessions finish their transaction");
        tracker.close();
        let limit = self.live.policy().session.shutdown_grace + CLOSE_MARGIN;
        if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
            tracing::warn!(
                sessions = tracker.len(),
                "sessions still open after the grace period; exiting"
            );
        } else {
            tracing::info!("all sessions closed");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    live: Arc<Live>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    stop: StopSignal,
) {
    let mut shortage = ShortageLog::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client_addr)) => {
                if let Some(failures) = shortage.recovered() {
                    tracing::warn!(failures, "file descriptors available again: accepting");
                }
                // The policy generation is loaded once: the session keeps it through reloads.
                let current = live.current();
                tracker.spawn(handle(
                    stream,
                    client_addr,
                    current.policy.clone(),
                    current.lists.clone(),
                    live.admission().clone(),
                    stop.clone(),
                ));
            }
            Err(e) if descriptors::is_exhaustion(&e) => {
                // The connection stays in the listen queue: back off instead of spinning on the
                // error, and say so now and then, not ten times a second.
                telemetry::out_of_descriptors("accept");
                if let Report::Now { failures } = shortage.failed(std::time::Instant::now()) {
                    tracing::error!(
                        error = %e,
                        failures,
                        open_file_limit = descriptors::open_file_limit(),
                        "out of file descriptors: cannot accept, new connections wait in the listen queue until sessions end; raise the open file limit (LimitNOFILE) or lower admission.slots"
                    );
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    client_addr: SocketAddr,
    policy: Arc<Policy>,
    lists: Arc<DnsLists>,
    admission: Arc<AdmissionState>,
    shutdown: StopSignal,
) {
    let client_addr = crate::net::client_address::canonical(client_addr);
    let ip = client_addr.ip();
    // The early-talker test runs while the DNS lists are asked; clients a static rule covers skip it.
    // `early_input` is `Some` once the teaser is sent: what the client said during the delay.
    let (verdict, early_input) = match policy.pregreet {
        Some(test) if matching_rule(&policy, ip).is_none() => {
            let hostname = &policy.server.hostname;
            let (verdict, watched) = tokio::join!(
                assess(&policy, &lists, ip),
                pregreet::watch(&mut stream, hostname, test.delay)
            );
            let Ok(watched) = watched else {
                tracing::debug!(client = %ip, "client left during the greeting delay");
                return;
            };
            let verdict = match watched.early {
                true => verdict.with_early_talker(&policy, test.weight),
                false => verdict,
            };
            (verdict, Some(watched.input))
        }
        _ => (assess(&policy, &lists, ip).await, None),
    };
    let teaser_sent = early_input.is_some();
    let host = &policy.server.hostname;
    let class_index = verdict.decision.class();
    let class = &policy.class(class_index).name;
    // Classes that are admitted must still find a slot and stay within the per-address limits.
    let (next, limit) = match verdict.decision.clone() {
        Decision::Admit { class } => match admission.admit(&policy, class, ip) {
            Ok(permit) => (Next::Relay(permit), None),
            Err(refusal) => (Next::Defer(refusal.reply(host)), Some(refusal)),
        },
        Decision::Defer { reply, .. } => (Next::Defer(reply), None),
        Decision::Reject { reply, .. } => (Next::Reject(reply), None),
    };
    let action = match next {
        Next::Relay(_) => "admit",
        Next::Defer(_) => "defer",
        Next::Reject(_) => "reject",
    };
    tracing::info!(
        client = %ip,
        class = %class,
        action,
        limit = limit.map_or("none", |l| l.as_str()),
        score = verdict.score,
        reasons = %log_fields(&policy, &verdict),
        lists_not_counted = %lists_not_counted(&verdict),
        slots = admission.slots().in_use(),
        capacity = admission.slots().capacity(),
        decision_us = verdict.elapsed.as_micros() as u64,
        "decision"
    );
    telemetry::decision(class, action, verdict.elapsed.as_secs_f64());
    match next {
        Next::Relay(permit) => {
            let setup = SessionSetup {
                policy: policy.clone(),
                class: class_index,
                client_addr,
                shutdown,
                teaser_sent,
                early_input: early_input.unwrap_or_default(),
                permit,
                recipient_gate: admission.recipient_gate(class_index, ip),
            };
            let report = driver::run(stream, setup).await;
            telemetry::session_ended(telemetry::SessionCounts {
                class,
                end: report.end.as_str(),
                deliveries: report.deliveries,
                recipients_over_cap: report.recipients_over_cap,
                recipients_over_rate: report.recipients_over_rate,
                seconds: report.duration.as_secs_f64(),
            });
            tracing::info!(
                client = %ip,
                class = %class,
                end = report.end.as_str(),
                deliveries = report.deliveries,
                recipients = report.recipients,
                recipients_over_cap = report.recipients_over_cap,
                recipients_over_rate = report.recipients_over_rate,
                tls = report.tls,
                duration_ms = report.duration.as_millis() as u64,
                "session end"
            );
        }
        Next::Defer(reply) => {
            // After a teaser the greeting is finished first; the 421 then ends the session.
            let reply = pregreet::greeting_end(teaser_sent, host) + &reply;
            refuse::defer(stream, &reply, policy.session.idle_timeout).await
        }
        Next::Reject(reply) => {
            let limits = RejectLimits {
                idle_timeout: policy.session.idle_timeout,
                max_command_line: policy.session.max_command_line,
                max_commands: policy.session.max_junk_commands,
            };
            let greeting_end = teaser_sent.then(|| pregreet::greeting_end(true, host));
            refuse::reject(stream, &reply, greeting_end, limits).await
        }
    }
}

/// What a connection gets once it is decided.
enum Next {
    /// Relayed to the backend, holding these places.
    Relay(AdmissionPermit),
    /// This 421, then close.
    Defer(String),
    /// This 554, then 503 (or the 554 again after a teaser) to all but QUIT.
    Reject(String),
}
