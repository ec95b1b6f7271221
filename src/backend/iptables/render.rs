//! Pure rendering: desired state → iptables rules, with kube-proxy's chain
//! structure, names, comments and order.
//!
//! A service port renders to a [`PortRules`]: the nat chains it owns
//! (`KUBE-SVC/SVL/EXT/FW/SEP-*`, rewritten whole when they change) and its
//! rules in the shared chains (`KUBE-SERVICES`, `KUBE-NODEPORTS`, and the
//! filter chains), which a partial sync edits rule by rule. One function per
//! rule family; every decision (which endpoints, drop or reject, firewall,
//! masquerade) comes from the model's [`PortPlan`], never made here.

use std::fmt::Write;
use std::net::IpAddr;

use super::names::{self, PortChains, sep_chain};
pub use crate::backend::settings::{NodePortTargets, RenderOpts};
use crate::model::{
    ClusterIpMasquerade, DesiredState, Endpoint, FirewallScope, IpFamily, NoLocal, Part, PortPlan, Refusal, Route,
    ServicePortState,
};

/// Above this many endpoints (in one family), rule comments on endpoint
/// rules are dropped to shrink the ruleset, as kube-proxy does.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// kube-proxy's iptables mode plans the source-range firewall only for
/// services with endpoints (see [`FirewallScope`]).
pub const FIREWALL_SCOPE: FirewallScope = FirewallScope::WithEndpoints;

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
    /// Traffic classes dropped for lack of a local endpoint (metrics).
    pub no_local: NoLocal,
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

/// One service port being rendered: its plan plus the names and spellings
/// its rules use (no decisions here).
struct Port<'a> {
    plan: PortPlan<'a>,
    chains: PortChains,
    /// `ns/name:port` as rule comments write it.
    name: String,
    proto: &'static str,
    large: bool,
}

/// Renders one service port for `opts.family`. `large` drops endpoint
/// comments (see [`is_large`]).
pub fn render_port(state: &ServicePortState, opts: &RenderOpts, large: bool) -> PortRules {
    let plan = PortPlan::new(state, &opts.plan_context(FIREWALL_SCOPE));
    let p = Port {
        chains: PortChains::new(&state.port.name),
        name: state.port.name.to_string(),
        proto: state.port.name.protocol.as_lower(),
        large,
        plan,
    };
    let plan = &p.plan;
    let mut out = PortRules {
        no_local: plan.no_local(),
        ..PortRules::default()
    };
    cluster_ip_rules(&p, &mut out);
    external_ip_rules(&p, &mut out);
    load_balancer_rules(&p, &mut out);
    node_port_rules(&p, &mut out);
    health_check_rules(&p, &mut out);
    out.chains = plan.map_parts(|part| match part {
        Part::External => external_chain(&p),
        Part::Firewall(fw) => firewall_chain(&p, fw),
        Part::Endpoints(route) => policy_chain(&p, route),
    });
    for ep in plan.reachable {
        out.chains.push(endpoint_chain(&p, ep));
    }
    out
}

// === impl Port ===

impl Port<'_> {
    /// The chain that balances over a forwarding route's endpoints.
    fn route_chain(&self, route: Route) -> &str {
        match route {
            Route::Local => &self.chains.svl,
            _ => &self.chains.svc,
        }
    }

    /// `-m proto -p proto -d VIP --dport PORT`.
    fn vip_match(&self, ip: &IpAddr) -> String {
        format!(
            "-m {p} -p {p} -d {} --dport {}",
            host(ip),
            self.plan.state.port.port,
            p = self.proto
        )
    }

    /// The filter target and comment for refused traffic.
    fn refusal(&self, refusal: Refusal) -> (&'static str, String) {
        let target = match refusal {
            Refusal::Drop => "DROP",
            Refusal::Reject => "REJECT",
        };
        (target, format!("\"{} {}\"", self.name, refusal.reason()))
    }
}

fn shared(out: &mut PortRules, table: Table, chain: &'static str, rule: String) {
    out.shared.push(SharedRule { table, chain, rule });
}

