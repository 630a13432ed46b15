//! The connection to the backend MTA: connect within a deadline, tell it who the client is (PROXY
//! v1/v2 header, or XCLIENT after its greeting), start TLS with it if the policy asks; at the end,
//! let it close first.

use crate::net::backend_tls::{self, BackendTls};
use crate::net::descriptors;
use crate::policy::{BackendPolicy, BackendTlsMode, ClientAddressMode};
use crate::session::codec::scan_reply;
use crate::session::ehlo;
use bytes::BytesMut;
use ppp::v2;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::either::Either;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to backend {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("no socket for a connection to backend {addr}: {source}; mxgate is out of file descriptors (raise its open file limit, LimitNOFILE)")]
    NoDescriptor { addr: SocketAddr, source: io::Error },
    #[error("backend {addr} did not accept the connection within {secs:.1}s")]
    ConnectTimeout { addr: SocketAddr, secs: f64 },
    #[error("backend {addr} I/O error while announcing the client: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("backend {addr} refused XCLIENT: {detail}; allow mxgate's address in smtpd_authorized_xclient_hosts")]
    Xclient { addr: SocketAddr, detail: String },
    #[error("no TLS with backend {addr}: {detail}; check [backend.tls] against the backend's TLS settings and certificate")]
    Tls { addr: SocketAddr, detail: String },
}

impl BackendError {
    /// The failure as a label of `mxgate_backend_connect_failures_total` (a shortage of
    /// descriptors is mxgate's own, counted in `mxgate_out_of_descriptors_total` instead).
    pub fn reason(&self) -> &'static str {
        match self {
            BackendError::Connect { .. } => "connect",
            BackendError::NoDescriptor { .. } => "no_descriptor",
            BackendError::ConnectTimeout { .. } => "timeout",
            BackendError::Io { .. } => "io",
            BackendError::Xclient { .. } => "xclient",
            BackendError::Tls { .. } => "tls",
        }
    }
}

/// The connection to the backend as sessions use it: plain TCP (`Left`), or TLS over it (`Right`)
/// when the policy asks for TLS on the hop; boxed, as the TLS state is large and most deployments
/// keep the hop plain.
pub type BackendStream = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// A connected backend and the bytes it already sent that the relay must read (its greeting).
pub struct Backend {
    pub stream: BackendStream,
    pub pending_input: BytesMut,
}

/// The client as the backend should see it. IPv4-mapped IPv6 addresses are written as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// Source and destination in one address family, as PROXY headers require.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (client, local) = (canonical(client), canonical(local));
    let to_v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if client.is_ipv4() == local.is_ipv4() {
        (client, local)
    } else {
        (to_v6(client), to_v6(local))
    }
}

/// The PROXY header announcing `client`, which connected to mxgate's `local` address.
pub fn proxy_header(mode: ClientAddressMode, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let addresses = same_family(client, local);
    match mode {
        ClientAddressMode::V1 => ppp::v1::Addresses::from(addresses).to_string().into_bytes(),
        ClientAddressMode::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            addresses,
        )
        .build()
        // Building into a Vec cannot fail for a fixed-size address block.
        .unwrap_or_default(),
        ClientAddressMode::None | ClientAddressMode::Xclient => Vec::new(),
    }
}

/// Connects to the backend and announces the client. `input` (empty) receives what the backend
/// says; it becomes the backend's [`Backend::pending_input`].
pub async fn connect(
    policy: &BackendPolicy,
    client: SocketAddr,
    local: SocketAddr,
    helo_name: &str,
    input: BytesMut,
) -> Result<Backend, BackendError> {
    let addr = policy.address;
    let mut stream = match timeout(policy.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) if descriptors::is_exhaustion(&source) => {
            return Err(BackendError::NoDescriptor { addr, source })
        }
        Ok(Err(source)) => return Err(BackendError::Connect { addr, source }),
        Err(_) => {
            return Err(BackendError::ConnectTimeout {
                addr,
                secs: policy.connect_timeout.as_secs_f64(),
            })
        }
    };
    // Replies and commands are small: without this, each waits for the peer's delayed ACK.
    let _ = stream.set_nodelay(true);
    let io_err = |source| BackendError::Io { addr, source };
    if let ClientAddressMode::V1 | ClientAddressMode::V2 = policy.client_address {
        // Before TLS too: the backend reads the header before anything else.
        let header = proxy_header(policy.client_address, client, local);
        stream.write_all(&header).await.map_err(io_err)?;
    }
    let mut pending_input = input;
    let (mut stream, greeted) = match &policy.tls {
        None => (Either::Left(stream), false),
        Some(tls) => {
            let started = start_tls(stream, tls, addr.ip(), &mut pending_input, helo_name);
            match timeout(policy.reply_timeout, started).await {
                Ok(Ok(started)) => started,
                Ok(Err(e)) => {
                    return Err(BackendError::Tls {
                        addr,
                        detail: e.to_string(),
                    })
                }
                Err(_) => {
                    return Err(BackendError::Tls {
                        addr,
                        detail: "no TLS session within reply_timeout".into(),
                    })
                }
            }
        }
    };
    if policy.client_address == ClientAddressMode::Xclient {
        // After STARTTLS the first greeting is spent: XCLIENT's new one is what the client sees.
        pending_input.clear();
        let exchange = xclient(&mut stream, &mut pending_input, client, helo_name, greeted);
        match timeout(policy.reply_timeout, exchange).await {
            Ok(result) => result.map_err(|e| match e {
                ExchangeError::Io { source, .. } => BackendError::Io { addr, source },
                ExchangeError::Refused(detail) => BackendError::Xclient { addr, detail },
            })?,
            Err(_) => {
                return Err(BackendError::Xclient {
                    addr,
                    detail: "no reply in time".into(),
                })
            }
        }
    }
    Ok(Backend {
        stream,
        pending_input,
    })
}

