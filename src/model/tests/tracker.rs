//! The Model: index of objects, desired state, change sets and their
//! acknowledgement.

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::super::builders::{EpSpec, ServiceBuilder, mk_node, mk_service, mk_slice};
use super::super::{
    ChangeSet, Model, PortChange, Protocol, SERVICE_NAME_LABEL, SelectionOptions, ServicePortName, ServicePortState,
};
use super::{addrs, sorted, spn, svc_name};

const NODE: &str = "node-a";

fn model() -> Model {
    Model::new(NODE, SelectionOptions::default())
}

fn web() -> ServiceBuilder {
    mk_service("default", "web")
        .cluster_ip("10.96.0.10")
        .port("http", 80, "TCP")
}

fn web_slice(name: &str, ips: &[&str]) -> EndpointSlice {
    mk_slice("default", name, "web")
        .port("http", 8080, "TCP")
        .endpoints(ips)
        .build()
}

fn web_http() -> ServicePortName {
    spn("default", "web", "http", Protocol::Tcp)
}

/// Takes the pending changes and acknowledges them, as a successful sync.
fn sync(m: &mut Model) -> ChangeSet {
    let set = m.changes();
    m.ack(&set);
    set
}

fn v4(state: &ServicePortState) -> Vec<String> {
    addrs(&state.v4.endpoints)
}

fn change<'a>(set: &'a ChangeSet, name: &ServicePortName) -> &'a PortChange {
    set.ports
        .get(name)
        .unwrap_or_else(|| panic!("no change for {name}: {:?}", set.ports.keys()))
}

fn prev_v4(set: &ChangeSet, name: &ServicePortName) -> Option<Vec<String>> {
    change(set, name).previous.as_deref().map(v4)
}

fn cur_v4(set: &ChangeSet, name: &ServicePortName) -> Option<Vec<String>> {
    change(set, name).current.as_deref().map(v4)
}

#[test]
fn nothing_is_pending_initially() {
    let m = model();
    assert_eq!(m.pending(), 0);
    assert!(m.changes().is_empty());
    assert!(m.desired().ports.is_empty());
    assert_eq!((m.port_count(), m.service_count()), (0, 0));
    assert_eq!(m.node().name, NODE);
}

#[test]
fn applying_a_service_and_slice_yields_a_new_port() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1", "10.0.0.2"]));
    assert_eq!(m.pending(), 1);
    let set = m.changes();
    assert_eq!(set.ports.len(), 1);
    assert_eq!(prev_v4(&set, &web_http()), None);
    assert_eq!(
        cur_v4(&set, &web_http()),
        Some(sorted(&["10.0.0.1:8080", "10.0.0.2:8080"]))
    );
    assert_eq!((set.service_changes, set.endpoint_changes), (1, 1));
    assert_eq!(set.updated().count(), 1);
    assert_eq!(set.removed().count(), 0);
    let state = change(&set, &web_http()).current.clone().expect("current");
    assert_eq!(
        addrs(&state.v4.selection.cluster),
        sorted(&["10.0.0.1:8080", "10.0.0.2:8080"])
    );
    assert!(state.v4.selection.has_any);
    assert_eq!((m.port_count(), m.service_count()), (1, 1));
}

#[test]
fn ack_clears_pending_changes() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    sync(&mut m);
    assert_eq!(m.pending(), 0);
    assert!(m.changes().is_empty());
    assert_eq!(m.desired().ports.len(), 1, "desired state is kept");
}

#[test]
fn reapplying_identical_objects_leaves_nothing_pending() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    sync(&mut m);
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    assert_eq!(m.pending(), 0);
    assert!(m.changes().is_empty());
}

#[test]
fn label_annotation_and_version_edits_leave_nothing_pending() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    sync(&mut m);
    m.apply_service(
        &web()
            .label("team", "a")
            .annotation("note", "x")
            .resource_version("7")
            .build(),
    );
    m.apply_slice(
        &mk_slice("default", "web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint("10.0.0.1")
            .label("extra", "yes")
            .resource_version("8")
            .build(),
    );
    assert_eq!(m.pending(), 0);
}

