//! KEP-6032: localhost NodePorts in nftables mode. nftables cannot DNAT a
//! packet from 127.0.0.1 to a pod (there is no `route_localnet` for it), so
//! a userspace TCP forwarder — the relay engine of userspace mode — listens
//! on `127.0.0.1:<nodePort>` and `[::1]:<nodePort>` instead.
//!
//! ```text
//!  DesiredState ──plan_forwarders (pure, PortPlan external route)──▶ [Forwarder { port, family, TargetSet }]
//!                                                                         │ after each successful nft transaction
//!  LocalhostForwarder::reconcile ── Relay::bind 127.0.0.1 / ::1 : nodePort, set_targets, drop ──▶ relays
//!
//!  UDP / SCTP: filter-input rules (render.rs) reject and count them in named
//!  counters; RejectedCounters reads those counters for the metrics (through
//!  a closure cmd/run.rs hands to src/metrics).
//! ```
//!
//! What is honoured, as the KEP lists it: TCP only; the endpoints of the
//! external route (externalTrafficPolicy Local: this node's endpoints only;
//! trafficDistribution and the terminating fallback are already applied by
//! the model); ClientIP affinity with the service's timeout (every client is
//! 127.0.0.1 / ::1, so affinity pins all of them to one endpoint). A port
//! whose external route has no endpoint gets no listener, so connections are
//! refused by the kernel. A port that cannot be bound (another process has
//! it) is logged and tried again at the next sync; the others go on. The
//! endpoint sees the node's address as the source (the relay connects).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::runtime::Handle;
use tracing::{debug, warn};

use super::names;
use crate::backend::Settings;
use crate::backend::userspace::relay::{self, Relay, TargetSet};
use crate::config::ProxyMode;
use crate::model::{DesiredState, IpFamily, PortPlan, Protocol, ServicePortName};
use crate::sys::Sys;

/// One listener the desired state asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarder {
    pub port: ServicePortName,
    pub family: IpFamily,
    pub node_port: u16,
    pub targets: TargetSet,
}

/// The open localhost listeners; owned by the nftables backend.
#[derive(Debug)]
pub struct LocalhostForwarder {
    handle: Handle,
    relay: relay::Settings,
    listeners: BTreeMap<(ServicePortName, IpFamily), Relay>,
}

/// The listeners of one family after a reconcile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerCount {
    pub open: usize,
    /// Wanted but not opened (bind failed); tried again at the next sync.
    pub failed: usize,
}

/// Packets refused on localhost NodePorts, per family and protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedCount {
    pub family: IpFamily,
    pub protocol: Protocol,
    pub packets: u64,
}

/// Reads the named reject counters of our tables.
#[derive(Clone)]
pub struct RejectedCounters {
    sys: Sys,
}

