//! The public builders produce the objects their names promise.

use super::super::SERVICE_NAME_LABEL;
use super::super::builders::{EpSpec, MANAGED_BY_LABEL, mk_service, mk_slice};

#[test]
fn service_builder_fills_spec_fields() {
    let svc = mk_service("ns", "web")
        .cluster_ips(&["10.96.0.1", "fd00::1"])
        .type_("LoadBalancer")
        .node_port("http", 80, "TCP", 30080)
        .target_port_name("web")
        .port("", 81, "UDP")
        .target_port(8081)
        .label("app", "web")
        .annotation("a", "b")
        .build();
    assert_eq!(svc.metadata.namespace.as_deref(), Some("ns"));
    assert_eq!(svc.metadata.name.as_deref(), Some("web"));
    let spec = svc.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.1"));
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string(), "IPv6".to_string()]));
    let ports = spec.ports.expect("ports");
    assert_eq!(ports[0].name.as_deref(), Some("http"));
    assert_eq!(ports[0].node_port, Some(30080));
    assert_eq!(ports[1].name, None, "empty name left unset");
    assert_eq!(ports[1].node_port, None);
    assert!(ports[0].target_port.is_some() && ports[1].target_port.is_some());
}

#[test]
fn headless_and_external_name_builders() {
    let spec = mk_service("ns", "h").headless().build().spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    let spec = mk_service("ns", "e")
        .cluster_ip("10.96.0.1")
        .external_name("db.example")
        .build()
        .spec
        .expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
    assert_eq!(spec.external_name.as_deref(), Some("db.example"));
    assert_eq!(spec.cluster_ip, None);
}

#[test]
fn slice_builder_labels_and_endpoint_conditions() {
    let slice = mk_slice("ns", "web-abc", "web")
        .port("http", 8080, "TCP")
        .endpoint("10.0.0.1")
        .endpoint_with(EpSpec::bare("10.0.0.2"))
        .endpoint_with(EpSpec::new("10.0.0.3").serving_terminating().zone_hints(&["z"]))
        .build();
    assert_eq!(slice.address_type, "IPv4");
    let labels = slice.metadata.labels.expect("labels");
    assert_eq!(labels.get(SERVICE_NAME_LABEL).map(String::as_str), Some("web"));
    assert!(labels.contains_key(MANAGED_BY_LABEL));
    let c0 = slice.endpoints[0].conditions.clone().expect("explicit");
    assert_eq!(
        (c0.ready, c0.serving, c0.terminating),
        (Some(true), Some(true), Some(false))
    );
    assert!(slice.endpoints[1].conditions.is_none());
    let hints = slice.endpoints[2].hints.clone().expect("hints");
    assert_eq!(hints.for_zones.map(|z| z.len()), Some(1));
    assert!(hints.for_nodes.is_none());
}
