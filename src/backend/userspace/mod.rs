//! The userspace mode's layer-4 relay: kproxy accepts the connections (and
//! datagrams) of each service port itself and relays them to an endpoint,
//! as kube-proxy's legacy userspace proxier did.
//!
//! ```text
//!            Backend::sync (blocking thread)
//!                    │ Relay::bind / set_targets / drop
//!                    ▼
//!   relay ── one listening socket per service port and address, target set swappable at any time
//!     ├── tcp ── accept → balancer pick → connect (failover) → splice / copy both ways
//!     ├── udp ── session per client → balancer pick → connected socket → replies from the client's address
//!     ├── balancer ── round robin + ClientIP affinity (pure, time injected)
//!     ├── idle ── last-activity tracking for idle timeouts
//!     └── stats ── counters per relay, read by metrics
//! ```
//!
//! The relay opens its own connection to the endpoint, so the endpoint sees
//! the node's address as the source, never the client's (even with
//! `externalTrafficPolicy: Local`). See README.md for the design and the
//! copy benchmark.
//!
//! [`UserspaceBackend`] drives it: at each sync, [`render::plan_listeners`]
//! turns the desired state (through the model's policy plan) into one
//! listener per service port, family and traffic class with its target
//! set; listeners are opened, given new targets or closed to match; then
//! the steering rules ([`render::render_steering`]) are written with one
//! `iptables-restore --noflush` per family when they changed:
//!
//! ```text
//!   nat PREROUTING ─▶ KUBE-PORTALS-CONTAINER: VIP:port / NodePort ─REDIRECT─▶ listener
//!   nat OUTPUT     ─▶ KUBE-PORTALS-HOST:      VIP:port / NodePort ─DNAT node IP:listener port─▶ listener
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use self::names::{JUMPS, Jump};
use super::iptables::Variant;
use super::{Backend, BackendError, FamilyStats, SyncKind, SyncStats, hash_rules};
use crate::config::ProxyMode;
use crate::conntrack::StaleFlow;
use crate::model::{ChangeSet, DesiredState, IpFamily, Protocol, ServicePortName};
use crate::sys::Sys;

pub mod balancer;
mod idle;
pub mod names;
pub mod relay;
pub mod render;
pub mod stats;
mod tcp;
mod udp;

#[cfg(test)]
mod backend_tests;
#[cfg(test)]
mod tests;

pub use balancer::Balancer;
pub use relay::{CONNECT_TIMEOUTS, Clock, CopyMode, NoEndpoints, Relay, RelayError, Settings, SystemClock, TargetSet};
pub use render::{Class, ListenerKey, ListenerPlan, Plans, Steering, SteeringOpts};
pub use stats::{RelayStats, StatsSnapshot};

/// The userspace backend: relays opened and closed from the desired state,
/// steering rules through `iptables-restore`.
pub struct UserspaceBackend {
    sys: Sys,
    settings: crate::backend::Settings,
    relay: relay::Settings,
    handle: Option<Handle>,
    listeners: BTreeMap<ListenerKey, Relay>,
    /// Fingerprint of the steering rules programmed per family (V4, V6);
    /// None: unknown, write them at the next sync.
    programmed: [Option<u64>; 2],
    reported_sctp: BTreeSet<ServicePortName>,
    nofile_raised: bool,
    /// iptables-nft or -legacy, detected at the first use as iptables mode does.
    variant: Option<Variant>,
    /// The port each UDP listener's steering rules last sent traffic to.
    udp_steered: BTreeMap<ListenerKey, u16>,
}

/// What one family's part of a sync wrote.
struct FamilySync {
    rules_written: usize,
    bytes_written: usize,
    family: FamilyStats,
}

// === impl UserspaceBackend ===

impl UserspaceBackend {
    /// `handle` is the runtime the relays run on; without one the backend
    /// can only render and clean up.
    pub fn new(sys: Sys, settings: crate::backend::Settings, relay: relay::Settings, handle: Option<Handle>) -> Self {
        Self {
            sys,
            settings,
            relay,
            handle,
            listeners: BTreeMap::new(),
            programmed: [None, None],
            reported_sctp: BTreeSet::new(),
            nofile_raised: false,
            variant: None,
            udp_steered: BTreeMap::new(),
        }
    }

    /// The open listeners and their addresses.
    pub fn listeners(&self) -> impl Iterator<Item = (&ListenerKey, &Relay)> {
        self.listeners.iter()
    }

    fn raise_nofile_once(&mut self) {
        if std::mem::replace(&mut self.nofile_raised, true) {
            return;
        }
        match crate::sys::raise_nofile_limit() {
            Ok(l) => info!(
                before = l.before,
                after = l.after,
                "Raised the open-file limit for the relay"
            ),
            Err(e) => warn!(error = %e, "Cannot raise the open-file limit"),
        }
    }

