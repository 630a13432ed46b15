//! The DNS list answer cache, shared by every connection and worker: keyed by (zone, IP), TTLs
//! clamped to the policy's bounds, negative answers cached too, bounded in entries, and
//! single-flight: while a query is in flight, later askers wait for its answer instead of asking again.

use super::lookup::Answer;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// An answer and when it stops being good.
#[derive(Debug, Clone)]
pub struct Cached {
    pub answer: Answer,
    pub expires: Instant,
}

pub type Key = (Arc<str>, IpAddr);

enum Slot {
    Ready(Cached),
    InFlight(watch::Receiver<Option<Cached>>),
}

/// What the cache has for a key.
pub enum Found {
    Ready(Cached),
    /// Someone is asking; the answer arrives on this channel.
    InFlight(watch::Receiver<Option<Cached>>),
    /// Nobody is: the caller must ask and `complete` with the answer.
    Miss(watch::Sender<Option<Cached>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlBounds {
    pub min: Duration,
    pub max: Duration,
    /// How long a failed lookup is remembered (so a dead list is not asked again per connection).
    pub failure: Duration,
}

pub struct DnsCache {
    map: DashMap<Key, Slot>,
    ttl: TtlBounds,
    max_entries: usize,
}

impl DnsCache {
    pub fn new(ttl: TtlBounds, max_entries: usize) -> Self {
        Self {
            map: DashMap::with_capacity(max_entries.min(1 << 16)),
            ttl,
            max_entries: max_entries.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Looks `key` up; on a miss (or an expired entry) registers the caller as the one who asks.
    pub fn find_or_claim(&self, key: Key, now: Instant) -> Found {
        if self.map.len() >= self.max_entries && !self.map.contains_key(&key) {
            self.make_room(now);
        }
        match self.map.entry(key) {
            Entry::Occupied(mut occupied) => match occupied.get() {
                Slot::Ready(cached) if cached.expires > now => Found::Ready(cached.clone()),
                Slot::InFlight(rx) => Found::InFlight(rx.clone()),
                Slot::Ready(_) => {
                    let (tx, rx) = watch::channel(None);
                    occupied.insert(Slot::InFlight(rx));
                    Found::Miss(tx)
                }
            },
            Entry::Vacant(vacant) => {
                let (tx, rx) = watch::channel(None);
                vacant.insert(Slot::InFlight(rx));
                Found::Miss(tx)
            }
        }
    }

    /// Stores the answer to a claimed key and wakes those waiting for it.
    pub fn complete(
        &self,
        key: Key,
        answer: Answer,
        sender: watch::Sender<Option<Cached>>,
        now: Instant,
    ) -> Cached {
        let ttl = match &answer {
            Answer::Records { ttl, .. } => *ttl,
            Answer::NotListed { ttl } => ttl.unwrap_or(self.ttl.min),
            Answer::Failed(_) => self.ttl.failure,
        };
        let ttl = match answer {
            Answer::Failed(_) => ttl,
            _ => ttl.clamp(self.ttl.min, self.ttl.max),
        };
        let cached = Cached {
            answer,
            expires: now + ttl,
        };
        self.map.insert(key, Slot::Ready(cached.clone()));
        let _ = sender.send(Some(cached.clone()));
        cached
    }

    /// Drops expired answers; if the cache is still full, drops an eighth of it.
    fn make_room(&self, now: Instant) {
        self.map
            .retain(|_, slot| !matches!(slot, Slot::Ready(c) if c.expires <= now));
        if self.map.len() >= self.max_entries {
            let excess = self.map.len() / 8 + 1;
            let victims: Vec<Key> = self
                .map
                .iter()
                .filter(|e| matches!(e.value(), Slot::Ready(_)))
                .take(excess)
                .map(|e| e.key().clone())
                .collect();
            for key in victims {
                self.map.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str) -> Key {
        (Arc::from("bl.test"), ip.parse().unwrap())
    }

    fn bounds() -> TtlBounds {
        TtlBounds {
            min: Duration::from_secs(60),
            max: Duration::from_secs(3600),
            failure: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn claim_wait_complete_expire() {
        let cache = DnsCache::new(bounds(), 100);
        let now = Instant::now();
        let Found::Miss(tx) = cache.find_or_claim(key("192.0.2.1"), now) else {
            panic!("expected a miss")
        };
        let Found::InFlight(mut rx) = cache.find_or_claim(key("192.0.2.1"), now) else {
            panic!("expected in flight")
        };
        let answer = Answer::Records {
            codes: vec!["127.0.0.2".parse().unwrap()],
            ttl: Duration::from_secs(5),
        };
        cache.complete(key("192.0.2.1"), answer.clone(), tx, now);
        let got = rx.wait_for(Option::is_some).await.unwrap().clone().unwrap();
        assert_eq!(got.answer, answer);
        // 5 s is clamped up to the 60 s minimum.
        assert_eq!(got.expires, now + Duration::from_secs(60));
        assert!(matches!(
            cache.find_or_claim(key("192.0.2.1"), now + Duration::from_secs(59)),
            Found::Ready(_)
        ));
        assert!(matches!(
            cache.find_or_claim(key("192.0.2.1"), now + Duration::from_secs(60)),
            Found::Miss(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn ttls_are_clamped_and_failures_short() {
        let cache = DnsCache::new(bounds(), 100);
        let now = Instant::now();
        let cases = [
            (
                Answer::Records {
                    codes: vec![],
                    ttl: Duration::from_secs(86400),
                },
                3600,
            ),
            (
                Answer::NotListed {
                    ttl: Some(Duration::from_secs(900)),
                },
                900,
            ),
            (Answer::NotListed { ttl: None }, 60),
            (Answer::Failed(super::super::lookup::Failure::Timeout), 10),
        ];
        for (i, (answer, secs)) in cases.into_iter().enumerate() {
            let k = key(&format!("192.0.2.{i}"));
            let Found::Miss(tx) = cache.find_or_claim(k.clone(), now) else {
                panic!()
            };
            assert_eq!(
                cache.complete(k, answer, tx, now).expires,
                now + Duration::from_secs(secs)
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bounded() {
        let cache = DnsCache::new(bounds(), 16);
        let now = Instant::now();
        for i in 0..100 {
            let k = key(&format!("10.0.0.{i}"));
            if let Found::Miss(tx) = cache.find_or_claim(k.clone(), now) {
                cache.complete(k, Answer::NotListed { ttl: None }, tx, now);
            }
        }
        assert!(cache.len() <= 16, "{} entries", cache.len());
    }
}
