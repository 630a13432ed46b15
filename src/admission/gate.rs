//! The shared admission state every worker consults after scoring: the slot pool with per-class
//! shares, concurrent sessions and connection rates per address and prefix, recipient rates per
//! address, and stress mode. What it grants is owned by the session and released on drop.

use super::concurrency::{prefix_of, Concurrency, ConcurrencyGuard};
use super::rate::{Gcra, KeyedRate};
use super::slots::{SlotPermit, SlotPool};
use crate::policy::{Policy, MAX_CLASSES};
use crate::telemetry;
use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use ipnet::IpNet;
use metrics::{counter, gauge};
use std::net::IpAddr;
use std::sync::Arc;

/// Why an admitted class was still turned away (all answered with 421).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ConnectionRate,
    TooManyConnections,
    PoolFull,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ConnectionRate => "connection_rate",
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::PoolFull => "slots_full",
        }
    }

    pub fn reply(self, host: &str) -> String {
        match self {
            Refusal::ConnectionRate => {
                format!("421 4.7.0 {host} Connection rate limit exceeded\r\n")
            }
            Refusal::TooManyConnections => format!("421 4.7.0 {host} Too many connections\r\n"),
            Refusal::PoolFull => format!("421 4.3.2 {host} All server ports are busy\r\n"),
        }
    }
}

/// What an admitted session holds: its slot and its places in the per-address and per-prefix
/// counts. Dropping it gives them all back.
pub struct AdmissionPermit {
    _slot: SlotPermit,
    _ip: ConcurrencyGuard,
    _prefix: ConcurrencyGuard,
    /// Admitted while occupancy was past the stress threshold: stricter limits apply.
    pub stressed: bool,
}

type Rate = Arc<dyn KeyedRate<IpNet>>;
type MakeRate = Box<dyn Fn(governor::Quota) -> Rate + Send + Sync>;

/// The rate limiters of one policy generation, each with the quota it enforces.
#[derive(Default)]
struct Rates {
    ip: Option<(governor::Quota, Rate)>,
    prefix: Option<(governor::Quota, Rate)>,
    /// Per class position: recipients per address across its sessions.
    recipients: Vec<Option<(governor::Quota, Rate)>>,
}

pub struct AdmissionState {
    slots: Arc<SlotPool>,
    per_ip: Arc<Concurrency>,
    per_prefix: Arc<Concurrency>,
    rates: ArcSwap<Rates>,
    make_rate: MakeRate,
}

impl AdmissionState {
    pub fn new(policy: &Policy) -> Arc<Self> {
        Self::with_clock(policy, DefaultClock::default())
    }

    /// With a controlled clock for the rates (tests use governor's `FakeRelativeClock`).
    pub fn with_clock<C>(policy: &Policy, clock: C) -> Arc<Self>
    where
        C: Clock + Clone + Send + Sync + 'static,
        C::Instant: Send + Sync,
    {
        let cap = policy.admission.max_tracked_addresses;
        let make_rate: MakeRate =
            Box::new(move |q| Arc::new(Gcra::new(q, clock.clone(), cap)) as Rate);
        let state = Self {
            slots: SlotPool::new(policy.admission.slots, MAX_CLASSES),
            per_ip: Concurrency::new(),
            per_prefix: Concurrency::new(),
            rates: ArcSwap::from_pointee(Rates::default()),
            make_rate,
        };
        state.reconfigure(policy);
        Arc::new(state)
    }

