//! What every backend derives from the configuration and the node, once:
//! [`Settings`] (from flags and file), and per family the [`RenderOpts`]
//! (addresses resolved on this node) with the [`PlanContext`] the model's
//! policy plan needs. Plus the error-context helper both rule loaders use.
//!
//! ```text
//!  Config ──Settings::from_config──▶ Settings ──render_opts(family, node, local addrs)──▶ RenderOpts
//!                                                                                          │
//!                                                        plan_context(FirewallScope) ◀────┘
//! ```

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{Config, NodePortAddresses};
use crate::model::{FirewallScope, IpFamily, NodeInfo, PlanContext};

/// Settings that come from the configuration, shared by every backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub masquerade_mark: u32,
    pub masquerade_all: bool,
    pub cluster_cidrs: Vec<IpNet>,
    pub nodeport_addresses: NodePortAddresses,
    /// NodePorts on 127.0.0.1 (iptables mode only; nftables has none).
    pub localhost_nodeports: bool,
    /// `nf_conntrack_tcp_be_liberal` is set: no INVALID drop (iptables).
    pub conntrack_liberal: bool,
}

/// Per-family options a backend renders with, derived from [`Settings`]
/// and the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderOpts {
    pub family: IpFamily,
    /// The masquerade mark, e.g. 0x4000.
    pub masquerade_mark: u32,
    pub masquerade_all: bool,
    /// Cluster (pod) CIDRs of this family: traffic from elsewhere to a
    /// cluster IP is masqueraded. Empty: no local-traffic detection.
    pub local_cidrs: Vec<IpNet>,
    /// Where NodePorts are accepted.
    pub nodeports: NodePortTargets,
    /// NodePorts on 127.0.0.1 (IPv4, iptables only).
    pub localhost_nodeports: bool,
    /// `nf_conntrack_tcp_be_liberal` is set: no INVALID drop.
    pub conntrack_liberal: bool,
    /// The node's IPs of this family (for source-range checks of node traffic).
    pub node_ips: Vec<IpAddr>,
}

/// Which destination addresses accept NodePort traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortTargets {
    /// Every local address.
    AllLocal,
    /// These addresses only.
    Ips(Vec<IpAddr>),
}

/// The addresses one IP family's rules are built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyAddresses {
    /// The node's addresses of this family.
    pub node_ips: Vec<IpAddr>,
    /// Where NodePorts are accepted: None means every local address.
    pub nodeport_ips: Option<Vec<IpAddr>>,
    /// Cluster (pod) CIDRs of this family.
    pub local_cidrs: Vec<IpNet>,
}

// === impl Settings ===

impl Settings {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            masquerade_mark: cfg.masquerade_mark(),
            masquerade_all: cfg.masquerade_all,
            cluster_cidrs: cfg.cluster_cidrs.clone(),
            nodeport_addresses: cfg.nodeport_addresses.clone(),
            localhost_nodeports: cfg.localhost_nodeports,
            conntrack_liberal: cfg.conntrack_tcp_be_liberal,
        }
    }

    /// Rendering options for one family on this node. `loopback` false
    /// leaves loopback addresses out of the NodePort targets (nftables mode
    /// has no localhost NodePorts).
    pub fn render_opts(&self, family: IpFamily, node: &NodeInfo, local_addrs: &[IpAddr], loopback: bool) -> RenderOpts {
        let addrs = family_addresses(
            family,
            node,
            &self.cluster_cidrs,
            &self.nodeport_addresses,
            local_addrs,
            loopback,
        );
        RenderOpts {
            family,
            masquerade_mark: self.masquerade_mark,
            masquerade_all: self.masquerade_all,
            local_cidrs: addrs.local_cidrs,
            nodeports: addrs
                .nodeport_ips
                .map_or(NodePortTargets::AllLocal, NodePortTargets::Ips),
            localhost_nodeports: self.localhost_nodeports && loopback,
            conntrack_liberal: self.conntrack_liberal,
            node_ips: addrs.node_ips,
        }
    }

    /// Whether NodePorts can be limited to addresses read from the node's
    /// interfaces (`--nodeport-addresses` CIDRs): only then do backends need
    /// the local address list.
    pub fn needs_local_addresses(&self) -> bool {
        matches!(self.nodeport_addresses, NodePortAddresses::Cidrs(_))
    }
}

