//! Endpoint selection: which endpoints each class of traffic may use, with
//! exactly the semantics of kube-proxy's `CategorizeEndpoints`
//! (`pkg/proxy/topology.go`).
//!
//! ```text
//!   endpoints ──┬─ cluster:   ready ∩ topology (hints)  ──▶ else serving+terminating
//!               ├─ local:     local ∩ ready             ──▶ else local ∩ serving+terminating
//!               └─ reachable: cluster ∪ local (what this node can ever send to)
//! ```
//!
//! Both fallbacks are independent: Cluster may use ready remote endpoints
//! while Local falls back to a terminating local one.

use super::{Endpoint, NodeInfo, ServicePort};

/// Feature switches that change selection; passed in, never read from globals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectionOptions {
    /// kube-proxy's `PreferSameTrafficDistribution` gate (node hints), on by
    /// default since Kubernetes 1.34.
    pub prefer_same_node: bool,
}

/// The outcome of [`select_endpoints`] for one service port and one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSelection {
    /// Endpoints for Cluster-policy traffic, topology applied. Empty when the
    /// port never uses cluster endpoints.
    pub cluster: Vec<Endpoint>,
    /// Endpoints for Local-policy traffic. Empty when the port never uses
    /// local endpoints, or there are none on this node.
    pub local: Vec<Endpoint>,
    /// Union of `cluster` and `local`: every endpoint this node may forward to
    /// (the set whose per-endpoint rules a backend must program).
    pub reachable: Vec<Endpoint>,
    /// Whether the service has a usable endpoint anywhere in the cluster,
    /// even if none is reachable from here. A backend uses it to choose
    /// between "drop" (Local policy, no local endpoint) and "reject" (no
    /// endpoints at all).
    pub has_any: bool,
}

/// The topology mode chosen from hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopologyMode {
    None,
    PreferSameZone,
    PreferSameNode,
}

impl Default for SelectionOptions {
    fn default() -> Self {
        Self { prefer_same_node: true }
    }
}

/// Categorizes `endpoints` (all of one IP family) for `port` on `node`.
pub fn select_endpoints(
    port: &ServicePort,
    endpoints: &[Endpoint],
    node: &NodeInfo,
    opts: SelectionOptions,
) -> EndpointSelection {
    let mut sel = EndpointSelection::default();
    if endpoints.is_empty() {
        return sel;
    }
    let zone = node.zone.as_deref().unwrap_or("");
    let mut mode = TopologyMode::None;

    if port.uses_cluster_endpoints() {
        mode = topology_mode(endpoints, &node.name, zone, opts);
        sel.cluster = filter(endpoints, |ep| {
            ep.ready && available_for_topology(ep, mode, &node.name, zone)
        });
        if sel.cluster.is_empty() {
            // No ready endpoint anywhere (topology falls back by itself).
            sel.cluster = filter(endpoints, Endpoint::is_serving_terminating);
        }
        sel.has_any = !sel.cluster.is_empty();
    }

    if !port.uses_local_endpoints() {
        sel.reachable = sel.cluster.clone();
        return sel;
    }

    let mut local_ready = false;
    let mut local_terminating = false;
    for ep in endpoints {
        if ep.ready {
            sel.has_any = true;
            local_ready |= ep.is_local;
        } else if ep.is_serving_terminating() {
            sel.has_any = true;
            local_terminating |= ep.is_local;
        }
    }
    let mut used_terminating = false;
    if local_ready {
        sel.local = filter(endpoints, |ep| ep.is_local && ep.ready);
    } else if local_terminating {
        used_terminating = true;
        sel.local = filter(endpoints, |ep| ep.is_local && ep.is_serving_terminating());
    }

    if !port.uses_cluster_endpoints() {
        sel.reachable = sel.local.clone();
        return sel;
    }
    if mode == TopologyMode::None && !used_terminating {
        // cluster holds every ready endpoint, so it covers local already.
        sel.reachable = sel.cluster.clone();
        return sel;
    }
    let mut reachable = sel.cluster.clone();
    for ep in &sel.local {
        if !reachable.iter().any(|r| r.ip == ep.ip && r.port == ep.port) {
            reachable.push(ep.clone());
        }
    }
    reachable.sort_by_key(|a| (a.ip, a.port));
    sel.reachable = reachable;
    sel
}

fn filter(endpoints: &[Endpoint], pred: impl Fn(&Endpoint) -> bool) -> Vec<Endpoint> {
    endpoints.iter().filter(|ep| pred(ep)).cloned().collect()
}

fn topology_mode(endpoints: &[Endpoint], node_name: &str, zone: &str, opts: SelectionOptions) -> TopologyMode {
    let mut any_ready = false;
    let mut all_node_hints = true;
    let mut hint_for_node = false;
    let mut all_zone_hints = true;
    let mut hint_for_zone = false;
    for ep in endpoints.iter().filter(|ep| ep.ready) {
        any_ready = true;
        if ep.node_hints.is_empty() {
            all_node_hints = false;
        } else if ep.node_hints.contains(node_name) {
            hint_for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if ep.zone_hints.contains(zone) {
            hint_for_zone = true;
        }
    }
    if !any_ready {
        return TopologyMode::None;
    }
    if opts.prefer_same_node && all_node_hints && hint_for_node {
        return TopologyMode::PreferSameNode;
    }
    if all_zone_hints && hint_for_zone {
        return TopologyMode::PreferSameZone;
    }
    TopologyMode::None
}

fn available_for_topology(ep: &Endpoint, mode: TopologyMode, node_name: &str, zone: &str) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => ep.node_hints.contains(node_name),
        TopologyMode::PreferSameZone => ep.zone_hints.contains(zone),
    }
}
