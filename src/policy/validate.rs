//! Turns a parsed policy file into the checked `Policy`, collecting every problem with its place.

use super::error::{PolicyError, PolicyIssue};
use super::locate::Locator;
use super::schema::{
    Action, AdmissionSection, ClientAddressMode, Codes, DnsSection, PolicyFile, RuleAction,
};
use crate::admission::rate::parse_rate;
use crate::reputation::dnsbl::cache::TtlBounds;
use crate::reputation::dnsbl::filter::{normalize_zone, parse_site, CodeFilter};
use crate::reputation::dnsbl::lists::{DnsListsConfig, ListEntry};
use governor::Quota;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// A validated policy, ready to run.
#[derive(Debug, Clone)]
pub struct Policy {
    pub server: ServerPolicy,
    pub backend: BackendPolicy,
    pub session: SessionPolicy,
    /// The TLS configuration offered with STARTTLS, if a certificate is configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub classes: Vec<ClassPolicy>,
    /// Each class's max_score, in class order (None: any score).
    pub thresholds: Vec<Option<i32>>,
    pub rules: Vec<StaticRule>,
    pub dns: DnsPolicy,
    pub admission: AdmissionPolicy,
    /// The early-talker test: `Some` when enabled.
    pub pregreet: Option<PregreetPolicy>,
    /// Lints: valid but probably wrong (see `lint`).
    pub warnings: Vec<PolicyIssue>,
}

#[derive(Debug, Clone)]
pub struct AdmissionPolicy {
    pub slots: usize,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub connections_per_prefix: usize,
    pub connection_rate_per_ip: Option<Quota>,
    pub connection_rate_per_prefix: Option<Quota>,
    pub max_tracked_addresses: usize,
    pub stress_threshold: f64,
    pub stress_idle_timeout: Duration,
    pub stress_messages_per_session: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct PregreetPolicy {
    pub delay: Duration,
    pub weight: i32,
}

/// A static CIDR rule: clients in `net` go straight to `class`, without DNS lookups.
#[derive(Debug, Clone)]
pub struct StaticRule {
    pub net: ipnet::IpNet,
    pub action: RuleAction,
    pub class: usize,
}

#[derive(Debug, Clone)]
pub struct DnsPolicy {
    pub resolver: Option<SocketAddr>,
    pub self_test_interval: Duration,
    pub lists: DnsListsConfig,
}

#[derive(Debug, Clone)]
pub struct ServerPolicy {
    pub hostname: Arc<str>,
    pub listen: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub admin_token: Option<Arc<str>>,
    pub workers: usize,
    pub spin_before_sleep: Duration,
    pub scheduling: super::Scheduling,
}

#[derive(Debug, Clone)]
pub struct BackendPolicy {
    pub address: SocketAddr,
    pub client_address: ClientAddressMode,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    pub data_reply_timeout: Duration,
    /// TLS on the hop to the backend; plain when `None`.
    pub tls: Option<crate::net::backend_tls::BackendTls>,
}

#[derive(Debug, Clone)]
pub struct SessionPolicy {
    pub idle_timeout: Duration,
    pub max_duration: Duration,
    pub max_command_line: usize,
    pub max_junk_commands: u32,
    pub shutdown_grace: Duration,
    pub tls_handshake_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ClassPolicy {
    pub name: String,
    pub action: Action,
    pub max_share: f64,
    pub connections_per_ip: usize,
    pub recipient_rate: Option<Quota>,
    pub messages_per_session: u32,
    pub recipients_per_message: u32,
    pub defer_text: String,
    pub reject_text: String,
}

impl Policy {
    pub fn class(&self, index: usize) -> &ClassPolicy {
        &self.classes[index]
    }

