//! What one population did during a run: counters the sender tasks bump, latencies of delivered
//! mail, per-second admissions and deferrals, and the arithmetic that turns them into a summary.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How a connection attempt ended before any mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionOutcome {
    /// Greeted and EHLO answered 250.
    Admitted,
    /// 421 (reputation, a limit, a full pool, no backend).
    Deferred,
    /// 554 (or another 5xx).
    Refused,
    /// No connection, or it broke before an answer.
    Failed,
}

/// Shared by the tasks of one population.
#[derive(Default)]
pub struct PopulationStats {
    tried: AtomicU64,
    admitted: AtomicU64,
    deferred: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    offered: AtomicU64,
    delivered: AtomicU64,
    /// Recipients the backend accepted (a message deferred for some recipients is delivered to
    /// the others, then retried for the rest).
    recipients_delivered: AtomicU64,
    /// 4xx answers to a message (it stays queued when the sender retries).
    message_deferrals: AtomicU64,
    /// 5xx answers: the message is returned to its sender.
    rejected: AtomicU64,
    /// Messages a sender that does not retry gave up after a 4xx.
    abandoned: AtomicU64,
    /// Still queued when the run ended.
    undelivered: AtomicU64,
    cut_off: AtomicU64,
    latencies: Mutex<Vec<f64>>,
    /// Per second since the start: [admitted, deferred or refused].
    series: Mutex<Vec<[u64; 2]>>,
}

impl PopulationStats {
    pub fn connection(&self, outcome: ConnectionOutcome, second: usize) {
        self.tried.fetch_add(1, Ordering::Relaxed);
        let counter = match outcome {
            ConnectionOutcome::Admitted => &self.admitted,
            ConnectionOutcome::Deferred => &self.deferred,
            ConnectionOutcome::Refused => &self.refused,
            ConnectionOutcome::Failed => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let column = match outcome {
            ConnectionOutcome::Admitted => 0,
            ConnectionOutcome::Deferred | ConnectionOutcome::Refused => 1,
            ConnectionOutcome::Failed => return,
        };
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if series.len() <= second {
            series.resize(second + 1, [0, 0]);
        }
        series[second][column] += 1;
    }

    pub fn offered(&self) {
        self.offered.fetch_add(1, Ordering::Relaxed);
    }

    /// A message the backend accepted, `waited` after it was first offered.
    pub fn delivered(&self, waited: Duration) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(waited.as_secs_f64());
    }

