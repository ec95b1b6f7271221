//! The ipvs mode: kube-proxy's IPVS datapath, programmed over netlink.
//!
//! ```text
//!  DesiredState ──render::render_ruleset──▶ IpvsRuleset (virtual servers, real servers, kube-ipvs0 addresses)
//!                                               │ diff against
//!        Full sync:    the kernel, as listed (only what kproxy owns) ──┐
//!        Partial sync: what the last sync programmed ─────────────────┤
//!                                                                      ▼
//!                 sys::Ipvs (generic netlink) + sys::Links (rtnetlink): only the changed objects
//! ```
//!
//! Status (#10): virtual servers for ClusterIPs, externalIPs, load-balancer
//! IPs and NodePorts with masquerading real servers, scheduler and
//! persistence, and the `kube-ipvs0` addresses are rendered and applied
//! incrementally; kube-proxy's ipsets (one `ipset restore` of the member
//! diff) and iptables chains (one `iptables-restore --noflush` per family,
//! only when they change; see [`rules`]) carry masquerading, hairpin,
//! NodePorts and source ranges; kube-proxy's sysctls and the configured
//! timeouts are set at the first sync; `excludeCIDRs` ranges are never
//! touched. A real server leaving a TCP service drains first (weight 0
//! until its connections are gone; see [`keep_draining`]). Proven against a
//! real IPVS kernel in a VM (`tests/ipvs_vm.rs`): the mode-generic packet
//! suite, the backend's own checks and the daemon end to end.
//!
//! Ownership: kproxy changes only virtual servers it programs: those on an
//! address bound to `kube-ipvs0` (which holds only service addresses), those
//! it wants, and those it programmed earlier. Other software's virtual
//! servers (keepalived, other balancers) are never touched, and the IPVS
//! table is never flushed. `--cleanup` removes the virtual servers on
//! `kube-ipvs0` addresses, the interface and kube-proxy's own ipsets.

pub mod names;
pub mod render;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use tracing::{debug, info};

pub use names::DUMMY_INTERFACE;
pub use render::{DesiredService, FamilyInput, IpvsOpts, IpvsRuleset};

use super::iptables::Variant;
use super::{Backend, BackendError, NodePortTargets, Settings, SyncKind, SyncStats};
use crate::config::ProxyMode;
use crate::model::{ChangeSet, DesiredState, FirewallScope, IpFamily};
use crate::sys::ipvs::{RealServer, ServiceKey, VirtualServer};
use crate::sys::{Ipvs, IpvsError, LinkError, Links, NetlinkIpvs, RtnlLinks, Sys};
use names::SetId;
use rules::{FamilySets, RuleOpts};

/// The kernel clients the mode programs through.
#[derive(Clone)]
pub struct Clients {
    pub ipvs: Arc<dyn Ipvs>,
    pub links: Arc<dyn Links>,
}

/// Real servers of one virtual server, by address and port.
type Reals = BTreeMap<(IpAddr, u16), RealServer>;

/// What kproxy owns in the kernel (or wants there): virtual servers with
/// their real servers, and the addresses on `kube-ipvs0`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KernelState {
    services: BTreeMap<ServiceKey, (VirtualServer, Reals)>,
    addresses: BTreeSet<IpAddr>,
}

/// What one family's ipsets and iptables chains are known to hold.
#[derive(Clone, Debug, Default)]
struct FamilyRules {
    sets: BTreeMap<SetId, BTreeSet<String>>,
    /// The iptables-restore input last applied (without jump insertions).
    iptables: String,
}

/// The ipvs-mode backend.
pub struct IpvsBackend {
    sys: Sys,
    settings: Settings,
    opts: IpvsOpts,
    clients: Option<Clients>,
    /// What the last successful sync left in the kernel; None: unknown
    /// (start, or after a failure), so the next sync lists the kernel.
    programmed: Option<KernelState>,
    /// Sysctls and timeouts are set (once, at the first sync).
    configured: bool,
    /// iptables-nft or -legacy, detected at the first sync.
    variant: Option<Variant>,
    /// Whether ip6tables works here (probed once).
    ipv6_usable: Option<bool>,
    /// Per family, the sets and rules the last successful sync left.
    rules: BTreeMap<IpFamily, FamilyRules>,
}

// === impl Clients ===

