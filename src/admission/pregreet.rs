//! The early-talker test (postscreen's pregreet): mxgate sends the first line of a multi-line
//! greeting (`220-host ESMTP`) and waits; a client that speaks before the greeting is complete is
//! not a patient MTA. What it sent is kept, so an admitted early talker loses nothing.

use bytes::BytesMut;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the test saw.
#[derive(Debug)]
pub struct Pregreet {
    /// The client spoke before the greeting was complete.
    pub early: bool,
    /// What it said, to be read as its first commands.
    pub input: BytesMut,
}

/// Sends the teaser and watches the client for `delay`. Fails if the client goes away.
pub async fn watch(
    stream: &mut TcpStream,
    hostname: &str,
    delay: Duration,
) -> io::Result<Pregreet> {
    stream.write_all(teaser(hostname).as_bytes()).await?;
    let mut input = BytesMut::with_capacity(1024);
    match tokio::time::timeout(delay, stream.read_buf(&mut input)).await {
        Err(_) => Ok(Pregreet {
            early: false,
            input,
        }),
        Ok(Ok(0)) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(Ok(_)) => Ok(Pregreet { early: true, input }),
        Ok(Err(e)) => Err(e),
    }
}

/// The first line of the greeting; the backend's `220 ...` (or mxgate's) completes it.
pub fn teaser(hostname: &str) -> String {
    format!("220-{hostname} ESMTP\r\n")
}

/// The last line of the greeting when mxgate itself must finish it (defer, reject, no backend);
/// empty when no teaser was sent, so it can always be put before mxgate's own reply.
pub fn greeting_end(teaser_sent: bool, hostname: &str) -> String {
    match teaser_sent {
        true => format!("220 {hostname} ESMTP\r\n"),
        false => String::new(),
    }
}
