//! The one place mxgate talks DNS: A-record lookups of DNS list names through hickory-resolver,
//! behind the `DnsLookup` trait so that tests can put anything in its place.
//!
//! An answer is a value, never an error: listed (with its codes), not listed, or failed. What a
//! failure means for scoring is decided elsewhere; here it is only classified.

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

/// What one query returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A records (the list's return codes) and the smallest TTL among them.
    Records { codes: Vec<Ipv4Addr>, ttl: Duration },
    /// NXDOMAIN or no A record: not listed; TTL from the SOA when there is one.
    NotListed { ttl: Option<Duration> },
    /// No usable answer.
    Failed(Failure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    ServFail,
    Refused,
    Other,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::ServFail => "servfail",
            Failure::Refused => "refused",
            Failure::Other => "error",
        }
    }
}

pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;

/// A-record lookups. Implementations must finish within `deadline` of being polled.
pub trait DnsLookup: Send + Sync + 'static {
    fn lookup_a(&self, name: String, deadline: Duration) -> LookupFuture<'_>;
}

/// For a policy without DNS lists: never asked, answers failure if it is.
pub struct NoLookup;

impl DnsLookup for NoLookup {
    fn lookup_a(&self, _name: String, _deadline: Duration) -> LookupFuture<'_> {
        Box::pin(async { Answer::Failed(Failure::Other) })
    }
}

/// Lookups through hickory-resolver, at the policy's resolver or the system's.
pub struct HickoryLookup {
    resolver: TokioResolver,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver: {0}")]
pub struct ResolverError(String);

impl HickoryLookup {
    /// `server`: the resolver to ask (e.g. a local unbound on 127.0.0.1:53); `None`: /etc/resolv.conf.
    pub fn new(server: Option<SocketAddr>) -> Result<Self, ResolverError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut ns.connections {
                    connection.port = addr.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    provider,
                )
            }
            None => TokioResolver::builder(provider).map_err(|e| ResolverError(e.to_string()))?,
        };
        let options = builder.options_mut();
        // mxgate keeps its own cache (TTL bounds, single flight, explainable); hickory's would hide
        // expiry from it. One try: the budget, not retries, bounds the wait.
        options.cache_size = 0;
        options.attempts = 1;
        options.ndots = 0;
        let resolver = builder.build().map_err(|e| ResolverError(e.to_string()))?;
        Ok(Self { resolver })
    }
}

impl DnsLookup for HickoryLookup {
    fn lookup_a(&self, name: String, deadline: Duration) -> LookupFuture<'_> {
        Box::pin(async move {
            match tokio::time::timeout(deadline, self.resolver.lookup(name.as_str(), RecordType::A))
                .await
            {
                Err(_) => Answer::Failed(Failure::Timeout),
                Ok(Ok(lookup)) => {
                    let mut codes = Vec::new();
                    let mut ttl = u32::MAX;
                    for record in lookup.answers() {
                        if let RData::A(a) = &record.data {
                            codes.push(a.0);
                            ttl = ttl.min(record.ttl);
                        }
                    }
                    if codes.is_empty() {
                        Answer::NotListed { ttl: None }
                    } else {
                        Answer::Records {
                            codes,
                            ttl: Duration::from_secs(u64::from(ttl)),
                        }
                    }
                }
                Ok(Err(e)) => classify(&e),
            }
        })
    }
}

fn classify(e: &NetError) -> Answer {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no)) => Answer::NotListed {
            ttl: no.negative_ttl.map(|t| Duration::from_secs(u64::from(t))),
        },
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => {
            Answer::Failed(Failure::ServFail)
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => {
            Answer::Failed(Failure::Refused)
        }
        NetError::Timeout => Answer::Failed(Failure::Timeout),
        _ => Answer::Failed(Failure::Other),
    }
}
