//! Self-test of the network-namespace topology used by datapath tests.
//! Runs as root only (skips otherwise; panics under CI=true).

#![allow(clippy::disallowed_types)] // tests run tools directly

#[path = "support/netns.rs"]
mod netns;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use netns::{ConnError, Proto, Topology};

const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const T: Duration = Duration::from_secs(2);

fn sa(ip: impl Into<std::net::IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn has_tool(t: &str) -> bool {
    netns::find_tool(t).is_some()
}

#[test]
fn ipv4_basics() {
    if !netns::require_root_tools(&["ip"]) {
        return;
    }
    let topo = Topology::builder().pods(2).build();
    topo.start_servers(TCP_PORT, UDP_PORT);

    // client -> pod through the node (routed), real client IP preserved.
    let r = topo
        .client()
        .tcp_request(sa(topo.pod_ip(0), TCP_PORT), T)
        .expect("client -> pod0 tcp");
    assert_eq!(r.pod, "pod0");
    assert_eq!(r.seen_src.ip(), topo.client_ip());
    assert!(r.src_preserved(), "{r:?}");

    // pod -> pod across the bridge.
    let r = topo
        .pod(0)
        .tcp_request(sa(topo.pod_ip(1), TCP_PORT), T)
        .expect("pod0 -> pod1 tcp");
    assert_eq!(r.pod, "pod1");
    assert_eq!(r.seen_src.ip(), topo.pod_ip(0));

    // node -> pod.
    let r = topo
        .node()
        .tcp_request(sa(topo.pod_ip(1), TCP_PORT), T)
        .expect("node -> pod1 tcp");
    assert_eq!(r.pod, "pod1");
    assert_eq!(r.seen_src.ip(), topo.node_ip());

    // UDP request/reply (client and node).
    let r = topo
        .client()
        .udp_request(sa(topo.pod_ip(1), UDP_PORT), T)
        .expect("client -> pod1 udp");
    assert_eq!(r.pod, "pod1");
    assert_eq!(r.seen_src.ip(), topo.client_ip());
    assert_eq!(r.seen_src, r.local);
    let r = topo
        .node()
        .udp_request(sa(topo.pod_ip(0), UDP_PORT), T)
        .expect("node -> pod0 udp");
    assert_eq!(r.pod, "pod0");

    // Closed ports are refused (TCP RST, ICMP port unreachable), repeatedly
    // (no ICMP rate limiting in the namespaces).
    for _ in 0..10 {
        assert_eq!(
            topo.client().tcp_request(sa(topo.pod_ip(0), 9), T),
            Err(ConnError::Refused)
        );
        assert_eq!(
            topo.client().udp_request(sa(topo.pod_ip(0), 9), T),
            Err(ConnError::Refused)
        );
    }

    // Tally.
    let t = topo.client().tally_tcp(sa(topo.pod_ip(1), TCP_PORT), 5, T);
    assert_eq!(t.get("pod1"), Some(&5), "{t:?}");
    let t = topo.client().tally_udp(sa(topo.pod_ip(0), UDP_PORT), 5, T);
    assert_eq!(t.get("pod0"), Some(&5), "{t:?}");
    let t = topo.client().tally(Proto::Tcp, sa(topo.pod_ip(1), 9), 3, T);
    assert_eq!(t.get("!refused"), Some(&3), "{t:?}");

    // Persistent UDP flow keeps its source port.
    let flow = topo.client().udp_flow(40000).expect("udp_flow");
    for _ in 0..3 {
        let r = flow.send_recv(sa(topo.pod_ip(0), UDP_PORT), T).expect("flow send_recv");
        assert_eq!(r.pod, "pod0");
        assert_eq!(r.seen_src, sa(topo.client_ip(), 40000));
    }
    assert_eq!(flow.send_recv(sa(topo.pod_ip(0), 9), T), Err(ConnError::Refused));
    // And it still works after an error.
    assert!(flow.send_recv(sa(topo.pod_ip(1), UDP_PORT), T).is_ok());

    // Stopping one server makes its port refuse.
    assert!(topo.pod(1).stop_server(Proto::Tcp, TCP_PORT));
    assert_eq!(
        topo.client().tcp_request(sa(topo.pod_ip(1), TCP_PORT), T),
        Err(ConnError::Refused)
    );

    // Sysctls really are per namespace.
    assert_eq!(
        topo.node().read_sysctl("net.ipv4.ip_forward").expect("read sysctl"),
        "1"
    );
    assert_eq!(
        topo.node()
            .read_sysctl("net.bridge.bridge-nf-call-iptables")
            .expect("read sysctl"),
        "1"
    );
    assert_eq!(
        topo.client().read_sysctl("net.ipv4.ip_forward").expect("read sysctl"),
        "0"
    );
    let hairpin = topo.node().exec_ok(&["ip", "-d", "link", "show", "veth0"]);
    assert!(hairpin.contains("hairpin on"), "{hairpin}");
}

#[test]
fn dropped_is_timeout() {
    if !netns::require_root_tools(&["ip"]) {
        return;
    }
    if !has_tool("iptables") {
        eprintln!("SKIP: iptables not installed; drop case not tested");
        return;
    }
    let topo = Topology::builder().pods(1).build();
    topo.start_servers(TCP_PORT, UDP_PORT);
    // Rules only inside the pod namespace.
    topo.pod(0)
        .exec_ok(&["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP"]);
    topo.pod(0)
        .exec_ok(&["iptables", "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "DROP"]);
    let short = Duration::from_millis(500);
    assert_eq!(
        topo.client().tcp_request(sa(topo.pod_ip(0), 9), short),
        Err(ConnError::Timeout)
    );
    assert_eq!(
        topo.client().udp_request(sa(topo.pod_ip(0), 9), short),
        Err(ConnError::Timeout)
    );
    // The server port is still fine.
    assert!(topo.client().tcp_request(sa(topo.pod_ip(0), TCP_PORT), T).is_ok());
}

#[test]
fn drop_cleans_up() {
    if !netns::require_root_tools(&["ip"]) {
        return;
    }
    let topo = Topology::builder().pods(2).second_node(true).build();
    topo.start_servers(TCP_PORT, UDP_PORT);
    topo.node().serve_tcp(TCP_PORT).expect("node serve");
    // A registered background process inside the node namespace.
    let mut cmd = topo.node().command("sleep");
    cmd.arg("300");
    let pid = topo.node().spawn(cmd).expect("spawn sleep");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    let names: Vec<String> = topo.namespaces().iter().map(|n| n.name().to_string()).collect();
    assert_eq!(names.len(), 5);
    let listed = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list")
            .stdout,
    )
    .into_owned();
    for n in &names {
        assert!(listed.contains(n.as_str()), "{n} missing from {listed}");
    }
    let counters = topo.live_server_counters();
    let live: usize = counters.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    assert_eq!(live, 2 * 2 + 1);

    drop(topo);

    let live: usize = counters.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    assert_eq!(live, 0, "server threads still running after drop");
    let listed = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list")
            .stdout,
    )
    .into_owned();
    for n in &names {
        assert!(!listed.contains(n.as_str()), "{n} still listed: {listed}");
    }
    // The sleep was killed (and reaped).
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn panic_still_cleans_up() {
    if !netns::require_root_tools(&["ip"]) {
        return;
    }
    let mut names = Vec::new();
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let topo = Topology::builder().pods(1).build();
        names.extend(topo.namespaces().iter().map(|n| n.name().to_string()));
        topo.start_servers(TCP_PORT, UDP_PORT);
        panic!("boom");
    }));
    assert!(res.is_err());
    assert_eq!(names.len(), 3);
    for n in &names {
        assert!(!std::path::Path::new("/var/run/netns").join(n).exists());
    }
}

