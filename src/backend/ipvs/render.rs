//! Pure: the policy plan → what the ipvs mode programs.
//!
//! ```text
//!  DesiredState ─┬─ per family: PortPlan (model::plan) ──▶ IpvsRuleset
//!  FamilyInput ──┘   ClusterIP      ─ internal route ─▶ virtual server + real servers, address on kube-ipvs0
//!                    externalIPs,   ─ external route ─▶ virtual server + real servers, address on kube-ipvs0
//!                    LB IPs
//!                    NodePort × node-port address ─▶ virtual server + real servers
//! ```
//!
//! A route that forwards (Cluster, Local) gets its endpoints as masquerading
//! real servers of weight 1; Reject gets a virtual server with no real
//! server (IPVS answers with an ICMP error, as in kube-proxy's ipvs mode);
//! Drop is a DROP rule in KUBE-IPVS-FILTER (`rules.rs`): the ClusterIP then
//! has no virtual server (which would answer before the filter for the
//! node's own traffic), and the external virtual servers keep the cluster
//! endpoints for pods and the node. ClientIP affinity is IPVS
//! persistence with the service's timeout. [`render_save`] prints the
//! result as `ipvsadm-save -n` lists it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::{DesiredState, Endpoint, PlanContext, PortPlan, Protocol as ModelProtocol, Route, ServicePortName};
use crate::sys::ipvs::{Protocol, RealServer, ServiceKey, VirtualServer, fmt_addr_port};

/// The scheduler when none is configured (kube-proxy's default).
pub const DEFAULT_SCHEDULER: &str = "rr";

/// ipvs-mode options beyond the shared [`super::super::Settings`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsOpts {
    /// `--ipvs-scheduler` / `ipvs.scheduler`.
    pub scheduler: String,
    /// `excludeCIDRs`: virtual servers on these addresses are never touched.
    pub exclude_cidrs: Vec<ipnet::IpNet>,
    /// `strictARP`.
    pub strict_arp: bool,
    /// tcp, tcpfin and udp timeouts in seconds (0: leave the kernel's).
    pub timeouts: crate::sys::ipvs::Timeouts,
}

/// What one family renders with: the plan context and the addresses that
/// accept NodePorts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyInput {
    pub ctx: PlanContext,
    pub nodeport_ips: Vec<IpAddr>,
}

/// One virtual server kproxy programs, with its real servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    pub server: VirtualServer,
    /// Real servers by address and port.
    pub reals: BTreeMap<(IpAddr, u16), RealServer>,
    /// The service port it belongs to.
    pub owner: ServicePortName,
}

/// Everything the ipvs mode programs in IPVS and on `kube-ipvs0`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpvsRuleset {
    pub services: BTreeMap<ServiceKey, DesiredService>,
    /// Addresses bound to `kube-ipvs0`.
    pub addresses: BTreeSet<IpAddr>,
}

// === impl IpvsOpts ===

impl Default for IpvsOpts {
    fn default() -> Self {
        Self {
            scheduler: DEFAULT_SCHEDULER.to_string(),
            exclude_cidrs: Vec::new(),
            strict_arp: false,
            timeouts: crate::sys::ipvs::Timeouts::default(),
        }
    }
}

impl IpvsOpts {
    /// From the `ipvs` configuration (`rr` when no scheduler is set).
    pub fn from_config(c: &crate::config::IpvsConfig) -> Self {
        let secs = |d: std::time::Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        Self {
            scheduler: if c.scheduler.is_empty() {
                DEFAULT_SCHEDULER.to_string()
            } else {
                c.scheduler.clone()
            },
            exclude_cidrs: c.exclude_cidrs.clone(),
            strict_arp: c.strict_arp,
            timeouts: crate::sys::ipvs::Timeouts {
                tcp: secs(c.tcp_timeout),
                tcp_fin: secs(c.tcp_fin_timeout),
                udp: secs(c.udp_timeout),
            },
        }
    }

    /// Whether `addr` is in an `excludeCIDRs` range.
    pub fn is_excluded(&self, addr: &IpAddr) -> bool {
        self.exclude_cidrs.iter().any(|n| n.contains(addr))
    }
}

// === render ===

/// The ruleset for `desired`, one [`FamilyInput`] per family to program.
pub fn render_ruleset(desired: &DesiredState, families: &[FamilyInput], opts: &IpvsOpts) -> IpvsRuleset {
    let mut out = IpvsRuleset::default();
    for input in families {
        for state in desired.ports_of(input.ctx.family) {
            let plan = PortPlan::new(state, &input.ctx);
            render_port(&plan, input, opts, &mut out);
        }
    }
    out
}

