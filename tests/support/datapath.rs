//! Mode-independent packet-flow harness for kproxy's datapath tests.
//!
//! Include next to the topology module:
//!
//! ```text
//! #[path = "support/netns.rs"] mod netns;
//! #[path = "support/datapath.rs"] mod datapath;
//! ```
//!
//! A [`Dp`] is one node topology ([`crate::netns::Topology`]: node, pods,
//! outside client, and the `nowhere` namespace answering unhandled VIP
//! traffic) plus the model and a backend programming the node namespace,
//! built for a [`Mode`]. A test applies Services and EndpointSlices (built
//! with `kproxy::model::builders`), syncs the way the daemon does
//! (`desired()`, `changes()`, `Backend::sync`, `ack`), and then checks a
//! table of [`Flow`]s: from which namespace, to which address, expecting
//! which pods (all of them, or one sticky pod) and what source address the
//! pod sees, or one of the three outcomes that are not a pod:
//!
//! ```text
//!   refused()    REJECT: TCP RST / ICMP unreachable, every try
//!   dropped()    DROP: no answer within DROP_TIMEOUT, every try
//!   unhandled()  no rule touched it: the `unhandled` responder answered
//!                (VIPs: the `nowhere` namespace; NodePorts: the harness's
//!                listeners on the node, see NODE_PORTS_TCP/UDP)
//! ```
//!
//! A flow expecting anything else that gets the `unhandled` answer fails
//! saying that no rule handled it. A mode that cannot honour a flow as
//! written runs it as [`Mode::adapt`] says and prints `ADAPTED` with the
//! reason (userspace mode: the relay connects from the node, resets instead
//! of refusing, sends no ICMP).
//!
//! The scenarios live in [`cases`], one function per behaviour, taking the
//! [`Mode`]. `tests/datapath.rs` is their table: every case in every mode
//! ([`run_case`], honouring [`Mark`]s), and every case once more against
//! [`Mode::Empty`], where it must fail ([`prove_fails_without_rules`]). A
//! further backend adds a [`Mode`] variant (with its arms in the few
//! mode-specific checks: rule dumps, partial-sync input, apply calls) and
//! one line in that table.
//!
//! Conventions: pods serve TCP on 8080 and UDP on 5353 (replying with their
//! label and the peer address they saw); services expose TCP 80 ("http") and
//! UDP 53 ("dns") on VIPs from 198.19.0.0/16 (fd00:96::/64). The node is
//! `node-a`; endpoints on `node-a` are local, those on `node-b` remote (they
//! sit on the same bridge, so the node can still forward to them). Every
//! packet stays inside the test's namespaces; every loop is bounded.

#![allow(dead_code)]
// Test harness: runs tools and sockets directly.
#![allow(clippy::disallowed_types)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy::backend::iptables::names::PortChains;
use kproxy::backend::iptables::{IptablesBackend, Settings};
use kproxy::backend::ipvs::{Clients, IpvsBackend, IpvsOpts};
use kproxy::backend::nftables::{self, NftablesBackend};
use kproxy::backend::userspace::{self, UserspaceBackend};
use kproxy::backend::{Backend, RecordingBackend, SyncKind};
use kproxy::config::NodePortAddresses;
use kproxy::model::builders::{EpSpec, ServiceBuilder, mk_node, mk_service, mk_slice};
use kproxy::model::{ChangeSet, IpFamily, Model, Protocol, SelectionOptions, ServiceName, ServicePortName};
use kproxy::sys::{CommandOutput, CommandRunner, NetnsRunner, RunError, RunnerSysctl, Sys};

use crate::netns::{self, ConnError, Netns, Proto, Reply, Topology, UNHANDLED, vip4, vip6};

// ---------------------------------------------------------------------------
// Conventions
// ---------------------------------------------------------------------------

/// Our node's name.
pub const NODE: &str = "node-a";
/// Another node's name (its endpoints are remote for us).
pub const OTHER_NODE: &str = "node-b";
/// Namespace of every Service and EndpointSlice.
pub const NS: &str = "default";
/// Service ports and the pods' target ports.
pub const TCP_PORT: u16 = 80;
pub const TCP_TARGET: u16 = 8080;
pub const UDP_PORT: u16 = 53;
pub const UDP_TARGET: u16 = 5353;
/// An SCTP service port (and target port); no SCTP packet is ever sent.
pub const SCTP_PORT: u16 = 3868;
pub const MASQUERADE_MARK: u32 = 0x4000;
/// ClientIP affinity timeout of the expiry case, and how many waits past it
/// the case allows before it declares the affinity stuck.
pub const AFFINITY_TIMEOUT_SECS: i32 = 2;
pub const AFFINITY_ROUNDS: usize = 10;

/// Every NodePort the cases may use. The harness listens on them on the
/// node (TCP and UDP, answering [`UNHANDLED`]), so NodePort traffic that no
/// rule handled answers instead of being refused by the node's kernel.
/// [`service_with_node_ports`] refuses ports not listed here.
pub const NODE_PORTS_TCP: &[u16] = &[30080, 30081, 30082];
pub const NODE_PORTS_UDP: &[u16] = &[30053, 30054, 30055];

/// Per-request timeout for flows expected to get an answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a flow expected to be dropped waits (per try).
pub const DROP_TIMEOUT: Duration = Duration::from_millis(1200);

/// The node's pod-bridge address (what masqueraded traffic shows up as).
pub fn node_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1))
}

/// The node's external address (eth1, towards the client).
pub fn node_ext_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 2, 1))
}

pub fn node_ip6() -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1))
}

/// The node's external IPv6 address (eth1, towards the client).
pub fn node_ext_ip6() -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1))
}

pub fn client_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 2, 2))
}

/// Pod `i`'s IPv4 address (198.18.1.(10+i)).
pub fn pod4(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 1, (10 + i) as u8))
}

/// Pod `i`'s IPv6 address (fd00:1::(10+i)).
pub fn pod6(i: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, (10 + i) as u16))
}

/// IPv4 VIP number `n` (198.19.x.y).
pub fn v4(n: u16) -> IpAddr {
    IpAddr::V4(vip4(n))
}

/// IPv6 VIP number `n` (fd00:96::n).
pub fn v6(n: u16) -> IpAddr {
    IpAddr::V6(vip6(n))
}

/// `ip:80` (the services' TCP port).
pub fn tcp(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, TCP_PORT)
}

/// `ip:53` (the services' UDP port).
pub fn udp(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, UDP_PORT)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// API objects
// ---------------------------------------------------------------------------

/// A ClusterIP service `name` on `vip`: TCP 80→8080 ("http"), UDP 53→5353 ("dns").
pub fn service(name: &str, vip: IpAddr) -> ServiceBuilder {
    mk_service(NS, name)
        .cluster_ip(&vip.to_string())
        .port("http", i32::from(TCP_PORT), "TCP")
        .target_port(i32::from(TCP_TARGET))
        .port("dns", i32::from(UDP_PORT), "UDP")
        .target_port(i32::from(UDP_TARGET))
}

/// A dual-stack ClusterIP service (IPv4 VIP first).
pub fn service_dual(name: &str, vip4: IpAddr, vip6: IpAddr) -> ServiceBuilder {
    mk_service(NS, name)
        .cluster_ips(&[&vip4.to_string(), &vip6.to_string()])
        .port("http", i32::from(TCP_PORT), "TCP")
        .target_port(i32::from(TCP_TARGET))
        .port("dns", i32::from(UDP_PORT), "UDP")
        .target_port(i32::from(UDP_TARGET))
}

/// A `type` (NodePort or LoadBalancer) service with node ports for both
/// ports.
pub fn service_with_node_ports(name: &str, type_: &str, vip: IpAddr, np_tcp: u16, np_udp: u16) -> ServiceBuilder {
    with_node_ports(
        mk_service(NS, name).type_(type_).cluster_ip(&vip.to_string()),
        np_tcp,
        np_udp,
    )
}

/// A dual-stack (IPv4 first) `type` service with node ports for both ports.
pub fn service_dual_with_node_ports(
    name: &str,
    type_: &str,
    vip4: IpAddr,
    vip6: IpAddr,
    np_tcp: u16,
    np_udp: u16,
) -> ServiceBuilder {
    let svc = mk_service(NS, name)
        .type_(type_)
        .cluster_ips(&[&vip4.to_string(), &vip6.to_string()]);
    with_node_ports(svc, np_tcp, np_udp)
}

fn with_node_ports(svc: ServiceBuilder, np_tcp: u16, np_udp: u16) -> ServiceBuilder {
    assert!(
        NODE_PORTS_TCP.contains(&np_tcp) && NODE_PORTS_UDP.contains(&np_udp),
        "node ports {np_tcp}/{np_udp}: add them to NODE_PORTS_TCP/NODE_PORTS_UDP so unhandled \
         NodePort traffic answers"
    );
    svc.node_port("http", i32::from(TCP_PORT), "TCP", i32::from(np_tcp))
        .target_port(i32::from(TCP_TARGET))
        .node_port("dns", i32::from(UDP_PORT), "UDP", i32::from(np_udp))
        .target_port(i32::from(UDP_TARGET))
}

/// A ready endpoint on our node: pod `i`.
pub fn local(i: usize) -> EpSpec {
    EpSpec::new(&pod4(i).to_string()).node(NODE)
}

/// A ready endpoint on another node (pod `i`, reachable over the bridge).
pub fn remote(i: usize) -> EpSpec {
    EpSpec::new(&pod4(i).to_string()).node(OTHER_NODE)
}

/// The IPv6 address of pod `i` as a ready local endpoint.
pub fn local6(i: usize) -> EpSpec {
    EpSpec::new(&pod6(i).to_string()).node(NODE)
}

/// The IPv6 address of pod `i` as a ready endpoint on another node.
pub fn remote6(i: usize) -> EpSpec {
    EpSpec::new(&pod6(i).to_string()).node(OTHER_NODE)
}

/// An IPv4 EndpointSlice `<svc>-v4` of service `svc` with `eps`.
pub fn slice(svc: &str, eps: &[EpSpec]) -> EndpointSlice {
    eps.iter()
        .cloned()
        .fold(
            mk_slice(NS, &format!("{svc}-v4"), svc)
                .port("http", i32::from(TCP_TARGET), "TCP")
                .port("dns", i32::from(UDP_TARGET), "UDP"),
            |b, ep| b.endpoint_with(ep),
        )
        .build()
}

/// An IPv6 EndpointSlice `<svc>-v6` of service `svc` with `eps`.
pub fn slice6(svc: &str, eps: &[EpSpec]) -> EndpointSlice {
    eps.iter()
        .cloned()
        .fold(
            mk_slice(NS, &format!("{svc}-v6"), svc)
                .ipv6()
                .port("http", i32::from(TCP_TARGET), "TCP")
                .port("dns", i32::from(UDP_TARGET), "UDP"),
            |b, ep| b.endpoint_with(ep),
        )
        .build()
}

/// The service port names of one of our services (`http`/TCP, `dns`/UDP).
pub fn port_names(svc: &str) -> [ServicePortName; 2] {
    let name = ServiceName::new(NS, svc);
    [
        ServicePortName::new(name.clone(), "http", Protocol::Tcp),
        ServicePortName::new(name, "dns", Protocol::Udp),
    ]
}

// ---------------------------------------------------------------------------
// Recording runner
// ---------------------------------------------------------------------------

/// One command the backend ran in the node namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub program: String,
    pub args: Vec<String>,
}

/// `NetnsRunner` that remembers what it ran.
struct RecordingRunner {
    inner: NetnsRunner,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl CommandRunner for RecordingRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<CommandOutput, RunError> {
        lock(&self.calls).push(Call {
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        });
        self.inner.run(program, args, stdin)
    }
}

// ---------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------

/// The proxy mode under test. Every mode-specific detail of the harness is a
/// `match` on this enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Iptables,
    Nftables,
    /// kproxy relays the traffic itself (steering rules through iptables,
    /// relays on a runtime whose threads live in the node namespace). The
    /// relay opens its own connection, so a pod always sees the node's
    /// address; [`Mode::adapt`] rewrites the flows this changes, loudly.
    Userspace,
    /// Needs a kernel with IPVS: runs in the VM (`tests/ipvs_vm.rs`).
    Ipvs,
    /// Programs nothing (a recording backend): the empty ruleset every case
    /// must fail against (see [`prove_fails_without_rules`]). Its rule checks
    /// (`check_*`) pass vacuously, so a case runs on to all of its flow
    /// tables, which are what must fail.
    Empty,
}

/// A backend of some mode, with access to its mode-specific introspection.
pub enum ModeBackend {
    Iptables(IptablesBackend),
    Nftables(NftablesBackend),
    Userspace(Box<UserspaceMode>),
    Ipvs(IpvsBackend),
    Empty(RecordingBackend),
}

/// The userspace backend and the runtime its relays run on (built in the
/// node namespace: worker threads inherit the namespace of the thread that
/// builds it). Dropping it ends every relayed connection, as a stopped
/// kproxy does.
pub struct UserspaceMode {
    backend: UserspaceBackend,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for UserspaceMode {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl ModeBackend {
    pub fn backend(&mut self) -> &mut dyn Backend {
        match self {
            ModeBackend::Iptables(b) => b,
            ModeBackend::Nftables(b) => b,
            ModeBackend::Userspace(u) => &mut u.backend,
            ModeBackend::Ipvs(b) => b,
            ModeBackend::Empty(b) => b,
        }
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Userspace => "userspace",
            Mode::Ipvs => "ipvs",
            Mode::Empty => "empty",
        }
    }

    /// Tools the tests need (checked by `require_root_tools`).
    pub fn tools(self) -> &'static [&'static str] {
        match self {
            Mode::Iptables => &[
                "iptables",
                "iptables-save",
                "iptables-restore",
                "ip6tables",
                "ip6tables-save",
                "ip6tables-restore",
                "conntrack",
                "sysctl",
            ],
            Mode::Nftables => &["nft", "conntrack", "sysctl"],
            Mode::Userspace => &[
                "iptables-save",
                "iptables-restore",
                "ip6tables-save",
                "ip6tables-restore",
                "conntrack",
                "sysctl",
            ],
            Mode::Ipvs => &["ipvsadm", "ipset", "iptables-save", "conntrack", "sysctl"],
            Mode::Empty => &["conntrack", "sysctl"],
        }
    }

