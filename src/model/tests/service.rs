//! Service → ServicePort conversion, as kube-proxy's `newBaseServiceInfo`.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::super::builders::mk_service;
use super::super::service::SOURCE_RANGES_ANNOTATION;
use super::super::{
    IpFamily, Protocol, ServicePort, ServiceSkip, SessionAffinity, TrafficDistribution, TrafficPolicy, Vip,
};
use super::{convert, ip, only_port, spn};

fn net(s: &str) -> IpNet {
    s.parse().expect("valid CIDR literal in a test")
}

#[test]
fn ports_are_keyed_by_namespace_name_port_name_and_protocol() {
    let svc = mk_service("ns1", "dns")
        .cluster_ip("10.96.0.10")
        .port("dns", 53, "UDP")
        .port("dns-tcp", 53, "TCP")
        .port("sig", 9000, "SCTP")
        .build();
    let (ports, problems) = convert(&svc);
    let ports = ports.expect("converts");
    assert!(problems.is_empty(), "{problems:?}");
    let names: Vec<_> = ports.iter().map(|p| p.name.clone()).collect();
    assert_eq!(
        names,
        vec![
            spn("ns1", "dns", "dns", Protocol::Udp),
            spn("ns1", "dns", "dns-tcp", Protocol::Tcp),
            spn("ns1", "dns", "sig", Protocol::Sctp),
        ]
    );
    assert!(ports.iter().all(|p| p.cluster_ips == vec![ip("10.96.0.10")]));
    assert_eq!(ports[0].port, 53);
    assert_eq!(ports[2].port, 9000);
}

#[test]
fn unnamed_single_port_has_empty_port_name() {
    let p = only_port(
        &mk_service("ns", "web")
            .cluster_ip("10.96.0.1")
            .port("", 80, "TCP")
            .build(),
    );
    assert_eq!(p.name, spn("ns", "web", "", Protocol::Tcp));
}

#[test]
fn absent_protocol_means_tcp() {
    let mut svc = mk_service("ns", "web")
        .cluster_ip("10.96.0.1")
        .port("http", 80, "TCP")
        .build();
    if let Some(p) = svc
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .and_then(|p| p.first_mut())
    {
        p.protocol = None;
    }
    assert_eq!(only_port(&svc).name.protocol, Protocol::Tcp);
}

#[test]
fn dual_stack_cluster_ips_keep_one_per_family_first_wins() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["10.96.0.1"], &["10.96.0.1"]),
        (&["fd00::1"], &["fd00::1"]),
        (&["10.96.0.1", "fd00::1"], &["10.96.0.1", "fd00::1"]),
        (&["fd00::1", "10.96.0.1"], &["fd00::1", "10.96.0.1"]),
        // Invalid per the API, but the model must stay sane: first wins.
        (&["10.96.0.1", "10.96.0.2", "fd00::1"], &["10.96.0.1", "fd00::1"]),
    ];
    for (given, want) in cases {
        let p = only_port(&mk_service("ns", "s").cluster_ips(given).port("p", 80, "TCP").build());
        let want: Vec<_> = want.iter().map(|s| ip(s)).collect();
        assert_eq!(p.cluster_ips, want, "clusterIPs {given:?}");
        for family in IpFamily::ALL {
            assert_eq!(
                p.cluster_ip(family),
                want.iter().copied().find(|a| IpFamily::of(a) == family),
                "{given:?} {family}"
            );
        }
    }
}

#[test]
fn legacy_cluster_ip_field_is_used_without_cluster_ips() {
    let mut svc = mk_service("ns", "s")
        .cluster_ip("10.96.0.7")
        .port("p", 80, "TCP")
        .build();
    if let Some(spec) = svc.spec.as_mut() {
        spec.cluster_ips = None;
    }
    assert_eq!(only_port(&svc).cluster_ips, vec![ip("10.96.0.7")]);
}

