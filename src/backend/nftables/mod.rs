//! The nftables backend: kube-proxy's nftables layout in private tables
//! (`ip kproxy`, `ip6 kproxy`), applied with one atomic `nft -f -`
//! transaction per sync that carries only what changed.
//!
//! ```text
//!  DesiredState ──render (pure)──▶ PortObjects per service port + static structure
//!                                        │
//!      Full:    table flushed and refilled (static structure, every chain,
//!               every element); stale chains/sets found by listing names
//!      Partial: only the changed ports: their changed chains flushed and
//!               refilled, their elements added/deleted (refcounted),
//!               stale chains deleted after their references are gone
//!                                        │
//!                         sys::CommandRunner ── nft -f -   (both families, one transaction)
//! ```
//!
//! What was programmed is remembered per family: each port's chains (name
//! and a hash of their rules), affinity sets (name, timeout) and the keys of
//! its elements, and every element with its value and a reference count.
//! An endpoint change therefore flushes and refills that service's policy
//! chain (the DNAT rules live there: no chain per endpoint, see README.md)
//! and swaps two `hairpin` elements; its size does not depend on the number
//! of services. A failed transaction changes nothing, and the next sync is
//! Full. See README.md beside this file.

pub mod names;
pub mod render;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use self::render::{
    AffinitySet, Chain, Element, MAPS, PortObjects, RenderOpts, Writer, render_port, render_static, write_ports,
};
pub use super::settings::Settings;
use super::settings::{error_context, number_after};
use super::{Backend, BackendError, FamilyStats, SyncKind, SyncStats, ToolFailure, hash_rules, local_addresses};
use crate::config::ProxyMode;
use crate::model::{ChangeSet, DesiredState, IpFamily, NoLocal, ServicePortName};
use crate::sys::Sys;

/// The loader.
pub const NFT: &str = "nft";

/// On kernels before 6.2, a chain whose last reference (a map element) was
/// deleted cannot be deleted in the same transaction; it is flushed and
/// deleted by a sync at least this much later (as kube-proxy does).
pub const STALE_CHAIN_DELAY: Duration = Duration::from_secs(1);

/// An element's identity: (set or map, key).
type ElementKey = (&'static str, String);

/// One element as programmed, with how many service ports want it (two
/// ports of one service share their cluster IP in `cluster-ips`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProgrammedElement {
    value: Option<String>,
    comment: Option<String>,
    refs: u32,
}

/// One service port as programmed in one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ProgrammedPort {
    /// Chain name → hash of its rules.
    chains: BTreeMap<String, u64>,
    /// Affinity set name → timeout.
    sets: BTreeMap<String, u32>,
    elements: Vec<ElementKey>,
    /// Local policy without local endpoints (for metrics).
    no_local: NoLocal,
}

/// What is known to be programmed in one family's table.
#[derive(Debug)]
struct FamilyState {
    family: IpFamily,
    /// The options of the last full sync; None: unknown (next sync Full).
    opts: Option<RenderOpts>,
    ports: HashMap<ServicePortName, ProgrammedPort>,
    elements: HashMap<ElementKey, ProgrammedElement>,
    /// Chains flushed and waiting to be deleted (old kernels only).
    delayed: HashMap<String, Instant>,
    /// Ports with Local internal / external policy and no local endpoint.
    no_local: (usize, usize),
}

/// The changes to one family's memory that a transaction makes, applied
/// only once the kernel accepted it.
#[derive(Debug, Default)]
struct Update {
    ports: Vec<(ServicePortName, Option<ProgrammedPort>)>,
    elements: Vec<(ElementKey, Option<ProgrammedElement>)>,
    delayed_add: Vec<String>,
    delayed_remove: Vec<String>,
}

/// Names of our chains and sets found in the kernel, per family.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Existing {
    pub chains: BTreeMap<IpFamily, BTreeSet<String>>,
    pub sets: BTreeMap<IpFamily, BTreeSet<String>>,
}

