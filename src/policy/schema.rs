//! The policy file as written: serde structures that mirror the TOML, defaults included.
//!
//! Nothing here is trusted yet; `validate` turns a `PolicyFile` into the `Policy` the server runs.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub server: ServerSection,
    pub backend: BackendSection,
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub session: SessionSection,
    #[serde(default)]
    pub dns: DnsSection,
    #[serde(default)]
    pub pregreet: PregreetSection,
    #[serde(default)]
    pub admission: AdmissionSection,
    /// Static CIDR rules, first match wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSection>,
    #[serde(rename = "class")]
    pub classes: Vec<ClassSection>,
}

/// The slot pool and the limits per client address and network prefix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionSection {
    /// Sessions the backend can hold at once (Postfix: default_process_limit, 100).
    #[serde(default = "default_slots")]
    pub slots: usize,
    #[serde(default = "default_prefix_v4")]
    pub prefix_v4: u8,
    #[serde(default = "default_prefix_v6")]
    pub prefix_v6: u8,
    /// Concurrent sessions per prefix; 0: no limit.
    #[serde(default)]
    pub connections_per_prefix: usize,
    /// New connections per client address ("30/m"); none: no limit.
    pub connection_rate_per_ip: Option<Spanned<String>>,
    /// New connections per prefix; none: no limit.
    pub connection_rate_per_prefix: Option<Spanned<String>>,
    /// Addresses (and prefixes) whose rates are tracked at most; idle ones are pruned every minute.
    #[serde(default = "default_max_tracked")]
    pub max_tracked_addresses: usize,
    /// Occupancy (0..1) above which new sessions get the stress limits.
    #[serde(default = "default_stress_threshold")]
    pub stress_threshold: Spanned<f64>,
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub stress_idle_timeout: Duration,
    #[serde(default = "default_stress_messages")]
    pub stress_messages_per_session: u32,
}

impl Default for AdmissionSection {
    fn default() -> Self {
        Self {
            slots: default_slots(),
            prefix_v4: default_prefix_v4(),
            prefix_v6: default_prefix_v6(),
            connections_per_prefix: 0,
            connection_rate_per_ip: None,
            connection_rate_per_prefix: None,
            max_tracked_addresses: default_max_tracked(),
            stress_threshold: default_stress_threshold(),
            stress_idle_timeout: secs::<30>(),
            stress_messages_per_session: default_stress_messages(),
        }
    }
}

fn default_slots() -> usize {
    100
}
fn default_prefix_v4() -> u8 {
    24
}
fn default_prefix_v6() -> u8 {
    64
}
fn default_max_tracked() -> usize {
    100_000
}
fn default_stress_threshold() -> Spanned<f64> {
    Spanned::new(0..0, 0.8)
}
fn default_stress_messages() -> u32 {
    3
}

/// The early-talker test (postscreen's pregreet): off by default, since it delays every greeting.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PregreetSection {
    #[serde(default)]
    pub enabled: bool,
    /// How long mxgate waits after its `220-` teaser before it lets the greeting finish.
    #[serde(default = "secs::<2>", with = "humantime_serde")]
    pub delay: Duration,
    /// Added to the score of a client that speaks before the greeting is complete.
    #[serde(default = "default_pregreet_weight")]
    pub weight: i32,
}

impl Default for PregreetSection {
    fn default() -> Self {
        Self {
            enabled: false,
            delay: secs::<2>(),
            weight: default_pregreet_weight(),
        }
    }
}

