//! The nouns of the service model: names, protocols, policies and the two
//! records every backend consumes, [`ServicePort`] and [`Endpoint`].

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// A Service's identity: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

/// One port of one Service: `namespace/name:port` plus its protocol.
///
/// This is the key of everything a backend programs. The port name is the
/// Service port's `name` (empty for an unnamed single port), matching the
/// EndpointSlice port name the endpoint controller writes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub service: ServiceName,
    pub port: String,
    pub protocol: Protocol,
}

/// A transport protocol kube-proxy forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// An IP family. kube-proxy runs one proxier per family; so do our backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    #[default]
    V4,
    V6,
}

/// Which endpoints a class of traffic may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    /// Any endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on this node.
    Local,
}

/// `spec.sessionAffinity`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SessionAffinity {
    #[default]
    None,
    /// Stick a client IP to one endpoint for `timeout_seconds`.
    ClientIp { timeout_seconds: u32 },
}

/// `spec.trafficDistribution`, as far as endpoint selection cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TrafficDistribution {
    #[default]
    Unset,
    PreferSameZone,
    PreferSameNode,
}

/// A virtual address a service port answers on, typed by where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Vip {
    ClusterIp(IpAddr),
    ExternalIp(IpAddr),
    LoadBalancer(IpAddr),
}

/// Everything a backend needs to know about one service port, already
/// validated and normalised. Built by [`crate::model::service_ports`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    /// Cluster IPs, at most one per family.
    pub cluster_ips: Vec<IpAddr>,
    pub port: u16,
    /// 0 when the service has no node port.
    pub node_port: u16,
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs (those with `ipMode: Proxy` are left out).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`, parsed; invalid entries are dropped
    /// with a warning by the converter.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// Effective external policy: `Local` only for externally reachable
    /// services (NodePort, LoadBalancer, or with externalIPs).
    pub external_policy: TrafficPolicy,
    pub internal_policy: TrafficPolicy,
    /// The health-check node port, set only when `external_policy` is Local.
    pub health_check_node_port: u16,
    pub session_affinity: SessionAffinity,
    pub traffic_distribution: TrafficDistribution,
}

/// One endpoint address of a service port, merged from EndpointSlices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Whether the endpoint runs on this node (its `nodeName` is ours).
    pub is_local: bool,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub zone_hints: BTreeSet<String>,
    pub node_hints: BTreeSet<String>,
}

// === impl ServiceName ===

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl ServicePortName ===

impl ServicePortName {
    pub fn new(service: ServiceName, port: impl Into<String>, protocol: Protocol) -> Self {
        Self {
            service,
            port: port.into(),
            protocol,
        }
    }
}

/// `ns/name:port` (just `ns/name` for an unnamed port), as kube-proxy writes
/// it in rule comments; the protocol is not part of it, exactly like
/// kube-proxy's `ServicePortName.String()`.
impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}", self.service)
        } else {
            write!(f, "{}:{}", self.service, self.port)
        }
    }
}

// === impl Protocol ===

impl Protocol {
    /// Parses the API's spelling; `None` (absent) means TCP.
    pub fn from_api(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// Lower-case, as iptables and nft spell it.
    pub fn as_lower(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    /// Upper-case, as the API spells it.
    pub fn as_api(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_api())
    }
}

// === impl IpFamily ===

impl IpFamily {
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }

    /// "IPv4" / "IPv6", as the metrics' `ip_family` label spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl TrafficPolicy ===

impl fmt::Display for TrafficPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cluster => "Cluster",
            Self::Local => "Local",
        })
    }
}

// === impl Vip ===

impl Vip {
    pub fn ip(&self) -> IpAddr {
        match *self {
            Vip::ClusterIp(ip) | Vip::ExternalIp(ip) | Vip::LoadBalancer(ip) => ip,
        }
    }
}

// === impl ServicePort ===

impl ServicePort {
    /// The cluster IP of one family, if the service has one.
    pub fn cluster_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.cluster_ips.iter().copied().find(|ip| IpFamily::of(ip) == family)
    }

    /// Whether the service has any address (or node port) in this family.
    pub fn has_family(&self, family: IpFamily) -> bool {
        self.cluster_ip(family).is_some()
    }

    /// External IPs of one family.
    pub fn external_ips(&self, family: IpFamily) -> impl Iterator<Item = IpAddr> + '_ {
        self.external_ips
            .iter()
            .copied()
            .filter(move |ip| IpFamily::of(ip) == family)
    }

    /// Load-balancer ingress IPs of one family.
    pub fn load_balancer_ips(&self, family: IpFamily) -> impl Iterator<Item = IpAddr> + '_ {
        self.load_balancer_ips
            .iter()
            .copied()
            .filter(move |ip| IpFamily::of(ip) == family)
    }

    /// Source ranges of one family.
    pub fn source_ranges(&self, family: IpFamily) -> impl Iterator<Item = IpNet> + '_ {
        self.load_balancer_source_ranges
            .iter()
            .copied()
            .filter(move |net| IpFamily::of_net(net) == family)
    }

    /// Every VIP of one family, typed.
    pub fn vips(&self, family: IpFamily) -> Vec<Vip> {
        let mut vips: Vec<Vip> = self.cluster_ip(family).map(Vip::ClusterIp).into_iter().collect();
        vips.extend(self.external_ips(family).map(Vip::ExternalIp));
        vips.extend(self.load_balancer_ips(family).map(Vip::LoadBalancer));
        vips
    }

    /// Whether traffic from outside the cluster can reach this port: it has
    /// a node port, external IPs or load-balancer IPs.
    pub fn is_externally_reachable(&self) -> bool {
        self.node_port != 0 || !self.external_ips.is_empty() || !self.load_balancer_ips.is_empty()
    }

    /// Whether any traffic class uses cluster-wide endpoints. An externally
    /// reachable port always does, even with a Local external policy: pods
    /// and the node reaching an external VIP are short-circuited to the
    /// cluster endpoints, as kube-proxy does.
    pub fn uses_cluster_endpoints(&self) -> bool {
        self.internal_policy == TrafficPolicy::Cluster || self.is_externally_reachable()
    }

    /// Whether any traffic class uses node-local endpoints.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy == TrafficPolicy::Local
            || (self.is_externally_reachable() && self.external_policy == TrafficPolicy::Local)
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// A ready endpoint on no particular node, for tests and builders.
    pub fn ready(ip: IpAddr, port: u16) -> Self {
        Self {
            ip,
            port,
            ready: true,
            serving: true,
            terminating: false,
            is_local: false,
            node_name: None,
            zone: None,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        }
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.ip)
    }

    /// Whether this endpoint may take new traffic as a last resort: serving
    /// but terminating.
    pub fn is_serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// `ip:port`, with brackets for IPv6, as kube-proxy prints endpoints.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}
