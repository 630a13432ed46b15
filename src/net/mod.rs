//! Sockets: the listeners that accept clients, the client's address in canonical form, the
//! connection to the backend MTA (plain or TLS) and the exchange that sets it up, the way a client
//! connection's last reply is sent, and what to do when descriptors run out.

pub mod backend;
pub mod backend_exchange;
pub mod backend_tls;
pub mod client_address;
pub mod descriptors;
pub mod last_reply;
