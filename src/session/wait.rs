//! A session's wait for the first of its sources (the shutdown signal or grace period, the
//! backend's bytes, the client's bytes, its timer), polling again only the sources that may have
//! fired since they were last polled: polling an idle socket again takes a lock inside tokio to
//! register the same waker anew, at every turn of every session.

use crate::net::backend::BackendStream;
use bytes::BytesMut;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, Interest};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::either::Either;
use tokio_util::io::poll_read_buf;

/// What ended a wait.
#[derive(Debug)]
pub enum Woken {
    /// The shutdown signal was raised.
    Cancelled,
    /// The grace period after the shutdown signal is over.
    GraceOver,
    /// A read from the backend: bytes appended to its input, `Ok(0)` at its end, or an error.
    Backend(std::io::Result<usize>),
    /// A read from the client, likewise.
    Client(std::io::Result<usize>),
    /// The timer fired.
    Timer,
}

/// The first of the two ways a session stops: the signal, then the grace period that follows it.
pub enum Stop<'a, F> {
    Signal(Pin<&'a mut F>),
    Grace(Pin<&'a mut Sleep>),
}

/// A stream to a peer: plain TCP, whose readiness tokio records, or TLS, which may hold decrypted
/// bytes that the socket's readiness does not show.
pub trait PeerRead: AsyncRead + Unpin {
    /// Whether a read may find bytes.
    fn may_be_readable(&self) -> bool {
        true
    }
}

impl PeerRead for TcpStream {
    fn may_be_readable(&self) -> bool {
        readable(self)
    }
}

impl PeerRead for BackendStream {
    fn may_be_readable(&self) -> bool {
        match self {
            Either::Left(tcp) => readable(tcp),
            Either::Right(_tls) => true,
        }
    }
}

/// One wait: the first ready source, in the order of [`Woken`]'s variants.
pub struct Wait<'a, C, F> {
    pub armed: &'a mut Armed,
    pub stop: Stop<'a, F>,
    pub backend: &'a mut BackendStream,
    pub backend_in: &'a mut BytesMut,
    /// The client and its input, when the relay wants its bytes.
    pub client: Option<(&'a mut C, &'a mut BytesMut)>,
    pub timer: Pin<&'a mut Sleep>,
}

impl<C: PeerRead, F: Future<Output = ()>> Future for Wait<'_, C, F> {
    type Output = Woken;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Woken> {
        super::park::count_wait();
        let this = &mut *self;
        this.armed.hold(cx.waker());
        let stopped = match &mut this.stop {
            Stop::Signal(signal) => signal.as_mut().poll(cx).map(|()| Woken::Cancelled),
            Stop::Grace(grace) => grace.as_mut().poll(cx).map(|()| Woken::GraceOver),
        };
        if stopped.is_ready() {
            return stopped;
        }
        let armed = &mut *this.armed;
        let backend_in = &mut *this.backend_in;
        let read = armed.backend.poll(
            &mut *this.backend,
            |b| b.may_be_readable(),
            |b| poll_read_buf(Pin::new(b), cx, backend_in),
        );
        if let Poll::Ready(read) = read {
            return Poll::Ready(Woken::Backend(read));
        }
        if let Some((client, client_in)) = &mut this.client {
            let read = armed.client.poll(
                &mut **client,
                |c| c.may_be_readable(),
                |c| poll_read_buf(Pin::new(c), cx, &mut **client_in),
            );
            if let Poll::Ready(read) = read {
                return Poll::Ready(Woken::Client(read));
            }
        }
        let timer = &mut this.timer;
        let fired = armed
            .timer
            .poll(timer, |t| t.is_elapsed(), |t| t.as_mut().poll(cx));
        if fired.is_ready() {
            return Poll::Ready(Woken::Timer);
        }
        Poll::Pending
    }
}

