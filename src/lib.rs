//! mxgate: an inbound SMTP admission controller, a front proxy on port 25 before an unmodified MTA.
//!
//! Data flows one way:
//!
//! ```text
//! server (listener) -> admission::decide -> session::driver (relay state machine) -> backend MTA
//! ```
//!
//! - [`policy`] loads, validates and lints the TOML policy (or the embedded default).
//! - [`live`] holds the policy in force and swaps it atomically on reload.
//! - [`server`] accepts connections, asks [`admission`] for a decision, and runs one task per session.
//! - [`session`] holds the pure SMTP codec and relay state machine, and the driver that runs them over
//!   sockets, with STARTTLS terminated by rustls.
//! - [`net`] connects the backend and announces the client (PROXY v1/v2, XCLIENT).
//! - [`telemetry`] names the metrics and serves them on the admin address.
//! - [`scheduling`] puts the worker threads in the scheduling policy the policy names.
#![forbid(unsafe_code)]

pub mod admission;
pub mod live;
pub mod net;
pub mod policy;
pub mod reputation;
pub mod scheduling;
pub mod server;
pub mod session;
pub mod telemetry;
