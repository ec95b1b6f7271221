//! Pure rendering: desired state → nftables objects and `nft -f` text, with
//! kube-proxy's nftables structure and names, except for endpoint choice
//! (see README.md: plain `numgen` rules instead of one anonymous vmap per
//! service, which the kernel binds in quadratic time).
//!
//! A service port renders to [`PortObjects`]: the chains it owns (rewritten
//! whole when they change), its affinity sets, and its elements in the
//! shared sets and verdict maps (`service-ips`, `service-nodeports`,
//! `no-endpoint-*`, `firewall-ips`, `cluster-ips`), which a partial sync
//! adds and deletes one by one. The static structure (tables, base chains,
//! jumps, maps) is declared as data ([`BASE_CHAINS`], [`JUMP_CHAINS`],
//! [`MAPS`]). Every decision (which endpoints, drop or reject, firewall,
//! masquerade) comes from the model's [`PortPlan`], never made here.

use std::collections::HashSet;
use std::fmt::Write;
use std::net::IpAddr;

use super::names::{self, PortChains, affinity_set};
pub use crate::backend::settings::{NodePortTargets, RenderOpts};
use crate::model::{
    ClusterIpMasquerade, DesiredState, Endpoint, Firewall, FirewallScope, IpFamily, NoLocal, Part, PortPlan, Refusal,
    Route, ServicePortState,
};

/// Elements per `add element` command in a full sync (keeps each command,
/// and nft's memory for it, bounded).
pub const ELEMENTS_PER_COMMAND: usize = 2000;

/// kube-proxy's nftables mode applies the source-range firewall whether or
/// not the service has endpoints (see [`FirewallScope`]).
pub const FIREWALL_SCOPE: FirewallScope = FirewallScope::Always;

/// A netfilter chain type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
}

/// A base chain: hooked into netfilter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub name: &'static str,
    pub kind: ChainType,
    pub hook: &'static str,
    /// Numeric (nft 1.0.6 refuses `dstnat` on an output nat chain):
    /// dstnat = -100, srcnat = 100.
    pub priority: i32,
}

/// A jump from a base chain to one of the shared chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JumpChain {
    pub from: &'static str,
    pub to: &'static str,
    /// Matches before the jump (`ct state new`).
    pub extra: &'static str,
}

/// A shared set or verdict map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDecl {
    pub name: &'static str,
    /// The key type (`ADDR` stands for the family's address type).
    pub key: &'static str,
    /// A verdict map (else a set).
    pub verdict: bool,
    pub comment: &'static str,
}

/// One chain and its rules (each rule without `add rule FAMILY TABLE CHAIN`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub rules: Vec<String>,
}

/// A per-endpoint ClientIP affinity set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AffinitySet {
    pub name: String,
    pub timeout_seconds: u32,
}

/// An element of a shared set or map.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Element {
    /// The set or map (a name from [`names`]).
    pub container: &'static str,
    /// `ip . proto . port`, `proto . port` or `ip`.
    pub key: String,
    /// The verdict (`goto CHAIN`, `drop`); None in a set.
    pub value: Option<String>,
    pub comment: Option<String>,
}

/// Everything one service port contributes to one family's table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortObjects {
    /// Chains this port owns; every chain a rule or element of this port
    /// jumps to is either here or a static one.
    pub chains: Vec<Chain>,
    pub sets: Vec<AffinitySet>,
    pub elements: Vec<Element>,
    /// Traffic classes dropped for lack of a local endpoint (metrics).
    pub no_local: NoLocal,
}

/// kube-proxy's base chains, hooks and priorities.
pub const BASE_CHAINS: [BaseChain; 8] = [
    // Filtering sees pre-DNAT destinations: it runs before DNAT.
    base(names::FILTER_PREROUTING, ChainType::Filter, "prerouting", -110),
    base(names::FILTER_INPUT, ChainType::Filter, "input", -110),
    base(names::FILTER_FORWARD, ChainType::Filter, "forward", -110),
    base(names::FILTER_OUTPUT, ChainType::Filter, "output", -110),
    // ... except the cluster-IP port check of locally generated traffic.
    base(names::FILTER_OUTPUT_POST_DNAT, ChainType::Filter, "output", -90),
    base(names::NAT_PREROUTING, ChainType::Nat, "prerouting", -100),
    base(names::NAT_OUTPUT, ChainType::Nat, "output", -100),
    base(names::NAT_POSTROUTING, ChainType::Nat, "postrouting", 100),
];

