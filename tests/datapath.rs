//! Packet-level tests of every proxy mode: real packets between network
//! namespaces (`tests/support/netns.rs`) through the rules kproxy programmed
//! in the node namespace. The scenarios live in `tests/support/datapath.rs`
//! (`cases`); this file is their table.
//!
//! The table runs every case in every mode, each pair as its own test
//! (`iptables::cluster_ip_reaches_every_endpoint`, ...), and every case once
//! more against an empty ruleset (`empty::...`), where it must fail because
//! its traffic reached the unhandled responder: the proof that each
//! assertion can fail. A case a mode cannot honour is marked
//! `[skip(mode: "why")]`; one failing because of a backend bug is marked
//! `[known_bug(mode: "what")]`. Both print their reason in every run.
//!
//! Adding a mode is one line in `modes` (plus its `Mode` arms in the
//! harness); adding a case is one line in `cases`.
//!
//! Runs as root only (skips otherwise; panics under CI=true).

#![allow(clippy::disallowed_types)] // tests run tools directly

#[path = "support/netns.rs"]
mod netns;

#[path = "support/datapath.rs"]
mod datapath;

use datapath::Mode;

/// Expands the table: a module per mode with one test per case, the
/// empty-ruleset proof module, and a check of the table itself.
macro_rules! suite {
    (
        modes { $($m:ident => $mode:expr),+ $(,)? }
        proof { $pm:ident => $pmode:expr }
        cases $cases:tt
    ) => {
        $( suite!(@mode $m, $mode, $cases); )+
        suite!(@proof $pm, $pmode, $cases);
        suite!(@table [$($m => $mode),+] $cases);
    };
    (@mode $m:ident, $mode:expr, {
        $( $case:ident $( [ $( $kind:ident ( $km:ident : $why:literal ) ),+ ] )? ),* $(,)?
    }) => {
        mod $m {
            use super::*;
            $(
                #[test]
                fn $case() {
                    let marks: &[datapath::Mark] = &[$( $( datapath::Mark::$kind(stringify!($km), $why) ),+ )?];
                    datapath::run_case($mode, stringify!($case), marks, datapath::cases::$case);
                }
            )*
        }
    };
    (@proof $pm:ident, $pmode:expr, {
        $( $case:ident $( [ $( $kind:ident ( $km:ident : $why:literal ) ),+ ] )? ),* $(,)?
    }) => {
        mod $pm {
            use super::*;
            $(
                #[test]
                fn $case() {
                    assert_eq!($pmode, Mode::Empty, "the proof runs against the empty ruleset");
                    datapath::prove_fails_without_rules(stringify!($case), datapath::cases::$case);
                }
            )*
        }
    };
    (@table [$($m:ident => $mode:expr),+] {
        $( $case:ident $( [ $( $kind:ident ( $km:ident : $why:literal ) ),+ ] )? ),* $(,)?
    }) => {
        #[test]
        fn table_marks_name_modes_it_runs() {
            let modes: &[(&str, Mode)] = &[$( (stringify!($m), $mode) ),+];
            let cases: &[(&str, &[datapath::Mark])] = &[$(
                (stringify!($case), &[$( $( datapath::Mark::$kind(stringify!($km), $why) ),+ )?]),
            )*];
            datapath::check_table(modes, cases);
        }
    };
}

suite! {
    modes {
        iptables => Mode::Iptables,
        nftables => Mode::Nftables,
    }
    proof { empty => Mode::Empty }
    cases {
        cluster_ip_reaches_every_endpoint,
        node_port_from_client_is_masqueraded,
        node_port_addresses_limit_where_node_ports_answer,
        load_balancer_and_external_ips_reach_endpoints,
        lb_source_ranges_admit_only_listed_clients,
        session_affinity_pins_a_client_to_one_endpoint,
        external_traffic_policy_local_keeps_client_ip_and_local_endpoints,
        internal_traffic_policy_local_uses_only_local_endpoints,
        terminating_endpoints_serve_when_none_is_ready,
        service_without_endpoints_rejects,
        hairpin_to_self_through_vip_is_masqueraded,
        udp_flow_moves_to_new_endpoint_after_conntrack_cleanup,
        ipv6_cluster_ip_reaches_endpoints,
        partial_sync_rewrites_only_the_changed_service,
        restart_keeps_rules_and_established_connections,
        partial_syncs_follow_a_service_lifecycle,
        ipv6_node_port_from_client_is_masqueraded,
        ipv6_load_balancer_ip_reaches_endpoints,
        ipv6_external_traffic_policy_local_keeps_client_ip,
        ipv6_hairpin_to_self_through_vip_is_masqueraded,
        masquerade_all_masquerades_pod_traffic,
        node_port_addresses_primary_answer_only_on_the_primary_ip,
        node_port_addresses_primary_is_the_first_node_ip,
        localhost_node_ports_off_leave_localhost_unhandled [
            skip(nftables: "nftables mode never serves NodePorts on localhost: there is nothing to turn off \
                            (node_port_from_client_is_masqueraded checks 127.0.0.1 stays unhandled)")
        ],
        source_ranges_admit_the_node_itself,
        session_affinity_expires_after_its_timeout,
        sctp_service_port_rules_load,
    }
}
