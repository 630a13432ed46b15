//! The relay state machine: what to send to whom for every byte from the client or the backend.
//!
//! Pure (no I/O, no clock): the session driver feeds it input and events and carries out its output.
//! Replies reach the client in the order of the commands, whether they come from the backend or from
//! mxgate (a refused RCPT in the middle of a pipelined group waits for the replies before it).
//! A delivery is counted only from the backend's 2xx reply to the end of DATA, so mxgate never tells a
//! client more than the backend said.

use super::body::BodyStream;
use super::codec::{
    bdat_size, parse_command, scan_line, scan_reply, Command, LineScan, Reply, Verb,
};
use super::ehlo::{rewrite_ehlo, EhloOffer};
use super::owed::{Owed, OwedReplies};
use bytes::{Buf, BytesMut};

/// The limits and names a relay works with, fixed for the session's life.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Name in mxgate's own replies.
    pub hostname: std::sync::Arc<str>,
    pub messages_per_session: u32,
    pub recipients_per_message: u32,
    pub max_command_line: usize,
    pub max_junk_commands: u32,
    /// Whether STARTTLS is offered (a certificate is configured).
    pub tls_available: bool,
    /// mxgate began the greeting with a `220-` teaser: the backend's greeting must end it.
    pub teaser_sent: bool,
}

/// Replies in flight to the backend are bounded, so a client that never reads cannot make mxgate
/// buffer without end: past this, mxgate stops reading the client until replies come back.
const MAX_PENDING: usize = 256;

/// What the driver must do after writing the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Hand the client connection to TLS (the 220 reply is in `to_client`).
    StartTls,
    /// Close both connections.
    Close,
}

/// Bytes to write and the next step. The driver writes `to_client`, then `to_backend`, then acts.
#[derive(Debug, Default)]
pub struct Output {
    pub to_client: BytesMut,
    pub to_backend: BytesMut,
    pub action: Option<Action>,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.to_client.is_empty() && self.to_backend.is_empty() && self.action.is_none()
    }
}

/// Why a session ended, for the decision log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Quit,
    MessageLimit,
    ClientClosed,
    ClientTimeout,
    SessionTimeout,
    /// No backend connection to relay to (refused, timed out, out of descriptors, XCLIENT refused,
    /// no TLS as `[backend.tls]` asks): the client got `421 4.3.2` and nothing was relayed.
    BackendUnavailable,
    BackendClosed,
    BackendTimeout,
    BackendProtocolError,
    TooManyErrors,
    NonSmtp,
    Shutdown,
    TlsFailed,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Quit => "quit",
            EndReason::MessageLimit => "message_limit",
            EndReason::ClientClosed => "client_closed",
            EndReason::ClientTimeout => "client_timeout",
            EndReason::SessionTimeout => "session_timeout",
            EndReason::BackendUnavailable => "backend_unavailable",
            EndReason::BackendClosed => "backend_closed",
            EndReason::BackendTimeout => "backend_timeout",
            EndReason::BackendProtocolError => "backend_protocol_error",
            EndReason::TooManyErrors => "too_many_errors",
            EndReason::NonSmtp => "non_smtp",
            EndReason::Shutdown => "shutdown",
            EndReason::TlsFailed => "tls_failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    /// MAIL in transaction `txn`; `nested` if a MAIL was already sent in it (the backend then
    /// refuses this one if the first was accepted).
    Mail {
        txn: u32,
        nested: bool,
    },
    /// RCPT in transaction `txn`: its reply counts towards the cap only in that transaction.
    Rcpt {
        txn: u32,
    },
    Data,
    EndOfData,
    Quit,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading command lines.
    Command,
    /// DATA was sent: what follows is a body only if the backend says 354, so wait for its reply.
    AwaitDataReply,
    /// Relaying a body until `CRLF.CRLF`.
    Data,
    /// Discarding the rest of an overlong line, up to its LF.
    DiscardLine,
    /// Discarding a BDAT chunk mxgate refused: this many bytes.
    DiscardChunk(u64),
    /// Nothing more is read; the session ends once the replies owed have gone out.
    Closing,
}

/// Why a command cannot be handled yet.
enum Flow {
    Consumed,
    /// Its answer depends on replies still awaited: leave the line in the buffer.
    Wait,
}