#[test]
fn endpoint_change_is_pending_with_the_acked_state_as_previous() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    sync(&mut m);
    m.apply_slice(&web_slice("web-1", &["10.0.0.1", "10.0.0.2"]));
    assert_eq!(m.pending(), 1);
    let set = m.changes();
    assert_eq!(prev_v4(&set, &web_http()), Some(sorted(&["10.0.0.1:8080"])));
    assert_eq!(
        cur_v4(&set, &web_http()),
        Some(sorted(&["10.0.0.1:8080", "10.0.0.2:8080"]))
    );
    assert_eq!((set.service_changes, set.endpoint_changes), (0, 1));
}

#[test]
fn change_arriving_during_a_sync_stays_pending_after_its_ack() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    let set = m.changes();
    // The backend is busy with `set` when another update arrives.
    m.apply_slice(&web_slice("web-1", &["10.0.0.2"]));
    m.ack(&set);
    assert_eq!(m.pending(), 1);
    let next = m.changes();
    assert_eq!(prev_v4(&next, &web_http()), Some(sorted(&["10.0.0.1:8080"])));
    assert_eq!(cur_v4(&next, &web_http()), Some(sorted(&["10.0.0.2:8080"])));
    m.ack(&next);
    assert_eq!(m.pending(), 0);
}

// Regression: a change reverting to the programmed state while a sync of
// another state was in flight used to clear the pending mark, so the ack of
// that sync left the backend on the in-flight state with nothing pending.
#[test]
fn revert_arriving_during_a_sync_stays_pending_after_its_ack() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    sync(&mut m);
    m.apply_slice(&web_slice("web-1", &["10.0.0.2"]));
    let set = m.changes(); // programs 10.0.0.2
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"])); // back to what was acked before
    m.ack(&set);
    assert_eq!(m.pending(), 1, "10.0.0.2 is programmed but 10.0.0.1 is desired");
    let next = m.changes();
    assert_eq!(prev_v4(&next, &web_http()), Some(sorted(&["10.0.0.2:8080"])));
    assert_eq!(cur_v4(&next, &web_http()), Some(sorted(&["10.0.0.1:8080"])));
    sync(&mut m);
    assert_eq!(m.pending(), 0);
}

#[test]
fn failed_sync_keeps_changes_pending_with_the_original_previous() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    sync(&mut m);
    m.apply_slice(&web_slice("web-1", &["10.0.0.2"]));
    let failed = m.changes(); // never acked
    assert_eq!(prev_v4(&failed, &web_http()), Some(sorted(&["10.0.0.1:8080"])));
    m.apply_slice(&web_slice("web-1", &["10.0.0.3"]));
    assert_eq!(m.pending(), 1);
    let retry = m.changes();
    assert_eq!(prev_v4(&retry, &web_http()), Some(sorted(&["10.0.0.1:8080"])));
    assert_eq!(cur_v4(&retry, &web_http()), Some(sorted(&["10.0.0.3:8080"])));
}

#[test]
fn deleting_a_service_yields_a_removal() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    sync(&mut m);
    m.delete_service(&svc_name("default", "web"));
    let set = m.changes();
    let c = change(&set, &web_http());
    assert!(c.previous.is_some() && c.current.is_none());
    assert_eq!(
        set.removed().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        vec![web_http()]
    );
    assert_eq!(set.service_changes, 1);
    m.ack(&set);
    assert!(m.desired().ports.is_empty());
    assert_eq!((m.pending(), m.service_count()), (0, 0));
}

#[test]
fn service_created_and_deleted_between_syncs_leaves_nothing_pending() {
    let mut m = model();
    m.apply_service(&web().build());
    m.delete_service(&svc_name("default", "web"));
    assert_eq!(m.pending(), 0);
    assert!(m.changes().is_empty());
}

#[test]
fn deleting_unknown_objects_is_a_no_op() {
    let mut m = model();
    m.delete_service(&svc_name("default", "nope"));
    m.delete_slice("default", "nope");
    assert_eq!(m.pending(), 0);
    assert!(m.take_problems().is_empty());
}

