//! Fuzzes the relay state machine with arbitrary bytes from both sides and events at arbitrary
//! moments, driven as `session::driver` drives it, and checks what must hold whatever the input.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mxgate::session::codec::MAX_REPLY_BYTES;
use mxgate::session::relay::{Action, Output, Relay, RelayConfig};

/// The most bytes one read hands the relay (the input's length byte).
const MAX_READ: usize = 255;

/// The input, read from the front: a few bytes of set-up, then operations.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

/// A final reply line that is positive: 2xx or 3xx, then a space or the end of the line.
fn is_positive_final(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.len() >= 3
        && matches!(line[0], b'2' | b'3')
        && line[1..3].iter().all(u8::is_ascii_digit)
        && matches!(line.get(3), None | Some(b' '))
}

/// Counts the positive final reply lines in a byte stream that arrives in pieces.
#[derive(Default)]
struct PositiveLines {
    partial: Vec<u8>,
    count: usize,
}

impl PositiveLines {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.count += usize::from(is_positive_final(&self.partial));
                self.partial.clear();
            } else if self.partial.len() < 8 {
                self.partial.push(b);
            }
        }
    }
}

/// The positive replies mxgate writes itself: the end of a greeting teaser and STARTTLS's go-ahead.
fn mxgate_own_positive(line: &[u8]) -> bool {
    line.starts_with(b"220 mx.test ESMTP") || line.starts_with(b"220 2.0.0 Ready to start TLS")
}

/// What the client got so far: whether a final 421 went out, and how many positive final replies
/// mxgate did not write itself.
#[derive(Default)]
struct ClientSeen {
    closed_by_421: bool,
    positive: usize,
}

impl ClientSeen {
    /// Checks one output for the client: whole reply lines (three digits, then a space, a hyphen
    /// or the end of the line), and nothing after a final 421; counts its positive replies.
    fn check(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        assert!(
            !self.closed_by_421,
            "bytes to the client after a 421: {bytes:?}"
        );
        assert!(
            bytes.ends_with(b"\n"),
            "a partial line to the client: {bytes:?}"
        );
        for line in bytes[..bytes.len() - 1].split(|&b| b == b'\n') {
            assert!(!self.closed_by_421, "a line after a 421: {bytes:?}");
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(
                line.len() >= 3 && line[..3].iter().all(u8::is_ascii_digit),
                "not a reply line: {line:?} in {bytes:?}"
            );
            assert!(
                matches!(line.get(3), None | Some(b' ') | Some(b'-')),
                "not a reply line: {line:?}"
            );
            self.closed_by_421 = line.starts_with(b"421") && line.get(3) != Some(&b'-');
            self.positive += usize::from(is_positive_final(line) && !mxgate_own_positive(line));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (Some(a), Some(b), Some(c), Some(d)) =
        (input.byte(), input.byte(), input.byte(), input.byte())
    else {
        return;
    };
    let config = RelayConfig {
        hostname: "mx.test".into(),
        messages_per_session: u32::from(a % 8) + 1,
        recipients_per_message: u32::from(b % 8) + 1,
        max_command_line: 32 + usize::from(c) * 4,
        max_junk_commands: u32::from(d % 8) + 1,
        tls_available: a & 0x80 != 0,
        teaser_sent: b & 0x80 != 0,
    };
    let messages_per_session = config.messages_per_session;
    let max_command_line = config.max_command_line;
    let gate_pattern = d;
    let mut gate_calls = 0u32;
    let gate: Option<Box<dyn FnMut() -> bool + Send>> = (c & 1 == 1).then(|| {
        Box::new(move || {
            gate_calls = gate_calls.wrapping_add(1);
            gate_pattern >> (gate_calls % 8) & 1 == 1
        }) as Box<dyn FnMut() -> bool + Send>
    });
    let mut relay = Relay::new(config).with_recipient_gate(gate);
    let mut client_in = BytesMut::new();
    let mut backend_in = BytesMut::new();
    let mut out = Output::default();
    let mut tls_pending = false;
    // Positive final replies the backend sent, and what the client got: the client is never told
    // more than the backend said.
    let mut backend_positive = PositiveLines::default();
    let mut client = ClientSeen::default();

    while let Some(op) = input.byte() {
        if tls_pending {
            // The driver hands the connection to TLS: what the client sent before is dropped with
            // the plain-text reader, and the handshake either works or fails.
            tls_pending = false;
            client_in.clear();
            match op & 1 {
                0 => relay.on_tls_established(),
                _ => relay.on_tls_failed(&mut out),
            }
        } else {
            match op % 8 {
                0..=2 => {
                    let n = usize::from(input.byte().unwrap_or(0));
                    let chunk = input.bytes(n);
                    if relay.wants_client_input(client_in.len()) {
                        client_in.extend_from_slice(chunk);
                    }
                }
                3 | 4 => {
                    let n = usize::from(input.byte().unwrap_or(0));
                    let chunk = input.bytes(n);
                    backend_positive.feed(chunk);
                    backend_in.extend_from_slice(chunk);
                }
                _ => match input.byte().unwrap_or(0) % 6 {
                    0 => relay.on_client_eof(&mut out),
                    1 => relay.on_backend_eof(&mut out),
                    2 => relay.on_timeout(&mut out),
                    3 => relay.on_session_expired(&mut out),
                    4 => relay.on_shutdown(&mut out),
                    _ => relay.on_shutdown_deadline(&mut out),
                },
            }
        }
        relay.pump(&mut client_in, &mut backend_in, &mut out);

        client.check(&out.to_client);
        assert!(
            client.positive <= backend_positive.count,
            "the client got {} positive replies, the backend sent {}",
            client.positive,
            backend_positive.count
        );
        let deliveries = relay.stats().deliveries;
        assert!(deliveries <= messages_per_session);
        assert!(deliveries as usize <= backend_positive.count);
        assert!(
            client_in.len() <= max_command_line + MAX_READ,
            "client bytes pile up: {} buffered",
            client_in.len()
        );
        assert!(
            backend_in.len() <= MAX_REPLY_BYTES + MAX_READ,
            "backend bytes pile up: {} buffered",
            backend_in.len()
        );
        out.to_client.clear();
        out.to_backend.clear();
        match out.action.take() {
            Some(Action::Close) => {
                assert!(relay.end_reason().is_some(), "closed without a reason");
                return;
            }
            Some(Action::StartTls) => tls_pending = true,
            None => {}
        }
    }
});
