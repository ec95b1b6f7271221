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

/// Inserted after `KUBE-` in the IPv6 sets' names (`KUBE-6-CLUSTER-IP`).
pub const IPV6_SET_PREFIX: &str = "6-";

/// Whether `name` is one of kube-proxy's ipvs-mode ipsets, of either family.
pub fn is_kube_ipset(name: &str) -> bool {
    let v4 = match name.strip_prefix("KUBE-6-") {
        Some(rest) => format!("KUBE-{rest}"),
        None => name.to_string(),
    };
    IPSETS.contains(&v4.as_str())
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
}