fn cluster_ip_rules(p: &Port<'_>, out: &mut PortRules) {
    let Some(ip) = p.plan.state.port.cluster_ip(p.plan.family) else {
        return;
    };
    match p.plan.internal.refusal() {
        None => {
            let rule = format!(
                "-m comment --comment \"{} cluster IP\" {} -j {}",
                p.name,
                p.vip_match(&ip),
                p.route_chain(p.plan.internal)
            );
            shared(out, Table::Nat, names::KUBE_SERVICES, rule);
        }
        Some(refusal) => {
            let (target, comment) = p.refusal(refusal);
            let rule = format!("-m comment --comment {comment} {} -j {target}", p.vip_match(&ip));
            shared(out, Table::Filter, names::KUBE_SERVICES, rule);
        }
    }
}

/// The filter rule refusing external traffic to `ip`, when the plan
/// refuses it.
fn external_refusal(p: &Port<'_>, ip: &IpAddr, out: &mut PortRules) {
    if let Some(refusal) = p.plan.external.refusal() {
        let (target, comment) = p.refusal(refusal);
        let rule = format!("-m comment --comment {comment} {} -j {target}", p.vip_match(ip));
        shared(out, Table::Filter, names::KUBE_EXTERNAL_SERVICES, rule);
    }
}

fn external_ip_rules(p: &Port<'_>, out: &mut PortRules) {
    for ip in p.plan.state.port.external_ips(p.plan.family) {
        if p.plan.dispatches_external() {
            let rule = format!(
                "-m comment --comment \"{} external IP\" {} -j {}",
                p.name,
                p.vip_match(&ip),
                p.chains.ext
            );
            shared(out, Table::Nat, names::KUBE_SERVICES, rule);
        }
        external_refusal(p, &ip, out);
    }
}

fn load_balancer_rules(p: &Port<'_>, out: &mut PortRules) {
    let target = if p.plan.firewall.is_some() {
        &p.chains.fw
    } else {
        &p.chains.ext
    };
    let lb_ips: Vec<IpAddr> = p.plan.state.port.load_balancer_ips(p.plan.family).collect();
    for ip in &lb_ips {
        if p.plan.dispatches_external() {
            let rule = format!(
                "-m comment --comment \"{} loadbalancer IP\" {} -j {target}",
                p.name,
                p.vip_match(ip)
            );
            shared(out, Table::Nat, names::KUBE_SERVICES, rule);
        }
        if p.plan.firewall.is_some() {
            let rule = format!(
                "-m comment --comment \"{} traffic not accepted by {}\" {} -j DROP",
                p.name,
                p.chains.fw,
                p.vip_match(ip)
            );
            shared(out, Table::Filter, names::KUBE_PROXY_FIREWALL, rule);
        }
    }
    for ip in &lb_ips {
        external_refusal(p, ip, out);
    }
}

fn node_port_rules(p: &Port<'_>, out: &mut PortRules) {
    let node_port = p.plan.state.port.node_port;
    if node_port == 0 {
        return;
    }
    let proto = p.proto;
    if p.plan.dispatches_external() {
        let rule = format!(
            "-m comment --comment {} -m {proto} -p {proto} --dport {node_port} -j {}",
            p.name, p.chains.ext
        );
        shared(out, Table::Nat, names::KUBE_NODEPORTS, rule);
    }
    if let Some(refusal) = p.plan.external.refusal() {
        let (target, comment) = p.refusal(refusal);
        let rule = format!(
            "-m comment --comment {comment} -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {node_port} -j {target}"
        );
        shared(out, Table::Filter, names::KUBE_EXTERNAL_SERVICES, rule);
    }
}

fn health_check_rules(p: &Port<'_>, out: &mut PortRules) {
    let hc = p.plan.health_check_node_port;
    if hc == 0 {
        return;
    }
    let rule = format!(
        "-m comment --comment \"{} health check node port\" -m tcp -p tcp --dport {hc} -j ACCEPT",
        p.name
    );
    shared(out, Table::Filter, names::KUBE_NODEPORTS, rule);
}

