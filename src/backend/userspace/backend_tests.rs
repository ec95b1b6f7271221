//! UserspaceBackend against the `sys` fakes: listeners follow the desired
//! state, steering rules are written only when they change, SCTP is
//! skipped, cleanup removes exactly our chains and jumps. Listeners are
//! real sockets on the wildcard addresses (no packet is sent).

use super::*;
use crate::backend::Settings as BackendSettings;
use crate::config::NodePortAddresses;
use crate::model::builders::{mk_node, mk_service, mk_slice};
use crate::model::{Model, Protocol, SelectionOptions, ServiceName};
use crate::sys::{CommandOutput, FakeCall, FakeRunner};

fn settings() -> BackendSettings {
    BackendSettings {
        masquerade_mark: 0x4000,
        masquerade_all: false,
        cluster_cidrs: vec![],
        nodeport_addresses: NodePortAddresses::All,
        localhost_nodeports: true,
        conntrack_liberal: false,
    }
}

fn model() -> Model {
    let mut m = Model::new("node-a", SelectionOptions::default());
    m.set_node(Some(&mk_node("node-a").internal_ip("198.18.1.1").build()));
    m.apply_service(
        &mk_service("default", "web")
            .type_("NodePort")
            .cluster_ip("198.19.0.1")
            .external_ips(&["198.19.1.1"])
            .node_port("http", 80, "TCP", 30080)
            .target_port(8080)
            .build(),
    );
    m.apply_slice(&slice("web", &["198.18.1.10", "198.18.1.11"]));
    m
}

fn slice(svc: &str, eps: &[&str]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    mk_slice("default", &format!("{svc}-1"), svc)
        .port("http", 8080, "TCP")
        .endpoints(eps)
        .build()
}

fn ok(stdout: &str) -> CommandOutput {
    CommandOutput {
        status: 0,
        stdout: stdout.into(),
        stderr: String::new(),
    }
}

/// iptables-save answers with `save`; everything else succeeds.
fn runner(save: &'static str) -> FakeRunner {
    FakeRunner::with_responder(move |call: &FakeCall| {
        if call.program.ends_with("-save") {
            ok(save)
        } else {
            ok("")
        }
    })
}

fn restores(runner: &FakeRunner) -> Vec<FakeCall> {
    runner
        .calls()
        .into_iter()
        .filter(|c| c.program.ends_with("-restore"))
        .collect()
}

fn backend(runner: &FakeRunner) -> UserspaceBackend {
    UserspaceBackend::new(
        Sys::fake(runner.clone()),
        settings(),
        Settings::default(),
        Some(Handle::current()),
    )
}

fn sync(b: &mut UserspaceBackend, m: &mut Model, kind: SyncKind) -> SyncStats {
    let (desired, changes) = (m.desired(), m.changes());
    let stats = b.sync(&desired, &changes, kind).expect("sync");
    m.ack(&changes);
    stats
}

fn port_of(b: &UserspaceBackend, class: Class) -> u16 {
    b.listeners()
        .find(|(k, _)| k.class == class && k.family == IpFamily::V4)
        .map(|(_, r)| r.local_addr().port())
        .expect("listener")
}

