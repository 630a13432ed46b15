//! What the soak's senders do: deliver (plain or over STARTTLS, pipelined, split at random, some
//! bodies cut off), send junk, say nothing, garble a TLS handshake, half-close, or reset. Each
//! returns what happened to it; deliveries count the messages the client was told were accepted.

use mxgate_loadtest::client::{dot_stuff, Reply, SmtpClient};
use proptest::prelude::RngExt;
use proptest::test_runner::TestRng;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Deliver,
    DeliverOverTls,
    Junk,
    Silent,
    TlsJunk,
    HalfClose,
    Reset,
}

impl Kind {
    pub fn pick(rng: &mut TestRng) -> Kind {
        match rng.random_range(0..100) {
            0..50 => Kind::Deliver,
            50..65 => Kind::DeliverOverTls,
            65..75 => Kind::Junk,
            75..82 => Kind::Silent,
            82..88 => Kind::TlsJunk,
            88..94 => Kind::HalfClose,
            _ => Kind::Reset,
        }
    }
}

/// How one sender's session went.
#[derive(Debug)]
pub struct Outcome {
    pub kind: Kind,
    /// Messages whose end of data had a 2xx reply.
    pub accepted: u32,
    /// A short description for the summary: `refused 421`, `cut off`, `quit`, `lost: ...`.
    pub end: String,
    /// Something no client should ever see (a hang, a positive reply where none belongs).
    pub violation: Option<String>,
}

/// The steps where a delivering sender may lose its connection without a reply: a TLS handshake
/// (cut off by mxgate's handshake timeout, where no reply can come), and, only when the test says
/// so, the greeting.
const HANDSHAKE: &str = "at the TLS handshake";

/// The step before mxgate has said anything.
const GREETING: &str = "the greeting";

/// Names the step an error happened at, for the summary.
fn at(step: &'static str) -> impl Fn(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{:?} at {step} ({e})", e.kind()))
}

pub struct Sender {
    pub kind: Kind,
    pub source: IpAddr,
    pub gate: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    pub rng: TestRng,
    /// mxgate may stop listening while this sender is in its queue: a connection reset before the
    /// greeting is then no broken promise.
    pub greeting_may_fail: bool,
}

impl Sender {
    pub async fn run(mut self) -> Outcome {
        let mut outcome = Outcome {
            kind: self.kind,
            accepted: 0,
            end: String::new(),
            violation: None,
        };
        let client = match SmtpClient::connect(self.gate, Some(self.source)).await {
            Ok(client) => client,
            Err(e) => {
                outcome.end = format!("connect: {}", e.kind());
                return outcome;
            }
        };
        let port = client.get_ref().local_addr().map_or(0, |a| a.port());
        let result = match self.kind {
            Kind::Deliver | Kind::DeliverOverTls => self.deliver(client, &mut outcome).await,
            Kind::Junk => self.junk(client).await,
            Kind::Silent => self.silent(client).await,
            Kind::TlsJunk => self.tls_junk(client).await,
            Kind::HalfClose => self.half_close(client).await,
            Kind::Reset => self.reset(client).await,
        };
        // A sender that delivers always has a reply to read, mxgate's 421 at worst: it reads it
        // even after a write failed. Losing the connection without one is a broken promise, but
        // for a TLS handshake cut off by mxgate's handshake timeout, where no reply can come.
        let delivers = matches!(self.kind, Kind::Deliver | Kind::DeliverOverTls);
        let excused = |e: &io::Error| {
            let text = e.to_string();
            text.contains(HANDSHAKE) || self.greeting_may_fail && text.contains(GREETING)
        };
        match result {
            Ok(end) => outcome.end = end,
            Err(e) if e.kind() == io::ErrorKind::TimedOut || delivers && !excused(&e) => {
                let from = SocketAddr::new(self.source, port);
                outcome.violation = Some(format!("{:?} from {from}: {e}", self.kind));
                outcome.end = format!("lost: {e}");
            }
            Err(e) => outcome.end = format!("lost: {e}"),
        }
        outcome
    }

