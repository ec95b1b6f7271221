//! The index of API objects and the change tracker.
//!
//! ```text
//!  apply/delete/reset(Service)  ──▶ services[svc]  ─┐
//!  apply/delete/reset(Slice)    ──▶ slices[svc]    ─┼─▶ recompute(svc) ─▶ current[ports of svc]
//!  set_node(Node)               ──▶ node (zone)    ─┘        │
//!                                                            ▼
//!                          dirty[svc] = generation  ⇔  current[svc] ≠ programmed[svc]
//!
//!  changes() ─▶ ChangeSet {previous: programmed, current} ─▶ backend ─▶ ack(ChangeSet)
//!                                                                 programmed[svc] = what was synced
//! ```
//!
//! Every mutation recomputes only the service it touches, and a mutation
//! that changes nothing a backend can see (a label edit, a slice rewritten
//! with the same endpoints) leaves no pending change. A ChangeSet is
//! acknowledged only after the backend succeeded; changes that arrive while
//! a sync runs get a newer generation and stay pending.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{
    Endpoint, EndpointSelection, IpFamily, NodeInfo, Problem, SelectionOptions, ServiceName, ServicePort,
    ServicePortName, ServiceSkip, SliceInfo, merge_slices, select_endpoints, service_name, service_ports,
};

/// One family's endpoints of a service port, with their selection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyEndpoints {
    /// Every endpoint of this family, sorted by address.
    pub endpoints: Vec<Endpoint>,
    pub selection: EndpointSelection,
}

/// The complete desired state of one service port: what a backend programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortState {
    pub port: ServicePort,
    pub v4: FamilyEndpoints,
    pub v6: FamilyEndpoints,
}

/// A snapshot of everything that should be programmed on this node.
#[derive(Clone, Debug, Default)]
pub struct DesiredState {
    pub node: NodeInfo,
    pub ports: BTreeMap<ServicePortName, Arc<ServicePortState>>,
}

/// How one service port differs from what was last programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortChange {
    /// What the backend last programmed (None: a new port).
    pub previous: Option<Arc<ServicePortState>>,
    /// What should be programmed now (None: the port is gone).
    pub current: Option<Arc<ServicePortState>>,
}

/// The service ports that changed since the last acknowledged sync.
#[derive(Clone, Debug, Default)]
pub struct ChangeSet {
    pub ports: BTreeMap<ServicePortName, PortChange>,
    /// Services covered, with the generation seen; used by `ack`.
    services: Vec<(ServiceName, u64)>,
    /// Counts of services whose Service object / endpoints changed.
    pub service_changes: usize,
    pub endpoint_changes: usize,
    /// Set when the node's information changed (generation, for `ack`).
    node_generation: Option<u64>,
    /// Trigger times of the endpoint changes covered (see
    /// [`TRIGGER_TIME_ANNOTATION`]) with the family of the slice that
    /// carried them, for the network-programming latency.
    pub trigger_times: Vec<(IpFamily, String)>,
}

/// What is pending for one service.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Dirty {
    generation: u64,
    service: bool,
    endpoints: bool,
    /// `endpoints.kubernetes.io/last-change-trigger-time` values of the
    /// slice changes behind this entry (RFC 3339, parsed by the caller),
    /// with the slice's address family.
    triggers: Vec<(IpFamily, String)>,
}

/// The EndpointSlice annotation kube-proxy measures programming latency from.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The model: API objects in, desired state and change sets out. Pure.
#[derive(Debug)]
pub struct Model {
    opts: SelectionOptions,
    node: NodeInfo,
    services: HashMap<ServiceName, Vec<ServicePort>>,
    slices: HashMap<ServiceName, BTreeMap<String, SliceInfo>>,
    /// (namespace, slice name) → owning service, to find a slice on delete.
    slice_owner: HashMap<(String, String), ServiceName>,
    current: BTreeMap<ServicePortName, Arc<ServicePortState>>,
    programmed: BTreeMap<ServicePortName, Arc<ServicePortState>>,
    dirty: BTreeMap<ServiceName, Dirty>,
    /// Generation of an unacknowledged change of the node's addresses or
    /// state (rules such as NodePort `primary` depend on them).
    node_dirty: Option<u64>,
    generation: u64,
    problems: Vec<Problem>,
}

// === impl ServicePortState ===

impl ServicePortState {
    pub fn family(&self, family: IpFamily) -> &FamilyEndpoints {
        match family {
            IpFamily::V4 => &self.v4,
            IpFamily::V6 => &self.v6,
        }
    }
}

