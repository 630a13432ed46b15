//! A turn's output written without waiting: the common case, which then builds none of the timed
//! writes (a future of several hundred bytes, moved into the session's task at every turn).

use super::relay::Output;
use bytes::{Buf, BytesMut};
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

/// What [`write_at_once`] left to the timed writes.
#[derive(Debug, PartialEq, Eq)]
pub enum Left {
    Nothing,
    /// Bytes still in the output, or streams (TLS) that still hold some to flush.
    Output(Unflushed),
}

/// The streams that took their bytes but still hold some to send: a TLS stream whose records
/// did not all fit into the socket. A plain socket never does.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct Unflushed {
    pub client: bool,
    pub backend: bool,
}

/// Writes the relay's output as far as the streams take it without waiting: the client's part,
/// flushed, then the backend's, flushed. Replies and commands are small and almost always go at
/// once. What is written is gone from `out`; a stream that would block or fails is left to the
/// timed writes, which meet the same state or error again and handle it.
pub async fn write_at_once<C, B>(client: &mut C, backend: &mut B, out: &mut Output) -> Left
where
    C: AsyncWrite + Unpin,
    B: AsyncWrite + Unpin,
{
    poll_fn(|cx| Poll::Ready(write_now(client, backend, out, cx))).await
}

fn write_now<C, B>(client: &mut C, backend: &mut B, out: &mut Output, cx: &mut Context) -> Left
where
    C: AsyncWrite + Unpin,
    B: AsyncWrite + Unpin,
{
    let mut unflushed = Unflushed::default();
    if !out.to_client.is_empty() {
        if !write_ready(Pin::new(&mut *client), &mut out.to_client, cx) {
            return Left::Output(unflushed);
        }
        unflushed.client = !flushed(Pin::new(&mut *client), cx);
    }
    if !out.to_backend.is_empty() {
        if !write_ready(Pin::new(&mut *backend), &mut out.to_backend, cx) {
            return Left::Output(unflushed);
        }
        unflushed.backend = !flushed(Pin::new(backend), cx);
    }
    match unflushed == Unflushed::default() {
        true => Left::Nothing,
        false => Left::Output(unflushed),
    }
}

/// Whether the writer sent all it holds without waiting.
fn flushed<W: AsyncWrite>(writer: Pin<&mut W>, cx: &mut Context) -> bool {
    matches!(writer.poll_flush(cx), Poll::Ready(Ok(())))
}

