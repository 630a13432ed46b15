//! The commands and replies mxgate exchanges with the backend before a session (greeting, EHLO,
//! then XCLIENT or STARTTLS), over any byte stream, and the one-line, printable refusal logged when
//! the backend says no.

use crate::net::client_address::canonical;
use crate::session::codec::scan_reply;
use crate::session::ehlo;
use bytes::BytesMut;
use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most characters of the backend's reply a refusal shows; a longer reply is cut, and the
/// refusal says how many bytes it had.
pub const MAX_SHOWN_REPLY: usize = 400;

/// What went wrong in an exchange of commands and replies before the session.
#[derive(Debug)]
pub enum ExchangeError {
    /// A read or write failed `during` a step.
    Io {
        during: &'static str,
        source: io::Error,
    },
    /// The backend refused, answered garbage or closed; the detail names the step, on one line of
    /// printable ASCII.
    Refused(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Io { during, source } => write!(f, "{during}: {source}"),
            ExchangeError::Refused(detail) => f.write_str(detail),
        }
    }
}

/// The plain-text part of STARTTLS with the backend: its greeting (a 220), mxgate's EHLO (the
/// reply must offer STARTTLS), STARTTLS (the reply must be a 220 with nothing behind it). Returns
/// the greeting, which the client is to see after TLS as the backend's first words.
pub async fn starttls<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    helo_name: &str,
) -> Result<BytesMut, ExchangeError> {
    let mut buf = BytesMut::with_capacity(512);
    let greeting = greet_and_ehlo(stream, &mut buf, helo_name, false, "STARTTLS").await?;
    send(stream, b"STARTTLS\r\n", "STARTTLS").await?;
    let (code, raw) = read_reply(stream, &mut buf, "STARTTLS").await?;
    if code != 220 {
        return Err(refused("STARTTLS", &raw));
    }
    if !buf.is_empty() {
        // Bytes sent in the clear behind the 220 would be taken into the TLS session as if they
        // came inside it (CVE-2011-0411).
        return Err(refused(
            "bytes in the clear after the 220 to STARTTLS",
            &buf,
        ));
    }
    Ok(greeting)
}

/// Postfix XCLIENT (http://www.postfix.org/XCLIENT_README.html): greeting (unless `greeted`: read
/// before STARTTLS), EHLO, XCLIENT. The backend answers XCLIENT with a fresh greeting, which is
/// left at the front of `buf` for the client, before whatever the backend sent after it.
pub async fn xclient<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    client: SocketAddr,
    helo_name: &str,
    greeted: bool,
) -> Result<(), ExchangeError> {
    greet_and_ehlo(stream, buf, helo_name, greeted, "XCLIENT").await?;
    send(stream, xclient_command(client).as_bytes(), "XCLIENT").await?;
    let (code, greeting) = read_reply(stream, buf, "XCLIENT").await?;
    if code != 220 {
        return Err(refused("XCLIENT", &greeting));
    }
    // The new greeting is the first thing the relay passes to the client: back in front of
    // whatever came after it (contiguous, so no copy).
    let rest = buf.split();
    *buf = greeting;
    buf.unsplit(rest);
    Ok(())
}

/// The XCLIENT command announcing `client`.
pub fn xclient_command(client: SocketAddr) -> String {
    let client = canonical(client);
    let addr = match client.ip() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPV6:{v6}"),
    };
    format!(
        "XCLIENT ADDR={addr} PORT={} NAME=[UNAVAILABLE]\r\n",
        client.port()
    )
}

/// The backend's greeting, which must be a 220 (unless `greeted`: read already, before
/// STARTTLS), then mxgate's EHLO, whose reply must be a 250 offering `extension`. Returns the
/// greeting (empty if `greeted`).
async fn greet_and_ehlo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    helo_name: &str,
    greeted: bool,
    extension: &str,
) -> Result<BytesMut, ExchangeError> {
    let mut greeting = BytesMut::new();
    if !greeted {
        let (code, raw) = read_reply(stream, buf, "greeting").await?;
        if code != 220 {
            return Err(refused("greeting", &raw));
        }
        greeting = raw;
    }
    send(stream, format!("EHLO {helo_name}\r\n").as_bytes(), "EHLO").await?;
    let (code, raw) = read_reply(stream, buf, "EHLO").await?;
    if code != 250 || !ehlo::offers(&raw, extension.as_bytes()) {
        return Err(refused(&format!("EHLO reply has no {extension}"), &raw));
    }
    Ok(greeting)
}

