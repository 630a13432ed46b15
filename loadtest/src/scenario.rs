//! Scenario files (`loadtest/scenarios/*.toml`): sender populations, their DNS-list status and
//! behaviour, the policy mxgate runs, and how long the load lasts. Parsing and checks only.

use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Populations get 127.(FIRST_NET + index).0.0/16: far from the demo's 127.0.x addresses.
const FIRST_NET: u8 = 20;
/// Addresses per population (a /16, .1 to .250 in each /24).
pub const MAX_ADDRESSES: usize = 250 * 256;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Mail is offered for this long.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Then senders may retry what is still queued for this long; the rest is undelivered.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain: Duration,
    #[serde(default)]
    pub gate: GateSection,
    #[serde(rename = "population")]
    pub populations: Vec<Population>,
    /// The directory relative paths are resolved from (the scenario file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_drain() -> Duration {
    Duration::from_secs(10)
}

/// The mxgate under test.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSection {
    /// Policy file, relative to the scenario; default: mxgate's embedded default policy.
    pub policy: Option<PathBuf>,
    /// Use an mxgate already running here instead of starting one. It must relay to `sink`, use
    /// the harness's DNS server (`dns`) as its resolver, and send PROXY v2.
    pub attach: Option<SocketAddr>,
    /// Its admin API, scraped for metrics (started mxgates always have one).
    pub admin: Option<SocketAddr>,
    /// Where the sink listens when attaching (default: an ephemeral port).
    pub sink: Option<SocketAddr>,
    /// Where the DNS list server listens when attaching (default: an ephemeral port).
    pub dns: Option<SocketAddr>,
}

/// How a population's connections behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A sending MTA: queues mail, connects, delivers, retries after 4xx.
    #[default]
    Mta,
    /// Connects and says nothing until the server closes the connection (slowloris).
    Silent,
}

/// DNS-list status of a population's addresses, served by the harness's DNS server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listing {
    Sbl,
    Css,
    Xbl,
    Pbl,
    Dnswl,
}

