//! What the senders were told, and the check that every promise held.

use mxgate_loadtest::sink::SessionRecord;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// What the senders were told, and what should never have happened to them.
#[derive(Default)]
pub struct Tally {
    pub told_accepted: HashMap<IpAddr, u32>,
    pub ends: BTreeMap<String, usize>,
    pub violations: Vec<String>,
}

/// No sender saw a broken promise, and every message one was told was accepted is in `records`,
/// under its address.
pub fn assert_kept(seed: u64, tally: &Tally, records: &[SessionRecord]) {
    assert!(
        tally.violations.is_empty(),
        "seed {seed}: {:#?}",
        tally.violations
    );
    let mut at_sink: HashMap<IpAddr, u32> = HashMap::new();
    for record in records {
        *at_sink.entry(record.client).or_default() += record.messages;
    }
    let lost: Vec<_> = tally
        .told_accepted
        .iter()
        .filter(|(ip, told)| at_sink.get(ip).copied().unwrap_or(0) < **told)
        .collect();
    let told: u32 = tally.told_accepted.values().sum();
    let delivered: u32 = at_sink.values().sum();
    println!("soak: {told} messages told accepted, {delivered} at the sinks");
    assert!(told > 1, "seed {seed}: nothing was delivered in the soak");
    assert!(
        lost.is_empty(),
        "seed {seed}: accepted, not at the sink: {lost:?}"
    );
}
