//! Runs one admitted session over sockets: connects the backend, feeds the relay state machine, writes
//! what it asks for, enforces the timeouts and upgrades the client to TLS on STARTTLS.

use super::buffers;
use super::quick_write::{write_at_once, Left, Unflushed};
use super::refuse;
use super::relay::{Action, EndReason, Output, Relay, RelayConfig};
use super::stop::StopSignal;
use super::wait::{reset_timer, Armed, PeerRead, Stop, Wait, Woken};
use crate::admission::gate::AdmissionPermit;
use crate::net::backend::{self, BackendError, BackendStream};
use crate::net::last_reply;
use crate::policy::{ClassPolicy, ClientAddressMode, Policy};
use crate::telemetry;
use bytes::BytesMut;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};

/// Bytes read at a time in a DATA body, relayed in pieces of up to this size.
const BODY_CHUNK: usize = 16 * 1024;

/// Everything a session needs besides its sockets.
pub struct SessionSetup {
    pub policy: Arc<Policy>,
    pub class: usize,
    pub client_addr: SocketAddr,
    pub shutdown: StopSignal,
    /// The greeting was begun with mxgate's `220-` teaser (pregreet test).
    pub teaser_sent: bool,
    /// What the client sent during the pregreet test: its first commands.
    pub early_input: BytesMut,
    /// The slot and places this session holds; released when the session ends, however it ends.
    pub permit: AdmissionPermit,
    /// The client's recipient rate allowance, shared with its other sessions.
    pub recipient_gate: Option<Box<dyn FnMut() -> bool + Send>>,
}

/// How the session went, for the log line and the metrics.
#[derive(Debug, Clone)]
pub struct SessionReport {
    pub end: EndReason,
    pub deliveries: u32,
    pub recipients: u32,
    pub recipients_over_cap: u32,
    pub recipients_over_rate: u32,
    pub tls: bool,
    pub duration: Duration,
}

struct Timeouts {
    idle: Duration,
    reply: Duration,
    data_reply: Duration,
    grace: Duration,
    session_deadline: Instant,
}

/// The backend side of a session and both input buffers.
struct Link {
    backend: BackendStream,
    backend_in: BytesMut,
    client_in: BytesMut,
}

enum Next {
    StartTls,
    Done,
}