    /// Everything a [`Dp`] of this mode needs: the mode's tools and `nft`
    /// for the unhandled responder.
    fn dp_tools(self) -> Vec<&'static str> {
        let mut tools = self.tools().to_vec();
        if !tools.contains(&"nft") {
            tools.push("nft");
        }
        tools
    }

    fn new_backend(self, sys: Sys, cfg: &DpConfig, node: &Netns) -> ModeBackend {
        match self {
            Mode::Userspace => {
                let runtime = node.run_in(|| {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .unwrap_or_else(|e| panic!("relay runtime: {e}"))
                });
                let settings = Settings {
                    masquerade_mark: MASQUERADE_MARK,
                    masquerade_all: cfg.masquerade_all,
                    cluster_cidrs: cluster_cidrs(),
                    nodeport_addresses: cfg.nodeport_addresses.clone(),
                    localhost_nodeports: cfg.localhost_nodeports,
                    conntrack_liberal: false,
                };
                let backend = UserspaceBackend::new(
                    sys,
                    settings,
                    userspace::Settings::default(),
                    Some(runtime.handle().clone()),
                );
                ModeBackend::Userspace(Box::new(UserspaceMode {
                    backend,
                    runtime: Some(runtime),
                }))
            }
            Mode::Iptables => {
                let settings = Settings {
                    masquerade_mark: MASQUERADE_MARK,
                    masquerade_all: cfg.masquerade_all,
                    cluster_cidrs: cluster_cidrs(),
                    nodeport_addresses: cfg.nodeport_addresses.clone(),
                    localhost_nodeports: cfg.localhost_nodeports,
                    conntrack_liberal: false,
                };
                // No variant: detected in the namespace, as the daemon does.
                ModeBackend::Iptables(IptablesBackend::new(sys, settings, None))
            }
            Mode::Nftables => {
                let settings = nftables::Settings {
                    masquerade_mark: MASQUERADE_MARK,
                    masquerade_all: cfg.masquerade_all,
                    cluster_cidrs: cluster_cidrs(),
                    nodeport_addresses: cfg.nodeport_addresses.clone(),
                    localhost_nodeports: false,
                    conntrack_liberal: false,
                };
                // Stale-chain delay decided from the kernel, as the daemon does.
                ModeBackend::Nftables(NftablesBackend::new(sys, settings, None))
            }
            Mode::Ipvs => {
                let settings = Settings {
                    masquerade_mark: MASQUERADE_MARK,
                    masquerade_all: cfg.masquerade_all,
                    cluster_cidrs: cluster_cidrs(),
                    nodeport_addresses: cfg.nodeport_addresses.clone(),
                    localhost_nodeports: false,
                    conntrack_liberal: false,
                };
                // Netlink sockets belong to the namespace they are opened in.
                let clients = node.run_in(|| Clients::open().unwrap_or_else(|e| panic!("ipvs clients: {e}")));
                ModeBackend::Ipvs(IpvsBackend::with_clients(sys, settings, IpvsOpts::default(), clients))
            }
            Mode::Empty => ModeBackend::Empty(RecordingBackend::new()),
        }
    }

    /// Commands (run in the node namespace) whose output is the mode's
    /// whole ruleset.
    fn dump_commands(self) -> &'static [&'static [&'static str]] {
        match self {
            Mode::Iptables | Mode::Userspace => &[&["iptables-save"], &["ip6tables-save"]],
            Mode::Nftables => &[&["nft", "list", "ruleset"]],
            Mode::Ipvs => &[
                &["ipvsadm", "-S", "-n"],
                &["ipset", "save"],
                &["iptables-save"],
                &["ip6tables-save"],
            ],
            Mode::Empty => &[],
        }
    }

    /// The ruleset of the node namespace (for checks and failure reports).
    pub fn dump(self, node: &Netns) -> String {
        dump_in(self, node.name())
    }

    /// Whether `dump` shows `vip:port` (TCP) sent to endpoint rules.
    pub fn vip_programmed(self, dump: &str, vip: IpAddr, port: u16) -> bool {
        self.vip_programmed_for(dump, "tcp", vip, port)
    }

    /// Whether `dump` shows `vip:port` of protocol `proto` (`tcp`, `udp`,
    /// `sctp`) sent to endpoint rules.
    pub fn vip_programmed_for(self, dump: &str, proto: &str, vip: IpAddr, port: u16) -> bool {
        match self {
            Mode::Iptables => {
                let dst = format!("-d {vip}/{} ", if vip.is_ipv4() { 32 } else { 128 });
                let dport = format!("--dport {port} ");
                let proto = format!("-p {proto} ");
                let target = dump
                    .lines()
                    .filter(|l| {
                        l.starts_with("-A KUBE-SERVICES ")
                            && l.contains(&dst)
                            && l.contains(&proto)
                            && l.contains(&dport)
                    })
                    .find_map(|l| l.split(" -j ").nth(1))
                    .map(|t| t.split_whitespace().next().unwrap_or("").to_string());
                let Some(chain) = target.filter(|t| t.starts_with("KUBE-SVC-") || t.starts_with("KUBE-SVL-")) else {
                    return false;
                };
                let prefix = format!("-A {chain} ");
                dump.lines()
                    .any(|l| l.starts_with(&prefix) && l.contains("-j KUBE-SEP-"))
                    && dump
                        .lines()
                        .any(|l| l.starts_with("-A KUBE-SEP-") && l.contains("-j DNAT"))
            }
            Mode::Nftables => nft::vip_programmed(dump, proto, vip, port),
            Mode::Userspace => {
                let dst = format!("-d {vip}/{} ", if vip.is_ipv4() { 32 } else { 128 });
                let (proto, dport) = (format!("-p {proto} "), format!("--dport {port} "));
                dump.lines().any(|l| {
                    l.starts_with("-A KUBE-PORTALS-CONTAINER ")
                        && l.contains(&dst)
                        && l.contains(&proto)
                        && l.contains(&dport)
                        && l.contains("-j REDIRECT --to-ports ")
                })
            }
            Mode::Ipvs => {
                let kind = match proto {
                    "tcp" => "-t",
                    "udp" => "-u",
                    _ => "--sctp-service",
                };
                let vs = format!("{kind} {}", SocketAddr::new(vip, port));
                dump.lines().any(|l| l.starts_with(&format!("-A {vs} ")))
                    && dump.lines().any(|l| l.starts_with(&format!("-a {vs} -r ")))
            }
            Mode::Empty => false,
        }
    }

    /// The health-check node port `port` is accepted by the filter rules.
    pub fn check_health_check_port(self, node: &Netns, port: u16) -> Result<(), String> {
        match self {
            Mode::Iptables => {
                let out = node.exec_ok(&["iptables", "-w", "5", "-t", "filter", "-S", "KUBE-NODEPORTS"]);
                let dport = format!("--dport {port} ");
                if out
                    .lines()
                    .any(|l| l.starts_with("-A KUBE-NODEPORTS ") && l.contains(&dport) && l.ends_with("-j ACCEPT"))
                {
                    Ok(())
                } else {
                    Err(format!(
                        "no ACCEPT for health check port {port} in filter KUBE-NODEPORTS:\n{out}"
                    ))
                }
            }
            Mode::Nftables => nft::check_health_check_port(&self.dump(node), port),
            // No filter rule of this mode drops a health-check node port
            // (its only DROPs are for load-balancer IPs with source ranges).
            Mode::Userspace => {
                let dump = self.dump(node);
                let dport = format!("--dport {port} ");
                match dump.lines().find(|l| l.contains(&dport) && l.contains("-j DROP")) {
                    Some(l) => Err(format!("health check port {port} dropped: {l}")),
                    None => Ok(()),
                }
            }
            Mode::Ipvs => {
                let dump = self.dump(node);
                let member = format!("add KUBE-HEALTH-CHECK-NODE-PORT {port}");
                let accept = dump.lines().any(|l| {
                    l.starts_with("-A KUBE-NODE-PORT ")
                        && l.contains("--match-set KUBE-HEALTH-CHECK-NODE-PORT dst")
                        && l.ends_with("-j ACCEPT")
                });
                if dump.lines().any(|l| l == member) && accept {
                    Ok(())
                } else {
                    Err(format!("health check port {port} not accepted:\n{dump}"))
                }
            }
            Mode::Empty => Ok(()),
        }
    }

    /// The last (partial) sync's kernel input for IPv4 touched `changed`'s
    /// rules and nothing shared or of `unchanged` services. Userspace mode:
    /// an endpoint change is a new target set for the listener, so the sync
    /// (whose commands are `dp.calls()`) wrote no rule at all.
    pub fn check_partial_input(self, dp: &Dp, changed: &str, unchanged: &[&str]) -> Result<(), String> {
        match (self, dp.backend()) {
            (Mode::Userspace, ModeBackend::Userspace(_)) => {
                let calls = dp.calls();
                match calls.iter().find(|c| c.program.ends_with("-restore")) {
                    Some(c) => Err(format!("an endpoint change of {changed} rewrote steering rules: {c:?}")),
                    None => Ok(()),
                }
            }
            (Mode::Iptables, ModeBackend::Iptables(b)) => {
                let input = b
                    .last_input(IpFamily::V4)
                    .ok_or("no iptables-restore input recorded for IPv4")?;
                let mut errors = Vec::new();
                if let Some(l) = input.lines().find(|l| l.contains("KUBE-SERVICES")) {
                    errors.push(format!("touches KUBE-SERVICES: {l:?}"));
                }
                for name in &port_names(changed) {
                    let svc = PortChains::new(name).svc;
                    if !input.contains(&svc) {
                        errors.push(format!("does not rewrite {svc} of {name}"));
                    }
                }
                for other in unchanged {
                    for name in &port_names(other) {
                        let chains = PortChains::new(name);
                        for c in [&chains.svc, &chains.svl, &chains.ext, &chains.fw] {
                            if input.contains(c.as_str()) {
                                errors.push(format!("touches {c} of unchanged {name}"));
                            }
                        }
                    }
                }
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{}\n--- input ---\n{input}", errors.join("\n")))
                }
            }
            (Mode::Nftables, ModeBackend::Nftables(b)) => nft::check_partial_input(b, changed, unchanged),
            (Mode::Ipvs, _) => Err("ipvs mode: partial inputs are checked by its own VM test".into()),
            (Mode::Empty, ModeBackend::Empty(_)) => Ok(()),
            (mode, _) => Err(format!("the backend is not a {} backend", mode.name())),
        }
    }

    /// `dump` holds nothing of service `svc` and no orphaned per-service
    /// chain (declared but never jumped to).
    pub fn check_no_leftovers(self, dump: &str, svc: &str) -> Result<(), String> {
        match self {
            Mode::Iptables => {
                let mut errors = Vec::new();
                let comment = format!("{NS}/{svc}:");
                if let Some(l) = dump.lines().find(|l| l.contains(&comment)) {
                    errors.push(format!("rule of deleted {NS}/{svc} left: {l}"));
                }
                for name in &port_names(svc) {
                    let chains = PortChains::new(name);
                    for c in [&chains.svc, &chains.svl, &chains.ext, &chains.fw] {
                        if dump.contains(c.as_str()) {
                            errors.push(format!("chain {c} of deleted {name} left"));
                        }
                    }
                }
                for l in dump.lines() {
                    let Some(chain) = l.strip_prefix(':').and_then(|c| c.split_whitespace().next()) else {
                        continue;
                    };
                    let per_service = ["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-"];
                    if per_service.iter().any(|p| chain.starts_with(p)) && !dump.contains(&format!("-j {chain}")) {
                        errors.push(format!("orphaned chain {chain}"));
                    }
                }
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors.join("\n"))
                }
            }
            Mode::Nftables => nft::check_no_leftovers(dump, svc),
            // Every steering rule carries its service port in a comment.
            Mode::Userspace => {
                let comment = format!("{NS}/{svc}:");
                match dump.lines().find(|l| l.contains(&comment)) {
                    Some(l) => Err(format!("rule of deleted {NS}/{svc} left: {l}")),
                    None => Ok(()),
                }
            }
            // Nothing in ipvs mode is named after a service; each case's
            // flows check that a deleted service no longer answers.
            Mode::Ipvs => {
                let _ = (dump, svc);
                Ok(())
            }
            Mode::Empty => Ok(()),
        }
    }

    /// No rule appears twice in a chain of `dump` (e.g. jumps from the
    /// built-in chains inserted again by a restarted proxy).
    pub fn check_no_duplicate_rules(self, dump: &str) -> Result<(), String> {
        match self {
            Mode::Iptables | Mode::Userspace | Mode::Ipvs => {
                let mut seen = std::collections::BTreeSet::new();
                // Table sections, counted: the IPv6 dump follows the IPv4 one.
                let mut section = 0;
                let mut dups = Vec::new();
                for l in dump.lines() {
                    if l.starts_with('*') {
                        section += 1;
                    } else if l.starts_with("-A ") && !seen.insert((section, l)) {
                        dups.push(l.to_string());
                    }
                }
                if dups.is_empty() {
                    Ok(())
                } else {
                    Err(format!("duplicated rules:\n{}", dups.join("\n")))
                }
            }
            Mode::Nftables => nft::check_no_duplicate_rules(dump),
            Mode::Empty => Ok(()),
        }
    }

    /// Every kernel write in `calls` keeps rules it does not mention (no
    /// flush of the whole table/ruleset).
    pub fn check_apply_calls(self, calls: &[Call]) -> Result<(), String> {
        match self {
            Mode::Iptables | Mode::Userspace | Mode::Ipvs => {
                let restores: Vec<&Call> = calls.iter().filter(|c| c.program.ends_with("-restore")).collect();
                if restores.is_empty() {
                    return Err("no iptables-restore call recorded".into());
                }
                match restores.iter().find(|c| !c.args.iter().any(|a| a == "--noflush")) {
                    Some(c) => Err(format!("restore without --noflush: {c:?}")),
                    None => Ok(()),
                }
            }
            Mode::Nftables => nft::check_apply_calls(calls),
            Mode::Empty => Ok(()),
        }
    }

    /// `flow` as this mode can honour it, and why it differs when it does.
    /// Userspace mode relays every connection from the node itself: the
    /// pod sees the node's address of the family (never the client's); a
    /// TCP connection without endpoints is accepted and then reset; a UDP
    /// datagram without endpoints is dropped (the relay sends no ICMP).
    pub fn adapt(self, flow: &Flow) -> (Flow, Option<&'static str>) {
        let mut f = flow.clone();
        if self != Mode::Userspace {
            return (f, None);
        }
        let mut why = None;
        if f.src == Src::Own {
            f.src = Src::Ip(if f.to.is_ipv4() { node_ip() } else { node_ip6() });
            why = Some("the relay connects from the node: the pod sees the node's address, not the client's");
        }
        if f.expect == Expect::Refused {
            (f.expect, why) = match f.proto {
                Proto::Tcp => (
                    Expect::Reset,
                    Some("the relay accepts before it knows there is no endpoint: a reset after connect"),
                ),
                Proto::Udp => (
                    Expect::Timeout,
                    Some("the relay sends no ICMP: a datagram without endpoints is dropped"),
                ),
            };
        }
        (f, why)
    }

    /// Whether the mode relays connections in the kproxy process (so a
    /// restart ends them) instead of the kernel's NAT.
    pub fn relays_in_process(self) -> bool {
        self == Mode::Userspace
    }

    /// Whether the mode programs SCTP service ports (userspace mode skips
    /// them: reported, never fatal).
    pub fn handles_sctp(self) -> bool {
        self != Mode::Userspace
    }

    /// Which pods a pod reaches through an external address of a service
    /// with Local external policy and a local endpoint: `cluster` where pod
    /// traffic is short-circuited to the cluster endpoints (iptables,
    /// nftables), `local` in ipvs mode, where the address has one virtual
    /// server with the local real servers (kube-proxy's ipvs mode).
    pub fn pod_to_local_external<'a>(self, cluster: &'a [usize], local: &'a [usize]) -> &'a [usize] {
        match self {
            Mode::Ipvs => local,
            Mode::Iptables | Mode::Nftables | Mode::Userspace | Mode::Empty => cluster,
        }
    }

    /// Whether an established UDP flow keeps going to a removed endpoint
    /// until its conntrack entry is deleted. Not in ipvs mode: the real
    /// server is deleted at once and `expire_nodest_conn=1` moves the flow
    /// at its next datagram.
    pub fn keeps_udp_flows_until_conntrack_cleanup(self) -> bool {
        !matches!(self, Mode::Ipvs)
    }

    /// Whether NodePorts answer on 127.0.0.1. kube-proxy's nftables and
    /// ipvs modes have no localhost NodePorts (and neither have ours). The
    /// empty mode keeps the flow as given (it must fail it).
    pub fn serves_localhost_node_ports(self) -> bool {
        match self {
            Mode::Iptables | Mode::Userspace | Mode::Empty => true,
            Mode::Nftables | Mode::Ipvs => false,
        }
    }

    /// `flow` (to a localhost NodePort) as this mode handles it: as given
    /// where localhost NodePorts are served, unhandled (it reaches the
    /// harness's listener on the node) where they are not.
    pub fn localhost_node_port(self, flow: Flow) -> Flow {
        if self.serves_localhost_node_ports() {
            flow
        } else {
            flow.unhandled()
        }
    }
}