#[tokio::test]
async fn listeners_open_per_traffic_class_and_rules_steer_to_them() {
    let r = runner("");
    let mut b = backend(&r);
    let mut m = model();
    let stats = sync(&mut b, &mut m, SyncKind::Full);
    assert_eq!((stats.ports_total, stats.ports_written), (2, 2));
    let (internal, external) = (port_of(&b, Class::Internal), port_of(&b, Class::External));
    let v4 = &restores(&r)[0];
    assert_eq!(
        v4.program, "iptables-nft-restore",
        "the variant is detected as in iptables mode"
    );
    let c = "-m comment --comment \"default/web:http\" -p tcp -m tcp";
    for line in [
        "-I PREROUTING -m comment --comment \"kproxy userspace portals\" -j KUBE-PORTALS-CONTAINER".to_string(),
        format!("-A KUBE-PORTALS-CONTAINER {c} -d 198.19.0.1/32 --dport 80 -j REDIRECT --to-ports {internal}"),
        format!("-A KUBE-PORTALS-HOST {c} -d 198.19.0.1/32 --dport 80 -j DNAT --to-destination 198.18.1.1:{internal}"),
        format!("-A KUBE-PORTALS-CONTAINER {c} -d 198.19.1.1/32 --dport 80 -j REDIRECT --to-ports {external}"),
        format!(
            "-A KUBE-PORTALS-CONTAINER {c} -m addrtype --dst-type LOCAL --dport 30080 -j REDIRECT --to-ports {external}"
        ),
        format!(
            "-A KUBE-PORTALS-HOST {c} -m addrtype --dst-type LOCAL --dport 30080 -j DNAT --to-destination 198.18.1.1:{external}"
        ),
    ] {
        assert!(v4.stdin.lines().any(|l| l == line), "missing {line:?} in\n{}", v4.stdin);
    }
    let targets = b.listeners().next().map(|(_, r)| r.targets()).expect("listener");
    assert_eq!(
        targets.endpoints,
        vec![
            "198.18.1.10:8080".parse().expect("addr"),
            "198.18.1.11:8080".parse().expect("addr")
        ]
    );
}

#[tokio::test]
async fn endpoint_changes_swap_targets_without_touching_the_kernel() {
    let r = runner("");
    let mut b = backend(&r);
    let mut m = model();
    sync(&mut b, &mut m, SyncKind::Full);
    let before = port_of(&b, Class::Internal);
    r.clear();
    m.apply_slice(&slice("web", &["198.18.1.12"]));
    let stats = sync(&mut b, &mut m, SyncKind::Partial);
    assert!(restores(&r).is_empty(), "same rules: no restore");
    assert_eq!((stats.ports_written, stats.rules_written), (2, 0));
    assert_eq!(port_of(&b, Class::Internal), before, "the listener stayed");
    for (_, relay) in b.listeners() {
        assert_eq!(
            relay.targets().endpoints,
            vec!["198.18.1.12:8080".parse().expect("addr")]
        );
    }
}

#[tokio::test]
async fn a_deleted_service_closes_its_listeners_and_rules() {
    let r = runner("");
    let mut b = backend(&r);
    let mut m = model();
    sync(&mut b, &mut m, SyncKind::Full);
    r.clear();
    m.delete_service(&ServiceName::new("default", "web"));
    let stats = sync(&mut b, &mut m, SyncKind::Partial);
    assert_eq!(stats.ports_total, 0);
    let v4 = &restores(&r)[0];
    assert!(!v4.stdin.contains("-A KUBE-PORTALS"), "chains emptied:\n{}", v4.stdin);
    assert!(v4.stdin.contains(":KUBE-PORTALS-CONTAINER - [0:0]"));
}

#[tokio::test]
async fn sctp_ports_are_skipped_and_the_rest_programmed() {
    let r = runner("");
    let mut b = backend(&r);
    let mut m = model();
    m.apply_service(
        &mk_service("default", "diameter")
            .cluster_ip("198.19.0.2")
            .port("diameter", 3868, "SCTP")
            .build(),
    );
    let desired = m.desired();
    let plans = render::plan_listeners(&desired, &settings());
    assert_eq!(plans.sctp.len(), 1);
    assert_eq!(plans.sctp[0].protocol, Protocol::Sctp);
    let stats = sync(&mut b, &mut m, SyncKind::Full);
    assert_eq!(stats.ports_total, 2, "web's two listeners, none for SCTP");
    assert!(
        b.render(&desired)
            .contains("default/diameter:diameter SCTP: not relayed")
    );
}