impl Clients {
    /// Netlink clients in this process's network namespace.
    pub fn open() -> Result<Self, BackendError> {
        let ipvs = NetlinkIpvs::open().map_err(|e| match e {
            IpvsError::Unavailable(_) => BackendError::Unavailable(ProxyMode::Ipvs, e.to_string()),
            e => kernel_err(e),
        })?;
        let links = RtnlLinks::open().map_err(kernel_err)?;
        Ok(Self {
            ipvs: Arc::new(ipvs),
            links: Arc::new(links),
        })
    }
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clients")
    }
}

fn kernel_err(e: impl std::error::Error + Send + Sync + 'static) -> BackendError {
    BackendError::Kernel {
        mode: ProxyMode::Ipvs,
        source: Box::new(e),
    }
}

// === impl KernelState ===

impl From<&IpvsRuleset> for KernelState {
    fn from(r: &IpvsRuleset) -> Self {
        Self {
            services: r
                .services
                .iter()
                .map(|(k, d)| (*k, (d.server.clone(), d.reals.clone())))
                .collect(),
            addresses: r.addresses.clone(),
        }
    }
}

/// Counts of what one apply changed.
#[derive(Debug, Default)]
struct Applied {
    /// Virtual servers added, edited or deleted.
    services: usize,
    /// Real servers added, edited or deleted.
    reals: usize,
    /// Addresses added or removed.
    addresses: usize,
}

// === impl IpvsBackend ===

impl IpvsBackend {
    /// The backend on the real kernel; netlink clients are opened at the
    /// first sync or cleanup.
    pub fn new(sys: Sys, settings: Settings, opts: IpvsOpts) -> Self {
        Self {
            sys,
            settings,
            opts,
            clients: None,
            programmed: None,
            configured: false,
            variant: None,
            ipv6_usable: None,
            rules: BTreeMap::new(),
        }
    }

    /// With given clients (fakes in unit tests, a namespace's in VM tests).
    pub fn with_clients(sys: Sys, settings: Settings, opts: IpvsOpts, clients: Clients) -> Self {
        Self {
            clients: Some(clients),
            ..Self::new(sys, settings, opts)
        }
    }

    fn clients(&mut self) -> Result<Clients, BackendError> {
        if let Some(c) = &self.clients {
            return Ok(c.clone());
        }
        let c = Clients::open()?;
        self.clients = Some(c.clone());
        Ok(c)
    }

    /// Per family: the plan context and the NodePort addresses. With
    /// every local address accepting NodePorts, `local` lists them (the
    /// service addresses on `kube-ipvs0` and loopback are left out).
    fn family_inputs(&self, desired: &DesiredState, local: &[IpAddr]) -> Vec<FamilyInput> {
        let vips: BTreeSet<IpAddr> = desired
            .ports
            .values()
            .flat_map(|s| IpFamily::ALL.into_iter().flat_map(|f| s.port.vips(f)))
            .map(|v| match v {
                crate::model::Vip::ClusterIp(ip)
                | crate::model::Vip::ExternalIp(ip)
                | crate::model::Vip::LoadBalancer(ip) => ip,
            })
            .collect();
        IpFamily::ALL
            .into_iter()
            .map(|family| {
                let opts = self.settings.render_opts(family, &desired.node, local, false);
                let nodeport_ips = match &opts.nodeports {
                    NodePortTargets::Ips(ips) => ips.clone(),
                    NodePortTargets::AllLocal => {
                        let all = if local.is_empty() { &opts.node_ips[..] } else { local };
                        all.iter()
                            .copied()
                            .filter(|ip| IpFamily::of(ip) == family && !ip.is_loopback() && !vips.contains(ip))
                            .collect()
                    }
                };
                FamilyInput {
                    ctx: opts.plan_context(FirewallScope::WithEndpoints),
                    nodeport_ips,
                }
            })
            .collect()
    }

    /// The ruleset a sync on this node would program.
    pub fn ruleset(&self, desired: &DesiredState, local: &[IpAddr]) -> IpvsRuleset {
        render::render_ruleset(desired, &self.family_inputs(desired, local), &self.opts)
    }

    fn rule_opts(&self, input: &FamilyInput) -> RuleOpts {
        RuleOpts {
            family: input.ctx.family,
            masquerade_mark: self.settings.masquerade_mark,
            masquerade_all: self.settings.masquerade_all,
            cluster_cidr: input.ctx.cluster_cidrs.first().copied(),
        }
    }