/// Counters that describe the session, for logs and metrics.
#[derive(Debug, Default, Clone)]
pub struct SessionStats {
    pub deliveries: u32,
    pub recipients: u32,
    pub recipients_refused_by_cap: u32,
    pub recipients_deferred_by_rate: u32,
    pub junk: u32,
    pub bytes_relayed: u64,
}

pub struct Relay {
    config: RelayConfig,
    mode: Mode,
    pending: OwedReplies<Expect>,
    backend_awaited: usize,
    greeted: bool,
    ehlo_sent: bool,
    tls_active: bool,
    /// A MAIL was sent and its transaction has not ended (by end of data, RSET, EHLO or refusal).
    in_transaction: bool,
    /// Counts the transactions as the backend sees them: one ends when the end of data, RSET, EHLO
    /// or HELO is sent, whatever the replies still on their way.
    txn: u32,
    /// Recipients accepted and awaited in the current transaction, for the cap.
    rcpts_accepted: u32,
    rcpts_awaited: u32,
    ends_of_data_awaited: u32,
    body: BodyStream,
    shutting_down: bool,
    /// The backend's last reply was a 421: it is about to close, and the client already knows.
    backend_said_goodbye: bool,
    /// QUIT went to the backend (the client's or mxgate's own) and it has not failed since: it
    /// closes the connection next.
    backend_closes_next: bool,
    end: Option<EndReason>,
    stats: SessionStats,
    /// Spends one recipient of the client's rate allowance; false: over the rate.
    recipient_gate: Option<Box<dyn FnMut() -> bool + Send>>,
}

impl Relay {
    /// A relay for a fresh backend connection whose greeting has not arrived yet.
    pub fn new(config: RelayConfig) -> Self {
        let mut pending = OwedReplies::default();
        pending.push_backend(Expect::Greeting);
        Self {
            config,
            mode: Mode::Command,
            pending,
            backend_awaited: 1,
            greeted: false,
            ehlo_sent: false,
            tls_active: false,
            in_transaction: false,
            txn: 0,
            rcpts_accepted: 0,
            rcpts_awaited: 0,
            ends_of_data_awaited: 0,
            body: BodyStream::new(),
            shutting_down: false,
            backend_said_goodbye: false,
            backend_closes_next: false,
            end: None,
            stats: SessionStats::default(),
            recipient_gate: None,
        }
    }

    /// Limits recipients by a rate shared with the client's other sessions: a RCPT over the rate
    /// gets 451 and the session goes on.
    pub fn with_recipient_gate(mut self, gate: Option<Box<dyn FnMut() -> bool + Send>>) -> Self {
        self.recipient_gate = gate;
        self
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.end
    }

