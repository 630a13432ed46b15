//! The policy in force and its hot reload: new connections load the current generation (policy and
//! DNS lists) once; a reload validates the new policy first and swaps it atomically, so sessions in
//! flight keep the generation they started with and a bad policy changes nothing.

use crate::admission::gate::AdmissionState;
use crate::policy::{Policy, PolicyError, PolicySource};
use crate::reputation::dnsbl::lists::DnsLists;
use crate::reputation::dnsbl::lookup::ResolverError;
use crate::server::dns_lists;
use crate::telemetry;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// One policy and the DNS lists built from it.
pub struct Generation {
    pub policy: Arc<Policy>,
    pub lists: Arc<DnsLists>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    /// The new policy's lint warnings (`file:line:col: warning: ...`).
    pub warnings: Vec<String>,
    /// Settings that changed but only take effect at a restart (listeners, admin, workers, the spin).
    pub restart_needed: Vec<String>,
    /// Whether the DNS lists changed (then they were self-tested before the swap).
    pub dns_lists_rebuilt: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(#[from] PolicyError),
    #[error(transparent)]
    Resolver(#[from] ResolverError),
}

/// The current generation, the admission state shared across generations, and where reloads
/// read the policy from.
pub struct Live {
    current: ArcSwap<Generation>,
    admission: Arc<AdmissionState>,
    source: PolicySource,
    /// Reloads run one at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Live {
    /// Builds the first generation: the DNS lists are self-tested before this returns.
    pub async fn start(policy: Policy, source: PolicySource) -> Result<Arc<Live>, ResolverError> {
        let lists = dns_lists(&policy).await?;
        let admission = AdmissionState::new(&policy);
        Ok(Live::with_parts(policy, lists, admission, source))
    }

    /// From parts already built (tests bring an admission state on a controlled clock).
    pub fn with_parts(
        policy: Policy,
        lists: Arc<DnsLists>,
        admission: Arc<AdmissionState>,
        source: PolicySource,
    ) -> Arc<Live> {
        Arc::new(Live {
            current: ArcSwap::from_pointee(Generation {
                policy: Arc::new(policy),
                lists,
            }),
            admission,
            source,
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The generation a new connection is decided and served with.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.current.load().policy.clone()
    }

    pub fn admission(&self) -> &Arc<AdmissionState> {
        &self.admission
    }

    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    /// Re-reads the policy from its source and installs it (SIGHUP, `POST /reload`).
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let result = match self.source.load() {
            Ok(policy) => self.install(policy).await,
            Err(e) => Err(ReloadError::Invalid(e)),
        };
        match &result {
            Ok(report) => {
                telemetry::policy_reload("ok");
                for warning in &report.warnings {
                    tracing::warn!(source = %self.source.describe(), "{warning}");
                }
                for setting in &report.restart_needed {
                    tracing::warn!(setting = %setting, "changed setting takes effect at the next restart; the running value stays");
                }
                tracing::info!(source = %self.source.describe(), dns_lists_rebuilt = report.dns_lists_rebuilt, "policy reloaded");
            }
            Err(e) => {
                telemetry::policy_reload(match e {
                    ReloadError::Invalid(_) => "invalid",
                    ReloadError::Resolver(_) => "failed",
                });
                tracing::error!(source = %self.source.describe(), error = %e, "policy reload refused; the running policy stays in force");
            }
        }
        result
    }

    /// Installs an already validated policy: DNS lists are rebuilt (and self-tested) only when
    /// their settings changed, the admission state adopts the new limits, then the swap.
    pub async fn install(&self, mut policy: Policy) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.current();
        let mut report = ReloadReport {
            warnings: policy.warnings.iter().map(|w| w.to_string()).collect(),
            ..ReloadReport::default()
        };
        // Listening sockets, the admin listener and the worker threads (with their spin and their
        // scheduling policy) exist once per process.
        let (was, new) = (&old.policy.server, &mut policy.server);
        let restart = &mut report.restart_needed;
        keep_running("server.listen", &was.listen, &mut new.listen, restart);
        keep_running("server.admin", &was.admin, &mut new.admin, restart);
        keep_running("server.workers", &was.workers, &mut new.workers, restart);
        keep_running(
            "server.spin_before_sleep",
            &was.spin_before_sleep,
            &mut new.spin_before_sleep,
            restart,
        );
        keep_running(
            "server.scheduling",
            &was.scheduling,
            &mut new.scheduling,
            restart,
        );
        let same_lists = old.policy.dns.lists == policy.dns.lists
            && old.policy.dns.resolver == policy.dns.resolver;
        let lists = match same_lists {
            true => old.lists.clone(),
            false => {
                report.dns_lists_rebuilt = true;
                dns_lists(&policy).await?
            }
        };
        self.admission.reconfigure(&policy);
        self.current.store(Arc::new(Generation {
            policy: Arc::new(policy),
            lists,
        }));
        Ok(report)
    }
}

/// A setting that takes effect only at a restart: a changed value is reported under `name` and the
/// running value kept, so the installed policy says what the process really does.
fn keep_running<T: PartialEq + Clone>(
    name: &str,
    running: &T,
    new: &mut T,
    restart_needed: &mut Vec<String>,
) {
    if running != new {
        restart_needed.push(name.into());
        *new = running.clone();
    }
}
