//! userspace mode with real packets: the backend programs a node namespace
//! (steering rules through iptables-restore, relays on a runtime whose
//! threads live in that namespace) and traffic from a pod, the node itself
//! and an outside client reaches the pods through kproxy's relay. Root only
//! (skips otherwise; fails under CI=true). Every packet stays inside the
//! namespaces the topology creates (198.18.0.0/15, fd00::/8).
//!
//! The mode-generic packet suite (tests/datapath.rs) runs userspace mode
//! too; this file keeps what it has no case for: failover to the next
//! endpoint when one refuses, and a UDP flow across a restart that moves
//! its listener.

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
use netns::{Topology, vip4, vip6};

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
        let tools = ["ip", "iptables-restore", "iptables-save", "ip6tables-restore"];
        if !netns::require_root_tools(&tools) {
            return None;
        }
        let topo = Topology::builder().pods(2).ipv6(true).build();
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

/// The legacy proxier's failover, which the mode-generic suite has no case
/// for: a connection to an endpoint that refuses goes on to the next one.
#[test]
fn a_refusing_endpoint_fails_over_to_the_next() {
    let Some(mut s) = Setup::new() else { return };
    s.model.apply_service(&web());
    for slice in slices(&s.topo, &[0, 1]) {
        s.model.apply_slice(&slice);
    }
    s.sync();
    let cluster_ip = sa(vip4(1), 80);
    let both = s.topo.pod(0).tally_tcp(cluster_ip, 6, T);
    assert!(both_pods(&both), "round robin before: {both:?}");
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
