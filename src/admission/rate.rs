//! Rates as people write them ("6/s", "20/h") and per-key GCRA limiters (governor) with an
//! injectable clock, pruned so that per-IP state stays bounded.

use governor::clock::Clock;
use governor::{Quota, RateLimiter};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

/// Parses `N/s`, `N/m`, `N/h` (also `/sec`, `/min`, `/hour`): N events per unit, burst N.
pub fn parse_rate(text: &str) -> Result<Quota, String> {
    let bad = || format!("rate {text:?} must look like \"6/s\", \"100/m\" or \"20/h\"");
    let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let count = NonZeroU32::new(count)
        .ok_or_else(|| format!("rate {text:?}: the count must be at least 1"))?;
    let quota = match unit.trim() {
        "s" | "sec" | "second" => Quota::per_second(count),
        "m" | "min" | "minute" => Quota::per_minute(count),
        "h" | "hour" => Quota::per_hour(count),
        _ => return Err(bad()),
    };
    Ok(quota)
}

/// A keyed limiter: `allow(key)` spends one cell of `key`'s allowance.
pub trait KeyedRate<K>: Send + Sync {
    fn allow(&self, key: &K) -> bool;
    /// Forgets keys whose state has fully replenished; returns how many keys remain.
    fn prune(&self) -> usize;
    fn tracked(&self) -> usize;
}

/// governor's GCRA keyed limiter over any clock, with a cap on tracked keys.
pub struct Gcra<K: Hash + Eq + Clone + Send + Sync + 'static, C: Clock> {
    limiter: RateLimiter<
        K,
        governor::state::keyed::DashMapStateStore<K>,
        C,
        governor::middleware::NoOpMiddleware<C::Instant>,
    >,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static, C: Clock> Gcra<K, C> {
    pub fn new(quota: Quota, clock: C, max_keys: usize) -> Self {
        Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock),
            max_keys,
        }
    }
}

impl<K, C> KeyedRate<K> for Gcra<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock + Send + Sync,
    C::Instant: Send + Sync,
{
    fn allow(&self, key: &K) -> bool {
        // Past the cap, idle keys are dropped first; if the cap still holds, the rate is not
        // enforced (and nothing new is tracked) until keys go idle: under a flood from very many
        // addresses the slot pool still protects the backend, and memory stays bounded.
        if self.limiter.len() >= self.max_keys && self.prune() >= self.max_keys {
            return true;
        }
        self.limiter.check_key(key).is_ok()
    }

    fn prune(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }

    fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// How often idle per-key state is pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn rates() {
        for ok in ["6/s", "100/m", "20/h", " 3 / sec "] {
            assert!(parse_rate(ok).is_ok(), "{ok}");
        }
        for bad in ["6", "0/s", "x/s", "6/d", "-1/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn six_per_second_with_a_controlled_clock() {
        let clock = FakeRelativeClock::default();
        let gcra: Gcra<u32, _> = Gcra::new(parse_rate("6/s").unwrap(), clock.clone(), 100);
        let allowed = (0..20).filter(|_| gcra.allow(&1)).count();
        assert_eq!(allowed, 6);
        // Another key has its own allowance.
        assert!(gcra.allow(&2));
        clock.advance(Duration::from_millis(1000 / 6 + 1));
        assert!(gcra.allow(&1));
        assert!(!gcra.allow(&1));
        clock.advance(Duration::from_secs(10));
        assert_eq!(gcra.prune(), 0, "idle keys are forgotten");
    }

    #[test]
    fn key_cap() {
        let clock = FakeRelativeClock::default();
        let gcra: Gcra<u32, _> = Gcra::new(parse_rate("1/h").unwrap(), clock, 10);
        for key in 0..10 {
            assert!(gcra.allow(&key));
        }
        assert_eq!(gcra.tracked(), 10);
        // Full and nothing idle: nothing more is tracked, and the rate is not enforced.
        assert!(gcra.allow(&99));
        assert_eq!(gcra.tracked(), 10);
        assert!(gcra.allow(&3));
    }
}
