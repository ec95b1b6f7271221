//! Datapath backends behind one trait.
//!
//! ```text
//!            DesiredState + ChangeSet + SyncKind
//!                          │
//!   sync::driver ──────────▼────────── Backend::sync ──▶ SyncStats | BackendError
//!                                        │
//!         ┌──────────────┬───────────────┼───────────────┬──────────────┐
//!      iptables       nftables          ipvs         userspace     recording (tests)
//!   render → diff → Transaction → sys (iptables-restore, nft, netlink, sockets)
//! ```
//!
//! Contract every backend keeps:
//! - `sync(Full)` brings the datapath to exactly `desired`, trusting no memory
//!   of earlier syncs; `sync(Partial)` may rewrite only what `changes` names.
//! - A failed sync leaves the previous rules in place (no half-applied state)
//!   and returns an error; the driver then retries with a Full sync.
//! - A backend never talks to the API server, never mutates the model, and
//!   touches the kernel only through `sys`.
//! - `render` is pure: the exact text a Full sync would hand the kernel.
//! - `cleanup` removes everything the mode installed, and is idempotent.

pub mod iptables;
pub mod ipvs;
pub mod nftables;
pub mod recording;
pub mod settings;
pub mod table;
#[cfg(test)]
mod test_fixtures;
pub mod userspace;

use crate::config::ProxyMode;
use crate::model::{ChangeSet, DesiredState, IpFamily};
use crate::sys::RunError;

pub use recording::{Recorded, RecordingBackend};
pub use settings::{NodePortTargets, RenderOpts, Settings, error_context, family_addresses};

/// Whether a sync rewrites everything or only what changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncKind {
    /// Rewrite the whole datapath from the desired state.
    Full,
    /// Rewrite only the service ports in the change set.
    Partial,
}

/// What a successful sync did, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Service ports whose rules were (re)written.
    pub ports_written: usize,
    /// Service ports in the desired state.
    pub ports_total: usize,
    /// Rules (or elements) sent to the kernel.
    pub rules_written: usize,
    /// Bytes of rule text (or netlink batch) sent to the kernel.
    pub bytes_written: usize,
    /// Per IP family details, for metrics (empty if the backend has none).
    pub families: Vec<FamilyStats>,
}

/// What one IP family's part of a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyStats {
    pub family: crate::model::IpFamily,
    /// Time spent on this family.
    pub elapsed: std::time::Duration,
    /// Rules per table now programmed (`kubeproxy_sync_proxy_rules_iptables_total`).
    pub rules_total: Vec<(&'static str, usize)>,
    /// Rules per table written by this sync (`…_iptables_last`).
    pub rules_last: Vec<(&'static str, usize)>,
    /// Service ports with Local internal / external policy and no local endpoints.
    pub no_local_internal: usize,
    pub no_local_external: usize,
    /// nftables with KEP-6032's forwarder: the localhost NodePort listeners
    /// open after this sync (None: no forwarder).
    pub localhost_listeners: Option<usize>,
    /// Localhost NodePort listeners this sync could not open.
    pub localhost_bind_failures: usize,
}

/// Why a sync or cleanup failed. Each variant names the IP family it is
/// about when there is one (None: the failure is not about one family, e.g.
/// one nftables transaction for both), and keeps its cause as the error
/// source.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The kernel (or the loader tool) refused the rules; nothing was changed.
    #[error("{tool} refused the {} rules", family_name(*.family))]
    Apply {
        family: Option<IpFamily>,
        tool: String,
        #[source]
        source: ToolFailure,
        /// The offending input lines with some context, when known.
        context: Option<String>,
    },
    /// A tool could not be run at all.
    #[error("cannot run {tool} for the {} rules", family_name(*.family))]
    Exec {
        family: Option<IpFamily>,
        tool: String,
        #[source]
        source: RunError,
    },
    /// The kernel refused a netlink request (ipvs mode: IPVS, rtnetlink);
    /// the source names the operation and the object.
    #[error("the kernel refused a {mode} mode change")]
    Kernel {
        mode: ProxyMode,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The mode is not available in this build or on this kernel.
    #[error("proxy mode {0} is not available: {1}")]
    Unavailable(ProxyMode, String),
    /// The sync task itself failed (it panicked).
    #[error("sync task failed: {0}")]
    Task(String),
    /// A fault injected by a test backend.
    #[error("injected failure: {0}")]
    Injected(String),
}

/// A tool that ran and exited non-zero.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("exit status {status}: {stderr}")]
pub struct ToolFailure {
    pub status: i32,
    /// Its standard error, trimmed.
    pub stderr: String,
}

fn family_name(family: Option<IpFamily>) -> &'static str {
    family.map_or("IPv4 and IPv6", IpFamily::as_str)
}