/// Relays one admitted client to the backend until the session ends.
pub async fn run(mut client: TcpStream, mut setup: SessionSetup) -> SessionReport {
    let started = Instant::now();
    let policy = &setup.policy;
    let class: &ClassPolicy = policy.class(setup.class);
    // Replies are small: without TCP_NODELAY each would wait for the client's delayed ACK. Linux
    // accepted sockets inherit it from the listener (set at bind), which saves a system call.
    if !cfg!(target_os = "linux") {
        let _ = client.set_nodelay(true);
    }
    // The address the client reached is needed only for a PROXY header: no getsockname otherwise.
    let local_addr = match policy.backend.client_address {
        ClientAddressMode::V1 | ClientAddressMode::V2 => {
            client.local_addr().unwrap_or(setup.client_addr)
        }
        ClientAddressMode::None | ClientAddressMode::Xclient => setup.client_addr,
    };
    let connected = backend::connect(
        &policy.backend,
        setup.client_addr,
        local_addr,
        &policy.server.hostname,
        buffers::take(),
    )
    .await;
    let backend = match connected {
        Ok(backend) => backend,
        Err(e) => {
            match e {
                BackendError::NoDescriptor { .. } => telemetry::out_of_descriptors("backend"),
                _ => telemetry::backend_connect_failed(e.reason()),
            }
            tracing::warn!(client = %setup.client_addr, error = %e, "backend unavailable");
            let host = &policy.server.hostname;
            let finish = crate::admission::pregreet::greeting_end(setup.teaser_sent, host);
            let reply = format!("{finish}421 4.3.2 {host} Service temporarily unavailable\r\n");
            refuse::defer(client, &reply, policy.session.idle_timeout).await;
            return SessionReport {
                end: EndReason::BackendUnavailable,
                deliveries: 0,
                recipients: 0,
                recipients_over_cap: 0,
                recipients_over_rate: 0,
                tls: false,
                duration: started.elapsed(),
            };
        }
    };
    // Under stress (the pool past its threshold when this session was admitted), stricter limits.
    let stress = &policy.admission;
    let (messages_per_session, idle_timeout) = match setup.permit.stressed {
        true => (
            class
                .messages_per_session
                .min(stress.stress_messages_per_session),
            policy.session.idle_timeout.min(stress.stress_idle_timeout),
        ),
        false => (class.messages_per_session, policy.session.idle_timeout),
    };
    let mut relay = Relay::new(RelayConfig {
        hostname: policy.server.hostname.clone(),
        messages_per_session,
        recipients_per_message: class.recipients_per_message,
        max_command_line: policy.session.max_command_line,
        max_junk_commands: policy.session.max_junk_commands,
        tls_available: policy.tls.is_some(),
        teaser_sent: setup.teaser_sent,
    })
    .with_recipient_gate(setup.recipient_gate.take());
    let timeouts = Timeouts {
        idle: idle_timeout,
        reply: policy.backend.reply_timeout,
        data_reply: policy.backend.data_reply_timeout,
        grace: policy.session.shutdown_grace,
        session_deadline: started + policy.session.max_duration,
    };
    let mut link = Link {
        backend: backend.stream,
        backend_in: backend.pending_input,
        client_in: match setup.early_input.is_empty() {
            true => buffers::take(),
            false => setup.early_input,
        },
    };
    let mut grace_deadline = None;

    let next = drive(
        &mut relay,
        &mut client,
        &mut link,
        &timeouts,
        &setup.shutdown,
        &mut grace_deadline,
    )
    .await;
    if let (Next::StartTls, Some(tls)) = (next, policy.tls.clone()) {
        // Boxed: the TLS stream and handshake are large, and most sessions never get here; inline
        // they would make every session's task (allocated and moved at spawn) as large.
        let handshake_timeout = policy.session.tls_handshake_timeout;
        let ctx = TlsContext {
            config: tls,
            handshake_timeout,
            client_addr: setup.client_addr,
            shutdown: &setup.shutdown,
        };
        Box::pin(continue_in_tls(
            ctx,
            client,
            &mut relay,
            &mut link,
            &timeouts,
            &mut grace_deadline,
        ))
        .await;
    }
    if relay.backend_closes_next() {
        // The backend has usually closed already, while its 221 was relayed: no timer then.
        finish_within(
            backend::CLOSE_WAIT,
            backend::until_closed(&mut link.backend),
        )
        .await;
    }
    buffers::give(link.client_in);
    buffers::give(link.backend_in);
    let stats = relay.stats();
    SessionReport {
        end: relay.end_reason().unwrap_or(EndReason::ClientClosed),
        deliveries: stats.deliveries,
        recipients: stats.recipients,
        recipients_over_cap: stats.recipients_refused_by_cap,
        recipients_over_rate: stats.recipients_deferred_by_rate,
        tls: relay.tls_active(),
        duration: started.elapsed(),
    }
}

/// What the TLS continuation of a session needs besides the relay and the link.
struct TlsContext<'a> {
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    client_addr: SocketAddr,
    shutdown: &'a StopSignal,
}

/// Upgrades the client to TLS after STARTTLS and relays the rest of the session over it. The
/// handshake ends at `tls_handshake_timeout`, or at the end of the grace period if the shutdown
/// signal comes first, so that a shutdown never waits for a handshake longer than for a session.
async fn continue_in_tls(
    ctx: TlsContext<'_>,
    client: TcpStream,
    relay: &mut Relay,
    link: &mut Link,
    timeouts: &Timeouts,
    grace_deadline: &mut Option<Instant>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(ctx.config);
    // The deadline is the signal's: the same whether the session saw it before the handshake.
    let grace_over = async {
        ctx.shutdown.raised().await;
        sleep_until(ctx.shutdown.grace_deadline(timeouts.grace)).await;
    };
    let handshake = tokio::select! {
        done = timeout(ctx.handshake_timeout, acceptor.accept(client)) => Some(done),
        () = grace_over => None,
    };
    match handshake {
        Some(Ok(Ok(mut tls_client))) => {
            telemetry::tls_handshake(true);
            relay.on_tls_established();
            drive(
                relay,
                &mut tls_client,
                link,
                timeouts,
                ctx.shutdown,
                grace_deadline,
            )
            .await;
            let _ = timeout(Duration::from_secs(1), tls_client.shutdown()).await;
        }
        Some(Ok(Err(e))) => {
            telemetry::tls_handshake(false);
            tracing::info!(client = %ctx.client_addr, error = %e, "TLS handshake failed");
            close_after_handshake(relay, link, timeouts, Relay::on_tls_failed).await;
        }
        Some(Err(_)) => {
            telemetry::tls_handshake(false);
            tracing::info!(client = %ctx.client_addr, "TLS handshake timed out");
            close_after_handshake(relay, link, timeouts, Relay::on_tls_failed).await;
        }
        None => {
            tracing::info!(client = %ctx.client_addr, "TLS handshake cut off: shutting down");
            close_after_handshake(relay, link, timeouts, Relay::on_shutdown_in_tls_handshake).await;
        }
    }
}

