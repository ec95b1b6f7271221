//! `select_endpoints`, mirroring kube-proxy's `TestCategorizeEndpoints`
//! (pkg/proxy/topology_test.go) case by case, plus the node-hint
//! (PreferSameNode) and fallback cases.

use std::net::SocketAddr;

use super::super::builders::mk_service;
use super::super::{Endpoint, NodeInfo, SelectionOptions, ServicePort, TrafficPolicy, select_endpoints};
use super::{addrs, only_port, sorted};

const NODE: &str = "node-1";

/// A service port with kube-proxy's test knobs: `internalPolicyLocal`,
/// `externalPolicyLocal` and `nodePort` (0: not externally accessible).
fn svc(internal_local: bool, external_local: bool, node_port: u16) -> ServicePort {
    let mut p = only_port(
        &mk_service("ns", "s")
            .cluster_ip("10.96.0.1")
            .port("p", 80, "TCP")
            .build(),
    );
    let policy = |local| {
        if local {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        }
    };
    p.internal_policy = policy(internal_local);
    p.external_policy = policy(external_local);
    p.node_port = node_port;
    p
}

/// `BaseServicePortInfo{}`: Cluster / Cluster, not externally accessible.
fn cluster() -> ServicePort {
    svc(false, false, 0)
}

/// An endpoint as kube-proxy's test writes `BaseEndpointInfo{endpoint: "ip:port"}`:
/// every flag false (not even ready) until set.
fn ep(addr: &str) -> Endpoint {
    let sa: SocketAddr = addr.parse().expect("valid ip:port literal in a test");
    let mut e = Endpoint::ready(sa.ip(), sa.port());
    e.ready = false;
    e.serving = false;
    e
}

trait EpExt {
    fn ready(self) -> Self;
    fn serving_terminating(self) -> Self;
    fn terminating_not_serving(self) -> Self;
    fn local(self) -> Self;
    fn zones(self, zones: &[&str]) -> Self;
    fn nodes(self, nodes: &[&str]) -> Self;
}

impl EpExt for Endpoint {
    fn ready(mut self) -> Self {
        self.ready = true;
        self.serving = true;
        self
    }
    fn serving_terminating(mut self) -> Self {
        self.ready = false;
        self.serving = true;
        self.terminating = true;
        self
    }
    fn terminating_not_serving(mut self) -> Self {
        self.ready = false;
        self.serving = false;
        self.terminating = true;
        self
    }
    fn local(mut self) -> Self {
        self.is_local = true;
        self.node_name = Some(NODE.to_string());
        self
    }
    fn zones(mut self, zones: &[&str]) -> Self {
        self.zone_hints = zones.iter().map(|z| (*z).to_string()).collect();
        self
    }
    fn nodes(mut self, nodes: &[&str]) -> Self {
        self.node_hints = nodes.iter().map(|n| (*n).to_string()).collect();
        self
    }
}

struct Case {
    name: &'static str,
    /// The node's `topology.kubernetes.io/zone`.
    zone: Option<&'static str>,
    prefer_same_node: bool,
    port: ServicePort,
    endpoints: Vec<Endpoint>,
    /// `None`: the port does not use this kind of endpoints (kube-proxy's
    /// nil); the model then returns an empty list.
    cluster: Option<&'static [&'static str]>,
    local: Option<&'static [&'static str]>,
    /// Needed only when both `cluster` and `local` are set.
    all: Option<&'static [&'static str]>,
    /// has_any despite `all` being empty.
    only_remote: bool,
}

impl Default for Case {
    fn default() -> Self {
        Self {
            name: "",
            zone: None,
            prefer_same_node: true,
            port: cluster(),
            endpoints: Vec::new(),
            cluster: None,
            local: None,
            all: None,
            only_remote: false,
        }
    }
}