/// kube-proxy's jumps from the base chains. `reject` is only allowed from
/// input, forward and output on kernels before 5.9, hence the endpoint
/// checks there and the firewall check in prerouting.
pub const JUMP_CHAINS: [JumpChain; 11] = [
    jump(names::FILTER_INPUT, names::NODEPORT_ENDPOINTS_CHECK, "ct state new"),
    jump(names::FILTER_INPUT, names::SERVICE_ENDPOINTS_CHECK, "ct state new"),
    jump(names::FILTER_FORWARD, names::SERVICE_ENDPOINTS_CHECK, "ct state new"),
    jump(names::FILTER_OUTPUT, names::SERVICE_ENDPOINTS_CHECK, "ct state new"),
    jump(names::FILTER_PREROUTING, names::FIREWALL_CHECK, "ct state new"),
    jump(names::FILTER_OUTPUT, names::FIREWALL_CHECK, "ct state new"),
    jump(names::NAT_OUTPUT, names::SERVICES, ""),
    jump(names::NAT_PREROUTING, names::SERVICES, ""),
    jump(names::NAT_POSTROUTING, names::MASQUERADING, ""),
    jump(names::FILTER_FORWARD, names::CLUSTER_IPS_CHECK, "ct state new"),
    jump(names::FILTER_OUTPUT_POST_DNAT, names::CLUSTER_IPS_CHECK, "ct state new"),
];

/// Regular chains shared by every service.
pub const SHARED_CHAINS: [&str; 8] = [
    names::SERVICES,
    names::MASQUERADING,
    names::MARK_FOR_MASQUERADE,
    names::SERVICE_ENDPOINTS_CHECK,
    names::NODEPORT_ENDPOINTS_CHECK,
    names::REJECT_CHAIN,
    names::CLUSTER_IPS_CHECK,
    names::FIREWALL_CHECK,
];

/// The shared sets and verdict maps (`nodeport-ips` is handled apart: it
/// exists only with `--nodeport-addresses`).
pub const MAPS: [MapDecl; 7] = [
    map(names::CLUSTER_IPS, "ADDR", false, "Active ClusterIPs"),
    map(
        names::HAIRPIN,
        "ADDR . ADDR",
        false,
        "Endpoint IP . same IP: DNATed traffic from an endpoint to itself is masqueraded",
    ),
    map(
        names::NO_ENDPOINT_SERVICES,
        "ADDR . inet_proto . inet_service",
        true,
        "vmap to drop or reject packets to services with no endpoints",
    ),
    map(
        names::NO_ENDPOINT_NODEPORTS,
        "inet_proto . inet_service",
        true,
        "vmap to drop or reject packets to service nodeports with no endpoints",
    ),
    map(
        names::FIREWALL_IPS,
        "ADDR . inet_proto . inet_service",
        true,
        "destinations that are subject to LoadBalancerSourceRanges",
    ),
    map(
        names::SERVICE_IPS,
        "ADDR . inet_proto . inet_service",
        true,
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
    ),
    map(
        names::SERVICE_NODEPORTS,
        "inet_proto . inet_service",
        true,
        "NodePort traffic",
    ),
];

const fn base(name: &'static str, kind: ChainType, hook: &'static str, priority: i32) -> BaseChain {
    BaseChain {
        name,
        kind,
        hook,
        priority,
    }
}

const fn jump(from: &'static str, to: &'static str, extra: &'static str) -> JumpChain {
    JumpChain { from, to, extra }
}

const fn map(name: &'static str, key: &'static str, verdict: bool, comment: &'static str) -> MapDecl {
    MapDecl {
        name,
        key,
        verdict,
        comment,
    }
}

// === impl ChainType ===

impl ChainType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

// === impl PortObjects ===

impl PortObjects {
    /// Rules and elements, for metrics and stats.
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum::<usize>() + self.elements.len()
    }
}

// === impl Element ===

impl Element {
    fn new(container: &'static str, key: String, value: Option<String>) -> Self {
        Self {
            container,
            key,
            value,
            comment: None,
        }
    }