#[test]
fn ipv6_basics() {
    if !netns::require_root_tools(&["ip"]) {
        return;
    }
    let topo = Topology::builder().pods(2).ipv6(true).build();
    topo.start_servers(TCP_PORT, UDP_PORT);

    let r = topo
        .client()
        .tcp_request(sa(topo.pod_ip6(0), TCP_PORT), T)
        .expect("client -> pod0 tcp6");
    assert_eq!(r.pod, "pod0");
    assert_eq!(r.seen_src.ip(), topo.client_ip6());

    let r = topo
        .pod(1)
        .tcp_request(sa(topo.pod_ip6(0), TCP_PORT), T)
        .expect("pod1 -> pod0 tcp6");
    assert_eq!(r.pod, "pod0");
    assert_eq!(r.seen_src.ip(), topo.pod_ip6(1));

    let r = topo
        .node()
        .tcp_request(sa(topo.pod_ip6(1), TCP_PORT), T)
        .expect("node -> pod1 tcp6");
    assert_eq!(r.pod, "pod1");
    assert_eq!(r.seen_src.ip(), topo.node_ip6());

    let r = topo
        .client()
        .udp_request(sa(topo.pod_ip6(1), UDP_PORT), T)
        .expect("client -> pod1 udp6");
    assert_eq!(r.pod, "pod1");
    assert_eq!(r.seen_src.ip(), topo.client_ip6());

    assert_eq!(
        topo.client().tcp_request(sa(topo.pod_ip6(0), 9), T),
        Err(ConnError::Refused)
    );
    assert_eq!(
        topo.client().udp_request(sa(topo.pod_ip6(0), 9), T),
        Err(ConnError::Refused)
    );

    // Dual-stack flow socket talks to both families.
    let flow = topo.client().udp_flow(0).expect("udp_flow");
    let r6 = flow.send_recv(sa(topo.pod_ip6(0), UDP_PORT), T).expect("flow v6");
    assert_eq!(r6.seen_src, sa(topo.client_ip6(), flow.local_port()));
    let r4 = flow.send_recv(sa(topo.pod_ip(0), UDP_PORT), T).expect("flow v4");
    assert_eq!(r4.seen_src, sa(topo.client_ip(), flow.local_port()));

    // IPv4 still works in a dual-stack topology.
    assert!(topo.client().tcp_request(sa(topo.pod_ip(1), TCP_PORT), T).is_ok());
}