impl Listing {
    /// The zone and the answer that list it.
    pub fn zone_and_code(self) -> (&'static str, Ipv4Addr) {
        match self {
            Listing::Sbl => ("zen.spamhaus.org", Ipv4Addr::new(127, 0, 0, 2)),
            Listing::Css => ("zen.spamhaus.org", Ipv4Addr::new(127, 0, 0, 3)),
            Listing::Xbl => ("zen.spamhaus.org", Ipv4Addr::new(127, 0, 0, 4)),
            Listing::Pbl => ("zen.spamhaus.org", Ipv4Addr::new(127, 0, 0, 10)),
            Listing::Dnswl => ("list.dnswl.org", Ipv4Addr::new(127, 0, 15, 2)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Population {
    pub name: String,
    /// Distinct source addresses (127.x.y.z, bound per connection).
    pub addresses: usize,
    #[serde(default)]
    pub kind: Kind,
    #[serde(default)]
    pub listed: Vec<Listing>,
    /// Counted in the "good mail" figures; default: listed on no block list.
    pub good: Option<bool>,
    /// Messages offered per second by the whole population ("20/s", "600/m"); silent ones: none.
    #[serde(default)]
    pub rate: Option<String>,
    /// Concurrent connections per address.
    #[serde(default = "one")]
    pub connections_per_address: usize,
    /// Messages a sender puts in one connection at most.
    #[serde(default = "one")]
    pub messages_per_connection: usize,
    #[serde(default = "one")]
    pub recipients: usize,
    /// Body size in bytes.
    #[serde(default = "default_size")]
    pub size: usize,
    /// Retry after a 4xx, like a real MTA; else the message counts as deferred for good.
    #[serde(default = "yes")]
    pub retry: bool,
    /// First retry delay, doubled per attempt up to `max_backoff`.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long an open session waits for more mail before QUIT (Postfix's connection cache keeps
    /// a session 2 s); only for senders with more than one message per connection.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Send EHLO before the greeting (what pregreet catches).
    #[serde(default)]
    pub early_talker: bool,
    /// Send at most `LIMITS MAILMAX` messages per connection when the server advertises it;
    /// otherwise keep sending and get cut off with 421.
    #[serde(default = "yes")]
    pub respect_limits: bool,
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_size() -> usize {
    2048
}
fn default_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_linger() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(8)
}

impl Population {
    /// Whether its mail counts as wanted mail.
    pub fn is_good(&self) -> bool {
        self.good
            .unwrap_or_else(|| !self.listed.iter().any(|l| !matches!(l, Listing::Dnswl)))
    }

    /// Messages per second offered (0 for silent populations).
    pub fn messages_per_second(&self) -> f64 {
        self.rate
            .as_deref()
            .and_then(|r| parse_rate(r).ok())
            .unwrap_or(0.0)
    }

    /// The `k`-th source address of population `index`.
    pub fn address(index: usize, k: usize) -> IpAddr {
        let net = FIRST_NET.saturating_add(index as u8);
        IpAddr::V4(Ipv4Addr::new(
            127,
            net,
            (k / 250) as u8,
            (k % 250) as u8 + 1,
        ))
    }

    /// The network all addresses of population `index` are in.
    pub fn network(index: usize) -> String {
        format!("127.{}.0.0/16", FIRST_NET.saturating_add(index as u8))
    }

    /// Which population an address belongs to.
    pub fn index_of(ip: IpAddr) -> Option<usize> {
        match ip {
            IpAddr::V4(v4) if v4.octets()[0] == 127 && v4.octets()[1] >= FIRST_NET => {
                Some(usize::from(v4.octets()[1] - FIRST_NET))
            }
            _ => None,
        }
    }
}

/// "20/s", "600/m", "3600/h" as events per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let bad = || format!("rate {text:?} must look like \"20/s\", \"600/m\" or \"3600/h\"");
    let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: f64 = count.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    if !(count.is_finite() && count >= 0.0) {
        return Err(bad());
    }
    Ok(count / per)
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut scenario = Scenario::parse(&path.display().to_string(), &text)?;
        scenario.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(scenario)
    }

    /// Parses and checks scenario text; errors say where (line:col) and what.
    pub fn parse(origin: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let invalid = |message: String| ScenarioError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let scenario: Scenario = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("{line}:{col}: ")
                })
                .unwrap_or_default();
            invalid(format!("{at}{}", e.message().trim_end()))
        })?;
        if scenario.populations.is_empty() {
            return Err(invalid("define at least one [[population]]".into()));
        }
        if scenario.populations.len() > usize::from(255 - FIRST_NET) {
            return Err(invalid("too many populations".into()));
        }
        if scenario.duration.is_zero() || scenario.duration > Duration::from_secs(3600) {
            return Err(invalid("duration must be between 1s and 1h".into()));
        }
        for p in &scenario.populations {
            let what = |m: &str| invalid(format!("population {:?}: {m}", p.name));
            if p.addresses == 0 || p.addresses > MAX_ADDRESSES {
                return Err(what(&format!("addresses must be 1..={MAX_ADDRESSES}")));
            }
            if p.connections_per_address == 0 || p.messages_per_connection == 0 || p.recipients == 0
            {
                return Err(what(
                    "connections_per_address, messages_per_connection and recipients must be at least 1",
                ));
            }
            match (p.kind, &p.rate) {
                (Kind::Mta, None) => return Err(what("a sending population needs a rate")),
                (Kind::Mta, Some(rate)) => {
                    parse_rate(rate).map_err(|e| what(&e))?;
                }
                (Kind::Silent, Some(_)) => {
                    return Err(what("a silent population sends nothing: remove its rate"))
                }
                (Kind::Silent, None) => {}
            }
            if p.backoff.is_zero() || p.max_backoff < p.backoff {
                return Err(what("backoff must be above 0 and at most max_backoff"));
            }
        }
        let mut names: Vec<&str> = scenario
            .populations
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("population names must be unique".into()));
        }
        Ok(scenario)
    }

    /// Messages the scenario offers in all (bounded by rate x duration).
    pub fn messages_offered(&self, population: &Population) -> u64 {
        (population.messages_per_second() * self.duration.as_secs_f64()).round() as u64
    }

    /// The policy file, resolved against the scenario's directory.
    pub fn policy_path(&self) -> Option<PathBuf> {
        self.gate.policy.as_ref().map(|p| self.base_dir.join(p))
    }
}

