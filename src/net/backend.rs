//! The connection to the backend MTA: connect within a deadline, tell it who the client is (PROXY
//! v1/v2 header, or XCLIENT after its greeting), start TLS with it if the policy asks; at the end,
//! let it close first. The commands and replies of XCLIENT and STARTTLS are `backend_exchange`'s.

use crate::net::backend_exchange::{self as exchange, ExchangeError};
use crate::net::backend_tls::{self, BackendTls};
use crate::net::client_address::canonical;
use crate::net::descriptors;
use crate::policy::{BackendPolicy, BackendTlsMode, ClientAddressMode};
use bytes::BytesMut;
use ppp::v2;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
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
        let exchange =
            exchange::xclient(&mut stream, &mut pending_input, client, helo_name, greeted);
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
            // The greeting goes to the client after TLS, as the backend's first words.
            greeting.extend_from_slice(&exchange::starttls(&mut stream, helo_name).await?);
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
