//! userspace mode with real packets: the backend programs a node namespace
//! (steering rules through iptables-restore, relays on a runtime whose
//! threads live in that namespace) and traffic from a pod, the node itself
//! and an outside client reaches the pods through kproxy's relay. Root only
//! (skips otherwise; fails under CI=true). Every packet stays inside the
//! namespaces the topology creates (198.18.0.0/15, fd00::/8).
//!
//! This file stands alone until the mode-generic packet suite (tests/
//! datapath.rs) takes a userspace mode.

#![allow(clippy::disallowed_types)] // the netns harness runs tools directly

#[path = "support/netns.rs"]
mod netns;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use kproxy::backend::userspace::{Settings as RelaySettings, UserspaceBackend};
use kproxy::backend::{Backend, Settings, SyncKind};
use kproxy::config::NodePortAddresses;
use kproxy::model::builders::{EpSpec, mk_node, mk_service, mk_slice};
use kproxy::model::{Model, SelectionOptions};
use kproxy::sys::Sys;
use netns::{ConnError, Topology, vip4, vip6};

const NODE: &str = "node-a";
const TCP_TARGET: u16 = 8080;
const UDP_TARGET: u16 = 5353;
const NODE_PORT: u16 = 30080;
const T: Duration = Duration::from_secs(2);

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn settings() -> Settings {
    Settings {
        masquerade_mark: 0x4000,
        masquerade_all: false,
        cluster_cidrs: vec!["198.18.1.0/24".parse().expect("cidr")],
        nodeport_addresses: NodePortAddresses::All,
        localhost_nodeports: false,
        conntrack_liberal: false,
    }
}

struct Setup {
    topo: Topology,
    model: Model,
    backend: UserspaceBackend,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Setup {
    fn new() -> Option<Self> {
        Self::build(false)
    }

    /// With `unhandled`, VIP traffic no rule handled is answered by the
    /// topology's `nowhere` namespace instead of vanishing.
    fn build(unhandled: bool) -> Option<Self> {
        let mut tools = vec!["ip", "iptables-restore", "iptables-save", "ip6tables-restore"];
        if unhandled {
            tools.push("nft");
        }
        if !netns::require_root_tools(&tools) {
            return None;
        }
        let topo = Topology::builder()
            .pods(2)
            .ipv6(true)
            .unhandled_responder(unhandled)
            .build();
        topo.start_servers(TCP_TARGET, UDP_TARGET);
        // Worker threads inherit the namespace of the thread that builds the runtime.
        let runtime = topo.node().run_in(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
        });
        let backend = UserspaceBackend::new(
            Sys::in_netns(topo.node().name()),
            settings(),
            RelaySettings::default(),
            Some(runtime.handle().clone()),
        );
        let mut model = Model::new(NODE, SelectionOptions::default());
        let node = mk_node(NODE)
            .internal_ip(&topo.node_ip().to_string())
            .internal_ip(&topo.node_ip6().to_string())
            .build();
        model.set_node(Some(&node));
        Some(Self {
            topo,
            model,
            backend,
            runtime: Some(runtime),
        })
    }

    /// Syncs the way the daemon does, from a thread in the node namespace
    /// (listening sockets belong to the namespace they are created in).
    fn sync(&mut self) {
        let (desired, changes) = (self.model.desired(), self.model.changes());
        let backend = &mut self.backend;
        self.topo
            .node()
            .run_in(|| backend.sync(&desired, &changes, SyncKind::Full))
            .unwrap_or_else(|e| panic!("sync: {}", e.chain()));
        self.model.ack(&changes);
    }
}

