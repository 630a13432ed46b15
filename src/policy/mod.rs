//! The policy: loading a TOML file (or the embedded default), validating it, and the checked result.
//!
//! `schema` mirrors the file, `validate` turns it into a [`Policy`] with every reference resolved and
//! every file (TLS certificate and key) loaded, so that a running server never meets a bad value.

mod error;
mod hint;
pub mod lint;
mod locate;
mod schema;
mod source;
mod validate;

pub use error::{line_col, PolicyError, PolicyIssue, Severity};
pub use schema::{Action, BackendTlsMode, ClientAddressMode, RuleAction, Scheduling};
pub use source::{Overrides, PolicySource};
pub use validate::{
    AdmissionPolicy, BackendPolicy, ClassPolicy, DnsPolicy, Policy, PregreetPolicy, ServerPolicy,
    SessionPolicy, StaticRule, MAX_CLASSES,
};

use std::path::Path;

/// The policy compiled into the binary: `policies/default.toml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../policies/default.toml");

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            issues: vec![PolicyIssue::at(
                &origin,
                "",
                None,
                format!("cannot read policy file: {e}"),
            )],
        })?;
        Policy::parse(&origin, &text, path.parent())
    }

    /// The embedded default policy.
    pub fn embedded_default() -> Policy {
        // The embedded default is checked by a unit test, so this cannot fail in a released binary.
        Policy::parse("<embedded default>", EMBEDDED_DEFAULT, None)
            .unwrap_or_else(|e| panic!("embedded default policy is invalid: {e}"))
    }

    /// Validates policy text; `base_dir` resolves relative paths (certificate files).
    /// Syntax errors are all reported; past them, the first type error or unknown key; past that,
    /// every value error. A valid policy carries its lint warnings in `warnings`.
    pub fn parse(origin: &str, text: &str, base_dir: Option<&Path>) -> Result<Policy, PolicyError> {
        let issue = |e: &toml::de::Error| {
            PolicyIssue::at(origin, text, e.span(), hint::with_hint(e.message()))
        };
        let (document, mut syntax) = toml::de::DeTable::parse_recoverable(text);
        syntax.sort_by_key(|e| e.span().map(|s| s.start));
        if !syntax.is_empty() {
            return Err(PolicyError {
                issues: syntax.iter().map(issue).collect(),
            });
        }
        let file: schema::PolicyFile = toml::from_str(text).map_err(|e| PolicyError {
            issues: vec![issue(&e)],
        })?;
        // The syntax pass's document, kept for the places of later errors and warnings.
        let locate = locate::Locator::from_table(document);
        let mut policy = validate::validate(file, origin, text, &locate, base_dir)?;
        policy.warnings = lint::lint(&policy, origin, text, &locate);
        Ok(policy)
    }
}
