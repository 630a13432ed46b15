//! The shutdown signal as sessions wait for it: one atomic load each time a session's task is
//! polled, where a cancellation token takes two mutexes (its own state, then its waiter list).

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Raised once the token it follows is cancelled. Cheap to clone (one per session).
#[derive(Clone, Debug)]
pub struct StopSignal {
    /// When it was raised, once it is. Every session's grace period counts from here, however late
    /// the session looks (one in its TLS handshake looks only when the handshake ends).
    raised_at: Arc<OnceLock<Instant>>,
    /// Cancelled just after `raised_at` is set: what waiting sessions are woken by.
    wake: CancellationToken,
}

impl StopSignal {
    /// A signal raised when `parent` is cancelled, by a task spawned on the current runtime.
    pub fn following(parent: CancellationToken) -> StopSignal {
        let signal = StopSignal::manual();
        let raise = signal.clone();
        tokio::spawn(async move {
            parent.cancelled().await;
            raise.raise();
        });
        signal
    }

    /// A signal raised by hand (tests, single sessions).
    pub fn manual() -> StopSignal {
        StopSignal {
            raised_at: Arc::new(OnceLock::new()),
            wake: CancellationToken::new(),
        }
    }

    /// Raises the signal and wakes every session waiting for it.
    pub fn raise(&self) {
        self.raised_at.get_or_init(Instant::now);
        self.wake.cancel();
    }

    pub fn is_raised(&self) -> bool {
        self.raised_at.get().is_some()
    }

    /// The end of a grace period of `grace` after the signal was raised (after now, if it was not).
    pub fn grace_deadline(&self, grace: Duration) -> Instant {
        *self.raised_at.get().unwrap_or(&Instant::now()) + grace
    }

    /// Completes once the signal is raised. The waker is handed to the token on the first poll and
    /// again only when it changes (a task's waker does not); other polls read the flag only.
    pub async fn raised(&self) {
        let mut woken_by_token = pin!(self.wake.cancelled());
        let mut registered: Option<Waker> = None;
        poll_fn(|cx| {
            if self.is_raised() {
                return Poll::Ready(());
            }
            if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return Poll::Pending;
            }
            registered = Some(cx.waker().clone());
            woken_by_token.as_mut().poll(cx)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiting_session_is_woken_when_the_parent_is_cancelled() {
        let parent = CancellationToken::new();
        let signal = StopSignal::following(parent.clone());
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.raised().await }
        });
        // The waiter is registered and waiting before the parent is cancelled.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(!signal.is_raised());
        parent.cancel();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiting task ends once the parent is cancelled")
            .expect("no panic");
        assert!(signal.is_raised());
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_period_counts_from_the_raise_not_from_when_a_session_looks() {
        let signal = StopSignal::manual();
        let grace = Duration::from_secs(30);
        let before = Instant::now();
        assert_eq!(signal.grace_deadline(grace), before + grace, "not raised");
        signal.raise();
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(signal.grace_deadline(grace), before + grace);
        signal.raise();
        assert_eq!(
            signal.grace_deadline(grace),
            before + grace,
            "a second raise moves nothing"
        );
    }

    #[tokio::test]
    async fn a_signal_raised_before_anyone_waits_is_seen_at_once() {
        let signal = StopSignal::manual();
        signal.raise();
        tokio::time::timeout(Duration::from_secs(5), signal.raised())
            .await
            .expect("already raised");
    }

    #[tokio::test]
    async fn repeated_polls_with_the_same_waker_stay_pending_until_raised() {
        let signal = StopSignal::manual();
        let mut wait = tokio_test_task(signal.clone());
        for _ in 0..3 {
            assert!(wait.poll().is_pending());
        }
        signal.raise();
        assert!(wait.is_woken());
        assert!(wait.poll().is_ready());
    }

    /// A future polled by hand with one waker, like a task's.
    fn tokio_test_task(signal: StopSignal) -> tokio_test::task::Spawn<impl Future<Output = ()>> {
        tokio_test::task::spawn(async move { signal.raised().await })
    }
}
