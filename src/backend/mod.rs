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
pub mod table;
pub mod userspace;

use crate::config::ProxyMode;
use crate::model::{ChangeSet, DesiredState};

pub use recording::{Recorded, RecordingBackend};

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
}

/// Why a sync or cleanup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The kernel (or the loader tool) refused the rules; nothing was changed.
    #[error("{tool} failed: {message}")]
    Apply {
        tool: String,
        message: String,
        /// The offending input lines with some context, when known.
        context: Option<String>,
    },
    /// A tool could not be run at all.
    #[error("cannot run {tool}: {message}")]
    Exec { tool: String, message: String },
    /// The mode is not available in this build or on this kernel.
    #[error("proxy mode {0} is not available: {1}")]
    Unavailable(ProxyMode, String),
    /// A fault injected by a test backend.
    #[error("injected failure: {0}")]
    Injected(String),
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
    match cfg.mode {
        ProxyMode::Iptables => Ok(Box::new(iptables_backend(cfg, sys))),
        ProxyMode::Nftables => Ok(Box::new(nftables_backend(cfg, sys))),
        mode => Err(BackendError::Unavailable(mode, "not implemented yet".into())),
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
        Box::new(ipvs::IpvsBackend::new(sys)),
    ]
}

/// The backends of every mode but `mode`: their leftovers are removed when
/// kproxy starts, as kube-proxy does when it starts in one mode.
pub fn other_modes(cfg: &crate::config::Config, sys: crate::sys::Sys) -> Vec<Box<dyn Backend>> {
    all_backends(cfg, sys)
        .into_iter()
        .filter(|b| b.mode() != cfg.mode)
        .collect()
}

fn nftables_backend(cfg: &crate::config::Config, sys: crate::sys::Sys) -> nftables::NftablesBackend {
    // The kernel version (delayed deletion of stale chains) is read at the first sync.
    nftables::NftablesBackend::new(sys, nftables::Settings::from_config(cfg), None)
}

fn iptables_backend(cfg: &crate::config::Config, sys: crate::sys::Sys) -> iptables::IptablesBackend {
    let mut settings = iptables::Settings::from_config(cfg);
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

/// The addresses one IP family's rules are built from, shared by the
/// iptables and nftables backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyAddresses {
    /// The node's addresses of this family.
    pub node_ips: Vec<std::net::IpAddr>,
    /// Where NodePorts are accepted: None means every local address.
    pub nodeport_ips: Option<Vec<std::net::IpAddr>>,
    /// Cluster (pod) CIDRs of this family.
    pub local_cidrs: Vec<ipnet::IpNet>,
}

/// Resolves `--nodeport-addresses`, the node's IPs and `--cluster-cidr`
/// for `family`. `loopback` false leaves loopback addresses out (nftables
/// mode has no localhost NodePorts).
pub fn family_addresses(
    family: crate::model::IpFamily,
    node: &crate::model::NodeInfo,
    cluster_cidrs: &[ipnet::IpNet],
    nodeport_addresses: &crate::config::NodePortAddresses,
    local_addrs: &[std::net::IpAddr],
    loopback: bool,
) -> FamilyAddresses {
    use crate::config::NodePortAddresses;
    use crate::model::IpFamily;
    let wanted = |ip: &std::net::IpAddr| IpFamily::of(ip) == family && (loopback || !ip.is_loopback());
    let node_ips: Vec<std::net::IpAddr> = node.addresses.iter().copied().filter(wanted).collect();
    let nodeport_ips = match nodeport_addresses {
        NodePortAddresses::All => None,
        NodePortAddresses::Primary => Some(node_ips.clone()),
        NodePortAddresses::Cidrs(nets) => Some(
            local_addrs
                .iter()
                .copied()
                .filter(|ip| wanted(ip) && nets.iter().any(|n| n.contains(ip)))
                .collect(),
        ),
    };
    FamilyAddresses {
        node_ips,
        nodeport_ips,
        local_cidrs: cluster_cidrs
            .iter()
            .copied()
            .filter(|n| IpFamily::of_net(n) == family)
            .collect(),
    }
}