/// The nftables arms of the mode-specific checks (on `nft list ruleset`
/// output and on the backend's last transaction).
mod nft {
    use std::collections::{BTreeSet, HashSet};
    use std::net::IpAddr;

    use kproxy::backend::nftables::NftablesBackend;
    use kproxy::backend::nftables::names::{self, PortChains};

    use super::{Call, NS, port_names};

    /// (table header, chain name, rule) for every rule of `dump`, and the
    /// chains declared, per table.
    struct Listing {
        rules: Vec<(String, String, String)>,
        chains: Vec<(String, String)>,
    }

    fn parse(dump: &str) -> Listing {
        let mut out = Listing {
            rules: Vec::new(),
            chains: Vec::new(),
        };
        let (mut table, mut chain) = (String::new(), None::<String>);
        for line in dump.lines() {
            let t = line.trim();
            if let Some(rest) = line.strip_prefix("table ") {
                table = rest.trim_end_matches('{').trim().to_string();
                chain = None;
            } else if let Some(rest) = t.strip_prefix("chain ") {
                let name = rest.trim_end_matches('{').trim().to_string();
                out.chains.push((table.clone(), name.clone()));
                chain = Some(name);
            } else if t == "}" {
                chain = None;
            } else if let Some(c) = &chain
                && !t.is_empty()
                && !t.starts_with("type ")
                && !t.starts_with("comment ")
            {
                out.rules.push((table.clone(), c.clone(), t.to_string()));
            }
        }
        out
    }

