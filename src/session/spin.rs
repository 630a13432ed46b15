//! A worker with nothing left to run polls its sockets without blocking for a few microseconds
//! before it sleeps, while that catches events often enough to pay for itself. A sleeping worker is
//! woken by the kernel for the next event (the sender's softirq wakes it, and an idle core is
//! halted and woken again), which under a light closed loop costs more than it takes to handle the
//! event; a worker that is still polling when the event lands handles it without that.
//!
//! Spinning is paid for by what it catches: every empty poll spends a credit, every poll that
//! finds an event earns [`CATCH_EARNS`], and a worker without credit sleeps at once, trying again
//! with one credit after [`SLEEPS_PER_RETRY`] sleeps. A poll that finds a busy turn ends
//! the spin: under heavy load the worker yields and sleeps instead (see [`super::park`]), which
//! batches events better than polling for them.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Credits an event caught by a poll earns: spinning goes on while at least one poll in
/// `CATCH_EARNS + 1` finds an event. Measured on two cores (docs/benchmarks.md): behind the
/// harness at 50 sessions a spin's polls find events about two times in five, and the rate rises
/// by a tenth at less CPU per message; behind smtp-source's persistent sessions one in five to
/// ten, where 4 (with a retry at every sleep) cost 2-4% more CPU and 3 changes nothing measurable.
pub const CATCH_EARNS: i32 = 3;

/// The most credit a worker holds: a spin on credit ends after at most this many empty polls.
pub const CREDIT_CAP: i32 = 64;

/// A worker out of credit tries again, with one credit, after this many sleeps.
pub const SLEEPS_PER_RETRY: u32 = 8;

/// What a spin does after one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Poll again.
    Poll,
    /// Sleep: the window passed without an event, or the credit is spent.
    Sleep,
    /// Sleep after yielding: the poll found a busy turn.
    Busy,
}

/// One worker's spin: its window, its credit and the current spin's state. Pure: the caller
/// reports each poll's outcome and the time.
#[derive(Debug)]
pub struct Spin {
    window: Duration,
    credit: i32,
    sleeps_without_credit: u32,
    waits_seen: u32,
    quiet_since: Instant,
}

impl Spin {
    pub fn new(window: Duration, now: Instant) -> Self {
        Self {
            window,
            credit: CREDIT_CAP,
            sleeps_without_credit: 0,
            waits_seen: 0,
            quiet_since: now,
        }
    }

    /// Whether to spin before this sleep. A worker out of credit sleeps, and after
    /// [`SLEEPS_PER_RETRY`] such sleeps tries one poll again.
    pub fn start(&mut self, waits: u32, now: Instant) -> bool {
        if self.window.is_zero() {
            return false;
        }
        if self.credit <= 0 {
            self.sleeps_without_credit += 1;
            if self.sleeps_without_credit < SLEEPS_PER_RETRY {
                return false;
            }
            self.sleeps_without_credit = 0;
            self.credit = 1;
        }
        self.waits_seen = waits;
        self.quiet_since = now;
        true
    }

    /// After one poll, with the worker's count of waits polled ([`super::park::waits_polled`]).
    pub fn after_poll(&mut self, waits: u32, busy_turn: u32, now: Instant) -> Next {
        let new = waits.wrapping_sub(self.waits_seen);
        self.waits_seen = waits;
        if new >= busy_turn {
            return Next::Busy;
        }
        if new > 0 {
            self.credit = (self.credit + CATCH_EARNS).min(CREDIT_CAP);
            self.quiet_since = now;
            return Next::Poll;
        }
        self.credit -= 1;
        if self.credit <= 0 || now.duration_since(self.quiet_since) >= self.window {
            Next::Sleep
        } else {
            Next::Poll
        }
    }
}

thread_local! {
    static SPINNER: RefCell<Option<(Waker, Spin)>> = const { RefCell::new(None) };
    static STARTED: Cell<bool> = const { Cell::new(false) };
}

/// Called before the worker sleeps: wakes the worker's spinner, if it has one and the spin pays,
/// so that the runtime polls its driver without blocking instead of sleeping. Returns whether it
/// did.
pub fn start(waits: u32) -> bool {
    let started = SPINNER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let Some((waker, spin)) = cell.as_mut() else {
            return false;
        };
        if !spin.start(waits, Instant::now()) {
            return false;
        }
        waker.wake_by_ref();
        true
    });
    STARTED.with(|s| s.set(started));
    started
}

