//! Pure rendering: desired state → iptables rules, with kube-proxy's chain
//! structure, names, comments and order.
//!
//! A service port renders to a [`PortRules`]: the nat chains it owns
//! (`KUBE-SVC/SVL/EXT/FW/SEP-*`, rewritten whole when they change) and its
//! rules in the shared chains (`KUBE-SERVICES`, `KUBE-NODEPORTS`, and the
//! filter chains), which a partial sync edits rule by rule. One function per
//! rule family; policy (which endpoints, drop or reject) comes from the
//! model's `EndpointSelection`, never decided here.

use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;

use super::names::{self, PortChains, sep_chain};
use crate::model::{DesiredState, Endpoint, IpFamily, ServicePortState, SessionAffinity, TrafficPolicy};

/// Above this many endpoints (in one family), rule comments on endpoint
/// rules are dropped to shrink the ruleset, as kube-proxy does.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// Per-family rendering options, derived from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderOpts {
    pub family: IpFamily,
    /// The masquerade mark, e.g. 0x4000.
    pub masquerade_mark: u32,
    pub masquerade_all: bool,
    /// Cluster (pod) CIDRs of this family: traffic from elsewhere to a
    /// cluster IP is masqueraded. Empty: no local-traffic detection.
    pub local_cidrs: Vec<IpNet>,
    /// Where NodePorts are accepted.
    pub nodeports: NodePortTargets,
    /// NodePorts on 127.0.0.1 (IPv4 only).
    pub localhost_nodeports: bool,
    /// `nf_conntrack_tcp_be_liberal` is set: no INVALID drop.
    pub conntrack_liberal: bool,
    /// The node's IPs of this family (for source-range checks of node traffic).
    pub node_ips: Vec<IpAddr>,
}

/// Which destination addresses accept NodePort traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortTargets {
    /// Every local address (`-m addrtype --dst-type LOCAL`).
    AllLocal,
    /// These addresses only.
    Ips(Vec<IpAddr>),
}

/// One owned nat chain and its rules (each rule without `-A CHAIN`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub rules: Vec<String>,
}

/// Everything one service port contributes to the ruleset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    /// Chains this port owns in the nat table.
    pub chains: Vec<Chain>,
    /// Rules in shared chains: (table, chain, rule body).
    pub shared: Vec<SharedRule>,
    /// Internal traffic is dropped: Local policy, no local endpoints.
    pub no_local_internal: bool,
    /// External traffic is dropped: Local policy, no local endpoints.
    pub no_local_external: bool,
}

/// A rule in a chain shared by all services.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedRule {
    pub table: Table,
    pub chain: &'static str,
    pub rule: String,
}

/// The two tables kproxy writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Filter,
    Nat,
}

/// The rules that do not depend on any service (owned top-level chains).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticRules {
    /// (table, chain, rule body), in order.
    pub rules: Vec<SharedRule>,
    /// Rules that must end nat KUBE-SERVICES (the NodePort dispatch).
    pub services_tail: Vec<String>,
    /// Whether KUBE-FIREWALL (localnet protection) is in use.
    pub kube_firewall: bool,
}

/// A jump from a built-in chain to one of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jump {
    pub table: Table,
    pub from: &'static str,
    pub to: &'static str,
    pub comment: &'static str,
    pub extra: &'static str,
}