/// One wait source: armed while it holds the task's waker, from a poll that returned `Pending`
/// until it fires. A source fires by waking the task, and then shows it: a socket's readiness is
/// set, a timer is elapsed. So a source that is armed and shows nothing has not fired, and polling
/// it again would only register the same waker again.
#[derive(Debug, Default, Clone, Copy)]
pub struct Arm(bool);

impl Arm {
    /// Polls `source` with `poll` unless it is armed and `fired` shows it has not fired, and arms
    /// or disarms it by the outcome.
    pub fn poll<S, T>(
        &mut self,
        source: S,
        fired: impl FnOnce(&S) -> bool,
        poll: impl FnOnce(S) -> Poll<T>,
    ) -> Poll<T> {
        if !self.must_poll(|| fired(&source)) {
            return Poll::Pending;
        }
        let polled = poll(source);
        match polled {
            Poll::Ready(_) => self.disarm(),
            Poll::Pending => self.after_pending(),
        }
        polled
    }

    /// Whether the source must be polled: it is not armed, or `fired` says it may have fired.
    fn must_poll(self, fired: impl FnOnce() -> bool) -> bool {
        !self.0 || fired()
    }

    /// After a poll of the source returned `Pending`. tokio's cooperative budget can make a poll
    /// return `Pending` without registering the waker (the task is then woken to run again): the
    /// source is armed only if the budget was not what stopped it.
    pub fn after_pending(&mut self) {
        self.0 = tokio::task::coop::has_budget_remaining();
    }

    /// After a poll of the source returned `Ready`, or after it was changed (a timer reset): it
    /// holds no waker until it is polled again.
    pub fn disarm(&mut self) {
        self.0 = false;
    }
}

/// The arms of a session's sources, and the waker they hold. It lives as long as the session's
/// loop: a source stays armed from one wait to the next.
#[derive(Debug, Default)]
pub struct Armed {
    waker: Option<Waker>,
    pub backend: Arm,
    pub client: Arm,
    pub timer: Arm,
}

impl Armed {
    /// Called at the start of every poll: a task polled with another waker than the one its
    /// sources hold (never the case inside one tokio task, but nothing here depends on it) polls
    /// them all again.
    pub fn hold(&mut self, waker: &Waker) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waker = Some(waker.clone());
            self.backend.disarm();
            self.client.disarm();
            self.timer.disarm();
        }
    }
}

/// Moves `timer` to `at`; it is polled again at the next wait, to register the new deadline.
pub fn reset_timer(timer: Pin<&mut Sleep>, arm: &mut Arm, at: tokio::time::Instant) {
    timer.reset(at);
    arm.disarm();
}

