//! The SMTP session: codec and relay state machine (pure), and the driver that runs them over sockets.

pub mod body;
pub mod buffers;
pub mod codec;
pub mod data_end;
pub mod driver;
pub mod ehlo;
pub mod owed;
pub mod park;
pub mod quick_write;
pub mod refuse;
pub mod relay;
pub mod spin;
pub mod stop;
pub mod tls;
pub mod wait;