/// kube-proxy's jumps from the built-in chains, in its order.
pub const JUMPS: [Jump; 12] = [
    jump(
        Table::Filter,
        "INPUT",
        names::KUBE_EXTERNAL_SERVICES,
        "kubernetes externally-visible service portals",
        "-m conntrack --ctstate NEW",
    ),
    jump(
        Table::Filter,
        "FORWARD",
        names::KUBE_EXTERNAL_SERVICES,
        "kubernetes externally-visible service portals",
        "-m conntrack --ctstate NEW",
    ),
    jump(
        Table::Filter,
        "INPUT",
        names::KUBE_NODEPORTS,
        "kubernetes health check service ports",
        "",
    ),
    jump(
        Table::Filter,
        "FORWARD",
        names::KUBE_SERVICES,
        "kubernetes service portals",
        "-m conntrack --ctstate NEW",
    ),
    jump(
        Table::Filter,
        "OUTPUT",
        names::KUBE_SERVICES,
        "kubernetes service portals",
        "-m conntrack --ctstate NEW",
    ),
    jump(
        Table::Filter,
        "FORWARD",
        names::KUBE_FORWARD,
        "kubernetes forwarding rules",
        "",
    ),
    jump(
        Table::Filter,
        "INPUT",
        names::KUBE_PROXY_FIREWALL,
        "kubernetes load balancer firewall",
        "-m conntrack --ctstate NEW",
    ),
    jump(
        Table::Filter,
        "OUTPUT",
        names::KUBE_PROXY_FIREWALL,
        "kubernetes load balancer firewall",
        "-m conntrack --ctstate NEW",
    ),
    jump(
        Table::Filter,
        "FORWARD",
        names::KUBE_PROXY_FIREWALL,
        "kubernetes load balancer firewall",
        "-m conntrack --ctstate NEW",
    ),
    jump(
        Table::Nat,
        "OUTPUT",
        names::KUBE_SERVICES,
        "kubernetes service portals",
        "",
    ),
    jump(
        Table::Nat,
        "PREROUTING",
        names::KUBE_SERVICES,
        "kubernetes service portals",
        "",
    ),
    jump(
        Table::Nat,
        "POSTROUTING",
        names::KUBE_POSTROUTING,
        "kubernetes postrouting rules",
        "",
    ),
];

/// kubelet's localnet-protection jumps (IPv4 with localhost NodePorts).
pub const FIREWALL_JUMPS: [Jump; 2] = [
    jump(Table::Filter, "INPUT", names::KUBE_FIREWALL, "", ""),
    jump(Table::Filter, "OUTPUT", names::KUBE_FIREWALL, "", ""),
];

const fn jump(table: Table, from: &'static str, to: &'static str, comment: &'static str, extra: &'static str) -> Jump {
    Jump {
        table,
        from,
        to,
        comment,
        extra,
    }
}

// === impl Table ===

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

// === impl Jump ===

impl Jump {
    /// The rule spec as `iptables -S` prints it (without `-A FROM`).
    pub fn rule(&self) -> String {
        let mut r = String::new();
        if !self.extra.is_empty() {
            r.push_str(self.extra);
            r.push(' ');
        }
        if !self.comment.is_empty() {
            let _ = write!(r, "-m comment --comment \"{}\" ", self.comment);
        }
        let _ = write!(r, "-j {}", self.to);
        r
    }
}

// === impl PortRules ===

impl PortRules {
    /// Number of rules, for metrics and stats.
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum::<usize>() + self.shared.len()
    }
}

/// Whether the ruleset drops endpoint comments (large-cluster mode).
pub fn is_large(desired: &DesiredState, family: IpFamily) -> bool {
    desired
        .ports_of(family)
        .map(|s| s.family(family).endpoints.len())
        .sum::<usize>()
        > LARGE_CLUSTER_ENDPOINTS
}