    fn with_comment(mut self, comment: &str) -> Self {
        self.comment = Some(comment.to_string());
        self
    }

    /// `KEY [comment "…"] [: VALUE]`, as inside `{ … }`.
    pub fn spec(&self) -> String {
        let mut s = self.key.clone();
        if let Some(c) = &self.comment {
            let _ = write!(s, " comment \"{c}\"");
        }
        if let Some(v) = &self.value {
            let _ = write!(s, " : {v}");
        }
        s
    }
}

/// Writes `VERB OBJECT FAMILY kproxy REST` lines for one family.
#[derive(Clone, Copy, Debug)]
pub struct Writer {
    family: &'static str,
}

// === impl Writer ===

impl Writer {
    pub fn new(family: IpFamily) -> Self {
        Self {
            family: names::family(family),
        }
    }

    pub fn cmd(&self, out: &mut String, verb: &str, object: &str, rest: &str) {
        let _ = write!(out, "{verb} {object} {} {}", self.family, names::TABLE);
        if !rest.is_empty() {
            out.push(' ');
            out.push_str(rest);
        }
        out.push('\n');
    }

    pub fn add_chain(&self, out: &mut String, name: &str) {
        self.cmd(out, "add", "chain", name);
    }

    pub fn flush_chain(&self, out: &mut String, name: &str) {
        self.cmd(out, "flush", "chain", name);
    }

    pub fn delete_chain(&self, out: &mut String, name: &str) {
        self.cmd(out, "delete", "chain", name);
    }

    pub fn add_rule(&self, out: &mut String, chain: &str, rule: &str) {
        let _ = writeln!(out, "add rule {} {} {chain} {rule}", self.family, names::TABLE);
    }

    pub fn add_rules(&self, out: &mut String, chain: &Chain) {
        for r in &chain.rules {
            self.add_rule(out, &chain.name, r);
        }
    }

    /// `add set`: creates the set, or updates its timeout (kernel ≥ 6.x).
    pub fn add_affinity_set(&self, out: &mut String, family: IpFamily, set: &AffinitySet) {
        let rest = format!(
            "{} {{ type {} ; flags dynamic,timeout ; timeout {}s ; }}",
            set.name,
            names::addr_type(family),
            set.timeout_seconds
        );
        self.cmd(out, "add", "set", &rest);
    }

    pub fn delete_set(&self, out: &mut String, name: &str) {
        self.cmd(out, "delete", "set", name);
    }

    /// `add element` commands for `elements` (of one container), batched.
    pub fn add_elements<'a>(&self, out: &mut String, container: &str, elements: impl IntoIterator<Item = &'a Element>) {
        self.element_cmds(out, "add", container, elements.into_iter().map(Element::spec));
    }

    /// `delete element` commands for `keys` (of one container), batched.
    pub fn delete_elements<'a>(&self, out: &mut String, container: &str, keys: impl IntoIterator<Item = &'a str>) {
        self.element_cmds(out, "delete", container, keys.into_iter().map(str::to_string));
    }

    fn element_cmds(&self, out: &mut String, verb: &str, container: &str, specs: impl Iterator<Item = String>) {
        let mut batch: Vec<String> = Vec::new();
        // One element per line when there are several (readable renders).
        let flush = |out: &mut String, batch: &mut Vec<String>| {
            match batch.as_slice() {
                [] => return,
                [one] => self.cmd(out, verb, "element", &format!("{container} {{ {one} }}")),
                many => self.cmd(
                    out,
                    verb,
                    "element",
                    &format!("{container} {{\n\t{}\n}}", many.join(",\n\t")),
                ),
            }
            batch.clear();
        };
        for spec in specs {
            batch.push(spec);
            if batch.len() == ELEMENTS_PER_COMMAND {
                flush(out, &mut batch);
            }
        }
        flush(out, &mut batch);
    }
}

/// `ip daddr` / `ip6 saddr` …
fn addr(family: IpFamily, dir: &str) -> String {
    format!("{} {dir}", names::family(family))
}

/// `127.0.0.0/8` / `::1`: never a NodePort destination.
fn loopback(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "127.0.0.0/8",
        IpFamily::V6 => "::1",
    }
}

