//! Stale UDP conntrack entries.
//!
//! UDP has no connection close, so a conntrack entry created for a flow to a
//! VIP keeps sending that flow to the endpoint it was first NATed to, even
//! after the endpoint is gone, and an entry created while a service had no
//! endpoints keeps blackholing it. After each successful sync kproxy
//! deletes exactly those entries:
//!
//! ```text
//!  ChangeSet ──stale_flows() (pure)──▶ [StaleFlow] ──Cleaner (conntrack -D via sys)──▶ kernel
//! ```
//!
//! For every changed UDP (and SCTP) service port, comparing what was
//! programmed with what is programmed now:
//! - a (VIP, endpoint) pair that no longer exists: the endpoint went away,
//!   the service scaled to zero or was deleted, or the VIP changed
//!   → delete entries to that VIP NATed to that endpoint (kube-proxy's
//!   `ClearEntriesForNAT`), and the same for the node port;
//! - a VIP (or node port) that now has endpoints but had none (or did not
//!   exist) → delete all entries to it (`ClearEntriesForIP`), since they can
//!   only be stale "no endpoint" entries.
//!
//! This covers kube-proxy's regressions around scale-to-zero, deleted
//! services and changed VIPs (kubernetes/kubernetes#139628).

use std::collections::BTreeSet;
use std::net::IpAddr;

use tracing::{debug, warn};

use crate::model::{ChangeSet, IpFamily, PlanContext, PortPlan, Protocol, ServicePortState};
use crate::sys::Sys;

/// One set of conntrack entries to delete.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StaleFlow {
    /// Entries to `vip` NATed to `endpoint`.
    VipToEndpoint {
        protocol: Protocol,
        vip: IpAddr,
        endpoint: IpAddr,
    },
    /// Every entry to `vip`.
    Vip { protocol: Protocol, vip: IpAddr },
    /// Entries to node port `port` NATed to `endpoint`.
    NodePortToEndpoint {
        protocol: Protocol,
        port: u16,
        endpoint: IpAddr,
    },
    /// Every entry to node port `port` of `family`.
    NodePort {
        protocol: Protocol,
        port: u16,
        family: IpFamily,
    },
}

/// What a cleaner run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanStats {
    pub flows: usize,
    pub deleted_entries: usize,
    pub failures: usize,
}

/// Deletes conntrack entries through `conntrack(8)`.
#[derive(Clone, Debug)]
pub struct Cleaner {
    sys: Sys,
}

/// (vip, endpoint) pairs and node port pairs one side of a change programs.
#[derive(Default)]
struct Programmed {
    vips: BTreeSet<IpAddr>,
    endpoints: BTreeSet<IpAddr>,
    node_port: u16,
}

impl Programmed {
    fn of(state: Option<&ServicePortState>, family: IpFamily) -> Self {
        let Some(s) = state.filter(|s| s.port.has_family(family)) else {
            return Self::default();
        };
        Self {
            vips: s.port.vips(family).into_iter().map(|v| v.ip()).collect(),
            // What the plan forwards to (the same for every mode).
            endpoints: PortPlan::new(
                s,
                &PlanContext {
                    family,
                    ..PlanContext::default()
                },
            )
            .reachable
            .iter()
            .map(|e| e.ip)
            .collect(),
            node_port: s.port.node_port,
        }
    }
}

/// The stale flows a ChangeSet leaves behind (UDP and SCTP only).
pub fn stale_flows(changes: &ChangeSet) -> Vec<StaleFlow> {
    let mut out = BTreeSet::new();
    for (name, change) in &changes.ports {
        let protocol = name.protocol;
        if protocol == Protocol::Tcp {
            continue;
        }
        for family in IpFamily::ALL {
            let old = Programmed::of(change.previous.as_deref(), family);
            let new = Programmed::of(change.current.as_deref(), family);
            for vip in &old.vips {
                for ep in &old.endpoints {
                    if !(new.vips.contains(vip) && new.endpoints.contains(ep)) {
                        out.insert(StaleFlow::VipToEndpoint {
                            protocol,
                            vip: *vip,
                            endpoint: *ep,
                        });
                    }
                }
            }
            if old.node_port != 0 {
                for ep in &old.endpoints {
                    if !(new.node_port == old.node_port && new.endpoints.contains(ep)) {
                        out.insert(StaleFlow::NodePortToEndpoint {
                            protocol,
                            port: old.node_port,
                            endpoint: *ep,
                        });
                    }
                }
            }
            if new.endpoints.is_empty() {
                continue;
            }
            for vip in &new.vips {
                if old.endpoints.is_empty() || !old.vips.contains(vip) {
                    out.insert(StaleFlow::Vip { protocol, vip: *vip });
                }
            }
            if new.node_port != 0 && (old.endpoints.is_empty() || old.node_port != new.node_port) {
                out.insert(StaleFlow::NodePort {
                    protocol,
                    port: new.node_port,
                    family,
                });
            }
        }
    }
    out.into_iter().collect()
}

