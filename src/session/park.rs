//! What a worker does when it has nothing left to run, before it sleeps (tokio's
//! `on_thread_park`).
//!
//! - After a busy turn it yields the CPU once, so that the peers it wrote to (sharing its cores)
//!   run first and fill its queue again: under load it then wakes to a batch of events instead of
//!   being woken for each, and every wake-up of a sleeping thread is paid in the kernel (the
//!   sender's softirq and the machine's idle time, counted against no process).
//! - After a light turn it spins, polling without blocking while that catches events
//!   ([`super::spin`]), and sleeps when the spin ends.

use std::cell::Cell;

/// Waits polled since the worker last slept from which it counts as busy. Measured on two cores
/// with the harness (docs/benchmarks.md): at 500 sessions (250 a worker, so hundreds of waits a
/// turn) the yield saves a tenth of mxgate's CPU per message; at 50 sessions (25 a worker) a
/// threshold of 1 or 16 made the rate fall and swing by a quarter between runs, 64 changed nothing.
pub const BUSY_TURN: u32 = 64;

thread_local! {
    static WAITS_POLLED: Cell<u32> = const { Cell::new(0) };
    static SPINNING: Cell<bool> = const { Cell::new(false) };
}

/// Counts one wait polled by this worker (see [`super::wait`]).
pub fn count_wait() {
    WAITS_POLLED.with(|n| n.set(n.get().wrapping_add(1)));
}

/// Waits polled by this worker since it last went to sleep or spin.
pub fn waits_polled() -> u32 {
    WAITS_POLLED.with(Cell::get)
}

/// Counts what is left of the turn as busy: a spin that found a busy turn ends with a yield.
pub fn mark_busy() {
    WAITS_POLLED.with(|n| n.set(n.get().max(BUSY_TURN)));
}

/// What the worker did before sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeforeSleep {
    /// It sleeps at once.
    Sleep,
    /// The turn polled at least [`BUSY_TURN`] waits: it yielded, then sleeps.
    Yielded,
    /// It spins first ([`super::spin`]); it sleeps, without spinning again, when the spin ends.
    Spin,
}

/// The worker's hook before it sleeps (tokio's `on_thread_park`).
pub fn before_sleep() -> BeforeSleep {
    let busy = WAITS_POLLED.with(|n| n.replace(0)) >= BUSY_TURN;
    let spun = SPINNING.with(|s| s.replace(false));
    if busy {
        std::thread::yield_now();
        BeforeSleep::Yielded
    } else if !spun && super::spin::start(waits_polled()) {
        SPINNING.with(|s| s.set(true));
        BeforeSleep::Spin
    } else {
        BeforeSleep::Sleep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_turn_of_at_least_busy_turn_waits_yields_and_each_sleep_starts_a_new_count() {
        for _ in 1..BUSY_TURN {
            count_wait();
        }
        assert_eq!(before_sleep(), BeforeSleep::Sleep, "one wait short of busy");
        for _ in 0..BUSY_TURN {
            count_wait();
        }
        assert_eq!(before_sleep(), BeforeSleep::Yielded, "busy");
        assert_eq!(
            before_sleep(),
            BeforeSleep::Sleep,
            "the count started again at the last sleep"
        );
        count_wait();
        mark_busy();
        assert_eq!(before_sleep(), BeforeSleep::Yielded, "marked busy");
    }
}