fn run(cases: Vec<Case>) {
    for c in cases {
        let node = NodeInfo {
            zone: c.zone.map(str::to_string),
            ..NodeInfo::named(NODE)
        };
        let opts = SelectionOptions {
            prefer_same_node: c.prefer_same_node,
        };
        let sel = select_endpoints(&c.port, &c.endpoints, &node, opts);
        let want_cluster = c.cluster.unwrap_or_default();
        let want_local = c.local.unwrap_or_default();
        assert_eq!(addrs(&sel.cluster), sorted(want_cluster), "{}: cluster", c.name);
        assert_eq!(addrs(&sel.local), sorted(want_local), "{}: local", c.name);
        let want_all = match (c.cluster, c.local) {
            (Some(cl), None) => cl,
            (None, Some(lo)) => lo,
            _ => c.all.unwrap_or_default(),
        };
        assert_eq!(addrs(&sel.reachable), sorted(want_all), "{}: reachable", c.name);
        let want_any = !want_all.is_empty() || c.only_remote;
        assert_eq!(sel.has_any, want_any, "{}: has_any", c.name);
        // `reachable` is sorted and free of duplicates.
        let mut r = sel.reachable.clone();
        r.sort_by_key(|e| (e.ip, e.port));
        r.dedup_by_key(|e| (e.ip, e.port));
        assert_eq!(r, sel.reachable, "{}: reachable order", c.name);
    }
}