#[test]
fn second_node_reaches_pods() {
    if !netns::require_root_tools(&["ip"]) {
        return;
    }
    let topo = Topology::builder().pods(1).ipv6(true).second_node(true).build();
    topo.start_servers(TCP_PORT, UDP_PORT);
    topo.node2().serve_tcp(TCP_PORT).expect("node2 serve");
    let r = topo
        .client()
        .tcp_request(sa(topo.node2_ip(), TCP_PORT), T)
        .expect("client -> node2");
    assert_eq!(r.pod, "node2");
    let r = topo
        .node2()
        .tcp_request(sa(topo.pod_ip(0), TCP_PORT), T)
        .expect("node2 -> pod0 via node");
    assert_eq!(r.pod, "pod0");
    assert_eq!(r.seen_src.ip(), topo.node2_ip());
    let r = topo
        .node2()
        .tcp_request(sa(topo.pod_ip6(0), TCP_PORT), T)
        .expect("node2 -> pod0 v6 via node");
    assert_eq!(r.seen_src.ip(), topo.node2_ip6());
}

/// Proves the VIP route choice: DNAT in the node's nat OUTPUT/PREROUTING
/// chains (what kproxy will program) steers node-, client- and pod-originated
/// VIP traffic to a pod, including hairpin (pod -> own VIP -> itself).
#[test]
fn vip_dnat_through_node() {
    if !netns::require_root_tools(&["ip"]) {
        return;
    }
    if !has_tool("iptables-restore") || !has_tool("ip6tables-restore") {
        eprintln!("SKIP: iptables-restore not installed; VIP DNAT case not tested");
        return;
    }
    let topo = Topology::builder().pods(2).ipv6(true).build();
    topo.start_servers(TCP_PORT, UDP_PORT);
    let vip = netns::vip4(10);
    let vip6 = netns::vip6(10);
    let rules4 = format!(
        "*nat\n\
         :PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :SVC - [0:0]\n\
         -A PREROUTING -d {vip} -j SVC\n\
         -A OUTPUT -d {vip} -j SVC\n\
         -A SVC -p tcp --dport 80 -j DNAT --to-destination {p0}:{TCP_PORT}\n\
         -A SVC -p udp --dport 53 -j DNAT --to-destination {p0}:{UDP_PORT}\n\
         -A POSTROUTING -s {p0} -d {p0} -j MASQUERADE\n\
         COMMIT\n",
        p0 = topo.pod_ip(0)
    );
    topo.node().exec_input_ok(&["iptables-restore"], rules4.as_bytes());
    let rules6 = format!(
        "*nat\n\
         :PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         -A PREROUTING -d {vip6} -p tcp --dport 80 -j DNAT --to-destination [{p0}]:{TCP_PORT}\n\
         -A OUTPUT -d {vip6} -p tcp --dport 80 -j DNAT --to-destination [{p0}]:{TCP_PORT}\n\
         COMMIT\n",
        p0 = topo.pod_ip6(0)
    );
    topo.node().exec_input_ok(&["ip6tables-restore"], rules6.as_bytes());

    // Node-local traffic to the VIP: nat OUTPUT DNAT.
    let r = topo.node().tcp_request(sa(vip, 80), T).expect("node -> VIP");
    assert_eq!(r.pod, "pod0");
    assert_eq!(r.seen_src.ip(), topo.node_ip());
    let r = topo.node().udp_request(sa(vip, 53), T).expect("node -> VIP udp");
    assert_eq!(r.pod, "pod0");
    let r = topo.node().tcp_request(sa(vip6, 80), T).expect("node -> VIP6");
    assert_eq!(r.pod, "pod0");
    assert_eq!(r.seen_src.ip(), topo.node_ip6());

    // Client (outside) traffic to the VIP: PREROUTING DNAT, routed.
    let r = topo.client().tcp_request(sa(vip, 80), T).expect("client -> VIP");
    assert_eq!(r.pod, "pod0");
    assert_eq!(r.seen_src.ip(), topo.client_ip());
    let r = topo.client().tcp_request(sa(vip6, 80), T).expect("client -> VIP6");
    assert_eq!(r.seen_src.ip(), topo.client_ip6());

    // pod1 -> VIP -> pod0: the reply is bridged pod0 -> pod1 and must be
    // un-DNATed by the node (br_netfilter).
    let r = topo.pod(1).tcp_request(sa(vip, 80), T).expect("pod1 -> VIP");
    assert_eq!(r.pod, "pod0");
    assert_eq!(r.seen_src.ip(), topo.pod_ip(1));
    let r = topo.pod(1).tcp_request(sa(vip6, 80), T).expect("pod1 -> VIP6");
    assert_eq!(r.seen_src.ip(), topo.pod_ip6(1));

    // Hairpin: pod0 -> VIP -> pod0 (needs hairpin mode + masquerade).
    let r = topo.pod(0).tcp_request(sa(vip, 80), T).expect("pod0 -> VIP hairpin");
    assert_eq!(r.pod, "pod0");
    assert_eq!(r.seen_src.ip(), topo.node_ip());

    // A VIP without a rule: silently dropped (the node's VIP route points at
    // a sink device), from the node and from outside.
    assert_eq!(
        topo.node()
            .tcp_request(sa(netns::vip4(11), 80), Duration::from_millis(500)),
        Err(ConnError::Timeout)
    );
    assert_eq!(
        topo.client()
            .udp_request(sa(netns::vip4(11), 53), Duration::from_millis(500)),
        Err(ConnError::Timeout)
    );
    assert_eq!(
        topo.node()
            .tcp_request(sa(netns::vip6(11), 80), Duration::from_millis(500)),
        Err(ConnError::Timeout)
    );
}

