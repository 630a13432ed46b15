//! Concurrent sessions per client address and per network prefix: counters that exist only while
//! sessions do, with guards that give the place back on drop.

use dashmap::DashMap;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;

/// The prefix a client address belongs to (IPv4 /v4, IPv6 /v6).
pub fn prefix_of(ip: IpAddr, v4: u8, v6: u8) -> IpNet {
    let len = if ip.is_ipv4() { v4 } else { v6 };
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

#[derive(Default)]
pub struct Concurrency {
    counts: DashMap<IpNet, usize>,
}

pub struct ConcurrencyGuard {
    owner: Arc<Concurrency>,
    key: IpNet,
}

impl Concurrency {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts one more session under `key` if fewer than `limit` are open (0: no limit).
    pub fn try_enter(self: &Arc<Self>, key: IpNet, limit: usize) -> Option<ConcurrencyGuard> {
        let mut count = self.counts.entry(key).or_insert(0);
        if limit > 0 && *count >= limit {
            let empty = *count == 0;
            drop(count);
            if empty {
                self.counts.remove_if(&key, |_, c| *c == 0);
            }
            return None;
        }
        *count += 1;
        Some(ConcurrencyGuard {
            owner: self.clone(),
            key,
        })
    }

    pub fn open(&self, key: &IpNet) -> usize {
        self.counts.get(key).map_or(0, |c| *c)
    }

    /// Keys with sessions open (entries are removed when their last session ends).
    pub fn tracked(&self) -> usize {
        self.counts.len()
    }
}

impl Drop for ConcurrencyGuard {
    fn drop(&mut self) {
        if let Some(mut count) = self.owner.counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
        }
        self.owner.counts.remove_if(&self.key, |_, c| *c == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_prefix() {
        let c = Concurrency::new();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let key = IpNet::from(ip);
        let guards: Vec<_> = (0..7).filter_map(|_| c.try_enter(key, 5)).collect();
        assert_eq!(guards.len(), 5);
        assert_eq!(c.open(&key), 5);
        drop(guards);
        assert_eq!(c.tracked(), 0, "no state left once sessions end");
        assert_eq!(prefix_of(ip, 24, 64).to_string(), "192.0.2.0/24");
        assert_eq!(
            prefix_of("2001:db8::1:2".parse().unwrap(), 24, 64).to_string(),
            "2001:db8::/64"
        );
        assert!(c.try_enter(key, 0).is_some(), "0 means no limit");
    }
}