/// Ends a session whose handshake did not complete: `end` closes the relay (QUIT to the backend),
/// and that is written to the backend; the client only sees its connection close.
async fn close_after_handshake(
    relay: &mut Relay,
    link: &mut Link,
    timeouts: &Timeouts,
    end: fn(&mut Relay, &mut Output),
) {
    let mut out = Output::default();
    end(relay, &mut out);
    let backend = &mut link.backend;
    let written = async {
        backend.write_all(&out.to_backend).await?;
        backend.flush().await
    };
    let _ = timeout(timeouts.reply, written).await;
}

/// The client connection as the driver uses it: plain TCP, then TLS after STARTTLS.
trait ClientStream: PeerRead + AsyncWrite + Unpin {
    /// Writes the session's last bytes and half-closes, in one segment where the transport allows.
    async fn write_last(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes).await
    }
}

impl ClientStream for TcpStream {
    async fn write_last(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        last_reply::write_last(self, bytes).await
    }
}

/// TLS ends with its own close_notify; its last record is written the ordinary way.
impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {}

impl PeerRead for tokio_rustls::server::TlsStream<TcpStream> {}

/// Runs the relay over one client stream (plain, then TLS after STARTTLS) until it ends or upgrades.
async fn drive<C: ClientStream>(
    relay: &mut Relay,
    client: &mut C,
    link: &mut Link,
    t: &Timeouts,
    shutdown: &StopSignal,
    grace_deadline: &mut Option<Instant>,
) -> Next {
    // The output buffers are held only while they hold bytes: taken before the relay writes, given
    // back once written. The few a worker uses then stay in its cache however many sessions it
    // carries, and a session that waits holds only its two input buffers.
    let mut out = Output::default();
    let mut client_read_filled = false;
    // One timer, armed once and moved lazily, for the wait in progress (idle client, backend reply)
    // and the session's time limit, whichever comes first: re-arming a timer on every read would
    // cost a timer-wheel update per SMTP command. It may fire early; it then re-arms to the real
    // deadline, which counts from the last bytes read (never from the timer's own wake-up, or an
    // idle peer whose first bytes came a moment after the timer was armed would never time out).
    let mut last_read = Instant::now();
    let timer = sleep_until((last_read + t.idle).min(t.session_deadline));
    let cancelled = shutdown.raised();
    tokio::pin!(timer, cancelled);
    let mut grace_timer = grace_deadline.map(|d| Box::pin(sleep_until(d)));
    // Once the session's time limit has passed, only the waits for the backend's replies still
    // owed are timed (the relay reads no more from the client).
    let mut expired = false;
    let mut armed = Armed::default();
    loop {
        lend_output_buffers(&mut out);
        relay.pump(&mut link.client_in, &mut link.backend_in, &mut out);
        // The common turn: both sockets take all of the output at once. The timed writes are built
        // only for what is left, and for the turns that close the session or upgrade it.
        let left = match out.action {
            None => write_at_once(client, &mut link.backend, &mut out).await,
            Some(_) => Left::Output(Unflushed::default()),
        };
        let next = match left {
            Left::Nothing => None,
            Left::Output(unflushed) => {
                let backend = &mut link.backend;
                flush(relay, client, backend, &mut out, t, unflushed).await
            }
        };
        // Inside a body the buffers are kept: they grew to the size of its pieces, and the pool
        // would free them and hand out small ones to grow again at every piece.
        if next.is_some() || !relay.in_body() {
            buffers::give(std::mem::take(&mut out.to_client));
            buffers::give(std::mem::take(&mut out.to_backend));
        }
        if let Some(next) = next {
            return next;
        }
        let wait = match relay.awaiting_backend() {
            Some(true) => t.data_reply,
            Some(false) => t.reply,
            None => t.idle,
        };
        let deadline = match expired {
            true => last_read + wait,
            false => (last_read + wait).min(t.session_deadline),
        };
        if deadline < timer.deadline() {
            reset_timer(timer.as_mut(), &mut armed.timer, deadline);
        }
        let wants_client = relay.wants_client_input(link.client_in.len());
        if wants_client {
            // Reads grow to BODY_CHUNK only inside a body that filled the last read: small messages
            // never need more than buffers::START, and the buffer is then never reallocated.
            let read_size = match relay.in_body() && client_read_filled {
                true => BODY_CHUNK,
                false => buffers::START,
            };
            link.client_in.reserve(read_size);
        }
        let client_room = link.client_in.capacity() - link.client_in.len();
        link.backend_in.reserve(buffers::START);
        let woken = Wait {
            armed: &mut armed,
            stop: match grace_timer.as_mut() {
                None => Stop::Signal(cancelled.as_mut()),
                Some(grace) => Stop::Grace(grace.as_mut()),
            },
            backend: &mut link.backend,
            backend_in: &mut link.backend_in,
            client: wants_client.then_some((&mut *client, &mut link.client_in)),
            timer: timer.as_mut(),
        }
        .await;
        match woken {
            Woken::Cancelled => {
                let at = shutdown.grace_deadline(t.grace);
                *grace_deadline = Some(at);
                grace_timer = Some(Box::pin(sleep_until(at)));
                relay.on_shutdown(&mut out);
            }
            Woken::GraceOver => relay.on_shutdown_deadline(&mut out),
            Woken::Backend(read) => {
                last_read = Instant::now();
                if !matches!(read, Ok(n) if n > 0) {
                    relay.on_backend_eof(&mut out);
                }
            }
            Woken::Client(read) => {
                last_read = Instant::now();
                match read {
                    Ok(n) if n > 0 => client_read_filled = n == client_room,
                    _ => relay.on_client_eof(&mut out),
                }
            }
            Woken::Timer => {
                let now = Instant::now();
                if !expired && now >= t.session_deadline {
                    expired = true;
                    relay.on_session_expired(&mut out);
                } else if now >= deadline {
                    relay.on_timeout(&mut out);
                } else {
                    reset_timer(timer.as_mut(), &mut armed.timer, deadline);
                }
            }
        }
    }
}

