//! Sessions mxgate answers alone, without a backend: a deferred client gets its 421 and is closed; a
//! rejected one gets its 554 and then 503 to every command but QUIT (RFC 5321 3.1), until it leaves.
//! After a pregreet teaser the greeting is finished with 220 first.

use super::codec::{parse_command, scan_line, LineScan, Verb};
use crate::net::last_reply;
use bytes::{Buf, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Writes `reply` and closes; the reply and the FIN leave in one segment where they can.
pub async fn defer(mut client: TcpStream, reply: &str, write_timeout: Duration) {
    let _ = timeout(
        write_timeout,
        last_reply::write_last(&mut client, reply.as_bytes()),
    )
    .await;
}

/// Limits of a rejected session: it gets few commands and little time.
pub struct RejectLimits {
    pub idle_timeout: Duration,
    pub max_command_line: usize,
    pub max_commands: u32,
}

/// Writes the 554 greeting, then answers 503 to all but QUIT. When the greeting was begun with a
/// `220-` teaser, it is finished with `greeting_end` instead and every command but QUIT gets the 554.
pub async fn reject(
    mut client: TcpStream,
    reply: &str,
    greeting_end: Option<String>,
    limits: RejectLimits,
) {
    let mut buf = BytesMut::with_capacity(1024);
    let first = greeting_end.as_deref().unwrap_or(reply);
    if !matches!(
        timeout(limits.idle_timeout, client.write_all(first.as_bytes())).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let refusal: &[u8] = match greeting_end {
        Some(_) => reply.as_bytes(),
        None => b"503 5.7.0 Error: access denied\r\n",
    };
    let mut commands = 0;
    while commands < limits.max_commands {
        match scan_line(&buf, limits.max_command_line) {
            LineScan::Complete { len } => {
                let quit = matches!(parse_command(&buf[..len]), Ok(c) if c.verb == Verb::Quit);
                buf.advance(len);
                commands += 1;
                let answer: &[u8] = if quit { b"221 2.0.0 Bye\r\n" } else { refusal };
                if !matches!(
                    timeout(limits.idle_timeout, client.write_all(answer)).await,
                    Ok(Ok(()))
                ) || quit
                {
                    return;
                }
            }
            LineScan::TooLong => return,
            LineScan::Incomplete => {
                match timeout(limits.idle_timeout, client.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
            }
        }
    }
}
