//! Every chain name of the iptables backend, and kube-proxy's hashing of
//! per-service chain names (`KUBE-SVC-<16 chars of base32(sha256)>`), so
//! operators' `iptables -t nat -L | grep KUBE-SVC-…` habits keep working.

use sha2::{Digest, Sha256};

use crate::model::{Endpoint, ServicePortName};

// nat and filter
pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
// nat
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
// filter
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// kubelet's localnet firewall chain, which kube-proxy also writes.
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";

/// Prefixes of the per-service chains; a chain with one of these is ours.
pub const SVC_PREFIX: &str = "KUBE-SVC-";
pub const SVL_PREFIX: &str = "KUBE-SVL-";
pub const EXT_PREFIX: &str = "KUBE-EXT-";
pub const FW_PREFIX: &str = "KUBE-FW-";
pub const SEP_PREFIX: &str = "KUBE-SEP-";

/// Per-service chain prefixes (what stale-chain cleanup may delete).
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = [SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX];

/// Every chain kproxy (or kube-proxy) installs in the nat table, besides
/// the per-service ones.
pub const NAT_TOP_CHAINS: [&str; 4] = [KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ];

/// The same for the filter table (KUBE-FIREWALL only when localhost
/// NodePorts are on, IPv4).
pub const FILTER_TOP_CHAINS: [&str; 5] = [
    KUBE_SERVICES,
    KUBE_EXTERNAL_SERVICES,
    KUBE_FORWARD,
    KUBE_NODEPORTS,
    KUBE_PROXY_FIREWALL,
];

/// The names of one service port's chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortChains {
    pub svc: String,
    pub svl: String,
    pub ext: String,
    pub fw: String,
}

// === impl PortChains ===

impl PortChains {
    pub fn new(name: &ServicePortName) -> Self {
        let hash = port_proto_hash(&name.to_string(), name.protocol.as_lower());
        Self {
            svc: format!("{SVC_PREFIX}{hash}"),
            svl: format!("{SVL_PREFIX}{hash}"),
            ext: format!("{EXT_PREFIX}{hash}"),
            fw: format!("{FW_PREFIX}{hash}"),
        }
    }
}

/// `KUBE-SEP-…` for one endpoint of one service port.
pub fn sep_chain(name: &ServicePortName, ep: &Endpoint) -> String {
    let input = format!("{name}{}{ep}", name.protocol.as_lower());
    format!("{SEP_PREFIX}{}", hash16(&input))
}

/// Whether a chain name is one of the per-service chains.
pub fn is_service_chain(chain: &str) -> bool {
    SERVICE_CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
}

fn port_proto_hash(service_port: &str, protocol: &str) -> String {
    hash16(&format!("{service_port}{protocol}"))
}

/// The first 16 characters of base32(sha256(input)), as kube-proxy does.
fn hash16(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut encoded = data_encoding::BASE32.encode(&digest);
    encoded.truncate(16);
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServiceName};

    fn spn(ns: &str, name: &str, port: &str, proto: Protocol) -> ServicePortName {
        ServicePortName::new(ServiceName::new(ns, name), port, proto)
    }

    /// The exact names kube-proxy's own tests expect (pkg/proxy/iptables
    /// proxier_test.go), so rules look the same to operators.
    #[test]
    fn chain_names_match_kube_proxy() {
        let p80 = spn("ns1", "svc1", "p80", Protocol::Tcp);
        let chains = PortChains::new(&p80);
        assert_eq!(chains.svc, "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(chains.ext, "KUBE-EXT-XPGD46QRK7WJZT7O");
        let ep = Endpoint::ready("10.180.0.1".parse().expect("ip"), 80);
        assert_eq!(sep_chain(&p80, &ep), "KUBE-SEP-SXIVWICOYRO3J4NJ");
    }

    #[test]
    fn service_chain_prefixes_are_recognised() {
        assert!(is_service_chain("KUBE-SVC-XPGD46QRK7WJZT7O"));
        assert!(is_service_chain("KUBE-SEP-SXIVWICOYRO3J4NJ"));
        assert!(!is_service_chain("KUBE-SERVICES"));
        assert!(!is_service_chain("CILIUM-FOO"));
    }
}