#[test]
fn services_that_are_not_proxied_are_skipped() {
    let cases = [
        (
            "headless",
            mk_service("ns", "s").headless().port("p", 80, "TCP").build(),
            ServiceSkip::Headless,
        ),
        (
            "ExternalName",
            mk_service("ns", "s")
                .external_name("db.example")
                .port("p", 80, "TCP")
                .build(),
            ServiceSkip::ExternalName,
        ),
        (
            "ExternalName even with a cluster IP",
            mk_service("ns", "s")
                .cluster_ip("10.96.0.1")
                .type_("ExternalName")
                .port("p", 80, "TCP")
                .build(),
            ServiceSkip::ExternalName,
        ),
        (
            "no cluster IP",
            mk_service("ns", "s").port("p", 80, "TCP").build(),
            ServiceSkip::NoClusterIp,
        ),
        (
            "empty cluster IP",
            mk_service("ns", "s").cluster_ip("").port("p", 80, "TCP").build(),
            ServiceSkip::NoClusterIp,
        ),
    ];
    for (what, svc, want) in cases {
        let (ports, problems) = convert(&svc);
        assert_eq!(ports, Err(want), "{what}");
        assert!(problems.is_empty(), "{what}: {problems:?}");
    }
}

#[test]
fn unparseable_cluster_ip_skips_the_service_with_a_problem() {
    let svc = mk_service("ns", "s")
        .cluster_ip("10.96.0.300")
        .port("p", 80, "TCP")
        .build();
    let (ports, problems) = convert(&svc);
    assert_eq!(ports, Err(ServiceSkip::NoClusterIp));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].subject, "ns/s");
}

#[test]
fn service_without_name_or_namespace_is_skipped() {
    let mut svc = mk_service("ns", "s")
        .cluster_ip("10.96.0.1")
        .port("p", 80, "TCP")
        .build();
    svc.metadata.namespace = None;
    assert_eq!(convert(&svc).0, Err(ServiceSkip::Unnamed));
    let mut svc = mk_service("ns", "s")
        .cluster_ip("10.96.0.1")
        .port("p", 80, "TCP")
        .build();
    svc.metadata.name = None;
    assert_eq!(convert(&svc).0, Err(ServiceSkip::Unnamed));
}

#[test]
fn port_with_unknown_protocol_is_dropped_with_a_problem_others_stay() {
    let svc = mk_service("ns", "s")
        .cluster_ip("10.96.0.1")
        .port("http", 80, "TCP")
        .port("ping", 7, "ICMP")
        .port("dns", 53, "UDP")
        .build();
    let (ports, problems) = convert(&svc);
    let ports = ports.expect("converts");
    let names: Vec<_> = ports.iter().map(|p| p.name.port.as_str()).collect();
    assert_eq!(names, ["http", "dns"]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].message.contains("ICMP"), "{}", problems[0]);
}

#[test]
fn port_with_out_of_range_number_is_dropped_with_a_problem() {
    let svc = mk_service("ns", "s")
        .cluster_ip("10.96.0.1")
        .port("zero", 0, "TCP")
        .port("big", 70000, "TCP")
        .port("ok", 443, "TCP")
        .build();
    let (ports, problems) = convert(&svc);
    let ports = ports.expect("converts");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, 443);
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn external_ips_are_parsed_and_invalid_ones_dropped_with_a_problem() {
    let svc = mk_service("ns", "s")
        .cluster_ips(&["10.96.0.1", "fd00::1"])
        .port("p", 80, "TCP")
        .external_ips(&["192.0.2.10", "not-an-ip", "2001:db8::10", "192.0.2.10"])
        .build();
    let (ports, problems) = convert(&svc);
    let p = ports.expect("converts").remove(0);
    assert_eq!(p.external_ips, vec![ip("192.0.2.10"), ip("2001:db8::10")]);
    assert_eq!(p.external_ips(IpFamily::V4).collect::<Vec<_>>(), vec![ip("192.0.2.10")]);
    assert_eq!(
        p.external_ips(IpFamily::V6).collect::<Vec<_>>(),
        vec![ip("2001:db8::10")]
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].message.contains("not-an-ip"));
}

