//! The policy plan: routes, refusals, firewall (with the one parameter the
//! modes differ in), masquerade and metric counts, table-driven.

use super::super::builders::mk_service;
use super::super::{
    ClusterIpMasquerade, Endpoint, EndpointSelection, FamilyEndpoints, FirewallScope, IpFamily, NodeInfo, PlanContext,
    PortPlan, Route, SelectionOptions, ServicePort, ServicePortState, TrafficPolicy, select_endpoints,
};
use super::{ip, only_port};

/// A LoadBalancer port (ClusterIP 10.96.0.1, LB 192.0.2.1, NodePort 30080)
/// with the given policies and source ranges.
fn lb_port(internal: TrafficPolicy, external: TrafficPolicy, ranges: &[&str]) -> ServicePort {
    let b = mk_service("ns", "s")
        .type_("LoadBalancer")
        .cluster_ip("10.96.0.1")
        .node_port("p", 80, "TCP", 30080)
        .lb_ingress("192.0.2.1")
        .source_ranges(ranges);
    let mut p = only_port(&b.build());
    p.internal_policy = internal;
    p.external_policy = external;
    p
}

fn endpoint(addr: &str, local: bool) -> Endpoint {
    let mut e = Endpoint::ready(ip(addr), 8080);
    e.is_local = local;
    e
}

/// The desired state of `port` with `endpoints` (IPv4), selected as the
/// model does.
fn state(port: ServicePort, endpoints: Vec<Endpoint>) -> ServicePortState {
    let node = NodeInfo::named("node-1");
    let selection: EndpointSelection = select_endpoints(&port, &endpoints, &node, SelectionOptions::default());
    ServicePortState {
        port,
        v4: FamilyEndpoints { endpoints, selection },
        v6: FamilyEndpoints::default(),
    }
}

fn ctx() -> PlanContext {
    PlanContext {
        family: IpFamily::V4,
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        masquerade_all: false,
        node_ips: vec![ip("192.168.1.10")],
        firewall: FirewallScope::WithEndpoints,
    }
}