/// Renders the service-independent rules.
pub fn render_static(opts: &RenderOpts) -> StaticRules {
    let mark = format!("{:#x}", opts.masquerade_mark);
    let mut rules = Vec::new();
    let mut nat = |chain: &'static str, rule: String| {
        rules.push(SharedRule {
            table: Table::Nat,
            chain,
            rule,
        })
    };
    nat(
        names::KUBE_POSTROUTING,
        format!("-m mark ! --mark {mark}/{mark} -j RETURN"),
    );
    // Clear the mark so a packet that re-traverses the stack is not masqueraded twice.
    nat(names::KUBE_POSTROUTING, format!("-j MARK --xor-mark {mark}"));
    nat(
        names::KUBE_POSTROUTING,
        "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
    );
    nat(names::KUBE_MARK_MASQ, format!("-j MARK --or-mark {mark}"));

    let kube_firewall = opts.family == IpFamily::V4 && opts.localhost_nodeports;
    let mut filter = |chain: &'static str, rule: String| {
        rules.push(SharedRule {
            table: Table::Filter,
            chain,
            rule,
        })
    };
    if kube_firewall {
        // CVE-2020-8558: with route_localnet on, drop martian packets to 127/8
        // that did not come from loopback (same rule as kubelet's).
        filter(
            names::KUBE_FIREWALL,
            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" \
             -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
                .into(),
        );
    }
    if !opts.conntrack_liberal {
        filter(names::KUBE_FORWARD, "-m conntrack --ctstate INVALID -j DROP".into());
    }
    filter(
        names::KUBE_FORWARD,
        format!("-m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"),
    );
    filter(
        names::KUBE_FORWARD,
        "-m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            .into(),
    );

    let comment =
        "-m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\"";
    let services_tail = match &opts.nodeports {
        NodePortTargets::AllLocal => {
            let not_loopback = match opts.family {
                IpFamily::V6 => " ! -d ::1/128",
                IpFamily::V4 if !opts.localhost_nodeports => " ! -d 127.0.0.0/8",
                IpFamily::V4 => "",
            };
            vec![format!(
                "{comment} -m addrtype --dst-type LOCAL{not_loopback} -j {}",
                names::KUBE_NODEPORTS
            )]
        }
        NodePortTargets::Ips(ips) => ips
            .iter()
            .filter(|ip| IpFamily::of(ip) == opts.family)
            .filter(|ip| !ip.is_loopback() || (opts.family == IpFamily::V4 && opts.localhost_nodeports))
            .map(|ip| format!("{comment} -d {} -j {}", host(ip), names::KUBE_NODEPORTS))
            .collect(),
    };
    StaticRules {
        rules,
        services_tail,
        kube_firewall,
    }
}

/// What a service port's selection means for its rules.
struct Plan<'a> {
    state: &'a ServicePortState,
    chains: PortChains,
    /// `ns/name:port` as rule comments write it.
    name: String,
    proto: &'static str,
    cluster: &'a [Endpoint],
    local: &'a [Endpoint],
    reachable: &'a [Endpoint],
    has_any: bool,
    has_internal: bool,
    has_external: bool,
    internal_chain: String,
    external_policy_chain: String,
    uses_fw: bool,
    large: bool,
}

/// Renders one service port for `opts.family`. `large` drops endpoint
/// comments (see [`is_large`]).
pub fn render_port(state: &ServicePortState, opts: &RenderOpts, large: bool) -> PortRules {
    let plan = plan(state, opts, large);
    let mut out = PortRules {
        no_local_internal: plan.has_any && !plan.has_internal,
        no_local_external: plan.has_any && !plan.has_external && state.port.is_externally_reachable(),
        ..PortRules::default()
    };
    cluster_ip_rules(&plan, opts, &mut out);
    external_ip_rules(&plan, opts, &mut out);
    load_balancer_rules(&plan, opts, &mut out);
    node_port_rules(&plan, &mut out);
    health_check_rules(&plan, &mut out);
    if plan.has_any && state.port.is_externally_reachable() {
        out.chains.push(external_chain(&plan, opts));
    }
    if plan.uses_fw {
        out.chains.push(firewall_chain(&plan, opts));
    }
    if !plan.cluster.is_empty() && state.port.uses_cluster_endpoints() {
        out.chains
            .push(policy_chain(&plan, &plan.chains.svc, plan.cluster, opts));
    }
    if !plan.local.is_empty() && state.port.uses_local_endpoints() {
        out.chains.push(policy_chain(&plan, &plan.chains.svl, plan.local, opts));
    }
    for ep in plan.reachable {
        out.chains.push(endpoint_chain(&plan, ep));
    }
    out
}