#[test]
fn deleting_a_slice_removes_only_its_endpoints() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    m.apply_slice(&web_slice("web-2", &["10.0.0.2"]));
    sync(&mut m);
    m.delete_slice("default", "web-1");
    let set = m.changes();
    assert_eq!(cur_v4(&set, &web_http()), Some(sorted(&["10.0.0.2:8080"])));
    assert_eq!(set.endpoint_changes, 1);
    m.ack(&set);
    m.delete_slice("default", "web-2");
    let set = m.changes();
    assert_eq!(cur_v4(&set, &web_http()), Some(vec![]), "port stays, without endpoints");
    let state = change(&set, &web_http()).current.clone().expect("port kept");
    assert!(!state.v4.selection.has_any);
}

#[test]
fn reset_services_deletes_only_vanished_services() {
    let mut m = model();
    let api = mk_service("default", "api")
        .cluster_ip("10.96.0.11")
        .port("grpc", 9000, "TCP")
        .build();
    m.apply_service(&web().build());
    m.apply_service(&api);
    sync(&mut m);
    m.reset_services(&[web().build()]);
    let set = m.changes();
    assert_eq!(set.ports.len(), 1, "{:?}", set.ports.keys());
    let c = change(&set, &spn("default", "api", "grpc", Protocol::Tcp));
    assert!(c.current.is_none());
    assert!(!set.ports.contains_key(&web_http()), "kept services are not changed");
    assert_eq!(m.service_count(), 1);
}

#[test]
fn reset_slices_deletes_only_vanished_slices() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    m.apply_slice(&web_slice("web-2", &["10.0.0.2"]));
    sync(&mut m);
    m.reset_slices(&[web_slice("web-2", &["10.0.0.2"])]);
    let set = m.changes();
    assert_eq!(cur_v4(&set, &web_http()), Some(sorted(&["10.0.0.2:8080"])));
    m.ack(&set);
    // A relist with everything unchanged marks nothing.
    m.reset_slices(&[web_slice("web-2", &["10.0.0.2"])]);
    m.reset_services(&[web().build()]);
    assert_eq!(m.pending(), 0);
}

#[test]
fn slice_moving_to_another_service_moves_its_endpoints() {
    let mut m = model();
    let api = mk_service("default", "api")
        .cluster_ip("10.96.0.11")
        .port("http", 80, "TCP")
        .build();
    let api_http = spn("default", "api", "http", Protocol::Tcp);
    m.apply_service(&web().build());
    m.apply_service(&api);
    m.apply_slice(&web_slice("shared", &["10.0.0.1"]));
    sync(&mut m);
    let moved = mk_slice("default", "shared", "api")
        .port("http", 8080, "TCP")
        .endpoint("10.0.0.1")
        .build();
    m.apply_slice(&moved);
    let set = m.changes();
    assert_eq!(cur_v4(&set, &web_http()), Some(vec![]));
    assert_eq!(cur_v4(&set, &api_http), Some(sorted(&["10.0.0.1:8080"])));
    m.ack(&set);
    // Deleting it now affects the new owner only.
    m.delete_slice("default", "shared");
    let set = m.changes();
    assert_eq!(set.ports.keys().cloned().collect::<Vec<_>>(), vec![api_http]);
}

#[test]
fn slice_losing_its_service_label_drops_its_endpoints() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    sync(&mut m);
    let orphan = mk_slice("default", "web-1", "web")
        .without_label(SERVICE_NAME_LABEL)
        .port("http", 8080, "TCP")
        .endpoint("10.0.0.1")
        .build();
    m.apply_slice(&orphan);
    let set = m.changes();
    assert_eq!(cur_v4(&set, &web_http()), Some(vec![]));
    assert_eq!(m.take_problems().len(), 1);
}

