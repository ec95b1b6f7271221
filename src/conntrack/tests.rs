use super::*;
use crate::model::builders::{mk_service, mk_slice};
use crate::model::{Model, SelectionOptions};
use crate::sys::{CommandOutput, FakeRunner};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn dns(cluster_ip: &str) -> k8s_openapi::api::core::v1::Service {
    mk_service("kube-system", "dns")
        .cluster_ip(cluster_ip)
        .port("dns", 53, "UDP")
        .port("tcp", 53, "TCP")
        .build()
}

fn slice(eps: &[&str]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    mk_slice("kube-system", "dns-1", "dns")
        .port("dns", 5353, "UDP")
        .port("tcp", 5353, "TCP")
        .endpoints(eps)
        .build()
}

/// Applies `f` to a model that has programmed `dns` with endpoints a, b,
/// and returns the stale flows of the resulting change set.
fn after(f: impl FnOnce(&mut Model)) -> Vec<StaleFlow> {
    let mut m = Model::new("node-a", SelectionOptions::default());
    m.apply_service(&dns("10.96.0.10"));
    m.apply_slice(&slice(&["10.244.0.1", "10.244.0.2"]));
    let first = m.changes();
    m.ack(&first);
    f(&mut m);
    stale_flows(&m.changes())
}

#[test]
fn removed_udp_endpoint_is_flushed_for_its_vip() {
    let flows = after(|m| m.apply_slice(&slice(&["10.244.0.1"])));
    assert_eq!(
        flows,
        vec![StaleFlow::VipToEndpoint {
            protocol: Protocol::Udp,
            vip: ip("10.96.0.10"),
            endpoint: ip("10.244.0.2")
        }]
    );
}

#[test]
fn scale_to_zero_flushes_every_endpoint() {
    let flows = after(|m| m.apply_slice(&slice(&[])));
    assert_eq!(flows.len(), 2, "{flows:?}");
    assert!(flows.iter().all(|f| matches!(f, StaleFlow::VipToEndpoint { .. })));
}

#[test]
fn deleted_service_flushes_its_flows() {
    let flows = after(|m| m.delete_service(&crate::model::ServiceName::new("kube-system", "dns")));
    assert_eq!(flows.len(), 2, "{flows:?}");
}

#[test]
fn changed_vip_flushes_old_pairs_and_the_new_vip() {
    let flows = after(|m| m.apply_service(&dns("10.96.0.11")));
    assert!(flows.contains(&StaleFlow::VipToEndpoint {
        protocol: Protocol::Udp,
        vip: ip("10.96.0.10"),
        endpoint: ip("10.244.0.1")
    }));
    assert!(flows.contains(&StaleFlow::Vip {
        protocol: Protocol::Udp,
        vip: ip("10.96.0.11")
    }));
}

#[test]
fn service_getting_its_first_endpoint_flushes_blackholed_entries() {
    let mut m = Model::new("node-a", SelectionOptions::default());
    m.apply_service(&dns("10.96.0.10"));
    let first = m.changes();
    m.ack(&first);
    m.apply_slice(&slice(&["10.244.0.1"]));
    let flows = stale_flows(&m.changes());
    assert_eq!(
        flows,
        vec![StaleFlow::Vip {
            protocol: Protocol::Udp,
            vip: ip("10.96.0.10")
        }]
    );
}

#[test]
fn tcp_changes_leave_conntrack_alone() {
    let mut m = Model::new("node-a", SelectionOptions::default());
    m.apply_service(
        &mk_service("default", "web")
            .cluster_ip("10.96.0.1")
            .port("http", 80, "TCP")
            .build(),
    );
    m.apply_slice(
        &mk_slice("default", "web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint("10.244.0.1")
            .build(),
    );
    let first = m.changes();
    m.ack(&first);
    m.apply_slice(&mk_slice("default", "web-1", "web").port("http", 8080, "TCP").build());
    assert!(stale_flows(&m.changes()).is_empty());
}

#[test]
fn node_port_flows_are_flushed_per_endpoint() {
    let mut m = Model::new("node-a", SelectionOptions::default());
    let svc = mk_service("default", "game")
        .cluster_ip("10.96.0.20")
        .type_("NodePort")
        .node_port("udp", 7777, "UDP", 30777)
        .build();
    m.apply_service(&svc);
    m.apply_slice(
        &mk_slice("default", "game-1", "game")
            .port("udp", 7777, "UDP")
            .endpoints(&["10.244.0.9"])
            .build(),
    );
    let first = m.changes();
    m.ack(&first);
    m.apply_slice(&mk_slice("default", "game-1", "game").port("udp", 7777, "UDP").build());
    let flows = stale_flows(&m.changes());
    assert!(flows.contains(&StaleFlow::NodePortToEndpoint {
        protocol: Protocol::Udp,
        port: 30777,
        endpoint: ip("10.244.0.9")
    }));
}

#[test]
fn cleaner_runs_conntrack_and_tolerates_no_matches() {
    let runner = FakeRunner::with_responder(|_| CommandOutput {
        status: 1,
        stdout: String::new(),
        stderr: "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n".into(),
    });
    let cleaner = Cleaner::new(crate::sys::Sys::fake(runner.clone()));
    let stats = cleaner.delete(&[StaleFlow::Vip {
        protocol: Protocol::Udp,
        vip: ip("10.96.0.10"),
    }]);
    assert_eq!(stats.failures, 0);
    let calls = runner.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].program, "conntrack");
    assert_eq!(calls[0].args.join(" "), "-D -f ipv4 -p udp --orig-dst 10.96.0.10");
}

#[test]
fn conntrack_arguments_name_vip_port_and_nat_target() {
    let cases = [
        (
            StaleFlow::VipToEndpoint {
                protocol: Protocol::Udp,
                vip: ip("10.96.0.10"),
                endpoint: ip("10.244.0.2"),
            },
            "-D -f ipv4 -p udp --orig-dst 10.96.0.10 --dst-nat 10.244.0.2",
        ),
        (
            StaleFlow::NodePortToEndpoint {
                protocol: Protocol::Sctp,
                port: 30777,
                endpoint: ip("fd00::9"),
            },
            "-D -f ipv6 -p sctp --orig-port-dst 30777 --dst-nat fd00::9",
        ),
        (
            StaleFlow::NodePort {
                protocol: Protocol::Udp,
                port: 30053,
                family: IpFamily::V6,
            },
            "-D -f ipv6 -p udp --orig-port-dst 30053",
        ),
    ];
    for (flow, want) in cases {
        assert_eq!(flow.args().join(" "), want);
    }
}
