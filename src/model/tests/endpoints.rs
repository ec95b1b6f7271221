//! EndpointSlices → endpoints per port, as kube-proxy's EndpointSliceCache.

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::super::builders::{EpSpec, mk_slice};
use super::super::{
    Endpoint, IpFamily, Problem, Protocol, SERVICE_NAME_LABEL, ServiceEndpoints, SliceInfo, SliceSkip, merge_slices,
};
use super::{addrs, ip, sorted, svc_name};

const NODE: &str = "node-a";

fn info(slice: &EndpointSlice) -> SliceInfo {
    let mut problems = Vec::new();
    let info = SliceInfo::from_slice(slice, &mut problems).expect("slice is usable");
    assert!(problems.is_empty(), "{problems:?}");
    info
}

fn info_with_problems(slice: &EndpointSlice) -> (SliceInfo, Vec<Problem>) {
    let mut problems = Vec::new();
    let info = SliceInfo::from_slice(slice, &mut problems).expect("slice is usable");
    (info, problems)
}

fn merge(slices: &[EndpointSlice]) -> ServiceEndpoints {
    let infos: Vec<SliceInfo> = slices.iter().map(info).collect();
    merge_slices(&infos, NODE)
}

fn port_eps<'a>(merged: &'a ServiceEndpoints, name: &str, protocol: Protocol) -> &'a [Endpoint] {
    merged
        .get(&(name.to_string(), protocol))
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn http(merged: &ServiceEndpoints) -> &[Endpoint] {
    port_eps(merged, "http", Protocol::Tcp)
}

#[test]
fn slice_belongs_to_the_service_named_by_its_label() {
    let i = info(&mk_slice("ns", "web-abc", "web").port("http", 80, "TCP").build());
    assert_eq!(i.service, svc_name("ns", "web"));
    assert_eq!(i.ports, vec![("http".to_string(), Protocol::Tcp, 80)]);
}