/// Durations written "20s", "500ms", "1m".
mod humantime_serde {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
name = "small"
duration = "5s"
[[population]]
name = "people"
addresses = 10
rate = "4/s"
[[population]]
name = "bots"
addresses = 300
listed = ["pbl", "xbl"]
rate = "600/m"
backoff = "100ms"
respect_limits = false
[[population]]
name = "idle"
kind = "silent"
addresses = 2
connections_per_address = 3
"#;

    #[test]
    fn parses_populations_with_defaults() {
        let s = Scenario::parse("small", SMALL).unwrap();
        assert_eq!(s.drain, Duration::from_secs(10));
        let [people, bots, idle] = &s.populations[..] else {
            panic!("three populations")
        };
        assert!(people.is_good() && !bots.is_good() && idle.is_good());
        assert_eq!(people.messages_per_connection, 1);
        assert!(people.retry && people.respect_limits && !bots.respect_limits);
        assert_eq!(bots.backoff, Duration::from_millis(100));
        assert_eq!(s.messages_offered(people), 20);
        assert_eq!(s.messages_offered(bots), 50);
        assert_eq!(s.messages_offered(idle), 0);
        assert_eq!(idle.kind, Kind::Silent);
    }

    #[test]
    fn addresses_map_back_to_their_population() {
        let a = Population::address(1, 299);
        assert_eq!(a, "127.21.1.50".parse::<IpAddr>().unwrap());
        assert_eq!(Population::index_of(a), Some(1));
        assert_eq!(Population::index_of("127.0.0.1".parse().unwrap()), None);
        let last = Population::address(0, MAX_ADDRESSES - 1);
        assert_eq!(last, "127.20.255.250".parse::<IpAddr>().unwrap());
        assert_eq!(Population::network(2), "127.22.0.0/16");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("6/s"), Ok(6.0));
        assert_eq!(parse_rate("600/m"), Ok(10.0));
        assert_eq!(parse_rate("3600/h"), Ok(1.0));
        assert!(parse_rate("6").is_err());
        assert!(parse_rate("6/d").is_err());
        assert!(parse_rate("-1/s").is_err());
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (
                SMALL.replace("addresses = 10", "addresses = 0"),
                "population \"people\": addresses",
            ),
            (
                SMALL.replace("rate = \"4/s\"", "rate = \"fast\""),
                "population \"people\": rate \"fast\"",
            ),
            (
                SMALL.replace("addresses = 2\n", "addresses = 2\nrate = \"1/s\"\n"),
                "silent population",
            ),
            (
                SMALL.replace("name = \"bots\"", "name = \"people\""),
                "unique",
            ),
            (
                SMALL.replace("listed = [\"pbl\", \"xbl\"]", "listed = [\"pbx\"]"),
                "small: 11:11: unknown variant `pbx`",
            ),
            (
                SMALL.replace("duration = \"5s\"", "duration = \"5 parsecs\""),
                "invalid duration",
            ),
            (
                SMALL.replace("addresses = 10", "adresses = 10"),
                "unknown field `adresses`",
            ),
        ];
        for (text, expected) in cases {
            let err = Scenario::parse("small", &text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}\nwant: {expected}");
        }
    }
}