// === impl RenderOpts ===

impl RenderOpts {
    /// What the model's policy plan needs of these options.
    pub fn plan_context(&self, firewall: FirewallScope) -> PlanContext {
        PlanContext {
            family: self.family,
            cluster_cidrs: self.local_cidrs.clone(),
            masquerade_all: self.masquerade_all,
            node_ips: self.node_ips.clone(),
            firewall,
        }
    }
}

/// Resolves `--nodeport-addresses`, the node's IPs and `--cluster-cidr`
/// for `family`. `loopback` false leaves loopback addresses out.
pub fn family_addresses(
    family: IpFamily,
    node: &NodeInfo,
    cluster_cidrs: &[IpNet],
    nodeport_addresses: &NodePortAddresses,
    local_addrs: &[IpAddr],
    loopback: bool,
) -> FamilyAddresses {
    let wanted = |ip: &IpAddr| IpFamily::of(ip) == family && (loopback || !ip.is_loopback());
    let node_ips: Vec<IpAddr> = node.addresses.iter().copied().filter(wanted).collect();
    let nodeport_ips = match nodeport_addresses {
        NodePortAddresses::All => None,
        // kube-proxy's `primary`: the node's primary IP of this family (the
        // first one: InternalIP before ExternalIP), not every node address.
        NodePortAddresses::Primary => Some(node_ips.iter().copied().take(1).collect()),
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

/// Line `line` (1-based) of a loader's `input`, with three lines of context
/// either side, numbered, the offending one marked with `>`. None when the
/// input has no such line.
pub fn error_context(input: &[u8], line: usize) -> Option<String> {
    let text = String::from_utf8_lossy(input);
    let lines: Vec<&str> = text.lines().collect();
    if line == 0 || line > lines.len() {
        return None;
    }
    let lo = line.saturating_sub(4);
    let hi = (line + 3).min(lines.len());
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate().take(hi).skip(lo) {
        let marker = if i + 1 == line { ">" } else { " " };
        let _ = writeln!(out, "{marker}{:>6} {l}", i + 1);
    }
    Some(out)
}

/// The first number after `marker` in `text` (`"line 12 failed"` → 12).
pub fn number_after(text: &str, marker: &str) -> Option<usize> {
    let idx = text.find(marker)?;
    text[idx + marker.len()..]
        .trim_start_matches([':', ' '])
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addrs: &[&str]) -> NodeInfo {
        NodeInfo {
            addresses: addrs.iter().map(|a| a.parse().expect("ip")).collect(),
            ..NodeInfo::named("node-a")
        }
    }

    #[test]
    fn primary_node_port_addresses_are_the_first_ip_of_each_family() {
        let n = node(&["192.168.1.10", "203.0.113.5", "fd00::10", "2001:db8::5"]);
        let v4 = family_addresses(IpFamily::V4, &n, &[], &NodePortAddresses::Primary, &[], true);
        assert_eq!(v4.nodeport_ips, Some(vec!["192.168.1.10".parse().expect("ip")]));
        assert_eq!(v4.node_ips.len(), 2, "every node IP still counts for source ranges");
        let v6 = family_addresses(IpFamily::V6, &n, &[], &NodePortAddresses::Primary, &[], true);
        assert_eq!(v6.nodeport_ips, Some(vec!["fd00::10".parse().expect("ip")]));
    }

    #[test]
    fn error_context_marks_the_line_with_three_either_side() {
        let input = (1..=10).map(|i| format!("line{i}\n")).collect::<String>();
        let ctx = error_context(input.as_bytes(), 5).expect("context");
        assert_eq!(ctx.lines().count(), 7);
        assert!(ctx.contains(">     5 line5"), "{ctx}");
        assert_eq!(error_context(input.as_bytes(), 11), None);
        assert_eq!(number_after("iptables-restore: line 12 failed", "line "), Some(12));
        assert_eq!(number_after("Error occurred at line: 7", "line"), Some(7));
    }
}
