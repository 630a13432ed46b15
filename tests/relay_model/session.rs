//! One simulated session: the relay between the model client and the model backend, driven the way
//! the session driver drives it, with the dice choosing what happens at each step.

use crate::backend::{Backend, Limits};
use crate::client::Client;
use crate::dice::Dice;
use crate::script::Item;
use bytes::BytesMut;
use mxgate::session::relay::{Action, Output, Relay, RelayConfig};

/// Steps a session may take; the longest scripts need a few hundred.
const MAX_STEPS: usize = 20_000;

/// The relay's limits for one session.
#[derive(Debug, Clone)]
pub struct Setup {
    pub messages_per_session: u32,
    pub recipients_per_message: u32,
    pub max_command_line: usize,
    pub max_junk_commands: u32,
    pub tls_available: bool,
}

/// What can happen next, besides faults.
#[derive(Debug, Clone, Copy)]
enum Move {
    /// The relay reads some of what the client wrote.
    ClientBytes,
    /// The relay reads some of the backend's replies.
    BackendBytes,
    /// The relay sees the backend's end of file.
    BackendEof,
    /// The client writes its next pipelined group.
    ClientSends,
}

pub struct Session {
    setup: Setup,
    dice: Dice,
    relay: Relay,
    client: Client,
    backend: Backend,
    client_in: BytesMut,
    backend_in: BytesMut,
    out: Output,
    shutdown_started: bool,
    transcript: Vec<String>,
}

fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

impl Session {
    pub fn new(setup: Setup, script: Vec<Item>, rolls: Vec<u8>) -> Self {
        let mut dice = Dice::new(rolls);
        let relay = Relay::new(RelayConfig {
            hostname: "mx.test".into(),
            messages_per_session: setup.messages_per_session,
            recipients_per_message: setup.recipients_per_message,
            max_command_line: setup.max_command_line,
            max_junk_commands: setup.max_junk_commands,
            tls_available: setup.tls_available,
            teaser_sent: false,
        });
        let limits = Limits {
            messages_per_session: setup.messages_per_session,
            recipients_per_message: setup.recipients_per_message,
        };
        Self {
            client: Client::new(script, setup.max_command_line),
            backend: Backend::new(limits, &mut dice),
            setup,
            dice,
            relay,
            client_in: BytesMut::new(),
            backend_in: BytesMut::new(),
            out: Output::default(),
            shutdown_started: false,
            transcript: Vec::new(),
        }
    }

    /// Plays the session to its end and checks it: the deliveries, or what went wrong with the
    /// session's transcript.
    pub fn run(mut self) -> Result<u32, String> {
        self.play()
            .map_err(|broken| format!("{broken}\ntranscript:\n{}", self.transcript.join("\n")))
    }

    fn play(&mut self) -> Result<u32, String> {
        for _ in 0..MAX_STEPS {
            if self.carry_out()? {
                return self.outcome();
            }
            if self.dice.next() >= 254 {
                self.fault();
                continue;
            }
            let moves = self.moves();
            if moves.is_empty() {
                self.quiet()?;
            } else {
                let pick = self.dice.next() as usize % moves.len();
                self.make(moves[pick]);
            }
        }
        Err(format!("the session did not end in {MAX_STEPS} steps"))
    }

    /// Pumps the relay and carries out what it asks; true once it closes the session.
    fn carry_out(&mut self) -> Result<bool, String> {
        let out = &mut self.out;
        self.relay
            .pump(&mut self.client_in, &mut self.backend_in, out);
        if !out.to_client.is_empty() {
            self.transcript
                .push(format!("mxgate to client: {}", show(&out.to_client)));
        }
        if !out.to_backend.is_empty() {
            self.transcript
                .push(format!("mxgate to backend: {}", show(&out.to_backend)));
        }
        if let Some(action) = out.action {
            self.transcript.push(format!("mxgate: {action:?}"));
        }
        let tls_offered = self.setup.tls_available;
        self.client
            .receive(&out.to_client, &self.backend.said, tls_offered)?;
        out.to_client.clear();
        self.backend
            .receive(&out.to_backend, &self.client.lines_sent, &mut self.dice)?;
        out.to_backend.clear();
        match out.action.take() {
            Some(Action::Close) => return Ok(true),
            Some(Action::StartTls) => {
                // Whatever the client wrote after STARTTLS is its TLS handshake, not commands.
                self.client.socket.clear();
                match self.dice.next() {
                    255 => self.relay.on_tls_failed(out),
                    _ => self.relay.on_tls_established(),
                }
            }
            None => {}
        }
        Ok(false)
    }