fn plan<'a>(state: &'a ServicePortState, opts: &RenderOpts, large: bool) -> Plan<'a> {
    let port = &state.port;
    let sel = &state.family(opts.family).selection;
    let chains = PortChains::new(&port.name);
    let (internal_chain, has_internal) = match port.internal_policy {
        TrafficPolicy::Local => (chains.svl.clone(), sel.has_any && !sel.local.is_empty()),
        TrafficPolicy::Cluster => (chains.svc.clone(), sel.has_any),
    };
    let (external_policy_chain, has_external) = match port.external_policy {
        TrafficPolicy::Local => (chains.svl.clone(), sel.has_any && !sel.local.is_empty()),
        TrafficPolicy::Cluster => (chains.svc.clone(), sel.has_any),
    };
    let uses_fw = sel.has_any
        && port.load_balancer_ips(opts.family).next().is_some()
        && port.source_ranges(opts.family).next().is_some();
    Plan {
        state,
        name: port.name.to_string(),
        proto: port.name.protocol.as_lower(),
        chains,
        cluster: &sel.cluster,
        local: &sel.local,
        reachable: &sel.reachable,
        has_any: sel.has_any,
        has_internal,
        has_external,
        internal_chain,
        external_policy_chain,
        uses_fw,
        large,
    }
}

/// `-m proto -p proto -d VIP --dport PORT`.
fn vip_match(plan: &Plan<'_>, ip: &IpAddr) -> String {
    format!(
        "-m {p} -p {p} -d {} --dport {}",
        host(ip),
        plan.state.port.port,
        p = plan.proto
    )
}

fn shared(out: &mut PortRules, table: Table, chain: &'static str, rule: String) {
    out.shared.push(SharedRule { table, chain, rule });
}

/// The filter verdict for traffic that has no endpoints to go to.
fn filter_verdict(plan: &Plan<'_>) -> (&'static str, String) {
    if plan.has_any {
        ("DROP", format!("\"{} has no local endpoints\"", plan.name))
    } else {
        ("REJECT", format!("\"{} has no endpoints\"", plan.name))
    }
}

fn cluster_ip_rules(plan: &Plan<'_>, opts: &RenderOpts, out: &mut PortRules) {
    let Some(ip) = plan.state.port.cluster_ip(opts.family) else {
        return;
    };
    if plan.has_internal {
        let rule = format!(
            "-m comment --comment \"{} cluster IP\" {} -j {}",
            plan.name,
            vip_match(plan, &ip),
            plan.internal_chain
        );
        shared(out, Table::Nat, names::KUBE_SERVICES, rule);
    } else {
        let (target, comment) = filter_verdict(plan);
        let rule = format!("-m comment --comment {comment} {} -j {target}", vip_match(plan, &ip));
        shared(out, Table::Filter, names::KUBE_SERVICES, rule);
    }
}

fn external_ip_rules(plan: &Plan<'_>, opts: &RenderOpts, out: &mut PortRules) {
    for ip in plan.state.port.external_ips(opts.family) {
        if plan.has_any {
            let rule = format!(
                "-m comment --comment \"{} external IP\" {} -j {}",
                plan.name,
                vip_match(plan, &ip),
                plan.chains.ext
            );
            shared(out, Table::Nat, names::KUBE_SERVICES, rule);
        }
        if !plan.has_external {
            let (target, comment) = filter_verdict(plan);
            let rule = format!("-m comment --comment {comment} {} -j {target}", vip_match(plan, &ip));
            shared(out, Table::Filter, names::KUBE_EXTERNAL_SERVICES, rule);
        }
    }
}