/// Writes `buf` while the writer takes it without waiting; true once all of it is written. A buffer
/// written in full is cleared, never advanced, so it keeps its whole capacity for the pool.
fn write_ready<W: AsyncWrite>(
    mut writer: Pin<&mut W>,
    buf: &mut BytesMut,
    cx: &mut Context,
) -> bool {
    let mut written = 0;
    while written < buf.len() {
        match writer.as_mut().poll_write(cx, &buf[written..]) {
            Poll::Ready(Ok(n)) if n > 0 => written += n,
            _ => {
                buf.advance(written);
                return false;
            }
        }
    }
    buf.clear();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// A writer that takes up to `room` bytes in all, then would block; its flush waits while
    /// `flush_waits`; `fail` makes every write an error.
    #[derive(Default)]
    struct Writer {
        written: Vec<u8>,
        room: usize,
        flush_waits: bool,
        fail: bool,
    }

    impl AsyncWrite for Writer {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.fail {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            // At most 4 bytes a call, so that a write is several calls.
            let n = buf.len().min(self.room).min(4);
            if n == 0 {
                return Poll::Pending;
            }
            self.room -= n;
            self.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
            match self.flush_waits {
                true => Poll::Pending,
                false => Poll::Ready(Ok(())),
            }
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Bytes left for the timed writes; nothing a stream holds unflushed.
    const REST_LEFT: Left = Left::Output(Unflushed {
        client: false,
        backend: false,
    });

    fn writer(room: usize) -> Writer {
        Writer {
            room,
            ..Writer::default()
        }
    }

    fn output(to_client: &[u8], to_backend: &[u8]) -> Output {
        Output {
            to_client: BytesMut::from(to_client),
            to_backend: BytesMut::from(to_backend),
            action: None,
        }
    }

    fn write(client: &mut Writer, backend: &mut Writer, out: &mut Output) -> Left {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        write_now(client, backend, out, &mut cx)
    }

    #[test]
    fn output_the_sockets_take_is_written_and_leaves_nothing() {
        let (mut client, mut backend) = (writer(100), writer(100));
        let mut out = output(b"250 2.1.0 Ok\r\n", b"RCPT TO:<a@b>\r\n");
        out.to_client.reserve(2048);
        let capacity = out.to_client.capacity();
        assert_eq!(write(&mut client, &mut backend, &mut out), Left::Nothing);
        assert_eq!(client.written, b"250 2.1.0 Ok\r\n");
        assert_eq!(backend.written, b"RCPT TO:<a@b>\r\n");
        assert!(out.to_client.is_empty() && out.to_backend.is_empty());
        // Written in several calls, and still whole for the pool.
        assert_eq!(out.to_client.capacity(), capacity);
    }

    #[test]
    fn a_client_that_would_block_keeps_the_rest_and_the_backend_waits_its_turn() {
        let (mut client, mut backend) = (writer(6), writer(100));
        let mut out = output(b"250 2.1.0 Ok\r\n", b"QUIT\r\n");
        let left = write(&mut client, &mut backend, &mut out);
        assert_eq!(left, REST_LEFT);
        assert_eq!(client.written, b"250 2.");
        assert_eq!(&out.to_client[..], b"1.0 Ok\r\n");
        // The backend's part is written after the client's, as the timed writes do.
        assert!(backend.written.is_empty());
        assert_eq!(&out.to_backend[..], b"QUIT\r\n");
    }

    #[test]
    fn a_client_stream_still_flushing_is_left_to_flush() {
        let (mut client, mut backend) = (writer(100), writer(100));
        client.flush_waits = true;
        let mut out = output(b"354 go ahead\r\n", b"");
        let left = write(&mut client, &mut backend, &mut out);
        assert_eq!(
            left,
            Left::Output(Unflushed {
                client: true,
                backend: false
            })
        );
        assert_eq!(client.written, b"354 go ahead\r\n");
        assert!(out.to_client.is_empty());
    }

    #[test]
    fn a_backend_stream_still_flushing_is_left_to_flush() {
        let (mut client, mut backend) = (writer(100), writer(100));
        backend.flush_waits = true;
        let mut out = output(b"250 2.1.5 Ok\r\n", b"DATA\r\n");
        let left = write(&mut client, &mut backend, &mut out);
        assert_eq!(
            left,
            Left::Output(Unflushed {
                client: false,
                backend: true
            })
        );
        assert_eq!(backend.written, b"DATA\r\n");
        assert!(out.to_client.is_empty() && out.to_backend.is_empty());

        // Nothing for the backend this turn: its flush is not asked for, and nothing is left.
        let mut out = output(b"354 go ahead\r\n", b"");
        assert_eq!(write(&mut client, &mut backend, &mut out), Left::Nothing);
    }

    #[test]
    fn a_backend_that_would_block_or_fails_keeps_the_rest() {
        let (mut client, mut backend) = (writer(100), writer(5));
        let mut out = output(b"", b"MAIL FROM:<a@b>\r\n");
        let left = write(&mut client, &mut backend, &mut out);
        assert_eq!(left, REST_LEFT);
        assert_eq!(&out.to_backend[..], b"FROM:<a@b>\r\n");

        backend.fail = true;
        let left = write(&mut client, &mut backend, &mut out);
        assert_eq!(left, REST_LEFT);
        assert_eq!(&out.to_backend[..], b"FROM:<a@b>\r\n");
    }
}