/// `X` for one item, `{ X, Y }` for several (an anonymous set; kept out of
/// per-service rules where possible: the kernel binds them slowly).
fn one_or_set(items: &[String]) -> String {
    match items {
        [one] => one.clone(),
        many => format!("{{ {} }}", many.join(", ")),
    }
}

/// The static structure of one family's table, for a full sync: the table
/// (its rules flushed, its set and map contents flushed, its base chains
/// re-created so changed properties apply), every shared chain with its
/// rules, every shared set and map. Affinity sets and per-service chains
/// survive (emptied) for the caller to refill or delete.
pub fn render_static(opts: &RenderOpts) -> String {
    let w = Writer::new(opts.family);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "add table {} {} {{ comment \"rules for kproxy\" ; }}",
        names::family(opts.family),
        names::TABLE
    );
    w.cmd(&mut out, "flush", "table", "");
    for bc in BASE_CHAINS {
        w.add_chain(&mut out, bc.name);
        w.delete_chain(&mut out, bc.name);
    }
    for bc in BASE_CHAINS {
        let spec = format!(
            "{} {{ type {} hook {} priority {} ; }}",
            bc.name,
            bc.kind.as_str(),
            bc.hook,
            bc.priority
        );
        w.add_chain(&mut out, &spec);
    }
    for c in SHARED_CHAINS {
        w.add_chain(&mut out, c);
    }
    render_maps(&w, &mut out, opts);
    for j in JUMP_CHAINS {
        let rule = if j.extra.is_empty() {
            format!("jump {}", j.to)
        } else {
            format!("{} jump {}", j.extra, j.to)
        };
        w.add_rule(&mut out, j.from, &rule);
    }
    for (chain, rule) in static_rules(opts) {
        w.add_rule(&mut out, chain, &rule);
    }
    out
}

fn render_maps(w: &Writer, out: &mut String, opts: &RenderOpts) {
    let addr_type = names::addr_type(opts.family);
    for m in MAPS {
        let key = m.key.replace("ADDR", addr_type);
        let (object, ty) = if m.verdict {
            ("map", format!("{key} : verdict"))
        } else {
            ("set", key)
        };
        w.cmd(
            out,
            "add",
            object,
            &format!("{} {{ type {ty} ; comment \"{}\" ; }}", m.name, m.comment),
        );
        w.cmd(out, "flush", object, m.name);
    }
    let nodeport_ips = format!(
        "{} {{ type {addr_type} ; comment \"IPs that accept NodePort traffic\" ; }}",
        names::NODEPORT_IPS
    );
    w.cmd(out, "add", "set", &nodeport_ips);
    match &opts.nodeports {
        // (add + delete: a delete alone fails when the set does not exist)
        NodePortTargets::AllLocal => w.delete_set(out, names::NODEPORT_IPS),
        NodePortTargets::Ips(ips) => {
            w.cmd(out, "flush", "set", names::NODEPORT_IPS);
            let elements: Vec<Element> = ips
                .iter()
                .map(|ip| Element::new(names::NODEPORT_IPS, ip.to_string(), None))
                .collect();
            w.add_elements(out, names::NODEPORT_IPS, &elements);
        }
    }
}