#[test]
fn node_zone_change_recomputes_only_services_using_hints() {
    let mut m = model();
    let hinted = mk_service("default", "hinted")
        .cluster_ip("10.96.0.12")
        .port("http", 80, "TCP")
        .build();
    let hinted_http = spn("default", "hinted", "http", Protocol::Tcp);
    m.apply_service(&hinted);
    m.apply_slice(
        &mk_slice("default", "hinted-1", "hinted")
            .port("http", 8080, "TCP")
            .endpoint_with(EpSpec::new("10.0.1.1").zone("zone-a").zone_hints(&["zone-a"]))
            .endpoint_with(EpSpec::new("10.0.1.2").zone("zone-b").zone_hints(&["zone-b"]))
            .build(),
    );
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1", "10.0.0.2"]));
    sync(&mut m);

    m.set_node(Some(&mk_node(NODE).zone("zone-a").build()));
    assert_eq!(m.node().zone.as_deref(), Some("zone-a"));
    let set = m.changes();
    assert_eq!(set.ports.keys().cloned().collect::<Vec<_>>(), vec![hinted_http.clone()]);
    let state = change(&set, &hinted_http).current.clone().expect("current");
    assert_eq!(addrs(&state.v4.selection.cluster), ["10.0.1.1:8080"]);
    assert_eq!(addrs(&state.v4.endpoints).len(), 2, "all endpoints still known");
    m.ack(&set);

    // Same zone, new addresses: no service recomputed, only the node is pending.
    m.set_node(Some(&mk_node(NODE).zone("zone-a").internal_ip("192.168.0.9").build()));
    let set = m.changes();
    assert!(set.ports.is_empty());
    assert!(set.node_changed());
    m.ack(&set);
    assert_eq!(m.pending(), 0);
    assert_eq!(m.desired().node.addresses.len(), 1);

    // Node gone: no zone, hints no longer apply.
    m.set_node(None);
    let set = m.changes();
    let state = change(&set, &hinted_http).current.clone().expect("current");
    assert_eq!(addrs(&state.v4.selection.cluster).len(), 2);
    assert_eq!(m.node().name, NODE, "identity is kept");
}

#[test]
fn node_name_comes_from_configuration_not_the_object() {
    let mut m = model();
    m.set_node(Some(&mk_node("someone-else").build()));
    assert_eq!(m.node().name, NODE);
}

#[test]
fn node_address_fallback_applies_only_without_node_addresses() {
    let mut m = model();
    m.set_node_addresses_fallback(&[super::ip("10.1.1.1")]);
    assert_eq!(m.node().addresses, vec![super::ip("10.1.1.1")]);
    m.set_node(Some(&mk_node(NODE).internal_ip("192.168.0.9").build()));
    m.set_node_addresses_fallback(&[super::ip("10.1.1.1")]);
    assert_eq!(m.node().addresses, vec![super::ip("192.168.0.9")]);
}

#[test]
fn endpoints_arriving_before_their_service_appear_when_it_is_created() {
    let mut m = model();
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    assert_eq!(m.pending(), 0);
    assert!(m.desired().ports.is_empty());
    m.apply_service(&web().build());
    let set = m.changes();
    assert_eq!(cur_v4(&set, &web_http()), Some(sorted(&["10.0.0.1:8080"])));
}

#[test]
fn desired_state_has_only_proxied_service_ports() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_service(
        &mk_service("default", "headless")
            .headless()
            .port("http", 80, "TCP")
            .build(),
    );
    m.apply_service(
        &mk_service("default", "ext")
            .external_name("db.example")
            .port("pg", 5432, "TCP")
            .build(),
    );
    m.apply_slice(
        &mk_slice("default", "headless-1", "headless")
            .port("http", 8080, "TCP")
            .endpoint("10.0.0.5")
            .build(),
    );
    let desired = m.desired();
    assert_eq!(desired.ports.keys().cloned().collect::<Vec<_>>(), vec![web_http()]);
    assert_eq!((m.service_count(), m.port_count()), (1, 1));
    assert!(m.take_problems().is_empty(), "headless/ExternalName are not problems");
}

#[test]
fn service_turning_headless_removes_its_ports() {
    let mut m = model();
    m.apply_service(&web().build());
    sync(&mut m);
    m.apply_service(&mk_service("default", "web").headless().port("http", 80, "TCP").build());
    let set = m.changes();
    assert!(change(&set, &web_http()).current.is_none());
}