/// The loopback address of `family`.
pub fn loopback(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// The listeners `desired` asks for: per family, one per TCP service port
/// with a NodePort whose external route has endpoints. Pure.
pub fn plan_forwarders(desired: &DesiredState, settings: &Settings) -> Vec<Forwarder> {
    let mut out = Vec::new();
    for family in IpFamily::ALL {
        let ctx = crate::backend::plan_context(settings, ProxyMode::Nftables, family, &desired.node);
        for state in desired.ports_of(family) {
            let port = &state.port;
            if port.name.protocol != Protocol::Tcp || port.node_port == 0 {
                continue;
            }
            let plan = PortPlan::new(state, &ctx);
            let targets = TargetSet::for_route(&plan, plan.external);
            if targets.endpoints.is_empty() {
                continue;
            }
            out.push(Forwarder {
                port: port.name.clone(),
                family,
                node_port: port.node_port,
                targets,
            });
        }
    }
    out
}

// === impl LocalhostForwarder ===

impl LocalhostForwarder {
    /// Listeners run on `handle`'s runtime.
    pub fn new(handle: Handle, relay: relay::Settings) -> Self {
        Self {
            handle,
            relay,
            listeners: BTreeMap::new(),
        }
    }

    /// Opens, retargets and closes listeners to match `wanted`. Returns, per
    /// family (V4, V6), the listeners open and those that could not be opened.
    pub fn reconcile(&mut self, wanted: &[Forwarder]) -> [ListenerCount; 2] {
        let mut failed = [0usize; 2];
        self.listeners.retain(|(port, family), open| {
            wanted
                .iter()
                .any(|w| w.port == *port && w.family == *family && open.local_addr().port() == w.node_port)
        });
        for w in wanted {
            let key = (w.port.clone(), w.family);
            if let Some(open) = self.listeners.get(&key) {
                if open.targets() != w.targets {
                    open.set_targets(w.targets.clone());
                }
                continue;
            }
            let addr = SocketAddr::new(loopback(w.family), w.node_port);
            match Relay::bind(Protocol::Tcp, addr, w.targets.clone(), self.relay.clone(), &self.handle) {
                Ok(relay) => {
                    debug!(service_port = %w.port, listen = %addr, "Localhost NodePort listener open");
                    self.listeners.insert(key, relay);
                }
                Err(e) => {
                    failed[usize::from(w.family == IpFamily::V6)] += 1;
                    warn!(service_port = %w.port, listen = %addr, error = %e,
                        "Cannot open localhost NodePort listener; retrying at the next sync");
                }
            }
        }
        let count = |f: IpFamily| ListenerCount {
            open: self.listeners.keys().filter(|(_, fam)| *fam == f).count(),
            failed: failed[usize::from(f == IpFamily::V6)],
        };
        [count(IpFamily::V4), count(IpFamily::V6)]
    }

    /// Closes every listener.
    pub fn close_all(&mut self) {
        self.listeners.clear();
    }
}

// === impl RejectedCounters ===

impl RejectedCounters {
    pub fn new(sys: Sys) -> Self {
        Self { sys }
    }

    /// The counters as the kernel has them now; a family or counter that
    /// cannot be read (no table yet, no IPv6) is left out.
    pub fn read(&self) -> Vec<RejectedCount> {
        let mut out = Vec::new();
        for family in IpFamily::ALL {
            for (protocol, counter) in names::LOCALHOST_REJECTED {
                let args = ["list", "counter", names::family(family), names::TABLE, counter];
                let Ok(listing) = self.sys.runner.run(super::NFT, &args, None) else {
                    continue;
                };
                if listing.status != 0 {
                    continue;
                }
                if let Some(packets) = counter_packets(&listing.stdout) {
                    out.push(RejectedCount {
                        family,
                        protocol,
                        packets,
                    });
                }
            }
        }
        out
    }
}

/// The packet count of an `nft list counter` listing (`packets N bytes M`).
fn counter_packets(listing: &str) -> Option<u64> {
    let mut words = listing.split_whitespace();
    words.find(|w| *w == "packets")?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodePortAddresses;
    use crate::model::builders::{mk_service, mk_slice};
    use crate::model::{Model, SelectionOptions};

    fn settings() -> Settings {
        Settings {
            masquerade_mark: 0x4000,
            masquerade_all: false,
            cluster_cidrs: Vec::new(),
            nodeport_addresses: NodePortAddresses::All,
            localhost_nodeports: false,
            conntrack_liberal: false,
        }
    }

    fn svc(name: &str, proto: &str, node_port: i32, local: bool) -> k8s_openapi::api::core::v1::Service {
        let b = mk_service("default", name)
            .cluster_ip("198.19.0.10")
            .type_("NodePort")
            .node_port("p", 80, proto, node_port)
            .target_port(8080);
        if local {
            b.external_traffic_policy_local().build()
        } else {
            b.build()
        }
    }

    fn slice(name: &str, proto: &str, eps: &[(&str, &str)]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
        eps.iter()
            .fold(
                mk_slice("default", &format!("{name}-1"), name).port("p", 8080, proto),
                |b, (ip, node)| b.endpoint_on(ip, node),
            )
            .build()
    }

    #[test]
    fn counter_packets_parses_an_nft_listing() {
        let listing =
            "table ip kproxy {\n\tcounter localhost-nodeport-rejected-udp {\n\t\tpackets 7 bytes 364\n\t}\n}\n";
        assert_eq!(counter_packets(listing), Some(7));
        assert_eq!(counter_packets("table ip kproxy {\n}\n"), None);
    }

    #[test]
    fn only_tcp_nodeports_with_external_endpoints_get_a_listener() {
        let mut m = Model::new("node-a", SelectionOptions::default());
        m.apply_service(&svc("web", "TCP", 30100, false));
        m.apply_service(&svc("dns", "UDP", 30101, false));
        m.apply_service(&svc("empty", "TCP", 30102, false));
        m.apply_service(&svc("local", "TCP", 30103, true));
        m.apply_service(&svc("local-here", "TCP", 30104, true));
        m.apply_slice(&slice("web", "TCP", &[("198.18.1.10", "node-b")]));
        m.apply_slice(&slice("dns", "UDP", &[("198.18.1.11", "node-b")]));
        // externalTrafficPolicy Local: only this node's endpoints count.
        m.apply_slice(&slice("local", "TCP", &[("198.18.1.12", "node-b")]));
        m.apply_slice(&slice(
            "local-here",
            "TCP",
            &[("198.18.1.13", "node-b"), ("198.18.1.14", "node-a")],
        ));
        let plans = plan_forwarders(&m.desired(), &settings());
        let mut got: Vec<(u16, Vec<SocketAddr>)> = plans
            .iter()
            .map(|f| (f.node_port, f.targets.endpoints.clone()))
            .collect();
        got.sort();
        let ep = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(
            got,
            vec![
                (30100, vec![ep("198.18.1.10:8080")]),
                (30104, vec![ep("198.18.1.14:8080")])
            ]
        );
        assert!(plans.iter().all(|f| f.family == IpFamily::V4));
    }

    #[test]
    fn udp_nodeports_are_listed_and_rejected_on_loopback_only_when_relayed() {
        let mut m = Model::new("node-a", SelectionOptions::default());
        m.apply_service(&svc("dns", "UDP", 30101, false));
        m.apply_slice(&slice("dns", "UDP", &[("198.18.1.11", "node-b")]));
        let desired = m.desired();
        let mut opts = settings().render_opts(IpFamily::V4, &desired.node, &[], false);
        let off = super::super::render::render_full(&desired, &opts);
        assert!(!off.contains("localhost-nodeport-rejected"), "{off}");
        assert!(!off.contains("udp . 30101 }"), "{off}");
        opts.localhost_relayed = true;
        let on = super::super::render::render_full(&desired, &opts);
        assert!(
            on.contains("add counter ip kproxy localhost-nodeport-rejected-udp"),
            "{on}"
        );
        assert!(
            on.contains(
                "add rule ip kproxy filter-input ip daddr 127.0.0.0/8 meta l4proto udp meta l4proto . th dport \
                 @localhost-nodeports counter name \"localhost-nodeport-rejected-udp\" reject"
            ),
            "{on}"
        );
        assert!(
            on.contains("add element ip kproxy localhost-nodeports { udp . 30101 }"),
            "{on}"
        );
    }
}
