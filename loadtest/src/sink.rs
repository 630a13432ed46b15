//! The sink MTA: a small, correct SMTP server on loopback that accepts mail and keeps a record of it.
//!
//! It reads an optional PROXY v1/v2 header or XCLIENT, speaks ESMTP with PIPELINING, SIZE and STARTTLS,
//! hashes every message (SHA-256 of the body after dot-unstuffing), optionally keeps the bodies, and
//! reports what each session delivered. Tests wait on its records with [`Sink::wait_until`].

use bytes::{Buf, BytesMut};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the sink behaves.
#[derive(Clone)]
pub struct SinkConfig {
    pub listen: SocketAddr,
    pub hostname: String,
    /// Offer STARTTLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With `tls`: TLS from the first byte after the PROXY header (implicit TLS, as Postfix's
    /// `smtpd_tls_wrappermode`), not STARTTLS.
    pub tls_on_connect: bool,
    /// Require a PROXY v1 or v2 header at the start of each connection (what mxgate sends in v1/v2 mode).
    pub expect_proxy: bool,
    /// Offer XCLIENT (Postfix's) and trust it from every peer.
    pub xclient: bool,
    /// Keep message bodies in memory (tests); otherwise only their hashes and sizes.
    pub keep_bodies: bool,
    /// Keep a record of each message (tests, scenario reports). Off, the sink only counts them per
    /// session: a throughput run of millions of messages then costs it no memory per message.
    pub keep_messages: bool,
    /// SIZE limit advertised and enforced.
    pub max_size: usize,
    /// Recipients whose local part starts with this are refused with 550 (to test refusals).
    pub reject_rcpt_prefix: Option<String>,
    /// A RCPT whose local part starts with this makes the sink drop the connection without a
    /// word, as a crashing MTA would.
    pub crash_rcpt_prefix: Option<String>,
    /// A RCPT whose local part starts with this makes the sink hang: it answers nothing more (the
    /// replies before it go out), reading and dropping what comes until the connection closes or
    /// its idle timeout passes.
    pub stall_rcpt_prefix: Option<String>,
    /// Longest wait for a command before 421.
    pub idle_timeout: Duration,
}

impl SinkConfig {
    pub fn loopback() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            hostname: "sink.test".into(),
            tls: None,
            tls_on_connect: false,
            expect_proxy: false,
            xclient: false,
            keep_bodies: true,
            keep_messages: true,
            max_size: 64 * 1024 * 1024,
            reject_rcpt_prefix: None,
            crash_rcpt_prefix: None,
            stall_rcpt_prefix: None,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Message {
    pub session: u64,
    /// The client as announced (PROXY header or XCLIENT), else the peer address.
    pub client: IpAddr,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub size: usize,
    pub sha256: [u8; 32],
    pub body: Option<Vec<u8>>,
}

/// One session as the sink saw it.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub id: u64,
    pub peer: SocketAddr,
    pub client: IpAddr,
    /// How the client address was announced: "none", "proxy-v1", "proxy-v2" or "xclient".
    pub announced_by: &'static str,
    pub messages: u32,
    pub tls: bool,
    pub ended: bool,
}

#[derive(Default)]
struct Records {
    messages: Vec<Message>,
    sessions: Vec<SessionRecord>,
    /// Where each session's record lies in `sessions`, by id: a delivery finds its session at
    /// once, however many sessions came before it (a scan made long runs ever slower).
    positions: HashMap<u64, usize>,
}

impl Records {
    fn add_session(&mut self, record: SessionRecord) {
        self.positions.insert(record.id, self.sessions.len());
        self.sessions.push(record);
    }

    fn session(&mut self, id: u64) -> Option<&mut SessionRecord> {
        let at = *self.positions.get(&id)?;
        self.sessions.get_mut(at)
    }
}

struct Shared {
    config: SinkConfig,
    records: Mutex<Records>,
    changed: watch::Sender<u64>,
}

