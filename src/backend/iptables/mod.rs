//! The iptables backend: kube-proxy's rules, applied with one
//! `iptables-restore --noflush` per IP family per sync.
//!
//! ```text
//!  DesiredState ──render (pure)──▶ PortRules per service port + StaticRules
//!                                        │
//!      Full:    every chain declared, stale chains deleted, missing jumps inserted
//!      Partial: only the changed ports: their changed chains rewritten,
//!               their shared-chain rules deleted/inserted one by one (-D / -I)
//!                                        │
//!                         sys::CommandRunner ── iptables-restore -w 5 --noflush
//! ```
//!
//! What was programmed is remembered (chain names with a hash of their
//! rules, and the exact shared rules), so a partial sync sends only what
//! differs: an endpoint change rewrites that service's `KUBE-SVC-*` chain and
//! adds or deletes one `KUBE-SEP-*` chain, and never touches `KUBE-SERVICES`.
//! A failed restore changes nothing (iptables-restore is atomic per table
//! commit) and the next sync is Full. See README.md beside this file.

pub mod names;
pub mod render;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use std::net::IpAddr;

use tracing::{debug, info, warn};

use self::render::{
    FIREWALL_JUMPS, JUMPS, Jump, PortRules, RenderOpts, SharedRule, Table, is_large, render_port, render_static,
    write_tables,
};
pub use super::settings::Settings;
use super::settings::{error_context, number_after};
use super::{Backend, BackendError, FamilyStats, SyncKind, SyncStats, ToolFailure, hash_rules, local_addresses};
use crate::config::{NodePortAddresses, ProxyMode};
use crate::model::{ChangeSet, DesiredState, IpFamily, NoLocal, ServicePortName};
use crate::sys::Sys;

/// Above this many changed service ports a partial sync is done as a full one.
pub const MAX_PARTIAL_PORTS: usize = 1000;

/// Chains per restore input in a batched full sync on iptables-nft.
pub const NFT_BATCH_CHAINS: usize = 4000;

/// Splits `rules` into runs of whole service ports with about `max`
/// chains each.
fn batches(rules: &[PortRules], max: usize) -> Vec<&[PortRules]> {
    let mut out = Vec::new();
    let (mut start, mut count) = (0, 0);
    for (i, r) in rules.iter().enumerate() {
        if count > 0 && count + r.chains.len() > max {
            out.push(&rules[start..i]);
            start = i;
            count = 0;
        }
        count += r.chains.len();
    }
    if start < rules.len() {
        out.push(&rules[start..]);
    }
    out
}

/// Which iptables binaries to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `iptables-nft*`.
    Nft,
    /// `iptables-legacy*`.
    Legacy,
    /// Plain `iptables*`, whatever the system's alternative is.
    Plain,
}

/// What is known to be programmed in one family.
#[derive(Debug, Default)]
struct Programmed {
    opts: Option<RenderOpts>,
    large: bool,
    ports: HashMap<ServicePortName, ProgrammedPort>,
    /// Rules of the service-independent chains: (filter, nat).
    static_rules: (usize, usize),
}

// === impl Programmed ===

impl Programmed {
    /// Metrics for what is programmed now.
    fn family_stats(&self, family: IpFamily, elapsed: std::time::Duration, last: (usize, usize)) -> FamilyStats {
        let (mut filter, mut nat) = self.static_rules;
        let (mut internal, mut external) = (0, 0);
        for p in self.ports.values() {
            nat += p.nat_rules;
            for r in &p.shared {
                match r.table {
                    Table::Filter => filter += 1,
                    Table::Nat => nat += 1,
                }
            }
            internal += usize::from(p.no_local.internal);
            external += usize::from(p.no_local.external);
        }
        FamilyStats {
            family,
            elapsed,
            rules_total: vec![("filter", filter), ("nat", nat)],
            rules_last: vec![("filter", last.0), ("nat", last.1)],
            no_local_internal: internal,
            no_local_external: external,
            ..FamilyStats::default()
        }
    }
}

