//! A DNS list server for tests, the demo and the harness, on hickory-server: serves zones loaded
//! from rbldnsd-style ip4set data on a loopback UDP port, counts the queries it receives, and can be
//! told to misbehave (never answer, SERVFAIL) to test how mxgate copes.
//!
//! Zone data, one entry per line (rbldnsd's ip4set, extended to IPv6 networks):
//!
//! ```text
//! # comment
//! :127.0.0.4:default text        sets the answer for the entries that follow
//! 192.0.2.0/24                   listed with the current default answer
//! 198.51.100.7 :127.0.0.10:PBL   listed with its own answer
//! 2001:db8::/64 :127.0.0.2       IPv6 network
//! ```
//!
//! An address inside several entries gets all their answers (as Spamhaus ZEN does).

use hickory_proto::op::{Metadata, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// How a zone answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Normal,
    /// Drops every query: a list that never answers.
    Silent,
    /// Answers SERVFAIL to everything.
    ServFail,
}

/// One zone: entries, answer TTL, behaviour.
#[derive(Debug, Clone)]
pub struct Zone {
    entries: Vec<(IpAddr, u8, Ipv4Addr)>,
    pub ttl: u32,
    pub behaviour: Behaviour,
}

impl Zone {
    /// Parses ip4set-style data; errors name the line.
    pub fn parse(data: &str) -> Result<Zone, String> {
        let mut entries = Vec::new();
        let mut default = Ipv4Addr::new(127, 0, 0, 2);
        for (n, raw) in data.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |what: &str| format!("line {}: {what}: {raw:?}", n + 1);
            if let Some(rest) = line.strip_prefix(':') {
                let code = rest.split(':').next().unwrap_or("");
                default = code
                    .parse()
                    .map_err(|_| bad("default answer is not an IPv4 address"))?;
                continue;
            }
            let mut parts = line.split_whitespace();
            let net = parts.next().unwrap_or("");
            let code = match parts.next() {
                Some(value) => value
                    .trim_start_matches(':')
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .parse()
                    .map_err(|_| bad("answer is not an IPv4 address"))?,
                None => default,
            };
            let (addr, prefix) = match net.split_once('/') {
                Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad("bad prefix length"))?),
                None => (net, if net.contains(':') { 128 } else { 32 }),
            };
            let addr: IpAddr = addr.parse().map_err(|_| bad("not an address or network"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                return Err(bad("prefix longer than the address"));
            }
            entries.push((addr, prefix, code));
        }
        Ok(Zone {
            entries,
            ttl: 300,
            behaviour: Behaviour::Normal,
        })
    }

    /// The answers for `ip`, most specific entry first.
    pub fn answers(&self, ip: IpAddr) -> Vec<Ipv4Addr> {
        let mut matches: Vec<(u8, Ipv4Addr)> = self
            .entries
            .iter()
            .filter(|(net, prefix, _)| contains(*net, *prefix, ip))
            .map(|(_, prefix, code)| (*prefix, *code))
            .collect();
        matches.sort_by_key(|m| std::cmp::Reverse(m.0));
        let mut codes: Vec<Ipv4Addr> = Vec::new();
        for (_, code) in matches {
            if !codes.contains(&code) {
                codes.push(code);
            }
        }
        codes
    }
}

