//! Metrics: the names mxgate exports, their help texts, and the Prometheus recorder the admin API
//! renders. Every metric is named here, so the set is documented in one place (docs/operations.md
//! lists it, and a test checks that it does).

pub mod admin;

use metrics::{counter, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const DECISIONS: &str = "mxgate_decisions_total";
pub const DECISION_SECONDS: &str = "mxgate_decision_duration_seconds";
pub const LIMIT_REFUSALS: &str = "mxgate_limit_refusals_total";
pub const SLOTS_IN_USE: &str = "mxgate_slots_in_use";
pub const SLOTS_LIMIT: &str = "mxgate_slots_limit";
pub const SLOTS_CAPACITY: &str = "mxgate_slots_capacity";
pub const STRESS: &str = "mxgate_stress";
pub const STRESS_SESSIONS: &str = "mxgate_stress_sessions_total";
pub const SESSIONS_ENDED: &str = "mxgate_sessions_ended_total";
pub const SESSIONS_CUT_OFF: &str = "mxgate_sessions_cut_off_total";
pub const SESSION_SECONDS: &str = "mxgate_session_duration_seconds";
pub const DELIVERIES: &str = "mxgate_deliveries_total";
pub const RECIPIENTS_REFUSED: &str = "mxgate_recipients_refused_total";
pub const RATE_TRACKED_KEYS: &str = "mxgate_rate_tracked_keys";
pub const DNSBL_LOOKUPS: &str = "mxgate_dnsbl_lookups_total";
pub const DNSBL_LOOKUP_SECONDS: &str = "mxgate_dnsbl_lookup_seconds";
pub const DNSBL_ERRORS: &str = "mxgate_dnsbl_errors_total";
pub const DNSBL_CACHE: &str = "mxgate_dnsbl_cache_total";
pub const DNSBL_USABLE: &str = "mxgate_dnsbl_list_usable";
pub const BACKEND_CONNECT_FAILURES: &str = "mxgate_backend_connect_failures_total";
pub const OUT_OF_DESCRIPTORS: &str = "mxgate_out_of_descriptors_total";
pub const TLS_HANDSHAKES: &str = "mxgate_tls_handshakes_total";
pub const POLICY_RELOADS: &str = "mxgate_policy_reloads_total";
pub const BUILD_INFO: &str = "mxgate_build_info";

/// Name, Prometheus type and help of every metric.
pub const METRICS: &[(&str, &str, &str)] = &[
    (DECISIONS, "counter", "Admission decisions by class and outcome (admit, defer, reject); an admitted class turned away by a limit counts as defer."),
    (DECISION_SECONDS, "histogram", "Time to decide on a connection: rules, then the DNS lists within the budget."),
    (LIMIT_REFUSALS, "counter", "Admitted classes turned away with 421 by a limit (connection_rate, too_many_connections, slots_full)."),
    (SLOTS_IN_USE, "gauge", "Sessions holding a slot, by class."),
    (SLOTS_LIMIT, "gauge", "Occupancy up to which a class is still admitted (its max_share of the capacity), by class."),
    (SLOTS_CAPACITY, "gauge", "Size of the slot pool (admission.slots)."),
    (STRESS, "gauge", "1 while occupancy is past admission.stress_threshold."),
    (STRESS_SESSIONS, "counter", "Sessions admitted under the stress limits."),
    (SESSIONS_ENDED, "counter", "Admitted sessions that ended, by class and reason (quit, message_limit, backend_unavailable, ...)."),
    (SESSIONS_CUT_OFF, "counter", "Sessions cut off after messages_per_session deliveries (421 at the next MAIL), by class."),
    (SESSION_SECONDS, "histogram", "Duration of relayed sessions."),
    (DELIVERIES, "counter", "Messages the backend accepted (2xx to the end of data), by class."),
    (RECIPIENTS_REFUSED, "counter", "RCPT commands answered by mxgate itself, by reason (rate: 451, per_message_cap: 452)."),
    (RATE_TRACKED_KEYS, "gauge", "Addresses and prefixes whose rates are tracked."),
    (DNSBL_LOOKUPS, "counter", "DNS list queries by zone and result (listed, not_listed, timeout, servfail, refused, error, late)."),
    (DNSBL_LOOKUP_SECONDS, "histogram", "DNS list query latency, by zone."),
    (DNSBL_ERRORS, "counter", "DNS list answers that were errors (127.255.255.x, outside 127/8), by zone: never counted as listings."),
    (DNSBL_CACHE, "counter", "DNS list cache lookups by result (hit, miss)."),
    (DNSBL_USABLE, "gauge", "1 while a DNS list passes its self-test and is used for scoring, by zone."),
    (BACKEND_CONNECT_FAILURES, "counter", "Connections to the backend that failed (the client got 421 4.3.2), by reason: connect, timeout, io, xclient, tls."),
    (OUT_OF_DESCRIPTORS, "counter", "Sockets mxgate could not open for want of file descriptors or kernel memory, by where: accept (the connection waits in the listen queue; retried every 100 ms) or backend (the client got 421 4.3.2)."),
    (TLS_HANDSHAKES, "counter", "STARTTLS handshakes by result (ok, failed)."),
    (POLICY_RELOADS, "counter", "Policy reloads by result (ok, invalid: refused by validation, failed: DNS lists could not be set up)."),
    (BUILD_INFO, "gauge", "Always 1; the version label says which mxgate runs."),
];

/// Decision and DNS latencies: microseconds (cache hits) to the budget's seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Session durations: a refused pipelined client to the 30-minute cap.
const SESSION_BUCKETS: &[f64] = &[0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0];

#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct TelemetryError(String);

/// Installs the Prometheus recorder for this process and describes every metric. Without it (no
/// admin address) every metric call is a no-op.
pub fn install() -> Result<PrometheusHandle, TelemetryError> {
    let err = |e: metrics_exporter_prometheus::BuildError| TelemetryError(e.to_string());
    let mut builder = PrometheusBuilder::new();
    for name in [DECISION_SECONDS, DNSBL_LOOKUP_SECONDS] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), LATENCY_BUCKETS)
            .map_err(err)?;
    }
    let handle = builder
        .set_buckets_for_metric(Matcher::Full(SESSION_SECONDS.into()), SESSION_BUCKETS)
        .map_err(err)?
        .install_recorder()
        .map_err(err)?;
    describe_all();
    Ok(handle)
}