/// One service port as programmed: its chains (name, hash of rules) and
/// its rules in shared chains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ProgrammedPort {
    chains: BTreeMap<String, u64>,
    shared: Vec<SharedRule>,
    nat_rules: usize,
    no_local: NoLocal,
}

/// Per-family state.
#[derive(Debug)]
struct FamilyState {
    family: IpFamily,
    /// None until probed; false when the family's tools are missing.
    available: Option<bool>,
    programmed: Programmed,
    /// Per-service chains found in the kernel at start-up that we did not
    /// program (leftovers of an earlier run or of kube-proxy).
    leftovers: BTreeSet<String>,
    discovered: bool,
    last_input: Option<String>,
}

/// The iptables backend.
pub struct IptablesBackend {
    sys: Sys,
    settings: Settings,
    variant: Option<Variant>,
    families: Vec<FamilyState>,
    localnet_set: bool,
}

// === impl Variant ===

impl Variant {
    /// iptables-nft or iptables-legacy: whichever already holds rules wins
    /// (legacy only with strictly more), as kube-proxy's image wrapper
    /// decides; plain `iptables` when neither variant exists.
    pub fn detect(runner: &dyn crate::sys::CommandRunner) -> Variant {
        let count = |tool: &str| -> Option<usize> {
            let out = runner.run(tool, &[], None).ok()?;
            (out.status == 0).then(|| out.stdout.lines().filter(|l| l.starts_with("-A")).count())
        };
        match (count("iptables-nft-save"), count("iptables-legacy-save")) {
            (Some(nft), Some(legacy)) if legacy > nft => Variant::Legacy,
            (Some(_), _) => Variant::Nft,
            (None, Some(_)) => Variant::Legacy,
            (None, None) => Variant::Plain,
        }
    }

    /// `cached`, or detected now ([`Variant::detect`]) and remembered there.
    pub fn detect_once(cached: &mut Option<Variant>, runner: &dyn crate::sys::CommandRunner) -> Variant {
        if let Some(v) = *cached {
            return v;
        }
        let v = Variant::detect(runner);
        info!(variant = ?v, "Chose iptables variant");
        *cached = Some(v);
        v
    }