fn default_pregreet_weight() -> i32 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// The recursive resolver to ask ("ip:port"); default: the system's (/etc/resolv.conf).
    pub resolver: Option<SocketAddr>,
    /// Longest a decision waits for the DNS lists.
    #[serde(default = "millis::<500>", with = "humantime_serde")]
    pub budget: Duration,
    /// Longest one query may run; past the budget it still fills the cache.
    #[serde(default = "secs::<5>", with = "humantime_serde")]
    pub query_timeout: Duration,
    #[serde(default = "secs::<60>", with = "humantime_serde")]
    pub cache_min_ttl: Duration,
    #[serde(default = "secs::<3600>", with = "humantime_serde")]
    pub cache_max_ttl: Duration,
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    #[serde(default = "secs::<300>", with = "humantime_serde")]
    pub self_test_interval: Duration,
    /// postscreen_dnsbl_sites form: "zone[=filter][*weight]".
    #[serde(default)]
    pub sites: Vec<Spanned<String>>,
    #[serde(default, rename = "list")]
    pub lists: Vec<ListSection>,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            resolver: None,
            budget: millis::<500>(),
            query_timeout: secs::<5>(),
            cache_min_ttl: secs::<60>(),
            cache_max_ttl: secs::<3600>(),
            cache_entries: default_cache_entries(),
            self_test_interval: secs::<300>(),
            sites: Vec::new(),
            lists: Vec::new(),
        }
    }
}

fn default_cache_entries() -> usize {
    100_000
}
fn micros<const N: u64>() -> Duration {
    Duration::from_micros(N)
}
fn millis<const N: u64>() -> Duration {
    Duration::from_millis(N)
}

/// One weighted DNS list entry as a table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSection {
    pub zone: Spanned<String>,
    /// Return codes that count: one filter or several ("127.0.0.[10;11]"); default: any.
    pub codes: Option<Spanned<Codes>>,
    #[serde(default = "one")]
    pub weight: i32,
    /// Name in logs and explain ("SBL", "PBL", "DNSWL").
    pub name: Option<String>,
}

fn one() -> i32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Codes {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Straight to the rule's class (default: the first, best class), no DNS lookups.
    Allow,
    /// Straight to the rule's class (default: the last, worst class), no DNS lookups.
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    pub cidr: Spanned<ipnet::IpNet>,
    pub action: RuleAction,
    pub class: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// The name mxgate gives in its own replies (`421 4.7.0 <hostname> ...`).
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin API requires (`Authorization: Bearer <token>`), written here...
    pub admin_token: Option<String>,
    /// ...or read from this file (first line), which keeps it out of a world-readable policy.
    pub admin_token_file: Option<Spanned<PathBuf>>,
    /// Worker threads, each with its own runtime and listening sockets; default: one per core.
    pub workers: Option<usize>,
    /// How long a worker with nothing to run polls for new events before it sleeps, while that
    /// catches events often enough (src/session/spin.rs); "0s" turns it off.
    #[serde(default = "micros::<20>", with = "humantime_serde")]
    pub spin_before_sleep: Duration,
    /// The Linux scheduling policy of the worker threads (src/scheduling.rs).
    #[serde(default)]
    pub scheduling: Scheduling,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            hostname: default_hostname(),
            listen: default_listen(),
            admin: None,
            admin_token: None,
            admin_token_file: None,
            workers: None,
            spin_before_sleep: micros::<20>(),
            scheduling: Scheduling::default(),
        }
    }
}

fn default_hostname() -> String {
    "localhost".to_owned()
}
fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 2525))]
}

/// The Linux scheduling policy of the worker threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduling {
    /// `SCHED_BATCH`: a woken worker does not preempt the task running on its core.
    #[default]
    Batch,
    /// `SCHED_OTHER`, the kernel's default: a woken worker may preempt it.
    Normal,
}

impl Scheduling {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduling::Batch => "batch",
            Scheduling::Normal => "normal",
        }
    }
}

/// How the backend learns the real client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientAddressMode {
    /// Nothing: the backend sees mxgate's address.
    None,
    /// PROXY protocol version 1 (text).
    V1,
    /// PROXY protocol version 2 (binary).
    V2,
    /// Postfix's XCLIENT command, after the backend's greeting.
    Xclient,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    pub address: SocketAddr,
    #[serde(default = "default_client_address")]
    pub client_address: ClientAddressMode,
    #[serde(default = "secs::<10>", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long mxgate waits for the backend's reply to a command (RFC 5321 4.5.3.2: 5 minutes).
    #[serde(default = "secs::<300>", with = "humantime_serde")]
    pub reply_timeout: Duration,
    /// How long mxgate waits for the backend's reply to the end of DATA (RFC 5321 4.5.3.2.6: 10 minutes).
    #[serde(default = "secs::<600>", with = "humantime_serde")]
    pub data_reply_timeout: Duration,
    /// TLS on the hop to the backend; plain when absent.
    pub tls: Option<BackendTlsSection>,
}

