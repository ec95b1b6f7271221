//! Pure: the desired state → the listeners userspace mode opens (one per
//! service port, family and traffic class, with its target set from the
//! model's policy plan) and the steering rules that send VIP traffic to
//! them.
//!
//! ```text
//!  DesiredState ──PortPlan (per family)──▶ ListenerPlan { key, VIPs, NodePort, TargetSet }
//!                                              │  + the port each listener got
//!                                              ▼
//!                      steering rules: KUBE-PORTALS-CONTAINER (REDIRECT), KUBE-PORTALS-HOST (DNAT)
//! ```
//!
//! Internal traffic (the ClusterIP) and external traffic (NodePorts,
//! externalIPs, load-balancer IPs) may go to different endpoints (traffic
//! policies), so each has its own listener.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::names::{self, JUMP_COMMENT, JUMPS, Jump, TABLES, Table};
use super::relay::{NoEndpoints, TargetSet};
use crate::backend::settings::{NodePortTargets, Settings};
use crate::config::ProxyMode;
use crate::model::{DesiredState, IpFamily, PortPlan, Protocol, Route, ServicePortName};

/// Which traffic of a service port a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// To the ClusterIP.
    Internal,
    /// To NodePorts, externalIPs and load-balancer IPs.
    External,
}

/// Identifies one listener.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerKey {
    pub port: ServicePortName,
    pub family: IpFamily,
    pub class: Class,
}

/// A listener the desired state asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerPlan {
    pub key: ListenerKey,
    pub protocol: Protocol,
    /// The service port (`spec.ports[].port`).
    pub service_port: u16,
    /// Addresses steered to the listener with `service_port`: the ClusterIP
    /// (internal) or the externalIPs (external).
    pub vips: Vec<IpAddr>,
    /// Load-balancer IPs steered to it (external listeners).
    pub load_balancer_ips: Vec<IpAddr>,
    /// Sources admitted to the load-balancer IPs (`loadBalancerSourceRanges`
    /// and the node allowance); empty: every source.
    pub source_ranges: Vec<String>,
    /// The NodePort steered to it (external listeners; 0 for none).
    pub node_port: u16,
    pub targets: TargetSet,
}

/// The steering rules of one family, per table (iptables-restore lines
/// without the table header).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Steering {
    pub filter: Vec<String>,
    pub nat: Vec<String>,
}

/// Everything the desired state asks of userspace mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plans {
    pub listeners: Vec<ListenerPlan>,
    /// SCTP service ports: not relayed.
    pub sctp: Vec<ServicePortName>,
    /// Per family (V4, V6): service ports whose internal / external traffic
    /// is dropped for lack of a local endpoint, for the metrics.
    pub no_local: [(usize, usize); 2],
}

/// Where the steering rules of one family send traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SteeringOpts {
    pub family: IpFamily,
    /// The node address the node's own traffic is DNATed to; None:
    /// REDIRECT (to the loopback address) instead.
    pub host_target: Option<IpAddr>,
    pub nodeports: NodePortTargets,
}

// === impl Class ===

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Internal => "internal",
            Class::External => "external",
        }
    }
}

/// The listeners `desired` asks for, in key order.
pub fn plan_listeners(desired: &DesiredState, settings: &Settings) -> Plans {
    let mut plans = Plans::default();
    for family in IpFamily::ALL {
        let ctx = crate::backend::plan_context(settings, ProxyMode::Userspace, family, &desired.node);
        for state in desired.ports_of(family) {
            let port = &state.port;
            if port.name.protocol == Protocol::Sctp {
                if !plans.sctp.contains(&port.name) {
                    plans.sctp.push(port.name.clone());
                }
                continue;
            }
            let plan = PortPlan::new(state, &ctx);
            let no_local = plan.no_local();
            let counts = &mut plans.no_local[usize::from(family == IpFamily::V6)];
            counts.0 += usize::from(no_local.internal);
            counts.1 += usize::from(no_local.external);
            let of_family = |ips: &[IpAddr]| -> Vec<IpAddr> {
                ips.iter().copied().filter(|ip| IpFamily::of(ip) == family).collect()
            };
            let listener = |class, vips, node_port, route| ListenerPlan {
                key: ListenerKey {
                    port: port.name.clone(),
                    family,
                    class,
                },
                protocol: port.name.protocol,
                service_port: port.port,
                vips,
                load_balancer_ips: Vec::new(),
                source_ranges: Vec::new(),
                node_port,
                targets: target_set(&plan, route),
            };
            let cluster = of_family(&port.cluster_ips);
            if !cluster.is_empty() {
                plans
                    .listeners
                    .push(listener(Class::Internal, cluster, 0, plan.internal));
            }
            let external = of_family(&port.external_ips);
            let load_balancer_ips = of_family(&port.load_balancer_ips);
            if !external.is_empty() || !load_balancer_ips.is_empty() || port.node_port != 0 {
                let source_ranges = plan.firewall.as_ref().map_or_else(Vec::new, |fw| {
                    let ranges = fw.source_ranges.iter().map(ToString::to_string);
                    ranges.chain(fw.node_allowance.iter().map(|ip| host_net(*ip))).collect()
                });
                plans.listeners.push(ListenerPlan {
                    load_balancer_ips,
                    source_ranges,
                    ..listener(Class::External, external, port.node_port, plan.external)
                });
            }
        }
    }
    plans.listeners.sort_by(|a, b| a.key.cmp(&b.key));
    plans
}

