//! mxgate seen from outside during a run: its `/metrics` scraped on an interval (slot occupancy
//! by class, the decision-latency histogram) and its CPU time and peak memory from `/proc`.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One scrape: seconds since the start, slots in use by class, capacity.
#[derive(Debug, Clone, Serialize)]
pub struct OccupancySample {
    pub t: f64,
    pub in_use: BTreeMap<String, f64>,
    pub capacity: f64,
}

/// What the scrapes add up to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GateMetrics {
    pub occupancy: Vec<OccupancySample>,
    /// Decisions during the run and their latency percentiles (upper bounds of the histogram
    /// buckets they fall in), in milliseconds.
    pub decisions: u64,
    pub decision_ms_p50: Option<f64>,
    pub decision_ms_p99: Option<f64>,
    /// Peak slots in use (all classes) seen in a scrape.
    pub peak_slots_in_use: f64,
}

/// The cumulative decision histogram of one scrape: (upper bound in seconds, count).
type Buckets = Vec<(f64, f64)>;

/// Parsed values of interest from one `/metrics` page.
#[derive(Debug, Default)]
pub struct Page {
    pub in_use: BTreeMap<String, f64>,
    pub capacity: f64,
    pub decision_buckets: Buckets,
}

impl Page {
    pub fn parse(text: &str) -> Option<Page> {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).ok()?;
        let mut page = Page::default();
        for sample in scrape.samples {
            match (sample.metric.as_str(), &sample.value) {
                ("mxgate_slots_in_use", prometheus_parse::Value::Gauge(v)) => {
                    let class = sample.labels.get("class").unwrap_or("?").to_owned();
                    page.in_use.insert(class, *v);
                }
                ("mxgate_slots_capacity", prometheus_parse::Value::Gauge(v)) => page.capacity = *v,
                ("mxgate_decision_duration_seconds", prometheus_parse::Value::Histogram(h)) => {
                    page.decision_buckets = h.iter().map(|b| (b.less_than, b.count)).collect();
                }
                _ => {}
            }
        }
        Some(page)
    }
}

/// Percentile `p` of the observations between two cumulative histograms, as the upper bound of
/// the bucket it falls in.
pub fn bucket_percentile(before: &Buckets, after: &Buckets, p: f64) -> Option<f64> {
    let count_before = |le: f64| {
        before
            .iter()
            .find(|(b, _)| *b == le)
            .map_or(0.0, |(_, c)| *c)
    };
    let deltas: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| (*le, c - count_before(*le)))
        .collect();
    let total = deltas.iter().map(|(_, c)| *c).fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    let rank = (p * total).ceil().max(1.0);
    deltas
        .iter()
        .filter(|(le, _)| le.is_finite())
        .find(|(_, c)| *c >= rank)
        .map(|(le, _)| *le)
        .or(Some(f64::INFINITY))
}

/// GET `path` from the admin API.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: mxgate\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

/// Scrapes `admin` every `every` until `stop`; returns what it saw. `baseline_taken` fires after
/// the first scrape, so that the load starts after it and every decision of the run is counted.
pub async fn scrape(
    admin: SocketAddr,
    every: Duration,
    start: Instant,
    stop: CancellationToken,
    baseline_taken: tokio::sync::oneshot::Sender<()>,
) -> GateMetrics {
    let mut baseline_taken = Some(baseline_taken);
    let mut metrics = GateMetrics::default();
    let mut first: Option<Buckets> = None;
    let mut last: Buckets = Vec::new();
    let mut tick = tokio::time::interval(every);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        if let Ok(Ok(text)) = tokio::time::timeout(every * 4, http_get(admin, "/metrics")).await {
            if let Some(page) = Page::parse(&text) {
                let total: f64 = page.in_use.values().sum();
                metrics.peak_slots_in_use = metrics.peak_slots_in_use.max(total);
                metrics.occupancy.push(OccupancySample {
                    t: start.elapsed().as_secs_f64(),
                    in_use: page.in_use,
                    capacity: page.capacity,
                });
                if first.is_none() {
                    first = Some(page.decision_buckets.clone());
                }
                last = page.decision_buckets;
            }
        }
        if let Some(taken) = baseline_taken.take() {
            first.get_or_insert_with(Vec::new);
            let _ = taken.send(());
        }
        if stopping {
            break;
        }
    }
    let first = first.unwrap_or_default();
    let total = |b: &Buckets| b.iter().map(|(_, c)| *c).fold(0.0, f64::max);
    metrics.decisions = (total(&last) - total(&first)).max(0.0) as u64;
    metrics.decision_ms_p50 = bucket_percentile(&first, &last, 0.5).map(|s| s * 1000.0);
    metrics.decision_ms_p99 = bucket_percentile(&first, &last, 0.99).map(|s| s * 1000.0);
    metrics
}

