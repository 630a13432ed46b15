//! Admission: the decision taken for each connection before the backend is involved.
//!
//! A decision is a value. Until reputation scoring lands, every client is in the policy's default
//! class, and the class's action decides.

use crate::policy::{Action, Policy};
use std::net::IpAddr;

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

/// Decides for a client at `ip`.
pub fn decide(policy: &Policy, ip: IpAddr) -> Decision {
    let class = policy.default_class;
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