// NOTE(kube-proxy divergence, tolerated): kube-proxy reads
// status.loadBalancer.ingress whatever the type; the model only reads it for
// type LoadBalancer. The service controller clears the status when the type
// changes, so the two agree in practice.
#[test]
fn load_balancer_ingress_ips_only_for_type_load_balancer() {
    for (type_, want) in [
        ("LoadBalancer", vec![ip("203.0.113.1")]),
        ("NodePort", vec![]),
        ("ClusterIP", vec![]),
    ] {
        let p = only_port(
            &mk_service("ns", "s")
                .cluster_ip("10.96.0.1")
                .type_(type_)
                .node_port("p", 80, "TCP", 30080)
                .lb_ingress("203.0.113.1")
                .build(),
        );
        assert_eq!(p.load_balancer_ips, want, "type {type_}");
    }
}

#[test]
fn load_balancer_ingress_in_proxy_mode_or_without_ip_is_excluded() {
    let p = only_port(
        &mk_service("ns", "s")
            .cluster_ip("10.96.0.1")
            .type_("LoadBalancer")
            .node_port("p", 80, "TCP", 30080)
            .lb_ingress("203.0.113.1")
            .lb_ingress_proxy_mode("203.0.113.2")
            .lb_ingress_hostname("lb.example")
            .lb_ingress("2001:db8::1")
            .build(),
    );
    assert_eq!(p.load_balancer_ips, vec![ip("203.0.113.1"), ip("2001:db8::1")]);
}

#[test]
fn source_ranges_from_spec_are_parsed_trimmed_and_masked_invalid_dropped() {
    let svc = mk_service("ns", "s")
        .cluster_ip("10.96.0.1")
        .type_("LoadBalancer")
        .node_port("p", 80, "TCP", 30080)
        .source_ranges(&[" 10.0.0.5/24 ", "bogus", "2001:db8::/32", "192.0.2.7/32"])
        .build();
    let (ports, problems) = convert(&svc);
    let p = ports.expect("converts").remove(0);
    assert_eq!(
        p.load_balancer_source_ranges,
        vec![net("10.0.0.0/24"), net("2001:db8::/32"), net("192.0.2.7/32")]
    );
    assert_eq!(
        p.source_ranges(IpFamily::V6).collect::<Vec<_>>(),
        vec![net("2001:db8::/32")]
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].message.contains("bogus"));
}

#[test]
fn source_ranges_from_spec_win_over_the_legacy_annotation() {
    let p = only_port(
        &mk_service("ns", "s")
            .cluster_ip("10.96.0.1")
            .type_("LoadBalancer")
            .node_port("p", 80, "TCP", 30080)
            .source_ranges(&["10.0.0.0/8"])
            .annotation(SOURCE_RANGES_ANNOTATION, "192.168.0.0/16")
            .build(),
    );
    assert_eq!(p.load_balancer_source_ranges, vec![net("10.0.0.0/8")]);
}

// kube-proxy's newBaseServiceInfo reads only spec.loadBalancerSourceRanges;
// the legacy annotation is read by cloud providers, never by kube-proxy.
#[test]
fn legacy_source_ranges_annotation_is_ignored_like_kube_proxy() {
    let p = only_port(
        &mk_service("ns", "s")
            .cluster_ip("10.96.0.1")
            .type_("LoadBalancer")
            .node_port("p", 80, "TCP", 30080)
            .annotation(SOURCE_RANGES_ANNOTATION, "192.168.0.0/16, 10.0.0.0/8")
            .build(),
    );
    assert_eq!(p.load_balancer_source_ranges, Vec::<IpNet>::new());
}

#[test]
fn node_port_only_for_node_port_and_load_balancer_types() {
    for (type_, want) in [("NodePort", 30080), ("LoadBalancer", 30080), ("ClusterIP", 0)] {
        let p = only_port(
            &mk_service("ns", "s")
                .cluster_ip("10.96.0.1")
                .type_(type_)
                .node_port("p", 80, "TCP", 30080)
                .build(),
        );
        assert_eq!(p.node_port, want, "type {type_}");
    }
}

