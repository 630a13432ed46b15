//! A worker that has just had a busy turn yields the CPU once before it sleeps, so that the peers
//! it wrote to (sharing its cores) run first and fill its queue again: under load it then wakes to
//! a batch of events instead of being woken for each, and every wake-up of a sleeping thread is
//! paid in the kernel (the sender's softirq and the machine's idle time, counted against no
//! process). A worker with little to do sleeps at once, as before, so that a light load keeps its
//! latency.

use std::cell::Cell;

/// Waits polled since the worker last slept from which it counts as busy. Measured on two cores
/// with the harness (docs/benchmarks.md): at 500 sessions (250 a worker, so hundreds of waits a
/// turn) the yield saves a tenth of mxgate's CPU per message; at 50 sessions (25 a worker) a
/// threshold of 1 or 16 made the rate fall and swing by a quarter between runs, 64 changed nothing.
pub const BUSY_TURN: u32 = 64;

thread_local! {
    static WAITS_POLLED: Cell<u32> = const { Cell::new(0) };
}

/// Counts one wait polled by this worker (see [`super::wait`]).
pub fn count_wait() {
    WAITS_POLLED.with(|n| n.set(n.get().wrapping_add(1)));
}

/// The worker's hook before it sleeps (tokio's `on_thread_park`): yields the CPU once if the turn
/// that ends polled at least [`BUSY_TURN`] waits. Returns whether it yielded.
pub fn before_sleep() -> bool {
    let busy = WAITS_POLLED.with(|n| n.replace(0)) >= BUSY_TURN;
    if busy {
        std::thread::yield_now();
    }
    busy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_turn_of_at_least_busy_turn_waits_yields_and_each_sleep_starts_a_new_count() {
        for _ in 1..BUSY_TURN {
            count_wait();
        }
        assert!(!before_sleep(), "one wait short of busy");
        for _ in 0..BUSY_TURN {
            count_wait();
        }
        assert!(before_sleep(), "busy");
        assert!(!before_sleep(), "the count started again at the last sleep");
    }
}