#[test]
fn only_changed_ports_of_a_service_are_in_the_change_set() {
    let mut m = model();
    m.apply_service(&web().port("metrics", 9090, "TCP").build());
    m.apply_slice(
        &mk_slice("default", "web-1", "web")
            .port("http", 8080, "TCP")
            .port("metrics", 9090, "TCP")
            .endpoint("10.0.0.1")
            .build(),
    );
    sync(&mut m);
    // The metrics port disappears from the slice.
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    let set = m.changes();
    let metrics = spn("default", "web", "metrics", Protocol::Tcp);
    assert_eq!(set.ports.keys().cloned().collect::<Vec<_>>(), vec![metrics.clone()]);
    assert_eq!(cur_v4(&set, &metrics), Some(vec![]));
}

#[test]
fn port_removed_from_a_service_is_removed() {
    let mut m = model();
    m.apply_service(&web().port("metrics", 9090, "TCP").build());
    sync(&mut m);
    m.apply_service(&web().build());
    let set = m.changes();
    let metrics = spn("default", "web", "metrics", Protocol::Tcp);
    assert_eq!(set.ports.keys().cloned().collect::<Vec<_>>(), vec![metrics.clone()]);
    assert!(change(&set, &metrics).current.is_none());
}

#[test]
fn malformed_objects_are_reported_as_problems_and_nothing_panics() {
    let mut m = model();
    let mut unnamed = web().build();
    unnamed.metadata.name = None;
    m.apply_service(&unnamed);
    m.apply_service(
        &mk_service("default", "bad-ip")
            .cluster_ip("10.96.0.999")
            .port("p", 80, "TCP")
            .build(),
    );
    m.apply_service(
        &mk_service("default", "bad-port")
            .cluster_ip("10.96.0.13")
            .port("p", 80, "ICMP")
            .external_ips(&["nope"])
            .build(),
    );
    let mut no_ns = web_slice("web-1", &["10.0.0.1"]);
    no_ns.metadata.namespace = None;
    m.apply_slice(&no_ns);
    m.apply_slice(&web_slice("web-2", &["10.0.0.1", "bogus"]));
    m.apply_slice(
        &mk_slice("default", "web-3", "web")
            .without_label(SERVICE_NAME_LABEL)
            .build(),
    );
    let mut no_spec = web().build();
    no_spec.spec = None;
    m.apply_service(&no_spec);

    let problems = m.take_problems();
    // unnamed svc; bad cluster IP (+ ignored); ICMP port; bad external IP;
    // slice without namespace; bogus address; unlabelled slice; no spec.
    assert!(problems.len() >= 8, "{problems:#?}");
    assert!(problems.iter().any(|p| p.subject == "default/bad-ip"));
    assert!(problems.iter().any(|p| p.subject == "default/bad-port"));
    assert!(problems.iter().any(|p| p.subject == "EndpointSlice"));
    assert!(m.take_problems().is_empty(), "taken once");
    assert_eq!(m.service_count(), 0, "none of these is proxied");
}

#[test]
fn fqdn_slices_are_not_proxied() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(
        &mk_slice("default", "web-fqdn", "web")
            .address_type("FQDN")
            .port("http", 8080, "TCP")
            .endpoint("pod.example")
            .build(),
    );
    let set = m.changes();
    assert_eq!(cur_v4(&set, &web_http()), Some(vec![]));
}