/// Random load balancing shows up in the tally.
#[test]
fn tally_sees_both_endpoints() {
    if !netns::require_root_tools(&["ip"]) {
        return;
    }
    if !has_tool("iptables-restore") {
        eprintln!("SKIP: iptables-restore not installed");
        return;
    }
    let topo = Topology::builder().pods(2).build();
    topo.start_servers(TCP_PORT, UDP_PORT);
    let vip = netns::vip4(20);
    let rules = format!(
        "*nat\n\
         :PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         -A PREROUTING -d {vip} -p udp --dport 53 -m statistic --mode random --probability 0.5 -j DNAT --to-destination {p0}:{UDP_PORT}\n\
         -A PREROUTING -d {vip} -p udp --dport 53 -j DNAT --to-destination {p1}:{UDP_PORT}\n\
         COMMIT\n",
        p0 = topo.pod_ip(0),
        p1 = topo.pod_ip(1)
    );
    topo.node().exec_input_ok(&["iptables-restore"], rules.as_bytes());
    let t = topo.client().tally_udp(sa(vip, 53), 40, T);
    assert_eq!(t.values().sum::<usize>(), 40);
    assert!(t.get("pod0").copied().unwrap_or(0) > 0, "{t:?}");
    assert!(t.get("pod1").copied().unwrap_or(0) > 0, "{t:?}");
    assert_eq!(t.len(), 2, "{t:?}");

    // Same 5-tuple sticks to one endpoint (conntrack).
    let flow = topo.client().udp_flow(0).expect("flow");
    let first = flow.send_recv(sa(vip, 53), T).expect("flow first").pod;
    for _ in 0..10 {
        assert_eq!(flow.send_recv(sa(vip, 53), T).expect("flow").pod, first);
    }
    // wait_reply returns promptly when the target answers.
    let r = topo
        .client()
        .wait_reply(Proto::Udp, sa(vip, 53), Duration::from_secs(5))
        .expect("wait_reply");
    assert!(r.pod == "pod0" || r.pod == "pod1");
}

