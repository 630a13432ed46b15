//! Where the running policy comes from: a file (re-read on reload) or the embedded default, with the
//! command line's overrides applied on top every time.

use super::{ClientAddressMode, Policy, PolicyError};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Command-line values that take precedence over the policy file's, at start and on every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Vec<SocketAddr>,
    pub backend: Option<SocketAddr>,
    pub backend_proxy: Option<ClientAddressMode>,
    pub admin: Option<SocketAddr>,
    pub resolver: Option<SocketAddr>,
}

impl Overrides {
    pub fn apply(&self, mut policy: Policy) -> Policy {
        if !self.listen.is_empty() {
            policy.server.listen = self.listen.clone();
        }
        if let Some(backend) = self.backend {
            policy.backend.address = backend;
        }
        if let Some(mode) = self.backend_proxy {
            policy.backend.client_address = mode;
        }
        if self.admin.is_some() {
            policy.server.admin = self.admin;
        }
        if self.resolver.is_some() {
            policy.dns.resolver = self.resolver;
        }
        policy
    }
}

/// The policy file (or the embedded default) and the overrides.
#[derive(Debug, Clone, Default)]
pub struct PolicySource {
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

impl PolicySource {
    /// Reads and validates the policy, overrides applied.
    pub fn load(&self) -> Result<Policy, PolicyError> {
        let policy = match &self.path {
            Some(path) => Policy::load(path)?,
            None => Policy::embedded_default(),
        };
        Ok(self.overrides.apply(policy))
    }

    /// How logs name it.
    pub fn describe(&self) -> String {
        self.path.as_ref().map_or_else(
            || "<embedded default>".to_owned(),
            |p| p.display().to_string(),
        )
    }
}