    /// The class for `score`: the first whose max_score is at least the score, else the last.
    pub fn class_for_score(&self, score: i32) -> usize {
        self.thresholds
            .iter()
            .position(|max| max.is_none_or(|m| score <= m))
            .unwrap_or(self.classes.len().saturating_sub(1))
    }
}

fn validate_admission(a: &AdmissionSection, check: &mut Checker<'_>) -> AdmissionPolicy {
    if a.slots == 0 {
        check.error_at(
            "admission.slots",
            "admission.slots must be at least 1: the sessions the backend can hold".into(),
        );
    }
    if a.prefix_v4 > 32 {
        check.error_at(
            "admission.prefix_v4",
            format!("prefix_v4 = {} must be at most 32", a.prefix_v4),
        );
    }
    if a.prefix_v6 > 128 {
        check.error_at(
            "admission.prefix_v6",
            format!("prefix_v6 = {} must be at most 128", a.prefix_v6),
        );
    }
    if !(0.0..=1.0).contains(a.stress_threshold.get_ref()) {
        check.error(
            Some(a.stress_threshold.span()),
            "stress_threshold must be between 0 and 1 (a share of the slot pool)".into(),
        );
    }
    let mut rate = |r: &Option<Spanned<String>>| {
        r.as_ref().and_then(|r| match parse_rate(r.get_ref()) {
            Ok(q) => Some(q),
            Err(e) => {
                check.error(Some(r.span()), e);
                None
            }
        })
    };
    let connection_rate_per_ip = rate(&a.connection_rate_per_ip);
    let connection_rate_per_prefix = rate(&a.connection_rate_per_prefix);
    AdmissionPolicy {
        slots: a.slots,
        prefix_v4: a.prefix_v4,
        prefix_v6: a.prefix_v6,
        connections_per_prefix: a.connections_per_prefix,
        connection_rate_per_ip,
        connection_rate_per_prefix,
        max_tracked_addresses: a.max_tracked_addresses.max(1),
        stress_threshold: *a.stress_threshold.get_ref(),
        stress_idle_timeout: a.stress_idle_timeout,
        stress_messages_per_session: a.stress_messages_per_session.max(1),
    }
}

fn admin_token(
    server: &super::schema::ServerSection,
    base_dir: Option<&Path>,
    check: &mut Checker<'_>,
) -> Option<Arc<str>> {
    let token = match (&server.admin_token, &server.admin_token_file) {
        (Some(_), Some(file)) => {
            check.error(
                Some(file.span()),
                "set admin_token or admin_token_file, not both".into(),
            );
            return None;
        }
        (Some(token), None) => token.trim().to_owned(),
        (None, Some(file)) => {
            let path = resolve(file.get_ref(), base_dir);
            match std::fs::read_to_string(&path) {
                Ok(text) => text.lines().next().unwrap_or_default().trim().to_owned(),
                Err(e) => {
                    check.error(
                        Some(file.span()),
                        format!("cannot read admin_token_file {}: {e}", path.display()),
                    );
                    return None;
                }
            }
        }
        (None, None) => return None,
    };
    if token.len() < 16 {
        check.error_at(
            "server",
            "the admin token must be at least 16 characters (e.g. `openssl rand -hex 24`)".into(),
        );
        return None;
    }
    Some(Arc::from(token))
}

/// A path from the policy, relative to the policy file's directory.
fn resolve(path: &Path, base_dir: Option<&Path>) -> PathBuf {
    match base_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

fn validate_dns(dns: &DnsSection, check: &mut Checker<'_>) -> DnsPolicy {
    let mut entries = Vec::new();
    for site in &dns.sites {
        match parse_site(site.get_ref()) {
            Ok(spec) => entries.push(ListEntry {
                zone: Arc::from(spec.zone),
                filters: spec.filter.into_iter().collect(),
                weight: spec.weight,
                name: None,
            }),
            Err(e) => check.error(Some(site.span()), e),
        }
    }
    for list in &dns.lists {
        let zone = match normalize_zone(list.zone.get_ref()) {
            Ok(zone) => zone,
            Err(e) => {
                check.error(Some(list.zone.span()), e);
                continue;
            }
        };
        let patterns: Vec<&String> = match list.codes.as_ref().map(|c| c.get_ref()) {
            None => Vec::new(),
            Some(Codes::One(p)) => vec![p],
            Some(Codes::Many(ps)) => ps.iter().collect(),
        };
        let mut filters = Vec::new();
        for pattern in patterns {
            match CodeFilter::parse(pattern) {
                Ok(f) => filters.push(f),
                Err(e) => check.error(list.codes.as_ref().map(|c| c.span()), e),
            }
        }
        entries.push(ListEntry {
            zone: Arc::from(zone),
            filters,
            weight: list.weight,
            name: list.name.clone(),
        });
    }
    if dns.budget.is_zero() || dns.budget > Duration::from_secs(30) {
        check.error_at(
            "dns.budget",
            format!("dns.budget = {:?} must be between 1ms and 30s", dns.budget),
        );
    }
    if dns.cache_min_ttl > dns.cache_max_ttl {
        check.error_at(
            "dns.cache_min_ttl",
            "dns.cache_min_ttl is longer than dns.cache_max_ttl".into(),
        );
    }
    DnsPolicy {
        resolver: dns.resolver,
        self_test_interval: dns.self_test_interval,
        lists: DnsListsConfig {
            entries,
            budget: dns.budget,
            query_timeout: dns.query_timeout.max(dns.budget),
            ttl: TtlBounds {
                min: dns.cache_min_ttl,
                max: dns.cache_max_ttl,
                failure: dns.cache_min_ttl.min(Duration::from_secs(10)),
            },
            cache_entries: dns.cache_entries,
        },
    }
}

/// Classes a policy may define (the slot pool keeps a counter for each position).
pub const MAX_CLASSES: usize = 32;

/// RFC 5321 4.5.3.1.4 sets 512 octets for a command line; below that, standard commands do not fit.
const MIN_COMMAND_LINE: usize = 512;
/// Above this, one line could hold a whole message in memory before it is refused.
const MAX_COMMAND_LINE: usize = 64 * 1024;
/// The longest spin before sleeping a policy may ask for; the default is 20 us.
const MAX_SPIN_BEFORE_SLEEP: Duration = Duration::from_millis(1);

struct Checker<'a> {
    origin: &'a str,
    text: &'a str,
    locate: &'a Locator<'a>,
    issues: Vec<PolicyIssue>,
}

impl Checker<'_> {
    fn error(&mut self, span: Option<std::ops::Range<usize>>, message: String) {
        self.issues
            .push(PolicyIssue::at(self.origin, self.text, span, message));
    }