#[test]
fn endpoints_are_the_union_of_all_slices() {
    let a = mk_slice("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .endpoints(&["10.0.0.1", "10.0.0.2"])
        .build();
    let b = mk_slice("ns", "web-b", "web")
        .port("http", 8080, "TCP")
        .endpoint("10.0.0.3")
        .build();
    let merged = merge(&[a, b]);
    assert_eq!(
        addrs(http(&merged)),
        sorted(&["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"])
    );
}

#[test]
fn merge_is_independent_of_slice_order_and_sorted_by_address() {
    let a = mk_slice("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .endpoints(&["10.0.0.9", "10.0.0.2"])
        .build();
    let b = mk_slice("ns", "web-b", "web")
        .port("http", 8080, "TCP")
        .endpoints(&["10.0.0.5", "10.0.0.1"])
        .build();
    let ab = merge(&[a.clone(), b.clone()]);
    let ba = merge(&[b, a]);
    assert_eq!(ab, ba);
    let ips: Vec<_> = http(&ab).iter().map(|e| e.ip).collect();
    assert_eq!(
        ips,
        vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.5"), ip("10.0.0.9")]
    );
}

// The model prefers the ready copy of a duplicate. (kube-proxy keeps the
// first copy seen, or a local one; slices are iterated in map order, so it is
// not deterministic there. Preferring ready is the determinised superset.)
#[test]
fn duplicate_address_across_slices_is_merged_preferring_the_ready_copy() {
    let ready = mk_slice("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .endpoint("10.0.0.1")
        .build();
    let unready = mk_slice("ns", "web-b", "web")
        .port("http", 8080, "TCP")
        .endpoint_with(EpSpec::new("10.0.0.1").unready())
        .build();
    for slices in [[ready.clone(), unready.clone()], [unready, ready]] {
        let merged = merge(&slices);
        let eps = http(&merged);
        assert_eq!(eps.len(), 1);
        assert!(eps[0].ready, "ready copy wins");
    }
}

#[test]
fn same_address_on_different_ports_is_not_a_duplicate() {
    let a = mk_slice("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .endpoint("10.0.0.1")
        .build();
    let b = mk_slice("ns", "web-b", "web")
        .port("http", 8081, "TCP")
        .endpoint("10.0.0.1")
        .build();
    let merged = merge(&[a, b]);
    assert_eq!(addrs(http(&merged)), sorted(&["10.0.0.1:8080", "10.0.0.1:8081"]));
}

#[test]
fn absent_conditions_default_to_ready_serving_and_not_terminating() {
    let mut only_terminating = EpSpec::bare("10.0.0.2");
    only_terminating.terminating = Some(true);
    let mut only_unready = EpSpec::bare("10.0.0.3");
    only_unready.ready = Some(false);
    let slice = mk_slice("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .endpoint_with(EpSpec::bare("10.0.0.1"))
        .endpoint_with(only_terminating)
        .endpoint_with(only_unready)
        .build();
    let merged = merge(&[slice]);
    let conds: Vec<_> = http(&merged)
        .iter()
        .map(|e| (e.ready, e.serving, e.terminating))
        .collect();
    assert_eq!(
        conds,
        vec![(true, true, false), (true, true, true), (false, true, false)]
    );
}

#[test]
fn explicit_conditions_are_kept() {
    let slice = mk_slice("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .endpoint_with(EpSpec::new("10.0.0.1").serving_terminating())
        .endpoint_with(EpSpec::new("10.0.0.2").terminating_not_serving())
        .endpoint_with(EpSpec::new("10.0.0.3").unready())
        .build();
    let merged = merge(&[slice]);
    let eps = http(&merged);
    assert!(eps[0].is_serving_terminating() && !eps[0].ready);
    assert!(!eps[1].serving && eps[1].terminating && !eps[1].is_serving_terminating());
    assert!(!eps[2].ready && !eps[2].serving && !eps[2].terminating);
}

#[test]
fn endpoints_are_keyed_by_slice_port_name_and_protocol() {
    let slice = mk_slice("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .port("metrics", 9090, "TCP")
        .port("dns", 53, "UDP")
        .port("dns", 5353, "TCP")
        .endpoint("10.0.0.1")
        .build();
    let merged = merge(&[slice]);
    assert_eq!(merged.len(), 4);
    assert_eq!(addrs(http(&merged)), ["10.0.0.1:8080"]);
    assert_eq!(addrs(port_eps(&merged, "metrics", Protocol::Tcp)), ["10.0.0.1:9090"]);
    assert_eq!(addrs(port_eps(&merged, "dns", Protocol::Udp)), ["10.0.0.1:53"]);
    assert_eq!(addrs(port_eps(&merged, "dns", Protocol::Tcp)), ["10.0.0.1:5353"]);
}

#[test]
fn unnamed_port_is_keyed_by_empty_name() {
    let slice = mk_slice("ns", "web-a", "web")
        .port("", 8080, "TCP")
        .endpoint("10.0.0.1")
        .build();
    let merged = merge(&[slice]);
    assert_eq!(addrs(port_eps(&merged, "", Protocol::Tcp)), ["10.0.0.1:8080"]);
}

#[test]
fn slice_port_without_usable_number_is_ignored() {
    let slice = mk_slice("ns", "web-a", "web")
        .port("zero", 0, "TCP")
        .port("big", 70000, "TCP")
        .port("http", 8080, "TCP")
        .endpoint("10.0.0.1")
        .build();
    let i = info(&slice);
    assert_eq!(i.ports, vec![("http".to_string(), Protocol::Tcp, 8080)]);
}

#[test]
fn slice_port_with_unsupported_protocol_is_dropped_with_a_problem() {
    let slice = mk_slice("ns", "web-a", "web")
        .port("x", 1, "ICMP")
        .port("http", 8080, "TCP")
        .endpoint("10.0.0.1")
        .build();
    let (i, problems) = info_with_problems(&slice);
    assert_eq!(i.ports.len(), 1);
    assert_eq!(problems.len(), 1, "{problems:?}");
}

#[test]
fn slices_that_are_not_proxied_are_skipped() {
    let fqdn = mk_slice("ns", "web-a", "web")
        .address_type("FQDN")
        .port("http", 80, "TCP")
        .build();
    let unlabelled = mk_slice("ns", "web-a", "web")
        .without_label(SERVICE_NAME_LABEL)
        .port("http", 80, "TCP")
        .build();
    let empty_label = mk_slice("ns", "web-a", "").port("http", 80, "TCP").build();
    let mut no_namespace = mk_slice("ns", "web-a", "web").build();
    no_namespace.metadata.namespace = None;
    let cases = [
        ("FQDN", fqdn, SliceSkip::AddressType("FQDN".to_string())),
        ("no service-name label", unlabelled, SliceSkip::Unowned),
        ("empty service-name label", empty_label, SliceSkip::Unowned),
        ("no namespace", no_namespace, SliceSkip::Unowned),
    ];
    for (what, slice, want) in cases {
        let mut problems = Vec::new();
        assert_eq!(SliceInfo::from_slice(&slice, &mut problems), Err(want), "{what}");
    }
}

#[test]
fn invalid_address_is_dropped_with_a_problem() {
    let slice = mk_slice("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .endpoint("10.0.0.1")
        .endpoint("10.0.0.999")
        .endpoint("pod.example")
        .build();
    let (i, problems) = info_with_problems(&slice);
    assert_eq!(i.endpoints.len(), 1);
    assert_eq!(i.endpoints[0].ip, ip("10.0.0.1"));
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().all(|p| p.subject == "ns/web"));
}

#[test]
fn endpoint_without_addresses_is_skipped() {
    let mut slice = mk_slice("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .endpoint("10.0.0.1")
        .endpoint("10.0.0.2")
        .build();
    slice.endpoints[1].addresses.clear();
    let (i, problems) = info_with_problems(&slice);
    assert_eq!(i.endpoints.len(), 1);
    assert!(problems.is_empty());
}

#[test]
fn only_the_first_address_of_an_endpoint_is_used() {
    let slice = mk_slice("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .endpoint_with(EpSpec::new("10.0.0.1").more_ip("10.0.0.2").more_ip("bogus"))
        .build();
    let merged = merge(&[slice]);
    assert_eq!(addrs(http(&merged)), ["10.0.0.1:8080"]);
}

#[test]
fn endpoint_is_local_when_its_node_name_is_ours() {
    let slice = mk_slice("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .endpoint_on("10.0.0.1", NODE)
        .endpoint_on("10.0.0.2", "node-b")
        .endpoint("10.0.0.3")
        .endpoint_with(EpSpec::new("10.0.0.4").node(""))
        .build();
    let merged = merge(&[slice]);
    let local: Vec<_> = http(&merged).iter().map(|e| e.is_local).collect();
    assert_eq!(local, vec![true, false, false, false]);
    assert_eq!(http(&merged)[1].node_name.as_deref(), Some("node-b"));
    assert_eq!(http(&merged)[3].node_name, None, "empty node name is no node");
}

#[test]
fn no_endpoint_is_local_when_our_node_name_is_empty() {
    let slice = mk_slice("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .endpoint_with(EpSpec::new("10.0.0.1").node(""))
        .build();
    let merged = merge_slices(&[info(&slice)], "");
    assert!(!http(&merged)[0].is_local);
}

#[test]
fn zone_and_hints_are_carried_to_endpoints() {
    let slice = mk_slice("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .endpoint_with(
            EpSpec::new("10.0.0.1")
                .zone("zone-a")
                .zone_hints(&["zone-a", "zone-b"])
                .node_hints(&["node-x"]),
        )
        .endpoint("10.0.0.2")
        .build();
    let merged = merge(&[slice]);
    let eps = http(&merged);
    assert_eq!(eps[0].zone.as_deref(), Some("zone-a"));
    assert_eq!(
        eps[0].zone_hints.iter().map(String::as_str).collect::<Vec<_>>(),
        ["zone-a", "zone-b"]
    );
    assert_eq!(
        eps[0].node_hints.iter().map(String::as_str).collect::<Vec<_>>(),
        ["node-x"]
    );
    assert_eq!(eps[1].zone, None);
    assert!(eps[1].zone_hints.is_empty() && eps[1].node_hints.is_empty());
}

#[test]
fn ipv4_and_ipv6_slices_are_merged_per_port_and_told_apart_by_family() {
    let v4 = mk_slice("ns", "web-4", "web")
        .port("http", 8080, "TCP")
        .endpoint("10.0.0.1")
        .build();
    let v6 = mk_slice("ns", "web-6", "web")
        .ipv6()
        .port("http", 8080, "TCP")
        .endpoint("fd00::1")
        .build();
    let merged = merge(&[v4, v6]);
    let eps = http(&merged);
    assert_eq!(addrs(eps), sorted(&["10.0.0.1:8080", "[fd00::1]:8080"]));
    let families: Vec<_> = eps.iter().map(Endpoint::family).collect();
    assert_eq!(families, vec![IpFamily::V4, IpFamily::V6]);
}
