//! A small SMTP client for tests, the demo and the load generator: connects from a chosen 127.x.y.z
//! address, reads complete (multi-line) replies, pipelines, dot-stuffs bodies and upgrades to TLS.

use bytes::{Buf, BytesMut};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A complete server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// All lines, CRLFs included, as received.
    pub text: String,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text.trim_end())
    }
}

pub struct SmtpClient<S> {
    stream: S,
    buf: BytesMut,
    /// Longest wait for one reply.
    pub reply_timeout: Duration,
}

/// Opens a TCP connection to `target`, from `source` if given (any 127.x.y.z works on Linux loopback).
pub async fn connect_from(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl SmtpClient<TcpStream> {
    /// Connects (from `source` if given) without reading the greeting.
    pub async fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<Self> {
        Ok(Self::new(connect_from(target, source).await?))
    }

    /// Sends STARTTLS and, on 220, performs the handshake for `server_name`.
    pub async fn starttls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<SmtpClient<tokio_rustls::client::TlsStream<TcpStream>>> {
        let reply = self.command("STARTTLS").await?;
        if reply.code != 220 {
            return Err(io::Error::other(format!("STARTTLS refused: {reply}")));
        }
        self.tls_handshake(config, server_name).await
    }

    /// The TLS handshake for `server_name`, once the server has said 220 to STARTTLS.
    pub async fn tls_handshake(
        self,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<SmtpClient<tokio_rustls::client::TlsStream<TcpStream>>> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, self.stream)
            .await?;
        Ok(SmtpClient {
            stream: tls,
            buf: BytesMut::new(),
            reply_timeout: self.reply_timeout,
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpClient<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(4096),
            reply_timeout: Duration::from_secs(30),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Reads one complete reply. Fails on EOF, garbage or timeout.
    pub async fn read_reply(&mut self) -> io::Result<Reply> {
        let deadline = tokio::time::Instant::now() + self.reply_timeout;
        loop {
            if let Some(reply) = take_reply(&mut self.buf)? {
                return Ok(reply);
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply in time"))??;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by server",
                ));
            }
        }
    }

    /// Whether the server closes the connection within the reply timeout. Whatever it still sends
    /// (a TLS alert, say) is read and dropped, up to 64 KiB.
    pub async fn closed_by_server(&mut self) -> bool {
        let mut probe = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + self.reply_timeout;
        for _ in 0..16 {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
        false
    }

    /// Writes raw bytes as they are.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Sends a command line (CRLF added) and reads its reply.
    pub async fn command(&mut self, line: &str) -> io::Result<Reply> {
        self.write_raw(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply().await
    }

    /// One message: MAIL, RCPTs and DATA pipelined in one write, then the dot-stuffed body.
    /// Returns the reply to the end of data, or the first refusal.
    pub async fn send_message(
        &mut self,
        from: &str,
        rcpts: &[&str],
        body: &[u8],
    ) -> io::Result<Reply> {
        let mut group = format!("MAIL FROM:<{from}>\r\n");
        for rcpt in rcpts {
            group.push_str(&format!("RCPT TO:<{rcpt}>\r\n"));
        }
        group.push_str("DATA\r\n");
        self.write_raw(group.as_bytes()).await?;
        // A 421 ends the session at any point of the group: no more replies will come.
        let mail = self.read_reply().await?;
        if mail.code == 421 {
            return Ok(mail);
        }
        let mut accepted = 0;
        for _ in rcpts {
            let rcpt = self.read_reply().await?;
            if rcpt.code == 421 {
                return Ok(rcpt);
            }
            accepted += usize::from(rcpt.is_positive());
        }
        let data = self.read_reply().await?;
        if !mail.is_positive() {
            return Ok(mail);
        }
        if data.code != 354 {
            return Ok(data);
        }
        debug_assert!(accepted > 0);
        self.write_raw(&dot_stuff(body)).await?;
        self.read_reply().await
    }

    pub fn into_inner(self) -> S {
        self.stream
    }
}

/// Takes one complete reply from the front of `buf`.
fn take_reply(buf: &mut BytesMut) -> io::Result<Option<Reply>> {
    let mut pos = 0;
    while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
        let line = &buf[pos..pos + nl + 1];
        if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an SMTP reply: {:?}", String::from_utf8_lossy(line)),
            ));
        }
        pos += nl + 1;
        if line[3] != b'-' {
            let code = std::str::from_utf8(&line[..3])
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..pos]).into_owned();
            buf.advance(pos);
            return Ok(Some(Reply { code, text }));
        }
    }
    Ok(None)
}

/// The body as sent after DATA: a leading dot doubled on every line (RFC 5321 4.5.2), CRLF added at
/// the end if missing, then the terminator.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 8);
    let mut line_start = true;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") && !out.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }

    #[test]
    fn replies() {
        let mut buf = BytesMut::from(&b"250-a\r\n250 b\r\n354 go\r\n"[..]);
        assert_eq!(
            take_reply(&mut buf).unwrap().unwrap().text,
            "250-a\r\n250 b\r\n"
        );
        assert_eq!(take_reply(&mut buf).unwrap().unwrap().code, 354);
        assert!(take_reply(&mut buf).unwrap().is_none());
        let mut junk = BytesMut::from(&b"hello\r\n"[..]);
        assert!(take_reply(&mut junk).is_err());
    }
}