/// The nftables backend.
pub struct NftablesBackend {
    sys: Sys,
    settings: Settings,
    families: Vec<FamilyState>,
    /// The last full sync failed: the next one re-creates the tables from
    /// scratch (`delete table`), in case our own objects are what the
    /// kernel refused (e.g. a map of another type left by an older version).
    scratch_next: bool,
    /// Whether stale chains must wait ([`STALE_CHAIN_DELAY`]); probed once.
    delay_chain_deletes: Option<bool>,
    last_transaction: Option<String>,
}

// === impl ProgrammedPort ===

impl ProgrammedPort {
    fn from_objects(objects: &PortObjects) -> Self {
        Self {
            chains: objects
                .chains
                .iter()
                .map(|c| (c.name.clone(), hash_rules(&c.rules)))
                .collect(),
            sets: objects
                .sets
                .iter()
                .map(|s| (s.name.clone(), s.timeout_seconds))
                .collect(),
            elements: objects.elements.iter().map(|e| (e.container, e.key.clone())).collect(),
            no_local: objects.no_local,
        }
    }
}

// === impl FamilyState ===

impl FamilyState {
    fn new(family: IpFamily) -> Self {
        Self {
            family,
            opts: None,
            ports: HashMap::new(),
            elements: HashMap::new(),
            delayed: HashMap::new(),
            no_local: (0, 0),
        }
    }

    /// Metrics for what is programmed now.
    fn stats(&self, elapsed: Duration) -> FamilyStats {
        FamilyStats {
            family: self.family,
            elapsed,
            no_local_internal: self.no_local.0,
            no_local_external: self.no_local.1,
            ..FamilyStats::default()
        }
    }

    /// Records `port` as programmed for `name` (None: gone).
    fn set_port(&mut self, name: ServicePortName, port: Option<ProgrammedPort>) {
        let count = |p: &ProgrammedPort| (usize::from(p.no_local.internal), usize::from(p.no_local.external));
        let old = match port {
            Some(p) => {
                let (i, e) = count(&p);
                self.no_local = (self.no_local.0 + i, self.no_local.1 + e);
                self.ports.insert(name, p)
            }
            None => self.ports.remove(&name),
        };
        if let Some(old) = old {
            let (i, e) = count(&old);
            self.no_local = (self.no_local.0.saturating_sub(i), self.no_local.1.saturating_sub(e));
        }
    }

    /// Forgets everything (the kernel's content is unknown).
    fn reset(&mut self) {
        self.opts = None;
        self.ports.clear();
        self.elements.clear();
        self.no_local = (0, 0);
    }

    /// Remembers what a successful full sync programmed.
    fn remember_full(
        &mut self,
        opts: RenderOpts,
        names_of: Vec<ServicePortName>,
        ports: &[PortObjects],
        delayed: Vec<(String, Instant)>,
    ) {
        self.reset();
        for (name, objects) in names_of.into_iter().zip(ports.iter()) {
            self.set_port(name, Some(ProgrammedPort::from_objects(objects)));
            for e in &objects.elements {
                self.elements
                    .entry((e.container, e.key.clone()))
                    .and_modify(|p| p.refs += 1)
                    .or_insert(ProgrammedElement {
                        value: e.value.clone(),
                        comment: e.comment.clone(),
                        refs: 1,
                    });
            }
        }
        self.delayed = delayed.into_iter().collect();
        self.opts = Some(opts);
    }

    fn apply(&mut self, update: Update, now: Instant) {
        for (name, port) in update.ports {
            self.set_port(name, port);
        }
        for (key, element) in update.elements {
            match element {
                Some(e) => self.elements.insert(key, e),
                None => self.elements.remove(&key),
            };
        }
        for c in update.delayed_remove {
            self.delayed.remove(&c);
        }
        for c in update.delayed_add {
            self.delayed.insert(c, now);
        }
    }

    /// Delayed chains old enough to be deleted now.
    fn ripe_delayed(&self, now: Instant) -> Vec<String> {
        let mut ripe: Vec<String> = self
            .delayed
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= STALE_CHAIN_DELAY)
            .map(|(c, _)| c.clone())
            .collect();
        ripe.sort();
        ripe
    }
}