fn contains(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// Reads the client address out of a query name under `zone` (reversed octets or nibbles).
fn client_of(labels: &str) -> Option<IpAddr> {
    let parts: Vec<&str> = labels.split('.').collect();
    match parts.len() {
        4 => {
            let mut octets = [0u8; 4];
            for (slot, part) in octets.iter_mut().zip(parts.iter().rev()) {
                *slot = part.parse().ok()?;
            }
            Some(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        32 => {
            let mut value: u128 = 0;
            for part in parts.iter().rev() {
                value = (value << 4) | u128::from(u8::from_str_radix(part, 16).ok()?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(value)))
        }
        _ => None,
    }
}

struct Handler {
    zones: Arc<RwLock<HashMap<String, Zone>>>,
    queries: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let builder = MessageResponseBuilder::from_message_request(request);
        let Some(query) = request.queries.queries().first() else {
            let msg = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return response
                .send_response(msg)
                .await
                .unwrap_or_else(|_| error_info(request));
        };
        let name = query.name().to_string().to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        let found = {
            let zones = self.zones.read().unwrap_or_else(|p| p.into_inner());
            zones.iter().find_map(|(zone, data)| {
                name.strip_suffix(zone.as_str())
                    .and_then(|rest| rest.strip_suffix('.'))
                    .map(|labels| {
                        (
                            data.behaviour,
                            data.ttl,
                            client_of(labels)
                                .map(|ip| data.answers(ip))
                                .unwrap_or_default(),
                        )
                    })
            })
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let (behaviour, ttl, codes) = match found {
            Some(found) => found,
            None => {
                let msg = builder.error_msg(&request.metadata, ResponseCode::Refused);
                return response
                    .send_response(msg)
                    .await
                    .unwrap_or_else(|_| error_info(request));
            }
        };
        match behaviour {
            // Never answering: the resolver times out. The caller's deadline bounds the wait.
            Behaviour::Silent => return error_info(request),
            Behaviour::ServFail => {
                let msg = builder.error_msg(&request.metadata, ResponseCode::ServFail);
                return response
                    .send_response(msg)
                    .await
                    .unwrap_or_else(|_| error_info(request));
            }
            Behaviour::Normal => {}
        }
        let records: Vec<Record> = if query.query_type() == RecordType::A {
            codes
                .iter()
                .map(|code| Record::from_rdata(query.name().into(), ttl, RData::A(A(*code))))
                .collect()
        } else {
            Vec::new()
        };
        if codes.is_empty() {
            metadata.response_code = ResponseCode::NXDomain;
        }
        let msg = builder.build(
            metadata,
            records.iter(),
            None.iter(),
            None.iter(),
            None.iter(),
        );
        response
            .send_response(msg)
            .await
            .unwrap_or_else(|_| error_info(request))
    }
}

fn error_info(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    hickory_proto::op::Header {
        metadata,
        counts: Default::default(),
    }
    .into()
}

/// A running DNS list server on a loopback UDP port.
pub struct DnsblServer {
    addr: SocketAddr,
    zones: Arc<RwLock<HashMap<String, Zone>>>,
    queries: Arc<AtomicU64>,
    server: hickory_server::Server<Handler>,
}

impl DnsblServer {
    /// Serves `zones` (name → data) on `127.0.0.1:0`.
    pub async fn start(zones: Vec<(&str, Zone)>) -> io::Result<DnsblServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), zones).await
    }

    pub async fn start_on(listen: SocketAddr, zones: Vec<(&str, Zone)>) -> io::Result<DnsblServer> {
        let zones: HashMap<String, Zone> = zones
            .into_iter()
            .map(|(name, zone)| (name.trim_end_matches('.').to_ascii_lowercase(), zone))
            .collect();
        let zones = Arc::new(RwLock::new(zones));
        let queries = Arc::new(AtomicU64::new(0));
        let socket = tokio::net::UdpSocket::bind(listen).await?;
        let addr = socket.local_addr()?;
        let mut server = hickory_server::Server::new(Handler {
            zones: zones.clone(),
            queries: queries.clone(),
        });
        server.register_socket(socket);
        Ok(DnsblServer {
            addr,
            zones,
            queries,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received so far, all zones.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Changes how a zone answers from now on.
    pub fn set_behaviour(&self, zone: &str, behaviour: Behaviour) {
        let mut zones = self.zones.write().unwrap_or_else(|p| p.into_inner());
        if let Some(z) = zones.get_mut(zone) {
            z.behaviour = behaviour;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }
}

/// Test zones modelled on Spamhaus ZEN and DNSWL, with RFC 5782 test entries, used by the demo and
/// the tests: 127.0.0.2 listed everywhere; 127.0.1.x addresses listed by kind.
pub fn demo_zones() -> Vec<(&'static str, Zone)> {
    let zen = Zone::parse(
        "# RFC 5782 test entry\n127.0.0.2 :127.0.0.2:SBL test\n\
         127.0.1.2 :127.0.0.2:SBL\n127.0.1.3 :127.0.0.3:CSS\n127.0.1.4 :127.0.0.4:XBL\n\
         127.0.1.10 :127.0.0.10:PBL\n127.0.1.11 :127.0.0.11:PBL\n\
         127.0.1.14 :127.0.0.4:XBL\n127.0.1.14 :127.0.0.10:PBL\n\
         2001:db8:bad::/48 :127.0.0.2:SBL v6\n",
    )
    .unwrap_or_else(|e| panic!("built-in zone: {e}"));
    let dnswl = Zone::parse("127.0.0.2 :127.0.10.0:test\n127.0.2.1 :127.0.15.2:DNSWL medium\n127.0.2.2 :127.0.15.3:DNSWL high\n")
        .unwrap_or_else(|e| panic!("built-in zone: {e}"));
    vec![("zen.spamhaus.org", zen), ("list.dnswl.org", dnswl)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_data() {
        let zone = Zone::parse(":127.0.0.4:XBL\n192.0.2.0/24\n192.0.2.7 :127.0.0.10:PBL\n2001:db8::/64 :127.0.0.2\n# x\n").unwrap();
        assert_eq!(
            zone.answers("192.0.2.7".parse().unwrap()),
            vec![Ipv4Addr::new(127, 0, 0, 10), Ipv4Addr::new(127, 0, 0, 4)]
        );
        assert_eq!(
            zone.answers("192.0.2.8".parse().unwrap()),
            vec![Ipv4Addr::new(127, 0, 0, 4)]
        );
        assert!(zone.answers("192.0.3.1".parse().unwrap()).is_empty());
        assert_eq!(
            zone.answers("2001:db8::5".parse().unwrap()),
            vec![Ipv4Addr::new(127, 0, 0, 2)]
        );
        assert!(Zone::parse("192.0.2.0/33").is_err());
        assert!(Zone::parse("not-an-ip").is_err());
    }

    #[test]
    fn names_to_clients() {
        assert_eq!(client_of("7.2.0.192"), Some("192.0.2.7".parse().unwrap()));
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2";
        assert_eq!(client_of(v6), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(client_of("1.2.3"), None);
    }
}