/// The target set of one traffic class: its route's endpoints, or none
/// with the route's refusal.
fn target_set(plan: &PortPlan<'_>, route: Route) -> TargetSet {
    let endpoints = match route {
        Route::Cluster => plan.cluster,
        Route::Local => plan.local,
        Route::Drop | Route::Reject => &[],
    };
    TargetSet {
        endpoints: endpoints.iter().map(|e| SocketAddr::new(e.ip, e.port)).collect(),
        affinity: plan.affinity.map(|s| Duration::from_secs(u64::from(s))),
        no_endpoints: match route {
            Route::Drop => NoEndpoints::Drop,
            _ => NoEndpoints::Reset,
        },
    }
}

/// The steering rules for the listeners of one family, each with the port
/// it listens on.
pub fn render_steering(opts: &SteeringOpts, listeners: &[(&ListenerPlan, u16)]) -> Steering {
    let mut container = Vec::new();
    let mut host = Vec::new();
    let mut nodeports = Vec::new();
    let mut filter = Vec::new();
    for (l, listen) in listeners.iter().filter(|(l, _)| l.key.family == opts.family) {
        let proto = l.protocol.as_lower();
        let head = format!("-m comment --comment \"{}\" -p {proto} -m {proto}", l.key.port);
        let mut steer = |m: String| {
            container.push(format!("-A {} {m} {}", names::PORTALS_CONTAINER, redirect(*listen)));
            host.push(format!("-A {} {m} {}", names::PORTALS_HOST, to_listener(opts, *listen)));
        };
        for vip in &l.vips {
            steer(format!("{head} -d {} --dport {}", host_net(*vip), l.service_port));
        }
        for lb in &l.load_balancer_ips {
            let dst = format!("-d {} --dport {}", host_net(*lb), l.service_port);
            if l.source_ranges.is_empty() {
                steer(format!("{head} {dst}"));
                continue;
            }
            for src in &l.source_ranges {
                steer(format!("{head} -s {src} {dst}"));
            }
            // What was not redirected came from elsewhere.
            let comment = format!("{} traffic not accepted by the source ranges", l.key.port);
            filter.push(format!(
                "-A {} -m comment --comment \"{comment}\" -p {proto} -m {proto} {dst} -j DROP",
                names::PORTALS_FIREWALL
            ));
        }
        if l.node_port != 0 {
            let dsts: Vec<String> = match &opts.nodeports {
                NodePortTargets::AllLocal => vec!["-m addrtype --dst-type LOCAL".to_string()],
                NodePortTargets::Ips(ips) => ips
                    .iter()
                    .filter(|ip| IpFamily::of(ip) == opts.family)
                    .map(|ip| format!("-d {}", host_net(*ip)))
                    .collect(),
            };
            for dst in dsts {
                let m = format!("{head} {dst} --dport {}", l.node_port);
                nodeports.push((
                    format!("-A {} {m} {}", names::PORTALS_CONTAINER, redirect(*listen)),
                    format!("-A {} {m} {}", names::PORTALS_HOST, to_listener(opts, *listen)),
                ));
            }
        }
    }
    // NodePorts last: an externalIP that is also a node address keeps its own rule.
    for (c, h) in nodeports {
        container.push(c);
        host.push(h);
    }
    container.extend(host);
    Steering { filter, nat: container }
}