// === impl NftablesBackend ===

impl NftablesBackend {
    /// A backend for both families. `delay_chain_deletes` None: decide
    /// from the kernel version at the first sync.
    pub fn new(sys: Sys, settings: Settings, delay_chain_deletes: Option<bool>) -> Self {
        Self {
            sys,
            settings,
            families: IpFamily::ALL.into_iter().map(FamilyState::new).collect(),
            scratch_next: false,
            delay_chain_deletes,
            last_transaction: None,
        }
    }

    /// The last transaction sent to `nft -f -` (successful or not).
    pub fn last_transaction(&self) -> Option<&str> {
        self.last_transaction.as_deref()
    }

    /// Makes chains waiting for deletion look `by` older (tests: no sleeping).
    #[cfg(test)]
    fn age_delayed(&mut self, by: Duration) {
        for f in &mut self.families {
            for since in f.delayed.values_mut() {
                *since = since.checked_sub(by).unwrap_or(*since);
            }
        }
    }

    /// Whether stale chains must be deleted later: kernels before 6.2 (or
    /// an unreadable version) notice a chain's last map reference is gone
    /// only after the transaction.
    fn delays_chain_deletes(&mut self) -> bool {
        if let Some(d) = self.delay_chain_deletes {
            return d;
        }
        let release = self
            .sys
            .runner
            .run("uname", &["-r"], None)
            .ok()
            .filter(|o| o.status == 0)
            .map(|o| o.stdout);
        let delay = match release.as_deref().and_then(kernel_version) {
            Some(v) => v < (6, 2),
            None => {
                warn!("Cannot read the kernel version; deleting stale nftables chains one sync later");
                true
            }
        };
        debug!(release = ?release.as_deref().map(str::trim), delay, "Kernel checked for delayed chain deletion");
        self.delay_chain_deletes = Some(delay);
        delay
    }

