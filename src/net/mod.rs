//! Sockets: the listeners that accept clients and the connection to the backend MTA.

pub mod backend;