    /// Adopts a new policy: the pool's capacity changes at once (sessions beyond a smaller capacity
    /// keep their slots and new ones wait until occupancy falls below it); a rate whose quota is
    /// unchanged keeps its state, a changed one starts afresh. Sessions hold on to what they have.
    pub fn reconfigure(&self, policy: &Policy) {
        let a = &policy.admission;
        self.slots.set_capacity(a.slots);
        gauge!(telemetry::SLOTS_CAPACITY).set(a.slots as f64);
        let old = self.rates.load();
        let keep = |old: &Option<(governor::Quota, Rate)>, quota: Option<governor::Quota>| {
            quota.map(|q| match old {
                Some((was, rate)) if *was == q => (q, rate.clone()),
                _ => (q, (self.make_rate)(q)),
            })
        };
        let recipients = policy
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| keep(old.recipients.get(i).unwrap_or(&None), c.recipient_rate))
            .collect();
        self.rates.store(Arc::new(Rates {
            ip: keep(&old.ip, a.connection_rate_per_ip),
            prefix: keep(&old.prefix, a.connection_rate_per_prefix),
            recipients,
        }));
    }

    pub fn slots(&self) -> &Arc<SlotPool> {
        &self.slots
    }

    /// Open sessions from `ip` (for explain and tests).
    pub fn sessions_from(&self, ip: IpAddr) -> usize {
        self.per_ip.open(&IpNet::from(ip))
    }

    /// Grants a session to an admitted client of `class`, or says which limit refuses it.
    /// Rates count every attempt; the concurrency and slot checks hold places only when all pass.
    pub fn admit(
        &self,
        policy: &Policy,
        class: usize,
        ip: IpAddr,
    ) -> Result<AdmissionPermit, Refusal> {
        let a = &policy.admission;
        let c = policy.class(class);
        let prefix = prefix_of(ip, a.prefix_v4, a.prefix_v6);
        let refuse = |r: Refusal| {
            counter!(telemetry::LIMIT_REFUSALS, "limit" => r.as_str()).increment(1);
            Err(r)
        };
        let rates = self.rates.load();
        let over_rate = |rate: &Option<(governor::Quota, Rate)>, key: IpNet| {
            rate.as_ref().is_some_and(|(_, r)| !r.allow(&key))
        };
        if over_rate(&rates.ip, IpNet::from(ip)) || over_rate(&rates.prefix, prefix) {
            return refuse(Refusal::ConnectionRate);
        }
        let Some(ip_guard) = self.per_ip.try_enter(IpNet::from(ip), c.connections_per_ip) else {
            return refuse(Refusal::TooManyConnections);
        };
        let Some(prefix_guard) = self.per_prefix.try_enter(prefix, a.connections_per_prefix) else {
            return refuse(Refusal::TooManyConnections);
        };
        let stressed = self.slots.occupancy() >= a.stress_threshold;
        let Some(slot) = self.slots.try_acquire(class, c.max_share) else {
            return refuse(Refusal::PoolFull);
        };
        if stressed {
            counter!(telemetry::STRESS_SESSIONS).increment(1);
        }
        Ok(AdmissionPermit {
            _slot: slot,
            _ip: ip_guard,
            _prefix: prefix_guard,
            stressed,
        })
    }

    /// Publishes occupancy by class and stress (sampled by the housekeeping task, not per session).
    pub fn publish(&self, policy: &Policy) {
        for (i, class) in policy.classes.iter().enumerate() {
            gauge!(telemetry::SLOTS_IN_USE, "class" => class.name.clone())
                .set(self.slots.in_use_by(i) as f64);
            let limit = super::slots::limit_for(self.slots.capacity(), class.max_share);
            gauge!(telemetry::SLOTS_LIMIT, "class" => class.name.clone()).set(limit as f64);
        }
        gauge!(telemetry::SLOTS_CAPACITY).set(self.slots.capacity() as f64);
        let stressed = self.slots.occupancy() >= policy.admission.stress_threshold;
        gauge!(telemetry::STRESS).set(if stressed { 1.0 } else { 0.0 });
    }

    /// The recipient allowance of `ip` in `class`, shared by all its sessions; `None`: no limit.
    pub fn recipient_gate(
        &self,
        class: usize,
        ip: IpAddr,
    ) -> Option<Box<dyn FnMut() -> bool + Send>> {
        let (_, rate) = self.rates.load().recipients.get(class)?.clone()?;
        let key = IpNet::from(ip);
        Some(Box::new(move || rate.allow(&key)))
    }

    /// Forgets idle rate state (call every minute); returns the keys still tracked.
    pub fn prune(&self) -> usize {
        let rates = self.rates.load();
        let tracked = [&rates.ip, &rates.prefix]
            .into_iter()
            .chain(rates.recipients.iter())
            .flatten()
            .map(|(_, rate)| rate.prune())
            .sum();
        gauge!(telemetry::RATE_TRACKED_KEYS).set(tracked as f64);
        tracked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    fn policy() -> Policy {
        let text = r#"
[backend]
address = "127.0.0.1:25"
[admission]
slots = 10
connections_per_prefix = 4
connection_rate_per_ip = "5/m"
[[class]]
name = "trusted"
max_score = -5
max_share = 1.0
connections_per_ip = 0
[[class]]
name = "good"
max_score = -1
max_share = 0.9
[[class]]
name = "neutral"
max_share = 0.6
connections_per_ip = 2
"#;
        Policy::parse("table", text, None).unwrap()
    }

    /// Fills the pool to `occupancy` with trusted sessions from distinct prefixes.
    fn fill(
        state: &Arc<AdmissionState>,
        policy: &Policy,
        occupancy: usize,
    ) -> Vec<AdmissionPermit> {
        (0..occupancy)
            .map(|i| {
                state
                    .admit(policy, 0, format!("10.{i}.0.1").parse().unwrap())
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn class_by_occupancy() {
        // (class, occupancy before) -> admitted?
        let table = [
            (2, 0, Ok(())),
            (2, 5, Ok(())),
            (2, 6, Err(Refusal::PoolFull)),
            (1, 6, Ok(())),
            (1, 8, Ok(())),
            (1, 9, Err(Refusal::PoolFull)),
            (0, 9, Ok(())),
            (0, 10, Err(Refusal::PoolFull)),
        ];
        for (class, occupancy, expected) in table {
            let policy = policy();
            let state = AdmissionState::with_clock(&policy, FakeRelativeClock::default());
            let _held = fill(&state, &policy, occupancy);
            let got = state
                .admit(&policy, class, "192.0.2.1".parse().unwrap())
                .map(|_| ());
            assert_eq!(got, expected, "class {class} at {occupancy}/10");
            assert!(state.slots().in_use() <= 10);
        }
    }

    #[test]
    fn per_address_and_prefix_state() {
        let policy = policy();
        let clock = FakeRelativeClock::default();
        let state = AdmissionState::with_clock(&policy, clock.clone());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // neutral: 2 sessions per address.
        let a = state.admit(&policy, 2, ip).unwrap();
        let _b = state.admit(&policy, 2, ip).unwrap();
        assert_eq!(
            state.admit(&policy, 2, ip).err(),
            Some(Refusal::TooManyConnections)
        );
        drop(a);
        // 4 attempts so far (refusals count too); the 5th in the minute passes the rate and meets
        // the count; the 6th is over the rate.
        let _c = state.admit(&policy, 2, ip).unwrap();
        assert_eq!(
            state.admit(&policy, 2, ip).err(),
            Some(Refusal::TooManyConnections)
        );
        assert_eq!(
            state.admit(&policy, 2, ip).err(),
            Some(Refusal::ConnectionRate)
        );
        clock.advance(Duration::from_secs(13));
        assert_eq!(
            state.admit(&policy, 2, ip).err(),
            Some(Refusal::TooManyConnections),
            "rate recovered, count still full"
        );
        // The prefix /24 holds 4 sessions at most: two more addresses in it.
        let _d = state
            .admit(&policy, 0, "192.0.2.2".parse().unwrap())
            .unwrap();
        let _e = state
            .admit(&policy, 0, "192.0.2.3".parse().unwrap())
            .unwrap();
        assert_eq!(
            state.admit(&policy, 0, "192.0.2.4".parse().unwrap()).err(),
            Some(Refusal::TooManyConnections)
        );
        assert!(
            state
                .admit(&policy, 0, "192.0.3.4".parse().unwrap())
                .is_ok(),
            "another prefix"
        );
    }

    #[test]
    fn stress_past_the_threshold() {
        let policy = policy();
        let state = AdmissionState::with_clock(&policy, FakeRelativeClock::default());
        let held = fill(&state, &policy, 8);
        let permit = state
            .admit(&policy, 0, "192.0.2.9".parse().unwrap())
            .unwrap();
        assert!(permit.stressed, "80% is the default threshold");
        drop(held);
        drop(permit);
        let calm = state
            .admit(&policy, 0, "192.0.2.9".parse().unwrap())
            .unwrap();
        assert!(!calm.stressed);
    }
}
