//! Sockets: the listeners that accept clients, the connection to the backend MTA, and the way a
//! client connection's last reply is sent.

pub mod backend;
pub mod last_reply;