/// The rules of the shared chains, (chain, rule) in order.
fn static_rules(opts: &RenderOpts) -> Vec<(&'static str, String)> {
    let f = opts.family;
    let mark = format!("{:#x}", opts.masquerade_mark);
    let tuple = format!("{} . meta l4proto . th dport", addr(f, "daddr"));
    let nodeport_dst = match &opts.nodeports {
        NodePortTargets::AllLocal => format!("fib daddr type local {} != {}", addr(f, "daddr"), loopback(f)),
        NodePortTargets::Ips(_) => format!("{} @{}", addr(f, "daddr"), names::NODEPORT_IPS),
    };
    // Only reached from filter-input: the destination is local already.
    let nodeport_check_dst = match &opts.nodeports {
        NodePortTargets::AllLocal => format!("{} != {}", addr(f, "daddr"), loopback(f)),
        NodePortTargets::Ips(_) => format!("{} @{}", addr(f, "daddr"), names::NODEPORT_IPS),
    };
    vec![
        (names::MARK_FOR_MASQUERADE, format!("mark set mark or {mark}")),
        // Hairpin: an endpoint reaching itself through a service.
        (
            names::MASQUERADING,
            format!(
                "ct status dnat {} . {} @{} jump {}",
                addr(f, "saddr"),
                addr(f, "daddr"),
                names::HAIRPIN,
                names::MARK_FOR_MASQUERADE
            ),
        ),
        (names::MASQUERADING, format!("mark and {mark} == 0 return")),
        (names::MASQUERADING, format!("mark set mark xor {mark}")),
        (names::MASQUERADING, "masquerade fully-random".to_string()),
        (
            names::CLUSTER_IPS_CHECK,
            format!(
                "{} @{} reject comment \"Reject traffic to invalid ports of ClusterIPs\"",
                addr(f, "daddr"),
                names::CLUSTER_IPS
            ),
        ),
        (names::REJECT_CHAIN, "reject".to_string()),
        (
            names::SERVICE_ENDPOINTS_CHECK,
            format!("{tuple} vmap @{}", names::NO_ENDPOINT_SERVICES),
        ),
        (
            names::NODEPORT_ENDPOINTS_CHECK,
            format!(
                "{nodeport_check_dst} meta l4proto . th dport vmap @{}",
                names::NO_ENDPOINT_NODEPORTS
            ),
        ),
        (names::FIREWALL_CHECK, format!("{tuple} vmap @{}", names::FIREWALL_IPS)),
        (names::SERVICES, format!("{tuple} vmap @{}", names::SERVICE_IPS)),
        (
            names::SERVICES,
            format!(
                "{nodeport_dst} meta l4proto . th dport vmap @{}",
                names::SERVICE_NODEPORTS
            ),
        ),
    ]
}

/// One service port being rendered: its plan plus the names and spellings
/// its objects use (no decisions here).
struct Port<'a> {
    plan: PortPlan<'a>,
    chains: PortChains,
    /// `ns/name:port`, as comments write it.
    name: String,
    proto: &'static str,
}

/// Renders one service port for `opts.family`.
pub fn render_port(state: &ServicePortState, opts: &RenderOpts) -> PortObjects {
    let p = Port {
        plan: PortPlan::new(state, &opts.plan_context(FIREWALL_SCOPE)),
        chains: PortChains::new(&state.port.name),
        name: state.port.name.to_string(),
        proto: state.port.name.protocol.as_lower(),
    };
    let plan = &p.plan;
    let mut out = PortObjects {
        no_local: plan.no_local(),
        ..PortObjects::default()
    };
    cluster_ip_elements(&p, &mut out);
    external_ip_elements(&p, &mut out);
    load_balancer_elements(&p, &mut out);
    node_port_elements(&p, &mut out);
    out.chains = plan.map_parts(|part| match part {
        Part::External => external_chain(&p),
        Part::Firewall(fw) => firewall_chain(&p, fw),
        Part::Endpoints(route) => policy_chain(&p, route),
    });
    for ep in plan.reachable {
        let key = format!("{} . {}", ep.ip, ep.ip);
        out.elements.push(Element::new(names::HAIRPIN, key, None));
    }
    if let Some(timeout_seconds) = plan.affinity {
        out.sets = plan
            .reachable
            .iter()
            .map(|ep| AffinitySet {
                name: affinity_set(&state.port.name, ep),
                timeout_seconds,
            })
            .collect();
    }
    out
}

// === impl Port ===

impl Port<'_> {
    /// The chain that balances over a forwarding route's endpoints.
    fn route_chain(&self, route: Route) -> &str {
        match route {
            Route::Local => &self.chains.local,
            _ => &self.chains.service,
        }
    }

    /// `ip . proto . port`.
    fn vip_key(&self, ip: &IpAddr) -> String {
        format!("{ip} . {} . {}", self.proto, self.plan.state.port.port)
    }

    /// The `no-endpoint-*` element refusing `key`, when `route` refuses.
    fn refusal_element(&self, container: &'static str, key: String, route: Route) -> Option<Element> {
        let verdict = match route.refusal()? {
            Refusal::Drop => "drop".to_string(),
            Refusal::Reject => format!("goto {}", names::REJECT_CHAIN),
        };
        Some(Element::new(container, key, Some(verdict)).with_comment(&self.name))
    }
}

fn goto(chain: &str) -> Option<String> {
    Some(format!("goto {chain}"))
}