#[test]
fn external_traffic_policy_local_only_for_externally_reachable_services() {
    struct Case {
        what: &'static str,
        type_: &'static str,
        external_ips: &'static [&'static str],
        etp_local: bool,
        want: TrafficPolicy,
    }
    let cases = [
        Case {
            what: "ClusterIP, Local, no externalIPs",
            type_: "ClusterIP",
            external_ips: &[],
            etp_local: true,
            want: TrafficPolicy::Cluster,
        },
        Case {
            what: "ClusterIP, Local, with externalIPs",
            type_: "ClusterIP",
            external_ips: &["192.0.2.1"],
            etp_local: true,
            want: TrafficPolicy::Local,
        },
        Case {
            what: "NodePort, Local",
            type_: "NodePort",
            external_ips: &[],
            etp_local: true,
            want: TrafficPolicy::Local,
        },
        Case {
            what: "LoadBalancer, Local",
            type_: "LoadBalancer",
            external_ips: &[],
            etp_local: true,
            want: TrafficPolicy::Local,
        },
        Case {
            what: "NodePort, Cluster",
            type_: "NodePort",
            external_ips: &[],
            etp_local: false,
            want: TrafficPolicy::Cluster,
        },
    ];
    for c in cases {
        let mut b = mk_service("ns", "s")
            .cluster_ip("10.96.0.1")
            .type_(c.type_)
            .node_port("p", 80, "TCP", 30080);
        if !c.external_ips.is_empty() {
            b = b.external_ips(c.external_ips);
        }
        if c.etp_local {
            b = b.external_traffic_policy_local();
        }
        assert_eq!(only_port(&b.build()).external_policy, c.want, "{}", c.what);
    }
}

// kube-proxy: apiservice.NeedsHealthCheck = type LoadBalancer && eTP Local.
#[test]
fn health_check_node_port_only_for_load_balancer_with_local_policy() {
    for (type_, etp_local, want) in [
        ("LoadBalancer", true, 32000),
        ("LoadBalancer", false, 0),
        ("NodePort", true, 0),
        ("ClusterIP", true, 0),
    ] {
        let mut b = mk_service("ns", "s")
            .cluster_ip("10.96.0.1")
            .type_(type_)
            .node_port("p", 80, "TCP", 30080)
            .health_check_node_port(32000);
        if etp_local {
            b = b.external_traffic_policy_local();
        }
        let p = only_port(&b.build());
        assert_eq!(p.health_check_node_port, want, "type {type_}, local {etp_local}");
    }
}

#[test]
fn internal_traffic_policy_defaults_to_cluster() {
    let b = || mk_service("ns", "s").cluster_ip("10.96.0.1").port("p", 80, "TCP");
    assert_eq!(only_port(&b().build()).internal_policy, TrafficPolicy::Cluster);
    assert_eq!(
        only_port(&b().internal_traffic_policy_local().build()).internal_policy,
        TrafficPolicy::Local
    );
}

#[test]
fn client_ip_affinity_uses_explicit_timeout_or_default_10800() {
    let b = || mk_service("ns", "s").cluster_ip("10.96.0.1").port("p", 80, "TCP");
    assert_eq!(only_port(&b().build()).session_affinity, SessionAffinity::None);
    assert_eq!(
        only_port(&b().client_ip_affinity(None).build()).session_affinity,
        SessionAffinity::ClientIp { timeout_seconds: 10800 }
    );
    assert_eq!(
        only_port(&b().client_ip_affinity(Some(60)).build()).session_affinity,
        SessionAffinity::ClientIp { timeout_seconds: 60 }
    );
}

#[test]
fn traffic_distribution_values_map_to_topology_preference() {
    for (value, want) in [
        (None, TrafficDistribution::Unset),
        (Some("PreferClose"), TrafficDistribution::PreferSameZone),
        (Some("PreferSameZone"), TrafficDistribution::PreferSameZone),
        (Some("PreferSameNode"), TrafficDistribution::PreferSameNode),
        (Some("SomethingNew"), TrafficDistribution::Unset),
    ] {
        let mut b = mk_service("ns", "s").cluster_ip("10.96.0.1").port("p", 80, "TCP");
        if let Some(v) = value {
            b = b.traffic_distribution(v);
        }
        assert_eq!(only_port(&b.build()).traffic_distribution, want, "{value:?}");
    }
}

#[test]
fn service_port_name_displays_like_kube_proxy() {
    assert_eq!(spn("ns", "web", "http", Protocol::Tcp).to_string(), "ns/web:http");
    assert_eq!(spn("ns", "web", "", Protocol::Udp).to_string(), "ns/web");
}