impl Shared {
    fn update<R>(&self, f: impl FnOnce(&mut Records) -> R) -> R {
        let result = f(&mut self.records.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.send_modify(|v| *v += 1);
        result
    }
}

/// A running sink; stops when dropped or with [`Sink::stop`].
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Sink {
    pub async fn start(config: SinkConfig) -> io::Result<Sink> {
        // A deep accept queue: load runs open hundreds of connections at once, and the default
        // of 128 would drop SYNs (a second's retransmit each) or strand handshakes.
        let socket = match config.listen {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(config.listen)?;
        let listener = socket.listen(4096)?;
        let addr = listener.local_addr()?;
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            config,
            records: Mutex::new(Records::default()),
            changed,
        });
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(
            listener,
            shared.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
        Ok(Sink {
            addr,
            shared,
            shutdown,
            tracker,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn messages(&self) -> Vec<Message> {
        self.shared.update(|r| r.messages.clone())
    }

    pub fn sessions(&self) -> Vec<SessionRecord> {
        self.shared.update(|r| r.sessions.clone())
    }

    /// Waits until `done` holds for the records, or `limit` passes; returns whether it held.
    pub async fn wait_until(
        &self,
        limit: Duration,
        mut done: impl FnMut(&[Message], &[SessionRecord]) -> bool,
    ) -> bool {
        let mut changes = self.shared.changed.subscribe();
        let check = |done: &mut dyn FnMut(&[Message], &[SessionRecord]) -> bool| {
            let records = self
                .shared
                .records
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            done(&records.messages, &records.sessions)
        };
        tokio::time::timeout(limit, async {
            loop {
                if check(&mut done) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
            && check(&mut done)
    }

    /// Stops accepting, closes sessions and waits for their tasks. Returns the final records, in
    /// the order the sessions were opened: taken after the last session ended, so no message a
    /// client was told was accepted is missing from them.
    pub async fn stop(self) -> Vec<SessionRecord> {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let mut sessions = self.sessions();
        sessions.sort_by_key(|s| s.id);
        sessions
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut next_id = 1;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let id = next_id;
        next_id += 1;
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = serve(stream, peer, id, &shared) => {}
            }
            shared.update(|r| {
                if let Some(s) = r.session(id) {
                    s.ended = true;
                }
            });
        });
    }
}

/// State of one SMTP session at the sink.
struct Session {
    id: u64,
    client: IpAddr,
    tls: bool,
    greeted: bool,
    mail_from: Option<String>,
    rcpts: Vec<String>,
    queued: u64,
}

enum After {
    Continue,
    /// Answer nothing more: a hung MTA.
    Stall,
    StartTls,
    Quit,
    /// Drop the connection now, replying nothing.
    Crash,
}

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: &Shared,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let idle = shared.config.idle_timeout;
    let announced = match shared.config.expect_proxy {
        true => read_proxy_header(&mut stream, &mut buf, idle).await?,
        false => None,
    };
    let (client, announced_by) = announced.unwrap_or((peer.ip(), "none"));
    shared.update(|r| {
        r.add_session(SessionRecord {
            id,
            peer,
            client,
            announced_by,
            messages: 0,
            tls: false,
            ended: false,
        })
    });
    let mut session = Session {
        id,
        client,
        tls: false,
        greeted: false,
        mail_from: None,
        rcpts: Vec::new(),
        queued: 0,
    };
    if let (true, Some(tls)) = (shared.config.tls_on_connect, shared.config.tls.clone()) {
        // What followed the PROXY header in the same read is the start of the handshake.
        let early = std::io::Cursor::new(buf.split().freeze());
        let (reader, writer) = stream.into_split();
        let joined = tokio::io::join(AsyncReadExt::chain(early, reader), writer);
        let tls_stream = tokio_rustls::TlsAcceptor::from(tls).accept(joined).await?;
        return in_tls(tls_stream, true, &mut buf, &mut session, shared).await;
    }
    stream.write_all(greeting(shared).as_bytes()).await?;
    match converse(&mut stream, &mut buf, &mut session, shared).await? {
        After::StartTls => {
            let Some(tls) = shared.config.tls.clone() else {
                return Ok(());
            };
            let tls_stream = tokio_rustls::TlsAcceptor::from(tls).accept(stream).await?;
            in_tls(tls_stream, false, &mut buf, &mut session, shared).await?;
        }
        After::Quit | After::Continue | After::Crash | After::Stall => {}
    }
    Ok(())
}

/// The rest of the session over `tls_stream`: it starts over with EHLO (after the greeting, when
/// `greet`: implicit TLS), its record says TLS, and it ends with TLS's close_notify.
async fn in_tls<S: AsyncRead + AsyncWrite + Unpin>(
    mut tls_stream: tokio_rustls::server::TlsStream<S>,
    greet: bool,
    buf: &mut BytesMut,
    session: &mut Session,
    shared: &Shared,
) -> io::Result<()> {
    session.tls = true;
    session.greeted = false;
    shared.update(|r| {
        if let Some(s) = r.session(session.id) {
            s.tls = true;
        }
    });
    // Whatever was read in the clear is not part of the TLS session.
    buf.clear();
    if greet {
        tls_stream.write_all(greeting(shared).as_bytes()).await?;
    }
    converse(&mut tls_stream, buf, session, shared).await?;
    let _ = tls_stream.shutdown().await;
    Ok(())
}

fn greeting(shared: &Shared) -> String {
    format!("220 {} ESMTP mxgate-sink\r\n", shared.config.hostname)
}

/// Reads the PROXY v1 or v2 header the connection must start with; `None` for PROXY UNKNOWN / LOCAL.
async fn read_proxy_header(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    idle: Duration,
) -> io::Result<Option<(IpAddr, &'static str)>> {
    const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    loop {
        if buf.starts_with(b"PROXY ") {
            if let Some(end) = memchr::memchr(b'\n', buf) {
                let line = String::from_utf8_lossy(&buf[..=end]).into_owned();
                buf.advance(end + 1);
                let header = ppp::v1::Header::try_from(line.as_str()).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad PROXY v1 header: {e}"),
                    )
                })?;
                let ip = match header.addresses {
                    ppp::v1::Addresses::Tcp4(a) => IpAddr::V4(a.source_address),
                    ppp::v1::Addresses::Tcp6(a) => IpAddr::V6(a.source_address),
                    ppp::v1::Addresses::Unknown => return Ok(None),
                };
                return Ok(Some((ip, "proxy-v1")));
            }
        } else if buf.len() >= 16 && buf.starts_with(V2_SIGNATURE) {
            let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
            if buf.len() >= len {
                let header = ppp::v2::Header::try_from(&buf[..len]).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad PROXY v2 header: {e}"),
                    )
                })?;
                let ip = match header.addresses {
                    ppp::v2::Addresses::IPv4(a) => Some(IpAddr::V4(a.source_address)),
                    ppp::v2::Addresses::IPv6(a) => Some(IpAddr::V6(a.source_address)),
                    _ => None,
                };
                buf.advance(len);
                return Ok(ip.map(|ip| (ip, "proxy-v2")));
            }
        } else if buf.len() >= 16
            || !(V2_SIGNATURE.starts_with(buf) || b"PROXY ".starts_with(&buf[..buf.len().min(6)]))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "expected a PROXY v1 or v2 header",
            ));
        }
        if tokio::time::timeout(idle, stream.read_buf(buf)).await?? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Whether the RCPT argument `args` names a recipient whose local part starts with `prefix`.
