//! Pure: kube-proxy's ipvs-mode ipsets and iptables rules for one family.
//!
//! ```text
//!  PortPlan per service port ──▶ FamilySets: members of KUBE-CLUSTER-IP, KUBE-LOOP-BACK, KUBE-NODE-PORT-*, …
//!                                     │ (which sets are empty decides which rules exist)
//!  Settings (mark, masquerade) ───────┴──▶ render_iptables: the nat and filter chains, one
//!                                          iptables-restore input whose size does not grow with
//!                                          the number of services (membership lives in the sets)
//! ```
//!
//! The rules follow kube-proxy's ipvs proxier (`writeIptablesRules`): the
//! same chains, comments, set matches and order, so `iptables-save` looks
//! the same. [`render_ipset_restore`] turns a set diff into one
//! `ipset restore` input.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use super::names::{self, SetId};
use super::render::FamilyInput;
use crate::model::{DesiredState, IpFamily, PortPlan, Protocol, Route, TrafficPolicy};

/// The members of every set of one family, and the load-balancer
/// addresses the node itself may not reach (no source range admits it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilySets {
    pub members: BTreeMap<SetId, BTreeSet<String>>,
    /// (LB IP, protocol, port) for `KUBE-IPVS-OUT-FILTER`.
    pub lb_no_node_access: BTreeSet<(IpAddr, &'static str, u16)>,
    /// Traffic dropped for lack of a local endpoint: (address, protocol,
    /// port, external only, service port name).
    pub drops: BTreeSet<(IpAddr, &'static str, u16, bool, String)>,
}

/// Options of the iptables rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleOpts {
    pub family: IpFamily,
    pub masquerade_mark: u32,
    pub masquerade_all: bool,
    /// The cluster CIDR of this family: ClusterIP traffic from elsewhere is
    /// masqueraded. None: masquerade node traffic with a VIP source.
    pub cluster_cidr: Option<ipnet::IpNet>,
}

fn ip_port(ip: IpAddr, proto: &str, port: u16) -> String {
    format!("{ip},{proto}:{port}")
}

// === impl FamilySets ===

impl FamilySets {
    fn add(&mut self, set: SetId, member: String) {
        self.members.entry(set).or_default().insert(member);
    }

    pub fn is_empty(&self, set: SetId) -> bool {
        self.members.get(&set).is_none_or(BTreeSet::is_empty)
    }
}

/// The set members of one family. `bound` are the addresses on
/// `kube-ipvs0` (`KUBE-IPVS-IPS`).
pub fn render_family_sets(desired: &DesiredState, input: &FamilyInput, bound: &BTreeSet<IpAddr>) -> FamilySets {
    let family = input.ctx.family;
    let mut out = FamilySets::default();
    for state in desired.ports_of(family) {
        let plan = PortPlan::new(state, &input.ctx);
        add_port_members(&plan, input, &mut out);
    }
    for ip in bound.iter().filter(|ip| IpFamily::of(ip) == family) {
        out.add(SetId::IpvsIps, ip.to_string());
    }
    out
}