    /// Runs `nft` with `args` and optional input; Err on a non-zero exit.
    fn run_nft(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String, BackendError> {
        let out = self
            .sys
            .runner
            .run(NFT, args, stdin)
            .map_err(|source| BackendError::Exec {
                family: None,
                tool: NFT.into(),
                source,
            })?;
        if out.status != 0 {
            let line = number_after(&out.stderr, "stdin:");
            return Err(BackendError::Apply {
                // One transaction holds both families: the offending line says which.
                family: stdin.zip(line).and_then(|(input, n)| line_family(input, n)),
                tool: NFT.into(),
                source: ToolFailure {
                    status: out.status,
                    stderr: out.stderr.trim().to_string(),
                },
                context: stdin.zip(line).and_then(|(input, n)| error_context(input, n)),
            });
        }
        Ok(out.stdout)
    }

    /// Sends one transaction; on failure forgets what is programmed.
    fn apply_transaction(&mut self, text: String) -> Result<(), BackendError> {
        let result = self.run_nft(&["-f", "-"], Some(text.as_bytes()));
        self.last_transaction = Some(text);
        if let Err(e) = &result {
            if let BackendError::Apply { context: Some(c), .. } = e {
                warn!(context = %c, "nft refused the transaction");
            }
            for f in &mut self.families {
                f.reset();
            }
        }
        result.map(|_| ())
    }

    /// The names of our chains and sets as remembered, when memory is whole
    /// (after a successful sync): a listing costs a quadratic chain dump in
    /// the kernel (README.md), ~15 s at 30k services.
    fn remembered(&self) -> Option<Existing> {
        let mut out = Existing::default();
        for f in &self.families {
            f.opts.as_ref()?;
            let chains = out.chains.entry(f.family).or_default();
            chains.extend(f.ports.values().flat_map(|p| p.chains.keys().cloned()));
            chains.extend(f.delayed.keys().cloned());
            let sets = out.sets.entry(f.family).or_default();
            sets.extend(f.ports.values().flat_map(|p| p.sets.keys().cloned()));
        }
        Some(out)
    }

    /// The names of our chains and sets in the kernel (names only: no rule
    /// and no element is read).
    fn list_existing(&self) -> Result<Existing, BackendError> {
        let out = self.run_nft(&["-t", "-f", "-"], Some(b"list chains\nlist sets\n"))?;
        Ok(parse_listing(&out))
    }

    fn full(&mut self, desired: &DesiredState, opts: Vec<RenderOpts>) -> Result<SyncStats, BackendError> {
        let scratch = self.scratch_next;
        let existing = if scratch {
            Existing::default()
        } else if let Some(known) = self.remembered() {
            known
        } else {
            self.list_existing()?
        };
        let delay = self.delays_chain_deletes();
        let now = Instant::now();
        let mut text = String::new();
        let mut stats = SyncStats::default();
        let mut rendered = Vec::new();
        for (idx, opts) in opts.into_iter().enumerate() {
            let family = opts.family;
            let names_of: Vec<ServicePortName> = desired.ports_of(family).map(|s| s.port.name.clone()).collect();
            let ports: Vec<PortObjects> = desired.ports_of(family).map(|s| render_port(s, &opts)).collect();
            text.reserve(render::estimate_len(&ports));
            if scratch {
                let w = Writer::new(family);
                w.cmd(&mut text, "add", "table", "");
                w.cmd(&mut text, "delete", "table", "");
            }
            text.push_str(&render_static(&opts));
            write_ports(&mut text, family, &ports);
            let delayed = write_stale(&mut text, &self.families[idx], &existing, &ports, delay, now);
            stats.ports_written += ports.len();
            stats.ports_total += ports.len();
            stats.rules_written += ports.iter().map(PortObjects::rule_count).sum::<usize>();
            rendered.push((opts, names_of, ports, delayed));
        }
        stats.bytes_written = text.len();
        let result = self.apply_transaction(text);
        // A failed full sync is retried from scratch; a good one clears that.
        self.scratch_next = result.is_err();
        result?;
        for (f, (opts, names_of, ports, delayed)) in self.families.iter_mut().zip(rendered) {
            f.remember_full(opts, names_of, &ports, delayed);
        }
        info!(
            scratch,
            ports = stats.ports_total,
            bytes = stats.bytes_written,
            "Full nftables sync"
        );
        Ok(stats)
    }

    fn partial(&mut self, desired: &DesiredState, changes: &ChangeSet) -> Result<SyncStats, BackendError> {
        let now = Instant::now();
        let mut text = String::new();
        let mut updates = Vec::new();
        let mut stats = SyncStats::default();
        let delay = self.delays_chain_deletes();
        for f in &self.families {
            let Some(opts) = f.opts.as_ref() else {
                continue;
            };
            let mut delta = Delta::new(f.family);
            for name in changes.ports.keys() {
                let new = desired
                    .ports
                    .get(name)
                    .filter(|s| s.port.has_family(f.family))
                    .map(|s| render_port(s, opts));
                delta.add_port(f, name, new);
            }
            stats.ports_total += desired.ports_of(f.family).count();
            stats.rules_written += delta.rule_lines();
            updates.push(delta.finish(f, &mut text, delay, now));
        }
        stats.ports_written = changes.ports.len();
        stats.bytes_written = text.len();
        if !text.is_empty() {
            self.apply_transaction(text)?;
        }
        for (f, update) in self.families.iter_mut().zip(updates) {
            f.apply(update, now);
        }
        debug!(
            ports = stats.ports_written,
            bytes = stats.bytes_written,
            "Partial nftables sync"
        );
        Ok(stats)
    }

    fn cleanup_tables(&self, tables: &[(IpFamily, &str)]) -> Result<(), BackendError> {
        let mut text = String::new();
        for (family, table) in tables {
            // add + delete: a delete alone fails when the table does not exist.
            let f = names::family(*family);
            let _ = writeln!(text, "add table {f} {table}\ndelete table {f} {table}");
        }
        self.run_nft(&["-f", "-"], Some(text.as_bytes())).map(|_| ())
    }
}

/// Writes the deletion of stale chains and affinity sets of a full sync
/// (after every reference to them is gone); returns the chains left to a
/// later sync (old kernels), with since when.
fn write_stale(
    text: &mut String,
    f: &FamilyState,
    existing: &Existing,
    ports: &[PortObjects],
    delay: bool,
    now: Instant,
) -> Vec<(String, Instant)> {
    let w = Writer::new(f.family);
    let wanted: BTreeSet<&str> = ports
        .iter()
        .flat_map(|p| p.chains.iter().map(|c| c.name.as_str()))
        .collect();
    let wanted_sets: BTreeSet<&str> = ports
        .iter()
        .flat_map(|p| p.sets.iter().map(|s| s.name.as_str()))
        .collect();
    let mut left = Vec::new();
    let stale = existing
        .chains
        .get(&f.family)
        .into_iter()
        .flatten()
        .filter(|c| names::is_service_chain(c) && !wanted.contains(c.as_str()));
    for chain in stale {
        // Already emptied by `flush table`.
        match f.delayed.get(chain) {
            Some(since) if !delay || now.saturating_duration_since(*since) >= STALE_CHAIN_DELAY => {
                w.delete_chain(text, chain)
            }
            Some(since) => left.push((chain.clone(), *since)),
            None if delay => left.push((chain.clone(), now)),
            None => w.delete_chain(text, chain),
        }
    }
    let stale_sets = existing
        .sets
        .get(&f.family)
        .into_iter()
        .flatten()
        .filter(|s| names::is_affinity_set(s) && !wanted_sets.contains(s.as_str()));
    for set in stale_sets {
        w.delete_set(text, set);
    }
    left
}

impl Backend for NftablesBackend {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Nftables
    }

