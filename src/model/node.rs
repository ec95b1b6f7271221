//! The proxy's own Node: name, zone, addresses and deletion state.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

/// The zone label kube-proxy reads for topology hints.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The taint the cluster autoscaler puts on a node it is about to remove;
/// kube-proxy's `/healthz` then answers 503 so load balancers drain it.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// What kproxy knows of the node it runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node name (`--hostname-override` or the host name).
    pub name: String,
    /// `topology.kubernetes.io/zone`, when labelled.
    pub zone: Option<String>,
    /// InternalIP and ExternalIP addresses from the Node status, InternalIP
    /// first, or `--node-ip` when there is no Node object.
    pub addresses: Vec<IpAddr>,
    /// The Node has a deletion timestamp.
    pub deleting: bool,
    /// The Node carries the ToBeDeletedByClusterAutoscaler taint.
    pub to_be_deleted: bool,
}

// === impl NodeInfo ===

impl NodeInfo {
    /// A node known only by name (no Node object seen yet).
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Reads a Node object. Unparseable addresses are skipped.
    pub fn from_node(node: &Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .filter(|z| !z.is_empty())
            .cloned();
        let mut addresses: Vec<IpAddr> = Vec::new();
        let status_addrs = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for wanted in ["InternalIP", "ExternalIP"] {
            for a in status_addrs.into_iter().flatten().filter(|a| a.type_ == wanted) {
                if let Ok(ip) = a.address.parse::<IpAddr>()
                    && !addresses.contains(&ip)
                {
                    addresses.push(ip);
                }
            }
        }
        let to_be_deleted = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
        Self {
            name,
            zone,
            addresses,
            deleting: node.metadata.deletion_timestamp.is_some(),
            to_be_deleted,
        }
    }

    /// Whether `/healthz` should report this node as going away.
    pub fn is_draining(&self) -> bool {
        self.deleting || self.to_be_deleted
    }
}