// === impl BackendError ===

impl BackendError {
    /// The family the failure is about, when it is about one.
    pub fn family(&self) -> Option<IpFamily> {
        match self {
            BackendError::Apply { family, .. } | BackendError::Exec { family, .. } => *family,
            _ => None,
        }
    }

    /// The message with every source in the chain: `a: b: c`.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }
}

/// A datapath.
pub trait Backend: Send {
    /// The mode this backend implements.
    fn mode(&self) -> ProxyMode;

    /// Programs `desired`; see the module contract for `kind`.
    fn sync(&mut self, desired: &DesiredState, changes: &ChangeSet, kind: SyncKind) -> Result<SyncStats, BackendError>;

    /// The exact kernel input a Full sync of `desired` would produce.
    fn render(&self, desired: &DesiredState) -> String;

    /// Removes everything this mode installed. Idempotent.
    fn cleanup(&mut self) -> Result<(), BackendError>;
}

/// The backend for the configured mode, ready to program the node through `sys`.
pub fn for_mode(cfg: &crate::config::Config, sys: crate::sys::Sys) -> Result<Box<dyn Backend>, BackendError> {
    for_mode_with_board(cfg, sys, userspace::RelayBoard::default())
}

/// [`for_mode`], with userspace mode's relay counters reported to `board`
/// (which the metrics read).
pub fn for_mode_with_board(
    cfg: &crate::config::Config,
    sys: crate::sys::Sys,
    board: userspace::RelayBoard,
) -> Result<Box<dyn Backend>, BackendError> {
    match cfg.mode {
        ProxyMode::Iptables => Ok(Box::new(iptables_backend(cfg, sys))),
        ProxyMode::Nftables => Ok(Box::new(nftables_backend(cfg, sys))),
        ProxyMode::Userspace => Ok(Box::new(userspace_backend(cfg, sys).with_board(board))),
        ProxyMode::Ipvs => Ok(Box::new(ipvs_backend(cfg, sys))),
    }
}

/// A backend able to render rules for the configured mode, without
/// touching the kernel; None when the mode has no renderer yet.
pub fn renderer(cfg: &crate::config::Config) -> Option<Box<dyn Backend>> {
    let unused = crate::sys::Sys::fake(crate::sys::FakeRunner::new());
    for_mode(cfg, unused).ok()
}

/// One backend per mode, for `--cleanup`.
pub fn all_backends(cfg: &crate::config::Config, sys: crate::sys::Sys) -> Vec<Box<dyn Backend>> {
    vec![
        Box::new(iptables_backend(cfg, sys.clone())),
        Box::new(nftables_backend(cfg, sys.clone())),
        Box::new(userspace_backend(cfg, sys.clone())),
        Box::new(ipvs_backend(cfg, sys)),
    ]
}

/// The backends of every mode but `mode` whose leftovers are removed when
/// kproxy starts, as kube-proxy does when it starts in one mode: iptables,
/// nftables and userspace. IPVS state is left alone (kube-proxy does not
/// clean it when starting in another mode, and other software may use
/// IPVS); `--cleanup` removes it. The ipvs mode shares kube-proxy's
/// top-level iptables chains (KUBE-SERVICES, KUBE-POSTROUTING, …) with the
/// iptables mode, so starting in ipvs mode removes only nftables and
/// userspace leftovers.
pub fn other_modes(cfg: &crate::config::Config, sys: crate::sys::Sys) -> Vec<Box<dyn Backend>> {
    all_backends(cfg, sys)
        .into_iter()
        .filter(|b| b.mode() != cfg.mode && b.mode() != ProxyMode::Ipvs)
        .filter(|b| !(cfg.mode == ProxyMode::Ipvs && b.mode() == ProxyMode::Iptables))
        .collect()
}

