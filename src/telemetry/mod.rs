//! Metrics: the names mxgate exports and the Prometheus endpoint on the admin address.
//!
//! Every metric is named here, so the set is documented in one place (docs/operations.md lists it).

use metrics::{counter, describe_counter, describe_histogram, histogram};
use std::net::SocketAddr;

pub const DECISIONS: &str = "mxgate_decisions_total";
pub const SESSIONS_ENDED: &str = "mxgate_sessions_ended_total";
pub const DELIVERIES: &str = "mxgate_deliveries_total";
pub const RECIPIENTS_OVER_CAP: &str = "mxgate_recipients_refused_total";
pub const BACKEND_CONNECT_FAILURES: &str = "mxgate_backend_connect_failures_total";
pub const TLS_HANDSHAKES: &str = "mxgate_tls_handshakes_total";
pub const SESSION_SECONDS: &str = "mxgate_session_duration_seconds";
pub const DECISION_SECONDS: &str = "mxgate_decision_duration_seconds";

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {reason}")]
pub struct TelemetryError {
    addr: SocketAddr,
    reason: String,
}

/// Installs the metrics recorder; with an admin address, serves `GET /metrics` there.
pub fn install(admin: Option<SocketAddr>) -> Result<(), TelemetryError> {
    let Some(addr) = admin else {
        return Ok(());
    };
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| TelemetryError {
            addr,
            reason: e.to_string(),
        })?;
    describe_counter!(
        DECISIONS,
        "Admission decisions, by class and outcome (admit, defer, reject)."
    );
    describe_counter!(
        SESSIONS_ENDED,
        "Relayed sessions that ended, by reason (quit, message_limit, client_timeout, ...)."
    );
    describe_counter!(
        DELIVERIES,
        "Messages the backend accepted (2xx to end of data)."
    );
    describe_counter!(
        RECIPIENTS_OVER_CAP,
        "RCPT commands answered 452 by mxgate, by reason."
    );
    describe_counter!(
        BACKEND_CONNECT_FAILURES,
        "Connections to the backend that failed or timed out."
    );
    describe_counter!(
        TLS_HANDSHAKES,
        "STARTTLS handshakes, by result (ok, failed)."
    );
    describe_histogram!(SESSION_SECONDS, "Duration of relayed sessions.");
    describe_histogram!(
        DECISION_SECONDS,
        "Time to decide on a connection (rules, DNS lists within the budget)."
    );
    describe_counter!("mxgate_dnsbl_lookups_total", "DNS list queries by zone and result (listed, not_listed, timeout, servfail, refused, error, late).");
    describe_histogram!(
        "mxgate_dnsbl_lookup_seconds",
        "DNS list query latency by zone."
    );
    describe_counter!(
        "mxgate_dnsbl_errors_total",
        "DNS list answers that were errors (never listings), by zone."
    );
    describe_counter!(
        "mxgate_dnsbl_cache_total",
        "DNS list cache lookups by result (hit, miss)."
    );
    metrics::describe_gauge!(
        "mxgate_dnsbl_list_usable",
        "1 while a DNS list passes its self-test and is used for scoring."
    );
    Ok(())
}

pub fn decision(class: &str, outcome: &'static str, seconds: f64) {
    counter!(DECISIONS, "class" => class.to_owned(), "outcome" => outcome).increment(1);
    histogram!(DECISION_SECONDS).record(seconds);
}

pub fn session_ended(
    end: &'static str,
    deliveries: u32,
    recipients_over_cap: u32,
    recipients_over_rate: u32,
    seconds: f64,
) {
    if recipients_over_rate > 0 {
        counter!(RECIPIENTS_OVER_CAP, "reason" => "rate")
            .increment(u64::from(recipients_over_rate));
    }
    counter!(SESSIONS_ENDED, "end" => end).increment(1);
    if deliveries > 0 {
        counter!(DELIVERIES).increment(u64::from(deliveries));
    }
    if recipients_over_cap > 0 {
        counter!(RECIPIENTS_OVER_CAP, "reason" => "per_message_cap")
            .increment(u64::from(recipients_over_cap));
    }
    histogram!(SESSION_SECONDS).record(seconds);
}

pub fn backend_connect_failed() {
    counter!(BACKEND_CONNECT_FAILURES).increment(1);
}

pub fn tls_handshake(ok: bool) {
    counter!(TLS_HANDSHAKES, "result" => if ok { "ok" } else { "failed" }).increment(1);
}