/// A refusal's detail: what was refused and the backend's reply, its lines joined by ` | ` so
/// that the log line stays one line. Bytes outside printable ASCII (control characters, which
/// could forge log lines or drive a terminal, and non-ASCII) and the backslash are shown as
/// `\xNN`; past [`MAX_SHOWN_REPLY`] characters the reply is cut.
pub fn refusal(what: &str, raw: &[u8]) -> String {
    let mut shown = String::with_capacity(raw.len().min(MAX_SHOWN_REPLY) + 8);
    let lines = raw
        .split(|&b| b == b'\n')
        .map(|line| line.trim_ascii_end())
        .filter(|line| !line.is_empty());
    'lines: for (i, line) in lines.enumerate() {
        if i > 0 {
            shown.push_str(" | ");
        }
        for &b in line {
            if shown.len() >= MAX_SHOWN_REPLY {
                shown.push_str(&format!("... ({} bytes in all)", raw.len()));
                break 'lines;
            }
            match b {
                b' '..=b'~' if b != b'\\' => shown.push(char::from(b)),
                _ => shown.push_str(&format!("\\x{b:02x}")),
            }
        }
    }
    format!("{what}: {shown}")
}

fn refused(what: &str, raw: &[u8]) -> ExchangeError {
    ExchangeError::Refused(refusal(what, raw))
}

/// Writes `command`, `during` a step.
async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    command: &[u8],
    during: &'static str,
) -> Result<(), ExchangeError> {
    stream
        .write_all(command)
        .await
        .map_err(|source| ExchangeError::Io { during, source })
}

/// Reads one reply `during` a step, returning its code and raw bytes, consumed from `buf`.
async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    during: &'static str,
) -> Result<(u16, BytesMut), ExchangeError> {
    loop {
        match scan_reply(buf) {
            Ok(Some(reply)) => return Ok((reply.code, buf.split_to(reply.len))),
            Ok(None) => {}
            Err(e) => return Err(ExchangeError::Refused(format!("{during}: {e}"))),
        }
        let read = stream.read_buf(buf).await;
        if read.map_err(|source| ExchangeError::Io { during, source })? == 0 {
            return Err(ExchangeError::Refused(format!(
                "{during}: connection closed"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_one_line() {
        let detail = refusal(
            "EHLO reply has no STARTTLS",
            b"250-mta.test\r\n250 SIZE 1000\r\n",
        );
        assert_eq!(
            detail,
            "EHLO reply has no STARTTLS: 250-mta.test | 250 SIZE 1000"
        );
    }

    #[test]
    fn a_refusal_shows_control_bytes_escaped() {
        let detail = refusal("greeting", b"554 no\rforged\x1b[2J \\ \xc3\xa9\r\n");
        assert_eq!(
            detail,
            "greeting: 554 no\\x0dforged\\x1b[2J \\x5c \\xc3\\xa9"
        );
    }

    #[test]
    fn a_long_reply_is_cut_and_its_length_told() {
        let mut raw = b"554 ".to_vec();
        raw.extend(std::iter::repeat_n(b'x', 10_000));
        raw.extend_from_slice(b"\r\n");
        let detail = refusal("XCLIENT", &raw);
        let shown = detail.strip_prefix("XCLIENT: ").unwrap();
        assert_eq!(
            shown,
            format!("554 {}... (10006 bytes in all)", "x".repeat(396))
        );
    }

    #[test]
    fn xclient_names_v6_clients_with_their_prefix() {
        assert_eq!(
            xclient_command("[::ffff:127.0.0.9]:4000".parse().unwrap()),
            "XCLIENT ADDR=127.0.0.9 PORT=4000 NAME=[UNAVAILABLE]\r\n"
        );
        assert_eq!(
            xclient_command("[2001:db8::1]:25".parse().unwrap()),
            "XCLIENT ADDR=IPV6:2001:db8::1 PORT=25 NAME=[UNAVAILABLE]\r\n"
        );
    }
}