    /// Something goes wrong: either side closes, a timeout, the session's time limit, shutdown,
    /// a backend that writes garbage.
    fn fault(&mut self) {
        let fault = self.dice.next() % 7;
        self.transcript.push(format!("fault {fault}"));
        let out = &mut self.out;
        match fault {
            0 if !self.client.closed => {
                self.client.closed = true;
                self.relay.on_client_eof(out);
            }
            1 if !self.backend.gone => {
                self.backend.gone = true;
                self.relay.on_backend_eof(out);
            }
            2 => self.backend.goodbye(),
            3 => self.relay.on_timeout(out),
            4 => self.relay.on_session_expired(out),
            5 if !self.shutdown_started => {
                self.shutdown_started = true;
                self.relay.on_shutdown(out);
            }
            5 => self.relay.on_shutdown_deadline(out),
            6 => self.backend.garble(&mut self.dice),
            _ => {}
        }
    }

    fn moves(&self) -> Vec<Move> {
        let mut moves = Vec::with_capacity(4);
        let client_in = self.client_in.len();
        if !self.client.socket.is_empty() && self.relay.wants_client_input(client_in) {
            moves.push(Move::ClientBytes);
        }
        if !self.backend.outbox.is_empty() {
            moves.push(Move::BackendBytes);
        } else if self.backend.closing && !self.backend.gone {
            moves.push(Move::BackendEof);
        }
        if self.client.can_send() {
            moves.push(Move::ClientSends);
        }
        moves
    }

    fn make(&mut self, to_make: Move) {
        match to_make {
            Move::ClientBytes => {
                let n = self.dice.chunk(self.client.socket.len());
                let bytes: Vec<u8> = self.client.socket.drain(..n).collect();
                self.transcript.push(format!("client: {}", show(&bytes)));
                self.client_in.extend_from_slice(&bytes);
            }
            Move::BackendBytes => {
                let n = self.dice.chunk(self.backend.outbox.len());
                let bytes: Vec<u8> = self.backend.outbox.drain(..n).collect();
                self.transcript.push(format!("backend: {}", show(&bytes)));
                self.backend_in.extend_from_slice(&bytes);
            }
            Move::BackendEof => {
                self.transcript.push("backend: end of file".into());
                self.backend.gone = true;
                self.relay.on_backend_eof(&mut self.out);
            }
            Move::ClientSends => self.client.send_group(),
        }
    }

    /// Nothing can happen but a timeout: the client must not be waiting for anything. A client
    /// that has said all it had to say closes.
    fn quiet(&mut self) -> Result<(), String> {
        if self.client.heard_421 {
            return Err("the client got 421 and the session did not end".into());
        }
        if self.client.closed {
            return Err("the client closed and the session did not end".into());
        }
        if self.client.owed() > 0 {
            let owed = self.client.owed();
            return Err(format!("stalled: the client is owed {owed} replies"));
        }
        self.client.closed = true;
        self.relay.on_client_eof(&mut self.out);
        Ok(())
    }

    /// The checks on the session as a whole, once it has ended.
    fn outcome(&self) -> Result<u32, String> {
        self.backend.check_bodies(&self.client.messages_sent)?;
        if self.backend.accepted > self.setup.messages_per_session {
            return Err("the backend accepted more messages than the session's limit".into());
        }
        let counted = self.relay.stats().deliveries;
        if counted != self.client.deliveries_seen {
            return Err(format!(
                "the relay counted {counted} deliveries, the client was told of {}",
                self.client.deliveries_seen
            ));
        }
        Ok(counted)
    }
}