/// Starts TLS with the backend as `tls.mode` says. With STARTTLS the backend's greeting, read
/// first, is appended to `greeting` for the client, and the second value is true.
async fn start_tls(
    mut stream: TcpStream,
    tls: &BackendTls,
    backend: IpAddr,
    greeting: &mut BytesMut,
    helo_name: &str,
) -> Result<(BackendStream, bool), ExchangeError> {
    let greeted = match tls.mode {
        BackendTlsMode::Implicit => false,
        BackendTlsMode::Starttls => {
            let mut buf = BytesMut::with_capacity(512);
            let first = greet_and_ehlo(&mut stream, &mut buf, helo_name, false, "STARTTLS").await?;
            // The greeting goes to the client after TLS, as the backend's first words.
            greeting.extend_from_slice(&first);
            send(&mut stream, b"STARTTLS\r\n", "STARTTLS").await?;
            let (code, raw) = read_reply(&mut stream, &mut buf, "STARTTLS").await?;
            if code != 220 {
                return Err(refused("STARTTLS", &raw));
            }
            if !buf.is_empty() {
                // Bytes sent in the clear behind the 220 would be taken into the TLS session as if
                // they came inside it (CVE-2011-0411).
                return Err(refused(
                    "bytes in the clear after the 220 to STARTTLS",
                    &buf,
                ));
            }
            true
        }
    };
    match backend_tls::handshake(stream, tls, backend).await {
        Ok(tls_stream) => Ok((Either::Right(Box::new(tls_stream)), greeted)),
        Err(source) => Err(ExchangeError::Io {
            during: "TLS handshake",
            source,
        }),
    }
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
/// that the log line stays one line.
fn refusal(what: &str, raw: &[u8]) -> String {
    let reply = String::from_utf8_lossy(raw);
    let lines: Vec<&str> = reply.lines().map(str::trim_end).collect();
    format!("{what}: {}", lines.join(" | "))
}

fn refused(what: &str, raw: &[u8]) -> ExchangeError {
    ExchangeError::Refused(refusal(what, raw))
}

/// How long a session waits for the backend to close the connection after QUIT.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Reads until the backend closes the connection after QUIT, discarding what it still sends (its 221
/// to a QUIT of mxgate's own). The side that closes first holds the connection's TIME_WAIT: waiting
/// keeps it with the backend, as a TCP proxy does, instead of on mxgate's ports towards the
/// backend. The caller bounds the wait with [`CLOSE_WAIT`].
pub async fn until_closed<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut scrap = [0u8; 512];
    while let Ok(1..) = stream.read(&mut scrap).await {}
}

/// What went wrong in an exchange of commands and replies before the session.
enum ExchangeError {
    /// A read or write failed `during` a step.
    Io {
        during: &'static str,
        source: io::Error,
    },
    /// The backend refused, answered garbage or closed; the detail names the step.
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

/// Postfix XCLIENT (http://www.postfix.org/XCLIENT_README.html): greeting (unless `greeted`: read
/// before STARTTLS), EHLO, XCLIENT. The backend answers XCLIENT with a fresh greeting, which is
/// left in `buf` for the client.
async fn xclient<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    client: SocketAddr,
    helo_name: &str,
    greeted: bool,
) -> Result<(), ExchangeError> {
    greet_and_ehlo(stream, buf, helo_name, greeted, "XCLIENT").await?;
    let client = canonical(client);
    let addr = match client.ip() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPV6:{v6}"),
    };
    let command = format!(
        "XCLIENT ADDR={addr} PORT={} NAME=[UNAVAILABLE]\r\n",
        client.port()
    );
    send(stream, command.as_bytes(), "XCLIENT").await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers() {
        let client: SocketAddr = "127.0.0.9:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:25".parse().unwrap();
        assert_eq!(
            proxy_header(ClientAddressMode::V1, client, local),
            b"PROXY TCP4 127.0.0.9 127.0.0.1 40000 25\r\n"
        );
        let v2 = proxy_header(ClientAddressMode::V2, client, local);
        let parsed = v2::Header::try_from(&v2[..]).unwrap();
        assert_eq!(parsed.addresses, v2::Addresses::from((client, local)));
        assert!(proxy_header(ClientAddressMode::None, client, local).is_empty());
    }

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
    fn mixed_families_are_reconciled() {
        let mapped: SocketAddr = "[::ffff:127.0.0.9]:1".parse().unwrap();
        let local_v4: SocketAddr = "127.0.0.1:25".parse().unwrap();
        assert_eq!(
            proxy_header(ClientAddressMode::V1, mapped, local_v4),
            b"PROXY TCP4 127.0.0.9 127.0.0.1 1 25\r\n"
        );
        let v6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let header = String::from_utf8(proxy_header(ClientAddressMode::V1, v6, local_v4)).unwrap();
        assert_eq!(header, "PROXY TCP6 2001:db8::1 ::ffff:127.0.0.1 1 25\r\n");
    }
}