#[test]
fn routes_follow_policies_and_where_endpoints_are() {
    use TrafficPolicy::{Cluster, Local};
    // (internal, external, endpoints (addr, local)) → (internal route, external route)
    type Case<'a> = (TrafficPolicy, TrafficPolicy, &'a [(&'a str, bool)], Route, Route);
    let cases: &[Case<'_>] = &[
        (
            Cluster,
            Cluster,
            &[("10.244.1.1", false)],
            Route::Cluster,
            Route::Cluster,
        ),
        (Cluster, Local, &[("10.244.1.1", true)], Route::Cluster, Route::Local),
        (Cluster, Local, &[("10.244.1.1", false)], Route::Cluster, Route::Drop),
        (Local, Cluster, &[("10.244.1.1", false)], Route::Drop, Route::Cluster),
        (
            Local,
            Local,
            &[("10.244.1.1", true), ("10.244.2.1", false)],
            Route::Local,
            Route::Local,
        ),
        (Cluster, Cluster, &[], Route::Reject, Route::Reject),
        (Local, Local, &[], Route::Reject, Route::Reject),
    ];
    for (internal, external, eps, want_internal, want_external) in cases {
        let eps: Vec<Endpoint> = eps.iter().map(|(a, l)| endpoint(a, *l)).collect();
        let s = state(lb_port(*internal, *external, &[]), eps);
        let plan = PortPlan::new(&s, &ctx());
        assert_eq!(
            (plan.internal, plan.external),
            (*want_internal, *want_external),
            "internal={internal} external={external}"
        );
        assert_eq!(plan.no_local_internal(), *want_internal == Route::Drop);
        assert_eq!(plan.no_local_external(), *want_external == Route::Drop);
        assert_eq!(plan.endpoints(plan.internal).is_empty(), !plan.internal.forwards());
    }
}

#[test]
fn terminating_local_endpoint_serves_local_traffic_when_no_ready_one() {
    let mut term = endpoint("10.244.1.1", true);
    term.ready = false;
    term.terminating = true;
    let s = state(
        lb_port(TrafficPolicy::Cluster, TrafficPolicy::Local, &[]),
        vec![term, endpoint("10.244.2.1", false)],
    );
    let plan = PortPlan::new(&s, &ctx());
    assert_eq!(plan.external, Route::Local);
    let local: Vec<String> = plan.local.iter().map(ToString::to_string).collect();
    assert_eq!(local, ["10.244.1.1:8080"]);
}

/// kube-proxy's iptables mode plans no firewall without endpoints (the
/// REJECT answers everyone); its nftables mode always does.
#[test]
fn firewall_scope_decides_the_firewall_of_a_service_without_endpoints() {
    let s = state(
        lb_port(TrafficPolicy::Cluster, TrafficPolicy::Cluster, &["203.0.113.0/24"]),
        vec![],
    );
    let with_endpoints = PortPlan::new(&s, &ctx());
    assert_eq!(with_endpoints.firewall, None);
    assert_eq!(with_endpoints.external, Route::Reject);
    let always = PortPlan::new(
        &s,
        &PlanContext {
            firewall: FirewallScope::Always,
            ..ctx()
        },
    );
    let fw = always.firewall.expect("firewall planned");
    assert_eq!(
        fw.source_ranges,
        vec!["203.0.113.0/24".parse::<ipnet::IpNet>().expect("net")]
    );
}

#[test]
fn firewall_admits_the_lb_ips_only_when_a_range_holds_a_node_ip() {
    let eps = || vec![endpoint("10.244.1.1", false)];
    let outside = state(
        lb_port(TrafficPolicy::Cluster, TrafficPolicy::Cluster, &["203.0.113.0/24"]),
        eps(),
    );
    let fw = PortPlan::new(&outside, &ctx()).firewall.expect("firewall");
    assert!(fw.node_allowance.is_empty());
    let node_range = state(
        lb_port(TrafficPolicy::Cluster, TrafficPolicy::Cluster, &["192.168.1.0/24"]),
        eps(),
    );
    let fw = PortPlan::new(&node_range, &ctx()).firewall.expect("firewall");
    assert_eq!(fw.node_allowance, vec![ip("192.0.2.1")]);
    // No source ranges: no firewall at all.
    let open = state(lb_port(TrafficPolicy::Cluster, TrafficPolicy::Cluster, &[]), eps());
    assert_eq!(PortPlan::new(&open, &ctx()).firewall, None);
}

#[test]
fn masquerade_follows_cluster_cidrs_masquerade_all_and_external_policy() {
    let eps = || vec![endpoint("10.244.1.1", true)];
    let cluster = state(lb_port(TrafficPolicy::Cluster, TrafficPolicy::Cluster, &[]), eps());
    let plan = PortPlan::new(&cluster, &ctx());
    assert_eq!(
        plan.masquerade.cluster_ip,
        ClusterIpMasquerade::NotFrom(ctx().cluster_cidrs)
    );
    assert!(plan.masquerade.external);
    assert!(!plan.masquerade.local_origin_to_cluster);
    assert!(plan.masquerade.pods_to_cluster.is_empty());
    assert!(plan.masquerade.hairpin);

    let all = PortPlan::new(
        &cluster,
        &PlanContext {
            masquerade_all: true,
            ..ctx()
        },
    );
    assert_eq!(all.masquerade.cluster_ip, ClusterIpMasquerade::All);
    let none = PortPlan::new(
        &cluster,
        &PlanContext {
            cluster_cidrs: vec![],
            ..ctx()
        },
    );
    assert_eq!(none.masquerade.cluster_ip, ClusterIpMasquerade::Nothing);

    let local = state(lb_port(TrafficPolicy::Cluster, TrafficPolicy::Local, &[]), eps());
    let plan = PortPlan::new(&local, &ctx());
    assert!(!plan.masquerade.external, "Local keeps the client address");
    assert!(plan.masquerade.local_origin_to_cluster);
    assert_eq!(plan.masquerade.pods_to_cluster, ctx().cluster_cidrs);
}

#[test]
fn affinity_and_health_check_port_come_from_the_service() {
    let mut port = lb_port(TrafficPolicy::Cluster, TrafficPolicy::Local, &[]);
    port.session_affinity = crate::model::SessionAffinity::ClientIp { timeout_seconds: 30 };
    port.health_check_node_port = 32000;
    let s = state(port, vec![endpoint("10.244.1.1", true)]);
    let plan = PortPlan::new(&s, &ctx());
    assert_eq!(plan.affinity, Some(30));
    assert_eq!(plan.health_check_node_port, 32000);
    assert!(plan.dispatches_external());
}
