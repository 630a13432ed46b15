//! Reputation: what mxgate knows about a sender before it has said a word. Today: DNS block and
//! allow lists.

pub mod dnsbl;
