//! Turns a parsed policy file into the checked `Policy`, collecting every problem with its place.

use super::error::{PolicyError, PolicyIssue};
use super::schema::{Action, ClientAddressMode, PolicyFile};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A validated policy, ready to run.
#[derive(Debug, Clone)]
pub struct Policy {
    pub server: ServerPolicy,
    pub backend: BackendPolicy,
    pub session: SessionPolicy,
    /// The TLS configuration offered with STARTTLS, if a certificate is configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub classes: Vec<ClassPolicy>,
    /// Index into `classes` of the class used until scoring picks one.
    pub default_class: usize,
}

#[derive(Debug, Clone)]
pub struct ServerPolicy {
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub workers: usize,
}

#[derive(Debug, Clone)]
pub struct BackendPolicy {
    pub address: SocketAddr,
    pub client_address: ClientAddressMode,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    pub data_reply_timeout: Duration,
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
    pub messages_per_session: u32,
    pub recipients_per_message: u32,
    pub defer_text: String,
    pub reject_text: String,
}

impl Policy {
    pub fn class(&self, index: usize) -> &ClassPolicy {
        &self.classes[index]
    }
}

/// RFC 5321 4.5.3.1.4 sets 512 octets for a command line; below that, standard commands do not fit.
const MIN_COMMAND_LINE: usize = 512;
/// Above this, one line could hold a whole message in memory before it is refused.
const MAX_COMMAND_LINE: usize = 64 * 1024;

struct Checker<'a> {
    origin: &'a str,
    text: &'a str,
    issues: Vec<PolicyIssue>,
}

impl Checker<'_> {
    fn error(&mut self, span: Option<std::ops::Range<usize>>, message: String) {
        self.issues
            .push(PolicyIssue::at(self.origin, self.text, span, message));
    }
}

pub(super) fn validate(
    file: PolicyFile,
    origin: &str,
    text: &str,
    base_dir: Option<&Path>,
) -> Result<Policy, PolicyError> {
    let mut check = Checker {
        origin,
        text,
        issues: Vec::new(),
    };

    if file.server.listen.is_empty() {
        check.error(
            None,
            "server.listen is empty: name at least one address, e.g. [\"0.0.0.0:25\"]".into(),
        );
    }
    if file.server.hostname.is_empty() || file.server.hostname.contains(char::is_whitespace) {
        check.error(
            None,
            format!(
                "server.hostname {:?} must be one word, e.g. \"mx1.example.net\"",
                file.server.hostname
            ),
        );
    }
    if file.server.workers == Some(0) || file.server.workers.is_some_and(|w| w > 1024) {
        check.error(
            None,
            "server.workers must be between 1 and 1024 (default: one per core)".into(),
        );
    }
    let s = &file.session;
    if !(MIN_COMMAND_LINE..=MAX_COMMAND_LINE).contains(&s.max_command_line) {
        check.error(None, format!("session.max_command_line = {} is outside {MIN_COMMAND_LINE}..={MAX_COMMAND_LINE} (RFC 5321 requires at least 512)", s.max_command_line));
    }
    if s.idle_timeout.is_zero() || s.max_duration.is_zero() {
        check.error(
            None,
            "session.idle_timeout and session.max_duration must be longer than 0s".into(),
        );
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
        classes.push(super::ClassPolicy {
            name: name.clone(),
            action: class.action,
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
    if classes.is_empty() {
        check.error(None, "no [[class]] is defined: define at least one".into());
    }
    let default_name = file.admission.default_class.get_ref();
    let default_class = match by_name.get(default_name) {
        Some(&i) => i,
        None => {
            let known: Vec<&str> = classes.iter().map(|c| c.name.as_str()).collect();
            check.error(
                Some(file.admission.default_class.span()),
                format!(
                    "admission.default_class {default_name:?} is not a defined class (defined: {})",
                    known.join(", ")
                ),
            );
            0
        }
    };

    let tls = file.tls.as_ref().and_then(|tls| {
        let resolve = |p: &PathBuf| match base_dir {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.clone(),
        };
        match crate::session::tls::server_config(
            &resolve(tls.certificate.get_ref()),
            &resolve(tls.key.get_ref()),
        ) {
            Ok(config) => Some(config),
            Err(e) => {
                check.error(Some(tls.certificate.span()), e.to_string());
                None
            }
        }
    });

    if !check.issues.is_empty() {
        return Err(PolicyError {
            issues: check.issues,
        });
    }
    Ok(Policy {
        server: ServerPolicy {
            hostname: file.server.hostname,
            listen: file.server.listen,
            admin: file.server.admin,
            workers: file
                .server
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        },
        backend: BackendPolicy {
            address: file.backend.address,
            client_address: file.backend.client_address,
            connect_timeout: file.backend.connect_timeout,
            reply_timeout: file.backend.reply_timeout,
            data_reply_timeout: file.backend.data_reply_timeout,
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
        default_class,
    })
}