// === impl StaleFlow ===

impl StaleFlow {
    /// The IP family of the entries.
    pub fn family(&self) -> IpFamily {
        match self {
            StaleFlow::VipToEndpoint { vip, .. } | StaleFlow::Vip { vip, .. } => IpFamily::of(vip),
            StaleFlow::NodePortToEndpoint { endpoint, .. } => IpFamily::of(endpoint),
            StaleFlow::NodePort { family, .. } => *family,
        }
    }

    fn protocol(&self) -> Protocol {
        match self {
            StaleFlow::VipToEndpoint { protocol, .. }
            | StaleFlow::Vip { protocol, .. }
            | StaleFlow::NodePortToEndpoint { protocol, .. }
            | StaleFlow::NodePort { protocol, .. } => *protocol,
        }
    }

    /// `conntrack -D` arguments for this flow.
    pub fn args(&self) -> Vec<String> {
        let protocol = self.protocol();
        let family = match self.family() {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        };
        let mut args: Vec<String> = ["-D", "-f", family, "-p", protocol.as_lower()]
            .into_iter()
            .map(String::from)
            .collect();
        let (dst_flag, dst, nat) = match self {
            StaleFlow::VipToEndpoint { vip, endpoint, .. } => ("--orig-dst", vip.to_string(), Some(endpoint)),
            StaleFlow::Vip { vip, .. } => ("--orig-dst", vip.to_string(), None),
            StaleFlow::NodePortToEndpoint { port, endpoint, .. } => {
                ("--orig-port-dst", port.to_string(), Some(endpoint))
            }
            StaleFlow::NodePort { port, .. } => ("--orig-port-dst", port.to_string(), None),
        };
        args.push(dst_flag.to_string());
        args.push(dst);
        if let Some(ep) = nat {
            args.push("--dst-nat".to_string());
            args.push(ep.to_string());
        }
        args
    }
}

// === impl Cleaner ===

impl Cleaner {
    pub fn new(sys: Sys) -> Self {
        Self { sys }
    }

    /// Deletes the entries of `flows`. A failure is logged and counted but
    /// never fails the sync: the rules are already right.
    pub fn delete(&self, flows: &[StaleFlow]) -> CleanStats {
        let mut stats = CleanStats {
            flows: flows.len(),
            ..CleanStats::default()
        };
        for flow in flows {
            let args = flow.args();
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            match self.sys.runner.run("conntrack", &argv, None) {
                // conntrack exits 1 when nothing matched; that is success here.
                Ok(out) if out.status == 0 || out.stderr.contains(" 0 flow entries") => {
                    stats.deleted_entries += deleted_count(&out.stderr);
                }
                Ok(out) => {
                    stats.failures += 1;
                    warn!(flow = ?flow, error = %out.stderr.trim(), "Failed to delete stale conntrack entries");
                }
                Err(e) => {
                    stats.failures += 1;
                    warn!(flow = ?flow, error = %e, "Cannot run conntrack to delete stale entries");
                }
            }
        }
        if stats.flows > 0 {
            debug!(
                flows = stats.flows,
                deleted = stats.deleted_entries,
                "Deleted stale UDP conntrack entries"
            );
        }
        stats
    }
}

/// Parses "N flow entries have been deleted".
fn deleted_count(stderr: &str) -> usize {
    stderr
        .lines()
        .find_map(|l| {
            let idx = l.find(" flow entries")?;
            l[..idx].rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
