//! Every name the ipvs mode uses on the node, kube-proxy's own, so
//! `ip addr show kube-ipvs0` and `ipset list` habits carry over.

/// The dummy interface holding every ClusterIP, externalIP and
/// load-balancer IP, so the node accepts packets for them.
pub const DUMMY_INTERFACE: &str = "kube-ipvs0";

/// kube-proxy's ipvs-mode ipsets (IPv4 names; the IPv6 ones carry
/// [`IPV6_SET_PREFIX`]): what `--cleanup` destroys, and nothing else.
pub const IPSETS: &[&str] = &[
    "KUBE-LOOP-BACK",
    "KUBE-CLUSTER-IP",
    "KUBE-EXTERNAL-IP",
    "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-LOAD-BALANCER-FW",
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-NODE-PORT-TCP",
    "KUBE-NODE-PORT-LOCAL-TCP",
    "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP",
    "KUBE-NODE-PORT-SCTP-HASH",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT",
    "KUBE-IPVS-IPS",
];

/// One of kube-proxy's ipvs-mode ipsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetId {
    LoopBack,
    ClusterIp,
    ExternalIp,
    ExternalIpLocal,
    LoadBalancer,
    LoadBalancerFw,
    LoadBalancerLocal,
    LoadBalancerSourceIp,
    LoadBalancerSourceCidr,
    NodePortTcp,
    NodePortLocalTcp,
    NodePortUdp,
    NodePortLocalUdp,
    NodePortSctp,
    NodePortLocalSctp,
    HealthCheckNodePort,
    IpvsIps,
}

/// A set's IPv4 name, ipset type and the comment its iptables rules carry.
pub struct SetInfo {
    pub id: SetId,
    pub name: &'static str,
    pub kind: &'static str,
    pub comment: &'static str,
}

/// Every set, in kube-proxy's order (also the order they are created in).
pub const SETS: &[SetInfo] = &[
    set(
        SetId::LoopBack,
        "KUBE-LOOP-BACK",
        "hash:ip,port,ip",
        "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
    ),
    set(
        SetId::ClusterIp,
        "KUBE-CLUSTER-IP",
        "hash:ip,port",
        "Kubernetes service cluster ip + port for masquerade purpose",
    ),
    set(
        SetId::ExternalIp,
        "KUBE-EXTERNAL-IP",
        "hash:ip,port",
        "Kubernetes service external ip + port for masquerade and filter purpose",
    ),
    set(
        SetId::ExternalIpLocal,
        "KUBE-EXTERNAL-IP-LOCAL",
        "hash:ip,port",
        "Kubernetes service external ip + port with externalTrafficPolicy=local",
    ),
    set(
        SetId::LoadBalancer,
        "KUBE-LOAD-BALANCER",
        "hash:ip,port",
        "Kubernetes service lb portal",
    ),
    set(
        SetId::LoadBalancerFw,
        "KUBE-LOAD-BALANCER-FW",
        "hash:ip,port",
        "Kubernetes service load balancer ip + port for load balancer with sourceRange",
    ),
    set(
        SetId::LoadBalancerLocal,
        "KUBE-LOAD-BALANCER-LOCAL",
        "hash:ip,port",
        "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
    ),
    set(
        SetId::LoadBalancerSourceIp,
        "KUBE-LOAD-BALANCER-SOURCE-IP",
        "hash:ip,port,ip",
        "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
    ),
    set(
        SetId::LoadBalancerSourceCidr,
        "KUBE-LOAD-BALANCER-SOURCE-CIDR",
        "hash:ip,port,net",
        "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
    ),
    set(
        SetId::NodePortTcp,
        "KUBE-NODE-PORT-TCP",
        "bitmap:port",
        "Kubernetes nodeport TCP port for masquerade purpose",
    ),
    set(
        SetId::NodePortLocalTcp,
        "KUBE-NODE-PORT-LOCAL-TCP",
        "bitmap:port",
        "Kubernetes nodeport TCP port with externalTrafficPolicy=local",
    ),
    set(
        SetId::NodePortUdp,
        "KUBE-NODE-PORT-UDP",
        "bitmap:port",
        "Kubernetes nodeport UDP port for masquerade purpose",
    ),
    set(
        SetId::NodePortLocalUdp,
        "KUBE-NODE-PORT-LOCAL-UDP",
        "bitmap:port",
        "Kubernetes nodeport UDP port with externalTrafficPolicy=local",
    ),
    set(
        SetId::NodePortSctp,
        "KUBE-NODE-PORT-SCTP-HASH",
        "hash:ip,port",
        "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'",
    ),
    set(
        SetId::NodePortLocalSctp,
        "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
        "hash:ip,port",
        "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'",
    ),
    set(
        SetId::HealthCheckNodePort,
        "KUBE-HEALTH-CHECK-NODE-PORT",
        "bitmap:port",
        "Kubernetes health check node port",
    ),
    set(
        SetId::IpvsIps,
        "KUBE-IPVS-IPS",
        "hash:ip",
        "Addresses on the ipvs interface",
    ),
];

