//! The policy plan: every decision a datapath makes about one service port
//! in one IP family, made once, here. Pure.
//!
//! ```text
//!  ServicePortState (port + EndpointSelection) ─┐
//!                                               ├─▶ PortPlan ─▶ iptables / nftables / ipvs / userspace
//!  PlanContext (family, cluster CIDRs,          │      │          (each maps it onto its own objects)
//!   masqueradeAll, node IPs, mode parameter) ───┘      └─▶ render --format table, metrics, health
//! ```
//!
//! A plan answers, for one service port and family:
//! - where internal traffic (to the ClusterIP) goes, and where external
//!   traffic (NodePorts, externalIPs, load-balancer IPs) goes: to the
//!   cluster-wide endpoints, to this node's endpoints, or nowhere — DROP
//!   when endpoints exist only on other nodes (Local policy), REJECT when the
//!   service has no usable endpoint at all ([`Route`]);
//! - which endpoints each of those uses (terminating fallback and topology
//!   already applied by [`super::select_endpoints`]);
//! - ClientIP affinity and its timeout;
//! - the load-balancer firewall: `loadBalancerSourceRanges`, plus the
//!   allowance for the node's own traffic ([`Firewall`]);
//! - what is masqueraded and why ([`Masquerade`]);
//! - the health-check node port and the counts the metrics report.
//!
//! kube-proxy's iptables and nftables modes differ in one decision, and
//! only that one is a parameter: whether the source-range firewall applies
//! to a service without endpoints ([`FirewallScope`]).

use std::net::IpAddr;

use ipnet::IpNet;

use super::{Endpoint, IpFamily, ServicePortState, SessionAffinity, TrafficPolicy};

/// Where one class of traffic to a service port goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// To the cluster-wide endpoints ([`PortPlan::cluster`]).
    Cluster,
    /// To this node's endpoints ([`PortPlan::local`]).
    Local,
    /// Dropped: the policy is Local and this node has no endpoint, but
    /// others do (kube-proxy: "has no local endpoints").
    Drop,
    /// Rejected (TCP RST / ICMP unreachable): no usable endpoint anywhere
    /// (kube-proxy: "has no endpoints").
    Reject,
}

/// Whether a load-balancer source-range firewall is planned for a service
/// port that has no endpoints. This is the one place kube-proxy's modes
/// really differ:
/// - iptables (`pkg/proxy/iptables/proxier.go`, `usesFWChain :=
///   hasEndpoints && ...`): the firewall chain exists only with endpoints;
///   without, the REJECT in the filter table answers every source.
/// - nftables (`pkg/proxy/nftables/proxier.go`, `usesFWChain :=
///   len(LoadBalancerVIPs) > 0 && len(SourceRanges) > 0`): the firewall
///   drops out-of-range sources whether or not there are endpoints, so they
///   get no REJECT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FirewallScope {
    /// Only when the service has endpoints (iptables, ipvs).
    #[default]
    WithEndpoints,
    /// Whenever the port has LB IPs and source ranges (nftables).
    Always,
}

/// What the plan needs to know about the node and the configuration, for
/// one IP family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanContext {
    pub family: IpFamily,
    /// Pod CIDRs of this family (`--cluster-cidr`): traffic to a ClusterIP
    /// from elsewhere is masqueraded. Empty: no local-traffic detection.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--masquerade-all`: masquerade all traffic to ClusterIPs.
    pub masquerade_all: bool,
    /// The node's own IPs of this family (source-range allowance).
    pub node_ips: Vec<IpAddr>,
    pub firewall: FirewallScope,
}

/// The plan for one service port in one family. Borrowed from the desired
/// state; cheap to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPlan<'a> {
    pub state: &'a ServicePortState,
    pub family: IpFamily,
    /// Endpoints for Cluster-policy traffic (empty when none is used).
    pub cluster: &'a [Endpoint],
    /// Endpoints for Local-policy traffic (empty when none is used or none
    /// is on this node).
    pub local: &'a [Endpoint],
    /// Every endpoint this node may forward to (`cluster ∪ local`).
    pub reachable: &'a [Endpoint],
    /// The service has a usable endpoint somewhere in the cluster.
    pub has_endpoints: bool,
    /// Traffic to the ClusterIP (from pods, the node, or outside).
    pub internal: Route,
    /// Traffic to NodePorts, externalIPs and load-balancer IPs that is
    /// neither short-circuited nor firewalled.
    pub external: Route,
    /// ClientIP session affinity: the timeout in seconds.
    pub affinity: Option<u32>,
    /// The load-balancer source-range firewall, if any.
    pub firewall: Option<Firewall>,
    pub masquerade: Masquerade,
    /// The health-check node port (0: none).
    pub health_check_node_port: u16,
}

/// Which traffic classes of a port are dropped for lack of a local
/// endpoint, for `kubeproxy_sync_proxy_rules_no_local_endpoints_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NoLocal {
    /// Local internal policy, no local endpoint.
    pub internal: bool,
    /// Local external policy on an external port, no local endpoint.
    pub external: bool,
}