/// The iptables-restore input that makes our chains hold exactly
/// `steering`, inserting the jumps listed in `missing_jumps`.
pub fn restore_input(steering: &Steering, missing_jumps: &[Jump]) -> String {
    let mut text = String::new();
    for table in TABLES {
        let _ = writeln!(text, "*{}", table.as_str());
        for chain in table.chains() {
            let _ = writeln!(text, ":{chain} - [0:0]");
        }
        for j in missing_jumps.iter().filter(|j| j.table == table) {
            let _ = writeln!(
                text,
                "-I {} -m comment --comment \"{JUMP_COMMENT}\" -j {}",
                j.from, j.to
            );
        }
        let rules = match table {
            Table::Filter => &steering.filter,
            Table::Nat => &steering.nat,
        };
        for r in rules {
            text.push_str(r);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
    }
    text
}

/// Our jumps found in an `iptables-save` listing, with their tables.
pub fn saved_jumps(save: &str) -> Vec<(Table, &str)> {
    let mut table = None;
    let mut found = Vec::new();
    for line in save.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = TABLES.into_iter().find(|t| t.as_str() == name);
            continue;
        }
        let Some(t) = table else { continue };
        let ours = JUMPS.iter().any(|j| {
            j.table == t && line.starts_with(&format!("-A {} ", j.from)) && line.contains(&format!("-j {}", j.to))
        });
        if ours {
            found.push((t, line));
        }
    }
    found
}

/// The iptables-restore input that deletes every jump to our chains found
/// in `save` (whatever its comment), then the chains; None when `save`
/// holds none of our chains.
pub fn removal_input(save: &str) -> Option<String> {
    let ours = save.lines().any(|l| {
        l.strip_prefix(':')
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|chain| Table::of(chain).is_some())
    });
    if !ours {
        return None;
    }
    let jumps = saved_jumps(save);
    let mut text = String::new();
    for table in TABLES {
        let _ = writeln!(text, "*{}", table.as_str());
        for (_, line) in jumps.iter().filter(|(t, _)| *t == table) {
            text.push_str(&line.replacen("-A ", "-D ", 1));
            text.push('\n');
        }
        for chain in table.chains() {
            let _ = writeln!(text, ":{chain} - [0:0]");
        }
        for chain in table.chains() {
            let _ = writeln!(text, "-X {chain}");
        }
        text.push_str("COMMIT\n");
    }
    Some(text)
}

/// What `render` prints: the listeners, then per family the steering
/// rules as iptables-restore input. `port_of` gives a listener's port when
/// it is open (0 stands for one not open yet).
pub fn render_text(plans: &Plans, steering: &[SteeringOpts], port_of: &dyn Fn(&ListenerKey) -> Option<u16>) -> String {
    let mut out = String::from("# userspace mode: service port → listener → endpoints\n");
    for l in &plans.listeners {
        let port = port_of(&l.key).unwrap_or(0);
        let eps: Vec<String> = l.targets.endpoints.iter().map(ToString::to_string).collect();
        let eps = if eps.is_empty() {
            match l.targets.no_endpoints {
                NoEndpoints::Reset => "(none: reset)".to_string(),
                NoEndpoints::Drop => "(none: drop)".to_string(),
            }
        } else {
            eps.join(", ")
        };
        let affinity = l
            .targets
            .affinity
            .map(|d| format!(" affinity={}s", d.as_secs()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "# {} {} {} {} → {} → {eps}{affinity}",
            l.key.port,
            l.protocol,
            l.key.family,
            l.key.class.as_str(),
            SocketAddr::new(unspecified(l.key.family), port),
        );
    }
    for sctp in &plans.sctp {
        let _ = writeln!(out, "# {sctp} SCTP: not relayed in userspace mode");
    }
    for opts in steering {
        let listeners: Vec<(&ListenerPlan, u16)> = plans
            .listeners
            .iter()
            .map(|l| (l, port_of(&l.key).unwrap_or(0)))
            .collect();
        let _ = writeln!(out, "# steering rules, {} (iptables-restore --noflush)", opts.family);
        out.push_str(&restore_input(&render_steering(opts, &listeners), &JUMPS));
    }
    out
}

pub fn unspecified(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::from([0, 0, 0, 0]),
        IpFamily::V6 => IpAddr::from([0u16; 8]),
    }
}

fn host_net(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn redirect(listen: u16) -> String {
    format!("-j REDIRECT --to-ports {listen}")
}

fn to_listener(opts: &SteeringOpts, listen: u16) -> String {
    match opts.host_target {
        Some(ip) => format!("-j DNAT --to-destination {}", SocketAddr::new(ip, listen)),
        None => redirect(listen),
    }
}