fn load_balancer_rules(plan: &Plan<'_>, opts: &RenderOpts, out: &mut PortRules) {
    let target = if plan.uses_fw {
        &plan.chains.fw
    } else {
        &plan.chains.ext
    };
    for ip in plan.state.port.load_balancer_ips(opts.family) {
        if plan.has_any {
            let rule = format!(
                "-m comment --comment \"{} loadbalancer IP\" {} -j {target}",
                plan.name,
                vip_match(plan, &ip)
            );
            shared(out, Table::Nat, names::KUBE_SERVICES, rule);
        }
        if plan.uses_fw {
            let rule = format!(
                "-m comment --comment \"{} traffic not accepted by {}\" {} -j DROP",
                plan.name,
                plan.chains.fw,
                vip_match(plan, &ip)
            );
            shared(out, Table::Filter, names::KUBE_PROXY_FIREWALL, rule);
        }
    }
    if !plan.has_external {
        for ip in plan.state.port.load_balancer_ips(opts.family) {
            let (target, comment) = filter_verdict(plan);
            let rule = format!("-m comment --comment {comment} {} -j {target}", vip_match(plan, &ip));
            shared(out, Table::Filter, names::KUBE_EXTERNAL_SERVICES, rule);
        }
    }
}

fn node_port_rules(plan: &Plan<'_>, out: &mut PortRules) {
    let node_port = plan.state.port.node_port;
    if node_port == 0 {
        return;
    }
    let p = plan.proto;
    if plan.has_any {
        let rule = format!(
            "-m comment --comment {} -m {p} -p {p} --dport {node_port} -j {}",
            plan.name, plan.chains.ext
        );
        shared(out, Table::Nat, names::KUBE_NODEPORTS, rule);
    }
    if !plan.has_external {
        let (target, comment) = filter_verdict(plan);
        let rule = format!(
            "-m comment --comment {comment} -m addrtype --dst-type LOCAL -m {p} -p {p} --dport {node_port} -j {target}"
        );
        shared(out, Table::Filter, names::KUBE_EXTERNAL_SERVICES, rule);
    }
}

fn health_check_rules(plan: &Plan<'_>, out: &mut PortRules) {
    let hc = plan.state.port.health_check_node_port;
    if hc == 0 {
        return;
    }
    let rule = format!(
        "-m comment --comment \"{} health check node port\" -m tcp -p tcp --dport {hc} -j ACCEPT",
        plan.name
    );
    shared(out, Table::Filter, names::KUBE_NODEPORTS, rule);
}

/// `KUBE-EXT-*`: external traffic, masqueraded unless the policy is Local,
/// where pod and node traffic is short-circuited to the cluster chain.
fn external_chain(plan: &Plan<'_>, opts: &RenderOpts) -> Chain {
    let mut rules = Vec::new();
    let name = &plan.name;
    match plan.state.port.external_policy {
        TrafficPolicy::Cluster => rules.push(format!(
            "-m comment --comment \"masquerade traffic for {name} external destinations\" -j {}",
            names::KUBE_MARK_MASQ
        )),
        TrafficPolicy::Local => {
            for cidr in &opts.local_cidrs {
                rules.push(format!(
                    "-s {cidr} -m comment --comment \"pod traffic for {name} external destinations\" -j {}",
                    plan.chains.svc
                ));
            }
            rules.push(format!(
                "-m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" \
                 -m addrtype --src-type LOCAL -j {}",
                names::KUBE_MARK_MASQ
            ));
            rules.push(format!(
                "-m comment --comment \"route LOCAL traffic for {name} external destinations\" \
                 -m addrtype --src-type LOCAL -j {}",
                plan.chains.svc
            ));
        }
    }
    if plan.has_external {
        rules.push(format!("-j {}", plan.external_policy_chain));
    }
    Chain {
        name: plan.chains.ext.clone(),
        rules,
    }
}