/// How mxgate starts TLS towards the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendTlsMode {
    /// STARTTLS after the backend's greeting and mxgate's EHLO (RFC 3207).
    Starttls,
    /// TLS from the first byte after the PROXY header (Postfix: `smtpd_tls_wrappermode = yes`).
    Implicit,
}

impl BackendTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendTlsMode::Starttls => "starttls",
            BackendTlsMode::Implicit => "implicit",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsSection {
    pub mode: BackendTlsMode,
    /// PEM file with the certificates that may sign the backend's certificate.
    pub ca: Spanned<PathBuf>,
    /// The name the backend's certificate must carry; the backend's IP address when absent.
    pub server_name: Option<Spanned<String>>,
}

fn default_client_address() -> ClientAddressMode {
    ClientAddressMode::V2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub certificate: Spanned<PathBuf>,
    pub key: Spanned<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    /// Longest wait for the client's next command or the next piece of a DATA body.
    #[serde(default = "secs::<300>", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest a session may last, whatever it does.
    #[serde(default = "secs::<1800>", with = "humantime_serde")]
    pub max_duration: Duration,
    /// Longest command line, CRLF included.
    #[serde(default = "default_max_command_line")]
    pub max_command_line: usize,
    /// Junk lines (unknown, binary, overlong) after which the session is closed with 421.
    #[serde(default = "default_max_junk")]
    pub max_junk_commands: u32,
    /// How long sessions may take to finish their transaction after SIGTERM.
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(default = "secs::<10>", with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
}

impl Default for SessionSection {
    fn default() -> Self {
        Self {
            idle_timeout: secs::<300>(),
            max_duration: secs::<1800>(),
            max_command_line: default_max_command_line(),
            max_junk_commands: default_max_junk(),
            shutdown_grace: secs::<30>(),
            tls_handshake_timeout: secs::<10>(),
        }
    }
}

fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}
fn default_max_command_line() -> usize {
    2048
}
fn default_max_junk() -> u32 {
    10
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Admit,
    Defer,
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSection {
    pub name: Spanned<String>,
    /// The class takes scores up to this (inclusive); classes are tried in order. Without it, any
    /// score (only the last class may leave it out).
    pub max_score: Option<Spanned<i32>>,
    #[serde(default = "default_action")]
    pub action: Action,
    /// Occupancy of the slot pool (0..1) up to which this class is admitted; default 1.0.
    pub max_share: Option<Spanned<f64>>,
    /// Concurrent sessions per client address; 0: no limit.
    #[serde(default = "default_connections_per_ip")]
    pub connections_per_ip: usize,
    /// Recipients per second/minute/hour per client address across its sessions ("6/s").
    pub recipient_rate: Option<Spanned<String>>,
    /// Deliveries after which the next MAIL gets 421 (advertised as LIMITS MAILMAX, RFC 9422).
    #[serde(default = "default_messages_per_session")]
    pub messages_per_session: Spanned<u32>,
    /// Recipients per transaction; more get 452 4.5.3 (advertised as LIMITS RCPTMAX).
    #[serde(default = "default_recipients_per_message")]
    pub recipients_per_message: Spanned<u32>,
    /// Text of the 421 sent to a deferred client (after `421 4.7.0 <hostname> `).
    pub defer_text: Option<String>,
    /// Text of the 554 sent to a rejected client (after `554 5.7.1 <hostname> `).
    pub reject_text: Option<String>,
}

fn default_connections_per_ip() -> usize {
    10
}

fn default_action() -> Action {
    Action::Admit
}
fn default_messages_per_session() -> Spanned<u32> {
    Spanned::new(0..0, 10)
}
fn default_recipients_per_message() -> Spanned<u32> {
    Spanned::new(0..0, 100)
}

/// Durations written the way people say them: "300s", "5m", "1h 30m", "500ms".
mod humantime_serde {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write it like \"300s\", \"5m\" or \"500ms\""
            ))
        })
    }
}