fn cluster_ip_elements(p: &Port<'_>, out: &mut PortObjects) {
    let Some(ip) = p.plan.state.port.cluster_ip(p.plan.family) else {
        return;
    };
    out.elements
        .push(Element::new(names::CLUSTER_IPS, ip.to_string(), None));
    let key = p.vip_key(&ip);
    if p.plan.internal.forwards() {
        let chain = p.route_chain(p.plan.internal);
        out.elements.push(Element::new(names::SERVICE_IPS, key, goto(chain)));
    } else {
        out.elements
            .extend(p.refusal_element(names::NO_ENDPOINT_SERVICES, key, p.plan.internal));
    }
}

fn external_ip_elements(p: &Port<'_>, out: &mut PortObjects) {
    for ip in p.plan.state.port.external_ips(p.plan.family) {
        external_vip_elements(p, &ip, out);
    }
}

/// The elements of an external IP or a load-balancer IP.
fn external_vip_elements(p: &Port<'_>, ip: &IpAddr, out: &mut PortObjects) {
    let key = p.vip_key(ip);
    if p.plan.dispatches_external() {
        out.elements
            .push(Element::new(names::SERVICE_IPS, key.clone(), goto(&p.chains.external)));
    }
    out.elements
        .extend(p.refusal_element(names::NO_ENDPOINT_SERVICES, key, p.plan.external));
}

fn load_balancer_elements(p: &Port<'_>, out: &mut PortObjects) {
    for ip in p.plan.state.port.load_balancer_ips(p.plan.family) {
        external_vip_elements(p, &ip, out);
        if p.plan.firewall.is_some() {
            let e = Element::new(names::FIREWALL_IPS, p.vip_key(&ip), goto(&p.chains.firewall));
            out.elements.push(e.with_comment(&p.name));
        }
    }
}

fn node_port_elements(p: &Port<'_>, out: &mut PortObjects) {
    let node_port = p.plan.state.port.node_port;
    if node_port == 0 {
        return;
    }
    let key = format!("{} . {node_port}", p.proto);
    if p.plan.dispatches_external() {
        out.elements.push(Element::new(
            names::SERVICE_NODEPORTS,
            key.clone(),
            goto(&p.chains.external),
        ));
    }
    out.elements
        .extend(p.refusal_element(names::NO_ENDPOINT_NODEPORTS, key, p.plan.external));
}

/// `external-…`: external traffic, masqueraded unless the policy is Local,
/// where pod and node traffic is short-circuited to the cluster chain.
fn external_chain(p: &Port<'_>) -> Chain {
    let mut rules = Vec::new();
    let mark = names::MARK_FOR_MASQUERADE;
    let masq = &p.plan.masquerade;
    let service = &p.chains.service;
    let to_cluster = p.plan.uses_cluster_endpoints();
    if masq.external {
        rules.push(format!("jump {mark}"));
    }
    if to_cluster && !masq.pods_to_cluster.is_empty() {
        let cidrs: Vec<String> = masq.pods_to_cluster.iter().map(ToString::to_string).collect();
        rules.push(format!(
            "{} {} goto {service} comment \"short-circuit pod traffic\"",
            addr(p.plan.family, "saddr"),
            one_or_set(&cidrs)
        ));
    }
    if masq.local_origin_to_cluster {
        rules.push(format!(
            "fib saddr type local jump {mark} comment \"masquerade local traffic\""
        ));
        if to_cluster {
            rules.push(format!(
                "fib saddr type local goto {service} comment \"short-circuit local traffic\""
            ));
        }
    }
    if p.plan.external.forwards() {
        rules.push(format!("goto {}", p.route_chain(p.plan.external)));
    }
    Chain {
        name: p.chains.external.clone(),
        rules,
    }
}

/// `firewall-…`: drop load-balancer traffic from outside the source ranges.
fn firewall_chain(p: &Port<'_>, fw: &Firewall) -> Chain {
    let mut sources: Vec<String> = fw.source_ranges.iter().map(ToString::to_string).collect();
    sources.extend(fw.node_allowance.iter().map(ToString::to_string));
    Chain {
        name: p.chains.firewall.clone(),
        rules: vec![format!(
            "{} != {} drop",
            addr(p.plan.family, "saddr"),
            one_or_set(&sources)
        )],
    }
}