/// kube-proxy's TestCategorizeEndpoints, in its order.
#[test]
fn categorize_endpoints_matches_kube_proxy_table() {
    let four_zoned = || {
        vec![
            ep("10.1.2.3:80").zones(&["zone-a"]).ready(),
            ep("10.1.2.4:80").zones(&["zone-b"]).ready(),
            ep("10.1.2.5:80").zones(&["zone-c"]).ready(),
            ep("10.1.2.6:80").zones(&["zone-a"]).ready(),
        ]
    };
    run(vec![
        Case {
            name: "topology used: all endpoints have hints, node zone labelled and matched",
            zone: Some("zone-a"),
            endpoints: four_zoned(),
            cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
            ..Case::default()
        },
        Case {
            name: "externalTrafficPolicy: Local, topology ignored for Local endpoints",
            zone: Some("zone-a"),
            port: svc(false, true, 8080),
            endpoints: vec![
                ep("10.1.2.3:80").zones(&["zone-a"]).ready().local(),
                ep("10.1.2.4:80").zones(&["zone-b"]).ready().local(),
                ep("10.1.2.5:80").zones(&["zone-c"]).ready(),
                ep("10.1.2.6:80").zones(&["zone-a"]).ready(),
            ],
            cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
            local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
            all: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
            ..Case::default()
        },
        Case {
            name: "internalTrafficPolicy: Local, topology ignored for Local endpoints",
            zone: Some("zone-a"),
            port: svc(true, false, 8080),
            endpoints: vec![
                ep("10.1.2.3:80").zones(&["zone-a"]).ready().local(),
                ep("10.1.2.4:80").zones(&["zone-b"]).ready().local(),
                ep("10.1.2.5:80").zones(&["zone-c"]).ready(),
                ep("10.1.2.6:80").zones(&["zone-a"]).ready(),
            ],
            cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
            local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
            all: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
            ..Case::default()
        },
        Case {
            name: "empty node labels",
            zone: None,
            endpoints: vec![ep("10.1.2.3:80").zones(&["zone-a"]).ready()],
            cluster: Some(&["10.1.2.3:80"]),
            ..Case::default()
        },
        Case {
            name: "empty zone label",
            zone: Some(""),
            endpoints: vec![ep("10.1.2.3:80").zones(&["zone-a"]).ready()],
            cluster: Some(&["10.1.2.3:80"]),
            ..Case::default()
        },
        Case {
            name: "node in different zone, no endpoint filtering",
            zone: Some("zone-b"),
            endpoints: vec![ep("10.1.2.3:80").zones(&["zone-a"]).ready()],
            cluster: Some(&["10.1.2.3:80"]),
            ..Case::default()
        },
        Case {
            name: "unready endpoint",
            zone: Some("zone-a"),
            endpoints: vec![
                ep("10.1.2.3:80").zones(&["zone-a"]).ready(),
                ep("10.1.2.4:80").zones(&["zone-b"]).ready(),
                ep("10.1.2.5:80").zones(&["zone-c"]).ready(),
                ep("10.1.2.6:80").zones(&["zone-a"]),
            ],
            cluster: Some(&["10.1.2.3:80"]),
            ..Case::default()
        },
        Case {
            name: "only unready endpoints in same zone (should not filter)",
            zone: Some("zone-a"),
            endpoints: vec![
                ep("10.1.2.3:80").zones(&["zone-a"]),
                ep("10.1.2.4:80").zones(&["zone-b"]).ready(),
                ep("10.1.2.5:80").zones(&["zone-c"]).ready(),
                ep("10.1.2.6:80").zones(&["zone-a"]),
            ],
            cluster: Some(&["10.1.2.4:80", "10.1.2.5:80"]),
            ..Case::default()
        },
        Case {
            name: "missing hints, no filtering applied",
            zone: Some("zone-a"),
            endpoints: vec![
                ep("10.1.2.3:80").zones(&["zone-a"]).ready(),
                ep("10.1.2.4:80").zones(&["zone-b"]).ready(),
                ep("10.1.2.5:80").ready(),
                ep("10.1.2.6:80").zones(&["zone-a"]).ready(),
            ],
            cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
            ..Case::default()
        },
        Case {
            name: "multiple hints per endpoint, filtering includes any endpoint with zone included",
            zone: Some("zone-c"),
            endpoints: vec![
                ep("10.1.2.3:80").zones(&["zone-a", "zone-b", "zone-c"]).ready(),
                ep("10.1.2.4:80").zones(&["zone-b", "zone-c"]).ready(),
                ep("10.1.2.5:80").zones(&["zone-b", "zone-d"]).ready(),
                ep("10.1.2.6:80").zones(&["zone-c"]).ready(),
            ],
            cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
            ..Case::default()
        },
        Case {
            name: "conflicting topology and localness require merging allEndpoints",
            zone: Some("zone-a"),
            port: svc(false, true, 8080),
            endpoints: vec![
                ep("10.0.0.0:80").zones(&["zone-a"]).ready().local(),
                ep("10.0.0.1:80").zones(&["zone-b"]).ready().local(),
                ep("10.0.0.2:80").zones(&["zone-a"]).ready(),
                ep("10.0.0.3:80").zones(&["zone-b"]).ready(),
            ],
            cluster: Some(&["10.0.0.0:80", "10.0.0.2:80"]),
            local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            all: Some(&["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"]),
            ..Case::default()
        },
        Case {
            name: "internalTrafficPolicy: Local, with empty endpoints",
            port: svc(true, false, 0),
            endpoints: vec![],
            local: Some(&[]),
            ..Case::default()
        },
        Case {
            name: "internalTrafficPolicy: Local, but all endpoints are remote",
            port: svc(true, false, 0),
            endpoints: vec![ep("10.0.0.0:80").ready(), ep("10.0.0.1:80").ready()],
            local: Some(&[]),
            only_remote: true,
            ..Case::default()
        },
        Case {
            name: "internalTrafficPolicy: Local, all endpoints are local",
            port: svc(true, false, 0),
            endpoints: vec![ep("10.0.0.0:80").ready().local(), ep("10.0.0.1:80").ready().local()],
            local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "internalTrafficPolicy: Local, some endpoints are local",
            port: svc(true, false, 0),
            endpoints: vec![ep("10.0.0.0:80").ready().local(), ep("10.0.0.1:80").ready()],
            local: Some(&["10.0.0.0:80"]),
            ..Case::default()
        },
        Case {
            name: "Cluster traffic policy, endpoints not Ready",
            endpoints: vec![ep("10.0.0.0:80"), ep("10.0.0.1:80")],
            cluster: Some(&[]),
            ..Case::default()
        },
        Case {
            name: "Cluster traffic policy, some endpoints are Ready",
            endpoints: vec![ep("10.0.0.0:80"), ep("10.0.0.1:80").ready()],
            cluster: Some(&["10.0.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "Cluster traffic policy, all endpoints are terminating",
            endpoints: vec![
                ep("10.0.0.0:80").serving_terminating().local(),
                ep("10.0.0.1:80").serving_terminating(),
            ],
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "iTP: Local, eTP: Cluster, some endpoints local",
            port: svc(true, false, 8080),
            endpoints: vec![ep("10.0.0.0:80").ready().local(), ep("10.0.0.1:80").ready()],
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            local: Some(&["10.0.0.0:80"]),
            all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "iTP: Cluster, eTP: Local, some endpoints local",
            port: svc(false, true, 8080),
            endpoints: vec![ep("10.0.0.0:80").ready().local(), ep("10.0.0.1:80").ready()],
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            local: Some(&["10.0.0.0:80"]),
            all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "iTP: Local, eTP: Local, some endpoints local",
            port: svc(true, true, 8080),
            endpoints: vec![ep("10.0.0.0:80").ready().local(), ep("10.0.0.1:80").ready()],
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            local: Some(&["10.0.0.0:80"]),
            all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "iTP: Local, eTP: Local, all endpoints remote",
            port: svc(true, true, 8080),
            endpoints: vec![ep("10.0.0.0:80").ready(), ep("10.0.0.1:80").ready()],
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            local: Some(&[]),
            all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "iTP: Local, eTP: Local, all endpoints remote and terminating",
            port: svc(true, true, 8080),
            endpoints: vec![
                ep("10.0.0.0:80").serving_terminating(),
                ep("10.0.0.1:80").serving_terminating(),
            ],
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            local: Some(&[]),
            all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            only_remote: true,
            ..Case::default()
        },
        Case {
            name: "iTP: Cluster, eTP: Local, with terminating endpoints",
            port: svc(false, true, 8080),
            endpoints: vec![
                ep("10.0.0.0:80").ready(),
                ep("10.0.0.1:80").local(),
                ep("10.0.0.2:80").serving_terminating().local(),
                ep("10.0.0.3:80").serving_terminating(),
            ],
            cluster: Some(&["10.0.0.0:80"]),
            local: Some(&["10.0.0.2:80"]),
            all: Some(&["10.0.0.0:80", "10.0.0.2:80"]),
            ..Case::default()
        },
        Case {
            name: "externalTrafficPolicy ignored if not externally accessible",
            port: svc(false, true, 0),
            endpoints: vec![ep("10.0.0.0:80").ready(), ep("10.0.0.1:80").ready().local()],
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "no cluster endpoints for iTP:Local internal-only service",
            port: svc(true, false, 0),
            endpoints: vec![ep("10.0.0.0:80").ready(), ep("10.0.0.1:80").ready().local()],
            local: Some(&["10.0.0.1:80"]),
            ..Case::default()
        },
    ]);
}

/// The PreferSameNode (node hints) cases kube-proxy added with the
/// PreferSameTrafficDistribution gate.
#[test]
fn node_hints_take_precedence_over_zone_hints_when_usable() {
    let hinted = || {
        vec![
            ep("10.1.2.3:80").zones(&["zone-a"]).nodes(&[NODE]).ready(),
            ep("10.1.2.4:80").zones(&["zone-a"]).nodes(&["node-2"]).ready(),
            ep("10.1.2.5:80").zones(&["zone-b"]).nodes(&["node-3"]).ready(),
        ]
    };
    let mut one_without_node_hint = hinted();
    one_without_node_hint[2].node_hints.clear();
    let mut none_for_us = hinted();
    none_for_us[0].node_hints = ["node-9".to_string()].into();
    run(vec![
        Case {
            name: "all endpoints have node hints and one is for this node",
            zone: Some("zone-a"),
            endpoints: hinted(),
            cluster: Some(&["10.1.2.3:80"]),
            ..Case::default()
        },
        Case {
            name: "node hints ignored with prefer_same_node off: zone hints used",
            zone: Some("zone-a"),
            prefer_same_node: false,
            endpoints: hinted(),
            cluster: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
            ..Case::default()
        },
        Case {
            name: "an endpoint without node hints: fall back to zone hints",
            zone: Some("zone-a"),
            endpoints: one_without_node_hint,
            cluster: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
            ..Case::default()
        },
        Case {
            name: "no node hint for this node: fall back to zone hints",
            zone: Some("zone-a"),
            endpoints: none_for_us,
            cluster: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
            ..Case::default()
        },
        Case {
            name: "node hints used even when the node has no zone",
            zone: None,
            endpoints: hinted(),
            cluster: Some(&["10.1.2.3:80"]),
            ..Case::default()
        },
        Case {
            name: "unready endpoints' missing hints do not disable topology",
            zone: Some("zone-a"),
            endpoints: vec![
                ep("10.1.2.3:80").nodes(&[NODE]).ready(),
                ep("10.1.2.4:80").nodes(&["node-2"]).ready(),
                ep("10.1.2.5:80"),
            ],
            cluster: Some(&["10.1.2.3:80"]),
            ..Case::default()
        },
        Case {
            name: "node hints ignored for Local-only traffic",
            port: svc(true, false, 0),
            zone: Some("zone-a"),
            endpoints: vec![
                ep("10.1.2.3:80").nodes(&["node-2"]).ready().local(),
                ep("10.1.2.4:80").nodes(&[NODE]).ready().local(),
                ep("10.1.2.5:80").nodes(&[NODE]).ready(),
            ],
            local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
            ..Case::default()
        },
        Case {
            name: "node-hint topology with eTP Local merges local endpoints into reachable",
            port: svc(false, true, 30080),
            zone: Some("zone-a"),
            endpoints: vec![
                ep("10.1.2.3:80").nodes(&["node-2"]).ready().local(),
                ep("10.1.2.4:80").nodes(&[NODE]).ready(),
            ],
            cluster: Some(&["10.1.2.4:80"]),
            local: Some(&["10.1.2.3:80"]),
            all: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
            ..Case::default()
        },
    ]);
}

#[test]
fn terminating_fallback_rules() {
    run(vec![
        Case {
            name: "terminating endpoints used when none ready, not-serving ones excluded",
            endpoints: vec![
                ep("10.0.0.1:80").serving_terminating(),
                ep("10.0.0.2:80").terminating_not_serving(),
                ep("10.0.0.3:80"),
            ],
            cluster: Some(&["10.0.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "terminating endpoints not used while any endpoint is ready",
            endpoints: vec![ep("10.0.0.1:80").serving_terminating(), ep("10.0.0.2:80").ready()],
            cluster: Some(&["10.0.0.2:80"]),
            ..Case::default()
        },
        Case {
            name: "only not-serving terminating endpoints: nothing, and no endpoints at all",
            endpoints: vec![ep("10.0.0.1:80").terminating_not_serving()],
            cluster: Some(&[]),
            ..Case::default()
        },
        Case {
            name: "terminating fallback ignores zone hints",
            zone: Some("zone-a"),
            endpoints: vec![
                ep("10.0.0.1:80").zones(&["zone-a"]).serving_terminating(),
                ep("10.0.0.2:80").zones(&["zone-b"]).serving_terminating(),
            ],
            cluster: Some(&["10.0.0.1:80", "10.0.0.2:80"]),
            ..Case::default()
        },
        Case {
            name: "Local falls back to local serving-terminating while Cluster uses remote ready",
            port: svc(false, true, 30080),
            endpoints: vec![
                ep("10.0.0.1:80").ready(),
                ep("10.0.0.2:80").serving_terminating().local(),
            ],
            cluster: Some(&["10.0.0.1:80"]),
            local: Some(&["10.0.0.2:80"]),
            all: Some(&["10.0.0.1:80", "10.0.0.2:80"]),
            ..Case::default()
        },
        Case {
            name: "local ready endpoint wins over local terminating",
            port: svc(true, false, 0),
            endpoints: vec![
                ep("10.0.0.1:80").ready().local(),
                ep("10.0.0.2:80").serving_terminating().local(),
            ],
            local: Some(&["10.0.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "iTP Local with only remote terminating endpoints: has_any, nothing reachable",
            port: svc(true, false, 0),
            endpoints: vec![ep("10.0.0.1:80").serving_terminating()],
            local: Some(&[]),
            only_remote: true,
            ..Case::default()
        },
    ]);
}

#[test]
fn empty_endpoints_select_nothing_and_report_none() {
    for port in [
        svc(false, false, 0),
        svc(true, false, 0),
        svc(false, true, 30080),
        svc(true, true, 30080),
    ] {
        run(vec![Case {
            name: "empty",
            port,
            endpoints: vec![],
            ..Case::default()
        }]);
    }
}

#[test]
fn selection_keeps_endpoint_details() {
    let port = svc(false, false, 0);
    let mut e = ep("10.0.0.1:80").ready().local().zones(&["zone-a"]);
    e.zone = Some("zone-a".to_string());
    let sel = select_endpoints(
        &port,
        std::slice::from_ref(&e),
        &NodeInfo::named(NODE),
        SelectionOptions::default(),
    );
    assert_eq!(sel.cluster, vec![e.clone()]);
    assert_eq!(sel.reachable, vec![e]);
}

#[test]
fn prefer_same_node_is_on_by_default() {
    assert!(SelectionOptions::default().prefer_same_node);
}