    fn sync(&mut self, desired: &DesiredState, changes: &ChangeSet, kind: SyncKind) -> Result<SyncStats, BackendError> {
        let local_addrs = local_addresses(&self.settings, &self.sys);
        let opts: Vec<RenderOpts> = self
            .families
            .iter()
            .map(|f| self.settings.render_opts(f.family, &desired.node, &local_addrs, false))
            .collect();
        let partial_ok =
            kind == SyncKind::Partial && self.families.iter().zip(&opts).all(|(f, o)| f.opts.as_ref() == Some(o));
        let started = Instant::now();
        let mut stats = if partial_ok {
            self.partial(desired, changes)?
        } else {
            self.full(desired, opts)?
        };
        // One transaction for both families: each is charged the whole time.
        let elapsed = started.elapsed();
        stats.families = self.families.iter().map(|f| f.stats(elapsed)).collect();
        Ok(stats)
    }

    fn render(&self, desired: &DesiredState) -> String {
        let mut out = String::new();
        for family in super::rendered_families(desired) {
            let opts = self.settings.render_opts(family, &desired.node, &[], false);
            out.push_str(&render::render_full(desired, &opts));
        }
        out
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        let ours = [(IpFamily::V4, names::TABLE), (IpFamily::V6, names::TABLE)];
        let kube_proxy = [
            (IpFamily::V4, names::KUBE_PROXY_TABLE),
            (IpFamily::V6, names::KUBE_PROXY_TABLE),
        ];
        let all: Vec<(IpFamily, &str)> = ours.iter().chain(kube_proxy.iter()).copied().collect();
        let result = self.cleanup_tables(&all).or_else(|e| {
            // Without IPv6 support the ip6 half fails: retry IPv4 alone.
            let v4: Vec<(IpFamily, &str)> = all.iter().copied().filter(|(f, _)| *f == IpFamily::V4).collect();
            self.cleanup_tables(&v4).map_err(|_| e)
        });
        for f in &mut self.families {
            f.reset();
            f.delayed.clear();
        }
        match result {
            Ok(()) => {
                info!("Removed nftables tables");
                Ok(())
            }
            // Without nft there is nothing of ours to remove.
            Err(e @ BackendError::Exec { .. }) => {
                debug!(error = %e.chain(), "nft cannot run; no nftables tables to remove");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The commands of a partial sync for one family, grouped so that objects
/// exist before anything refers to them and references are gone before
/// objects are deleted.
#[derive(Debug)]
struct Delta {
    family: IpFamily,
    sets: Vec<AffinitySet>,
    new_chains: Vec<Chain>,
    changed_chains: Vec<Chain>,
    stale_chains: Vec<String>,
    stale_sets: Vec<String>,
    /// Per element key: the reference-count change and the wanted value.
    elements: BTreeMap<ElementKey, (i64, Option<Element>)>,
    update: Update,
}

// === impl Delta ===

impl Delta {
    fn new(family: IpFamily) -> Self {
        Self {
            family,
            sets: Vec::new(),
            new_chains: Vec::new(),
            changed_chains: Vec::new(),
            stale_chains: Vec::new(),
            stale_sets: Vec::new(),
            elements: BTreeMap::new(),
            update: Update::default(),
        }
    }

    fn add_port(&mut self, f: &FamilyState, name: &ServicePortName, new: Option<PortObjects>) {
        let empty = ProgrammedPort::default();
        let old = f.ports.get(name).unwrap_or(&empty);
        self.update
            .ports
            .push((name.clone(), new.as_ref().map(ProgrammedPort::from_objects)));
        let new = new.unwrap_or_default();
        for chain in &new.chains {
            match old.chains.get(&chain.name) {
                Some(h) if *h == hash_rules(&chain.rules) => {}
                Some(_) => self.changed_chains.push(chain.clone()),
                None if f.delayed.contains_key(&chain.name) => {
                    // Flushed earlier and not yet deleted: reuse it.
                    self.update.delayed_remove.push(chain.name.clone());
                    self.changed_chains.push(chain.clone());
                }
                None => self.new_chains.push(chain.clone()),
            }
        }
        let new_chains: BTreeSet<&str> = new.chains.iter().map(|c| c.name.as_str()).collect();
        self.stale_chains
            .extend(old.chains.keys().filter(|c| !new_chains.contains(c.as_str())).cloned());
        for set in &new.sets {
            if old.sets.get(&set.name) != Some(&set.timeout_seconds) {
                self.sets.push(set.clone());
            }
        }
        let new_sets: BTreeSet<&str> = new.sets.iter().map(|s| s.name.as_str()).collect();
        self.stale_sets
            .extend(old.sets.keys().filter(|s| !new_sets.contains(s.as_str())).cloned());
        for key in &old.elements {
            self.elements.entry(key.clone()).or_insert((0, None)).0 -= 1;
        }
        for e in new.elements {
            let entry = self.elements.entry((e.container, e.key.clone())).or_insert((0, None));
            entry.0 += 1;
            entry.1 = Some(e);
        }
    }

    fn rule_lines(&self) -> usize {
        self.new_chains
            .iter()
            .chain(&self.changed_chains)
            .map(|c| c.rules.len())
            .sum::<usize>()
            + self.elements.len()
    }

    /// Writes the commands into `out` and returns the memory update.
    fn finish(mut self, f: &FamilyState, out: &mut String, delay: bool, now: Instant) -> Update {
        let w = Writer::new(self.family);
        for set in &self.sets {
            w.add_affinity_set(out, self.family, set);
        }
        for c in &self.new_chains {
            w.add_chain(out, &c.name);
        }
        for c in &self.changed_chains {
            w.flush_chain(out, &c.name);
        }
        for c in self.new_chains.iter().chain(&self.changed_chains) {
            w.add_rules(out, c);
        }
        self.write_elements(f, &w, out);
        // Chains flushed by earlier syncs on old kernels, now safe to delete
        // (unless this sync brings them back).
        let reused: BTreeSet<&str> = self.update.delayed_remove.iter().map(String::as_str).collect();
        let ripe: Vec<String> = f
            .ripe_delayed(now)
            .into_iter()
            .filter(|c| !reused.contains(c.as_str()))
            .collect();
        for c in ripe {
            w.delete_chain(out, &c);
            self.update.delayed_remove.push(c);
        }
        // Referrers first: external → service/local → endpoint.
        self.stale_chains.sort_by_key(|c| names::reference_rank(c));
        for c in &self.stale_chains {
            if delay {
                w.flush_chain(out, c);
                self.update.delayed_add.push(c.clone());
            } else {
                w.delete_chain(out, c);
            }
        }
        for s in &self.stale_sets {
            w.delete_set(out, s);
        }
        self.update
    }

    /// Resolves reference counts against what is programmed: deletes
    /// elements nobody wants any more, adds new ones, replaces changed ones.
    fn write_elements(&mut self, f: &FamilyState, w: &Writer, out: &mut String) {
        let mut deletes: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let mut adds: BTreeMap<&'static str, Vec<Element>> = BTreeMap::new();
        for ((container, key), (delta, wanted)) in std::mem::take(&mut self.elements) {
            let current = f.elements.get(&(container, key.clone()));
            let refs = i64::from(current.map_or(0, |c| c.refs)) + delta;
            let refs = u32::try_from(refs.max(0)).unwrap_or(u32::MAX);
            if refs == 0 {
                if current.is_some() {
                    deletes.entry(container).or_default().push(key.clone());
                    self.update.elements.push(((container, key), None));
                }
                continue;
            }
            let programmed = |e: &Element| ProgrammedElement {
                value: e.value.clone(),
                comment: e.comment.clone(),
                refs,
            };
            match (current, wanted) {
                (Some(c), Some(e)) if e.value != c.value || e.comment != c.comment => {
                    deletes.entry(container).or_default().push(key.clone());
                    self.update.elements.push(((container, key), Some(programmed(&e))));
                    adds.entry(container).or_default().push(e);
                }
                (Some(c), _) => {
                    let kept = ProgrammedElement { refs, ..c.clone() };
                    self.update.elements.push(((container, key), Some(kept)));
                }
                (None, Some(e)) => {
                    self.update.elements.push(((container, key), Some(programmed(&e))));
                    adds.entry(container).or_default().push(e);
                }
                // More references than ever added: cannot happen.
                (None, None) => {}
            }
        }
        for m in MAPS {
            if let Some(keys) = deletes.get(m.name) {
                w.delete_elements(out, m.name, keys.iter().map(String::as_str));
            }
        }
        for m in MAPS {
            if let Some(elements) = adds.get(m.name) {
                w.add_elements(out, m.name, elements);
            }
        }
    }
}

/// `6.18.44-fc` → (6, 18).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Our chains and sets in `nft -t list chains; list sets` output.
pub fn parse_listing(listing: &str) -> Existing {
    let mut out = Existing::default();
    let mut family = None;
    for line in listing.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("table ") {
            let mut words = rest.split_whitespace();
            family = match (words.next(), words.next()) {
                (Some("ip"), Some(names::TABLE)) => Some(IpFamily::V4),
                (Some("ip6"), Some(names::TABLE)) => Some(IpFamily::V6),
                _ => None,
            };
            continue;
        }
        let Some(family) = family else { continue };
        let name = |rest: &str| rest.trim_end_matches('{').trim().trim_matches('"').to_string();
        if let Some(rest) = line.strip_prefix("chain ") {
            out.chains.entry(family).or_default().insert(name(rest));
        } else if let Some(rest) = line.strip_prefix("set ") {
            out.sets.entry(family).or_default().insert(name(rest));
        }
    }
    out
}

/// The family of the object on line `line` (1-based) of an nft input:
/// `… ip kproxy …` or `… ip6 kproxy …`.
fn line_family(input: &[u8], line: usize) -> Option<IpFamily> {
    let text = String::from_utf8_lossy(input);
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let mut words = l.split_whitespace();
    words.find_map(|w| match w {
        "ip" => Some(IpFamily::V4),
        "ip6" => Some(IpFamily::V6),
        _ => None,
    })
}

/// For an nft error naming a line of its input (`/dev/stdin:12:3-9: Error`),
/// that line with three lines of context either side, numbered.
pub fn transaction_error_context(stderr: &str, input: &[u8]) -> Option<String> {
    error_context(input, number_after(stderr, "stdin:")?)
}