    async fn deliver(
        &mut self,
        mut client: SmtpClient<TcpStream>,
        outcome: &mut Outcome,
    ) -> io::Result<String> {
        let greeting = client.read_reply().await.map_err(at(GREETING))?;
        if greeting.code != 220 {
            return Ok(format!("refused: {}", greeting.text.trim_end()));
        }
        let ehlo = client.command("EHLO soak.test").await.map_err(at("EHLO"))?;
        if ehlo.code != 250 {
            return Ok(format!("EHLO {}", ehlo.code));
        }
        if matches!(self.kind, Kind::DeliverOverTls) {
            let starttls = client.command("STARTTLS").await.map_err(at("STARTTLS"))?;
            if starttls.code != 220 {
                return Ok(format!("STARTTLS {}", starttls.code));
            }
            let mut tls = client
                .tls_handshake(self.tls.clone(), "mx.test")
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("{e} {HANDSHAKE}")))?;
            let ehlo = tls.command("EHLO soak.test").await.map_err(at("EHLO"))?;
            if ehlo.code != 250 {
                return Ok(format!("EHLO over TLS {}", ehlo.code));
            }
            return self.transactions(tls, outcome).await;
        }
        self.transactions(client, outcome).await
    }

    async fn transactions<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mut client: SmtpClient<S>,
        outcome: &mut Outcome,
    ) -> io::Result<String> {
        for _ in 0..self.rng.random_range(1..=6) {
            let recipients = self.rng.random_range(1..=4);
            let mut group = String::from("MAIL FROM:<s@soak.test>\r\n");
            for r in 0..recipients {
                // Now and then one the backend refuses (550), crashes on or hangs at.
                let local = match self.rng.random_range(0..200) {
                    0..20 => "refused",
                    20..24 => "crash",
                    24..26 => "stall",
                    _ => "r",
                };
                group.push_str(&format!("RCPT TO:<{local}{r}@backend.test>\r\n"));
            }
            group.push_str("DATA\r\n");
            let written = self.write_split(&mut client, group.as_bytes()).await;
            if let Some(reply) = written.map_err(at("MAIL..DATA"))? {
                return Ok(format!("{} while writing MAIL..DATA", reply.code));
            }
            let mut codes = Vec::new();
            for _ in 0..recipients + 2 {
                let code = client.read_reply().await.map_err(at("MAIL..DATA"))?.code;
                codes.push(code);
                if code == 421 {
                    return Ok("cut off".into());
                }
            }
            if codes[0] == 250
                && codes.iter().skip(1).all(|&c| c != 250)
                && codes.last() == Some(&354)
            {
                outcome.violation = Some(format!("354 with no recipient accepted: {codes:?}"));
            }
            if codes.last() != Some(&354) {
                let rset = client.command("RSET").await.map_err(at("RSET"))?;
                if rset.code == 421 {
                    return Ok("421 to RSET".into());
                }
                continue;
            }
            let body = dot_stuff(&self.body());
            if self.rng.random_ratio(1, 20) {
                // Cut off in the middle of the body: nothing may be delivered.
                let written = self.write_split(&mut client, &body[..body.len() / 2]).await;
                if let Some(reply) = written.map_err(at("half a body"))? {
                    return Ok(format!("{} while writing half a body", reply.code));
                }
                return Ok("cut off the body".into());
            }
            let written = self.write_split(&mut client, &body).await;
            if let Some(reply) = written.map_err(at("the body"))? {
                return Ok(format!("{} while writing the body", reply.code));
            }
            let reply = client.read_reply().await.map_err(at("end of data"))?;
            match reply.code {
                200..=299 => outcome.accepted += 1,
                421 => return Ok("421 after the body".into()),
                _ => {}
            }
        }
        client.command("QUIT").await.map_err(at("QUIT"))?;
        Ok("quit".into())
    }

    /// A body of about 10 B to 70 KiB with lines a dot-stuffer must escape.
    fn body(&mut self) -> Vec<u8> {
        let size = [10, 500, 3_000, 70_000][self.rng.random_range(0..4)];
        let mut body = b"Subject: soak\r\n\r\n".to_vec();
        while body.len() < size {
            let line = match self.rng.random_range(0..8) {
                0 => ".".to_string(),
                1 => ".. leading dots".to_string(),
                _ => "x".repeat(self.rng.random_range(0..76)),
            };
            body.extend_from_slice(line.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        body
    }

    /// Writes `bytes` in pieces of random size. When a write fails (mxgate closed the connection)
    /// it reads what mxgate said before closing, as a blocking client would, and returns that reply.
    async fn write_split<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        client: &mut SmtpClient<S>,
        bytes: &[u8],
    ) -> io::Result<Option<Reply>> {
        let mut at = 0;
        while at < bytes.len() {
            let piece = [1, 7, 100, 4096, bytes.len()][self.rng.random_range(0..5)];
            let end = (at + piece).min(bytes.len());
            if let Err(e) = client.write_raw(&bytes[at..end]).await {
                return match client.read_reply().await {
                    Ok(reply) => Ok(Some(reply)),
                    Err(no_reply) => Err(io::Error::new(
                        e.kind(),
                        format!("{e}, and no reply to read: {no_reply}"),
                    )),
                };
            }
            at = end;
        }
        Ok(None)
    }

    async fn junk(&mut self, mut client: SmtpClient<TcpStream>) -> io::Result<String> {
        client.read_reply().await?;
        let junk: Vec<u8> = match self.rng.random_range(0..4) {
            0 => (0..3_000)
                .map(|_| self.rng.random_range(0..=255u8))
                .collect(),
            1 => [b"MAIL FROM:<".as_slice(), &[b'x'; 100_000]].concat(),
            2 => b"GET / HTTP/1.1\r\nHost: mx.test\r\n\r\n".to_vec(),
            _ => b"EHLO a\x00b\r\n".repeat(20),
        };
        for _ in 0..10 {
            if client.write_raw(&junk).await.is_err() {
                break;
            }
        }
        self.expect_close(&mut client).await
    }

    async fn silent(&mut self, mut client: SmtpClient<TcpStream>) -> io::Result<String> {
        if self.rng.random_bool(0.5) {
            client.write_raw(b"EHLO half a comm").await?;
        }
        self.expect_close(&mut client).await
    }

    async fn tls_junk(&mut self, mut client: SmtpClient<TcpStream>) -> io::Result<String> {
        let greeting = client.read_reply().await?;
        if greeting.code != 220 {
            return Ok(format!("refused: {}", greeting.text.trim_end()));
        }
        if client.command("EHLO soak.test").await?.code != 250
            || client.command("STARTTLS").await?.code != 220
        {
            return Ok("no STARTTLS".into());
        }
        let garbage: Vec<u8> = (0..500).map(|_| self.rng.random_range(0..=255u8)).collect();
        client.write_raw(&garbage).await?;
        self.expect_close(&mut client).await
    }

    async fn half_close(&mut self, mut client: SmtpClient<TcpStream>) -> io::Result<String> {
        client.read_reply().await?;
        client
            .write_raw(b"EHLO soak.test\r\nMAIL FROM:<s@soak.test>\r\n")
            .await?;
        let mut stream = client.into_inner();
        stream.shutdown().await?;
        let mut client = SmtpClient::new(stream);
        self.expect_close(&mut client).await
    }

    async fn reset(&mut self, client: SmtpClient<TcpStream>) -> io::Result<String> {
        let wait = self.rng.random_range(0..50);
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        let stream = client.into_inner();
        socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO))?;
        drop(stream);
        Ok("reset".into())
    }

    /// mxgate must close the connection within the client's reply timeout, whatever it said.
    async fn expect_close<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        client: &mut SmtpClient<S>,
    ) -> io::Result<String> {
        match client.closed_by_server().await {
            true => Ok("closed by mxgate".into()),
            false => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "mxgate never closed",
            )),
        }
    }
}
