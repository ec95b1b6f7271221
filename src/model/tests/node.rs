//! The proxy's own Node.

use super::super::NodeInfo;
use super::super::builders::mk_node;
use super::super::node::TO_BE_DELETED_TAINT;
use super::ip;

#[test]
fn node_info_reads_zone_and_addresses_internal_first() {
    let node = mk_node("node-a")
        .zone("zone-a")
        .external_ip("203.0.113.5")
        .hostname("node-a.example")
        .internal_ip("192.168.0.5")
        .internal_ip("fd00::5")
        .internal_ip("not-an-ip")
        .build();
    let info = NodeInfo::from_node(&node);
    assert_eq!(info.name, "node-a");
    assert_eq!(info.zone.as_deref(), Some("zone-a"));
    assert_eq!(
        info.addresses,
        vec![ip("192.168.0.5"), ip("fd00::5"), ip("203.0.113.5")]
    );
    assert!(!info.is_draining());
}

#[test]
fn empty_zone_label_means_no_zone() {
    let info = NodeInfo::from_node(&mk_node("n").zone("").build());
    assert_eq!(info.zone, None);
}

#[test]
fn node_is_draining_when_deleted_or_tainted_for_removal() {
    let deleting = NodeInfo::from_node(&mk_node("n").deleting().build());
    assert!(deleting.deleting && deleting.is_draining());
    let tainted = NodeInfo::from_node(&mk_node("n").taint(TO_BE_DELETED_TAINT).build());
    assert!(tainted.to_be_deleted && tainted.is_draining());
    let other = NodeInfo::from_node(&mk_node("n").taint("node.kubernetes.io/unreachable").build());
    assert!(!other.is_draining());
}