/// Gives the output buffers room from the worker's pool, unless one already holds bytes (a
/// timeout or an end of file between two turns wrote into a fresh one).
fn lend_output_buffers(out: &mut Output) {
    for buf in [&mut out.to_client, &mut out.to_backend] {
        if buf.capacity() == 0 {
            *buf = buffers::take();
        }
    }
}

/// Writes what the relay produced (what [`write_at_once`] left of it) and flushes the streams
/// `unflushed` names. Returns how the session goes on if it stops here.
async fn flush<C: ClientStream>(
    relay: &mut Relay,
    client: &mut C,
    backend: &mut BackendStream,
    out: &mut Output,
    t: &Timeouts,
    unflushed: Unflushed,
) -> Option<Next> {
    let mut client_gone = false;
    if !out.to_client.is_empty() || unflushed.client {
        let written = finish_within(t.idle, async {
            // The last reply before a close takes the FIN along where the transport allows.
            match out.action {
                Some(Action::Close) => client.write_last(&out.to_client).await?,
                _ => client.write_all(&out.to_client).await?,
            }
            client.flush().await
        })
        .await;
        out.to_client.clear();
        if !matches!(written, Some(Ok(()))) {
            // A client that does not read its replies is gone; the backend is told QUIT if it can be.
            client_gone = true;
            relay.on_client_eof(out);
            out.to_client.clear();
        }
    }
    if !out.to_backend.is_empty() || unflushed.backend {
        let written = finish_within(t.reply, async {
            backend.write_all(&out.to_backend).await?;
            backend.flush().await
        })
        .await;
        out.to_backend.clear();
        if !matches!(written, Some(Ok(()))) && !client_gone && out.action.is_none() {
            relay.on_backend_eof(out);
            let _ = timeout(t.idle, client.write_all(&out.to_client)).await;
            return Some(Next::Done);
        }
    }
    match out.action.take() {
        Some(Action::Close) => Some(Next::Done),
        Some(Action::StartTls) => Some(Next::StartTls),
        None if client_gone => Some(Next::Done),
        None => None,
    }
}

/// Runs `work` to completion within `limit`, or gives `None`. It is polled once before any timer is
/// armed: writes of replies and commands almost always complete at once, and then no clock is read
/// and no timer is set.
async fn finish_within<F: Future>(limit: Duration, work: F) -> Option<F::Output> {
    let mut work = pin!(work);
    if let Poll::Ready(done) = poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
        return Some(done);
    }
    timeout(limit, work).await.ok()
}