    /// Runs this variant's `tool` for `family` ([`run_program`]).
    pub fn run(
        self,
        sys: &Sys,
        family: IpFamily,
        tool: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<String, BackendError> {
        run_program(sys, family, &self.tool(family, tool), args, stdin)
    }

    /// The binary name for `tool` (`iptables`, `iptables-restore`,
    /// `iptables-save`) in `family`.
    pub fn tool(self, family: IpFamily, tool: &str) -> String {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let suffix = tool.strip_prefix("iptables").unwrap_or(tool);
        match self {
            Variant::Nft => format!("{base}-nft{suffix}"),
            Variant::Legacy => format!("{base}-legacy{suffix}"),
            Variant::Plain => format!("{base}{suffix}"),
        }
    }
}

/// Runs `program` (an iptables or ipset tool) for `family`; a non-zero
/// exit is an `Apply` error with the offending restore input lines as
/// context.
pub fn run_program(
    sys: &Sys,
    family: IpFamily,
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<String, BackendError> {
    let out = sys
        .runner
        .run(program, args, stdin)
        .map_err(|source| BackendError::Exec {
            family: Some(family),
            tool: program.to_string(),
            source,
        })?;
    if out.status != 0 {
        let context = stdin.and_then(|input| restore_error_context(&out.stderr, input));
        return Err(BackendError::Apply {
            family: Some(family),
            tool: program.to_string(),
            source: ToolFailure {
                status: out.status,
                stderr: out.stderr.trim().to_string(),
            },
            context,
        });
    }
    Ok(out.stdout)
}

/// Whether NodePorts answer on 127.0.0.1 (needs `route_localnet`).
fn wants_localnet(settings: &Settings) -> bool {
    settings.localhost_nodeports
        && match &settings.nodeport_addresses {
            NodePortAddresses::All => true,
            NodePortAddresses::Primary => false,
            NodePortAddresses::Cidrs(nets) => nets.iter().any(|n| n.contains(&IpAddr::from([127, 0, 0, 1]))),
        }
}

// === impl ProgrammedPort ===

impl ProgrammedPort {
    fn from_rules(rules: &PortRules) -> Self {
        Self {
            chains: rules
                .chains
                .iter()
                .map(|c| (c.name.clone(), hash_rules(&c.rules)))
                .collect(),
            shared: rules.shared.clone(),
            nat_rules: rules.chains.iter().map(|c| c.rules.len()).sum(),
            no_local: rules.no_local,
        }
    }
}

// === impl IptablesBackend ===

impl IptablesBackend {
    /// A backend for both families. `variant` None: detect it at the first
    /// sync the way kube-proxy's image does.
    pub fn new(sys: Sys, settings: Settings, variant: Option<Variant>) -> Self {
        let families = IpFamily::ALL
            .into_iter()
            .map(|family| FamilyState {
                family,
                available: None,
                programmed: Programmed::default(),
                leftovers: BTreeSet::new(),
                discovered: false,
                last_input: None,
            })
            .collect();
        Self {
            sys,
            settings,
            variant,
            families,
            localnet_set: false,
        }
    }

    /// The last iptables-restore input sent for `family`.
    pub fn last_input(&self, family: IpFamily) -> Option<&str> {
        self.families.iter().find(|f| f.family == family)?.last_input.as_deref()
    }

    /// The variant, detected once ([`Variant::detect`]) unless given.
    fn variant(&mut self) -> Variant {
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

    /// Whether the family's tools exist (probed once).
    fn family_available(&mut self, idx: usize) -> bool {
        if let Some(a) = self.families[idx].available {
            return a;
        }
        let family = self.families[idx].family;
        let ok = self.run_tool(family, "iptables-save", &["-t", "nat"], None).is_ok();
        if !ok {
            warn!(family = %family, "iptables tools for this family are not usable; skipping it");
        }
        self.families[idx].available = Some(ok);
        ok
    }

    /// Reads the per-service chains already in the nat table (once).
    fn discover(&mut self, idx: usize) -> Result<(), BackendError> {
        if self.families[idx].discovered {
            return Ok(());
        }
        let family = self.families[idx].family;
        let save = self.run_tool(family, "iptables-save", &["-t", "nat"], None)?;
        let chains = parse_save(&save).chains.remove("nat").unwrap_or_default();
        let f = &mut self.families[idx];
        f.leftovers = chains.into_iter().filter(|c| names::is_service_chain(c)).collect();
        f.discovered = true;
        Ok(())
    }

    /// The jumps from built-in chains that are missing.
    fn missing_jumps(&self, family: IpFamily, with_firewall: bool) -> Vec<Jump> {
        let mut listings: HashMap<(Table, &str), String> = HashMap::new();
        let wanted: Vec<Jump> = JUMPS
            .iter()
            .chain(if with_firewall {
                FIREWALL_JUMPS.iter()
            } else {
                [].iter()
            })
            .copied()
            .collect();
        let mut missing = Vec::new();
        for j in wanted {
            let listing = listings.entry((j.table, j.from)).or_insert_with(|| {
                self.run_tool(
                    family,
                    "iptables",
                    &["-w", "5", "-t", j.table.as_str(), "-S", j.from],
                    None,
                )
                .unwrap_or_default()
            });
            let target = format!("-j {}", j.to);
            let present = listing.lines().any(|l| {
                l.starts_with(&format!("-A {} ", j.from))
                    && (l.ends_with(&target) || l.contains(&format!("{target} ")))
                    && (j.comment.is_empty() || l.contains(j.comment))
            });
            if !present {
                missing.push(j);
            }
        }
        missing
    }

    fn sync_family(
        &mut self,
        idx: usize,
        desired: &DesiredState,
        changes: &ChangeSet,
        kind: SyncKind,
        local_addrs: &[IpAddr],
    ) -> Result<SyncStats, BackendError> {
        let family = self.families[idx].family;
        let opts = self.settings.render_opts(family, &desired.node, local_addrs, true);
        let large = is_large(desired, family);
        let prog = &self.families[idx].programmed;
        // Many changes at once (a big apply) go through the batched full path.
        let partial_ok = kind == SyncKind::Partial
            && prog.opts.as_ref() == Some(&opts)
            && prog.large == large
            && changes.ports.len() <= MAX_PARTIAL_PORTS;
        if partial_ok {
            self.partial(idx, desired, changes, &opts, large)
        } else {
            self.full(idx, desired, opts, large)
        }
    }

    fn full(
        &mut self,
        idx: usize,
        desired: &DesiredState,
        opts: RenderOpts,
        large: bool,
    ) -> Result<SyncStats, BackendError> {
        self.discover(idx)?;
        let family = self.families[idx].family;
        let (names_of, rules): (Vec<ServicePortName>, Vec<PortRules>) = desired
            .ports_of(family)
            .map(|s| (s.port.name.clone(), render_port(s, &opts, large)))
            .unzip();
        let stat = render_static(&opts);
        let active: BTreeSet<&str> = rules
            .iter()
            .flat_map(|p| p.chains.iter().map(|c| c.name.as_str()))
            .collect();
        let f = &self.families[idx];
        let stale: Vec<String> = f
            .programmed
            .ports
            .values()
            .flat_map(|p| p.chains.keys())
            .chain(f.leftovers.iter())
            .filter(|c| !active.contains(c.as_str()))
            .cloned()
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect();
        let jumps = self.missing_jumps(family, stat.kube_firewall);
        let chain_count: usize = rules.iter().map(|r| r.chains.len()).sum();
        // iptables-nft's restore is quadratic in the chains one input
        // declares (10k services: 208 s in one input, ~5 s in batches of a
        // few thousand chains), so on nft the service chains go first, in
        // batches, and the shared chains that reference them last.
        let batched = self.variant == Some(Variant::Nft) && chain_count > NFT_BATCH_CHAINS;
        let mut inputs = Vec::new();
        if batched {
            for (i, batch) in batches(&rules, NFT_BATCH_CHAINS).into_iter().enumerate() {
                let mut text = String::with_capacity(batch.len() * 512);
                // Service chains jump to KUBE-MARK-MASQ, which may not exist
                // yet: the first batch (re)creates it, with its rule, atomically.
                let prelude: Vec<&SharedRule> = match i {
                    0 => stat.rules.iter().filter(|r| r.chain == names::KUBE_MARK_MASQ).collect(),
                    _ => Vec::new(),
                };
                render::write_port_chains(&mut text, &prelude, batch.iter());
                inputs.push(text);
            }
        }
        let mut text = String::with_capacity(rules.len() * 512);
        write_tables(&mut text, &stat, &rules, &stale, &jumps, !batched);
        inputs.push(text);
        let count = |t: Table| stat.rules.iter().filter(|r| r.table == t).count();
        let static_rules = (count(Table::Filter), count(Table::Nat) + stat.services_tail.len());
        let filter_written: usize = rules
            .iter()
            .map(|r| r.shared.iter().filter(|s| s.table == Table::Filter).count())
            .sum::<usize>()
            + static_rules.0;
        let all_written = rules.iter().map(PortRules::rule_count).sum::<usize>() + static_rules.0 + static_rules.1;
        let stats = SyncStats {
            ports_written: rules.len(),
            ports_total: rules.len(),
            rules_written: all_written,
            bytes_written: inputs.iter().map(String::len).sum(),
            families: Vec::new(),
        };
        let written = (filter_written, all_written - filter_written);
        for text in inputs {
            self.restore(idx, text)?;
        }
        let f = &mut self.families[idx];
        f.leftovers.clear();
        f.programmed = Programmed {
            opts: Some(opts),
            large,
            static_rules,
            ports: names_of
                .into_iter()
                .zip(rules.iter())
                .map(|(n, r)| (n, ProgrammedPort::from_rules(r)))
                .collect(),
        };
        debug!(family = %family, ports = stats.ports_total, stale = stale.len(), jumps = jumps.len(), "Full iptables sync");
        Ok(SyncStats {
            families: vec![f.programmed.family_stats(family, std::time::Duration::ZERO, written)],
            ..stats
        })
    }

    fn partial(
        &mut self,
        idx: usize,
        desired: &DesiredState,
        changes: &ChangeSet,
        opts: &RenderOpts,
        large: bool,
    ) -> Result<SyncStats, BackendError> {
        let family = self.families[idx].family;
        let mut delta = Delta::default();
        let mut updates: Vec<(ServicePortName, Option<ProgrammedPort>)> = Vec::new();
        for name in changes.ports.keys() {
            let new = desired
                .ports
                .get(name)
                .filter(|s| s.port.has_family(family))
                .map(|s| render_port(s, opts, large));
            let old = self.families[idx].programmed.ports.get(name);
            delta.add_port(old, new.as_ref());
            updates.push((name.clone(), new.as_ref().map(ProgrammedPort::from_rules)));
        }
        let written = delta.rule_lines_by_table();
        let stats = SyncStats {
            ports_written: updates.len(),
            ports_total: desired.ports_of(family).count(),
            rules_written: written.0 + written.1,
            bytes_written: 0,
            families: Vec::new(),
        };
        let text = delta.into_restore_input();
        let bytes = text.as_ref().map_or(0, String::len);
        if let Some(text) = text {
            self.restore(idx, text)?;
        }
        let programmed = &mut self.families[idx].programmed.ports;
        for (name, port) in updates {
            match port {
                Some(p) => programmed.insert(name, p),
                None => programmed.remove(&name),
            };
        }
        Ok(SyncStats {
            bytes_written: bytes,
            families: vec![
                self.families[idx]
                    .programmed
                    .family_stats(family, std::time::Duration::ZERO, written),
            ],
            ..stats
        })
    }

    fn restore(&mut self, idx: usize, text: String) -> Result<(), BackendError> {
        let family = self.families[idx].family;
        let result = self.run_tool(
            family,
            "iptables-restore",
            &["-w", "5", "--noflush"],
            Some(text.as_bytes()),
        );
        self.families[idx].last_input = Some(text);
        if result.is_err() {
            // Nothing was applied; make the next sync rebuild everything.
            self.families[idx].programmed.opts = None;
        }
        result.map(|_| ())
    }

    fn ensure_localnet(&mut self) {
        if self.localnet_set || !wants_localnet(&self.settings) {
            return;
        }
        match self.sys.sysctl.set("net.ipv4.conf.all.route_localnet", "1") {
            Ok(()) => {
                info!("Set net.ipv4.conf.all.route_localnet=1 so NodePorts answer on localhost");
                self.localnet_set = true;
            }
            Err(e) => warn!(error = %e, "Cannot set route_localnet; localhost NodePorts will not work"),
        }
    }

    fn cleanup_family(&mut self, family: IpFamily) -> Result<(), BackendError> {
        let save = self.run_tool(family, "iptables-save", &[], None)?;
        let parsed = parse_save(&save);
        let ours = |c: &str| {
            names::is_service_chain(c)
                || names::NAT_TOP_CHAINS.contains(&c)
                || names::FILTER_TOP_CHAINS.contains(&c)
                || c == names::KUBE_FIREWALL
        };
        let text = removal_input(&parsed, ours);
        if !text.is_empty() {
            self.run_tool(
                family,
                "iptables-restore",
                &["-w", "5", "--noflush"],
                Some(text.as_bytes()),
            )?;
            info!(family = %family, "Removed iptables rules");
        }
        Ok(())
    }
}

/// The iptables-restore input (`--noflush`) that deletes every chain in
/// `saved` that `ours` names, after the jumps into them from other chains;
/// empty when there is nothing to remove. Shared by the modes that write
/// `KUBE-*` chains (iptables, ipvs).
pub(crate) fn removal_input(saved: &Saved, ours: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for table in ["filter", "nat"] {
        let chains: Vec<&String> = saved
            .chains
            .get(table)
            .into_iter()
            .flatten()
            .filter(|c| ours(c))
            .collect();
        let jumps: Vec<&String> = saved
            .rules
            .get(table)
            .into_iter()
            .flatten()
            .filter(|(chain, rule)| {
                !ours(chain)
                    && rule
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .windows(2)
                        .any(|w| w[0] == "-j" && ours(w[1]))
            })
            .map(|(_, rule)| rule)
            .collect();
        if chains.is_empty() && jumps.is_empty() {
            continue;
        }
        let _ = writeln!(text, "*{table}");
        for c in &chains {
            let _ = writeln!(text, ":{c} - [0:0]");
        }
        for rule in &jumps {
            // `-A CHAIN spec` → `-D CHAIN spec`
            let _ = writeln!(text, "-D{}", rule.strip_prefix("-A").unwrap_or(rule));
        }
        for c in &chains {
            let _ = writeln!(text, "-X {c}");
        }
        text.push_str("COMMIT\n");
    }
    text
}

impl Backend for IptablesBackend {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Iptables
    }

    fn sync(&mut self, desired: &DesiredState, changes: &ChangeSet, kind: SyncKind) -> Result<SyncStats, BackendError> {
        self.variant();
        let local_addrs = local_addresses(&self.settings, &self.sys);
        let mut total = SyncStats::default();
        for idx in 0..self.families.len() {
            let family = self.families[idx].family;
            let has_ports = desired.ports_of(family).next().is_some();
            if !self.family_available(idx) {
                if has_ports && family == IpFamily::V4 {
                    return Err(BackendError::Unavailable(
                        ProxyMode::Iptables,
                        format!("{} tools missing", family),
                    ));
                }
                continue;
            }
            let started = std::time::Instant::now();
            let mut stats = self.sync_family(idx, desired, changes, kind, &local_addrs)?;
            for f in &mut stats.families {
                f.elapsed = started.elapsed();
            }
            total.families.append(&mut stats.families);
            total.ports_written += stats.ports_written;
            total.ports_total += stats.ports_total;
            total.rules_written += stats.rules_written;
            total.bytes_written += stats.bytes_written;
        }
        self.ensure_localnet();
        Ok(total)
    }

    fn render(&self, desired: &DesiredState) -> String {
        let mut out = String::new();
        for family in super::rendered_families(desired) {
            let opts = self.settings.render_opts(family, &desired.node, &[], true);
            if family == IpFamily::V6 {
                out.push_str("# ip6tables-restore input\n");
            }
            out.push_str(&render::render_full(desired, &opts));
        }
        out
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        self.variant();
        let mut first_err = None;
        for family in IpFamily::ALL {
            match self.cleanup_family(family) {
                Ok(()) => {}
                Err(BackendError::Exec { .. }) if family == IpFamily::V6 => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for f in &mut self.families {
            f.programmed = Programmed::default();
            f.discovered = false;
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The lines a partial sync sends, grouped so that chains are declared
/// first, old references removed before chains are deleted.
#[derive(Debug, Default)]
struct Delta {
    /// Chains to declare (flush) and refill.
    rewrite: Vec<render::Chain>,
    /// Chains to flush and delete.
    delete: Vec<String>,
    /// Shared rules to delete / add.
    del_shared: Vec<SharedRule>,
    add_shared: Vec<SharedRule>,
}

// === impl Delta ===

impl Delta {
    fn add_port(&mut self, old: Option<&ProgrammedPort>, new: Option<&PortRules>) {
        let empty = ProgrammedPort::default();
        let old = old.unwrap_or(&empty);
        let new_chains: BTreeMap<&str, &render::Chain> = new
            .map(|n| n.chains.iter().map(|c| (c.name.as_str(), c)).collect())
            .unwrap_or_default();
        for (name, chain) in &new_chains {
            if old.chains.get(*name) != Some(&hash_rules(&chain.rules)) {
                self.rewrite.push((*chain).clone());
            }
        }
        for name in old.chains.keys() {
            if !new_chains.contains_key(name.as_str()) {
                self.delete.push(name.clone());
            }
        }
        let new_shared: &[SharedRule] = new.map(|n| n.shared.as_slice()).unwrap_or_default();
        let mut remaining: Vec<&SharedRule> = new_shared.iter().collect();
        for rule in &old.shared {
            match remaining.iter().position(|r| *r == rule) {
                Some(i) => {
                    remaining.swap_remove(i);
                }
                None => self.del_shared.push(rule.clone()),
            }
        }
        self.add_shared.extend(remaining.into_iter().cloned());
    }

    /// Rule lines written, (filter, nat).
    fn rule_lines_by_table(&self) -> (usize, usize) {
        let shared = |t: Table| {
            self.add_shared
                .iter()
                .chain(&self.del_shared)
                .filter(|r| r.table == t)
                .count()
        };
        let chains: usize = self.rewrite.iter().map(|c| c.rules.len()).sum();
        (shared(Table::Filter), shared(Table::Nat) + chains)
    }

    fn into_restore_input(self) -> Option<String> {
        let touches = |t: Table| {
            self.del_shared.iter().chain(&self.add_shared).any(|r| r.table == t)
                || (t == Table::Nat && (!self.rewrite.is_empty() || !self.delete.is_empty()))
        };
        let mut text = String::new();
        for table in [Table::Filter, Table::Nat] {
            if !touches(table) {
                continue;
            }
            let _ = writeln!(text, "*{}", table.as_str());
            if table == Table::Nat {
                for c in &self.rewrite {
                    let _ = writeln!(text, ":{} - [0:0]", c.name);
                }
                for c in &self.delete {
                    let _ = writeln!(text, ":{c} - [0:0]");
                }
            }
            for r in self.del_shared.iter().filter(|r| r.table == table) {
                let _ = writeln!(text, "-D {} {}", r.chain, r.rule);
            }
            for r in self.add_shared.iter().filter(|r| r.table == table) {
                if r.table == Table::Nat && r.chain == names::KUBE_SERVICES {
                    // Stay ahead of the NodePort dispatch, which must be last.
                    let _ = writeln!(text, "-I {} 1 {}", r.chain, r.rule);
                } else {
                    let _ = writeln!(text, "-A {} {}", r.chain, r.rule);
                }
            }
            if table == Table::Nat {
                for c in &self.rewrite {
                    for rule in &c.rules {
                        let _ = writeln!(text, "-A {} {rule}", c.name);
                    }
                }
                for c in &self.delete {
                    let _ = writeln!(text, "-X {c}");
                }
            }
            text.push_str("COMMIT\n");
        }
        (!text.is_empty()).then_some(text)
    }
}

/// Chains and rules of an `iptables-save` dump, by table.
#[derive(Debug, Default)]
/// `iptables-save` output by table.
pub(crate) struct Saved {
    /// Table → declared chains.
    pub(crate) chains: HashMap<String, Vec<String>>,
    /// Table → (chain, full `-A CHAIN …` line).
    pub(crate) rules: HashMap<String, Vec<(String, String)>>,
}

pub(crate) fn parse_save(save: &str) -> Saved {
    let mut out = Saved::default();
    let mut table = String::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if let Some(rest) = line.strip_prefix(':') {
            if let Some(name) = rest.split_whitespace().next() {
                out.chains.entry(table.clone()).or_default().push(name.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("-A ")
            && let Some(chain) = rest.split_whitespace().next()
        {
            out.rules
                .entry(table.clone())
                .or_default()
                .push((chain.to_string(), line.to_string()));
        }
    }
    out
}

/// For an iptables-restore error naming a line (`line 12 failed`, or
/// `Error occurred at line: 12` from iptables-nft), that line with three
/// lines of context either side, numbered.
pub fn restore_error_context(stderr: &str, input: &[u8]) -> Option<String> {
    error_context(input, number_after(stderr, "line ")?)
}