const fn set(id: SetId, name: &'static str, kind: &'static str, comment: &'static str) -> SetInfo {
    SetInfo {
        id,
        name,
        kind,
        comment,
    }
}

// === impl SetId ===

impl SetId {
    pub fn info(self) -> &'static SetInfo {
        // Every SetId has exactly one entry in SETS (pinned by a test).
        SETS.iter().find(|s| s.id == self).unwrap_or(&SETS[0])
    }

    /// The set's name in `family` (`KUBE-6-…` for IPv6).
    pub fn name(self, family: crate::model::IpFamily) -> String {
        let v4 = self.info().name;
        match family {
            crate::model::IpFamily::V4 => v4.to_string(),
            // kube-proxy truncates to ipset's 31-character limit
            // (KUBE-6-LOAD-BALANCER-SOURCE-CID).
            crate::model::IpFamily::V6 => v4.replacen("KUBE-", "KUBE-6-", 1).chars().take(MAX_SET_NAME).collect(),
        }
    }
}

// nat chains
pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
pub const KUBE_NODE_PORT: &str = "KUBE-NODE-PORT";
pub const KUBE_LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
// filter chains (and KUBE-NODE-PORT)
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
pub const KUBE_SOURCE_RANGES_FIREWALL: &str = "KUBE-SOURCE-RANGES-FIREWALL";
pub const KUBE_IPVS_FILTER: &str = "KUBE-IPVS-FILTER";
pub const KUBE_IPVS_OUT_FILTER: &str = "KUBE-IPVS-OUT-FILTER";

/// The nat chains the ipvs mode owns (rewritten whole at every change).
pub const NAT_CHAINS: &[&str] = &[
    KUBE_SERVICES,
    KUBE_POSTROUTING,
    KUBE_NODE_PORT,
    KUBE_LOAD_BALANCER,
    KUBE_MARK_MASQ,
];
/// The filter chains the ipvs mode owns.
pub const FILTER_CHAINS: &[&str] = &[
    KUBE_FORWARD,
    KUBE_NODE_PORT,
    KUBE_PROXY_FIREWALL,
    KUBE_SOURCE_RANGES_FIREWALL,
    KUBE_IPVS_FILTER,
    KUBE_IPVS_OUT_FILTER,
];

/// A jump from a built-in chain into one of ours: (table, from, to, comment).
pub type Jump = (&'static str, &'static str, &'static str, &'static str);

/// kube-proxy's jumps, each inserted first in its built-in chain.
pub const JUMPS: &[Jump] = &[
    ("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    ("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    ("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
    ("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    ("filter", "INPUT", KUBE_NODE_PORT, "kubernetes health check rules"),
    ("filter", "INPUT", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    ("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    ("filter", "INPUT", KUBE_IPVS_FILTER, "kubernetes ipvs access filter"),
    (
        "filter",
        "OUTPUT",
        KUBE_IPVS_OUT_FILTER,
        "kubernetes ipvs access filter",
    ),
];

/// ipset's longest set name.
pub const MAX_SET_NAME: usize = 31;

/// Inserted after `KUBE-` in the IPv6 sets' names (`KUBE-6-CLUSTER-IP`).
pub const IPV6_SET_PREFIX: &str = "6-";

/// Whether `name` is one of kube-proxy's ipvs-mode ipsets, of either family.
pub fn is_kube_ipset(name: &str) -> bool {
    IPSETS.contains(&name)
        || IPSETS.iter().any(|v4| {
            let v6: String = v4.replacen("KUBE-", "KUBE-6-", 1).chars().take(MAX_SET_NAME).collect();
            v6 == name
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kube_proxys_sets_are_recognised() {
        assert!(is_kube_ipset("KUBE-CLUSTER-IP"));
        assert!(is_kube_ipset("KUBE-6-LOOP-BACK"));
        assert!(!is_kube_ipset("KUBE-MY-OWN-SET"), "a KUBE- prefix alone is not enough");
        assert!(!is_kube_ipset("cali40all-ipam-pools"));
    }

    #[test]
    fn every_set_has_one_entry_and_the_ipv6_names_keep_kube_proxys_prefix() {
        for s in SETS {
            assert_eq!(SETS.iter().filter(|t| t.id == s.id).count(), 1);
            assert!(IPSETS.contains(&s.name), "{}", s.name);
        }
        assert_eq!(SetId::ClusterIp.name(crate::model::IpFamily::V6), "KUBE-6-CLUSTER-IP");
        // Found by the VM suite: ipset refuses names over 31 characters.
        assert_eq!(
            SetId::LoadBalancerSourceCidr.name(crate::model::IpFamily::V6),
            "KUBE-6-LOAD-BALANCER-SOURCE-CID"
        );
        assert!(is_kube_ipset("KUBE-6-LOAD-BALANCER-SOURCE-CID"));
        assert_eq!(SetId::IpvsIps.info().kind, "hash:ip");
    }
}
