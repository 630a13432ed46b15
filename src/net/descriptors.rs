//! Running out of file descriptors: telling it apart from a peer's fault, sizing the open file
//! limit against the slot pool, and saying so in the log now and then rather than on every failure.

use std::io;
use std::time::{Duration, Instant};

/// Descriptors each relayed session holds: the client's socket and the backend's.
const PER_SESSION: u64 = 2;
/// Room beyond the slots: listeners, the admin API, DNS sockets, and connections being deferred or
/// refused (each holds one descriptor until its reply is written).
const HEADROOM: u64 = 256;
/// While the failures go on, one log line per this long at most.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// True when a socket could not be made for want of descriptors or kernel memory: mxgate's own
/// shortage, which a wait cures, not a fault of the peer.
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The process's open file limit (its soft `RLIMIT_NOFILE`), if it can be read.
pub fn open_file_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// The open file limit below which `slots` full sessions cannot all be held.
pub fn needed_for(slots: usize) -> u64 {
    PER_SESSION * slots as u64 + HEADROOM
}

/// What to log after an accept failed for want of descriptors.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// The first failure of a run of them, or the first since `REPORT_EVERY`: `failures` counts
    /// this one and those not reported since the last line.
    Now { failures: u64 },
    /// Too soon after the last line: counted for the next.
    Later,
}

/// The failures of one accept loop, so that a shortage is reported at once and then every
/// `REPORT_EVERY`, and its end once.
#[derive(Debug, Default)]
pub struct ShortageLog {
    last_report: Option<Instant>,
    unreported: u64,
    failures: u64,
}

impl ShortageLog {
    /// One more failure at `now`.
    pub fn failed(&mut self, now: Instant) -> Report {
        self.failures += 1;
        self.unreported += 1;
        match self.last_report {
            Some(last) if now.duration_since(last) < REPORT_EVERY => Report::Later,
            _ => {
                self.last_report = Some(now);
                Report::Now {
                    failures: std::mem::take(&mut self.unreported),
                }
            }
        }
    }

    /// An accept succeeded: the number of failures of the run it ends, if one was going on.
    pub fn recovered(&mut self) -> Option<u64> {
        let failures = std::mem::take(&mut self.failures);
        self.last_report = None;
        self.unreported = 0;
        (failures > 0).then_some(failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortage_is_told_at_once_then_every_interval_then_its_end() {
        let t0 = Instant::now();
        let mut log = ShortageLog::default();
        assert_eq!(log.failed(t0), Report::Now { failures: 1 });
        for i in 1..=99 {
            assert_eq!(
                log.failed(t0 + Duration::from_millis(100 * i)),
                Report::Later
            );
        }
        assert_eq!(log.failed(t0 + REPORT_EVERY), Report::Now { failures: 100 });
        assert_eq!(log.recovered(), Some(101));
        assert_eq!(log.recovered(), None, "the end is told once");
        assert_eq!(
            log.failed(t0 + REPORT_EVERY + Duration::from_millis(1)),
            Report::Now { failures: 1 },
            "a new shortage is told at once"
        );
    }

    #[test]
    fn only_a_shortage_of_our_own_counts_as_one() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_exhaustion(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNABORTED, libc::EPERM, libc::ECONNREFUSED] {
            assert!(!is_exhaustion(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!is_exhaustion(&io::Error::other("no errno")));
    }

    #[test]
    fn the_limit_covers_two_descriptors_per_slot_and_headroom() {
        assert_eq!(needed_for(100), 456);
        assert!(open_file_limit().is_some_and(|limit| limit > 0));
    }
}
