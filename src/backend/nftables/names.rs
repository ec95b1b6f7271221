//! Every name of the nftables backend: our tables, the static chains, sets
//! and maps, and kube-proxy's hashed per-service names
//! (`service-<HASH>-ns/name/tcp/port`, `endpoint-<HASH>-ns/name/tcp/port__ip/port`),
//! so `nft list table ip kproxy | grep ns/name` habits from kube-proxy keep
//! working.

use sha2::{Digest, Sha256};

use crate::model::{Endpoint, IpFamily, ServicePortName};

/// Our table, in both the `ip` and `ip6` families.
pub const TABLE: &str = "kproxy";
/// kube-proxy's table (removed by `--cleanup`, never touched otherwise).
pub const KUBE_PROXY_TABLE: &str = "kube-proxy";

// Base chains: `<type>-<hook>`, as kube-proxy names them.
pub const FILTER_PREROUTING: &str = "filter-prerouting";
pub const FILTER_INPUT: &str = "filter-input";
pub const FILTER_FORWARD: &str = "filter-forward";
pub const FILTER_OUTPUT: &str = "filter-output";
pub const FILTER_OUTPUT_POST_DNAT: &str = "filter-output-post-dnat";
pub const NAT_PREROUTING: &str = "nat-prerouting";
pub const NAT_OUTPUT: &str = "nat-output";
pub const NAT_POSTROUTING: &str = "nat-postrouting";

// Regular chains shared by every service.
pub const SERVICES: &str = "services";
pub const MASQUERADING: &str = "masquerading";
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
pub const REJECT_CHAIN: &str = "reject-chain";
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
pub const FIREWALL_CHECK: &str = "firewall-check";

// Sets and verdict maps.
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const FIREWALL_IPS: &str = "firewall-ips";
pub const CLUSTER_IPS: &str = "cluster-ips";
/// `ip . ip` of every endpoint: hairpin traffic to be masqueraded.
pub const HAIRPIN: &str = "hairpin";
pub const NODEPORT_IPS: &str = "nodeport-ips";

/// UDP and SCTP NodePorts (`proto . port`) refused on the loopback address
/// (KEP-6032; empty unless the localhost forwarder is on).
pub const LOCALHOST_NODEPORTS: &str = "localhost-nodeports";
/// Named counters of the packets refused on localhost NodePorts (KEP-6032:
/// only TCP is forwarded), one per refused protocol.
pub const LOCALHOST_REJECTED: [(crate::model::Protocol, &str); 2] = [
    (crate::model::Protocol::Udp, "localhost-nodeport-rejected-udp"),
    (crate::model::Protocol::Sctp, "localhost-nodeport-rejected-sctp"),
];

// Per-service prefixes.
pub const SERVICE_PREFIX: &str = "service-";
pub const LOCAL_PREFIX: &str = "local-";
pub const EXTERNAL_PREFIX: &str = "external-";
pub const FIREWALL_PREFIX: &str = "firewall-";
pub const AFFINITY_PREFIX: &str = "affinity-";

/// nftables' limit on object names, as knftables counts it.
const NAME_LENGTH_MAX: usize = 256;
/// The longest prefix we put before a hashed base, hyphen included.
const PREFIX_LENGTH_MAX: usize = 16;
/// The longest hashed base (`HASH-ns/name/proto/port…`).
const BASE_LENGTH_MAX: usize = NAME_LENGTH_MAX - PREFIX_LENGTH_MAX;

/// The names of one service port's chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortChains {
    /// Cluster-policy endpoints (`service-…`).
    pub service: String,
    /// Local-policy endpoints (`local-…`).
    pub local: String,
    /// External traffic (`external-…`).
    pub external: String,
    /// Load-balancer source ranges (`firewall-…`).
    pub firewall: String,
}

// === impl PortChains ===

impl PortChains {
    pub fn new(name: &ServicePortName) -> Self {
        let base = port_base(name);
        Self {
            service: format!("{SERVICE_PREFIX}{base}"),
            local: format!("{LOCAL_PREFIX}{base}"),
            external: format!("{EXTERNAL_PREFIX}{base}"),
            firewall: format!("{FIREWALL_PREFIX}{base}"),
        }
    }
}

/// `ip` or `ip6`: the nftables family of our table, and the payload
/// protocol of address matches (`ip saddr`).
pub fn family(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// `ipv4_addr` or `ipv6_addr`.
pub fn addr_type(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ipv4_addr",
        IpFamily::V6 => "ipv6_addr",
    }
}

/// `affinity-…`: the ClientIP affinity set of one endpoint.
pub fn affinity_set(name: &ServicePortName, ep: &Endpoint) -> String {
    format!("{AFFINITY_PREFIX}{}", endpoint_base(name, ep))
}

/// Whether a chain is a per-service one (they, and only they, contain `/`).
pub fn is_service_chain(chain: &str) -> bool {
    chain.contains('/')
}