/// `KUBE-FW-*`: load-balancer source ranges.
fn firewall_chain(plan: &Plan<'_>, opts: &RenderOpts) -> Chain {
    let port = &plan.state.port;
    let head = format!("-m comment --comment \"{} loadbalancer IP\"", plan.name);
    let mut rules = Vec::new();
    let mut allow_from_node = false;
    for cidr in port.source_ranges(opts.family) {
        rules.push(format!("-s {cidr} {head} -j {}", plan.chains.ext));
        allow_from_node |= opts.node_ips.iter().any(|ip| cidr.contains(ip));
    }
    if allow_from_node {
        // The LB VIP is often local: node → VIP loops back with the VIP as source.
        for ip in port.load_balancer_ips(opts.family) {
            rules.push(format!("-s {} {head} -j {}", host(&ip), plan.chains.ext));
        }
    }
    rules.push(format!(
        "-m comment --comment \"other traffic to {} will be dropped by KUBE-PROXY-FIREWALL\"",
        plan.name
    ));
    Chain {
        name: plan.chains.fw.clone(),
        rules,
    }
}

/// `KUBE-SVC-*` or `KUBE-SVL-*`: masquerade off-cluster traffic to the
/// cluster IP (in the internal chain), affinity, then random balancing.
fn policy_chain(plan: &Plan<'_>, chain: &str, endpoints: &[Endpoint], opts: &RenderOpts) -> Chain {
    let mut rules = Vec::new();
    if chain == plan.internal_chain
        && plan.has_internal
        && let Some(ip) = plan.state.port.cluster_ip(opts.family)
    {
        let head = format!(
            "-m comment --comment \"{} cluster IP\" {}",
            plan.name,
            vip_match(plan, &ip)
        );
        if opts.masquerade_all {
            rules.push(format!("{head} -j {}", names::KUBE_MARK_MASQ));
        } else {
            for cidr in &opts.local_cidrs {
                rules.push(format!("! -s {cidr} {head} -j {}", names::KUBE_MARK_MASQ));
            }
        }
    }
    if let SessionAffinity::ClientIp { timeout_seconds } = plan.state.port.session_affinity {
        for ep in endpoints {
            let sep = sep_chain(&plan.state.port.name, ep);
            rules.push(format!(
                "{}-m recent --name {sep} --rcheck --seconds {timeout_seconds} --reap -j {sep}",
                endpoint_comment(plan, ep)
            ));
        }
    }
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        let sep = sep_chain(&plan.state.port.name, ep);
        let stat = if i + 1 < n {
            format!("-m statistic --mode random --probability {:.10} ", 1.0 / (n - i) as f64)
        } else {
            String::new()
        };
        rules.push(format!("{}{stat}-j {sep}", endpoint_comment(plan, ep)));
    }
    Chain {
        name: chain.to_string(),
        rules,
    }
}

/// `KUBE-SEP-*`: hairpin masquerade, affinity bookkeeping, DNAT.
fn endpoint_chain(plan: &Plan<'_>, ep: &Endpoint) -> Chain {
    let sep = sep_chain(&plan.state.port.name, ep);
    let comment = if plan.large {
        String::new()
    } else {
        format!("-m comment --comment {} ", plan.name)
    };
    let affinity = match plan.state.port.session_affinity {
        SessionAffinity::ClientIp { .. } => format!("-m recent --name {sep} --set "),
        SessionAffinity::None => String::new(),
    };
    let p = plan.proto;
    Chain {
        rules: vec![
            format!("{comment}-s {} -j {}", host(&ep.ip), names::KUBE_MARK_MASQ),
            format!("{comment}{affinity}-m {p} -p {p} -j DNAT --to-destination {ep}"),
        ],
        name: sep,
    }
}

fn endpoint_comment(plan: &Plan<'_>, ep: &Endpoint) -> String {
    if plan.large {
        String::new()
    } else {
        format!("-m comment --comment \"{} -> {ep}\" ", plan.name)
    }
}

/// An address as iptables prints it in a rule (`/32`, `/128` implied).
fn host(ip: &IpAddr) -> String {
    ip.to_string()
}