/// `KUBE-EXT-*`: external traffic, masqueraded unless the policy is Local,
/// where pod and node traffic is short-circuited to the cluster chain.
fn external_chain(p: &Port<'_>) -> Chain {
    let mut rules = Vec::new();
    let name = &p.name;
    let masq = &p.plan.masquerade;
    if masq.external {
        rules.push(format!(
            "-m comment --comment \"masquerade traffic for {name} external destinations\" -j {}",
            names::KUBE_MARK_MASQ
        ));
    }
    for cidr in &masq.pods_to_cluster {
        rules.push(format!(
            "-s {cidr} -m comment --comment \"pod traffic for {name} external destinations\" -j {}",
            p.chains.svc
        ));
    }
    if masq.local_origin_to_cluster {
        rules.push(format!(
            "-m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" \
             -m addrtype --src-type LOCAL -j {}",
            names::KUBE_MARK_MASQ
        ));
        rules.push(format!(
            "-m comment --comment \"route LOCAL traffic for {name} external destinations\" \
             -m addrtype --src-type LOCAL -j {}",
            p.chains.svc
        ));
    }
    if p.plan.external.forwards() {
        rules.push(format!("-j {}", p.route_chain(p.plan.external)));
    }
    Chain {
        name: p.chains.ext.clone(),
        rules,
    }
}

/// `KUBE-FW-*`: load-balancer source ranges.
fn firewall_chain(p: &Port<'_>, fw: &crate::model::Firewall) -> Chain {
    let head = format!("-m comment --comment \"{} loadbalancer IP\"", p.name);
    let mut rules: Vec<String> = fw
        .source_ranges
        .iter()
        .map(|cidr| format!("-s {cidr} {head} -j {}", p.chains.ext))
        .collect();
    for ip in &fw.node_allowance {
        rules.push(format!("-s {} {head} -j {}", host(ip), p.chains.ext));
    }
    rules.push(format!(
        "-m comment --comment \"other traffic to {} will be dropped by KUBE-PROXY-FIREWALL\"",
        p.name
    ));
    Chain {
        name: p.chains.fw.clone(),
        rules,
    }
}

/// `KUBE-SVC-*` or `KUBE-SVL-*`: masquerade off-cluster traffic to the
/// cluster IP (in the internal chain), affinity, then random balancing.
fn policy_chain(p: &Port<'_>, route: Route) -> Chain {
    let plan = &p.plan;
    let endpoints = plan.endpoints(route);
    let mut rules = Vec::new();
    if plan.internal == route
        && let Some(ip) = plan.state.port.cluster_ip(plan.family)
    {
        let head = format!("-m comment --comment \"{} cluster IP\" {}", p.name, p.vip_match(&ip));
        match &plan.masquerade.cluster_ip {
            ClusterIpMasquerade::All => rules.push(format!("{head} -j {}", names::KUBE_MARK_MASQ)),
            ClusterIpMasquerade::NotFrom(cidrs) => {
                for cidr in cidrs {
                    rules.push(format!("! -s {cidr} {head} -j {}", names::KUBE_MARK_MASQ));
                }
            }
            ClusterIpMasquerade::Nothing => {}
        }
    }
    if let Some(timeout) = plan.affinity {
        for ep in endpoints {
            let sep = sep_chain(&plan.state.port.name, ep);
            rules.push(format!(
                "{}-m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}",
                endpoint_comment(p, ep)
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
        rules.push(format!("{}{stat}-j {sep}", endpoint_comment(p, ep)));
    }
    Chain {
        name: p.route_chain(route).to_string(),
        rules,
    }
}

/// `KUBE-SEP-*`: hairpin masquerade, affinity bookkeeping, DNAT.
fn endpoint_chain(p: &Port<'_>, ep: &Endpoint) -> Chain {
    let sep = sep_chain(&p.plan.state.port.name, ep);
    let comment = if p.large {
        String::new()
    } else {
        format!("-m comment --comment {} ", p.name)
    };
    let affinity = match p.plan.affinity {
        Some(_) => format!("-m recent --name {sep} --set "),
        None => String::new(),
    };
    let proto = p.proto;
    let hairpin = if p.plan.masquerade.hairpin {
        vec![format!("{comment}-s {} -j {}", host(&ep.ip), names::KUBE_MARK_MASQ)]
    } else {
        Vec::new()
    };
    let mut rules = hairpin;
    rules.push(format!(
        "{comment}{affinity}-m {proto} -p {proto} -j DNAT --to-destination {ep}"
    ));
    Chain { rules, name: sep }
}

fn endpoint_comment(p: &Port<'_>, ep: &Endpoint) -> String {
    if p.large {
        String::new()
    } else {
        format!("-m comment --comment \"{} -> {ep}\" ", p.name)
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