    /// Whether the session ended with QUIT to the backend (the client's or mxgate's own), so that the
    /// backend closes the connection next. The driver then waits for that close before
    /// closing its side, as a TCP proxy does: the TIME_WAIT stays with the backend, not on mxgate's
    /// ports towards it.
    pub fn backend_closes_next(&self) -> bool {
        self.backend_closes_next
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Whether the driver should read more from the client now.
    pub fn wants_client_input(&self, buffered: usize) -> bool {
        match self.mode {
            Mode::Closing | Mode::AwaitDataReply => false,
            Mode::Data | Mode::DiscardLine | Mode::DiscardChunk(_) => true,
            Mode::Command => {
                self.greeted
                    && self.pending.len() < MAX_PENDING
                    && buffered < self.config.max_command_line
            }
        }
    }

    /// Whether a DATA body is being relayed (reads are larger then).
    pub fn in_body(&self) -> bool {
        self.mode == Mode::Data
    }

    /// Whether a backend reply is awaited, and whether it is the (slower) reply to the end of data.
    pub fn awaiting_backend(&self) -> Option<bool> {
        (self.backend_awaited > 0).then_some(self.ends_of_data_awaited > 0)
    }

    /// Processes everything that can be processed in both input buffers, consuming what it used.
    pub fn pump(&mut self, client: &mut BytesMut, backend: &mut BytesMut, out: &mut Output) {
        loop {
            let before = (client.len(), backend.len(), self.mode);
            self.on_backend_bytes(backend, out);
            self.on_client_bytes(client, out);
            self.shutdown_if_idle(out);
            if out.action.is_some() || before == (client.len(), backend.len(), self.mode) {
                return;
            }
        }
    }

    // ---- client side -------------------------------------------------------------------------

    fn on_client_bytes(&mut self, input: &mut BytesMut, out: &mut Output) {
        while !input.is_empty() && out.action.is_none() {
            match self.mode {
                Mode::Closing | Mode::AwaitDataReply => return,
                Mode::Data => self.relay_body(input, out),
                Mode::DiscardLine => match memchr::memchr(b'\n', input) {
                    Some(i) => {
                        input.advance(i + 1);
                        self.mode = Mode::Command;
                    }
                    None => input.clear(),
                },
                Mode::DiscardChunk(left) => {
                    let n = left.min(input.len() as u64);
                    input.advance(n as usize);
                    self.mode = match left - n {
                        0 => Mode::Command,
                        rest => Mode::DiscardChunk(rest),
                    };
                }
                Mode::Command => {
                    if !self.greeted || self.pending.len() >= MAX_PENDING {
                        return;
                    }
                    match scan_line(input, self.config.max_command_line) {
                        LineScan::Incomplete => return,
                        LineScan::TooLong => {
                            input.advance(self.config.max_command_line);
                            self.mode = Mode::DiscardLine;
                            self.junk(b"500 5.5.2 Error: line too long\r\n", out);
                        }
                        LineScan::Complete { len } => {
                            match self.on_command_line(&input[..len], input.len() > len, out) {
                                Flow::Consumed => input.advance(len),
                                Flow::Wait => return,
                            }
                            // STARTTLS: whatever the client sent after it was sent in the clear and is
                            // discarded (RFC 3207 5; the CVE-2011-0411 command injection).
                            if out.action == Some(Action::StartTls) {
                                input.clear();
                            }
                        }
                    }
                }
            }
        }
    }

    fn relay_body(&mut self, input: &mut BytesMut, out: &mut Output) {
        // Copied, not split off: both buffers then stay whole and are reused for the whole session
        // (a split would share the allocation and force a new one at the next read).
        let relayed = self.body.relay(input, &mut out.to_backend);
        input.advance(relayed.consumed);
        self.stats.bytes_relayed += relayed.consumed as u64;
        if relayed.ended {
            self.mode = Mode::Command;
            self.end_transaction();
            self.ends_of_data_awaited += 1;
            self.expect(Expect::EndOfData);
        }
    }

    fn on_command_line(&mut self, raw: &[u8], more_follows: bool, out: &mut Output) -> Flow {
        let cmd = match parse_command(raw) {
            Ok(cmd) => cmd,
            Err(_) => {
                self.junk(b"500 5.5.2 Error: bad syntax\r\n", out);
                return Flow::Consumed;
            }
        };
        match cmd.verb {
            Verb::Ehlo | Verb::Helo => {
                self.end_transaction();
                self.ehlo_sent = true;
                let expect = if cmd.verb == Verb::Ehlo {
                    Expect::Ehlo
                } else {
                    Expect::Helo
                };
                self.forward(&cmd, expect, out);
            }
            Verb::Mail => return self.on_mail(&cmd, out),
            Verb::Rcpt => return self.on_rcpt(&cmd, out),
            Verb::Data => {
                // Checked at DATA too: a backend that takes recipients and a body without an
                // accepted MAIL (no MTA that follows RFC 5321 does) still gets no more than the
                // limit's bodies.
                if let Some(flow) = self.message_limit(out) {
                    return flow;
                }
                self.forward(&cmd, Expect::Data, out);
                self.mode = Mode::AwaitDataReply;
            }
            Verb::Rset => {
                self.end_transaction();
                self.forward(&cmd, Expect::Other, out);
            }
            Verb::Noop | Verb::Vrfy | Verb::Expn | Verb::Help => {
                self.forward(&cmd, Expect::Other, out)
            }
            Verb::Quit => {
                self.forward(&cmd, Expect::Quit, out);
                self.backend_closes_next = true;
                self.mode = Mode::Closing;
                self.end.get_or_insert(EndReason::Quit);
            }
            Verb::StartTls => return self.on_starttls(&cmd, more_follows, out),
            Verb::Bdat => match bdat_size(cmd.args) {
                // CHUNKING is not offered (hidden from the EHLO reply): refuse and skip the chunk so
                // that its bytes are not read as commands.
                Some(size) => {
                    self.reply(
                        b"502 5.5.1 Error: BDAT not offered, use DATA\r\n".to_vec(),
                        out,
                    );
                    if size > 0 {
                        self.mode = Mode::DiscardChunk(size);
                    }
                }
                None => self.junk(b"501 5.5.4 Error: bad BDAT size\r\n", out),
            },
            Verb::NotRelayed => self.reply(
                b"502 5.5.1 Error: command not implemented\r\n".to_vec(),
                out,
            ),
            Verb::NonSmtp => {
                let text = format!(
                    "421 4.7.0 {} Error: non-SMTP command\r\n",
                    self.config.hostname
                );
                self.reply(text.into_bytes(), out);
                self.close(EndReason::NonSmtp, out);
            }
            Verb::Unknown => self.junk(b"502 5.5.2 Error: command not recognized\r\n", out),
        }
        Flow::Consumed
    }

    fn on_mail(&mut self, cmd: &Command<'_>, out: &mut Output) -> Flow {
        if !self.ehlo_sent {
            self.reply(b"503 5.5.1 Error: send HELO/EHLO first\r\n".to_vec(), out);
            return Flow::Consumed;
        }
        if let Some(flow) = self.message_limit(out) {
            return flow;
        }
        // A MAIL inside a transaction does not start a new one (the backend says 503 to a nested
        // MAIL), so the recipients counted so far still count.
        let nested = self.in_transaction;
        self.in_transaction = true;
        let expect = Expect::Mail {
            txn: self.txn,
            nested,
        };
        self.forward(cmd, expect, out);
        Flow::Consumed
    }

    /// Whether the session's message limit stops the message a MAIL or a DATA would start:
    /// `Some(Wait)` while the replies awaited may still decide it, `Some(Consumed)` once the 421
    /// is said and the session closes, `None` to go on.
    fn message_limit(&mut self, out: &mut Output) -> Option<Flow> {
        let limit = self.config.messages_per_session;
        if self.stats.deliveries + self.ends_of_data_awaited < limit {
            return None;
        }
        if self.backend_awaited > 0 {
            // The replies awaited decide whether the limit is reached.
            return Some(Flow::Wait);
        }
        let text = format!(
            "421 4.7.0 {} Message limit for this session reached, reconnect\r\n",
            self.config.hostname
        );
        self.reply(text.into_bytes(), out);
        self.close(EndReason::MessageLimit, out);
        Some(Flow::Consumed)
    }

    fn on_rcpt(&mut self, cmd: &Command<'_>, out: &mut Output) -> Flow {
        if self.rcpts_accepted + self.rcpts_awaited >= self.config.recipients_per_message {
            if self.rcpts_awaited > 0 {
                return Flow::Wait;
            }
            self.stats.recipients_refused_by_cap += 1;
            self.reply(b"452 4.5.3 Error: too many recipients\r\n".to_vec(), out);
            return Flow::Consumed;
        }
        if let Some(allow) = self.recipient_gate.as_mut() {
            if !allow() {
                self.stats.recipients_deferred_by_rate += 1;
                self.reply(
                    b"451 4.7.1 Recipient rate limit exceeded, try again later\r\n".to_vec(),
                    out,
                );
                return Flow::Consumed;
            }
        }
        self.rcpts_awaited += 1;
        self.forward(cmd, Expect::Rcpt { txn: self.txn }, out);
        Flow::Consumed
    }

    fn on_starttls(&mut self, _cmd: &Command<'_>, more_follows: bool, out: &mut Output) -> Flow {
        if !self.config.tls_available {
            self.reply(
                b"502 5.5.1 Error: command not implemented\r\n".to_vec(),
                out,
            );
        } else if self.tls_active {
            self.reply(b"554 5.5.1 Error: TLS already active\r\n".to_vec(), out);
        } else if self.backend_awaited > 0 {
            return Flow::Wait;
        } else if self.in_transaction {
            self.reply(
                b"503 5.5.1 Error: MAIL transaction in progress\r\n".to_vec(),
                out,
            );
        } else {
            if more_follows {
                tracing::debug!("discarding input pipelined after STARTTLS");
            }
            self.reply(b"220 2.0.0 Ready to start TLS\r\n".to_vec(), out);
            out.action = Some(Action::StartTls);
        }
        Flow::Consumed
    }

    /// The client finished the TLS handshake: it starts over with EHLO (RFC 3207 4.2).
    pub fn on_tls_established(&mut self) {
        self.tls_active = true;
        self.ehlo_sent = false;
        self.end_transaction();
    }

    // ---- backend side ------------------------------------------------------------------------

    fn on_backend_bytes(&mut self, input: &mut BytesMut, out: &mut Output) {
        while !input.is_empty() && out.action.is_none() {
            let reply = match scan_reply(input) {
                Ok(Some(reply)) => reply,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "backend protocol error");
                    input.clear();
                    self.backend_failed(EndReason::BackendProtocolError, out);
                    return;
                }
            };
            // Read in place and then consumed, not split off: a split would turn the buffer into a
            // shared one, with an atomic count to update on every reply and a reallocation when the
            // next read finds the allocation still shared.
            let go_on = self.on_backend_reply(&input[..reply.len], &reply, out);
            input.advance(reply.len);
            if !go_on {
                return;
            }
        }
    }

    /// One complete reply from the backend, `raw` as received. Returns whether to read on.
    fn on_backend_reply(&mut self, raw: &[u8], reply: &Reply, out: &mut Output) -> bool {
        let code = reply.code;
        self.backend_said_goodbye = code == 421;
        let Some(Owed::Backend(expect)) = self.pending.pop_front() else {
            // Nothing was asked: a backend that times out or shuts down says 421 and closes.
            if code == 421 {
                out.to_client.extend_from_slice(raw);
                self.close(EndReason::BackendClosed, out);
            } else {
                tracing::warn!(code, "backend sent a reply nobody asked for");
                self.backend_failed(EndReason::BackendProtocolError, out);
            }
            return false;
        };
        self.backend_awaited -= 1;
        let positive = reply.is_positive_completion();
        match expect {
            Expect::Greeting if self.config.teaser_sent && code != 220 => {
                // A refusing backend cannot end a 220- greeting: finish it, then say why.
                let text = crate::admission::pregreet::greeting_end(true, &self.config.hostname);
                out.to_client.extend_from_slice(text.as_bytes());
                self.backend_failed(EndReason::BackendClosed, out);
                return false;
            }
            Expect::Greeting => self.greeted = true,
            Expect::Ehlo if positive => {
                let offer = EhloOffer {
                    starttls: self.config.tls_available && !self.tls_active,
                    mailmax: self.config.messages_per_session,
                    rcptmax: self.config.recipients_per_message,
                };
                out.to_client
                    .extend_from_slice(&rewrite_ehlo(raw, code, offer));
                self.flush_local(out);
                return true;
            }
            Expect::Mail { txn, nested } if txn == self.txn => {
                // A refused nested MAIL leaves the transaction as the first MAIL's reply left it.
                if positive || !nested {
                    self.in_transaction = positive;
                }
            }
            Expect::Rcpt { txn } => {
                if positive {
                    self.stats.recipients += 1;
                }
                if txn == self.txn {
                    self.rcpts_awaited -= 1;
                    self.rcpts_accepted += u32::from(positive);
                }
            }
            Expect::Data if self.mode == Mode::AwaitDataReply => {
                self.mode = if reply.is_intermediate() {
                    self.body = BodyStream::new();
                    Mode::Data
                } else {
                    Mode::Command
                };
            }
            Expect::EndOfData => {
                self.ends_of_data_awaited -= 1;
                if positive {
                    self.stats.deliveries += 1;
                }
            }
            Expect::Quit => {
                out.to_client.extend_from_slice(raw);
                self.close(EndReason::Quit, out);
                return false;
            }
            Expect::Ehlo | Expect::Helo | Expect::Mail { .. } | Expect::Data | Expect::Other => {}
        }
        out.to_client.extend_from_slice(raw);
        if code == 421 {
            // The backend is closing the channel (RFC 5321 3.8): its 421 is the client's last
            // word too, and whatever else it owed will not come.
            self.close_now(EndReason::BackendClosed, out);
            return false;
        }
        self.flush_local(out);
        true
    }

    // ---- events ------------------------------------------------------------------------------

    /// The client closed its side (or reset the connection).
    pub fn on_client_eof(&mut self, out: &mut Output) {
        // A body cut short must not be completed: closing the backend connection aborts it.
        self.close(EndReason::ClientClosed, out);
    }

    /// The backend closed its side, or a write to it failed.
    pub fn on_backend_eof(&mut self, out: &mut Output) {
        let finishing = self.mode == Mode::Closing && self.backend_awaited == 0;
        if !(finishing || self.backend_said_goodbye) {
            self.backend_failed(EndReason::BackendClosed, out);
            return;
        }
        // The client already has the backend's last word (its 421, or the end of the session).
        self.end.get_or_insert(EndReason::BackendClosed);
        while let Some(pending) = self.pending.pop_front() {
            if let Owed::Local(text) = pending {
                out.to_client.extend_from_slice(&text);
            }
        }
        self.backend_awaited = 0;
        self.mode = Mode::Closing;
        out.action = Some(Action::Close);
    }

    /// The current wait ran out: for the backend's reply if one is awaited, else for the client.
    pub fn on_timeout(&mut self, out: &mut Output) {
        if self.backend_awaited > 0 {
            self.backend_failed(EndReason::BackendTimeout, out);
        } else {
            let text = format!(
                "421 4.4.2 {} Error: timeout exceeded\r\n",
                self.config.hostname
            );
            out.to_client.extend_from_slice(text.as_bytes());
            self.close(EndReason::ClientTimeout, out);
        }
    }

    /// The session reached its maximum duration: nothing more is read from the client; replies the
    /// backend still owes for commands go out first, then the 421. Inside a body (or before its 354)
    /// the body is cut short and the 421 goes at once. A session already ending is left to end.
    pub fn on_session_expired(&mut self, out: &mut Output) {
        if self.mode == Mode::Closing {
            return;
        }
        let text = format!(
            "421 4.4.2 {} Error: session time limit exceeded\r\n",
            self.config.hostname
        );
        match self.mode {
            Mode::Data | Mode::AwaitDataReply => out.to_client.extend_from_slice(text.as_bytes()),
            _ => self.reply(text.into_bytes(), out),
        }
        self.close(EndReason::SessionTimeout, out);
    }

    /// mxgate is stopping: finish the transaction in progress, then say 421.
    pub fn on_shutdown(&mut self, out: &mut Output) {
        self.shutting_down = true;
        self.shutdown_if_idle(out);
    }

    /// The shutdown grace period is over: 421 now, whatever the session is doing. Replies the
    /// backend still owes are not waited for; the client gets the 421 in their place, and nothing
    /// after it.
    pub fn on_shutdown_deadline(&mut self, out: &mut Output) {
        out.to_client
            .extend_from_slice(self.shutdown_reply().as_bytes());
        self.close_now(EndReason::Shutdown, out);
    }

    /// TLS handshake failed; the client connection is unusable.
    pub fn on_tls_failed(&mut self, out: &mut Output) {
        self.close(EndReason::TlsFailed, out);
    }

    /// The grace period after the shutdown signal ended while the client was still in its TLS
    /// handshake: no reply can reach it (it expects TLS records), so both sides are closed.
    pub fn on_shutdown_in_tls_handshake(&mut self, out: &mut Output) {
        self.close(EndReason::Shutdown, out);
    }

    fn shutdown_reply(&self) -> String {
        format!(
            "421 4.3.0 {} Server shutting down\r\n",
            self.config.hostname
        )
    }

    fn shutdown_if_idle(&mut self, out: &mut Output) {
        let idle = self.mode == Mode::Command && self.backend_awaited == 0 && !self.in_transaction;
        if self.shutting_down && idle && out.action.is_none() && self.end.is_none() {
            self.reply(self.shutdown_reply().into_bytes(), out);
            self.close(EndReason::Shutdown, out);
        }
    }

    // ---- helpers -----------------------------------------------------------------------------

    fn forward(&mut self, cmd: &Command<'_>, expect: Expect, out: &mut Output) {
        // Line endings are normalised to CRLF; the line itself goes as the client wrote it.
        out.to_backend.extend_from_slice(cmd.line);
        out.to_backend.extend_from_slice(b"\r\n");
        self.expect(expect);
    }

    fn expect(&mut self, expect: Expect) {
        self.pending.push_backend(expect);
        self.backend_awaited += 1;
    }

    /// Sends a reply of mxgate's own, after any backend replies the client is still owed.
    fn reply(&mut self, text: Vec<u8>, out: &mut Output) {
        if self.pending.is_empty() {
            out.to_client.extend_from_slice(&text);
        } else {
            self.pending.push_local(text);
        }
    }

    fn flush_local(&mut self, out: &mut Output) {
        while self.pending.front_is_local() {
            if let Some(Owed::Local(text)) = self.pending.pop_front() {
                out.to_client.extend_from_slice(&text);
            }
        }
        if self.pending.is_empty() && self.mode == Mode::Closing && self.end.is_some() {
            self.finish(out);
        }
    }

    fn junk(&mut self, text: &[u8], out: &mut Output) {
        self.stats.junk += 1;
        self.reply(text.to_vec(), out);
        if self.stats.junk >= self.config.max_junk_commands {
            let text = format!(
                "421 4.7.0 {} Error: too many errors\r\n",
                self.config.hostname
            );
            self.reply(text.into_bytes(), out);
            self.close(EndReason::TooManyErrors, out);
        }
    }

    /// The current transaction ends as the backend will see it: sent with the command that ends it.
    fn end_transaction(&mut self) {
        self.txn = self.txn.wrapping_add(1);
        self.in_transaction = false;
        self.rcpts_accepted = 0;
        self.rcpts_awaited = 0;
    }

    /// Ends the session once the replies owed to the client have gone out.
    fn close(&mut self, reason: EndReason, out: &mut Output) {
        self.end.get_or_insert(reason);
        // After DATA the backend reads everything as body, so QUIT must not be sent.
        let was_relaying_body = matches!(self.mode, Mode::Data | Mode::AwaitDataReply);
        self.mode = Mode::Closing;
        if was_relaying_body || self.pending.all_local() {
            // Nothing more will come from the backend that the client is owed.
            while let Some(Owed::Local(text)) = self.pending.pop_front() {
                out.to_client.extend_from_slice(&text);
            }
            self.pending.clear();
            self.backend_awaited = 0;
            self.finish_with(was_relaying_body, out);
        }
    }

    /// Ends the session at once, after the client's last word: replies the backend still owes are
    /// not waited for, and it gets QUIT unless a body is in progress or it is leaving anyway.
    fn close_now(&mut self, reason: EndReason, out: &mut Output) {
        let body_unfinished = matches!(self.mode, Mode::Data | Mode::AwaitDataReply);
        self.pending.clear();
        self.backend_awaited = 0;
        self.end.get_or_insert(reason);
        self.mode = Mode::Closing;
        self.finish_with(body_unfinished, out);
    }

    fn finish(&mut self, out: &mut Output) {
        self.finish_with(false, out);
    }

    fn finish_with(&mut self, body_unfinished: bool, out: &mut Output) {
        // QUIT tells the backend the session ended cleanly; inside a body it would become part of the
        // message, so there the connection is just closed and the backend drops the message.
        if !body_unfinished && !self.backend_closes_next && !self.backend_said_goodbye {
            out.to_backend.extend_from_slice(b"QUIT\r\n");
            self.backend_closes_next = true;
        }
        out.action = Some(Action::Close);
    }

    fn backend_failed(&mut self, reason: EndReason, out: &mut Output) {
        // Replies the backend still owed will never come: the client gets 421 instead of them, and
        // the backend no QUIT.
        self.backend_said_goodbye = true;
        self.backend_closes_next = false;
        let text = format!(
            "421 4.3.2 {} Service temporarily unavailable\r\n",
            self.config.hostname
        );
        out.to_client.extend_from_slice(text.as_bytes());
        self.close_now(reason, out);
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
