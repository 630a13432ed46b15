//! The last reply of a connection and its FIN in one TCP segment, as haproxy sends them.
//!
//! Sent the ordinary way, the reply goes out at once (TCP_NODELAY) and the FIN follows in a segment
//! of its own when the socket is closed: one more packet for both kernels and, often, one more
//! wake-up of the client. `MSG_MORE` holds the reply back for the moment it takes to half-close the
//! socket, and the FIN then leaves with it. The half-close also makes sure the reply is on its way
//! before the socket is dropped, even if the client left unread bytes (the close then resets).

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Writes `bytes`, the last thing this connection carries, and half-closes it, in one segment where
/// it can. What does not leave that way (the socket would block, or this system has no `MSG_MORE`)
/// is written as usual, and the FIN follows at close.
pub async fn write_last(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    // A socket just accepted is writable, but tokio learns that from its first event.
    stream.writable().await?;
    let sent = send_last(stream, bytes);
    stream.write_all(&bytes[sent..]).await
}

/// Sends `bytes` and half-closes. Returns how many bytes left this way: all of them, or a prefix
/// (or none) when the socket would block or this system has no `MSG_MORE`.
fn send_last(stream: &TcpStream, bytes: &[u8]) -> usize {
    let sent = send_more(stream, bytes);
    if sent == bytes.len() {
        let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    }
    sent
}

#[cfg(target_os = "linux")]
fn send_more(stream: &TcpStream, bytes: &[u8]) -> usize {
    // `try_io` tries only while tokio knows the socket writable and clears that on EAGAIN.
    let flags = libc::MSG_MORE | libc::MSG_NOSIGNAL;
    stream
        .try_io(Interest::WRITABLE, || {
            socket2::SockRef::from(stream).send_with_flags(bytes, flags)
        })
        .unwrap_or(0)
}

#[cfg(not(target_os = "linux"))]
fn send_more(_stream: &TcpStream, _bytes: &[u8]) -> usize {
    0
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Segments this socket has sent, as the kernel counts them (`ss -i` from iproute2, which
    /// leaves the counter out while it is 0).
    fn segments_out(stream: &TcpStream) -> u32 {
        let (local, peer) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
        let filter = format!("sport = :{} and dport = :{}", local.port(), peer.port());
        let ss = std::process::Command::new("ss")
            .args(["-tinHa", &filter])
            .output()
            .expect("ss (iproute2) runs");
        assert!(ss.status.success(), "ss failed: {ss:?}");
        let text = String::from_utf8_lossy(&ss.stdout);
        assert!(
            text.contains(&local.to_string()),
            "ss shows the socket: {text}"
        );
        text.split_whitespace()
            .find_map(|field| field.strip_prefix("segs_out:"))
            .map_or(0, |n| n.parse().unwrap())
    }

    async fn connected_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        server.set_nodelay(true).unwrap();
        // The first readiness event, as a relayed session has long had by its last reply.
        server.writable().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_last_reply_and_the_fin_leave_in_one_segment() {
        let (mut client, server) = connected_pair().await;
        let reply = b"221 2.0.0 Bye\r\n";
        let before = segments_out(&server);
        assert_eq!(send_last(&server, reply), reply.len());
        assert_eq!(
            segments_out(&server) - before,
            1,
            "reply and FIN in one segment"
        );
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got, reply,
            "the client reads the reply, then the end of the stream"
        );
    }

    #[tokio::test]
    async fn a_reply_sent_the_ordinary_way_costs_a_second_segment_for_the_fin() {
        // The yardstick the test above is measured against: without MSG_MORE the FIN goes alone.
        let (_client, server) = connected_pair().await;
        let before = segments_out(&server);
        server.try_write(b"221 2.0.0 Bye\r\n").unwrap();
        socket2::SockRef::from(&server)
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
        assert_eq!(segments_out(&server) - before, 2);
    }
}