// === impl DesiredState ===

impl DesiredState {
    /// The service ports that have an address in `family`.
    pub fn ports_of(&self, family: IpFamily) -> impl Iterator<Item = &Arc<ServicePortState>> {
        self.ports.values().filter(move |s| s.port.has_family(family))
    }
}

// === impl ChangeSet ===

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.node_generation.is_none()
    }

    /// Whether the node's own information (addresses, zone, state) changed.
    pub fn node_changed(&self) -> bool {
        self.node_generation.is_some()
    }

    /// Service ports that are new or changed (not removed).
    pub fn updated(&self) -> impl Iterator<Item = (&ServicePortName, &Arc<ServicePortState>)> {
        self.ports
            .iter()
            .filter_map(|(n, c)| c.current.as_ref().map(|s| (n, s)))
    }

    /// Service ports that were programmed and are now gone.
    pub fn removed(&self) -> impl Iterator<Item = (&ServicePortName, &Arc<ServicePortState>)> {
        self.ports
            .iter()
            .filter(|(_, c)| c.current.is_none())
            .filter_map(|(n, c)| c.previous.as_ref().map(|s| (n, s)))
    }
}

// === impl Model ===

impl Model {
    /// An empty model for the node `node_name`.
    pub fn new(node_name: impl Into<String>, opts: SelectionOptions) -> Self {
        Self {
            opts,
            node: NodeInfo::named(node_name),
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            current: BTreeMap::new(),
            programmed: BTreeMap::new(),
            dirty: BTreeMap::new(),
            node_dirty: None,
            generation: 0,
            problems: Vec::new(),
        }
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Adds or updates a Service.
    pub fn apply_service(&mut self, svc: &Service) {
        let Some(name) = service_name(svc) else {
            self.problems.push(Problem::object(
                "Service",
                "a Service without namespace or name was ignored",
            ));
            return;
        };
        let mut problems = Vec::new();
        let ports = match service_ports(svc, &mut problems) {
            Ok(ports) => ports,
            Err(ServiceSkip::Headless | ServiceSkip::ExternalName) => Vec::new(),
            Err(skip) => {
                problems.push(Problem::new(&name, format!("service ignored: {skip}")));
                Vec::new()
            }
        };
        self.problems.append(&mut problems);
        if ports.is_empty() {
            self.services.remove(&name);
        } else {
            self.services.insert(name.clone(), ports);
        }
        self.recompute(&name, true, false);
    }

    /// Removes a Service.
    pub fn delete_service(&mut self, name: &ServiceName) {
        if self.services.remove(name).is_some() {
            self.recompute(name, true, false);
        }
    }

    /// Replaces all Services with `live` (after a relist): applies each and
    /// deletes only those that vanished, so known state is never wiped.
    pub fn reset_services(&mut self, live: &[Service]) {
        let keep: HashSet<ServiceName> = live.iter().filter_map(service_name).collect();
        self.retain_services(&keep);
        for svc in live {
            self.apply_service(svc);
        }
    }

    /// Deletes every Service not in `keep` (the end of a relist whose
    /// objects were applied one by one).
    pub fn retain_services(&mut self, keep: &HashSet<ServiceName>) {
        let gone: Vec<ServiceName> = self.services.keys().filter(|n| !keep.contains(*n)).cloned().collect();
        for name in gone {
            self.delete_service(&name);
        }
    }

    /// Adds or updates an EndpointSlice.
    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let key = slice_key(slice);
        let mut problems = Vec::new();
        let info = SliceInfo::from_slice(slice, &mut problems);
        self.problems.append(&mut problems);
        // A slice may have moved to another service (label edit): drop the old copy.
        let old_owner = key.as_ref().and_then(|k| self.slice_owner.get(k).cloned());
        match (key, info) {
            (Some(key), Ok(info)) => {
                let owner = info.service.clone();
                if let Some(old) = old_owner.filter(|o| *o != owner) {
                    self.remove_slice_from(&old, &key.1);
                }
                let entry = self.slices.entry(owner.clone()).or_default();
                if entry.get(&key.1) == Some(&info) {
                    return; // nothing a backend can see changed
                }
                entry.insert(key.1.clone(), info);
                self.slice_owner.insert(key, owner.clone());
                self.recompute(&owner, false, true);
                let family = if slice.address_type == "IPv6" {
                    IpFamily::V6
                } else {
                    IpFamily::V4
                };
                let trigger = slice
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
                    .map(|t| (family, t.clone()));
                if let (Some(d), Some(t)) = (self.dirty.get_mut(&owner), trigger)
                    && !d.triggers.contains(&t)
                {
                    d.triggers.push(t);
                }
            }
            (Some(key), Err(skip)) => {
                self.problems.push(Problem::object(
                    "EndpointSlice",
                    format!("{}/{} ignored: {skip}", key.0, key.1),
                ));
                if let Some(old) = old_owner {
                    self.slice_owner.remove(&key);
                    self.remove_slice_from(&old, &key.1);
                }
            }
            (None, _) => {
                self.problems.push(Problem::object(
                    "EndpointSlice",
                    "an EndpointSlice without namespace or name was ignored",
                ));
            }
        }
    }