#[test]
fn ipv6_endpoints_go_to_v6_only_for_services_with_an_ipv6_cluster_ip() {
    let v6_slice = || {
        mk_slice("default", "web-6", "web")
            .ipv6()
            .port("http", 8080, "TCP")
            .endpoint("fd00::1")
            .build()
    };
    // Single-stack IPv4: IPv6 endpoints are ignored.
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-4", &["10.0.0.1"]));
    m.apply_slice(&v6_slice());
    let d = m.desired();
    let state = d.ports.get(&web_http()).expect("port");
    assert_eq!(v4(state), ["10.0.0.1:8080"]);
    assert!(state.v6.endpoints.is_empty() && !state.v6.selection.has_any);

    // Dual-stack: each family gets its own endpoints.
    let mut m = model();
    m.apply_service(
        &mk_service("default", "web")
            .cluster_ips(&["10.96.0.10", "fd00:96::10"])
            .port("http", 80, "TCP")
            .build(),
    );
    m.apply_slice(&web_slice("web-4", &["10.0.0.1"]));
    m.apply_slice(&v6_slice());
    let d = m.desired();
    let state = d.ports.get(&web_http()).expect("port");
    assert_eq!(v4(state), ["10.0.0.1:8080"]);
    assert_eq!(addrs(&state.v6.endpoints), ["[fd00::1]:8080"]);
    assert_eq!(addrs(&state.v6.selection.cluster), ["[fd00::1]:8080"]);
    let fams = |f| d.ports_of(f).count();
    assert_eq!(
        (fams(super::super::IpFamily::V4), fams(super::super::IpFamily::V6)),
        (1, 1)
    );

    // Single-stack IPv6: IPv4 endpoints are ignored.
    let mut m = model();
    m.apply_service(
        &mk_service("default", "web")
            .cluster_ip("fd00:96::10")
            .port("http", 80, "TCP")
            .build(),
    );
    m.apply_slice(&web_slice("web-4", &["10.0.0.1"]));
    m.apply_slice(&v6_slice());
    let d = m.desired();
    let state = d.ports.get(&web_http()).expect("port");
    assert!(state.v4.endpoints.is_empty());
    assert_eq!(addrs(&state.v6.endpoints), ["[fd00::1]:8080"]);
}

#[test]
fn endpoints_on_this_node_are_local() {
    let mut m = model();
    m.apply_service(
        &mk_service("default", "web")
            .cluster_ip("10.96.0.10")
            .type_("NodePort")
            .node_port("http", 80, "TCP", 30080)
            .external_traffic_policy_local()
            .build(),
    );
    m.apply_slice(
        &mk_slice("default", "web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint_on("10.0.0.1", NODE)
            .endpoint_on("10.0.0.2", "node-b")
            .build(),
    );
    let d = m.desired();
    let state = d.ports.get(&web_http()).expect("port");
    assert_eq!(addrs(&state.v4.selection.local), ["10.0.0.1:8080"]);
    assert_eq!(addrs(&state.v4.selection.cluster).len(), 2);
}

#[test]
fn forget_programmed_makes_every_service_pending_as_new() {
    let mut m = model();
    m.apply_service(&web().build());
    m.apply_slice(&web_slice("web-1", &["10.0.0.1"]));
    sync(&mut m);
    m.forget_programmed();
    assert_eq!(m.pending(), 1);
    let set = m.changes();
    assert_eq!(prev_v4(&set, &web_http()), None);
    assert_eq!(cur_v4(&set, &web_http()), Some(sorted(&["10.0.0.1:8080"])));
}

#[test]
fn change_sets_share_state_with_the_desired_state() {
    let mut m = model();
    m.apply_service(&web().build());
    let set = m.changes();
    let d = m.desired();
    let from_set = change(&set, &web_http()).current.clone().expect("current");
    let from_desired = d.ports.get(&web_http()).expect("port");
    assert!(std::sync::Arc::ptr_eq(&from_set, from_desired), "no deep copies");
}

#[test]
fn node_address_change_is_pending_until_acked() {
    use crate::model::builders::mk_node;
    let mut m = Model::new("node-a", SelectionOptions::default());
    m.set_node(Some(&mk_node("node-a").internal_ip("192.168.0.1").build()));
    assert_eq!(
        m.pending(),
        1,
        "a new node is a change backends may need (NodePort primary)"
    );
    let set = m.changes();
    assert!(set.node_changed());
    m.ack(&set);
    assert_eq!(m.pending(), 0);
    m.set_node(Some(&mk_node("node-a").internal_ip("192.168.0.1").build()));
    assert_eq!(m.pending(), 0, "same node again is a no-op");
    m.set_node(Some(&mk_node("node-a").internal_ip("192.168.0.2").build()));
    assert_eq!(m.pending(), 1);
}