#[tokio::test]
async fn present_jumps_are_not_inserted_again() {
    let save = "*filter\n:KUBE-PORTALS-FIREWALL - [0:0]\n\
                -A INPUT -m comment --comment \"kproxy userspace portals\" -j KUBE-PORTALS-FIREWALL\n\
                -A FORWARD -m comment --comment \"kproxy userspace portals\" -j KUBE-PORTALS-FIREWALL\nCOMMIT\n\
                *nat\n:KUBE-PORTALS-CONTAINER - [0:0]\n:KUBE-PORTALS-HOST - [0:0]\n\
                -A PREROUTING -m comment --comment \"kproxy userspace portals\" -j KUBE-PORTALS-CONTAINER\n\
                -A OUTPUT -m comment --comment \"kproxy userspace portals\" -j KUBE-PORTALS-HOST\nCOMMIT\n";
    let r = runner(save);
    let mut b = backend(&r);
    let mut m = model();
    sync(&mut b, &mut m, SyncKind::Full);
    assert!(!restores(&r)[0].stdin.contains("-I "), "{}", restores(&r)[0].stdin);
}

#[tokio::test]
async fn cleanup_removes_our_jumps_and_chains_only() {
    let save = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-PORTALS-FIREWALL - [0:0]\n\
                -A INPUT -m comment --comment \"kproxy userspace portals\" -j KUBE-PORTALS-FIREWALL\n\
                -A INPUT -j KUBE-PORTALS-HOST-LOOKALIKE\nCOMMIT\n\
                *nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-PORTALS-CONTAINER - [0:0]\n:KUBE-PORTALS-HOST - [0:0]\n\
                -A PREROUTING -j OTHER\n\
                -A PREROUTING -m comment --comment \"kproxy userspace portals\" -j KUBE-PORTALS-CONTAINER\n\
                -A OUTPUT -m comment --comment \"handle ClusterIPs\" -j KUBE-PORTALS-HOST\nCOMMIT\n";
    let r = runner(save);
    let mut b = backend(&r);
    b.cleanup().expect("cleanup");
    let v4 = &restores(&r)[0];
    assert_eq!(
        v4.stdin,
        "*filter\n\
         -D INPUT -m comment --comment \"kproxy userspace portals\" -j KUBE-PORTALS-FIREWALL\n\
         :KUBE-PORTALS-FIREWALL - [0:0]\n-X KUBE-PORTALS-FIREWALL\nCOMMIT\n\
         *nat\n\
         -D PREROUTING -m comment --comment \"kproxy userspace portals\" -j KUBE-PORTALS-CONTAINER\n\
         -D OUTPUT -m comment --comment \"handle ClusterIPs\" -j KUBE-PORTALS-HOST\n\
         :KUBE-PORTALS-CONTAINER - [0:0]\n:KUBE-PORTALS-HOST - [0:0]\n\
         -X KUBE-PORTALS-CONTAINER\n-X KUBE-PORTALS-HOST\nCOMMIT\n"
    );
    // Nothing of ours: no restore at all.
    let clean = runner("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n");
    backend(&clean).cleanup().expect("cleanup");
    assert!(restores(&clean).is_empty());
}

#[tokio::test]
async fn load_balancer_source_ranges_admit_listed_sources_and_drop_the_rest() {
    let r = runner("");
    let mut b = backend(&r);
    let mut m = model();
    m.apply_service(
        &mk_service("default", "lb")
            .type_("LoadBalancer")
            .cluster_ip("198.19.0.3")
            .node_port("http", 80, "TCP", 30081)
            .target_port(8080)
            .lb_ingress("198.19.2.1")
            .source_ranges(&["203.0.113.0/24"])
            .build(),
    );
    m.apply_slice(&slice("lb", &["198.18.1.12"]));
    sync(&mut b, &mut m, SyncKind::Full);
    let external = b
        .listeners()
        .find(|(k, _)| k.port.service.name == "lb" && k.class == Class::External)
        .map(|(_, r)| r.local_addr().port())
        .expect("external listener");
    let input = &restores(&r)[0].stdin;
    let c = "-m comment --comment \"default/lb:http\" -p tcp -m tcp";
    for line in [
        format!(
            "-A KUBE-PORTALS-CONTAINER {c} -s 203.0.113.0/24 -d 198.19.2.1/32 --dport 80 -j REDIRECT --to-ports {external}"
        ),
        "-A KUBE-PORTALS-FIREWALL -m comment --comment \"default/lb:http traffic not accepted by the source ranges\" \
         -p tcp -m tcp -d 198.19.2.1/32 --dport 80 -j DROP"
            .to_string(),
    ] {
        assert!(input.lines().any(|l| l == line), "missing {line:?} in\n{input}");
    }
    assert!(
        !input
            .lines()
            .any(|l| l.contains("198.19.2.1") && !l.contains("203.0.113.0/24") && l.contains("REDIRECT")),
        "no unconditional redirect of the LB IP:\n{input}"
    );
}

