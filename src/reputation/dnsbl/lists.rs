//! The policy's DNS lists at work: every usable zone asked in parallel through the shared cache,
//! the decision waiting at most the DNS budget, answers turned into weighted terms, error answers
//! told apart from listings, and the RFC 5782 self-test that decides whether a list is usable.

use super::cache::{Cached, DnsCache, Found, Key, TtlBounds};
use super::filter::CodeFilter;
use super::lookup::{Answer, DnsLookup};
use super::query::{normalize, query_name};
use crate::telemetry;
use metrics::{counter, gauge, histogram};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One weighted entry: answers of `zone` that pass any of `filters` (or any answer, without
/// filters) add `weight`, once per entry however many records match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub zone: Arc<str>,
    pub filters: Vec<CodeFilter>,
    pub weight: i32,
    /// What logs and `explain` call a match ("PBL", "XBL", "DNSWL").
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsListsConfig {
    pub entries: Vec<ListEntry>,
    /// Longest a decision waits for the lists.
    pub budget: Duration,
    /// Longest a query may run (past the budget it still fills the cache for the next connection).
    pub query_timeout: Duration,
    pub ttl: TtlBounds,
    pub cache_entries: usize,
}

/// How one zone answered for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Listed(Vec<Ipv4Addr>),
    NotListed,
    /// An answer that is an error, not a listing (127.255.255.x, outside 127/8, SERVFAIL...).
    Error(&'static str),
    /// No answer within the budget: counts as not listed.
    Late,
    /// Left out of scoring: its self-test has not passed.
    Unusable,
}

impl Outcome {
    /// The outcome's name in the decision log line and the admin API's JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Listed(_) => "listed",
            Outcome::NotListed => "not_listed",
            Outcome::Error(_) => "error",
            Outcome::Late => "late",
            Outcome::Unusable => "unusable",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ZoneResult {
    pub zone: Arc<str>,
    pub outcome: Outcome,
    /// Answered from the cache (no query for this connection).
    pub cached: bool,
    pub ttl_left: Duration,
}

/// One entry that matched: its share of the score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub zone: Arc<str>,
    pub code: Ipv4Addr,
    pub name: Option<String>,
    pub weight: i32,
    pub cached: bool,
    pub ttl_left: Duration,
}

struct ZoneState {
    zone: Arc<str>,
    usable: AtomicBool,
    last_complaint: Mutex<Option<Instant>>,
}

/// Errors are logged once per this interval per zone, not once per connection.
const COMPLAINT_INTERVAL: Duration = Duration::from_secs(60);

pub struct DnsLists {
    config: DnsListsConfig,
    zones: Vec<ZoneState>,
    cache: Arc<DnsCache>,
    lookup: Arc<dyn DnsLookup>,
}

impl DnsLists {
    /// Lists are unusable until their first self-test passes: a list is trusted only once it has
    /// shown that it answers like a DNS list.
    pub fn new(config: DnsListsConfig, lookup: Arc<dyn DnsLookup>) -> Arc<Self> {
        let mut zones: Vec<ZoneState> = Vec::new();
        for entry in &config.entries {
            if !zones.iter().any(|z| z.zone == entry.zone) {
                zones.push(ZoneState {
                    zone: entry.zone.clone(),
                    usable: AtomicBool::new(false),
                    last_complaint: Mutex::new(None),
                });
            }
        }
        let cache = Arc::new(DnsCache::new(config.ttl, config.cache_entries));
        Arc::new(Self {
            config,
            zones,
            cache,
            lookup,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }

    pub fn is_usable(&self, zone: &str) -> bool {
        self.zones
            .iter()
            .any(|z| &*z.zone == zone && z.usable.load(Ordering::Relaxed))
    }

    /// Asks every usable zone about `ip` (in parallel, through the cache) and waits at most the budget.
    pub async fn evaluate(self: &Arc<Self>, ip: IpAddr) -> Vec<ZoneResult> {
        let ip = normalize(ip);
        let start = Instant::now();
        let deadline = start + self.config.budget;
        // Start (or join) every query first, then wait: the waits overlap.
        let pending: Vec<(usize, Asked)> = self
            .zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.usable.load(Ordering::Relaxed))
            .map(|(i, z)| (i, self.start_query(z.zone.clone(), ip, start)))
            .collect();
        let mut results: Vec<ZoneResult> = self
            .zones
            .iter()
            .filter(|z| !z.usable.load(Ordering::Relaxed))
            .map(|z| ZoneResult {
                zone: z.zone.clone(),
                outcome: Outcome::Unusable,
                cached: false,
                ttl_left: Duration::ZERO,
            })
            .collect();
        for (i, found) in pending {
            let zone = &self.zones[i];
            let (cached, answer) = match found {
                Asked::Cached(c) => (true, Some(c)),
                Asked::Waiting(mut rx) => (false, rx_wait(&mut rx, deadline).await),
            };
            counter!(telemetry::DNSBL_CACHE, "result" => if cached { "hit" } else { "miss" })
                .increment(1);
            let result = match answer {
                None => {
                    self.complain(zone, "no answer within the DNS budget");
                    counter!(telemetry::DNSBL_LOOKUPS, "zone" => zone.zone.to_string(), "result" => "late").increment(1);
                    ZoneResult {
                        zone: zone.zone.clone(),
                        outcome: Outcome::Late,
                        cached: false,
                        ttl_left: Duration::ZERO,
                    }
                }
                Some(c) => ZoneResult {
                    zone: zone.zone.clone(),
                    outcome: self.judge(zone, &c.answer),
                    cached,
                    ttl_left: c.expires.saturating_duration_since(Instant::now()),
                },
            };
            results.push(result);
        }
        results
    }

    /// The entries that match `results`, each once.
    pub fn terms(&self, results: &[ZoneResult]) -> Vec<Term> {
        let mut terms = Vec::new();
        for entry in &self.config.entries {
            let Some(result) = results.iter().find(|r| r.zone == entry.zone) else {
                continue;
            };
            let Outcome::Listed(codes) = &result.outcome else {
                continue;
            };
            let matched = codes.iter().find(|code| {
                entry.filters.is_empty() || entry.filters.iter().any(|f| f.matches(**code))
            });
            if let Some(&code) = matched {
                terms.push(Term {
                    zone: entry.zone.clone(),
                    code,
                    name: entry.name.clone(),
                    weight: entry.weight,
                    cached: result.cached,
                    ttl_left: result.ttl_left,
                });
            }
        }
        terms
    }

    /// Returns the cached answer, or a channel on which the answer (from a query started here or by
    /// someone else) will arrive. The query runs in its own task, so that a connection giving up
    /// at the budget does not cancel it: a late answer still serves the next connection.
    fn start_query(self: &Arc<Self>, zone: Arc<str>, ip: IpAddr, now: Instant) -> Asked {
        let key: Key = (zone.clone(), ip);
        match self.cache.find_or_claim(key.clone(), now) {
            Found::Miss(sender) => {
                let rx = sender.subscribe();
                let lists = self.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let answer = lists
                        .lookup
                        .lookup_a(query_name(ip, &zone), lists.config.query_timeout)
                        .await;
                    histogram!(telemetry::DNSBL_LOOKUP_SECONDS, "zone" => zone.to_string())
                        .record(started.elapsed().as_secs_f64());
                    let result = match &answer {
                        Answer::Records { .. } => "listed",
                        Answer::NotListed { .. } => "not_listed",
                        Answer::Failed(f) => f.as_str(),
                    };
                    counter!(telemetry::DNSBL_LOOKUPS, "zone" => zone.to_string(), "result" => result).increment(1);
                    lists.cache.complete(key, answer, sender, Instant::now());
                });
                Asked::Waiting(rx)
            }
            Found::InFlight(rx) => Asked::Waiting(rx),
            Found::Ready(cached) => Asked::Cached(cached),
        }
    }

    /// What an answer means. Error answers never count as listed; codes that say the list refuses
    /// us (Spamhaus 127.255.255.x: public resolver, over quota) take it out of scoring until its
    /// next self-test passes.
    fn judge(&self, zone: &ZoneState, answer: &Answer) -> Outcome {
        match answer {
            Answer::NotListed { .. } => Outcome::NotListed,
            Answer::Failed(f) => {
                self.complain(zone, f.as_str());
                Outcome::Error(f.as_str())
            }
            Answer::Records { codes, .. } => {
                let refusal = codes.iter().any(|c| c.octets()[..3] == [127, 255, 255]);
                let foreign = codes.iter().any(|c| c.octets()[0] != 127);
                if refusal || foreign {
                    let what = if refusal {
                        "error code 127.255.255.x"
                    } else {
                        "answer outside 127.0.0.0/8"
                    };
                    self.complain(zone, what);
                    if zone.usable.swap(false, Ordering::Relaxed) {
                        tracing::warn!(zone = %zone.zone, reason = what, "DNS list taken out of scoring until its self-test passes");
                        gauge!(telemetry::DNSBL_USABLE, "zone" => zone.zone.to_string()).set(0.0);
                    }
                    Outcome::Error(if refusal {
                        "refused_127.255.255.x"
                    } else {
                        "outside_127/8"
                    })
                } else {
                    Outcome::Listed(codes.clone())
                }
            }
        }
    }

    fn complain(&self, zone: &ZoneState, what: &str) {
        counter!(telemetry::DNSBL_ERRORS, "zone" => zone.zone.to_string()).increment(1);
        let now = Instant::now();
        let mut last = zone
            .last_complaint
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= COMPLAINT_INTERVAL) {
            *last = Some(now);
            tracing::warn!(zone = %zone.zone, problem = what, "DNS list error (counts as not listed; logged once a minute)");
        }
    }

    /// RFC 5782 5: 127.0.0.2 must be listed, 127.0.0.1 must not. All zones are tested at once; sets
    /// each zone's usability and returns the zones that failed.
    pub async fn self_test(self: &Arc<Self>) -> Vec<Arc<str>> {
        let mut tests = tokio::task::JoinSet::new();
        for i in 0..self.zones.len() {
            let lists = self.clone();
            tests.spawn(async move { (i, lists.test_zone(&lists.zones[i].zone).await) });
        }
        let mut failed = Vec::new();
        while let Some(Ok((i, problem))) = tests.join_next().await {
            let zone = &self.zones[i];
            let usable = problem.is_none();
            let was = zone.usable.swap(usable, Ordering::Relaxed);
            gauge!(telemetry::DNSBL_USABLE, "zone" => zone.zone.to_string()).set(if usable {
                1.0
            } else {
                0.0
            });
            match (&problem, was) {
                (Some(p), _) => {
                    tracing::warn!(zone = %zone.zone, problem = %p, "DNS list failed its self-test; left out of scoring");
                    failed.push(zone.zone.clone());
                }
                (None, false) => {
                    tracing::info!(zone = %zone.zone, "DNS list passed its self-test; used for scoring")
                }
                (None, true) => {}
            }
        }
        failed
    }

    /// What is wrong with a zone, by the RFC 5782 test entries; `None` if nothing.
    async fn test_zone(&self, zone: &str) -> Option<String> {
        let timeout = self.config.query_timeout;
        let two = self.lookup.lookup_a(
            query_name(Ipv4Addr::new(127, 0, 0, 2).into(), zone),
            timeout,
        );
        let one = self.lookup.lookup_a(
            query_name(Ipv4Addr::new(127, 0, 0, 1).into(), zone),
            timeout,
        );
        let (two, one) = tokio::join!(two, one);
        match (&two, &one) {
            (Answer::Records { codes, .. }, Answer::NotListed { .. })
                if codes
                    .iter()
                    .all(|c| c.octets()[0] == 127 && c.octets()[..3] != [127, 255, 255]) =>
            {
                None
            }
            (Answer::Records { .. }, Answer::NotListed { .. }) => {
                Some(format!("127.0.0.2 answered {two:?}"))
            }
            (_, Answer::Records { .. }) => {
                Some("127.0.0.1 is listed (RFC 5782 says it never is)".to_owned())
            }
            (Answer::Failed(f), _) | (_, Answer::Failed(f)) => {
                Some(format!("lookup failed: {}", f.as_str()))
            }
            (Answer::NotListed { .. }, _) => {
                Some("127.0.0.2 is not listed (RFC 5782 says it always is)".to_owned())
            }
        }
    }

    /// Runs the self-test every `interval` until `stop` is cancelled.
    pub async fn self_test_every(
        self: Arc<Self>,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            self.self_test().await;
        }
    }
}

/// A zone's answer for one connection: already known, or on its way.
enum Asked {
    Cached(Cached),
    Waiting(tokio::sync::watch::Receiver<Option<Cached>>),
}

async fn rx_wait(
    rx: &mut tokio::sync::watch::Receiver<Option<Cached>>,
    deadline: Instant,
) -> Option<Cached> {
    match tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await {
        Ok(Ok(value)) => value.clone(),
        _ => None,
    }
}
