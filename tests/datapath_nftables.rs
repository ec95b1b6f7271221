//! Packet-level tests of the nftables backend: real packets between network
//! namespaces (`tests/support/netns.rs`) through rules kproxy programmed in
//! the node namespace. Every scenario lives in `tests/support/datapath.rs`
//! (`cases`), shared with the other modes. Runs as root only (skips
//! otherwise; panics under CI=true).

#![allow(clippy::disallowed_types)] // tests run tools directly

#[path = "support/netns.rs"]
mod netns;

#[path = "support/datapath.rs"]
mod datapath;

use datapath::{Mode, cases};

const MODE: Mode = Mode::Nftables;

#[test]
fn cluster_ip_from_pod_node_and_client_reaches_every_endpoint() {
    cases::cluster_ip_reaches_every_endpoint(MODE);
}

/// Also: 127.0.0.1:NODEPORT from the node is refused, as in kube-proxy's
/// nftables mode, which has no localhost NodePorts.
#[test]
fn node_port_from_client_reaches_endpoints_masqueraded_and_localhost_is_refused() {
    cases::node_port_from_client_is_masqueraded(MODE);
}

#[test]
fn node_port_addresses_cidrs_refuse_node_ports_on_other_addresses() {
    cases::node_port_addresses_limit_where_node_ports_answer(MODE);
}

#[test]
fn load_balancer_ip_and_external_ip_reach_endpoints() {
    cases::load_balancer_and_external_ips_reach_endpoints(MODE);
}

#[test]
fn lb_source_ranges_admit_clients_in_range_and_drop_others() {
    cases::lb_source_ranges_admit_only_listed_clients(MODE);
}

#[test]
fn session_affinity_client_ip_sticks_to_one_endpoint() {
    cases::session_affinity_pins_a_client_to_one_endpoint(MODE);
}

#[test]
fn external_policy_local_keeps_client_ip_uses_local_endpoints_and_drops_without() {
    cases::external_traffic_policy_local_keeps_client_ip_and_local_endpoints(MODE);
}

#[test]
fn internal_policy_local_uses_local_endpoints_and_drops_without() {
    cases::internal_traffic_policy_local_uses_only_local_endpoints(MODE);
}

#[test]
fn terminating_serving_endpoints_are_used_when_none_is_ready() {
    cases::terminating_endpoints_serve_when_none_is_ready(MODE);
}

#[test]
fn service_without_endpoints_rejects_from_pod_node_and_client() {
    cases::service_without_endpoints_rejects(MODE);
}

#[test]
fn hairpin_pod_to_itself_via_vip_is_masqueraded() {
    cases::hairpin_to_self_through_vip_is_masqueraded(MODE);
}

#[test]
fn udp_flow_follows_replaced_endpoint_after_conntrack_cleanup() {
    cases::udp_flow_moves_to_new_endpoint_after_conntrack_cleanup(MODE);
}

#[test]
fn ipv6_and_dual_stack_cluster_ips_reach_endpoints() {
    cases::ipv6_cluster_ip_reaches_endpoints(MODE);
}

#[test]
fn partial_sync_writes_only_the_changed_service_and_takes_effect() {
    cases::partial_sync_rewrites_only_the_changed_service(MODE);
}

#[test]
fn restart_full_sync_keeps_rules_and_established_connections() {
    cases::restart_keeps_rules_and_established_connections(MODE);
}

#[test]
fn partial_syncs_through_a_service_lifecycle_keep_the_datapath_right() {
    cases::partial_syncs_follow_a_service_lifecycle(MODE);
}