    fn report_sctp(&mut self, sctp: &[ServicePortName]) {
        for name in sctp {
            if self.reported_sctp.insert(name.clone()) {
                warn!(service_port = %name, "SCTP is not relayed in userspace mode; skipping the port");
            }
        }
        self.reported_sctp.retain(|n| sctp.contains(n));
    }

    /// Opens, updates and closes listeners; returns how many were opened or
    /// given new targets. A listener that cannot be opened is reported and
    /// tried again at the next sync; the others go on.
    fn reconcile(&mut self, plans: &Plans, handle: &Handle) -> usize {
        let wanted: BTreeSet<&ListenerKey> = plans.listeners.iter().map(|l| &l.key).collect();
        self.listeners.retain(|k, _| wanted.contains(k));
        let mut written = 0;
        for l in &plans.listeners {
            if let Some(open) = self.listeners.get(&l.key) {
                if open.targets() != l.targets {
                    open.set_targets(l.targets.clone());
                    written += 1;
                }
                continue;
            }
            let addr = SocketAddr::new(render::unspecified(l.key.family), 0);
            match Relay::bind(l.protocol, addr, l.targets.clone(), self.relay.clone(), handle) {
                Ok(relay) => {
                    debug!(service_port = %l.key.port, family = %l.key.family, class = l.key.class.as_str(),
                        listen = %relay.local_addr(), "Listener open");
                    self.listeners.insert(l.key.clone(), relay);
                    written += 1;
                }
                Err(e) => warn!(service_port = %l.key.port, family = %l.key.family,
                    class = l.key.class.as_str(), error = %e, "Cannot open listener; retrying at the next sync"),
            }
        }
        written
    }

    fn steering_opts(&self, family: IpFamily, desired: &DesiredState, local_addrs: &[IpAddr]) -> SteeringOpts {
        let opts = self.settings.render_opts(family, &desired.node, local_addrs, false);
        SteeringOpts {
            family,
            host_target: opts.node_ips.first().copied(),
            nodeports: opts.nodeports,
        }
    }

