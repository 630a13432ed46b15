//! Fuzzes the exchange that sets up the backend connection (greeting, EHLO, then XCLIENT or
//! STARTTLS) against a backend that sends arbitrary bytes in arbitrary pieces, then closes, fails,
//! or stops taking writes, and checks what must hold whatever it sends.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mxgate::net::backend_exchange::{self, ExchangeError, MAX_SHOWN_REPLY};
use mxgate::session::codec::scan_reply;
use mxgate::session::ehlo;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const HELO_NAME: &str = "mxgate.test";

/// The backend as a script: the pieces its reads return, then an end of file or an error; what
/// it was sent, each write taking at most `max_write` bytes until `writes_left` runs out.
struct ScriptedBackend {
    pieces: VecDeque<Bytes>,
    read_fails_at_end: bool,
    delivered: Vec<u8>,
    written: Vec<u8>,
    max_write: usize,
    writes_left: usize,
}

impl AsyncRead for ScriptedBackend {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(piece) = self.pieces.front_mut() else {
            return Poll::Ready(if self.read_fails_at_end {
                Err(io::ErrorKind::ConnectionReset.into())
            } else {
                Ok(())
            });
        };
        let taken = piece.split_to(piece.len().min(buf.remaining()));
        if piece.is_empty() {
            self.pieces.pop_front();
        }
        buf.put_slice(&taken);
        self.delivered.extend_from_slice(&taken);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedBackend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.writes_left == 0 {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.writes_left -= 1;
        let n = buf.len().min(self.max_write);
        self.written.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs `exchange` to its end with one poll: the backend never makes it wait, so a `Pending` is
/// a hang.
fn run_once<T>(exchange: impl Future<Output = T>) -> T {
    let mut exchange = pin!(exchange);
    match exchange
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the exchange waits on a backend that never makes it wait"),
    }
}

/// The complete replies at the front of `bytes`, as (code, length), at most `n`.
fn replies(mut bytes: &[u8], n: usize) -> Vec<(u16, usize)> {
    let mut found = Vec::new();
    while found.len() < n {
        let Ok(Some(reply)) = scan_reply(bytes) else {
            break;
        };
        found.push((reply.code, reply.len));
        bytes = &bytes[reply.len..];
    }
    found
}

/// A refusal's detail: one line of printable ASCII, the backend's words cut short.
fn check_detail(detail: &str) {
    assert!(
        detail.bytes().all(|b| (b' '..=b'~').contains(&b)),
        "a refusal with bytes that are not printable ASCII: {detail:?}"
    );
    // The step's name and its colon, the reply shown (one separator or escape past the limit),
    // then "... (N bytes in all)".
    let bound = 64 + MAX_SHOWN_REPLY + 3 + 4 + 40;
    assert!(
        detail.len() <= bound,
        "a refusal of {} characters",
        detail.len()
    );
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let Some((&port, mut rest)) = rest.split_first() else {
        return;
    };
    let starttls = flags & 1 != 0;
    let greeted = flags & 2 != 0;
    let client: SocketAddr = match flags >> 2 & 3 {
        0 => SocketAddr::from(([127, 0, 0, 9], u16::from(port))),
        1 => SocketAddr::from(([0, 0, 0, 0, 0, 0xffff, 0x7f00, 9], u16::from(port))),
        _ => SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], u16::from(port))),
    };
    // Pieces: a length byte and that many bytes; or a length of 0, then a count of KiB and a byte
    // repeated that often (a reply longer than any input, up to 255 KiB).
    let mut pieces = VecDeque::new();
    while let Some((&len, tail)) = rest.split_first() {
        let (piece, tail) = match (len, tail) {
            (0, [kib, byte, tail @ ..]) => {
                (Bytes::from(vec![*byte; usize::from(*kib) * 1024]), tail)
            }
            (0, _) => break,
            _ => {
                let (piece, tail) = tail.split_at(usize::from(len).min(tail.len()));
                (Bytes::copy_from_slice(piece), tail)
            }
        };
        if !piece.is_empty() {
            pieces.push_back(piece);
        }
        rest = tail;
    }
    let mut backend = ScriptedBackend {
        pieces,
        read_fails_at_end: flags & 16 != 0,
        delivered: Vec::new(),
        written: Vec::new(),
        max_write: [usize::MAX, 1, 7, 64][usize::from(flags >> 5 & 3)],
        writes_left: if flags & 128 != 0 { 3 } else { usize::MAX },
    };

    let ehlo = format!("EHLO {HELO_NAME}\r\n");
    // What the exchange kept for the client: the greeting (STARTTLS) or what follows the EHLO
    // reply (XCLIENT).
    let (result, expected, extension, greeting_read) = if starttls {
        let result = run_once(backend_exchange::starttls(&mut backend, HELO_NAME));
        let expected = format!("{ehlo}STARTTLS\r\n");
        (result, expected, "STARTTLS", true)
    } else {
        let mut buf = BytesMut::new();
        let exchange =
            backend_exchange::xclient(&mut backend, &mut buf, client, HELO_NAME, greeted);
        let result = run_once(exchange);
        let expected = format!("{ehlo}{}", backend_exchange::xclient_command(client));
        (result.map(|()| buf), expected, "XCLIENT", !greeted)
    };

    // mxgate sends its commands in order, nothing else, and each only after the reply before it
    // said yes: the greeting a 220, the EHLO reply a 250 that offers the extension.
    let delivered = &backend.delivered[..];
    assert!(
        expected.as_bytes().starts_with(&backend.written),
        "sent {:?}, not a beginning of {expected:?}",
        String::from_utf8_lossy(&backend.written)
    );
    let before_ehlo = usize::from(greeting_read);
    let seen = replies(delivered, before_ehlo + 2);
    if !backend.written.is_empty() && greeting_read {
        assert_eq!(
            seen.first().map(|r| r.0),
            Some(220),
            "EHLO without a 220 greeting"
        );
    }
    if backend.written.len() > ehlo.len() {
        let (code, len) = seen[before_ehlo];
        let at: usize = seen[..before_ehlo].iter().map(|r| r.1).sum();
        assert_eq!(code, 250, "{extension} after an EHLO reply of {code}");
        assert!(
            ehlo::offers(&delivered[at..at + len], extension.as_bytes()),
            "{extension} sent though the EHLO reply does not offer it"
        );
    }

    match result {
        Ok(kept) => {
            assert_eq!(backend.written, expected.as_bytes(), "commands sent");
            assert_eq!(seen.len(), before_ehlo + 2, "a success without every reply");
            assert_eq!(
                seen[before_ehlo + 1].0,
                220,
                "a success on a reply other than 220"
            );
            let spent: usize = seen[..before_ehlo + 1].iter().map(|r| r.1).sum();
            match kept {
                // STARTTLS: nothing may follow the 220 in the clear, and the greeting kept for the
                // client is the backend's first reply.
                greeting if starttls => {
                    let all: usize = seen.iter().map(|r| r.1).sum();
                    assert_eq!(
                        delivered.len(),
                        all,
                        "bytes after the 220 to STARTTLS taken"
                    );
                    assert_eq!(&greeting[..], &delivered[..seen[0].1], "greeting kept");
                }
                // XCLIENT: what follows the EHLO reply is left for the client, from the new 220
                // greeting on, none of it lost.
                left => assert_eq!(&left[..], &delivered[spent..], "bytes left"),
            }
        }
        Err(ExchangeError::Refused(detail)) => check_detail(&detail),
        Err(ExchangeError::Io { .. }) => assert!(
            backend.read_fails_at_end || backend.writes_left == 0,
            "an I/O error from a backend that had none"
        ),
    }
});