    /// Every name after `goto ` or `jump ` in `text`.
    fn targets(text: &str) -> HashSet<String> {
        let mut out = HashSet::new();
        for verb in ["goto ", "jump "] {
            for (i, _) in text.match_indices(verb) {
                let rest = &text[i + verb.len()..];
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == ',' || c == '}')
                    .unwrap_or(rest.len());
                out.insert(rest[..end].to_string());
            }
        }
        out
    }

    fn chain_rules<'a>(l: &'a Listing, chain: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        l.rules
            .iter()
            .filter(move |(_, c, _)| c == chain)
            .map(|(_, _, r)| r.as_str())
    }

    pub fn vip_programmed(dump: &str, proto: &str, vip: IpAddr, port: u16) -> bool {
        let key = format!("{vip} . {proto} . {port} : goto ");
        let Some(i) = dump.find(&key) else { return false };
        let rest = &dump[i + key.len()..];
        let end = rest
            .find(|c: char| c.is_whitespace() || c == ',' || c == '}')
            .unwrap_or(rest.len());
        let chain = &rest[..end];
        // The policy chain DNATs to the endpoints itself.
        let listing = parse(dump);
        chain_rules(&listing, chain).any(|r| r.contains("dnat to"))
    }

    /// nftables needs no ACCEPT for health-check node ports (an accept in
    /// our table could not override another table's drop anyway): the
    /// equivalent is that nothing of ours matches the port.
    pub fn check_health_check_port(dump: &str, port: u16) -> Result<(), String> {
        let patterns = [format!(". {port} "), format!(". {port},"), format!("dport {port} ")];
        match dump.lines().find(|l| patterns.iter().any(|p| l.contains(p.as_str()))) {
            Some(l) => Err(format!("health check port {port} is matched by our rules: {l}")),
            None => Ok(()),
        }
    }

    pub fn check_partial_input(b: &NftablesBackend, changed: &str, unchanged: &[&str]) -> Result<(), String> {
        let input = b.last_transaction().ok_or("no nft transaction recorded")?;
        let mut errors = Vec::new();
        let static_chains = [names::SERVICES, names::MASQUERADING, names::SERVICE_ENDPOINTS_CHECK];
        for l in input.lines() {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                [_, "table", ..] => errors.push(format!("touches the table: {l:?}")),
                [_, "map", ..] => errors.push(format!("touches a map's definition: {l:?}")),
                [_, "rule", _, _, chain, ..] if static_chains.contains(chain) => {
                    errors.push(format!("touches a shared chain: {l:?}"))
                }
                _ => {}
            }
        }
        for name in &port_names(changed) {
            let chain = PortChains::new(name).service;
            if !input.contains(&chain) {
                errors.push(format!("does not rewrite {chain} of {name}"));
            }
        }
        for other in unchanged {
            let marker = format!("-{NS}/{other}/");
            if let Some(l) = input.lines().find(|l| l.contains(&marker)) {
                errors.push(format!("touches unchanged {NS}/{other}: {l:?}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{}\n--- transaction ---\n{input}", errors.join("\n")))
        }
    }

    /// Nothing named after `svc` (chains, sets, elements' targets, element
    /// comments) is left, and no per-service chain is orphaned.
    pub fn check_no_leftovers(dump: &str, svc: &str) -> Result<(), String> {
        let mut errors = Vec::new();
        let marker = format!("-{NS}/{svc}/");
        let comment = format!("\"{NS}/{svc}:");
        if let Some(l) = dump.lines().find(|l| l.contains(&marker) || l.contains(&comment)) {
            errors.push(format!("object of deleted {NS}/{svc} left: {}", l.trim()));
        }
        let listing = parse(dump);
        let referenced = targets(dump);
        for (table, chain) in &listing.chains {
            if names::is_service_chain(chain) && !referenced.contains(chain) {
                errors.push(format!("orphaned chain {chain} in {table}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    pub fn check_no_duplicate_rules(dump: &str) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        let dups: Vec<String> = parse(dump)
            .rules
            .into_iter()
            .filter(|r| !seen.insert(r.clone()))
            .map(|(t, c, r)| format!("{t} {c}: {r}"))
            .collect();
        if dups.is_empty() {
            Ok(())
        } else {
            Err(format!("duplicated rules:\n{}", dups.join("\n")))
        }
    }

    /// Every nft run is one transaction from stdin (`nft -f -`) and none
    /// flushes the whole ruleset.
    pub fn check_apply_calls(calls: &[Call]) -> Result<(), String> {
        let nft: Vec<&Call> = calls.iter().filter(|c| c.program == "nft").collect();
        if nft.is_empty() {
            return Err("no nft call recorded".into());
        }
        if let Some(c) = nft.iter().find(|c| c.args.last().map(String::as_str) != Some("-")) {
            return Err(format!("nft run without a transaction on stdin: {c:?}"));
        }
        match nft.iter().find(|c| c.args.iter().any(|a| a.contains("ruleset"))) {
            Some(c) => Err(format!("nft call touching the whole ruleset: {c:?}")),
            None => Ok(()),
        }
    }
}

fn cluster_cidrs() -> Vec<ipnet::IpNet> {
    ["198.18.1.0/24", "fd00:1::/64"]
        .iter()
        .map(|c| c.parse().unwrap_or_else(|e| panic!("cidr {c}: {e}")))
        .collect()
}

fn ip_tool() -> std::path::PathBuf {
    netns::find_tool("ip").unwrap_or_else(|| "ip".into())
}

/// The ruleset dump of `mode` in namespace `ns_name` (usable from threads
/// that hold no `Netns`).
fn dump_in(mode: Mode, ns_name: &str) -> String {
    let mut out = String::new();
    for cmd in mode.dump_commands() {
        let mut c = Command::new(ip_tool());
        c.args(["netns", "exec", ns_name]).args(*cmd);
        match netns::run_with_timeout(&mut c, None, Duration::from_secs(10)) {
            Ok(o) => out.push_str(&String::from_utf8_lossy(&o.stdout)),
            Err(e) => out.push_str(&format!("# {cmd:?}: {e}\n")),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

/// Options of one datapath topology + backend.
#[derive(Clone, Debug)]
pub struct DpConfig {
    pub pods: usize,
    pub ipv6: bool,
    pub nodeport_addresses: NodePortAddresses,
    pub masquerade_all: bool,
    pub localhost_nodeports: bool,
}

impl Default for DpConfig {
    fn default() -> Self {
        Self {
            pods: 3,
            ipv6: false,
            nodeport_addresses: NodePortAddresses::All,
            masquerade_all: false,
            localhost_nodeports: true,
        }
    }
}

/// One node topology with a backend of `mode` programming its node
/// namespace. Pods run the reply servers on 8080/TCP and 5353/UDP.
pub struct Dp {
    pub mode: Mode,
    pub cfg: DpConfig,
    pub model: Model,
    backend: Option<ModeBackend>,
    calls: Arc<Mutex<Vec<Call>>>,
    // Last: namespaces go away after everything else.
    pub topo: Topology,
}

/// Where a flow starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    Node,
    Client,
    Pod(usize),
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Node => write!(f, "node"),
            Who::Client => write!(f, "client"),
            Who::Pod(i) => write!(f, "pod{i}"),
        }
    }
}

/// What a flow must observe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Every try answered, only by these pods, each of them at least once.
    Reaches(Vec<usize>),
    /// Every try answered by one and the same pod, one of these.
    Sticky(Vec<usize>),
    /// Every try refused (TCP RST / ICMP unreachable: REJECT).
    Refused,
    /// Every try unanswered (DROP).
    Timeout,
    /// Every try connected and was then reset (a relay that accepted the
    /// connection before it found no endpoint to take it).
    Reset,
    /// Every try answered by the unhandled responder: no rule touched it.
    Unhandled,
}

/// The source address the answering pod must have seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    Any,
    /// The client's own address and port (no SNAT); for a pod answered by
    /// itself, the node's address (hairpin masquerade).
    Own,
    /// This address (SNAT/masquerade to it).
    Ip(IpAddr),
}

/// One row of a flow table.
#[derive(Clone, Debug)]
pub struct Flow {
    pub from: Who,
    pub proto: Proto,
    pub to: SocketAddr,
    pub expect: Expect,
    pub src: Src,
    pub tries: Option<usize>,
}

impl Flow {
    pub fn tcp(from: Who, to: SocketAddr) -> Self {
        Self {
            from,
            proto: Proto::Tcp,
            to,
            expect: Expect::Timeout,
            src: Src::Any,
            tries: None,
        }
    }

    pub fn udp(from: Who, to: SocketAddr) -> Self {
        Self {
            proto: Proto::Udp,
            ..Self::tcp(from, to)
        }
    }

    pub fn reaches(mut self, pods: &[usize]) -> Self {
        self.expect = Expect::Reaches(pods.to_vec());
        self
    }

    pub fn sticky(mut self, pods: &[usize]) -> Self {
        self.expect = Expect::Sticky(pods.to_vec());
        self
    }

    pub fn refused(mut self) -> Self {
        self.expect = Expect::Refused;
        self
    }

    pub fn dropped(mut self) -> Self {
        self.expect = Expect::Timeout;
        self
    }

    /// No rule may handle the flow: it reaches the unhandled responder (a
    /// VIP) or the harness's listener on the node (a NodePort).
    pub fn unhandled(mut self) -> Self {
        self.expect = Expect::Unhandled;
        self
    }

    /// The pod must see the client's own address (no SNAT).
    pub fn src_own(mut self) -> Self {
        self.src = Src::Own;
        self
    }

    /// The pod must see `ip` as the source (masquerade).
    pub fn src_ip(mut self, ip: IpAddr) -> Self {
        self.src = Src::Ip(ip);
        self
    }

    pub fn tries(mut self, n: usize) -> Self {
        self.tries = Some(n);
        self
    }

    fn tries_or_default(&self) -> usize {
        self.tries.unwrap_or(match &self.expect {
            // P(some pod never picked) for k pods, 12k tries: k·(1-1/k)^(12k) < 1e-5.
            Expect::Reaches(p) if p.len() > 1 => 12 * p.len(),
            Expect::Reaches(_) => 4,
            Expect::Sticky(_) => 20,
            Expect::Refused => 3,
            Expect::Timeout => 1,
            Expect::Reset => 3,
            Expect::Unhandled => 2,
        })
    }

    fn timeout(&self) -> Duration {
        match self.expect {
            Expect::Timeout => DROP_TIMEOUT,
            _ => REPLY_TIMEOUT,
        }
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(f, "{proto} {} -> {}: expect {:?}", self.from, self.to, self.expect)?;
        if self.src != Src::Any {
            write!(f, ", src {:?}", self.src)?;
        }
        Ok(())
    }
}

fn is_unhandled(r: &Result<Reply, ConnError>) -> bool {
    r.as_ref().is_ok_and(|r| r.pod == UNHANDLED)
}

fn pod_index(label: &str) -> Option<usize> {
    label.strip_prefix("pod")?.parse().ok()
}

fn src_ok(flow: &Flow, r: &Reply) -> bool {
    match flow.src {
        Src::Any => true,
        // A pod that lands on itself is hairpinned: masqueraded to the
        // node's address of that family.
        Src::Own if flow.from == Who::Pod(pod_index(&r.pod).unwrap_or(usize::MAX)) => {
            r.seen_src.ip() == if r.local.is_ipv4() { node_ip() } else { node_ip6() }
        }
        Src::Own => r.src_preserved(),
        Src::Ip(ip) => r.seen_src.ip() == ip,
    }
}

/// Judge `results` against `flow`'s expectation.
fn judge(flow: &Flow, results: &[Result<Reply, ConnError>]) -> Result<(), String> {
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for r in results {
        *tally.entry(netns::tally_key(r)).or_insert(0) += 1;
    }
    let fail = |why: String| Err(format!("{why}; got {tally:?}"));
    let replies: Vec<&Reply> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let unhandled = results.iter().filter(|r| is_unhandled(r)).count();
    match &flow.expect {
        Expect::Unhandled if unhandled == results.len() => Ok(()),
        Expect::Unhandled => fail("expected the unhandled responder to answer every try (no rule handling it)".into()),
        _ if unhandled > 0 => fail(format!(
            "{unhandled} of {} tries answered by the {UNHANDLED} responder: NO RULE HANDLED THIS FLOW",
            results.len()
        )),
        Expect::Reset => {
            let reset = |r: &Result<Reply, ConnError>| matches!(r, Err(ConnError::Other(m)) if m.contains("reset"));
            if results.iter().all(reset) {
                Ok(())
            } else {
                fail("expected a reset after connect every time".into())
            }
        }
        Expect::Refused | Expect::Timeout => {
            let want = if flow.expect == Expect::Refused {
                ConnError::Refused
            } else {
                ConnError::Timeout
            };
            if results.iter().all(|r| r.as_ref().err() == Some(&want)) {
                Ok(())
            } else {
                let other: Vec<String> = results
                    .iter()
                    .filter(|r| r.as_ref().err() != Some(&want))
                    .map(|r| format!("{r:?}"))
                    .collect();
                fail(format!("expected {want} every time, also saw {}", other.join(", ")))
            }
        }
        Expect::Reaches(pods) | Expect::Sticky(pods) => {
            if replies.len() != results.len() {
                return fail("not every try was answered".into());
            }
            if let Some(r) = replies
                .iter()
                .find(|r| !pod_index(&r.pod).is_some_and(|i| pods.contains(&i)))
            {
                return fail(format!("answered by {} (not among pods {pods:?})", r.pod));
            }
            if let Some(r) = replies.iter().find(|r| !src_ok(flow, r)) {
                return fail(format!(
                    "{} saw source {} (own address {}), expected {:?}",
                    r.pod, r.seen_src, r.local, flow.src
                ));
            }
            match &flow.expect {
                Expect::Sticky(_) if tally.len() != 1 => fail("answers came from more than one pod".into()),
                Expect::Reaches(_) => match pods.iter().find(|i| !tally.contains_key(&format!("pod{i}"))) {
                    Some(i) => fail(format!("pod{i} never answered")),
                    None => Ok(()),
                },
                _ => Ok(()),
            }
        }
    }
}

impl Dp {
    /// A topology of `cfg.pods` pods (reply servers started) and a fresh
    /// backend of `mode` on its node; the model knows our Node object (its
    /// InternalIPs are the node's addresses). None (after printing SKIP)
    /// when the environment cannot run datapath tests; panics instead under
    /// `CI=true`.
    pub fn new(mode: Mode, cfg: DpConfig) -> Option<Self> {
        if !netns::require_root_tools(&mode.dp_tools()) {
            return None;
        }
        let topo = Topology::builder()
            .pods(cfg.pods)
            .ipv6(cfg.ipv6)
            .unhandled_responder(true)
            .build();
        for i in 0..cfg.pods {
            assert_eq!(IpAddr::V4(topo.pod_ip(i)), pod4(i), "address plan of pod{i}");
        }
        topo.start_servers(TCP_TARGET, UDP_TARGET);
        let node = topo.node();
        for port in NODE_PORTS_TCP {
            if let Err(e) = node.serve_tcp_as(*port, UNHANDLED) {
                panic!("NodePort listener on the node, tcp {port}: {e}");
            }
        }
        for port in NODE_PORTS_UDP {
            if let Err(e) = node.serve_udp_as(*port, UNHANDLED) {
                panic!("NodePort listener on the node, udp {port}: {e}");
            }
        }
        let mut model = Model::new(NODE, SelectionOptions::default());
        let mut node = mk_node(NODE)
            .internal_ip(&node_ip().to_string())
            .internal_ip(&node_ext_ip().to_string());
        if cfg.ipv6 {
            node = node.internal_ip("fd00:1::1").internal_ip("fd00:2::1");
        }
        model.set_node(Some(&node.build()));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut dp = Self {
            mode,
            cfg,
            model,
            backend: None,
            calls,
            topo,
        };
        dp.backend = Some(mode.new_backend(dp.sys(), &dp.cfg, dp.topo.node()));
        Some(dp)
    }

    /// [`Dp::new`] with the default config (3 pods, IPv4).
    pub fn start(mode: Mode) -> Option<Self> {
        Self::new(mode, DpConfig::default())
    }

    /// The kernel edge of the node namespace (commands are recorded).
    pub fn sys(&self) -> Sys {
        let runner: Arc<dyn CommandRunner> = Arc::new(RecordingRunner {
            inner: NetnsRunner::new(self.topo.node().name()),
            calls: self.calls.clone(),
        });
        Sys {
            sysctl: Arc::new(RunnerSysctl::new(runner.clone())),
            runner,
        }
    }

    pub fn backend(&self) -> &ModeBackend {
        match &self.backend {
            Some(b) => b,
            None => panic!("no backend"),
        }
    }

    /// Commands run in the node namespace so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    pub fn clear_calls(&self) {
        lock(&self.calls).clear();
    }

    pub fn ns(&self, who: Who) -> &Netns {
        match who {
            Who::Node => self.topo.node(),
            Who::Client => self.topo.client(),
            Who::Pod(i) => self.topo.pod(i),
        }
    }

    pub fn apply_service(&mut self, svc: &Service) {
        self.model.apply_service(svc);
    }

    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        self.model.apply_slice(slice);
    }

    /// Apply services and slices (no sync).
    pub fn apply(&mut self, services: &[Service], slices: &[EndpointSlice]) {
        for s in services {
            self.model.apply_service(s);
        }
        for s in slices {
            self.model.apply_slice(s);
        }
    }

    /// Sync the model's desired state the way the daemon does, panicking
    /// (with the error and the node's rules) on failure. Returns the
    /// acknowledged change set.
    pub fn sync(&mut self, kind: SyncKind) -> ChangeSet {
        let problems = self.model.take_problems();
        assert!(problems.is_empty(), "model problems: {problems:?}");
        let desired = self.model.desired();
        let changes = self.model.changes();
        let mode = self.mode;
        let backend = match self.backend.as_mut() {
            Some(b) => b,
            None => panic!("no backend"),
        };
        // In the node namespace: the userspace relays' sockets belong to
        // the namespace of the thread that opens them.
        let node = self.topo.node();
        if let Err(e) = node.run_in(|| backend.backend().sync(&desired, &changes, kind)) {
            panic!(
                "{} {kind:?} sync failed: {e}\n{e:?}\n--- rules in node ---\n{}",
                mode.name(),
                mode.dump(self.topo.node())
            );
        }
        self.model.ack(&changes);
        changes
    }

    /// Apply and Full-sync.
    pub fn program(&mut self, services: &[Service], slices: &[EndpointSlice]) -> ChangeSet {
        self.apply(services, slices);
        self.sync(SyncKind::Full)
    }

    /// Delete the stale UDP conntrack entries `changes` leave behind, as the
    /// daemon does after a successful sync.
    pub fn clean_conntrack(&self, changes: &ChangeSet) -> kproxy::conntrack::CleanStats {
        let flows = kproxy::conntrack::stale_flows(changes);
        kproxy::conntrack::Cleaner::new(self.sys()).delete(&flows)
    }

    /// Replace the backend with a new one on the same namespace (a restart:
    /// the kernel keeps its rules, the new backend knows nothing). The model
    /// forgets what was programmed, so the next change set covers
    /// everything, as for a freshly started daemon.
    pub fn restart_backend(&mut self) {
        self.backend = None;
        self.backend = Some(self.mode.new_backend(self.sys(), &self.cfg, self.topo.node()));
        self.model.forget_programmed();
    }

    /// The node's current rules.
    pub fn dump(&self) -> String {
        self.mode.dump(self.topo.node())
    }

    /// One request from `who` (bounded by the reply timeout).
    pub fn request(&self, who: Who, proto: Proto, to: SocketAddr) -> Result<Reply, ConnError> {
        self.ns(who).request(proto, to, REPLY_TIMEOUT)
    }

    fn flow_results(&self, flow: &Flow) -> Vec<Result<Reply, ConnError>> {
        let ns = self.ns(flow.from);
        (0..flow.tries_or_default())
            .map(|_| ns.request(flow.proto, flow.to, flow.timeout()))
            .collect()
    }

    /// Run one flow (as the mode can honour it, see [`Mode::adapt`]); Err
    /// describes the mismatch.
    pub fn run_flow(&self, flow: &Flow) -> Result<(), String> {
        let (flow, why) = self.mode.adapt(flow);
        if let Some(why) = why {
            loud(&format!("ADAPTED in {}: {flow}: {why}", self.mode.name()));
        }
        judge(&flow, &self.flow_results(&flow))
    }

    /// Run every flow of the table; panic listing every mismatch (and the
    /// node's rules) if any. In [`Mode::Empty`] the flows are proved
    /// instead (see [`proof`]).
    pub fn check(&self, flows: &[Flow]) {
        if self.mode == Mode::Empty {
            return self.check_against_empty_ruleset(flows);
        }
        let failures: Vec<String> = flows
            .iter()
            .filter_map(|f| self.run_flow(f).err().map(|e| format!("{f}\n      {e}")))
            .collect();
        if !failures.is_empty() {
            panic!(
                "{} of {} flows failed ({} mode):\n  - {}\n--- rules in node ---\n{}",
                failures.len(),
                flows.len(),
                self.mode.name(),
                failures.join("\n  - "),
                self.dump()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The empty-ruleset proof
// ---------------------------------------------------------------------------

/// Every case's assertions can fail: run against [`Mode::Empty`] (nothing
/// programmed, so every VIP and NodePort reaches the unhandled responder),
/// each flow expecting a pod, a DROP or a REJECT must fail, and fail because
/// the unhandled responder answered it.
///
/// [`Dp::check`] in the empty mode judges every flow and records it here
/// instead of panicking, so one case run proves all of its flow tables, not
/// only the first: a flow expecting `unhandled` must pass; any other flow
/// must fail with every try answered by the responder. Anything else (a
/// flow that passes without rules, or fails some other way) panics at once
/// with [`proof::BROKEN`].
pub mod proof {
    use super::*;

    /// Marks a panic that breaks the proof itself (not an expected failure).
    pub const BROKEN: &str = "PROOF BROKEN";

    /// What one case did against the empty ruleset.
    #[derive(Debug, Default)]
    pub struct Log {
        /// Forward/drop/reject flows that failed because nothing handled them.
        pub failed: Vec<String>,
        /// Flows expecting `unhandled` that were (rightly) unhandled.
        pub unhandled: usize,
    }

    thread_local! {
        static LOG: RefCell<Option<Log>> = const { RefCell::new(None) };
    }

    pub(super) fn start() {
        LOG.with(|l| *l.borrow_mut() = Some(Log::default()));
    }

    pub(super) fn finish() -> Log {
        LOG.with(|l| l.borrow_mut().take()).unwrap_or_default()
    }

    pub(super) fn record(f: impl FnOnce(&mut Log)) {
        LOG.with(|l| match l.borrow_mut().as_mut() {
            Some(log) => f(log),
            None => panic!("{BROKEN}: Mode::Empty runs only under prove_fails_without_rules"),
        });
    }
}

impl Dp {
    /// [`Dp::check`] in [`Mode::Empty`]: see [`proof`].
    fn check_against_empty_ruleset(&self, flows: &[Flow]) {
        for flow in flows {
            let results = self.flow_results(flow);
            match (&flow.expect, judge(flow, &results)) {
                (Expect::Unhandled, Ok(())) => proof::record(|l| l.unhandled += 1),
                (Expect::Unhandled, Err(e)) => panic!(
                    "{}: {flow}: with no rules at all it is not unhandled: {e}",
                    proof::BROKEN
                ),
                (_, Ok(())) => panic!(
                    "{}: {flow} passes against an empty ruleset: this assertion cannot fail",
                    proof::BROKEN
                ),
                (_, Err(e)) if results.iter().all(is_unhandled) => {
                    proof::record(|l| l.failed.push(format!("{flow}: {e}")))
                }
                (_, Err(e)) => panic!(
                    "{}: {flow} fails against an empty ruleset, but not (only) because the {UNHANDLED} \
                     responder answered: {e}",
                    proof::BROKEN
                ),
            }
        }
    }
}

/// The text of a panic payload.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".to_string()
    }
}

/// Print a line to the real stderr, past the test harness's output capture,
/// so a skip or a known bug shows in every `cargo test` run.
fn loud(line: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Run `case` against [`Mode::Empty`] and assert that it fails, and fails
/// because its traffic went unhandled (see [`proof`]).
pub fn prove_fails_without_rules(name: &str, case: fn(Mode)) {
    if !netns::require_root_tools(&Mode::Empty.dp_tools()) {
        return;
    }
    proof::start();
    let outcome = std::panic::catch_unwind(|| case(Mode::Empty));
    let log = proof::finish();
    let panicked = outcome.err().map(|p| panic_message(p.as_ref()));
    if let Some(m) = panicked.as_deref().filter(|m| m.contains(proof::BROKEN)) {
        panic!("{name}: {m}");
    }
    match (log.failed.len(), panicked.as_deref()) {
        (0, None) => panic!("{name} passes against an empty ruleset: none of its checks can fail"),
        (0, Some(m)) if !m.contains(UNHANDLED) => panic!(
            "{name} fails against an empty ruleset before any flow failed, and not because traffic \
             went unhandled: {m}"
        ),
        (n, m) => {
            println!(
                "{name}: {n} flow(s) failed against the empty ruleset, each answered by the {UNHANDLED} responder:"
            );
            for f in &log.failed {
                println!("  - {f}");
            }
            println!("  ({} unhandled flow(s) rightly unhandled)", log.unhandled);
            if let Some(m) = m {
                println!("  then the case stopped at: {}", m.lines().next().unwrap_or(""));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The table's marks
// ---------------------------------------------------------------------------

/// A mark on a (case, mode) pair in the table of `tests/datapath.rs`.
#[derive(Clone, Copy, Debug)]
pub enum Mark {
    /// The mode cannot honour the case: the test prints why and returns.
    Skip { mode: &'static str, why: &'static str },
    /// The case fails in this mode because of a backend bug: the test runs
    /// it, prints the bug and its failure loudly, and fails once the case
    /// passes (the mark must then go).
    KnownBug { mode: &'static str, why: &'static str },
}

impl Mark {
    pub const fn skip(mode: &'static str, why: &'static str) -> Self {
        Mark::Skip { mode, why }
    }

    pub const fn known_bug(mode: &'static str, why: &'static str) -> Self {
        Mark::KnownBug { mode, why }
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Mark::Skip { mode, .. } | Mark::KnownBug { mode, .. } => mode,
        }
    }
}

/// Run `case` in `mode` as the table's `marks` say.
pub fn run_case(mode: Mode, name: &str, marks: &[Mark], case: fn(Mode)) {
    let m = mode.name();
    match marks.iter().find(|k| k.mode() == m) {
        None => case(mode),
        Some(Mark::Skip { why, .. }) => loud(&format!("SKIPPED {name} in {m}: {why}")),
        Some(Mark::KnownBug { why, .. }) => {
            if !netns::require_root_tools(&mode.dp_tools()) {
                return;
            }
            match std::panic::catch_unwind(|| case(mode)) {
                Err(p) => {
                    let msg = panic_message(p.as_ref());
                    // The failure itself, without the ruleset dump that follows it.
                    let failure: Vec<&str> = msg.lines().take_while(|l| !l.starts_with("--- ")).take(12).collect();
                    loud(&format!(
                        "KNOWN BUG {name} in {m}: {why}\n  it still fails: {}",
                        failure.join("\n    ")
                    ));
                }
                Ok(()) => panic!("{name} in {m} is marked known_bug({why:?}) but passes: remove the mark"),
            }
        }
    }
}

/// The table's marks name only listed modes, and each listed test module
/// is named after its mode.
pub fn check_table(modes: &[(&str, Mode)], cases: &[(&str, &[Mark])]) {
    for (module, mode) in modes {
        assert_eq!(
            *module,
            mode.name(),
            "the table's module for {mode:?} must be named {}",
            mode.name()
        );
    }
    for (case, marks) in cases {
        for mark in *marks {
            assert!(
                modes.iter().any(|(m, _)| *m == mark.mode()),
                "{case}: {mark:?} names a mode the table does not run"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Long-lived TCP connections
// ---------------------------------------------------------------------------

/// A line-echo TCP server in a namespace: every line gets `"<label> <line>"`
/// back, connections stay open. Runs in threads; stopped on Drop (bounded:
/// it also stops by itself after `MAX_LIFE`).
pub struct EchoServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

const ECHO_MAX_LIFE: Duration = Duration::from_secs(120);
const ECHO_MAX_CONNS: usize = 16;

impl EchoServer {
    /// Listen on `[::]:port` (or `0.0.0.0:port`) inside `ns`.
    pub fn start(ns: &Netns, port: u16) -> io::Result<Self> {
        let listener = ns
            .tcp_listener(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))
            .or_else(|_| ns.tcp_listener(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let label = ns.label().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = thread::Builder::new()
            .name(format!("echo-{label}-{port}"))
            .spawn(move || {
                let deadline = Instant::now() + ECHO_MAX_LIFE;
                let mut conns: Vec<JoinHandle<()>> = Vec::new();
                while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((s, _)) if conns.len() < ECHO_MAX_CONNS => {
                            let (label, stop) = (label.clone(), stop2.clone());
                            conns.push(thread::spawn(move || echo_conn(s, &label, &stop, deadline)));
                        }
                        Ok(_) => {}
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
                stop2.store(true, Ordering::SeqCst);
                for c in conns {
                    let _ = c.join();
                }
            })?;
        Ok(Self {
            port,
            stop,
            handle: Some(handle),
        })
    }
}

fn echo_conn(s: TcpStream, label: &str, stop: &AtomicBool, deadline: Instant) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if w.write_all(format!("{label} {}\n", line.trim_end()).as_bytes())
                    .is_err()
                {
                    return;
                }
                line.clear();
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A persistent TCP connection (created inside a namespace) exchanging lines.
pub struct EchoClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    pub local: SocketAddr,
}

impl EchoClient {
    pub fn connect(ns: &Netns, to: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let s = ns.run_in(move || TcpStream::connect_timeout(&to, timeout))?;
        let local = s.local_addr()?;
        let writer = s.try_clone()?;
        Ok(Self {
            reader: BufReader::new(s),
            writer,
            local,
        })
    }

    /// Send `line`, return the answer line (bounded by `timeout`).
    pub fn exchange(&mut self, line: &str, timeout: Duration) -> io::Result<String> {
        self.writer.set_write_timeout(Some(timeout))?;
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        self.reader.get_ref().set_read_timeout(Some(timeout))?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        Ok(answer.trim_end().to_string())
    }
}

// ---------------------------------------------------------------------------
// Rule watcher
// ---------------------------------------------------------------------------

/// Polls the node's ruleset in a thread (bounded in count and time) and
/// records every snapshot where `vip:port` was not programmed.
pub struct RuleWatcher {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(usize, Vec<String>)>>,
}

impl RuleWatcher {
    /// Start polling; returns once the first snapshot was taken, so the
    /// watch covers everything the caller does afterwards.
    pub fn start(mode: Mode, node: &Netns, vip: IpAddr, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let name = node.name().to_string();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let handle = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut polls = 0;
            let mut missing = Vec::new();
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline && polls < 2000 {
                let dump = dump_in(mode, &name);
                polls += 1;
                if !mode.vip_programmed(&dump, vip, port) {
                    missing.push(dump);
                }
                if polls == 1 {
                    let _ = first_tx.send(());
                }
            }
            (polls, missing)
        });
        let _ = first_rx.recv_timeout(Duration::from_secs(20));
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stop; returns (snapshots taken, snapshots without the VIP).
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            _ => panic!("rule watcher thread failed"),
        }
    }
}

impl Drop for RuleWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------

/// Every behaviour, as a function of the mode. Each builds its own topology.
pub mod cases {
    use super::*;

    /// ClusterIP, TCP and UDP, from a pod and from the node, reaches every
    /// endpoint; pod traffic keeps its source, node traffic comes from the
    /// node's address.
    pub fn cluster_ip_reaches_every_endpoint(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        let vip = v4(1);
        dp.program(
            &[service("web", vip).build()],
            &[slice("web", &[local(0), local(1), remote(2)])],
        );
        dp.check(&[
            Flow::tcp(Who::Pod(0), tcp(vip)).reaches(&[0, 1, 2]).src_own(),
            Flow::udp(Who::Pod(1), udp(vip)).reaches(&[0, 1, 2]).src_own(),
            Flow::tcp(Who::Node, tcp(vip)).reaches(&[0, 1, 2]).src_ip(node_ip()),
            Flow::udp(Who::Node, udp(vip)).reaches(&[0, 1, 2]),
            // From outside the cluster CIDR: masqueraded.
            Flow::tcp(Who::Client, tcp(vip)).reaches(&[0, 1, 2]).src_ip(node_ip()),
        ]);
    }

    /// NodePort on the node's external address from the outside client
    /// reaches endpoints, masqueraded to the node's address; also on
    /// 127.0.0.1 from the node in modes with localhost NodePorts (unhandled
    /// in the others, see [`Mode::localhost_node_port`]).
    pub fn node_port_from_client_is_masqueraded(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        dp.program(
            &[service_with_node_ports("np", "NodePort", v4(2), 30080, 30053).build()],
            &[slice("np", &[local(0), remote(1)])],
        );
        let ext = node_ext_ip();
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        dp.check(&[
            Flow::tcp(Who::Client, SocketAddr::new(ext, 30080))
                .reaches(&[0, 1])
                .src_ip(node_ip()),
            Flow::udp(Who::Client, SocketAddr::new(ext, 30053))
                .reaches(&[0, 1])
                .src_ip(node_ip()),
            Flow::tcp(Who::Pod(2), SocketAddr::new(node_ip(), 30080)).reaches(&[0, 1]),
            mode.localhost_node_port(
                Flow::tcp(Who::Node, SocketAddr::new(lo, 30080))
                    .reaches(&[0, 1])
                    .src_ip(node_ip()),
            ),
            // The cluster IP still works.
            Flow::tcp(Who::Pod(2), tcp(v4(2))).reaches(&[0, 1]).src_own(),
        ]);
    }

    /// With nodePortAddresses limited to the external network, the NodePort
    /// answers on 198.18.2.1 only: on the node's pod-network address and on
    /// 127.0.0.1 no rule touches it.
    pub fn node_port_addresses_limit_where_node_ports_answer(mode: Mode) {
        let cfg = DpConfig {
            nodeport_addresses: NodePortAddresses::Cidrs(vec![netns::EXT_CIDR4.parse().expect("cidr")]),
            ..DpConfig::default()
        };
        let Some(mut dp) = Dp::new(mode, cfg) else { return };
        dp.program(
            &[service_with_node_ports("np", "NodePort", v4(3), 30080, 30053).build()],
            &[slice("np", &[local(0), local(1)])],
        );
        dp.check(&[
            Flow::tcp(Who::Client, SocketAddr::new(node_ext_ip(), 30080))
                .reaches(&[0, 1])
                .src_ip(node_ip()),
            Flow::tcp(Who::Pod(2), SocketAddr::new(node_ext_ip(), 30080)).reaches(&[0, 1]),
            // No rule: the harness's listener on the node answers.
            Flow::tcp(Who::Pod(2), SocketAddr::new(node_ip(), 30080)).unhandled(),
            Flow::tcp(Who::Node, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 30080)).unhandled(),
        ]);
    }

    /// A LoadBalancer ingress IP and an external IP reach the endpoints from
    /// the outside client (masqueraded, Cluster policy) and from a pod.
    pub fn load_balancer_and_external_ips_reach_endpoints(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        let (lb, ext) = (v4(31), v4(32));
        dp.program(
            &[
                service_with_node_ports("lb", "LoadBalancer", v4(30), 30080, 30053)
                    .lb_ingress(&lb.to_string())
                    .build(),
                service("ext", v4(33)).external_ips(&[&ext.to_string()]).build(),
            ],
            &[slice("lb", &[local(0), remote(1)]), slice("ext", &[local(1), local(2)])],
        );
        dp.check(&[
            Flow::tcp(Who::Client, tcp(lb)).reaches(&[0, 1]).src_ip(node_ip()),
            Flow::udp(Who::Client, udp(lb)).reaches(&[0, 1]).src_ip(node_ip()),
            Flow::tcp(Who::Pod(2), tcp(lb)).reaches(&[0, 1]),
            Flow::tcp(Who::Client, tcp(ext)).reaches(&[1, 2]).src_ip(node_ip()),
            Flow::udp(Who::Client, udp(ext)).reaches(&[1, 2]),
            Flow::tcp(Who::Pod(0), tcp(ext)).reaches(&[1, 2]),
        ]);
    }

    /// loadBalancerSourceRanges: a client inside the range reaches the
    /// endpoints; with a range not covering it (or a pod), traffic to the LB
    /// IP is dropped.
    pub fn lb_source_ranges_admit_only_listed_clients(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        let (open, closed) = (v4(41), v4(43));
        dp.program(
            &[
                service_with_node_ports("in-range", "LoadBalancer", v4(40), 30080, 30053)
                    .lb_ingress(&open.to_string())
                    .source_ranges(&[netns::EXT_CIDR4])
                    .build(),
                service_with_node_ports("out-of-range", "LoadBalancer", v4(42), 30081, 30054)
                    .lb_ingress(&closed.to_string())
                    .source_ranges(&["198.18.3.0/24"])
                    .build(),
            ],
            &[
                slice("in-range", &[local(0), local(1)]),
                slice("out-of-range", &[local(0), local(1)]),
            ],
        );
        dp.check(&[
            Flow::tcp(Who::Client, tcp(open)).reaches(&[0, 1]),
            Flow::udp(Who::Client, udp(open)).reaches(&[0, 1]),
            Flow::tcp(Who::Client, tcp(closed)).dropped(),
            Flow::udp(Who::Client, udp(closed)).dropped(),
            // Pods are not in 198.18.2.0/24 either.
            Flow::tcp(Who::Pod(2), tcp(open)).dropped(),
            // The cluster IP of a firewalled service is not firewalled.
            Flow::tcp(Who::Pod(2), tcp(v4(42))).reaches(&[0, 1]),
        ]);
    }

    /// sessionAffinity ClientIP: every connection of one client lands on one
    /// pod (from the outside client, from the node, and over UDP).
    pub fn session_affinity_pins_a_client_to_one_endpoint(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        let vip = v4(50);
        dp.program(
            &[service("sticky", vip).client_ip_affinity(Some(60)).build()],
            &[slice("sticky", &[local(0), local(1), remote(2)])],
        );
        dp.check(&[
            Flow::tcp(Who::Client, tcp(vip)).sticky(&[0, 1, 2]),
            Flow::tcp(Who::Node, tcp(vip)).sticky(&[0, 1, 2]),
            Flow::udp(Who::Pod(0), udp(vip)).sticky(&[0, 1, 2]),
        ]);
    }

    /// externalTrafficPolicy Local: NodePort and LB traffic from the client
    /// reaches only the local endpoint and keeps the client's address; pods
    /// still use every endpoint; with only remote endpoints external traffic
    /// is dropped while the cluster IP works; health-check node ports are
    /// accepted.
    pub fn external_traffic_policy_local_keeps_client_ip_and_local_endpoints(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        let (lb, lb_remote) = (v4(61), v4(63));
        dp.program(
            &[
                service_with_node_ports("etp", "LoadBalancer", v4(60), 30080, 30053)
                    .lb_ingress(&lb.to_string())
                    .external_traffic_policy_local()
                    .health_check_node_port(32000)
                    .build(),
                service_with_node_ports("etp-remote", "LoadBalancer", v4(62), 30081, 30054)
                    .lb_ingress(&lb_remote.to_string())
                    .external_traffic_policy_local()
                    .health_check_node_port(32001)
                    .build(),
            ],
            &[
                slice("etp", &[local(0), remote(1)]),
                slice("etp-remote", &[remote(0), remote(1)]),
            ],
        );
        let ext = node_ext_ip();
        dp.check(&[
            Flow::tcp(Who::Client, SocketAddr::new(ext, 30080))
                .reaches(&[0])
                .src_own()
                .tries(8),
            Flow::udp(Who::Client, SocketAddr::new(ext, 30053))
                .reaches(&[0])
                .src_own()
                .tries(8),
            Flow::tcp(Who::Client, tcp(lb)).reaches(&[0]).src_own().tries(8),
            // Pod traffic to external destinations is short-circuited to the
            // cluster chain (not in ipvs mode: one virtual server, local real servers).
            Flow::tcp(Who::Pod(2), SocketAddr::new(ext, 30080)).reaches(mode.pod_to_local_external(&[0, 1], &[0])),
            Flow::tcp(Who::Pod(2), tcp(lb)).reaches(mode.pod_to_local_external(&[0, 1], &[0])),
            Flow::tcp(Who::Pod(2), tcp(v4(60))).reaches(&[0, 1]).src_own(),
            // Only remote endpoints: external traffic dropped, internal fine.
            Flow::tcp(Who::Client, SocketAddr::new(ext, 30081)).dropped(),
            Flow::udp(Who::Client, SocketAddr::new(ext, 30054)).dropped(),
            Flow::tcp(Who::Client, tcp(lb_remote)).dropped(),
            Flow::tcp(Who::Pod(2), tcp(v4(62))).reaches(&[0, 1]),
            // The node's own traffic to its node ports is short-circuited too.
            Flow::tcp(Who::Node, SocketAddr::new(ext, 30081)).reaches(&[0, 1]),
            mode.localhost_node_port(
                Flow::tcp(Who::Node, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 30081)).reaches(&[0, 1]),
            ),
        ]);
        let node = dp.topo.node();
        for port in [32000, 32001] {
            if let Err(e) = mode.check_health_check_port(node, port) {
                panic!("{e}");
            }
        }
    }

    /// internalTrafficPolicy Local: the cluster IP reaches only local
    /// endpoints; with none local, traffic is dropped (not refused).
    pub fn internal_traffic_policy_local_uses_only_local_endpoints(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        let (vip, vip_none) = (v4(70), v4(71));
        dp.program(
            &[
                service("itp", vip).internal_traffic_policy_local().build(),
                service("itp-none", vip_none).internal_traffic_policy_local().build(),
            ],
            &[
                slice("itp", &[local(0), remote(1), local(2)]),
                slice("itp-none", &[remote(0), remote(1)]),
            ],
        );
        dp.check(&[
            Flow::tcp(Who::Pod(1), tcp(vip)).reaches(&[0, 2]).src_own(),
            Flow::udp(Who::Pod(1), udp(vip)).reaches(&[0, 2]),
            Flow::tcp(Who::Node, tcp(vip)).reaches(&[0, 2]),
            Flow::tcp(Who::Pod(2), tcp(vip_none)).dropped(),
            Flow::udp(Who::Pod(2), udp(vip_none)).dropped(),
            Flow::tcp(Who::Node, tcp(vip_none)).dropped(),
        ]);
    }

    /// When no endpoint is ready, serving terminating ones still get the
    /// traffic; a ready endpoint is preferred over terminating ones.
    pub fn terminating_endpoints_serve_when_none_is_ready(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        let (vip, vip_mixed) = (v4(80), v4(81));
        dp.program(
            &[service("term", vip).build(), service("mixed", vip_mixed).build()],
            &[
                slice(
                    "term",
                    &[
                        local(0).serving_terminating(),
                        remote(1).serving_terminating(),
                        local(2).terminating_not_serving(),
                    ],
                ),
                slice("mixed", &[local(0), local(1).serving_terminating()]),
            ],
        );
        dp.check(&[
            Flow::tcp(Who::Pod(2), tcp(vip)).reaches(&[0, 1]),
            Flow::udp(Who::Node, udp(vip)).reaches(&[0, 1]),
            Flow::tcp(Who::Pod(2), tcp(vip_mixed)).reaches(&[0]).tries(10),
        ]);
    }

    /// A service without endpoints rejects: TCP and UDP from a pod, TCP
    /// from the node, TCP from the client.
    pub fn service_without_endpoints_rejects(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        let (vip, vip_unready) = (v4(90), v4(91));
        dp.program(
            &[service("empty", vip).build(), service("unready", vip_unready).build()],
            &[slice(
                "unready",
                &[local(0).unready(), local(1).terminating_not_serving()],
            )],
        );
        dp.check(&[
            Flow::tcp(Who::Pod(0), tcp(vip)).refused(),
            Flow::udp(Who::Pod(0), udp(vip)).refused(),
            Flow::tcp(Who::Node, tcp(vip)).refused(),
            // (UDP from the node is not in the table: a packet locally
            // generated and REJECTed in OUTPUT fails sendmsg() with EPERM,
            // exactly as a DROP would, so the two cannot be told apart.)
            Flow::tcp(Who::Client, tcp(vip)).refused(),
            Flow::tcp(Who::Pod(2), tcp(vip_unready)).refused(),
        ]);
    }

    /// Hairpin: a pod reaching itself through a VIP gets an answer; it sees
    /// the masqueraded node address.
    pub fn hairpin_to_self_through_vip_is_masqueraded(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        let vip = v4(100);
        dp.program(&[service("self", vip).build()], &[slice("self", &[local(0)])]);
        dp.check(&[
            Flow::tcp(Who::Pod(0), tcp(vip)).reaches(&[0]).src_ip(node_ip()),
            Flow::udp(Who::Pod(0), udp(vip)).reaches(&[0]).src_ip(node_ip()),
            // Another pod is not masqueraded.
            Flow::tcp(Who::Pod(1), tcp(vip)).reaches(&[0]).src_own(),
        ]);
    }

    /// UDP flows (fixed 5-tuples: to an IPv4 and an IPv6 cluster IP from a
    /// pod, to a node port from the client) keep going to the old endpoint
    /// after it was replaced (conntrack), until the stale entries are
    /// deleted; then the very next datagram reaches the new endpoint.
    pub fn udp_flow_moves_to_new_endpoint_after_conntrack_cleanup(mode: Mode) {
        let cfg = DpConfig {
            ipv6: true,
            ..DpConfig::default()
        };
        let Some(mut dp) = Dp::new(mode, cfg) else { return };
        let (vip, vip6) = (v4(110), v6(110));
        let node_port = SocketAddr::new(node_ext_ip(), 30053);
        let svc = mk_service(NS, "dns")
            .type_("NodePort")
            .cluster_ips(&[&vip.to_string(), &vip6.to_string()])
            .node_port("dns", i32::from(UDP_PORT), "UDP", 30053)
            .target_port(i32::from(UDP_TARGET))
            .build();
        dp.program(&[svc], &[slice("dns", &[local(0)]), slice6("dns", &[local6(0)])]);
        // One socket per flow: a dual-stack UdpFlow that talked to an IPv4
        // address gets no answer from an IPv6 one afterwards.
        let sock = |ns: &Netns| {
            ns.udp_flow(0)
                .unwrap_or_else(|e| panic!("udp socket in {}: {e}", ns.label()))
        };
        let (pod_v4, pod_v6, client) = (sock(dp.topo.pod(2)), sock(dp.topo.pod(2)), sock(dp.topo.client()));
        let flows = [(&pod_v4, udp(vip)), (&pod_v6, udp(vip6)), (&client, node_port)];
        let ask_all = |when: &str| -> Vec<String> {
            flows
                .iter()
                .map(|(f, to)| match f.send_recv(*to, REPLY_TIMEOUT) {
                    Ok(r) => r.pod,
                    Err(e) => panic!("{when}: udp to {to} from port {}: {e}", f.local_port()),
                })
                .collect()
        };
        assert_eq!(ask_all("before the change"), ["pod0"; 3]);
        assert_eq!(ask_all("before the change, again"), ["pod0"; 3]);

        dp.apply(&[], &[slice("dns", &[local(1)]), slice6("dns", &[local6(1)])]);
        let changes = dp.sync(SyncKind::Partial);
        if !mode.keeps_udp_flows_until_conntrack_cleanup() {
            assert_eq!(ask_all("after the sync (the old real server is gone)"), ["pod1"; 3]);
            return;
        }
        // Rules now say pod1, but the conntrack entries still say pod0 ...
        assert_eq!(ask_all("after the sync, before the cleanup"), ["pod0"; 3]);
        // ... while fresh flows already take the new rules.
        dp.check(&[
            Flow::udp(Who::Pod(2), udp(vip)).reaches(&[1]),
            Flow::udp(Who::Pod(2), udp(vip6)).reaches(&[1]),
            Flow::udp(Who::Client, node_port).reaches(&[1]),
        ]);

        let stats = dp.clean_conntrack(&changes);
        assert_eq!(stats.failures, 0, "conntrack cleanup failed: {stats:?}");
        assert!(
            stats.deleted_entries >= 3,
            "stale conntrack entries not deleted: {stats:?}"
        );
        assert_eq!(ask_all("first datagram after the cleanup"), ["pod1"; 3]);
        assert_eq!(ask_all("second datagram after the cleanup"), ["pod1"; 3]);
    }

    /// IPv6: dual-stack and IPv6-only cluster IPs reach the pods' IPv6
    /// addresses (ip6tables / the IPv6 family), IPv4 keeps working.
    pub fn ipv6_cluster_ip_reaches_endpoints(mode: Mode) {
        let cfg = DpConfig {
            ipv6: true,
            ..DpConfig::default()
        };
        let Some(mut dp) = Dp::new(mode, cfg) else { return };
        let (d4, d6, only6) = (v4(120), v6(120), v6(121));
        dp.program(
            &[
                service_dual("dual", d4, d6).build(),
                mk_service(NS, "v6only")
                    .cluster_ip(&only6.to_string())
                    .port("http", i32::from(TCP_PORT), "TCP")
                    .target_port(i32::from(TCP_TARGET))
                    .port("dns", i32::from(UDP_PORT), "UDP")
                    .target_port(i32::from(UDP_TARGET))
                    .build(),
            ],
            &[
                slice("dual", &[local(0), local(1)]),
                slice6("dual", &[local6(0), local6(1)]),
                slice6("v6only", &[local6(1), local6(2)]),
            ],
        );
        dp.check(&[
            Flow::tcp(Who::Pod(2), tcp(d6)).reaches(&[0, 1]).src_own(),
            Flow::udp(Who::Pod(2), udp(d6)).reaches(&[0, 1]),
            Flow::tcp(Who::Pod(2), tcp(d4)).reaches(&[0, 1]).src_own(),
            Flow::tcp(Who::Node, tcp(d6)).reaches(&[0, 1]),
            Flow::tcp(Who::Client, tcp(d6)).reaches(&[0, 1]).src_ip(node_ip6()),
            Flow::tcp(Who::Pod(0), tcp(only6)).reaches(&[1, 2]).src_own(),
            Flow::udp(Who::Pod(0), udp(only6)).reaches(&[1, 2]),
        ]);
    }

    /// After a Full sync of 50 services, a Partial sync of one endpoint
    /// change writes only that service's rules, and takes effect, while the
    /// other services keep working.
    pub fn partial_sync_rewrites_only_the_changed_service(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        const N: u16 = 50;
        let name = |i: u16| format!("svc{i}");
        let eps = |i: u16| [local(usize::from(i % 3)), remote(usize::from((i + 1) % 3))];
        let services: Vec<Service> = (0..N).map(|i| service(&name(i), v4(200 + i)).build()).collect();
        let slices: Vec<EndpointSlice> = (0..N).map(|i| slice(&name(i), &eps(i))).collect();
        dp.program(&services, &slices);
        // svc7 starts on pods 1 and 2.
        dp.check(&[
            Flow::tcp(Who::Pod(0), tcp(v4(207))).reaches(&[1, 2]),
            Flow::tcp(Who::Pod(0), tcp(v4(200))).reaches(&[0, 1]),
        ]);

        dp.apply_slice(&slice("svc7", &[local(1), local(0)]));
        dp.clear_calls();
        let changes = dp.sync(SyncKind::Partial);
        assert_eq!(
            changes.ports.len(),
            2,
            "only svc7's two ports changed: {:?}",
            changes.ports.keys()
        );
        let others: Vec<String> = (0..N).filter(|i| *i != 7).map(name).collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        if let Err(e) = mode.check_partial_input(&dp, "svc7", &others) {
            panic!("partial sync input is not scoped to svc7: {e}");
        }
        dp.check(&[
            Flow::tcp(Who::Pod(2), tcp(v4(207))).reaches(&[0, 1]),
            Flow::udp(Who::Pod(2), udp(v4(207))).reaches(&[0, 1]),
            Flow::tcp(Who::Pod(2), tcp(v4(200))).reaches(&[0, 1]),
            Flow::tcp(Who::Client, tcp(v4(249))).reaches(&[1, 2]),
            Flow::udp(Who::Node, udp(v4(208))).reaches(&[2, 0]),
        ]);
    }

    /// A restarted proxy (new backend, same kernel rules) Full-syncs the same
    /// state without ever removing the service's rules, and an established
    /// connection through the VIP keeps working (in a mode relaying in the
    /// kproxy process it ends with the old process, and new ones work).
    pub fn restart_keeps_rules_and_established_connections(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        const ECHO: u16 = 7070;
        let vip = v4(140);
        let _echo = EchoServer::start(dp.topo.pod(0), ECHO).expect("echo server in pod0");
        let svc = mk_service(NS, "echo")
            .cluster_ip(&vip.to_string())
            .port("echo", 7, "TCP")
            .target_port(i32::from(ECHO))
            .build();
        let eps = mk_slice(NS, "echo-v4", "echo")
            .port("echo", i32::from(ECHO), "TCP")
            .endpoint_with(local(0))
            .build();
        dp.program(
            &[svc, service("web", v4(141)).build(), service("gone", v4(142)).build()],
            &[eps, slice("web", &[local(1)]), slice("gone", &[local(1), local(2)])],
        );

        let to = SocketAddr::new(vip, 7);
        let mut conn = EchoClient::connect(dp.topo.pod(2), to, REPLY_TIMEOUT).expect("connect to the echo VIP");
        assert_eq!(
            conn.exchange("hello", REPLY_TIMEOUT).expect("first exchange"),
            "pod0 hello"
        );

        let watcher = RuleWatcher::start(mode, dp.topo.node(), vip, 7);
        dp.restart_backend();
        // "gone" was deleted while the proxy was down.
        dp.model.delete_service(&ServiceName::new(NS, "gone"));
        dp.clear_calls();
        dp.sync(SyncKind::Full);
        let after_sync = dp.dump();
        let (polls, missing) = watcher.finish();

        assert!(
            mode.vip_programmed(&after_sync, vip, 7),
            "rules for {vip}:7 missing right after the new backend's first sync:\n{after_sync}"
        );
        assert!(polls > 0, "the rule watcher took no snapshot");
        if let Some(first) = missing.first() {
            panic!(
                "rules for {vip}:7 disappeared in {} of {polls} snapshots during the restart; first:\n{first}",
                missing.len()
            );
        }
        if let Err(e) = mode.check_apply_calls(&dp.calls()) {
            panic!("{e}");
        }
        if let Err(e) = mode.check_no_duplicate_rules(&after_sync) {
            panic!("after the restart's full sync:\n{e}\n--- rules ---\n{after_sync}");
        }
        if let Err(e) = mode.check_no_leftovers(&after_sync, "gone") {
            panic!("after the restart's full sync:\n{e}\n--- rules ---\n{after_sync}");
        }
        let again = conn.exchange("again", REPLY_TIMEOUT);
        if mode.relays_in_process() {
            assert!(
                again.is_err(),
                "a relayed connection cannot outlive the relay that carried it: {again:?}"
            );
        } else {
            assert_eq!(again.expect("exchange after the restart"), "pod0 again");
        }
        // New connections work too.
        let mut fresh = EchoClient::connect(dp.topo.pod(1), to, REPLY_TIMEOUT).expect("new connection after restart");
        assert_eq!(fresh.exchange("new", REPLY_TIMEOUT).expect("new exchange"), "pod0 new");
        dp.check(&[
            Flow::tcp(Who::Pod(2), tcp(v4(141))).reaches(&[1]),
            // "gone" was deleted: no rule for its VIP is left.
            Flow::tcp(Who::Pod(2), tcp(v4(142))).unhandled(),
        ]);
    }

    /// A service's whole life through Partial syncs only (created, endpoints
    /// to zero and back, type and policy changes, deleted): after every
    /// step the datapath is what a Full sync would give.
    pub fn partial_syncs_follow_a_service_lifecycle(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        let (a, b, b_lb) = (v4(150), v4(151), v4(152));
        let ext = node_ext_ip();
        dp.program(&[service("a", a).build()], &[slice("a", &[local(0), local(1)])]);
        dp.check(&[Flow::tcp(Who::Pod(2), tcp(a)).reaches(&[0, 1])]);

        // A new NodePort service.
        dp.apply(
            &[service_with_node_ports("b", "NodePort", b, 30080, 30053).build()],
            &[slice("b", &[local(2)])],
        );
        dp.sync(SyncKind::Partial);
        dp.check(&[
            Flow::tcp(Who::Pod(0), tcp(b)).reaches(&[2]),
            Flow::tcp(Who::Client, SocketAddr::new(ext, 30080))
                .reaches(&[2])
                .src_ip(node_ip()),
            Flow::tcp(Who::Pod(2), tcp(a)).reaches(&[0, 1]),
        ]);

        // a scales to zero, then comes back on another pod.
        dp.apply_slice(&slice("a", &[]));
        dp.sync(SyncKind::Partial);
        dp.check(&[
            Flow::tcp(Who::Pod(2), tcp(a)).refused(),
            Flow::udp(Who::Pod(2), udp(a)).refused(),
        ]);
        dp.apply_slice(&slice("a", &[remote(1)]));
        dp.sync(SyncKind::Partial);
        dp.check(&[
            Flow::tcp(Who::Pod(2), tcp(a)).reaches(&[1]),
            Flow::udp(Who::Pod(0), udp(a)).reaches(&[1]),
        ]);

        // b becomes a LoadBalancer with externalTrafficPolicy Local, its
        // endpoint moves to another node: external traffic dropped.
        dp.apply(
            &[service_with_node_ports("b", "LoadBalancer", b, 30080, 30053)
                .lb_ingress(&b_lb.to_string())
                .external_traffic_policy_local()
                .health_check_node_port(32000)
                .build()],
            &[slice("b", &[remote(2)])],
        );
        dp.sync(SyncKind::Partial);
        dp.check(&[
            Flow::tcp(Who::Client, SocketAddr::new(ext, 30080)).dropped(),
            Flow::tcp(Who::Client, tcp(b_lb)).dropped(),
            Flow::tcp(Who::Pod(0), tcp(b)).reaches(&[2]),
        ]);
        if let Err(e) = mode.check_health_check_port(dp.topo.node(), 32000) {
            panic!("{e}");
        }
        // ... and back to a local endpoint: the client's address is kept.
        dp.apply_slice(&slice("b", &[local(2)]));
        dp.sync(SyncKind::Partial);
        dp.check(&[
            Flow::tcp(Who::Client, SocketAddr::new(ext, 30080))
                .reaches(&[2])
                .src_own(),
            Flow::tcp(Who::Client, tcp(b_lb)).reaches(&[2]).src_own(),
        ]);

        // a is deleted: no rule handles its VIP, nothing of it is left.
        dp.model.delete_service(&ServiceName::new(NS, "a"));
        dp.sync(SyncKind::Partial);
        dp.check(&[
            Flow::tcp(Who::Pod(2), tcp(a)).unhandled(),
            Flow::udp(Who::Client, udp(a)).unhandled(),
            Flow::tcp(Who::Pod(0), tcp(b)).reaches(&[2]),
        ]);
        if let Err(e) = mode.check_no_leftovers(&dp.dump(), "a") {
            panic!(
                "after deleting a through a partial sync:\n{e}\n--- rules ---\n{}",
                dp.dump()
            );
        }
    }

    /// IPv6 NodePort: from the client on the node's external IPv6 address
    /// (TCP and UDP) it reaches the pods' IPv6 addresses, masqueraded to the
    /// node's IPv6 address; from a pod on the node's pod-network address;
    /// the same service's IPv4 NodePort keeps working; `[::1]` is never a
    /// NodePort address.
    pub fn ipv6_node_port_from_client_is_masqueraded(mode: Mode) {
        let Some(mut dp) = Dp::new(
            mode,
            DpConfig {
                ipv6: true,
                ..DpConfig::default()
            },
        ) else {
            return;
        };
        dp.program(
            &[service_dual_with_node_ports("np6", "NodePort", v4(160), v6(160), 30080, 30053).build()],
            &[
                slice("np6", &[local(0), remote(1)]),
                slice6("np6", &[local6(0), remote6(1)]),
            ],
        );
        let ext6 = node_ext_ip6();
        dp.check(&[
            Flow::tcp(Who::Client, SocketAddr::new(ext6, 30080))
                .reaches(&[0, 1])
                .src_ip(node_ip6()),
            Flow::udp(Who::Client, SocketAddr::new(ext6, 30053))
                .reaches(&[0, 1])
                .src_ip(node_ip6()),
            Flow::tcp(Who::Pod(2), SocketAddr::new(node_ip6(), 30080)).reaches(&[0, 1]),
            Flow::tcp(Who::Client, SocketAddr::new(node_ext_ip(), 30080))
                .reaches(&[0, 1])
                .src_ip(node_ip()),
            Flow::tcp(Who::Node, SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 30080)).unhandled(),
        ]);
    }

    /// IPv6 LoadBalancer: the IPv6 ingress IP reaches the endpoints from the
    /// client and from a pod (both masqueraded: Cluster policy); IPv6 source
    /// ranges admit the client's network and drop a pod.
    pub fn ipv6_load_balancer_ip_reaches_endpoints(mode: Mode) {
        let Some(mut dp) = Dp::new(
            mode,
            DpConfig {
                ipv6: true,
                ..DpConfig::default()
            },
        ) else {
            return;
        };
        let (lb, lb_fw) = (v6(171), v6(173));
        dp.program(
            &[
                service_dual_with_node_ports("lb6", "LoadBalancer", v4(170), v6(170), 30080, 30053)
                    .lb_ingress(&v4(171).to_string())
                    .lb_ingress(&lb.to_string())
                    .build(),
                service_dual_with_node_ports("lb6-fw", "LoadBalancer", v4(172), v6(172), 30081, 30054)
                    .lb_ingress(&lb_fw.to_string())
                    .source_ranges(&[netns::EXT_CIDR6])
                    .build(),
            ],
            &[
                slice6("lb6", &[local6(0), remote6(1)]),
                slice6("lb6-fw", &[local6(1), local6(2)]),
            ],
        );
        dp.check(&[
            Flow::tcp(Who::Client, tcp(lb)).reaches(&[0, 1]).src_ip(node_ip6()),
            Flow::udp(Who::Client, udp(lb)).reaches(&[0, 1]).src_ip(node_ip6()),
            // External destinations with Cluster policy are masqueraded, from pods too.
            Flow::tcp(Who::Pod(2), tcp(lb)).reaches(&[0, 1]).src_ip(node_ip6()),
            Flow::tcp(Who::Client, tcp(lb_fw)).reaches(&[1, 2]),
            Flow::tcp(Who::Pod(0), tcp(lb_fw)).dropped(),
            Flow::udp(Who::Pod(0), udp(lb_fw)).dropped(),
        ]);
    }

    /// IPv6 externalTrafficPolicy Local: the client's IPv6 address is kept
    /// and only the local endpoint serves (NodePort and LB IP); with only
    /// remote endpoints, external IPv6 traffic is dropped while the IPv6
    /// cluster IP serves every endpoint.
    pub fn ipv6_external_traffic_policy_local_keeps_client_ip(mode: Mode) {
        let Some(mut dp) = Dp::new(
            mode,
            DpConfig {
                ipv6: true,
                ..DpConfig::default()
            },
        ) else {
            return;
        };
        let (lb, lb_remote) = (v6(181), v6(183));
        dp.program(
            &[
                service_dual_with_node_ports("etp6", "LoadBalancer", v4(180), v6(180), 30080, 30053)
                    .lb_ingress(&lb.to_string())
                    .external_traffic_policy_local()
                    .health_check_node_port(32000)
                    .build(),
                service_dual_with_node_ports("etp6-remote", "LoadBalancer", v4(182), v6(182), 30081, 30054)
                    .lb_ingress(&lb_remote.to_string())
                    .external_traffic_policy_local()
                    .health_check_node_port(32001)
                    .build(),
            ],
            &[
                slice6("etp6", &[local6(0), remote6(1)]),
                slice6("etp6-remote", &[remote6(0), remote6(1)]),
            ],
        );
        let ext6 = node_ext_ip6();
        dp.check(&[
            Flow::tcp(Who::Client, SocketAddr::new(ext6, 30080))
                .reaches(&[0])
                .src_own()
                .tries(8),
            Flow::udp(Who::Client, SocketAddr::new(ext6, 30053))
                .reaches(&[0])
                .src_own()
                .tries(8),
            Flow::tcp(Who::Client, tcp(lb)).reaches(&[0]).src_own().tries(8),
            Flow::tcp(Who::Pod(2), tcp(lb)).reaches(mode.pod_to_local_external(&[0, 1], &[0])),
            Flow::tcp(Who::Client, SocketAddr::new(ext6, 30081)).dropped(),
            Flow::udp(Who::Client, SocketAddr::new(ext6, 30054)).dropped(),
            Flow::tcp(Who::Client, tcp(lb_remote)).dropped(),
            Flow::tcp(Who::Pod(2), tcp(v6(182))).reaches(&[0, 1]).src_own(),
        ]);
    }

    /// IPv6 hairpin: a pod reaching itself through an IPv6 VIP gets an
    /// answer and sees the node's IPv6 address; another pod is not
    /// masqueraded.
    pub fn ipv6_hairpin_to_self_through_vip_is_masqueraded(mode: Mode) {
        let Some(mut dp) = Dp::new(
            mode,
            DpConfig {
                ipv6: true,
                ..DpConfig::default()
            },
        ) else {
            return;
        };
        let vip = v6(190);
        dp.program(
            &[mk_service(NS, "self6")
                .cluster_ip(&vip.to_string())
                .port("http", i32::from(TCP_PORT), "TCP")
                .target_port(i32::from(TCP_TARGET))
                .port("dns", i32::from(UDP_PORT), "UDP")
                .target_port(i32::from(UDP_TARGET))
                .build()],
            &[slice6("self6", &[local6(0)])],
        );
        dp.check(&[
            Flow::tcp(Who::Pod(0), tcp(vip)).reaches(&[0]).src_ip(node_ip6()),
            Flow::udp(Who::Pod(0), udp(vip)).reaches(&[0]).src_ip(node_ip6()),
            Flow::tcp(Who::Pod(1), tcp(vip)).reaches(&[0]).src_own(),
        ]);
    }

    /// masqueradeAll: even pod-to-ClusterIP traffic is masqueraded, so the
    /// endpoint sees the node's address instead of the pod's.
    pub fn masquerade_all_masquerades_pod_traffic(mode: Mode) {
        let Some(mut dp) = Dp::new(
            mode,
            DpConfig {
                masquerade_all: true,
                ..DpConfig::default()
            },
        ) else {
            return;
        };
        let vip = v4(200);
        dp.program(
            &[service("masq", vip).build()],
            &[slice("masq", &[local(0), remote(1)])],
        );
        dp.check(&[
            Flow::tcp(Who::Pod(2), tcp(vip)).reaches(&[0, 1]).src_ip(node_ip()),
            Flow::udp(Who::Pod(2), udp(vip)).reaches(&[0, 1]).src_ip(node_ip()),
            Flow::tcp(Who::Client, tcp(vip)).reaches(&[0, 1]).src_ip(node_ip()),
        ]);
    }

    /// nodePortAddresses `primary`: NodePorts answer only on the node's
    /// primary IP (its Node object lists 198.18.2.1 alone here); on its
    /// other address and on 127.0.0.1 no rule touches them.
    pub fn node_port_addresses_primary_answer_only_on_the_primary_ip(mode: Mode) {
        let cfg = DpConfig {
            nodeport_addresses: NodePortAddresses::Primary,
            ..DpConfig::default()
        };
        let Some(mut dp) = Dp::new(mode, cfg) else { return };
        dp.model
            .set_node(Some(&mk_node(NODE).internal_ip(&node_ext_ip().to_string()).build()));
        dp.program(
            &[service_with_node_ports("np", "NodePort", v4(210), 30080, 30053).build()],
            &[slice("np", &[local(0), remote(1)])],
        );
        dp.check(&[
            Flow::tcp(Who::Client, SocketAddr::new(node_ext_ip(), 30080))
                .reaches(&[0, 1])
                .src_ip(node_ip()),
            Flow::udp(Who::Client, SocketAddr::new(node_ext_ip(), 30053)).reaches(&[0, 1]),
            Flow::tcp(Who::Pod(2), SocketAddr::new(node_ext_ip(), 30080)).reaches(&[0, 1]),
            Flow::tcp(Who::Pod(2), SocketAddr::new(node_ip(), 30080)).unhandled(),
            Flow::udp(Who::Pod(2), SocketAddr::new(node_ip(), 30053)).unhandled(),
            Flow::tcp(Who::Node, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 30080)).unhandled(),
        ]);
    }

    /// nodePortAddresses `primary` on a Node listing two InternalIPs
    /// (198.18.1.1, then 198.18.2.1): as in kube-proxy, whose primary IP is
    /// one per family (the Node's first address, `GetNodeHostIPs`), only the
    /// first answers; the second is an ordinary local address no rule
    /// touches.
    pub fn node_port_addresses_primary_is_the_first_node_ip(mode: Mode) {
        let cfg = DpConfig {
            nodeport_addresses: NodePortAddresses::Primary,
            ..DpConfig::default()
        };
        let Some(mut dp) = Dp::new(mode, cfg) else { return };
        dp.program(
            &[service_with_node_ports("np", "NodePort", v4(211), 30080, 30053).build()],
            &[slice("np", &[local(0), remote(1)])],
        );
        dp.check(&[
            Flow::tcp(Who::Client, SocketAddr::new(node_ip(), 30080))
                .reaches(&[0, 1])
                .src_ip(node_ip()),
            Flow::tcp(Who::Pod(2), SocketAddr::new(node_ip(), 30080)).reaches(&[0, 1]),
            Flow::tcp(Who::Client, SocketAddr::new(node_ext_ip(), 30080)).unhandled(),
            Flow::udp(Who::Client, SocketAddr::new(node_ext_ip(), 30053)).unhandled(),
        ]);
    }

    /// localhostNodePorts false: 127.0.0.1:NODEPORT is left alone, the
    /// node's real addresses still serve the NodePort.
    pub fn localhost_node_ports_off_leave_localhost_unhandled(mode: Mode) {
        let cfg = DpConfig {
            localhost_nodeports: false,
            ..DpConfig::default()
        };
        let Some(mut dp) = Dp::new(mode, cfg) else { return };
        dp.program(
            &[service_with_node_ports("np", "NodePort", v4(220), 30080, 30053).build()],
            &[slice("np", &[local(0), remote(1)])],
        );
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        dp.check(&[
            Flow::tcp(Who::Node, SocketAddr::new(lo, 30080)).unhandled(),
            Flow::udp(Who::Node, SocketAddr::new(lo, 30053)).unhandled(),
            Flow::tcp(Who::Node, SocketAddr::new(node_ext_ip(), 30080)).reaches(&[0, 1]),
            Flow::tcp(Who::Client, SocketAddr::new(node_ext_ip(), 30080)).reaches(&[0, 1]),
        ]);
    }

    /// loadBalancerSourceRanges holding the node's own address: the outside
    /// client and the pods are dropped, the node itself reaches the LB IP.
    pub fn source_ranges_admit_the_node_itself(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        let lb = v4(231);
        dp.program(
            &[
                service_with_node_ports("fw-node", "LoadBalancer", v4(230), 30080, 30053)
                    .lb_ingress(&lb.to_string())
                    .source_ranges(&[&format!("{}/32", node_ip())])
                    .build(),
            ],
            &[slice("fw-node", &[local(0), remote(1)])],
        );
        dp.check(&[
            Flow::tcp(Who::Client, tcp(lb)).dropped(),
            Flow::udp(Who::Client, udp(lb)).dropped(),
            Flow::tcp(Who::Pod(2), tcp(lb)).dropped(),
            Flow::tcp(Who::Node, tcp(lb)).reaches(&[0, 1]),
            Flow::udp(Who::Node, udp(lb)).reaches(&[0, 1]),
            Flow::tcp(Who::Client, tcp(v4(230))).reaches(&[0, 1]),
        ]);
    }

    /// ClientIP affinity with timeoutSeconds 2: connections within the
    /// timeout stick to one pod; after waiting past it, a new connection
    /// may land elsewhere (one try per wait, at most [`AFFINITY_ROUNDS`]:
    /// with 3 endpoints all landing on the same pod has p = 3^-10), and
    /// then sticks there.
    pub fn session_affinity_expires_after_its_timeout(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        let vip = v4(240);
        dp.program(
            &[service("brief", vip)
                .client_ip_affinity(Some(AFFINITY_TIMEOUT_SECS))
                .build()],
            &[slice("brief", &[local(0), local(1), remote(2)])],
        );
        dp.check(&[Flow::tcp(Who::Client, tcp(vip)).sticky(&[0, 1, 2]).tries(10)]);
        let land = |dp: &Dp| match dp.request(Who::Client, Proto::Tcp, tcp(vip)) {
            Ok(r) if pod_index(&r.pod).is_some() => r.pod,
            other => panic!("client -> {vip}:80: expected a pod, got {other:?}"),
        };
        let pinned = land(&dp);
        let wait = Duration::from_secs(AFFINITY_TIMEOUT_SECS as u64) + Duration::from_millis(1500);
        let mut seen = BTreeSet::from([pinned.clone()]);
        for _ in 0..AFFINITY_ROUNDS {
            thread::sleep(wait);
            seen.insert(land(&dp));
            if seen.len() > 1 {
                break;
            }
        }
        assert!(
            seen.len() > 1,
            "affinity never expired: after each of {AFFINITY_ROUNDS} waits of {wait:?} the client landed on {pinned} again"
        );
        dp.check(&[Flow::tcp(Who::Client, tcp(vip)).sticky(&[0, 1, 2]).tries(10)]);
    }

    /// SCTP service ports: the kernel loads their rules (this kernel has no
    /// SCTP transport, so no SCTP packet is sent): the sync succeeds, the
    /// rules for the SCTP port are in the ruleset and the service's TCP port
    /// works. A mode that does not handle SCTP skips the port: the sync
    /// still succeeds, the TCP port works, nothing steers the SCTP port.
    pub fn sctp_service_port_rules_load(mode: Mode) {
        let Some(mut dp) = Dp::start(mode) else { return };
        let vip = v4(250);
        dp.program(
            &[mk_service(NS, "sctp")
                .type_("NodePort")
                .cluster_ip(&vip.to_string())
                .node_port("http", i32::from(TCP_PORT), "TCP", 30082)
                .target_port(i32::from(TCP_TARGET))
                .node_port("diameter", i32::from(SCTP_PORT), "SCTP", 30055)
                .target_port(i32::from(SCTP_PORT))
                .build()],
            &[mk_slice(NS, "sctp-v4", "sctp")
                .port("http", i32::from(TCP_TARGET), "TCP")
                .port("diameter", i32::from(SCTP_PORT), "SCTP")
                .endpoint_with(local(0))
                .endpoint_with(remote(1))
                .build()],
        );
        dp.check(&[
            Flow::tcp(Who::Pod(2), tcp(vip)).reaches(&[0, 1]),
            Flow::tcp(Who::Client, SocketAddr::new(node_ext_ip(), 30082)).reaches(&[0, 1]),
        ]);
        let dump = dp.dump();
        if mode.handles_sctp() {
            assert!(
                mode.vip_programmed_for(&dump, "sctp", vip, SCTP_PORT),
                "no rules send {vip}:{SCTP_PORT}/sctp to its endpoints:\n{dump}"
            );
        } else {
            assert!(
                !mode.vip_programmed_for(&dump, "sctp", vip, SCTP_PORT) && !dump.contains("-p sctp"),
                "{} mode does not handle SCTP, yet rules mention it:\n{dump}",
                mode.name()
            );
        }
    }
}