impl Setup {
    /// kproxy restarts: the old backend goes away with its listeners (its
    /// rules stay, as when the daemon stops), a new one syncs everything.
    fn restart(&mut self) {
        let handle = self.runtime.as_ref().map(|rt| rt.handle().clone());
        let fresh = UserspaceBackend::new(
            Sys::in_netns(self.topo.node().name()),
            settings(),
            RelaySettings::default(),
            handle,
        );
        drop(std::mem::replace(&mut self.backend, fresh));
        self.model.forget_programmed();
        self.sync();
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let backend = &mut self.backend;
        let _ = self.topo.node().run_in(|| backend.cleanup());
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn web() -> k8s_openapi::api::core::v1::Service {
    mk_service("default", "web")
        .type_("NodePort")
        .cluster_ips(&[&vip4(1).to_string(), &vip6(1).to_string()])
        .external_ips(&[&vip4(2).to_string()])
        .node_port("http", 80, "TCP", i32::from(NODE_PORT))
        .target_port(i32::from(TCP_TARGET))
        .port("dns", 53, "UDP")
        .target_port(i32::from(UDP_TARGET))
        .build()
}

fn slices(topo: &Topology, pods: &[usize]) -> [k8s_openapi::api::discovery::v1::EndpointSlice; 2] {
    let v4 = pods.iter().fold(
        mk_slice("default", "web-v4", "web")
            .port("http", i32::from(TCP_TARGET), "TCP")
            .port("dns", i32::from(UDP_TARGET), "UDP"),
        |b, i| b.endpoint_with(EpSpec::new(&topo.pod_ip(*i).to_string()).node(NODE)),
    );
    let v6 = pods.iter().fold(
        mk_slice("default", "web-v6", "web")
            .ipv6()
            .port("http", i32::from(TCP_TARGET), "TCP")
            .port("dns", i32::from(UDP_TARGET), "UDP"),
        |b, i| b.endpoint_with(EpSpec::new(&topo.pod_ip6(*i).to_string()).node(NODE)),
    );
    [v4.build(), v6.build()]
}

fn both_pods(tally: &BTreeMap<String, usize>) -> bool {
    tally.keys().all(|k| k == "pod0" || k == "pod1") && tally.len() == 2
}

#[test]
fn service_traffic_reaches_the_pods_through_the_relay() {
    let Some(mut s) = Setup::new() else { return };
    let svc = web();
    s.model.apply_service(&svc);
    for slice in slices(&s.topo, &[0, 1]) {
        s.model.apply_slice(&slice);
    }
    let cluster_ip = sa(vip4(1), 80);
    // Without steering rules the VIP leads nowhere: the test can fail.
    assert_eq!(s.topo.pod(0).tcp_request(cluster_ip, T).err(), Some(ConnError::Timeout));

    s.sync();

    let from_pod = s.topo.pod(0).tally_tcp(cluster_ip, 6, T);
    assert!(both_pods(&from_pod), "pod → ClusterIP, round robin: {from_pod:?}");
    assert_eq!(from_pod.values().sum::<usize>(), 6, "{from_pod:?}");
    let reply = s.topo.pod(0).tcp_request(cluster_ip, T).expect("pod → ClusterIP");
    assert_eq!(
        reply.seen_src.ip(),
        s.topo.node_ip(),
        "the relay connects from the node: the pod sees the node's address"
    );
    s.topo.node().tcp_request(cluster_ip, T).expect("node → ClusterIP");
    let v6 = s.topo.pod(0).tally_tcp(sa(vip6(1), 80), 4, T);
    assert!(both_pods(&v6), "pod → IPv6 ClusterIP: {v6:?}");
    let np = s.topo.client().tally_tcp(sa(s.topo.node_ext_ip(), NODE_PORT), 4, T);
    assert!(both_pods(&np), "client → NodePort: {np:?}");
    s.topo
        .node()
        .tcp_request(sa(s.topo.node_ip(), NODE_PORT), T)
        .expect("node → its own NodePort");
    let ext = s.topo.client().tally_tcp(sa(vip4(2), 80), 4, T);
    assert!(both_pods(&ext), "client → externalIP: {ext:?}");
    let dns = s.topo.pod(1).tally_udp(sa(vip4(1), 53), 4, T);
    assert!(
        dns.keys().all(|k| k == "pod0" || k == "pod1") && dns.values().sum::<usize>() == 4,
        "pod → ClusterIP over UDP, answered from the VIP: {dns:?}"
    );
}

#[test]
fn no_endpoints_refuse_and_endpoint_changes_apply_to_new_connections() {
    let Some(mut s) = Setup::new() else { return };
    let svc = web();
    s.model.apply_service(&svc);
    let cluster_ip = sa(vip4(1), 80);
    s.sync();
    // The relay accepted the connection before it knew there was nowhere to
    // go: the client sees a reset of an established connection, not a
    // refused SYN.
    let refused = s.topo.pod(0).tcp_request(cluster_ip, T).err();
    assert!(
        matches!(&refused, Some(ConnError::Other(m)) if m.contains("reset")),
        "no endpoints: reset, got {refused:?}"
    );
    for slice in slices(&s.topo, &[1]) {
        s.model.apply_slice(&slice);
    }
    s.sync();
    let only = s.topo.pod(0).tally_tcp(cluster_ip, 3, T);
    assert_eq!(only, BTreeMap::from([("pod1".to_string(), 3)]));
    // An endpoint that refuses (its server stopped) is skipped for the next one.
    for slice in slices(&s.topo, &[0, 1]) {
        s.model.apply_slice(&slice);
    }
    s.sync();
    assert!(
        s.topo.pod(1).stop_server(netns::Proto::Tcp, TCP_TARGET),
        "stop pod1's server"
    );
    let failover = s.topo.pod(0).tally_tcp(cluster_ip, 4, T);
    assert_eq!(
        failover,
        BTreeMap::from([("pod0".to_string(), 4)]),
        "pod1 refuses: all to pod0"
    );
}

#[test]
fn external_traffic_policy_local_uses_only_this_nodes_endpoints() {
    let Some(mut s) = Setup::new() else { return };
    let svc = mk_service("default", "local")
        .type_("NodePort")
        .cluster_ip(&vip4(3).to_string())
        .node_port("http", 80, "TCP", i32::from(NODE_PORT))
        .target_port(i32::from(TCP_TARGET))
        .external_traffic_policy_local()
        .health_check_node_port(32100)
        .build();
    s.model.apply_service(&svc);
    let slice = |eps: &[(usize, &str)]| {
        eps.iter()
            .fold(
                mk_slice("default", "local-v4", "local").port("http", i32::from(TCP_TARGET), "TCP"),
                |b, (i, node)| b.endpoint_with(EpSpec::new(&s.topo.pod_ip(*i).to_string()).node(node)),
            )
            .build()
    };
    let both = slice(&[(0, NODE), (1, "node-b")]);
    let remote_only = slice(&[(1, "node-b")]);
    s.model.apply_slice(&both);
    s.sync();
    let node_port = sa(s.topo.node_ext_ip(), NODE_PORT);
    let external = s.topo.client().tally_tcp(node_port, 4, T);
    assert_eq!(
        external,
        BTreeMap::from([("pod0".to_string(), 4)]),
        "NodePort: local endpoint only"
    );
    // Unlike the kernel modes, Local does not preserve the client's address:
    // the relay's own connection comes from the node.
    let reply = s.topo.client().tcp_request(node_port, T).expect("client → NodePort");
    assert_eq!(reply.seen_src.ip(), s.topo.node_ip(), "{reply:?}");
    let internal = s.topo.pod(0).tally_tcp(sa(vip4(3), 80), 4, T);
    assert!(both_pods(&internal), "ClusterIP: every endpoint: {internal:?}");

    // Only another node has endpoints: external traffic gets no answer
    // (the relay holds the connection, then resets it), internal goes on.
    s.model.apply_slice(&remote_only);
    s.sync();
    assert_eq!(
        s.topo.client().tcp_request(node_port, T).err(),
        Some(ConnError::Timeout)
    );
    let internal = s.topo.pod(0).tally_tcp(sa(vip4(3), 80), 2, T);
    assert_eq!(internal, BTreeMap::from([("pod1".to_string(), 2)]));
}

#[test]
fn load_balancer_source_ranges_admit_listed_clients_only() {
    let Some(mut s) = Setup::build(true) else { return };
    let client = format!("{}/32", s.topo.client_ip());
    let svc = mk_service("default", "lb")
        .type_("LoadBalancer")
        .cluster_ip(&vip4(5).to_string())
        .node_port("http", 80, "TCP", i32::from(NODE_PORT))
        .target_port(i32::from(TCP_TARGET))
        .lb_ingress(&vip4(6).to_string())
        .source_ranges(&[&client])
        .build();
    s.model.apply_service(&svc);
    let slice = mk_slice("default", "lb-v4", "lb")
        .port("http", i32::from(TCP_TARGET), "TCP")
        .endpoint_with(EpSpec::new(&s.topo.pod_ip(0).to_string()).node(NODE))
        .build();
    s.model.apply_slice(&slice);
    let lb = sa(vip4(6), 80);
    // Before any rule, the LB IP answers "unhandled" to everyone.
    let before = s.topo.pod(1).tcp_request(lb, T).map(|r| r.pod);
    assert_eq!(before, Ok(netns::UNHANDLED.to_string()));
    s.sync();
    let admitted = s.topo.client().tcp_request(lb, T).map(|r| r.pod);
    assert_eq!(admitted, Ok("pod0".to_string()), "client inside the source range");
    let outsider = s.topo.pod(1).tcp_request(lb, T).map(|r| r.pod);
    assert_eq!(
        outsider,
        Err(ConnError::Timeout),
        "pod outside the source range: dropped"
    );
}

#[test]
fn a_udp_flow_survives_a_restart_that_moves_its_listener() {
    let Some(mut s) = Setup::new() else { return };
    if !netns::require_root_tools(&["conntrack"]) {
        return;
    }
    s.model.apply_service(&web());
    for slice in slices(&s.topo, &[0]) {
        s.model.apply_slice(&slice);
    }
    s.sync();
    let dns = sa(vip4(1), 53);
    // One client socket (fixed source port) for the whole test: its
    // conntrack entry outlives the first listener.
    let flow = s.topo.pod(1).udp_flow(40053).expect("udp flow");
    assert_eq!(flow.send_recv(dns, T).map(|r| r.pod), Ok("pod0".to_string()));
    s.restart();
    let after = s
        .topo
        .pod(1)
        .wait_for(netns::Proto::Udp, dns, Duration::from_secs(1), T, |r| r.is_ok());
    assert!(after.is_ok(), "a fresh flow works: {after:?}");
    assert_eq!(
        flow.send_recv(dns, T).map(|r| r.pod),
        Ok("pod0".to_string()),
        "the old flow is redirected to the new listener"
    );
}