    /// Runs `program` (ipset or an iptables tool) for `family`.
    fn run(
        &self,
        family: IpFamily,
        program: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<String, BackendError> {
        super::iptables::run_program(&self.sys, family, program, args, stdin)
    }

    /// The families whose iptables tools work (IPv6 probed once).
    fn rule_families(&mut self, variant: Variant) -> Vec<IpFamily> {
        let v6 = match self.ipv6_usable {
            Some(v) => v,
            None => {
                let tool = variant.tool(IpFamily::V6, "iptables-save");
                let ok = self.run(IpFamily::V6, &tool, &["-t", "nat"], None).is_ok();
                if !ok {
                    tracing::warn!("ip6tables is not usable; the ipvs mode programs IPv4 rules only");
                }
                self.ipv6_usable = Some(ok);
                ok
            }
        };
        IpFamily::ALL.into_iter().filter(|f| *f == IpFamily::V4 || v6).collect()
    }

    /// Brings kube-proxy's ipsets and iptables chains of every family to
    /// what `desired` needs: one `ipset restore` with the member diff and
    /// one `iptables-restore --noflush` per family, each only when
    /// something changed (always on a full sync, which also lists the
    /// kernel's sets and re-inserts missing jumps). Returns lines sent.
    fn apply_rules(
        &mut self,
        desired: &DesiredState,
        inputs: &[FamilyInput],
        bound: &BTreeSet<IpAddr>,
        full: bool,
    ) -> Result<usize, BackendError> {
        let variant = Variant::detect_once(&mut self.variant, self.sys.runner.as_ref());
        let mut written = 0;
        for family in self.rule_families(variant) {
            let Some(input) = inputs.iter().find(|i| i.ctx.family == family) else {
                continue;
            };
            let sets = rules::render_family_sets(desired, input, bound);
            let opts = self.rule_opts(input);
            let known = self.rules.get(&family).filter(|_| !full).cloned();
            let (cur_sets, jumps, cur_text) = match known {
                Some(k) => (k.sets, Vec::new(), Some(k.iptables)),
                None => {
                    let save = self.run(family, "ipset", &["save"], None)?;
                    let tables = self.run(family, &variant.tool(family, "iptables-save"), &[], None)?;
                    (
                        rules::parse_ipset_save(&save, family),
                        rules::missing_jumps(&tables),
                        None,
                    )
                }
            };
            if full || cur_sets != sets.members {
                let input = rules::render_ipset_restore(family, full, &cur_sets, &sets.members);
                self.run(family, "ipset", &["restore"], Some(input.as_bytes()))?;
                written += input.lines().count();
            }
            let text = rules::render_iptables(&opts, &sets, &[]);
            if !jumps.is_empty() || cur_text.as_deref() != Some(text.as_str()) {
                let with_jumps = rules::render_iptables(&opts, &sets, &jumps);
                let tool = variant.tool(family, "iptables-restore");
                self.run(family, &tool, &["-w", "5", "--noflush"], Some(with_jumps.as_bytes()))?;
                written += with_jumps.lines().count();
            }
            self.rules.insert(
                family,
                FamilyRules {
                    sets: sets.members,
                    iptables: text,
                },
            );
        }
        Ok(written)
    }

    /// Removes the ipvs mode's chains (and the jumps into them) in every
    /// family whose tools work. Returns what was removed.
    fn cleanup_rules(&mut self) -> Result<Vec<String>, BackendError> {
        let variant = Variant::detect_once(&mut self.variant, self.sys.runner.as_ref());
        let ours = |c: &str| names::NAT_CHAINS.contains(&c) || names::FILTER_CHAINS.contains(&c);
        let mut removed = Vec::new();
        for family in IpFamily::ALL {
            let Ok(save) = self.run(family, &variant.tool(family, "iptables-save"), &[], None) else {
                continue; // no tools for this family: nothing of ours there
            };
            let text = super::iptables::removal_input(&super::iptables::parse_save(&save), ours);
            if !text.is_empty() {
                let tool = variant.tool(family, "iptables-restore");
                self.run(family, &tool, &["-w", "5", "--noflush"], Some(text.as_bytes()))?;
                removed.push(format!("{family} ipvs-mode iptables chains"));
            }
        }
        Ok(removed)
    }

    /// The NodePorts kube-proxy's sets record (KUBE-NODE-PORT-TCP/-UDP
    /// members, KUBE-NODE-PORT-SCTP-HASH ports), both families.
    fn recorded_node_ports(&self) -> BTreeSet<(crate::sys::ipvs::Protocol, u16)> {
        use crate::sys::ipvs::Protocol as P;
        let Ok(out) = self.sys.runner.run("ipset", &["save"], None) else {
            return BTreeSet::new();
        };
        let mut ports = BTreeSet::new();
        for family in IpFamily::ALL {
            let sets = rules::parse_ipset_save(&out.stdout, family);
            for (id, proto) in [
                (SetId::NodePortTcp, P::Tcp),
                (SetId::NodePortUdp, P::Udp),
                (SetId::NodePortSctp, P::Sctp),
            ] {
                for member in sets.get(&id).into_iter().flatten() {
                    // bitmap:port: "30080"; hash:ip,port: "10.0.0.1,sctp:30080".
                    let port = member.rsplit(':').next().and_then(|p| p.parse().ok());
                    if let Some(port) = port {
                        ports.insert((proto, port));
                    }
                }
            }
        }
        ports
    }

    /// The ipsets and iptables input of one family, for `render`.
    fn render_rules(&self, desired: &DesiredState, input: &FamilyInput, bound: &BTreeSet<IpAddr>) -> String {
        let sets: FamilySets = rules::render_family_sets(desired, input, bound);
        let family = input.ctx.family;
        format!(
            "# ipsets ({family}), as `ipset restore` input\n{}# iptables-restore --noflush input ({family})\n{}",
            rules::render_ipset_restore(family, true, &BTreeMap::new(), &sets.members),
            rules::render_iptables(&self.rule_opts(input), &sets, names::JUMPS)
        )
    }
}

/// Per family with service ports: the sync's time and the service ports
/// whose internal / external traffic is dropped for lack of a local
/// endpoint (`kubeproxy_sync_proxy_rules_no_local_endpoints_total`).
fn family_stats(
    desired: &DesiredState,
    inputs: &[FamilyInput],
    elapsed: std::time::Duration,
) -> Vec<super::FamilyStats> {
    inputs
        .iter()
        .filter(|i| i.ctx.family == IpFamily::V4 || desired.ports_of(i.ctx.family).next().is_some())
        .map(|input| {
            let (mut internal, mut external) = (0, 0);
            for state in desired.ports_of(input.ctx.family) {
                let no_local = crate::model::PortPlan::new(state, &input.ctx).no_local();
                internal += usize::from(no_local.internal);
                external += usize::from(no_local.external);
            }
            super::FamilyStats {
                family: input.ctx.family,
                elapsed,
                no_local_internal: internal,
                no_local_external: external,
                ..super::FamilyStats::default()
            }
        })
        .collect()
}

/// What kproxy owns in the kernel now: virtual servers on `kube-ipvs0`
/// addresses, wanted ones, and earlier-programmed ones; with their real
/// servers. Creates `kube-ipvs0` if it is missing.
/// What kproxy's own records name on the node: NodePorts (protocol, port)
/// in kube-proxy's KUBE-NODE-PORT-* sets, and the addresses they live on.
#[derive(Debug, Default)]
struct NodePortRecord {
    ports: BTreeSet<(crate::sys::ipvs::Protocol, u16)>,
    addresses: BTreeSet<IpAddr>,
}

fn read_kernel(
    c: &Clients,
    opts: &IpvsOpts,
    want: &KernelState,
    before: Option<&KernelState>,
    node_ports: &NodePortRecord,
) -> Result<KernelState, BackendError> {
    if c.links.ensure_dummy(DUMMY_INTERFACE).map_err(kernel_err)? {
        info!(interface = DUMMY_INTERFACE, "Created the service address interface");
    }
    // Addresses in excludeCIDRs are not kproxy's: never unbound.
    let addresses: BTreeSet<IpAddr> = c
        .links
        .addresses(DUMMY_INTERFACE)
        .map_err(kernel_err)?
        .into_iter()
        .filter(|a| !opts.is_excluded(a))
        .collect();
    // A stale NodePort (its service deleted while kproxy was down) is
    // recognised by kube-proxy's own KUBE-NODE-PORT-* record.
    let owned = |key: &ServiceKey| {
        let (on_dummy, recorded, excluded) = match key {
            ServiceKey::Addr { addr, protocol, port } => (
                addresses.contains(addr),
                node_ports.addresses.contains(addr) && node_ports.ports.contains(&(*protocol, *port)),
                opts.is_excluded(addr),
            ),
            ServiceKey::Fwmark { .. } => (false, false, false),
        };
        !excluded
            && (on_dummy
                || recorded
                || want.services.contains_key(key)
                || before.is_some_and(|b| b.services.contains_key(key)))
    };
    let mut services = BTreeMap::new();
    for vs in c.ipvs.services().map_err(kernel_err)? {
        if !owned(&vs.key) {
            continue;
        }
        let reals = c
            .ipvs
            .destinations(&vs.key)
            .map_err(kernel_err)?
            .into_iter()
            .map(|d| ((d.server.addr, d.server.port), d.server))
            .collect();
        services.insert(vs.key, (vs, reals));
    }
    Ok(KernelState { services, addresses })
}

/// The first kernel version whose IPVS no longer needs `conn_reuse_mode=0`
/// (kubernetes#93297): kube-proxy leaves the sysctl alone from there on.
const CONN_REUSE_FIXED: (u32, u32) = (5, 9);

/// kube-proxy's ipvs-mode sysctls and the configured timeouts. Each sysctl
/// is written only when it differs.
fn configure_kernel(sys: &Sys, ipvs: &dyn Ipvs, opts: &IpvsOpts) -> Result<(), BackendError> {
    let mut wanted = vec![
        ("net.ipv4.vs.conntrack", "1"),
        ("net.ipv4.vs.expire_nodest_conn", "1"),
        ("net.ipv4.vs.expire_quiescent_template", "1"),
        ("net.ipv4.ip_forward", "1"),
    ];
    let release = sys.sysctl.get("kernel.osrelease").unwrap_or_default();
    if kernel_version(&release).is_some_and(|v| v < CONN_REUSE_FIXED) {
        wanted.push(("net.ipv4.vs.conn_reuse_mode", "0"));
    }
    if opts.strict_arp {
        wanted.push(("net.ipv4.conf.all.arp_ignore", "1"));
        wanted.push(("net.ipv4.conf.all.arp_announce", "2"));
    }
    for (key, value) in wanted {
        if sys.sysctl.get(key).is_ok_and(|v| v == value) {
            continue;
        }
        sys.sysctl
            .set(key, value)
            .map_err(|e| kernel_err(std::io::Error::new(e.kind(), format!("sysctl {key}={value}: {e}"))))?;
    }
    let t = opts.timeouts;
    if t.tcp > 0 || t.tcp_fin > 0 || t.udp > 0 {
        ipvs.set_timeouts(&t).map_err(kernel_err)?;
    }
    Ok(())
}

/// `major.minor` of a kernel release string (`6.1.0-57-amd64` → (6, 1)).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Changes the kernel from `cur` to `want`, object by object: addresses
/// first (a virtual server's address must be local before traffic
/// arrives), then virtual and real servers, then stale servers and
/// addresses.
fn apply_diff(c: &Clients, cur: &KernelState, want: &KernelState) -> Result<Applied, BackendError> {
    let mut n = Applied::default();
    for addr in want.addresses.difference(&cur.addresses) {
        c.links.add_address(DUMMY_INTERFACE, *addr).map_err(kernel_err)?;
        n.addresses += 1;
    }
    for (key, (vs, reals)) in &want.services {
        let empty = Reals::new();
        let cur_reals = match cur.services.get(key) {
            None => {
                c.ipvs.add_service(vs).map_err(kernel_err)?;
                n.services += 1;
                &empty
            }
            Some((cur_vs, cur_reals)) => {
                if cur_vs != vs {
                    c.ipvs.update_service(vs).map_err(kernel_err)?;
                    n.services += 1;
                }
                cur_reals
            }
        };
        n.reals += apply_reals(c, key, cur_reals, reals)?;
    }
    for key in cur.services.keys().filter(|k| !want.services.contains_key(k)) {
        c.ipvs.delete_service(key).map_err(kernel_err)?;
        n.services += 1;
    }
    for addr in cur.addresses.difference(&want.addresses) {
        c.links.delete_address(DUMMY_INTERFACE, *addr).map_err(kernel_err)?;
        n.addresses += 1;
    }
    Ok(n)
}

/// Graceful termination, as kube-proxy's: a real server leaving a TCP
/// virtual server that stays is kept with weight 0 (no new connections)
/// until its connections are gone ([`finish_drains`]); one that comes back
/// gets its weight again. UDP and SCTP real servers go at once (their
/// conntrack entries are flushed after the sync). Works from the kernel's
/// listing too, so a restart resumes the drains.
fn keep_draining(cur: &KernelState, want: &mut KernelState) {
    for (key, (_, cur_reals)) in &cur.services {
        let ServiceKey::Addr {
            protocol: crate::sys::ipvs::Protocol::Tcp,
            ..
        } = key
        else {
            continue;
        };
        let Some((_, want_reals)) = want.services.get_mut(key) else {
            continue; // the virtual server goes: its real servers with it
        };
        for (id, real) in cur_reals {
            want_reals.entry(*id).or_insert_with(|| RealServer {
                weight: 0,
                ..real.clone()
            });
        }
    }
}

/// Deletes the draining real servers (in `want`, not in `ruleset`) that
/// have no active or inactive connection left; returns how many.
fn finish_drains(c: &Clients, ruleset: &IpvsRuleset, want: &mut KernelState) -> Result<usize, BackendError> {
    let mut deleted = 0;
    for (key, (_, reals)) in want.services.iter_mut() {
        let Some(desired) = ruleset.services.get(key) else {
            continue;
        };
        if reals.keys().all(|id| desired.reals.contains_key(id)) {
            continue;
        }
        for d in c.ipvs.destinations(key).map_err(kernel_err)? {
            let id = (d.server.addr, d.server.port);
            if !desired.reals.contains_key(&id) && d.active_conns + d.inactive_conns == 0 {
                c.ipvs.delete_destination(key, id.0, id.1).map_err(kernel_err)?;
                reals.remove(&id);
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

/// Adds, edits and deletes the real servers of one virtual server.
fn apply_reals(c: &Clients, key: &ServiceKey, cur: &Reals, want: &Reals) -> Result<usize, BackendError> {
    let mut n = 0;
    for (id, real) in want {
        match cur.get(id) {
            None => c.ipvs.add_destination(key, real).map_err(kernel_err)?,
            Some(have) if have != real => c.ipvs.update_destination(key, real).map_err(kernel_err)?,
            Some(_) => continue,
        }
        n += 1;
    }
    for (addr, port) in cur.keys().filter(|id| !want.contains_key(id)) {
        c.ipvs.delete_destination(key, *addr, *port).map_err(kernel_err)?;
        n += 1;
    }
    Ok(n)
}

impl Backend for IpvsBackend {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Ipvs
    }

    fn sync(&mut self, desired: &DesiredState, changes: &ChangeSet, kind: SyncKind) -> Result<SyncStats, BackendError> {
        let started = std::time::Instant::now();
        let clients = self.clients()?;
        let local = if matches!(
            self.settings.nodeport_addresses,
            crate::config::NodePortAddresses::Primary
        ) {
            Vec::new()
        } else {
            crate::sys::interface_addresses(self.sys.runner.as_ref())
        };
        let inputs = self.family_inputs(desired, &local);
        let ruleset = render::render_ruleset(desired, &inputs, &self.opts);
        let mut want = KernelState::from(&ruleset);
        let full = kind == SyncKind::Full || self.programmed.is_none();
        let cur = match (&self.programmed, full) {
            (Some(p), false) => p.clone(),
            (before, _) => {
                let record = NodePortRecord {
                    ports: self.recorded_node_ports(),
                    addresses: inputs
                        .iter()
                        .flat_map(|i| i.nodeport_ips.iter().copied())
                        .chain(local.iter().copied())
                        .collect(),
                };
                read_kernel(&clients, &self.opts, &want, before.as_ref(), &record)?
            }
        };
        keep_draining(&cur, &mut want);
        if !self.configured {
            configure_kernel(&self.sys, clients.ipvs.as_ref(), &self.opts)?;
            self.configured = true;
        }
        // Until this sync succeeds, nothing is known about the kernel.
        self.programmed = None;
        let mut applied = apply_diff(&clients, &cur, &want)?;
        applied.reals += finish_drains(&clients, &ruleset, &mut want)?;
        let rule_lines = match self.apply_rules(desired, &inputs, &ruleset.addresses, full) {
            Ok(n) => n,
            Err(e) => {
                self.rules.clear();
                return Err(e);
            }
        };
        debug!(
            kind = ?kind,
            changed_ports = changes.ports.len(),
            services = applied.services,
            reals = applied.reals,
            addresses = applied.addresses,
            "ipvs sync"
        );
        self.programmed = Some(want);
        Ok(SyncStats {
            ports_written: changes.ports.len(),
            ports_total: desired.ports.len(),
            rules_written: applied.services + applied.reals + applied.addresses + rule_lines,
            bytes_written: 0,
            families: family_stats(desired, &inputs, started.elapsed()),
        })
    }

    fn render(&self, desired: &DesiredState) -> String {
        let inputs = self.family_inputs(desired, &[]);
        let r = render::render_ruleset(desired, &inputs, &self.opts);
        let mut out = format!(
            "# ipvs mode (virtual and real servers as `ipvsadm-save -n` lists them)\n{}\
             # {DUMMY_INTERFACE} addresses\n{}",
            render::render_save(&r),
            render::render_addresses(&r)
        );
        for family in super::rendered_families(desired) {
            if let Some(input) = inputs.iter().find(|i| i.ctx.family == family) {
                out.push_str(&self.render_rules(desired, input, &r.addresses));
            }
        }
        out
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        let mut removed = Vec::new();
        let links: Arc<dyn Links> = match &self.clients {
            Some(c) => c.links.clone(),
            None => Arc::new(RtnlLinks::open().map_err(kernel_err)?),
        };
        let addresses: BTreeSet<IpAddr> = match links.addresses(DUMMY_INTERFACE) {
            Ok(a) => a.into_iter().collect(),
            Err(LinkError::NoSuchLink(_)) => BTreeSet::new(),
            Err(e) => return Err(kernel_err(e)),
        };
        // Virtual servers kube-proxy's own state names: on kube-ipvs0's
        // addresses, or NodePorts (ports in KUBE-NODE-PORT-*) on one of the
        // node's addresses; where the kernel has IPVS at all.
        let node_ports = self.recorded_node_ports();
        let local: BTreeSet<IpAddr> = if node_ports.is_empty() {
            BTreeSet::new()
        } else {
            crate::sys::interface_addresses(self.sys.runner.as_ref())
                .into_iter()
                .collect()
        };
        let ipvs: Option<Arc<dyn Ipvs>> = match &self.clients {
            Some(c) => Some(c.ipvs.clone()),
            None => NetlinkIpvs::open().ok().map(|i| Arc::new(i) as Arc<dyn Ipvs>),
        };
        if let Some(ipvs) = ipvs.filter(|_| !addresses.is_empty() || !node_ports.is_empty()) {
            for vs in ipvs.services().map_err(kernel_err)? {
                if let ServiceKey::Addr { addr, protocol, port } = vs.key
                    && (addresses.contains(&addr) || (local.contains(&addr) && node_ports.contains(&(protocol, port))))
                    && !self.opts.is_excluded(&addr)
                {
                    ipvs.delete_service(&vs.key).map_err(kernel_err)?;
                    removed.push(format!("virtual server {}", vs.key));
                }
            }
        }
        if links.delete_link(DUMMY_INTERFACE).map_err(kernel_err)? {
            removed.push(DUMMY_INTERFACE.to_string());
        }
        // The ipvs mode's iptables chains, then kube-proxy's ipsets (a set
        // still referenced by a rule cannot be destroyed).
        removed.extend(self.cleanup_rules()?);
        if let Ok(out) = self.sys.runner.run("ipset", &["list", "-n"], None)
            && out.status == 0
        {
            for set in out.stdout.lines().map(str::trim).filter(|s| names::is_kube_ipset(s)) {
                if self
                    .sys
                    .runner
                    .run("ipset", &["destroy", set], None)
                    .is_ok_and(|o| o.status == 0)
                {
                    removed.push(format!("ipset {set}"));
                }
            }
        }
        self.programmed = None;
        self.configured = false;
        self.rules.clear();
        if !removed.is_empty() {
            info!(removed = removed.join(", "), "Removed IPVS-mode leftovers");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