fn describe_all() {
    for &(name, kind, help) in METRICS {
        match kind {
            "counter" => metrics::describe_counter!(name, help),
            "gauge" => metrics::describe_gauge!(name, help),
            _ => metrics::describe_histogram!(name, help),
        }
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

pub fn decision(class: &str, outcome: &'static str, seconds: f64) {
    counter!(DECISIONS, "class" => class.to_owned(), "outcome" => outcome).increment(1);
    histogram!(DECISION_SECONDS).record(seconds);
}

/// What one relayed session did, for the counters.
pub struct SessionCounts<'a> {
    pub class: &'a str,
    pub end: &'static str,
    pub deliveries: u32,
    pub recipients_over_cap: u32,
    pub recipients_over_rate: u32,
    pub seconds: f64,
}

pub fn session_ended(s: SessionCounts<'_>) {
    let class = s.class.to_owned();
    counter!(SESSIONS_ENDED, "class" => class.clone(), "end" => s.end).increment(1);
    if s.end == "message_limit" {
        counter!(SESSIONS_CUT_OFF, "class" => class.clone()).increment(1);
    }
    if s.deliveries > 0 {
        counter!(DELIVERIES, "class" => class).increment(u64::from(s.deliveries));
    }
    if s.recipients_over_rate > 0 {
        counter!(RECIPIENTS_REFUSED, "reason" => "rate")
            .increment(u64::from(s.recipients_over_rate));
    }
    if s.recipients_over_cap > 0 {
        counter!(RECIPIENTS_REFUSED, "reason" => "per_message_cap")
            .increment(u64::from(s.recipients_over_cap));
    }
    histogram!(SESSION_SECONDS).record(s.seconds);
}

pub fn policy_reload(result: &'static str) {
    counter!(POLICY_RELOADS, "result" => result).increment(1);
}

/// A backend connection that failed before the session, for `reason` (see `BackendError::reason`).
pub fn backend_connect_failed(reason: &'static str) {
    counter!(BACKEND_CONNECT_FAILURES, "reason" => reason).increment(1);
}

/// A socket not opened for want of descriptors, at `at` ("accept" or "backend").
pub fn out_of_descriptors(at: &'static str) {
    counter!(OUT_OF_DESCRIPTORS, "at" => at).increment(1);
}

pub fn tls_handshake(ok: bool) {
    counter!(TLS_HANDSHAKES, "result" => if ok { "ok" } else { "failed" }).increment(1);
}