fn ipvs_backend(cfg: &crate::config::Config, sys: crate::sys::Sys) -> ipvs::IpvsBackend {
    ipvs::IpvsBackend::new(sys, Settings::from_config(cfg), ipvs::IpvsOpts::from_config(&cfg.ipvs))
}

/// The relays run on the runtime the backend is created on (the daemon's);
/// without one (e.g. a synchronous caller) it can render and clean up only.
fn userspace_backend(cfg: &crate::config::Config, sys: crate::sys::Sys) -> userspace::UserspaceBackend {
    let handle = tokio::runtime::Handle::try_current().ok();
    let relay = userspace::Settings {
        udp_idle_timeout: cfg.udp_idle_timeout,
        ..userspace::Settings::default()
    };
    userspace::UserspaceBackend::new(sys, Settings::from_config(cfg), relay, handle)
}

/// With KEP-6032's localhost NodePorts on (and a runtime to relay on), the
/// backend owns a forwarder built on the userspace relay engine.
fn nftables_backend(cfg: &crate::config::Config, sys: crate::sys::Sys) -> nftables::NftablesBackend {
    // The kernel version (delayed deletion of stale chains) is read at the first sync.
    let backend = nftables::NftablesBackend::new(sys, Settings::from_config(cfg), None);
    let handle = tokio::runtime::Handle::try_current().ok();
    match handle.filter(|_| cfg.localhost_nodeport_proxy()) {
        Some(handle) => {
            tracing::info!("Serving localhost NodePorts through the userspace relay (KEP-6032)");
            backend.with_localhost_forwarder(nftables::localhost::LocalhostForwarder::new(
                handle,
                userspace::relay::Settings::default(),
            ))
        }
        None => backend,
    }
}

fn iptables_backend(cfg: &crate::config::Config, sys: crate::sys::Sys) -> iptables::IptablesBackend {
    let mut settings = Settings::from_config(cfg);
    // kube-proxy skips the INVALID drop when the kernel is already liberal.
    if sys
        .sysctl
        .get("net.netfilter.nf_conntrack_tcp_be_liberal")
        .is_ok_and(|v| v == "1")
    {
        settings.conntrack_liberal = true;
    }
    iptables::IptablesBackend::new(sys, settings, None)
}

/// A fingerprint of a chain's rules, so backends remember what they
/// programmed without keeping the text (memory at scale).
pub(crate) fn hash_rules(rules: &[String]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rules.hash(&mut h);
    h.finish()
}

/// The node's interface addresses, read only when `--nodeport-addresses`
/// names CIDRs (the only case the rules need them).
pub(crate) fn local_addresses(settings: &Settings, sys: &crate::sys::Sys) -> Vec<std::net::IpAddr> {
    if settings.needs_local_addresses() {
        crate::sys::interface_addresses(sys.runner.as_ref())
    } else {
        Vec::new()
    }
}

/// How kube-proxy's `mode` scopes the source-range firewall (the one plan
/// parameter the modes differ in; see [`crate::model::FirewallScope`]).
pub fn firewall_scope(mode: ProxyMode) -> crate::model::FirewallScope {
    match mode {
        ProxyMode::Nftables => crate::model::FirewallScope::Always,
        _ => crate::model::FirewallScope::WithEndpoints,
    }
}

/// The policy plan's view of `node` for `family` in `mode`, from the
/// configuration (what `render --format table` and later modes plan with).
pub fn plan_context(
    settings: &Settings,
    mode: ProxyMode,
    family: IpFamily,
    node: &crate::model::NodeInfo,
) -> crate::model::PlanContext {
    settings
        .render_opts(family, node, &[], mode == ProxyMode::Iptables)
        .plan_context(firewall_scope(mode))
}

/// A plan context with no node or configuration knowledge (no cluster
/// CIDRs, no node IPs), for backends that only print the service map.
pub fn bare_plan_context(family: IpFamily) -> crate::model::PlanContext {
    crate::model::PlanContext {
        family,
        ..Default::default()
    }
}

/// The families a full render prints: IPv4 always (its static rules exist
/// even without services), IPv6 when a service port has an IPv6 address.
pub(crate) fn rendered_families(desired: &DesiredState) -> impl Iterator<Item = IpFamily> + '_ {
    IpFamily::ALL
        .into_iter()
        .filter(|f| *f == IpFamily::V4 || desired.ports_of(*f).next().is_some())
}