/// One part a datapath builds for a service port, beyond its dispatch
/// entries: see [`PortPlan::parts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part<'p> {
    /// The external dispatch (kube-proxy's `KUBE-EXT-*` / `external-*`):
    /// masquerade and short-circuit, then the external route.
    External,
    /// The load-balancer source-range firewall.
    Firewall(&'p Firewall),
    /// The balancing group of a forwarding route (`KUBE-SVC-*` /
    /// `KUBE-SVL-*`, `service-*` / `local-*`, a set of real servers).
    Endpoints(Route),
}

/// The load-balancer source-range firewall of one port and family: traffic
/// to the port's LB IPs from any other source is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firewall {
    /// `spec.loadBalancerSourceRanges` of this family.
    pub source_ranges: Vec<IpNet>,
    /// Extra sources admitted: the LB IPs themselves, when a source range
    /// contains one of the node's IPs (the node reaching a local LB VIP
    /// arrives with the VIP as source). Empty otherwise.
    pub node_allowance: Vec<IpAddr>,
}

/// What is masqueraded (SNATed to the node) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masquerade {
    /// Traffic to the ClusterIP that did not come from a pod.
    pub cluster_ip: ClusterIpMasquerade,
    /// External traffic: masqueraded with external policy Cluster, kept
    /// (client IP preserved) with Local.
    pub external: bool,
    /// External traffic from this node's own addresses with policy Local is
    /// masqueraded and sent to the cluster endpoints.
    pub local_origin_to_cluster: bool,
    /// External traffic from pods (`source ∈ cluster CIDRs`) with policy
    /// Local is short-circuited to the cluster endpoints, unmasqueraded.
    pub pods_to_cluster: Vec<IpNet>,
    /// An endpoint reaching itself through the service (hairpin) is always
    /// masqueraded.
    pub hairpin: bool,
}

/// Masquerading of ClusterIP traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterIpMasquerade {
    /// `--masquerade-all`: everything.
    All,
    /// Traffic whose source is outside these (the cluster CIDRs).
    NotFrom(Vec<IpNet>),
    /// No local-traffic detection configured: nothing.
    Nothing,
}

// === impl Route ===

impl Route {
    /// Whether traffic is sent to endpoints.
    pub fn forwards(self) -> bool {
        matches!(self, Route::Cluster | Route::Local)
    }

    /// The verdict when nothing is forwarded: `Drop` or `Reject`; None when
    /// traffic is forwarded.
    pub fn refusal(self) -> Option<Refusal> {
        match self {
            Route::Drop => Some(Refusal::Drop),
            Route::Reject => Some(Refusal::Reject),
            Route::Cluster | Route::Local => None,
        }
    }

    fn for_policy(policy: TrafficPolicy, has_endpoints: bool, has_local: bool) -> Self {
        match (has_endpoints, policy) {
            (false, _) => Route::Reject,
            (true, TrafficPolicy::Cluster) => Route::Cluster,
            (true, TrafficPolicy::Local) if has_local => Route::Local,
            (true, TrafficPolicy::Local) => Route::Drop,
        }
    }
}

/// How traffic that is not forwarded is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    Drop,
    Reject,
}

// === impl Refusal ===

impl Refusal {
    /// kube-proxy's rule comment: why the traffic is refused.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Drop => "has no local endpoints",
            Refusal::Reject => "has no endpoints",
        }
    }
}

// === impl PortPlan ===

impl<'a> PortPlan<'a> {
    /// Plans `state` for `ctx.family`.
    pub fn new(state: &'a ServicePortState, ctx: &PlanContext) -> Self {
        let port = &state.port;
        let family = ctx.family;
        let sel = &state.family(family).selection;
        let has_local = !sel.local.is_empty();
        let firewall = plan_firewall(state, ctx, sel.has_any);
        let cluster_ip = if ctx.masquerade_all {
            ClusterIpMasquerade::All
        } else if ctx.cluster_cidrs.is_empty() {
            ClusterIpMasquerade::Nothing
        } else {
            ClusterIpMasquerade::NotFrom(ctx.cluster_cidrs.clone())
        };
        let local_external = port.external_policy == TrafficPolicy::Local;
        Self {
            state,
            family,
            cluster: &sel.cluster,
            local: &sel.local,
            reachable: &sel.reachable,
            has_endpoints: sel.has_any,
            internal: Route::for_policy(port.internal_policy, sel.has_any, has_local),
            external: Route::for_policy(port.external_policy, sel.has_any, has_local),
            affinity: match port.session_affinity {
                SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
                SessionAffinity::None => None,
            },
            firewall,
            masquerade: Masquerade {
                cluster_ip,
                external: !local_external,
                local_origin_to_cluster: local_external,
                pods_to_cluster: if local_external {
                    ctx.cluster_cidrs.clone()
                } else {
                    Vec::new()
                },
                hairpin: true,
            },
            health_check_node_port: port.health_check_node_port,
        }
    }