#[test]
fn without_a_runtime_the_backend_renders_but_does_not_sync() {
    let r = runner("");
    let mut b = UserspaceBackend::new(Sys::fake(r.clone()), settings(), Settings::default(), None);
    let m = model();
    let text = b.render(&m.desired());
    assert!(
        text.contains("default/web:http TCP IPv4 internal → 0.0.0.0:0 → 198.18.1.10:8080, 198.18.1.11:8080"),
        "{text}"
    );
    assert!(text.contains("-j REDIRECT --to-ports 0"));
    assert!(matches!(
        b.sync(&m.desired(), &m.changes(), SyncKind::Full),
        Err(BackendError::Unavailable(ProxyMode::Userspace, _))
    ));
    assert!(r.calls().is_empty());
}

#[tokio::test]
async fn udp_entries_redirected_to_old_listener_ports_are_deleted_once() {
    let r = runner("");
    let mut b = backend(&r);
    let mut m = model();
    m.apply_service(
        &mk_service("default", "dns")
            .type_("NodePort")
            .cluster_ip("198.19.0.53")
            .node_port("dns", 53, "UDP", 30053)
            .target_port(5353)
            .build(),
    );
    m.apply_slice(
        &mk_slice("default", "dns-1", "dns")
            .port("dns", 5353, "UDP")
            .endpoints(&["198.18.1.10"])
            .build(),
    );
    let conntrack = |r: &FakeRunner| -> Vec<String> {
        r.calls()
            .into_iter()
            .filter(|c| c.program == "conntrack")
            .map(|c| c.args.join(" "))
            .collect()
    };
    // First sync (as after a restart): entries may still point at the
    // ports of a previous run.
    sync(&mut b, &mut m, SyncKind::Full);
    assert_eq!(
        conntrack(&r),
        vec![
            "-D -f ipv4 -p udp --orig-dst 198.19.0.53",
            "-D -f ipv4 -p udp --orig-port-dst 30053",
        ]
    );
    // Same listeners, new endpoints: nothing to delete.
    r.clear();
    m.apply_slice(
        &mk_slice("default", "dns-1", "dns")
            .port("dns", 5353, "UDP")
            .endpoints(&["198.18.1.11"])
            .build(),
    );
    sync(&mut b, &mut m, SyncKind::Full);
    assert!(conntrack(&r).is_empty(), "{:?}", conntrack(&r));
}

#[tokio::test]
async fn sync_stats_count_ports_without_local_endpoints_per_family() {
    let r = runner("");
    let mut b = backend(&r);
    let mut m = model();
    m.apply_service(
        &mk_service("default", "local")
            .type_("NodePort")
            .cluster_ip("198.19.0.4")
            .node_port("http", 80, "TCP", 30082)
            .target_port(8080)
            .external_traffic_policy_local()
            .health_check_node_port(32100)
            .build(),
    );
    m.apply_slice(
        &mk_slice("default", "local-1", "local")
            .port("http", 8080, "TCP")
            .endpoint_on("198.18.1.20", "node-b")
            .build(),
    );
    let stats = sync(&mut b, &mut m, SyncKind::Full);
    let families: Vec<(IpFamily, usize, usize)> = stats
        .families
        .iter()
        .map(|f| (f.family, f.no_local_internal, f.no_local_external))
        .collect();
    assert_eq!(families, vec![(IpFamily::V4, 0, 1)], "IPv4 only: no IPv6 service");
}