/// The worker's spinner task (spawned once per worker when the window is not zero). Each
/// `yield_now` lets tokio poll its driver with a zero timeout and run what that woke.
pub async fn spinner(window: Duration) {
    // This runtime's spinner starts afresh, whatever an earlier runtime on the thread left.
    SPINNER.with(|cell| *cell.borrow_mut() = None);
    loop {
        poll_fn(|cx| {
            if STARTED.with(|s| s.replace(false)) {
                return Poll::Ready(());
            }
            SPINNER.with(|cell| {
                let mut cell = cell.borrow_mut();
                match cell.as_mut() {
                    Some((waker, _)) => waker.clone_from(cx.waker()),
                    None => *cell = Some((cx.waker().clone(), Spin::new(window, Instant::now()))),
                }
            });
            Poll::Pending
        })
        .await;
        loop {
            tokio::task::yield_now().await;
            let waits = super::park::waits_polled();
            let next = SPINNER.with(|cell| {
                cell.borrow_mut().as_mut().map_or(Next::Sleep, |(_, spin)| {
                    spin.after_poll(waits, super::park::BUSY_TURN, Instant::now())
                })
            });
            match next {
                Next::Poll => continue,
                Next::Sleep => break,
                Next::Busy => {
                    super::park::mark_busy();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::park::{self, BeforeSleep};
    use super::*;

    const WINDOW: Duration = Duration::from_micros(20);

    #[test]
    fn a_zero_window_never_spins() {
        let now = Instant::now();
        let mut spin = Spin::new(Duration::ZERO, now);
        assert!(!spin.start(0, now));
    }

    #[test]
    fn a_spin_ends_when_the_window_passes_without_an_event_and_an_event_restarts_the_window() {
        let t0 = Instant::now();
        let mut spin = Spin::new(WINDOW, t0);
        assert!(spin.start(7, t0));
        assert_eq!(spin.after_poll(7, 64, t0 + WINDOW / 2), Next::Poll);
        assert_eq!(spin.after_poll(9, 64, t0 + WINDOW), Next::Poll, "caught");
        assert_eq!(
            spin.after_poll(9, 64, t0 + WINDOW + WINDOW / 2),
            Next::Poll,
            "the window restarted at the catch"
        );
        assert_eq!(spin.after_poll(9, 64, t0 + 2 * WINDOW), Next::Sleep);
    }

    #[test]
    fn a_poll_that_finds_a_busy_turn_ends_the_spin() {
        let t0 = Instant::now();
        let mut spin = Spin::new(WINDOW, t0);
        assert!(spin.start(u32::MAX - 10, t0));
        assert_eq!(
            spin.after_poll(53, 64, t0),
            Next::Busy,
            "64 new waits across the wrap"
        );
    }

    #[test]
    fn empty_polls_spend_the_credit_and_a_worker_without_credit_tries_again_after_sleeps_per_retry()
    {
        let t0 = Instant::now();
        let long = Duration::from_secs(3600);
        let mut spin = Spin::new(long, t0);
        assert!(spin.start(0, t0));
        for _ in 1..CREDIT_CAP {
            assert_eq!(spin.after_poll(0, 64, t0), Next::Poll);
        }
        assert_eq!(spin.after_poll(0, 64, t0), Next::Sleep, "credit spent");
        for round in 0..3 {
            for sleep in 1..SLEEPS_PER_RETRY {
                assert!(
                    !spin.start(0, t0),
                    "round {round}: no credit at sleep {sleep}"
                );
            }
            assert!(spin.start(0, t0), "round {round}: one credit: try again");
            assert_eq!(spin.after_poll(0, 64, t0), Next::Sleep, "spent at once");
        }
        assert!(!spin.start(0, t0));
    }

    #[test]
    fn a_catch_earns_catch_earns_credits_up_to_the_cap() {
        let t0 = Instant::now();
        let long = Duration::from_secs(3600);
        let mut spin = Spin::new(long, t0);
        assert!(spin.start(0, t0));
        // One catch per CATCH_EARNS + 1 polls breaks even: the spin goes on.
        let mut waits = 0;
        for round in 0..1000 {
            waits += 1;
            assert_eq!(spin.after_poll(waits, 64, t0), Next::Poll, "round {round}");
            for _ in 0..CATCH_EARNS {
                assert_eq!(spin.after_poll(waits, 64, t0), Next::Poll, "round {round}");
            }
        }
        // Catches earn no more than the cap.
        for _ in 0..100 {
            waits += 1;
            spin.after_poll(waits, 64, t0);
        }
        for _ in 1..CREDIT_CAP {
            assert_eq!(spin.after_poll(waits, 64, t0), Next::Poll);
        }
        assert_eq!(spin.after_poll(waits, 64, t0), Next::Sleep);
    }

    /// A worker's runtime as `main.rs` builds it, with its hook's outcomes recorded.
    fn worker_runtime(
        window: Duration,
        seen: std::sync::Arc<std::sync::Mutex<Vec<BeforeSleep>>>,
    ) -> tokio::runtime::Runtime {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .on_thread_park(move || {
                let outcome = park::before_sleep();
                seen.lock().unwrap().push(outcome);
            })
            .build()
            .unwrap();
        if !window.is_zero() {
            runtime.spawn(spinner(window));
        }
        runtime
    }

    /// Ping-pong over loopback between two tasks of the worker, each read counted as a wait.
    async fn ping_pong(rounds: usize) -> usize {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut byte = [0u8; 1];
            while socket.read_exact(&mut byte).await.is_ok() {
                park::count_wait();
                socket.write_all(&byte).await.unwrap();
            }
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut answered = 0;
        for i in 0..rounds {
            client.write_all(&[i as u8]).await.unwrap();
            let mut byte = [0u8; 1];
            client.read_exact(&mut byte).await.unwrap();
            park::count_wait();
            answered += usize::from(byte[0] == i as u8);
        }
        drop(client);
        echo.await.unwrap();
        answered
    }

    #[test]
    fn a_worker_spins_after_a_light_turn_sleeps_when_the_spin_ends_and_loses_no_event() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let runtime = worker_runtime(WINDOW, seen.clone());
        assert_eq!(runtime.block_on(ping_pong(300)), 300);
        // A timer far beyond the window: the spin must end and the worker sleep until it fires.
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
        let seen = seen.lock().unwrap();
        assert!(seen.contains(&BeforeSleep::Spin), "it spun: {seen:?}");
        assert!(seen.contains(&BeforeSleep::Sleep), "it slept: {seen:?}");
        assert!(
            seen.windows(2)
                .all(|w| w != [BeforeSleep::Spin, BeforeSleep::Spin]),
            "a spin that ends is followed by a sleep, not by another spin"
        );
    }

    #[test]
    fn a_worker_without_a_spinner_never_spins() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let runtime = worker_runtime(Duration::ZERO, seen.clone());
        assert_eq!(runtime.block_on(ping_pong(100)), 100);
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty());
        assert!(!seen.contains(&BeforeSleep::Spin), "{seen:?}");
    }
}