    /// The endpoints a route sends to (empty for Drop and Reject).
    pub fn endpoints(&self, route: Route) -> &'a [Endpoint] {
        match route {
            Route::Cluster => self.cluster,
            Route::Local => self.local,
            Route::Drop | Route::Reject => &[],
        }
    }

    /// Whether the port is reachable from outside the cluster (NodePort,
    /// externalIPs or LB IPs).
    pub fn is_external(&self) -> bool {
        self.state.port.is_externally_reachable()
    }

    /// Whether external traffic is dispatched at all (an external chain or
    /// its equivalent exists): the port is external and has endpoints. With
    /// Local policy and no local endpoint, pods and the node still reach
    /// the cluster endpoints through it; everyone else is dropped.
    pub fn dispatches_external(&self) -> bool {
        self.is_external() && self.has_endpoints
    }

    /// Whether a datapath programs the cluster-wide endpoint group.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.cluster.is_empty() && self.state.port.uses_cluster_endpoints()
    }

    /// Whether a datapath programs the node-local endpoint group.
    pub fn uses_local_endpoints(&self) -> bool {
        !self.local.is_empty() && self.state.port.uses_local_endpoints()
    }

    /// The parts a datapath builds for this port, in kube-proxy's order:
    /// the external dispatch, the firewall, then one balancing group per
    /// endpoint set in use (cluster, then local).
    pub fn parts(&self) -> Vec<Part<'_>> {
        let mut parts = Vec::new();
        if self.dispatches_external() {
            parts.push(Part::External);
        }
        if let Some(fw) = &self.firewall {
            parts.push(Part::Firewall(fw));
        }
        if self.uses_cluster_endpoints() {
            parts.push(Part::Endpoints(Route::Cluster));
        }
        if self.uses_local_endpoints() {
            parts.push(Part::Endpoints(Route::Local));
        }
        parts
    }

    /// Both no-local-endpoint flags.
    pub fn no_local(&self) -> NoLocal {
        NoLocal {
            internal: self.no_local_internal(),
            external: self.no_local_external(),
        }
    }

    /// The parts, each mapped by `f` (a mode's objects for them).
    pub fn map_parts<T>(&self, f: impl FnMut(Part<'_>) -> T) -> Vec<T> {
        self.parts().into_iter().map(f).collect()
    }

    /// Internal traffic is dropped: Local internal policy, no local endpoint
    /// (`kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="internal"}`).
    pub fn no_local_internal(&self) -> bool {
        self.internal == Route::Drop
    }

    /// External traffic is dropped: Local external policy, no local endpoint
    /// (`…_no_local_endpoints_total{traffic_policy="external"}`).
    pub fn no_local_external(&self) -> bool {
        self.is_external() && self.external == Route::Drop
    }
}

fn plan_firewall(state: &ServicePortState, ctx: &PlanContext, has_endpoints: bool) -> Option<Firewall> {
    let port = &state.port;
    let family = ctx.family;
    let source_ranges: Vec<IpNet> = port.source_ranges(family).collect();
    let lb_ips: Vec<IpAddr> = port.load_balancer_ips(family).collect();
    let applies = match ctx.firewall {
        FirewallScope::WithEndpoints => has_endpoints,
        FirewallScope::Always => true,
    };
    if !applies || lb_ips.is_empty() || source_ranges.is_empty() {
        return None;
    }
    let admits_node = source_ranges
        .iter()
        .any(|net| ctx.node_ips.iter().any(|ip| net.contains(ip)));
    Some(Firewall {
        source_ranges,
        node_allowance: if admits_node { lb_ips } else { Vec::new() },
    })
}

/// One health-check node port and what it reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckPort {
    pub port: u16,
    pub service: super::ServiceName,
    /// Ready endpoints of the service on this node.
    pub local_endpoints: usize,
}

/// The health-check node ports the desired state asks for, one per port
/// number, counting each service's ready local endpoint addresses once.
pub fn health_check_ports(desired: &super::DesiredState) -> Vec<HealthCheckPort> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut by_port: BTreeMap<u16, (super::ServiceName, BTreeSet<IpAddr>)> = BTreeMap::new();
    for state in desired.ports.values() {
        let port = state.port.health_check_node_port;
        if port == 0 {
            continue;
        }
        let entry = by_port
            .entry(port)
            .or_insert_with(|| (state.port.name.service.clone(), BTreeSet::new()));
        for family in IpFamily::ALL {
            let local = state.family(family).endpoints.iter().filter(|e| e.is_local && e.ready);
            entry.1.extend(local.map(|e| e.ip));
        }
    }
    by_port
        .into_iter()
        .map(|(port, (service, eps))| HealthCheckPort {
            port,
            service,
            local_endpoints: eps.len(),
        })
        .collect()
}