fn protocol(p: ModelProtocol) -> Protocol {
    match p {
        ModelProtocol::Tcp => Protocol::Tcp,
        ModelProtocol::Udp => Protocol::Udp,
        ModelProtocol::Sctp => Protocol::Sctp,
    }
}

/// The virtual servers of one service port in one family.
fn render_port(plan: &PortPlan<'_>, input: &FamilyInput, opts: &IpvsOpts, out: &mut IpvsRuleset) {
    let port = &plan.state.port;
    let family = plan.family;
    let proto = protocol(port.name.protocol);
    let internal = plan.endpoints(plan.internal);
    // Local external policy without a local endpoint: pods and the node
    // still reach the cluster endpoints; other sources are dropped by
    // KUBE-IPVS-FILTER (rules.rs), as kube-proxy's datapaths do.
    let external = match plan.external {
        Route::Drop => plan.cluster,
        route => plan.endpoints(route),
    };
    // `endpoints` None: the address only, no virtual server.
    let mut add = |addr: IpAddr, vport: u16, endpoints: Option<&[Endpoint]>, bind: bool| {
        if bind {
            out.addresses.insert(addr);
        }
        let Some(endpoints) = endpoints else { return };
        let key = ServiceKey::Addr {
            protocol: proto,
            addr,
            port: vport,
        };
        out.services.entry(key).or_insert_with(|| DesiredService {
            server: virtual_server(key, plan, opts),
            reals: endpoints
                .iter()
                .map(|e| ((e.ip, e.port), RealServer::masq(e.ip, e.port, 1)))
                .collect(),
            owner: port.name.clone(),
        });
    };
    if let Some(ip) = port.cluster_ip(family) {
        // Drop: no virtual server; IPVS would answer with an ICMP error
        // where KUBE-IPVS-FILTER / -OUT-FILTER drop (rules.rs).
        let servers = (plan.internal != Route::Drop).then_some(internal);
        add(ip, port.port, servers, true);
    }
    for ip in port.external_ips(family).chain(port.load_balancer_ips(family)) {
        add(ip, port.port, Some(external), true);
    }
    if port.node_port != 0 {
        for ip in &input.nodeport_ips {
            add(*ip, port.node_port, Some(external), false);
        }
    }
}

fn virtual_server(key: ServiceKey, plan: &PortPlan<'_>, opts: &IpvsOpts) -> VirtualServer {
    let mut vs = VirtualServer::new(key, opts.scheduler.clone());
    if opts.scheduler == "mh" {
        // As kube-proxy: Maglev hashing over source address and port.
        vs.flags |= crate::sys::ipvs::FLAG_SCHED_PORT;
    }
    match plan.affinity {
        Some(timeout) => vs.persistent(timeout),
        None => vs,
    }
}

/// The ruleset as `ipvsadm-save -n` lists it: `-A` per virtual server, then
/// `-a` per real server, sorted.
pub fn render_save(r: &IpvsRuleset) -> String {
    let mut s = String::new();
    for (key, svc) in &r.services {
        let ServiceKey::Addr { protocol, addr, port } = key else {
            continue; // kproxy programs no fwmark services
        };
        let target = format!("{} {}", protocol.ipvsadm_flag(), fmt_addr_port(*addr, *port));
        let _ = write!(s, "-A {target} -s {}", svc.server.scheduler);
        if svc.server.flags & crate::sys::ipvs::FLAG_SCHED_PORT != 0 {
            let _ = write!(s, " -b {}-port", svc.server.scheduler);
        }
        if svc.server.is_persistent() {
            let _ = write!(s, " -p {}", svc.server.timeout);
        }
        s.push('\n');
        for real in svc.reals.values() {
            let _ = writeln!(
                s,
                "-a {target} -r {} -m -w {}",
                fmt_addr_port(real.addr, real.port),
                real.weight
            );
        }
    }
    s
}

/// The addresses as `ip -o addr show kube-ipvs0` would hold them, one per line.
pub fn render_addresses(r: &IpvsRuleset) -> String {
    r.addresses
        .iter()
        .map(|a| {
            let len = if a.is_ipv6() { 128 } else { 32 };
            format!("{a}/{len}\n")
        })
        .collect()
}
