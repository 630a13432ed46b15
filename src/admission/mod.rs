//! Admission: the decision taken for each connection before the backend is involved.
//!
//! A decision is a value. Static CIDR rules come first (first match wins, no DNS); otherwise the
//! DNS lists' weighted terms add up to a score, the score picks a class, and the class's action
//! decides. The verdict keeps every reason, for the log line and `mxgate explain`.

pub mod concurrency;
mod explain;
pub mod gate;
pub mod pregreet;
pub mod rate;
pub mod slots;

pub use explain::{lists_not_counted, log_fields, render, to_json};

use crate::policy::{Action, Policy};
use crate::reputation::dnsbl::lists::{DnsLists, Term, ZoneResult};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What to do with a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Relay to the backend under the limits of this class (an index into `Policy::classes`).
    Admit { class: usize },
    /// Answer with this 421 and close.
    Defer { class: usize, reply: String },
    /// Answer with this 554, then 503 to everything but QUIT.
    Reject { class: usize, reply: String },
}

impl Decision {
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Admit { .. } => "admit",
            Decision::Defer { .. } => "defer",
            Decision::Reject { .. } => "reject",
        }
    }

    pub fn class(&self) -> usize {
        match self {
            Decision::Admit { class }
            | Decision::Defer { class, .. }
            | Decision::Reject { class, .. } => *class,
        }
    }
}

/// The decision and every reason behind it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub ip: IpAddr,
    pub decision: Decision,
    pub score: i32,
    /// The static rule that matched (index into `Policy::rules`), if any: then no DNS was asked.
    pub rule: Option<usize>,
    pub dns: Vec<ZoneResult>,
    pub terms: Vec<Term>,
    /// The weight added because the client talked before the greeting was complete.
    pub early_talker: Option<i32>,
    pub elapsed: Duration,
}

impl Verdict {
    /// Adds the early-talker weight and decides again.
    pub fn with_early_talker(mut self, policy: &Policy, weight: i32) -> Verdict {
        self.early_talker = Some(weight);
        self.score += weight;
        let class = policy.class_for_score(self.score);
        self.decision = decision_for(policy, class, self.ip);
        self
    }
}

/// The static rule that covers `ip`, if any (first match wins).
pub fn matching_rule(policy: &Policy, ip: IpAddr) -> Option<usize> {
    let ip = crate::reputation::dnsbl::query::normalize(ip);
    policy.rules.iter().position(|r| r.net.contains(&ip))
}

/// Decides for a client at `ip`.
pub async fn assess(policy: &Policy, lists: &Arc<DnsLists>, ip: IpAddr) -> Verdict {
    let started = Instant::now();
    let ip = crate::reputation::dnsbl::query::normalize(ip);
    let rule = matching_rule(policy, ip);
    let (class, score, dns, terms) = match rule {
        Some(i) => (policy.rules[i].class, 0, Vec::new(), Vec::new()),
        None => {
            let dns = if lists.is_empty() {
                Vec::new()
            } else {
                lists.evaluate(ip).await
            };
            let terms = lists.terms(&dns);
            let score = terms.iter().map(|t| t.weight).sum();
            (policy.class_for_score(score), score, dns, terms)
        }
    };
    Verdict {
        ip,
        decision: decision_for(policy, class, ip),
        score,
        rule,
        dns,
        terms,
        early_talker: None,
        elapsed: started.elapsed(),
    }
}

/// The class's action as a decision, with the class's reply texts.
pub fn decision_for(policy: &Policy, class: usize, ip: IpAddr) -> Decision {
    let c = policy.class(class);
    let host = &policy.server.hostname;
    match c.action {
        Action::Admit => Decision::Admit { class },
        Action::Defer => Decision::Defer {
            class,
            reply: format!("421 4.7.0 {host} {}\r\n", c.defer_text),
        },
        Action::Reject => Decision::Reject {
            class,
            reply: format!(
                "554 5.7.1 {host} {}\r\n",
                c.reject_text.replace("{ip}", &ip.to_string())
            ),
        },
    }
}