    fn listen_ports<'p>(&self, plans: &'p Plans) -> Vec<(&'p ListenerPlan, u16)> {
        plans
            .listeners
            .iter()
            .filter_map(|l| Some((l, self.listeners.get(&l.key)?.local_addr().port())))
            .collect()
    }

    fn detect_variant(&mut self) -> Variant {
        Variant::detect_once(&mut self.variant, self.sys.runner.as_ref())
    }

    fn run_tool(
        &self,
        family: IpFamily,
        tool: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<String, BackendError> {
        let variant = self.variant.unwrap_or(Variant::Plain);
        variant.run(&self.sys, family, tool, args, stdin)
    }

    /// The jumps to our chains not yet in the tables of `family`.
    fn missing_jumps(&self, family: IpFamily) -> Result<Vec<Jump>, BackendError> {
        let save = self.run_tool(family, "iptables-save", &[], None)?;
        let present = render::saved_jumps(&save);
        let is_present = |j: &Jump| {
            present.iter().any(|(t, l)| {
                *t == j.table && l.starts_with(&format!("-A {} ", j.from)) && l.contains(&format!("-j {}", j.to))
            })
        };
        Ok(JUMPS.iter().filter(|j| !is_present(j)).copied().collect())
    }

    /// Writes the steering rules of `family` when they changed (always on
    /// a Full sync). Returns (rules, bytes) written.
    fn steer(&mut self, family: IpFamily, steering: &Steering, kind: SyncKind) -> Result<(usize, usize), BackendError> {
        let idx = usize::from(family == IpFamily::V6);
        let rules: Vec<String> = steering.filter.iter().chain(&steering.nat).cloned().collect();
        let hash = hash_rules(&rules);
        if kind == SyncKind::Partial && self.programmed[idx] == Some(hash) {
            return Ok((0, 0));
        }
        self.programmed[idx] = None;
        let missing = match self.missing_jumps(family) {
            Ok(m) => m,
            // No IPv6 tools and nothing to steer for IPv6: nothing to do.
            Err(e) if family == IpFamily::V6 && rules.is_empty() => {
                debug!(error = %e.chain(), "No IPv6 steering rules and no usable ip6tables");
                return Ok((0, 0));
            }
            Err(e) => return Err(e),
        };
        let text = render::restore_input(steering, &missing);
        self.run_tool(
            family,
            "iptables-restore",
            &["-w", "5", "--noflush"],
            Some(text.as_bytes()),
        )?;
        self.programmed[idx] = Some(hash);
        Ok((rules.len(), text.len()))
    }

    /// Steers one family to the open listeners and moves its redirected
    /// UDP flows to them.
    fn sync_family(
        &mut self,
        family: IpFamily,
        desired: &DesiredState,
        plans: &Plans,
        local_addrs: &[IpAddr],
        kind: SyncKind,
    ) -> Result<FamilySync, BackendError> {
        let started = std::time::Instant::now();
        let opts = self.steering_opts(family, desired, local_addrs);
        let steering = render::render_steering(&opts, &self.listen_ports(plans));
        let (rules_written, bytes_written) = self.steer(family, &steering, kind)?;
        let stale = self.redirected_udp_flows(family, plans);
        if !stale.is_empty() {
            let cleaned = crate::conntrack::Cleaner::new(self.sys.clone()).delete(&stale);
            debug!(family = %family, flows = stale.len(), deleted = cleaned.deleted_entries,
                "Deleted UDP conntrack entries redirected to old listener ports");
        }
        let (no_local_internal, no_local_external) = plans.no_local[usize::from(family == IpFamily::V6)];
        Ok(FamilySync {
            rules_written,
            bytes_written,
            family: FamilyStats {
                family,
                elapsed: started.elapsed(),
                no_local_internal,
                no_local_external,
                ..FamilyStats::default()
            },
        })
    }

    /// UDP flows whose conntrack entries still redirect to a listener port
    /// the rules no longer use (a listener re-opened, e.g. after a restart):
    /// UDP has no close, so such an entry would keep sending a client's
    /// datagrams to a closed port. Records the ports now steered to.
    fn redirected_udp_flows(&mut self, family: IpFamily, plans: &Plans) -> Vec<StaleFlow> {
        let mut flows = Vec::new();
        let udp = |l: &&ListenerPlan| l.key.family == family && l.protocol == Protocol::Udp;
        for l in plans.listeners.iter().filter(udp) {
            let Some(port) = self.listeners.get(&l.key).map(|r| r.local_addr().port()) else {
                continue;
            };
            if self.udp_steered.insert(l.key.clone(), port) == Some(port) {
                continue;
            }
            for vip in l.vips.iter().chain(&l.load_balancer_ips) {
                flows.push(StaleFlow::Vip {
                    protocol: Protocol::Udp,
                    vip: *vip,
                });
            }
            if l.node_port != 0 {
                flows.push(StaleFlow::NodePort {
                    protocol: Protocol::Udp,
                    port: l.node_port,
                    family,
                });
            }
        }
        let open: BTreeSet<&ListenerKey> = plans.listeners.iter().filter(udp).map(|l| &l.key).collect();
        self.udp_steered.retain(|k, _| k.family != family || open.contains(k));
        flows
    }

    fn cleanup_family(&self, family: IpFamily) -> Result<(), BackendError> {
        let Ok(save) = self.run_tool(family, "iptables-save", &[], None) else {
            return Ok(()); // no tools for this family: nothing of ours there
        };
        let Some(text) = render::removal_input(&save) else {
            return Ok(());
        };
        self.run_tool(
            family,
            "iptables-restore",
            &["-w", "5", "--noflush"],
            Some(text.as_bytes()),
        )?;
        info!(family = %family, "Removed userspace-mode steering rules");
        Ok(())
    }
}

impl Backend for UserspaceBackend {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Userspace
    }

    fn sync(
        &mut self,
        desired: &DesiredState,
        _changes: &ChangeSet,
        kind: SyncKind,
    ) -> Result<SyncStats, BackendError> {
        let handle = self.handle.clone().ok_or_else(|| {
            BackendError::Unavailable(ProxyMode::Userspace, "no tokio runtime to run the relay on".into())
        })?;
        self.raise_nofile_once();
        self.detect_variant();
        let plans = render::plan_listeners(desired, &self.settings);
        self.report_sctp(&plans.sctp);
        let ports_written = self.reconcile(&plans, &handle);
        let local_addrs = crate::backend::local_addresses(&self.settings, &self.sys);
        let mut stats = SyncStats {
            ports_written,
            ports_total: self.listeners.len(),
            ..SyncStats::default()
        };
        let rendered: Vec<IpFamily> = crate::backend::rendered_families(desired).collect();
        for family in IpFamily::ALL {
            let family_stats = self.sync_family(family, desired, &plans, &local_addrs, kind)?;
            stats.rules_written += family_stats.rules_written;
            stats.bytes_written += family_stats.bytes_written;
            if rendered.contains(&family) {
                stats.families.push(family_stats.family);
            }
        }
        Ok(stats)
    }

    fn render(&self, desired: &DesiredState) -> String {
        let plans = render::plan_listeners(desired, &self.settings);
        let steering: Vec<SteeringOpts> = crate::backend::rendered_families(desired)
            .map(|family| self.steering_opts(family, desired, &[]))
            .collect();
        let port_of = |k: &ListenerKey| self.listeners.get(k).map(|r| r.local_addr().port());
        render::render_text(&plans, &steering, &port_of)
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        self.listeners.clear();
        self.programmed = [None, None];
        self.udp_steered.clear();
        self.detect_variant();
        for family in IpFamily::ALL {
            self.cleanup_family(family)?;
        }
        Ok(())
    }
}