/// Whether a TCP socket's read readiness is set, as tokio's readiness records it: a wake-up for a
/// reader sets it before it wakes the reader's waker. No system call, no lock and no change to the
/// readiness (the closure succeeds, so nothing is cleared).
pub fn readable(stream: &TcpStream) -> bool {
    stream.try_io(Interest::READABLE, || Ok(())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn readiness_shows_bytes_that_arrived_and_is_left_as_it_was() {
        let (mut writer, reader) = pair().await;
        // A socket may start out marked readable: the first read that finds nothing clears it.
        let mut got = [0u8; 16];
        assert!(reader.try_read(&mut got).is_err());
        assert!(!readable(&reader), "nothing sent yet");
        writer.write_all(b"EHLO x\r\n").await.unwrap();
        reader.readable().await.unwrap();
        assert!(readable(&reader), "bytes arrived");
        assert!(readable(&reader), "checking did not clear it");
        let n = reader.try_read(&mut got).unwrap();
        assert_eq!(&got[..n], b"EHLO x\r\n");
    }

    /// A session's side of the waits: its sockets (the peers are the test's), inputs and timer.
    struct Session {
        armed: Armed,
        backend: BackendStream,
        client: TcpStream,
        backend_in: BytesMut,
        client_in: BytesMut,
        timer: Pin<Box<Sleep>>,
        never_stopped: Pin<Box<std::future::Pending<()>>>,
    }

    impl Session {
        /// One wait; the stop signal is never raised.
        fn wait(&mut self) -> Wait<'_, TcpStream, std::future::Pending<()>> {
            Wait {
                armed: &mut self.armed,
                stop: Stop::Signal(self.never_stopped.as_mut()),
                backend: &mut self.backend,
                backend_in: &mut self.backend_in,
                client: Some((&mut self.client, &mut self.client_in)),
                timer: self.timer.as_mut(),
            }
        }

        /// One wait to its end; a wait that misses a source that fired would hang, and fails
        /// here instead.
        async fn next(&mut self) -> Woken {
            tokio::time::timeout(std::time::Duration::from_secs(10), self.wait())
                .await
                .expect("the source that fired ends the wait")
        }

        /// As the driver does: the timer moved, so polled again at the next wait.
        fn reset_timer(&mut self, after: std::time::Duration) {
            let at = tokio::time::Instant::now() + after;
            reset_timer(self.timer.as_mut(), &mut self.armed.timer, at);
        }
    }

    #[tokio::test]
    async fn waits_in_a_row_see_each_source_that_fires_while_the_others_stay_armed() {
        let (mut backend_peer, backend) = pair().await;
        let (mut client_peer, client) = pair().await;
        let hour = std::time::Duration::from_secs(3600);
        let mut session = Session {
            armed: Armed::default(),
            backend: Either::Left(backend),
            client,
            backend_in: BytesMut::with_capacity(64),
            client_in: BytesMut::with_capacity(64),
            timer: Box::pin(tokio::time::sleep(hour)),
            never_stopped: Box::pin(std::future::pending()),
        };
        // Sockets may start out marked readable: a first poll with nothing sent reads nothing
        // and arms every source, so the waits below run with idle sources armed.
        {
            let mut first = std::pin::pin!(session.wait());
            let polled = poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "nothing was ready: {polled:?}");
        }
        client_peer.write_all(b"MAIL FROM:<a@b>\r\n").await.unwrap();
        assert!(matches!(session.next().await, Woken::Client(Ok(17))));
        assert_eq!(&session.client_in[..], b"MAIL FROM:<a@b>\r\n");
        backend_peer.write_all(b"250 ok\r\n").await.unwrap();
        assert!(matches!(session.next().await, Woken::Backend(Ok(8))));
        client_peer.write_all(b"DATA\r\n").await.unwrap();
        assert!(matches!(session.next().await, Woken::Client(Ok(6))));
        session.reset_timer(std::time::Duration::ZERO);
        assert!(matches!(session.next().await, Woken::Timer));
        session.reset_timer(hour);
        drop(backend_peer);
        let woken = session.next().await;
        assert!(
            matches!(woken, Woken::Backend(Ok(0))),
            "end of file: {woken:?}"
        );
    }

    #[test]
    fn an_unarmed_source_is_polled_and_an_armed_one_only_once_it_fired() {
        let mut arm = Arm::default();
        assert!(arm.must_poll(|| false));
        arm.0 = true;
        assert!(!arm.must_poll(|| false));
        assert!(arm.must_poll(|| true));
        arm.disarm();
        assert!(arm.must_poll(|| false));
    }

    #[tokio::test]
    async fn a_new_waker_disarms_every_source() {
        poll_fn(|cx| {
            let mut armed = Armed::default();
            armed.hold(cx.waker());
            armed.backend.0 = true;
            armed.client.0 = true;
            armed.timer.0 = true;
            armed.hold(cx.waker());
            assert!(armed.backend.0 && armed.client.0 && armed.timer.0);
            armed.hold(std::task::Waker::noop());
            assert!(!armed.backend.0 && !armed.client.0 && !armed.timer.0);
            Poll::Ready(())
        })
        .await;
    }
}
