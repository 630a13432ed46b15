//! DNS list query names (RFC 5782 2.1 and 2.4): reversed IPv4 octets, or 32 reversed IPv6 nibbles,
//! under the list's zone. IPv4-mapped IPv6 clients are looked up as the IPv4 address they are.

use std::fmt::Write;
use std::net::IpAddr;

/// The address a list should be asked about: IPv4-mapped IPv6 becomes IPv4.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The fully qualified name to query for `ip` in `zone` (zone without trailing dot).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let mut name = String::with_capacity(72 + zone.len());
    match normalize(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            let _ = write!(name, "{d}.{c}.{b}.{a}.");
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
        }
    }
    name.push_str(zone);
    name.push('.');
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let table = [
            ("192.0.2.99", "99.2.0.192.zen.spamhaus.org."),
            ("::ffff:192.0.2.99", "99.2.0.192.zen.spamhaus.org."),
            (
                "2001:db8:1:2:3:4:567:89ab",
                "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.zen.spamhaus.org.",
            ),
        ];
        for (ip, expected) in table {
            assert_eq!(
                query_name(ip.parse().unwrap(), "zen.spamhaus.org"),
                expected
            );
        }
    }
}