#[test]
fn vips_of_a_family_are_typed_by_origin() {
    let p = only_port(
        &mk_service("ns", "s")
            .cluster_ips(&["10.96.0.1", "fd00::1"])
            .type_("LoadBalancer")
            .node_port("p", 80, "TCP", 30080)
            .external_ips(&["192.0.2.1", "2001:db8::2"])
            .lb_ingress("203.0.113.1")
            .build(),
    );
    assert_eq!(
        p.vips(IpFamily::V4),
        vec![
            Vip::ClusterIp(ip("10.96.0.1")),
            Vip::ExternalIp(ip("192.0.2.1")),
            Vip::LoadBalancer(ip("203.0.113.1")),
        ]
    );
    assert_eq!(
        p.vips(IpFamily::V6),
        vec![Vip::ClusterIp(ip("fd00::1")), Vip::ExternalIp(ip("2001:db8::2"))]
    );
    assert!(p.has_family(IpFamily::V6));
}

/// A bare ClusterIP port, to flip fields on.
fn bare_port() -> ServicePort {
    only_port(
        &mk_service("ns", "s")
            .cluster_ip("10.96.0.1")
            .port("p", 80, "TCP")
            .build(),
    )
}

// kube-proxy's UsesClusterEndpoints / UsesLocalEndpoints: an externally
// accessible port always uses cluster endpoints (short-circuiting of
// in-cluster traffic to external VIPs), even with a Local external policy.
#[test]
fn uses_cluster_and_local_endpoints_truth_table() {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Reach {
        None,
        NodePort,
        ExternalIp,
        LoadBalancer,
    }
    let mut seen = BTreeSet::new();
    for reach in [Reach::None, Reach::NodePort, Reach::ExternalIp, Reach::LoadBalancer] {
        for itp_local in [false, true] {
            for etp_local in [false, true] {
                let mut p = bare_port();
                match reach {
                    Reach::None => {}
                    Reach::NodePort => p.node_port = 30080,
                    Reach::ExternalIp => p.external_ips = vec![ip("192.0.2.1")],
                    Reach::LoadBalancer => p.load_balancer_ips = vec![ip("203.0.113.1")],
                }
                let local = |b| {
                    if b {
                        TrafficPolicy::Local
                    } else {
                        TrafficPolicy::Cluster
                    }
                };
                p.internal_policy = local(itp_local);
                p.external_policy = local(etp_local);
                let reachable = reach != Reach::None;
                assert_eq!(p.is_externally_reachable(), reachable, "{reach:?}");
                let want_cluster = !itp_local || reachable;
                let want_local = itp_local || (etp_local && reachable);
                let case = format!("{reach:?} itp_local={itp_local} etp_local={etp_local}");
                assert_eq!(p.uses_cluster_endpoints(), want_cluster, "cluster: {case}");
                assert_eq!(p.uses_local_endpoints(), want_local, "local: {case}");
                seen.insert((want_cluster, want_local));
            }
        }
    }
    // Every combination but "neither" occurs.
    assert_eq!(seen.len(), 3);
    assert!(!seen.contains(&(false, false)));
}

#[test]
fn all_ports_of_a_service_share_its_service_level_fields() {
    let svc = mk_service("ns", "s")
        .cluster_ip("10.96.0.1")
        .type_("LoadBalancer")
        .node_port("a", 80, "TCP", 30080)
        .node_port("b", 443, "TCP", 30443)
        .external_traffic_policy_local()
        .health_check_node_port(32000)
        .client_ip_affinity(Some(30))
        .lb_ingress("203.0.113.1")
        .build();
    let ports = convert(&svc).0.expect("converts");
    assert_eq!(ports.len(), 2);
    assert_eq!((ports[0].node_port, ports[1].node_port), (30080, 30443));
    for p in &ports {
        assert_eq!(p.external_policy, TrafficPolicy::Local);
        assert_eq!(p.health_check_node_port, 32000);
        assert_eq!(p.load_balancer_ips, vec![ip("203.0.113.1")]);
        assert_eq!(p.session_affinity, SessionAffinity::ClientIp { timeout_seconds: 30 });
    }
}
