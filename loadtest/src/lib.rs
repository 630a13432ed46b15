//! mxgate's test peers and load harness: the sink MTA, an SMTP client, and the demo.
//!
//! The crate stands apart from mxgate itself (it runs the `mxgate` binary; it does not link it), so
//! that what it measures is what operators run.
#![forbid(unsafe_code)]

pub mod child;
pub mod client;
pub mod demo;
pub mod demo_checks;
pub mod dnsbl;
pub mod harness;
pub mod plot;
pub mod population;
pub mod refusals;
pub mod report;
pub mod scenario;
pub mod scrape;
pub mod sink;
pub mod stats;
pub mod throughput;