    pub fn recipients_delivered(&self, n: usize) {
        self.recipients_delivered
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn message_deferred(&self) {
        self.message_deferrals.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    pub fn undelivered(&self, n: u64) {
        self.undelivered.fetch_add(n, Ordering::Relaxed);
    }

    pub fn cut_off(&self) {
        self.cut_off.fetch_add(1, Ordering::Relaxed);
    }

    /// Times to delivery so far, in seconds.
    pub fn latencies(&self) -> Vec<f64> {
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn tried(&self) -> u64 {
        self.tried.load(Ordering::Relaxed)
    }

    pub fn delivered_count(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn summary(&self, name: &str, good: bool) -> PopulationSummary {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut latencies = self.latencies();
        latencies.sort_by(f64::total_cmp);
        let tried = get(&self.tried);
        let admitted = get(&self.admitted);
        let offered = get(&self.offered);
        let delivered = get(&self.delivered);
        PopulationSummary {
            name: name.to_owned(),
            good,
            connections_tried: tried,
            connections_admitted: admitted,
            connections_deferred: get(&self.deferred),
            connections_refused: get(&self.refused),
            connections_failed: get(&self.failed),
            admission_ratio: ratio(admitted, tried),
            messages_offered: offered,
            messages_delivered: delivered,
            recipients_delivered: get(&self.recipients_delivered),
            message_deferrals: get(&self.message_deferrals),
            messages_rejected: get(&self.rejected),
            messages_abandoned: get(&self.abandoned),
            messages_undelivered: get(&self.undelivered),
            delivery_ratio: ratio(delivered, offered),
            sessions_cut_off: get(&self.cut_off),
            delivery_seconds: Percentiles::of_sorted(&latencies),
            per_second: self
                .series
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// `part / whole`, 1.0 for an empty whole (nothing tried, nothing refused).
pub fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

/// Time-to-delivery percentiles, in seconds (retries included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of sorted samples.
    pub fn of_sorted(sorted: &[f64]) -> Percentiles {
        if sorted.is_empty() {
            return Percentiles::default();
        }
        let rank = |p: f64| {
            let r = (p * sorted.len() as f64).ceil() as usize;
            sorted[r.clamp(1, sorted.len()) - 1]
        };
        Percentiles {
            count: sorted.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: sorted[sorted.len() - 1],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PopulationSummary {
    pub name: String,
    pub good: bool,
    pub connections_tried: u64,
    pub connections_admitted: u64,
    pub connections_deferred: u64,
    pub connections_refused: u64,
    pub connections_failed: u64,
    /// Admitted / tried.
    pub admission_ratio: f64,
    pub messages_offered: u64,
    pub messages_delivered: u64,
    pub recipients_delivered: u64,
    pub message_deferrals: u64,
    pub messages_rejected: u64,
    pub messages_abandoned: u64,
    pub messages_undelivered: u64,
    /// Delivered / offered.
    pub delivery_ratio: f64,
    pub sessions_cut_off: u64,
    pub delivery_seconds: Percentiles,
    /// Per second: [admitted, deferred or refused] connections.
    pub per_second: Vec<[u64; 2]>,
}

/// Figures over all good populations together.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GoodMail {
    pub connections_tried: u64,
    pub connections_admitted: u64,
    pub admission_ratio: f64,
    pub messages_offered: u64,
    pub messages_delivered: u64,
    pub delivery_ratio: f64,
}

impl GoodMail {
    pub fn of(populations: &[PopulationSummary]) -> GoodMail {
        let good = populations.iter().filter(|p| p.good);
        let (mut tried, mut admitted, mut offered, mut delivered) = (0, 0, 0, 0);
        for p in good {
            tried += p.connections_tried;
            admitted += p.connections_admitted;
            offered += p.messages_offered;
            delivered += p.messages_delivered;
        }
        GoodMail {
            connections_tried: tried,
            connections_admitted: admitted,
            admission_ratio: ratio(admitted, tried),
            messages_offered: offered,
            messages_delivered: delivered,
            delivery_ratio: ratio(delivered, offered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of_sorted(&samples);
        assert_eq!((p.count, p.p50, p.p99, p.max), (100, 50.0, 99.0, 100.0));
        let one = Percentiles::of_sorted(&[0.25]);
        assert_eq!((one.p50, one.p99, one.max), (0.25, 0.25, 0.25));
        assert_eq!(Percentiles::of_sorted(&[]), Percentiles::default());
        let p = Percentiles::of_sorted(&[1.0, 2.0, 3.0]);
        assert_eq!((p.p50, p.p99), (2.0, 3.0));
    }

    #[test]
    fn counters_add_up() {
        let stats = PopulationStats::default();
        for second in [0, 0, 2] {
            stats.connection(ConnectionOutcome::Admitted, second);
        }
        stats.connection(ConnectionOutcome::Deferred, 1);
        stats.connection(ConnectionOutcome::Refused, 1);
        stats.connection(ConnectionOutcome::Failed, 1);
        for _ in 0..4 {
            stats.offered();
        }
        stats.delivered(Duration::from_millis(500));
        stats.delivered(Duration::from_millis(1500));
        stats.delivered(Duration::from_millis(100));
        stats.undelivered(1);
        let s = stats.summary("p", true);
        assert_eq!(s.connections_tried, 6);
        assert_eq!(s.admission_ratio, 0.5);
        assert_eq!(s.delivery_ratio, 0.75);
        assert_eq!(s.per_second, vec![[2, 0], [0, 2], [1, 0]]);
        assert_eq!(s.delivery_seconds.p50, 0.5);
        assert_eq!(s.delivery_seconds.max, 1.5);
        assert_eq!(s.messages_undelivered, 1);
    }

    #[test]
    fn good_mail_sums_only_good_populations() {
        let good = PopulationStats::default();
        good.connection(ConnectionOutcome::Admitted, 0);
        good.connection(ConnectionOutcome::Deferred, 0);
        good.offered();
        good.delivered(Duration::ZERO);
        let bad = PopulationStats::default();
        bad.connection(ConnectionOutcome::Deferred, 0);
        bad.offered();
        let all = [good.summary("good", true), bad.summary("bad", false)];
        let g = GoodMail::of(&all);
        assert_eq!((g.connections_tried, g.connections_admitted), (2, 1));
        assert_eq!(g.admission_ratio, 0.5);
        assert_eq!(g.delivery_ratio, 1.0);
        assert_eq!(ratio(0, 0), 1.0);
    }
}