/// Whether a set is a per-endpoint affinity set.
pub fn is_affinity_set(set: &str) -> bool {
    set.starts_with(AFFINITY_PREFIX)
}

/// Where a per-service chain stands in the chain of references (lower
/// refers to higher): deleting chains in this order never deletes a chain
/// that a remaining one still jumps to.
pub fn reference_rank(chain: &str) -> u8 {
    if chain.starts_with(EXTERNAL_PREFIX) { 0 } else { 1 }
}

/// `HASH-ns/name/proto/port`.
fn port_base(name: &ServicePortName) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}",
        name.service.namespace,
        name.service.name,
        name.protocol.as_lower(),
        name.port
    ))
}

/// `HASH-ns/name/proto/port__ip/port`, with an IPv6 address's colons as dots
/// (colons are not allowed in names).
fn endpoint_base(name: &ServicePortName, ep: &Endpoint) -> String {
    let ip = ep.ip.to_string().replace(':', ".");
    hash_and_truncate(&format!(
        "{}/{}/{}/{}__{ip}/{}",
        name.service.namespace,
        name.service.name,
        name.protocol.as_lower(),
        name.port,
        ep.port
    ))
}

/// Prefixes `name` with 8 characters of base32(sha256(name)) and truncates
/// the result to [`BASE_LENGTH_MAX`] (ending in `...`), as kube-proxy does:
/// names stay unique when truncated and distinguishable at a glance.
fn hash_and_truncate(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let encoded = data_encoding::BASE32.encode(&digest);
    let mut out = format!("{}-{name}", &encoded[..8]);
    if out.len() > BASE_LENGTH_MAX {
        // Names are ASCII (DNS labels, IPs, digits): byte truncation is safe,
        // but stay on a char boundary whatever the input.
        let mut cut = BASE_LENGTH_MAX - 3;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServiceName};

    fn spn(ns: &str, name: &str, port: &str) -> ServicePortName {
        ServicePortName::new(ServiceName::new(ns, name), port, Protocol::Tcp)
    }

    fn ep(ip: &str, port: u16) -> Endpoint {
        Endpoint::ready(ip.parse().expect("ip"), port)
    }

    /// The exact names kube-proxy's own tests expect
    /// (pkg/proxy/nftables/proxier_test.go, TestOverallNFTablesRules). We
    /// have no endpoint chains, but affinity sets share their hashed base
    /// (`endpoint-5OJB2KTY-…` there is `affinity-5OJB2KTY-…` here).
    #[test]
    fn names_match_kube_proxy() {
        let svc1 = spn("ns1", "svc1", "p80");
        assert_eq!(PortChains::new(&svc1).service, "service-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            affinity_set(&svc1, &ep("10.180.0.1", 80)),
            "affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        let svc2 = PortChains::new(&spn("ns2", "svc2", "p80"));
        assert_eq!(svc2.service, "service-42NFTM6N-ns2/svc2/tcp/p80");
        assert_eq!(svc2.external, "external-42NFTM6N-ns2/svc2/tcp/p80");
        let svc4 = spn("ns4", "svc4", "p80");
        assert_eq!(
            affinity_set(&svc4, &ep("10.180.0.5", 80)),
            "affinity-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"
        );
        let svc5 = spn("ns5", "svc5", "p80");
        assert_eq!(PortChains::new(&svc5).firewall, "firewall-HVFWP5L3-ns5/svc5/tcp/p80");
        assert_eq!(
            affinity_set(&svc5, &ep("10.180.0.3", 80)),
            "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
        );
    }

    #[test]
    fn ipv6_endpoint_names_have_no_colons() {
        let name = affinity_set(&spn("ns", "svc", "p"), &ep("fd00:1::10", 8080));
        assert!(name.ends_with("-ns/svc/tcp/p__fd00.1..10/8080"), "{name}");
        assert!(!name.contains(':'));
    }

    #[test]
    fn long_names_are_truncated_uniquely() {
        let long = "x".repeat(63);
        let a = PortChains::new(&spn(&long, &long, &format!("{long}a"))).service;
        let b = PortChains::new(&spn(&long, &long, &format!("{long}b"))).service;
        assert!(a.len() <= NAME_LENGTH_MAX && b.len() <= NAME_LENGTH_MAX);
        let v6 = affinity_set(
            &spn(&long, &long, &long),
            &ep("fd00:1111:2222:3333:4444:5555:6666:7777", 65535),
        );
        assert!(v6.len() <= NAME_LENGTH_MAX, "{}", v6.len());
        assert!(v6.ends_with("..."));
        assert_ne!(a, b);
    }

    #[test]
    fn service_chains_are_recognised() {
        assert!(is_service_chain("service-ULMVA6XW-ns1/svc1/tcp/p80"));
        assert!(!is_service_chain(SERVICES));
        assert!(!is_service_chain(NAT_OUTPUT));
        assert!(is_affinity_set("affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"));
        assert!(!is_affinity_set(CLUSTER_IPS));
    }
}