/// `service-…` or `local-…`: masquerade off-cluster traffic to the cluster
/// IP (in the internal chain), affinity, then one `numgen` rule per
/// endpoint, DNAT included: endpoint i of n is taken with probability
/// 1/(n-i). No chain per endpoint: every `nft -f` dumps all chains, in
/// quadratic time (README.md).
fn policy_chain(p: &Port<'_>, route: Route) -> Chain {
    let plan = &p.plan;
    let family = plan.family;
    let endpoints = plan.endpoints(route);
    let mut rules = Vec::new();
    if plan.internal == route
        && let Some(ip) = plan.state.port.cluster_ip(family)
    {
        let head = format!(
            "{} {ip} {} dport {}",
            addr(family, "daddr"),
            p.proto,
            plan.state.port.port
        );
        let mark = names::MARK_FOR_MASQUERADE;
        match &plan.masquerade.cluster_ip {
            ClusterIpMasquerade::All => rules.push(format!("{head} jump {mark}")),
            ClusterIpMasquerade::NotFrom(cidrs) => {
                let cidrs: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
                rules.push(format!(
                    "{head} {} != {} jump {mark}",
                    addr(family, "saddr"),
                    one_or_set(&cidrs)
                ));
            }
            ClusterIpMasquerade::Nothing => {}
        }
    }
    let saddr = addr(family, "saddr");
    // Remembering the client (affinity), then the DNAT itself.
    let to = |ep: &Endpoint| {
        let dnat = format!("meta l4proto {} dnat to {ep}", p.proto);
        if plan.affinity.is_some() {
            let set = affinity_set(&plan.state.port.name, ep);
            format!("update @{set} {{ {saddr} }} {dnat}")
        } else {
            dnat
        }
    };
    if plan.affinity.is_some() {
        for ep in endpoints {
            let set = affinity_set(&plan.state.port.name, ep);
            rules.push(format!("{saddr} @{set} {}", to(ep)));
        }
    }
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        if i + 1 < n {
            rules.push(format!("numgen random mod {} 0 {}", n - i, to(ep)));
        } else {
            rules.push(to(ep));
        }
    }
    Chain {
        name: p.route_chain(route).to_string(),
        rules,
    }
}

/// The complete `nft -f` input for a full sync of one family, without the
/// deletion of stale objects (that depends on what the kernel holds and is
/// added by the applier).
pub fn render_full(desired: &DesiredState, opts: &RenderOpts) -> String {
    let ports: Vec<PortObjects> = desired.ports_of(opts.family).map(|s| render_port(s, opts)).collect();
    let mut out = String::with_capacity(estimate_len(&ports));
    out.push_str(&render_static(opts));
    write_ports(&mut out, opts.family, &ports);
    out
}

/// About how many bytes [`write_ports`] writes for `ports` (to size buffers
/// once: a full sync's text is tens of megabytes at 10k services).
pub fn estimate_len(ports: &[PortObjects]) -> usize {
    let chains: usize = ports
        .iter()
        .flat_map(|p| p.chains.iter())
        .map(|c| (c.name.len() + 32) * (c.rules.len() + 1) + c.rules.iter().map(String::len).sum::<usize>())
        .sum();
    let elements: usize = ports
        .iter()
        .flat_map(|p| p.elements.iter())
        .map(|e| e.key.len() + e.value.as_ref().map_or(0, String::len) + 8)
        .sum();
    chains + elements + 16 * 1024
}

/// Writes every object of `ports` into an (emptied) table: affinity sets,
/// then chains (all declared before any rule jumps to them), rules, and
/// elements (first of several identical keys wins).
pub fn write_ports(out: &mut String, family: IpFamily, ports: &[PortObjects]) {
    let w = Writer::new(family);
    for set in ports.iter().flat_map(|p| p.sets.iter()) {
        w.add_affinity_set(out, family, set);
    }
    for chain in ports.iter().flat_map(|p| p.chains.iter()) {
        w.add_chain(out, &chain.name);
    }
    for chain in ports.iter().flat_map(|p| p.chains.iter()) {
        w.add_rules(out, chain);
    }
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for m in MAPS {
        let elements = ports
            .iter()
            .flat_map(|p| p.elements.iter())
            .filter(|e| e.container == m.name)
            .filter(|e| seen.insert((e.container, e.key.as_str())));
        w.add_elements(out, m.name, elements);
    }
}