fn add_port_members(plan: &PortPlan<'_>, input: &FamilyInput, out: &mut FamilySets) {
    let port = &plan.state.port;
    let family = plan.family;
    let proto = port.name.protocol.as_lower();
    let local = port.external_policy == TrafficPolicy::Local;
    let name = port.name.to_string();
    if plan.internal == Route::Drop
        && let Some(ip) = port.cluster_ip(family)
    {
        out.drops.insert((ip, proto, port.port, false, name.clone()));
    }
    if plan.no_local_external() {
        let external = port.external_ips(family).chain(port.load_balancer_ips(family));
        for ip in external {
            out.drops.insert((ip, proto, port.port, true, name.clone()));
        }
        if port.node_port != 0 {
            for ip in &input.nodeport_ips {
                out.drops.insert((*ip, proto, port.node_port, true, name.clone()));
            }
        }
    }
    for ep in plan.state.family(family).endpoints.iter().filter(|e| e.is_local) {
        out.add(SetId::LoopBack, format!("{},{proto}:{},{}", ep.ip, ep.port, ep.ip));
    }
    if let Some(ip) = port.cluster_ip(family) {
        out.add(SetId::ClusterIp, ip_port(ip, proto, port.port));
    }
    for ip in port.external_ips(family) {
        let set = if local {
            SetId::ExternalIpLocal
        } else {
            SetId::ExternalIp
        };
        out.add(set, ip_port(ip, proto, port.port));
    }
    let ranges: Vec<ipnet::IpNet> = port.source_ranges(family).collect();
    for ip in port.load_balancer_ips(family) {
        let entry = ip_port(ip, proto, port.port);
        out.add(SetId::LoadBalancer, entry.clone());
        if local {
            out.add(SetId::LoadBalancerLocal, entry.clone());
        }
        if ranges.is_empty() {
            continue;
        }
        out.add(SetId::LoadBalancerFw, entry);
        for net in &ranges {
            out.add(
                SetId::LoadBalancerSourceCidr,
                format!("{ip},{proto}:{},{net}", port.port),
            );
        }
        let node_admitted = ranges
            .iter()
            .any(|n| input.ctx.node_ips.iter().any(|ip| n.contains(ip)));
        if node_admitted {
            out.add(SetId::LoadBalancerSourceIp, format!("{ip},{proto}:{},{ip}", port.port));
        } else {
            out.lb_no_node_access.insert((ip, proto, port.port));
        }
    }
    if port.node_port != 0 && !input.nodeport_ips.is_empty() {
        let (set, local_set) = match port.name.protocol {
            Protocol::Tcp => (SetId::NodePortTcp, SetId::NodePortLocalTcp),
            Protocol::Udp => (SetId::NodePortUdp, SetId::NodePortLocalUdp),
            Protocol::Sctp => (SetId::NodePortSctp, SetId::NodePortLocalSctp),
        };
        let entries: Vec<String> = match port.name.protocol {
            Protocol::Sctp => input
                .nodeport_ips
                .iter()
                .map(|ip| ip_port(*ip, proto, port.node_port))
                .collect(),
            _ => vec![port.node_port.to_string()],
        };
        for e in entries {
            if local {
                out.add(local_set, e.clone());
            }
            out.add(set, e);
        }
    }
    if port.health_check_node_port != 0 {
        out.add(SetId::HealthCheckNodePort, port.health_check_node_port.to_string());
    }
}

/// One `ipset restore` input: with `create`, create every set
/// (`-exist`); then delete what `current` has and `want` lacks, and add the
/// rest.
pub fn render_ipset_restore(
    family: IpFamily,
    create: bool,
    current: &BTreeMap<SetId, BTreeSet<String>>,
    want: &BTreeMap<SetId, BTreeSet<String>>,
) -> String {
    let mut s = String::new();
    let inet = match family {
        IpFamily::V4 => "inet",
        IpFamily::V6 => "inet6",
    };
    for info in names::SETS.iter().filter(|_| create) {
        let name = info.id.name(family);
        if info.kind == "bitmap:port" {
            let _ = writeln!(s, "create {name} bitmap:port range 0-65535 -exist");
        } else {
            let _ = writeln!(
                s,
                "create {name} {} family {inet} hashsize 1024 maxelem 65536 -exist",
                info.kind
            );
        }
    }
    let empty = BTreeSet::new();
    for info in names::SETS {
        let name = info.id.name(family);
        let have = current.get(&info.id).unwrap_or(&empty);
        let wanted = want.get(&info.id).unwrap_or(&empty);
        for m in have.difference(wanted) {
            let _ = writeln!(s, "del {name} {m} -exist");
        }
        for m in wanted.difference(have) {
            let _ = writeln!(s, "add {name} {m} -exist");
        }
    }
    s
}

/// Members of kproxy's sets in `ipset save` output, for `family`.
pub fn parse_ipset_save(save: &str, family: IpFamily) -> BTreeMap<SetId, BTreeSet<String>> {
    let by_name: BTreeMap<String, SetId> = names::SETS.iter().map(|s| (s.id.name(family), s.id)).collect();
    let mut out: BTreeMap<SetId, BTreeSet<String>> = BTreeMap::new();
    for line in save.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("add") {
            continue;
        }
        if let (Some(set), Some(member)) = (words.next(), words.next())
            && let Some(id) = by_name.get(set)
        {
            out.entry(*id).or_default().insert(member.to_string());
        }
    }
    out
}