/// With the unhandled responder, a VIP no rule handles answers `unhandled`
/// (TCP and UDP, any port, IPv4 and IPv6, from the node, the client and a
/// pod), while a DNAT on the node still steers the VIP to a pod first.
#[test]
fn unhandled_responder_answers_for_vips_no_rule_handles() {
    if !netns::require_root_tools(&["ip", "nft", "iptables-restore"]) {
        return;
    }
    let topo = Topology::builder().pods(2).ipv6(true).unhandled_responder(true).build();
    topo.start_servers(TCP_PORT, UDP_PORT);
    let (vip, vip6) = (netns::vip4(30), netns::vip6(30));
    for ns in [topo.node(), topo.client(), topo.pod(1)] {
        for to in [sa(vip, 80), sa(vip, 4242), sa(vip6, 80), sa(netns::vip4(31), 7)] {
            for proto in [Proto::Tcp, Proto::Udp] {
                let r = ns
                    .request(proto, to, T)
                    .unwrap_or_else(|e| panic!("{proto:?} {} -> {to}: {e}", ns.label()));
                assert_eq!(r.pod, netns::UNHANDLED, "{proto:?} {} -> {to}: {r:?}", ns.label());
            }
        }
    }
    // The client's own address is seen: no NAT on the way to nowhere.
    let r = topo.client().tcp_request(sa(vip, 80), T).expect("client -> vip");
    assert_eq!(r.seen_src.ip(), topo.client_ip());
    // Node-originated traffic comes from the node's pod-network address.
    let r = topo.node().tcp_request(sa(vip, 80), T).expect("node -> vip");
    assert_eq!(r.seen_src.ip(), topo.node_ip());

    // A DNAT on the node wins over the responder.
    let rules = format!(
        "*nat\n\
         :PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         -A PREROUTING -d {vip} -p tcp --dport 80 -j DNAT --to-destination {p0}:{TCP_PORT}\n\
         -A OUTPUT -d {vip} -p tcp --dport 80 -j DNAT --to-destination {p0}:{TCP_PORT}\n\
         COMMIT\n",
        p0 = topo.pod_ip(0)
    );
    topo.node().exec_input_ok(&["iptables-restore"], rules.as_bytes());
    for ns in [topo.node(), topo.client(), topo.pod(1)] {
        let r = ns.tcp_request(sa(vip, 80), T).expect("DNATed vip");
        assert_eq!(r.pod, "pod0", "{} -> {vip}:80", ns.label());
        let r = ns.udp_request(sa(vip, 53), T).expect("vip udp");
        assert_eq!(r.pod, netns::UNHANDLED, "{} -> {vip}:53/udp", ns.label());
    }
    // A node-side listener labelled `unhandled` answers on the node's own addresses.
    topo.node()
        .serve_tcp_as(30999, netns::UNHANDLED)
        .expect("node listener");
    let r = topo
        .client()
        .tcp_request(sa(topo.node_ext_ip(), 30999), T)
        .expect("client -> node");
    assert_eq!(r.pod, netns::UNHANDLED);
    let r = topo
        .node()
        .tcp_request(sa(std::net::Ipv4Addr::LOCALHOST, 30999), T)
        .expect("node -> localhost");
    assert_eq!(r.pod, netns::UNHANDLED);
}