/// User plus system CPU seconds of a process (and its reaped children).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..15)?
        .iter()
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux everywhere it matters.
    Some(ticks as f64 / 100.0)
}

/// Seconds a process's threads have run, from the scheduler's count in nanoseconds
/// (`/proc/PID/task/*/schedstat`). `/proc/PID/stat` counts in 10 ms units, and a proxy runs about
/// half a second in a throughput rep: ticks would round each rep's figure by up to 2%. Only the
/// threads alive when it is read count, so measure across a window in which the process starts and
/// ends no thread (a proxy under steady load).
pub fn thread_run_seconds(pid: u32) -> Option<f64> {
    let mut nanos: Option<u64> = None;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue; // a thread that ended since the directory was read
        };
        if let Some(ran) = stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
        {
            *nanos.get_or_insert(0) += ran;
        }
    }
    nanos.map(|n| n as f64 / 1e9)
}

/// Peak resident memory (VmHWM) and current (VmRSS) of a process, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# TYPE mxgate_slots_in_use gauge\n\
mxgate_slots_in_use{class=\"neutral\"} 3\n\
mxgate_slots_in_use{class=\"trusted\"} 1\n\
# TYPE mxgate_slots_capacity gauge\n\
mxgate_slots_capacity 20\n\
# TYPE mxgate_decision_duration_seconds histogram\n\
mxgate_decision_duration_seconds_bucket{le=\"0.0001\"} 90\n\
mxgate_decision_duration_seconds_bucket{le=\"0.001\"} 99\n\
mxgate_decision_duration_seconds_bucket{le=\"0.01\"} 100\n\
mxgate_decision_duration_seconds_bucket{le=\"+Inf\"} 100\n\
mxgate_decision_duration_seconds_sum 0.01\n\
mxgate_decision_duration_seconds_count 100\n";

    #[test]
    fn reads_occupancy_and_the_histogram() {
        let page = Page::parse(PAGE).unwrap();
        assert_eq!(page.in_use.get("neutral"), Some(&3.0));
        assert_eq!(page.capacity, 20.0);
        assert_eq!(page.decision_buckets.len(), 4);
        let none = Vec::new();
        let b = &page.decision_buckets;
        assert_eq!(bucket_percentile(&none, b, 0.5), Some(0.0001));
        assert_eq!(bucket_percentile(&none, b, 0.99), Some(0.001));
        assert_eq!(bucket_percentile(&none, b, 1.0), Some(0.01));
        // Only what happened between two scrapes counts.
        let before = vec![
            (0.0001, 90.0),
            (0.001, 90.0),
            (0.01, 90.0),
            (f64::INFINITY, 90.0),
        ];
        assert_eq!(bucket_percentile(&before, b, 0.5), Some(0.001));
        assert_eq!(bucket_percentile(b, b, 0.5), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        let (peak, now) = memory_kib(me).unwrap();
        assert!(peak >= now && now > 0);
    }

    #[test]
    fn thread_run_time_counts_work_done_between_two_reads() {
        let me = std::process::id();
        let before = thread_run_seconds(me).expect("this process has threads");
        // Work until the scheduler has counted a millisecond more (bounded: a second of spinning).
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after < before + 0.001 && started.elapsed() < std::time::Duration::from_secs(1) {
            x = (0..10_000u64).fold(x, |a, i| a.wrapping_mul(31).wrapping_add(i));
            after = thread_run_seconds(me).unwrap();
        }
        std::hint::black_box(x);
        assert!(after >= before + 0.001, "{before} -> {after}");
        assert!(thread_run_seconds(u32::MAX).is_none());
    }
}