fn recipient_starts(args: &str, prefix: &Option<String>) -> bool {
    prefix.as_deref().is_some_and(|p| {
        args.trim_start_matches("TO:")
            .trim_start_matches('<')
            .starts_with(p)
    })
}

/// Runs commands until QUIT, STARTTLS or the connection ends. Replies to a pipelined group go out
/// in one write.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    session: &mut Session,
    shared: &Shared,
) -> io::Result<After> {
    let mut out = Vec::with_capacity(1024);
    loop {
        while let Some(end) = memchr::memchr(b'\n', buf) {
            let line = buf.split_to(end + 1);
            let after = command(&line, session, shared, &mut out);
            if matches!(after, After::Continue)
                && out.ends_with(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            {
                stream.write_all(&out).await?;
                out.clear();
                receive_body(stream, buf, session, shared, &mut out).await?;
                continue;
            }
            if matches!(after, After::Crash) {
                return Ok(After::Quit);
            }
            if matches!(after, After::Stall) {
                // What it answered before it hung has gone out.
                stream.write_all(&out).await?;
                let idle = shared.config.idle_timeout;
                while let Ok(Ok(1..)) = tokio::time::timeout(idle, stream.read_buf(buf)).await {
                    buf.clear();
                }
                return Ok(After::Quit);
            }
            if !matches!(after, After::Continue) {
                stream.write_all(&out).await?;
                return Ok(after);
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if buf.len() > 4096 {
            stream
                .write_all(b"500 5.5.2 Error: line too long\r\n")
                .await?;
            return Ok(After::Quit);
        }
        match tokio::time::timeout(shared.config.idle_timeout, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(After::Quit),
            Ok(Ok(_)) => {}
            Err(_) => {
                stream
                    .write_all(b"421 4.4.2 Error: timeout exceeded\r\n")
                    .await?;
                return Ok(After::Quit);
            }
        }
    }
}

fn command(line: &[u8], session: &mut Session, shared: &Shared, out: &mut Vec<u8>) -> After {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\r', '\n']);
    let (verb, args) = text.split_once(' ').unwrap_or((text, ""));
    let reply: String = match verb.to_ascii_uppercase().as_str() {
        "EHLO" => {
            session.greeted = true;
            session.mail_from = None;
            let mut r = format!(
                "250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n",
                shared.config.hostname, shared.config.max_size
            );
            if shared.config.tls.is_some() && !session.tls {
                r.push_str("250-STARTTLS\r\n");
            }
            if shared.config.xclient {
                r.push_str("250-XCLIENT ADDR NAME PORT\r\n");
            }
            r.push_str("250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n");
            r
        }
        "HELO" => {
            session.greeted = true;
            format!("250 {}\r\n", shared.config.hostname)
        }
        "XCLIENT" if shared.config.xclient => {
            for attr in args.split(' ') {
                if let Some(addr) = attr.strip_prefix("ADDR=") {
                    let addr = addr.strip_prefix("IPV6:").unwrap_or(addr);
                    if let Ok(ip) = addr.parse() {
                        session.client = ip;
                    }
                }
            }
            let (id, client) = (session.id, session.client);
            shared.update(|r| {
                if let Some(s) = r.session(id) {
                    s.client = client;
                    s.announced_by = "xclient";
                }
            });
            session.greeted = false;
            greeting(shared)
        }
        "MAIL" if !session.greeted => "503 5.5.1 Error: send HELO/EHLO first\r\n".into(),
        "MAIL" if session.mail_from.is_some() => "503 5.5.1 Error: nested MAIL command\r\n".into(),
        "MAIL" => {
            session.mail_from = Some(args.to_owned());
            session.rcpts.clear();
            "250 2.1.0 Ok\r\n".into()
        }
        "RCPT" if session.mail_from.is_none() => "503 5.5.1 Error: need MAIL command\r\n".into(),
        "RCPT" if recipient_starts(args, &shared.config.crash_rcpt_prefix) => {
            out.clear();
            return After::Crash;
        }
        "RCPT" if recipient_starts(args, &shared.config.stall_rcpt_prefix) => return After::Stall,
        "RCPT" => {
            if recipient_starts(args, &shared.config.reject_rcpt_prefix) {
                "550 5.1.1 Error: recipient refused\r\n".into()
            } else {
                session.rcpts.push(args.to_owned());
                "250 2.1.5 Ok\r\n".into()
            }
        }
        "DATA" if session.rcpts.is_empty() => "554 5.5.1 Error: no valid recipients\r\n".into(),
        "DATA" => "354 End data with <CR><LF>.<CR><LF>\r\n".into(),
        "RSET" => {
            session.mail_from = None;
            session.rcpts.clear();
            "250 2.0.0 Ok\r\n".into()
        }
        "NOOP" => "250 2.0.0 Ok\r\n".into(),
        "QUIT" => {
            out.extend_from_slice(b"221 2.0.0 Bye\r\n");
            return After::Quit;
        }
        "STARTTLS" if shared.config.tls.is_some() && !session.tls => {
            out.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
            return After::StartTls;
        }
        _ => "502 5.5.2 Error: command not recognized\r\n".into(),
    };
    out.extend_from_slice(reply.as_bytes());
    After::Continue
}

/// Reads a DATA body up to `CRLF.CRLF`, removing dot-stuffing, and records the message.
async fn receive_body<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    session: &mut Session,
    shared: &Shared,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let mut hasher = Sha256::new();
    let mut body = shared.config.keep_bodies.then(Vec::new);
    let mut size = 0usize;
    let mut line_start = true;
    loop {
        // Consume what is buffered; stop at the terminator.
        let mut done = false;
        while !buf.is_empty() {
            if line_start && buf[0] == b'.' {
                // ".\r\n" ends the body; any other leading dot is stuffing. Two bytes may not tell.
                if buf.len() < 3 && !(buf.len() == 2 && buf[1] != b'\r') {
                    break;
                }
                if buf.starts_with(b".\r\n") {
                    buf.advance(3);
                    done = true;
                    break;
                }
                buf.advance(1);
            }
            let (n, ends_line) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            hasher.update(&buf[..n]);
            if let Some(body) = body.as_mut() {
                body.extend_from_slice(&buf[..n]);
            }
            size += n;
            buf.advance(n);
            line_start = ends_line;
        }
        if done {
            break;
        }
        buf.reserve(16 * 1024);
        match tokio::time::timeout(shared.config.idle_timeout, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
    let from = session.mail_from.take().unwrap_or_default();
    let rcpts = std::mem::take(&mut session.rcpts);
    if size > shared.config.max_size {
        out.extend_from_slice(b"552 5.3.4 Error: message file too big\r\n");
        return Ok(());
    }
    session.queued += 1;
    let message = Message {
        session: session.id,
        client: session.client,
        mail_from: from,
        rcpts,
        size,
        sha256: hasher.finalize().into(),
        body,
    };
    let id = session.id;
    let keep_message = shared.config.keep_messages;
    // Recorded before the 250 goes out: a client that has its 250 finds the message here.
    shared.update(|r| {
        if keep_message {
            r.messages.push(message);
        }
        if let Some(s) = r.session(id) {
            s.messages += 1;
        }
    });
    out.extend_from_slice(
        format!("250 2.0.0 Ok: queued as S{id}Q{}\r\n", session.queued).as_bytes(),
    );
    Ok(())
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