/// The complete iptables-restore input for a Full sync of one family (no
/// stale-chain deletions and no built-in-chain jumps: those depend on what
/// the kernel holds, and are added by the applier).
pub fn render_full(desired: &DesiredState, opts: &RenderOpts) -> String {
    let large = is_large(desired, opts.family);
    let ports: Vec<PortRules> = desired
        .ports_of(opts.family)
        .map(|s| render_port(s, opts, large))
        .collect();
    let stat = render_static(opts);
    let mut text = String::new();
    write_tables(&mut text, &stat, &ports, &[], &[], true);
    text
}

/// Writes `*filter … COMMIT *nat … COMMIT` for a full sync: every
/// top-level chain declared (flushed) and refilled, every service chain
/// declared and written, `stale` chains flushed and deleted, and `jumps`
/// inserted into built-in chains.
pub fn write_tables(
    text: &mut String,
    stat: &StaticRules,
    ports: &[PortRules],
    stale: &[String],
    jumps: &[Jump],
    with_port_chains: bool,
) {
    // filter
    text.push_str("*filter\n");
    for chain in names::FILTER_TOP_CHAINS {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    if stat.kube_firewall {
        let _ = writeln!(text, ":{} - [0:0]", names::KUBE_FIREWALL);
    }
    write_jumps(text, jumps, Table::Filter);
    write_shared(text, stat.rules.iter(), Table::Filter);
    write_shared(text, ports.iter().flat_map(|p| p.shared.iter()), Table::Filter);
    text.push_str("COMMIT\n");
    // nat
    text.push_str("*nat\n");
    for chain in names::NAT_TOP_CHAINS {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    if with_port_chains {
        for chain in ports.iter().flat_map(|p| p.chains.iter()) {
            let _ = writeln!(text, ":{} - [0:0]", chain.name);
        }
    }
    for chain in stale {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    write_jumps(text, jumps, Table::Nat);
    write_shared(text, stat.rules.iter(), Table::Nat);
    write_shared(text, ports.iter().flat_map(|p| p.shared.iter()), Table::Nat);
    for rule in &stat.services_tail {
        let _ = writeln!(text, "-A {} {rule}", names::KUBE_SERVICES);
    }
    if with_port_chains {
        write_chain_rules(text, ports.iter());
    }
    for chain in stale {
        let _ = writeln!(text, "-X {chain}");
    }
    text.push_str("COMMIT\n");
}

/// Writes a nat-only restore input that declares and fills the chains of
/// `ports` (for full syncs split into batches, see the backend's README).
pub fn write_port_chains<'a>(
    text: &mut String,
    prelude: &[&SharedRule],
    ports: impl Iterator<Item = &'a PortRules> + Clone,
) {
    text.push_str("*nat\n");
    let mut declared: Vec<&str> = Vec::new();
    for r in prelude {
        if !declared.contains(&r.chain) {
            let _ = writeln!(text, ":{} - [0:0]", r.chain);
            declared.push(r.chain);
        }
    }
    for chain in ports.clone().flat_map(|p| p.chains.iter()) {
        let _ = writeln!(text, ":{} - [0:0]", chain.name);
    }
    for r in prelude {
        let _ = writeln!(text, "-A {} {}", r.chain, r.rule);
    }
    write_chain_rules(text, ports);
    text.push_str("COMMIT\n");
}

fn write_chain_rules<'a>(text: &mut String, ports: impl Iterator<Item = &'a PortRules>) {
    for chain in ports.flat_map(|p| p.chains.iter()) {
        for rule in &chain.rules {
            let _ = writeln!(text, "-A {} {rule}", chain.name);
        }
    }
}

fn write_jumps(text: &mut String, jumps: &[Jump], table: Table) {
    for j in jumps.iter().filter(|j| j.table == table) {
        let _ = writeln!(text, "-I {} 1 {}", j.from, j.rule());
    }
}

fn write_shared<'a>(text: &mut String, rules: impl Iterator<Item = &'a SharedRule>, table: Table) {
    for r in rules.filter(|r| r.table == table) {
        let _ = writeln!(text, "-A {} {}", r.chain, r.rule);
    }
}