/// The nat and filter tables of one family as one `iptables-restore
/// --noflush` input: every owned chain declared (so rewritten whole),
/// `jumps` (missing jumps from built-in chains) inserted first.
pub fn render_iptables(opts: &RuleOpts, sets: &FamilySets, jumps: &[names::Jump]) -> String {
    let mut nat: Vec<String> = Vec::new();
    let mut filter: Vec<String> = Vec::new();
    let mark = format!("{:#x}", opts.masquerade_mark);
    let set = |id: SetId| id.name(opts.family);
    let comment = |id: SetId| format!("-m comment --comment \"{}\"", id.info().comment);
    let lo = match opts.family {
        IpFamily::V4 => "127.0.0.0/8",
        IpFamily::V6 => "::1/128",
    };
    nat.push(format!("-A KUBE-SERVICES -s {lo} -j RETURN"));
    // kube-proxy's ipsetWithIptablesChain, in its order.
    let set_rules: [(SetId, bool, &str, &str, &str, &str); 12] = [
        (
            SetId::LoopBack,
            true,
            "KUBE-POSTROUTING",
            "MASQUERADE",
            "dst,dst,src",
            "",
        ),
        (
            SetId::LoadBalancer,
            true,
            "KUBE-SERVICES",
            "KUBE-LOAD-BALANCER",
            "dst,dst",
            "",
        ),
        (
            SetId::LoadBalancerLocal,
            true,
            "KUBE-LOAD-BALANCER",
            "RETURN",
            "dst,dst",
            "",
        ),
        (SetId::NodePortLocalTcp, true, "KUBE-NODE-PORT", "RETURN", "dst", "tcp"),
        (
            SetId::NodePortTcp,
            true,
            "KUBE-NODE-PORT",
            "KUBE-MARK-MASQ",
            "dst",
            "tcp",
        ),
        (SetId::NodePortLocalUdp, true, "KUBE-NODE-PORT", "RETURN", "dst", "udp"),
        (
            SetId::NodePortUdp,
            true,
            "KUBE-NODE-PORT",
            "KUBE-MARK-MASQ",
            "dst",
            "udp",
        ),
        (
            SetId::NodePortLocalSctp,
            true,
            "KUBE-NODE-PORT",
            "RETURN",
            "dst,dst",
            "sctp",
        ),
        (
            SetId::NodePortSctp,
            true,
            "KUBE-NODE-PORT",
            "KUBE-MARK-MASQ",
            "dst,dst",
            "sctp",
        ),
        (
            SetId::LoadBalancerFw,
            false,
            "KUBE-PROXY-FIREWALL",
            "KUBE-SOURCE-RANGES-FIREWALL",
            "dst,dst",
            "",
        ),
        (
            SetId::LoadBalancerSourceCidr,
            false,
            "KUBE-SOURCE-RANGES-FIREWALL",
            "RETURN",
            "dst,dst,src",
            "",
        ),
        (
            SetId::LoadBalancerSourceIp,
            false,
            "KUBE-SOURCE-RANGES-FIREWALL",
            "RETURN",
            "dst,dst,src",
            "",
        ),
    ];
    for (id, is_nat, from, to, matching, proto) in set_rules {
        if sets.is_empty(id) {
            continue;
        }
        let p = if proto.is_empty() {
            String::new()
        } else {
            format!(" -p {proto}")
        };
        let rule = format!(
            "-A {from}{p} {} -m set --match-set {} {matching} -j {to}",
            comment(id),
            set(id)
        );
        if is_nat { nat.push(rule) } else { filter.push(rule) }
    }
    if !sets.is_empty(SetId::ClusterIp) {
        let head = format!(
            "-A KUBE-SERVICES {} -m set --match-set {}",
            comment(SetId::ClusterIp),
            set(SetId::ClusterIp)
        );
        nat.push(match (opts.masquerade_all, opts.cluster_cidr) {
            (true, _) => format!("{head} dst,dst -j KUBE-MARK-MASQ"),
            (false, Some(cidr)) => format!("{head} dst,dst ! -s {cidr} -j KUBE-MARK-MASQ"),
            // Node traffic to a VIP leaves with the VIP as source.
            (false, None) => format!("{head} src,dst -j KUBE-MARK-MASQ"),
        });
    }
    for id in [SetId::ExternalIp, SetId::ExternalIpLocal] {
        if sets.is_empty(id) {
            continue;
        }
        let head = format!(
            "-A KUBE-SERVICES {} -m set --match-set {} dst,dst",
            comment(id),
            set(id)
        );
        if id == SetId::ExternalIp {
            nat.push(format!("{head} -j KUBE-MARK-MASQ"));
        }
        // From off the node (not a bridge port, not a local source), or to a local address.
        nat.push(format!(
            "{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT"
        ));
        nat.push(format!("{head} -m addrtype --dst-type LOCAL -j ACCEPT"));
    }
    nat.push("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT".into());
    nat.push("-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ".into());
    filter.push("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP".into());
    for (ip, proto, port) in &sets.lb_no_node_access {
        filter.push(format!(
            "-A KUBE-IPVS-OUT-FILTER -s {ip} -m ipvs --vaddr {ip} --vproto {proto} --vport {port} -j DROP"
        ));
    }
    for id in [SetId::ClusterIp, SetId::LoadBalancer] {
        if !sets.is_empty(id) {
            nat.push(format!(
                "-A KUBE-SERVICES -m set --match-set {} dst,dst -j ACCEPT",
                set(id)
            ));
        }
    }
    filter.push(format!(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
    ));
    filter.push(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            .into(),
    );
    filter.push(format!(
        "-A KUBE-NODE-PORT {} -m set --match-set {} dst -j ACCEPT",
        comment(SetId::HealthCheckNodePort),
        set(SetId::HealthCheckNodePort)
    ));
    // No local endpoint: internal traffic dropped from everyone (the node's
    // own in KUBE-IPVS-OUT-FILTER), external traffic from everyone but pods
    // and the node.
    for (ip, proto, port, external, name) in &sets.drops {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        let head =
            format!("-m comment --comment \"{name} has no local endpoints\" -d {ip}/{len} -p {proto} --dport {port}");
        if *external {
            let pods = opts.cluster_cidr.map(|c| format!(" ! -s {c}")).unwrap_or_default();
            filter.push(format!(
                "-A KUBE-IPVS-FILTER {head}{pods} -m addrtype ! --src-type LOCAL -j DROP"
            ));
        } else {
            filter.push(format!("-A KUBE-IPVS-FILTER {head} -j DROP"));
            filter.push(format!("-A KUBE-IPVS-OUT-FILTER {head} -j DROP"));
        }
    }
    // No access to the node's own ports through a service address (kubernetes#72236).
    for (id, matching) in [
        (SetId::LoadBalancer, "dst,dst"),
        (SetId::ClusterIp, "dst,dst"),
        (SetId::ExternalIp, "dst,dst"),
        (SetId::ExternalIpLocal, "dst,dst"),
        (SetId::HealthCheckNodePort, "dst"),
    ] {
        filter.push(format!(
            "-A KUBE-IPVS-FILTER -m set --match-set {} {matching} -j RETURN",
            set(id)
        ));
    }
    filter.push(format!(
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set {} dst -j REJECT",
        set(SetId::IpvsIps)
    ));
    nat.push(format!("-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN"));
    nat.push(format!("-A KUBE-POSTROUTING -j MARK --xor-mark {mark}"));
    nat.push(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
            .into(),
    );
    nat.push(format!("-A KUBE-MARK-MASQ -j MARK --or-mark {mark}"));

    let mut out = String::new();
    for (table, chains, rules) in [
        ("filter", names::FILTER_CHAINS, &filter),
        ("nat", names::NAT_CHAINS, &nat),
    ] {
        let _ = writeln!(out, "*{table}");
        for c in chains {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for (_, from, to, text) in jumps.iter().filter(|j| j.0 == table) {
            let _ = writeln!(out, "-I {from} 1 -m comment --comment \"{text}\" -j {to}");
        }
        for r in rules {
            let _ = writeln!(out, "{r}");
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The jumps of [`names::JUMPS`] that `iptables-save` output lacks.
pub fn missing_jumps(save: &str) -> Vec<names::Jump> {
    let mut table = "";
    let mut present: BTreeSet<(String, String, String)> = BTreeSet::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
            continue;
        }
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let chain = words.next().unwrap_or_default();
        let words: Vec<&str> = words.collect();
        if let Some(i) = words.iter().position(|w| *w == "-j") {
            let to = words.get(i + 1).copied().unwrap_or_default();
            present.insert((table.to_string(), chain.to_string(), to.to_string()));
        }
    }
    names::JUMPS
        .iter()
        .filter(|(t, from, to, _)| !present.contains(&(t.to_string(), from.to_string(), to.to_string())))
        .copied()
        .collect()
}
