//! Reading mxgate's `/metrics` in tests: the scrape parsed by a Prometheus text parser into samples
//! keyed by `name{label="value",...}`, and a wait for a sample to reach a value.

use super::http::request;
use std::collections::HashMap;
use std::net::SocketAddr;

/// Samples of the scrape, keyed by `name{label="value",...}` with labels sorted.
pub fn parse_metrics(body: &str) -> HashMap<String, f64> {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let mut samples = HashMap::new();
    for sample in scrape.samples {
        let mut labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        labels.sort();
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        };
        let key = match labels.is_empty() {
            true => sample.metric,
            false => format!("{}{{{}}}", sample.metric, labels.join(",")),
        };
        samples.insert(key, value);
    }
    samples
}

/// The scrape's text and its samples.
pub async fn scrape(admin: SocketAddr, token: Option<&str>) -> (String, HashMap<String, f64>) {
    let (status, body) = request(admin, "GET", "/metrics", token).await;
    assert_eq!(status, 200, "{body}");
    let samples = parse_metrics(&body);
    (body, samples)
}

/// Scrapes until `key` has `value` (counters move after the client has its reply).
pub async fn wait_for_sample(
    admin: SocketAddr,
    token: Option<&str>,
    key: &str,
    value: f64,
) -> HashMap<String, f64> {
    let deadline = tokio::time::Instant::now() + super::WAIT;
    loop {
        let (body, samples) = scrape(admin, token).await;
        if samples.get(key) == Some(&value) {
            return samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never reached {value}:\n{body}"
        );
        tokio::task::yield_now().await;
    }
}