    /// Removes an EndpointSlice by namespace and name.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        if let Some(owner) = self.slice_owner.remove(&(namespace.to_string(), name.to_string())) {
            self.remove_slice_from(&owner, name);
        }
    }

    /// Replaces all EndpointSlices with `live` (after a relist).
    pub fn reset_slices(&mut self, live: &[EndpointSlice]) {
        let keep: HashSet<(String, String)> = live.iter().filter_map(slice_key).collect();
        self.retain_slices(&keep);
        for slice in live {
            self.apply_slice(slice);
        }
    }

    /// Deletes every EndpointSlice whose (namespace, name) is not in `keep`.
    pub fn retain_slices(&mut self, keep: &HashSet<(String, String)>) {
        let gone: Vec<(String, String)> = self
            .slice_owner
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.delete_slice(&ns, &name);
        }
    }

    /// Records the proxy's own Node (None: not found or deleted). Only a
    /// change that affects endpoint selection (the zone) recomputes services.
    pub fn set_node(&mut self, node: Option<&Node>) {
        let mut info = match node {
            Some(n) => NodeInfo::from_node(n),
            None => NodeInfo::named(self.node.name.clone()),
        };
        // Our identity comes from configuration, never from the object.
        info.name = self.node.name.clone();
        if info.addresses.is_empty() {
            // Keep addresses given by flags when the object has none.
            info.addresses = self.node.addresses.clone();
        }
        let zone_changed = info.zone != self.node.zone;
        if info != self.node {
            self.generation += 1;
            self.node_dirty = Some(self.generation);
        }
        self.node = info;
        if zone_changed {
            let names: Vec<ServiceName> = self.services.keys().cloned().collect();
            for name in names {
                self.recompute(&name, false, true);
            }
        }
    }

    /// Sets the node's addresses when no Node object provides them.
    pub fn set_node_addresses_fallback(&mut self, addrs: &[std::net::IpAddr]) {
        if self.node.addresses.is_empty() {
            self.node.addresses = addrs.to_vec();
        }
    }

    /// Problems found in API objects since the last call.
    pub fn take_problems(&mut self) -> Vec<Problem> {
        std::mem::take(&mut self.problems)
    }

    /// Number of services (and the node, if it changed) with changes not
    /// yet acknowledged.
    pub fn pending(&self) -> usize {
        self.dirty.len() + usize::from(self.node_dirty.is_some())
    }

    /// Number of service ports in the desired state.
    pub fn port_count(&self) -> usize {
        self.current.len()
    }

    /// Number of services with at least one port in the desired state.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Snapshot of the full desired state.
    pub fn desired(&self) -> DesiredState {
        DesiredState {
            node: self.node.clone(),
            ports: self.current.clone(),
        }
    }

    /// Everything pending since the last acknowledged sync.
    pub fn changes(&self) -> ChangeSet {
        let mut set = ChangeSet {
            node_generation: self.node_dirty,
            ..ChangeSet::default()
        };
        for (svc, dirty) in &self.dirty {
            set.services.push((svc.clone(), dirty.generation));
            set.service_changes += usize::from(dirty.service);
            set.endpoint_changes += usize::from(dirty.endpoints);
            set.trigger_times.extend(dirty.triggers.iter().cloned());
            let mut names: Vec<&ServicePortName> = ports_of(&self.programmed, svc).map(|(n, _)| n).collect();
            names.extend(ports_of(&self.current, svc).map(|(n, _)| n));
            for name in names {
                let previous = self.programmed.get(name).cloned();
                let current = self.current.get(name).cloned();
                if previous != current {
                    set.ports.insert(name.clone(), PortChange { previous, current });
                }
            }
        }
        set
    }

    /// Marks a ChangeSet as programmed. Services changed again since the set
    /// was taken stay pending.
    pub fn ack(&mut self, set: &ChangeSet) {
        if set.node_generation.is_some() && set.node_generation == self.node_dirty {
            self.node_dirty = None;
        }
        for (name, change) in &set.ports {
            match &change.current {
                Some(state) => self.programmed.insert(name.clone(), state.clone()),
                None => self.programmed.remove(name),
            };
        }
        for (svc, generation) in &set.services {
            if self.dirty.get(svc).is_some_and(|d| d.generation == *generation) {
                self.dirty.remove(svc);
            } else if !self.dirty.contains_key(svc) && !ports_of(&self.current, svc).eq(ports_of(&self.programmed, svc))
            {
                // The service went back to its previously programmed state
                // while this set was synced (recompute then dropped its mark),
                // but the backend now holds the set's state: pending again.
                self.mark(svc, true, true);
            }
        }
    }

    /// Forgets what was programmed, so the next ChangeSet covers every
    /// service (for a backend that lost its state).
    pub fn forget_programmed(&mut self) {
        self.programmed.clear();
        let names: Vec<ServiceName> = self.services.keys().cloned().collect();
        for name in names {
            self.mark(&name, true, true);
        }
    }

    fn remove_slice_from(&mut self, owner: &ServiceName, slice_name: &str) {
        if let Some(slices) = self.slices.get_mut(owner) {
            slices.remove(slice_name);
            if slices.is_empty() {
                self.slices.remove(owner);
            }
            self.recompute(owner, false, true);
        }
    }

    /// Rebuilds `current` for one service and updates its dirty mark.
    fn recompute(&mut self, svc: &ServiceName, service_changed: bool, endpoints_changed: bool) {
        let mut fresh: BTreeMap<ServicePortName, ServicePortState> = BTreeMap::new();
        if let Some(ports) = self.services.get(svc) {
            let merged = merge_slices(
                self.slices.get(svc).into_iter().flat_map(|s| s.values()),
                &self.node.name,
            );
            for port in ports {
                let all = merged
                    .get(&(port.name.port.clone(), port.name.protocol))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let family = |f: IpFamily| {
                    if !port.has_family(f) {
                        return FamilyEndpoints::default();
                    }
                    let endpoints: Vec<Endpoint> = all.iter().filter(|e| e.family() == f).cloned().collect();
                    let selection = select_endpoints(port, &endpoints, &self.node, self.opts);
                    FamilyEndpoints { endpoints, selection }
                };
                let state = ServicePortState {
                    v4: family(IpFamily::V4),
                    v6: family(IpFamily::V6),
                    port: port.clone(),
                };
                fresh.insert(port.name.clone(), state);
            }
        }
        let old: Vec<ServicePortName> = ports_of(&self.current, svc).map(|(n, _)| n.clone()).collect();
        let unchanged = old.len() == fresh.len()
            && old.iter().all(|n| {
                fresh
                    .get(n)
                    .is_some_and(|f| self.current.get(n).is_some_and(|c| **c == *f))
            });
        if unchanged {
            return;
        }
        for name in old {
            self.current.remove(&name);
        }
        for (name, state) in fresh {
            self.current.insert(name, Arc::new(state));
        }
        let same_as_programmed = {
            let a: Vec<_> = ports_of(&self.current, svc).collect();
            let b: Vec<_> = ports_of(&self.programmed, svc).collect();
            a == b
        };
        if same_as_programmed {
            self.dirty.remove(svc);
        } else {
            self.mark(svc, service_changed, endpoints_changed);
        }
    }

    fn mark(&mut self, svc: &ServiceName, service_changed: bool, endpoints_changed: bool) {
        self.generation += 1;
        let generation = self.generation;
        let entry = self.dirty.entry(svc.clone()).or_insert(Dirty {
            generation,
            service: false,
            endpoints: false,
            triggers: Vec::new(),
        });
        entry.generation = generation;
        entry.service |= service_changed;
        entry.endpoints |= endpoints_changed;
    }
}

/// The (namespace, name) identity of a slice.
pub fn slice_key(slice: &EndpointSlice) -> Option<(String, String)> {
    Some((slice.metadata.namespace.clone()?, slice.metadata.name.clone()?))
}

/// The entries of one service in a map keyed by ServicePortName.
fn ports_of<'a>(
    map: &'a BTreeMap<ServicePortName, Arc<ServicePortState>>,
    svc: &'a ServiceName,
) -> impl Iterator<Item = (&'a ServicePortName, &'a Arc<ServicePortState>)> {
    let start = ServicePortName::new(svc.clone(), String::new(), super::Protocol::Tcp);
    map.range(start..).take_while(move |(n, _)| n.service == *svc)
}