    /// An error at the value of a dotted key path (see [`Locator::span`]).
    fn error_at(&mut self, path: &str, message: String) {
        let span = self.locate.span(path);
        self.error(span, message);
    }
}

pub(super) fn validate(
    file: PolicyFile,
    origin: &str,
    text: &str,
    locate: &Locator<'_>,
    base_dir: Option<&Path>,
) -> Result<Policy, PolicyError> {
    let mut check = Checker {
        origin,
        text,
        locate,
        issues: Vec::new(),
    };

    if file.server.listen.is_empty() {
        check.error_at(
            "server.listen",
            "server.listen is empty: name at least one address, e.g. [\"0.0.0.0:25\"]".into(),
        );
    }
    if file.server.hostname.is_empty() || file.server.hostname.contains(char::is_whitespace) {
        check.error_at(
            "server.hostname",
            format!(
                "server.hostname {:?} must be one word, e.g. \"mx1.example.net\"",
                file.server.hostname
            ),
        );
    }
    if file.server.workers == Some(0) || file.server.workers.is_some_and(|w| w > 1024) {
        check.error_at(
            "server.workers",
            "server.workers must be between 1 and 1024 (default: one per core)".into(),
        );
    }
    if file.server.spin_before_sleep > MAX_SPIN_BEFORE_SLEEP {
        check.error_at(
            "server.spin_before_sleep",
            format!(
                "server.spin_before_sleep = {} is longer than {}: a worker would burn its core waiting (default: 20us; \"0s\" turns spinning off)",
                humantime::format_duration(file.server.spin_before_sleep),
                humantime::format_duration(MAX_SPIN_BEFORE_SLEEP)
            ),
        );
    }
    let s = &file.session;
    if !(MIN_COMMAND_LINE..=MAX_COMMAND_LINE).contains(&s.max_command_line) {
        check.error_at("session.max_command_line", format!("session.max_command_line = {} is outside {MIN_COMMAND_LINE}..={MAX_COMMAND_LINE} (RFC 5321 requires at least 512)", s.max_command_line));
    }
    for (key, value) in [
        ("idle_timeout", s.idle_timeout),
        ("max_duration", s.max_duration),
    ] {
        if value.is_zero() {
            check.error_at(
                &format!("session.{key}"),
                format!("session.{key} must be longer than 0s"),
            );
        }
    }

    let mut classes = Vec::with_capacity(file.classes.len());
    let mut by_name = HashMap::new();
    for class in &file.classes {
        let name = class.name.get_ref();
        if by_name.insert(name.clone(), classes.len()).is_some() {
            check.error(
                Some(class.name.span()),
                format!("class {name:?} is defined twice; class names must be unique"),
            );
        }
        if *class.messages_per_session.get_ref() == 0 {
            check.error(
                Some(class.messages_per_session.span()),
                "messages_per_session must be at least 1; use action = \"defer\" to admit no mail"
                    .into(),
            );
        }
        if *class.recipients_per_message.get_ref() == 0 {
            check.error(
                Some(class.recipients_per_message.span()),
                "recipients_per_message must be at least 1 (RFC 5321 4.5.3.1.8 asks for 100)"
                    .into(),
            );
        }
        let max_share = class.max_share.as_ref().map_or(1.0, |s| *s.get_ref());
        if let Some(share) = &class.max_share {
            if !(0.0..=1.0).contains(share.get_ref()) {
                check.error(
                    Some(share.span()),
                    format!(
                        "max_share = {} must be between 0 and 1 (a share of the slot pool)",
                        share.get_ref()
                    ),
                );
            }
        }
        let recipient_rate =
            class
                .recipient_rate
                .as_ref()
                .and_then(|r| match parse_rate(r.get_ref()) {
                    Ok(q) => Some(q),
                    Err(e) => {
                        check.error(Some(r.span()), e);
                        None
                    }
                });
        classes.push(super::ClassPolicy {
            name: name.clone(),
            action: class.action,
            max_share,
            connections_per_ip: class.connections_per_ip,
            recipient_rate,
            messages_per_session: *class.messages_per_session.get_ref(),
            recipients_per_message: *class.recipients_per_message.get_ref(),
            defer_text: class
                .defer_text
                .clone()
                .unwrap_or_else(|| "Try again later".into()),
            reject_text: class
                .reject_text
                .clone()
                .unwrap_or_else(|| "Service unavailable; client [{ip}] blocked".into()),
        });
    }
    if classes.len() > MAX_CLASSES {
        check.error_at(
            &format!("class.{MAX_CLASSES}.name"),
            format!(
                "{} classes are defined; at most {MAX_CLASSES}",
                classes.len()
            ),
        );
    }
    if classes.is_empty() {
        check.error(
            None,
            "no [[class]] is defined: define at least one, e.g. [[class]] name = \"all\"".into(),
        );
    }
    // Classes are tried in order: thresholds must rise, and only the last may take every score.
    let mut previous: Option<i32> = None;
    for (i, class) in file.classes.iter().enumerate() {
        match &class.max_score {
            Some(max) => {
                if previous.is_some_and(|p| *max.get_ref() <= p) {
                    check.error(Some(max.span()), format!("max_score = {} does not rise above the previous class's ({}); list classes from best to worst", max.get_ref(), previous.unwrap_or_default()));
                }
                previous = Some(*max.get_ref());
            }
            None if i + 1 < file.classes.len() => check.error(Some(class.name.span()), format!("class {:?} has no max_score but is not the last class: the classes after it could never be chosen", class.name.get_ref())),
            None => {}
        }
    }
    let thresholds: Vec<Option<i32>> = file
        .classes
        .iter()
        .map(|c| c.max_score.as_ref().map(|m| *m.get_ref()))
        .collect();

    let mut rules = Vec::with_capacity(file.rules.len());
    for rule in &file.rules {
        let class = match &rule.class {
            Some(name) => match by_name.get(name.get_ref()) {
                Some(&i) => i,
                None => {
                    check.error(
                        Some(name.span()),
                        format!("rule class {:?} is not a defined class", name.get_ref()),
                    );
                    0
                }
            },
            None => match rule.action {
                RuleAction::Allow => 0,
                RuleAction::Deny => classes.len().saturating_sub(1),
            },
        };
        rules.push(super::StaticRule {
            net: *rule.cidr.get_ref(),
            action: rule.action,
            class,
        });
    }

    let dns = validate_dns(&file.dns, &mut check);
    let admission = validate_admission(&file.admission, &mut check);
    if file.pregreet.enabled
        && (file.pregreet.delay.is_zero() || file.pregreet.delay > Duration::from_secs(30))
    {
        check.error_at(
            "pregreet.delay",
            format!(
                "pregreet.delay = {:?} must be between 1ms and 30s (postscreen's greet wait is 6s)",
                file.pregreet.delay
            ),
        );
    }
    let admin_token = admin_token(&file.server, base_dir, &mut check);
    let backend_tls = file.backend.tls.as_ref().and_then(|tls| {
        let name = tls.server_name.as_ref();
        match crate::net::backend_tls::client_setup(
            tls.mode,
            &resolve(tls.ca.get_ref(), base_dir),
            name.map(|n| n.get_ref().as_str()),
        ) {
            Ok(setup) => Some(setup),
            Err(e) => {
                let span = match (&e, name) {
                    (crate::net::backend_tls::BackendTlsError::ServerName { .. }, Some(n)) => {
                        n.span()
                    }
                    _ => tls.ca.span(),
                };
                check.error(Some(span), e.to_string());
                None
            }
        }
    });
    let tls = file.tls.as_ref().and_then(|tls| {
        match crate::session::tls::server_config(
            &resolve(tls.certificate.get_ref(), base_dir),
            &resolve(tls.key.get_ref(), base_dir),
        ) {
            Ok(config) => Some(config),
            Err(e) => {
                check.error(Some(tls.certificate.span()), e.to_string());
                None
            }
        }
    });

    if !check.issues.is_empty() {
        // In file order; problems with no single place last.
        check.issues.sort_by_key(|i| (i.line == 0, i.line, i.col));
        return Err(PolicyError {
            issues: check.issues,
        });
    }
    Ok(Policy {
        server: ServerPolicy {
            hostname: Arc::from(file.server.hostname),
            listen: file.server.listen,
            admin: file.server.admin,
            admin_token,
            workers: file
                .server
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            spin_before_sleep: file.server.spin_before_sleep,
            scheduling: file.server.scheduling,
        },
        backend: BackendPolicy {
            address: file.backend.address,
            client_address: file.backend.client_address,
            connect_timeout: file.backend.connect_timeout,
            reply_timeout: file.backend.reply_timeout,
            data_reply_timeout: file.backend.data_reply_timeout,
            tls: backend_tls,
        },
        session: SessionPolicy {
            idle_timeout: s.idle_timeout,
            max_duration: s.max_duration,
            max_command_line: s.max_command_line,
            max_junk_commands: s.max_junk_commands,
            shutdown_grace: s.shutdown_grace,
            tls_handshake_timeout: s.tls_handshake_timeout,
        },
        tls,
        classes,
        thresholds,
        rules,
        dns,
        admission,
        pregreet: file.pregreet.enabled.then_some(PregreetPolicy {
            delay: file.pregreet.delay,
            weight: file.pregreet.weight,
        }),
        warnings: Vec::new(),
    })
}
