//! The client's address in the one form mxgate logs, decides on and announces to the backend: an
//! IPv4 client that reached an IPv6 socket (`::ffff:a.b.c.d`) is written as IPv4.

use std::net::{IpAddr, SocketAddr};

/// The client as mxgate and the backend should see it. IPv4-mapped IPv6 addresses are written as
/// IPv4; every other address is left as it is.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;
    use std::net::SocketAddr;

    #[test]
    fn only_mapped_addresses_change() {
        let cases = [
            ("[::ffff:127.0.0.9]:4000", "127.0.0.9:4000"),
            ("127.0.0.9:4000", "127.0.0.9:4000"),
            ("[2001:db8::1]:25", "[2001:db8::1]:25"),
            // IPv4-compatible (deprecated, ::a.b.c.d) is not mapped: it stays IPv6.
            ("[::127.0.0.9]:25", "[::7f00:9]:25"),
            ("[::1]:25", "[::1]:25"),
        ];
        for (given, expected) in cases {
            let given: SocketAddr = given.parse().unwrap();
            let expected: SocketAddr = expected.parse().unwrap();
            assert_eq!(canonical(given), expected, "{given}");
        }
    }
}
