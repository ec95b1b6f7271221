//! EndpointSlices → [`Endpoint`]s per service port, merged the way
//! kube-proxy's `EndpointSliceCache` merges them.
//!
//! Each slice is first reduced to a compact [`SliceInfo`] (the full API
//! object is not kept: at 250k endpoints that alone would cost hundreds of
//! megabytes). A service's endpoints are then the union of all its slices,
//! keyed by the slice port's name and protocol: the EndpointSlice controller
//! writes the service port's name and the *resolved* target port, which is
//! how named target ports reach us. Duplicates (the same `ip:port` in two
//! slices, as happens while the controller moves an endpoint) are merged,
//! preferring a ready copy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{Endpoint, Problem, Protocol, ServiceName};

/// The label tying a slice to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Endpoints of one service, by (port name, protocol).
pub type ServiceEndpoints = BTreeMap<(String, Protocol), Vec<Endpoint>>;

/// What the model keeps of one EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    pub service: ServiceName,
    /// (port name, protocol, port number) of each usable slice port.
    pub ports: Vec<(String, Protocol, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of a slice, before ports and locality are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub zone_hints: BTreeSet<String>,
    pub node_hints: BTreeSet<String>,
}

/// Why a slice is ignored as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SliceSkip {
    #[error("EndpointSlice without namespace, name or {SERVICE_NAME_LABEL} label")]
    Unowned,
    #[error("EndpointSlice of address type {0} is not proxied")]
    AddressType(String),
}

/// The service a slice belongs to, from its namespace and service-name label.
pub fn slice_service(slice: &EndpointSlice) -> Option<ServiceName> {
    let ns = slice.metadata.namespace.as_deref()?;
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    if svc.is_empty() {
        return None;
    }
    Some(ServiceName::new(ns, svc.as_str()))
}

// === impl SliceInfo ===

impl SliceInfo {
    /// Reduces a slice to what endpoint selection needs. Malformed ports and
    /// addresses are dropped and reported in `problems`.
    pub fn from_slice(slice: &EndpointSlice, problems: &mut Vec<Problem>) -> Result<Self, SliceSkip> {
        let service = slice_service(slice).ok_or(SliceSkip::Unowned)?;
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            return Err(SliceSkip::AddressType(slice.address_type.clone()));
        }
        let slice_name = slice.metadata.name.as_deref().unwrap_or("");
        let mut ports = Vec::new();
        for port in slice.ports.iter().flatten() {
            let port_name = port.name.clone().unwrap_or_default();
            let Some(protocol) = Protocol::from_api(port.protocol.as_deref()) else {
                problems.push(Problem::new(
                    &service,
                    format!("EndpointSlice {slice_name}: port {port_name:?} has an unsupported protocol"),
                ));
                continue;
            };
            // A slice port without a number means "no usable port".
            let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) else {
                continue;
            };
            ports.push((port_name, protocol, number));
        }
        let mut endpoints = Vec::with_capacity(slice.endpoints.len());
        for ep in &slice.endpoints {
            let Some(addr) = ep.addresses.first() else { continue };
            match addr.parse::<IpAddr>() {
                Ok(ip) => endpoints.push(SliceEndpoint::new(ip, ep)),
                Err(_) => problems.push(Problem::new(
                    &service,
                    format!("EndpointSlice {slice_name}: invalid address {addr:?} ignored"),
                )),
            }
        }
        Ok(Self {
            service,
            ports,
            endpoints,
        })
    }
}

// === impl SliceEndpoint ===

impl SliceEndpoint {
    fn new(ip: IpAddr, ep: &k8s_openapi::api::discovery::v1::Endpoint) -> Self {
        let cond = ep.conditions.as_ref();
        // Absent `ready` or `serving` count as true and absent `terminating`
        // as false, as kube-proxy reads them.
        let hints = ep.hints.as_ref();
        Self {
            ip,
            ready: cond.and_then(|c| c.ready).unwrap_or(true),
            serving: cond.and_then(|c| c.serving).unwrap_or(true),
            terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
            node_name: ep.node_name.clone().filter(|n| !n.is_empty()),
            zone: ep.zone.clone().filter(|z| !z.is_empty()),
            zone_hints: hints
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|z| z.name.clone())
                .collect(),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_ref())
                .into_iter()
                .flatten()
                .map(|n| n.name.clone())
                .collect(),
        }
    }

    fn at_port(&self, port: u16, node_name: &str) -> Endpoint {
        Endpoint {
            ip: self.ip,
            port,
            ready: self.ready,
            serving: self.serving,
            terminating: self.terminating,
            is_local: !node_name.is_empty() && self.node_name.as_deref() == Some(node_name),
            node_name: self.node_name.clone(),
            zone: self.zone.clone(),
            zone_hints: self.zone_hints.clone(),
            node_hints: self.node_hints.clone(),
        }
    }
}

/// Merges all slices of one service into endpoints per port, sorted by
/// address. `node_name` marks endpoints as local.
pub fn merge_slices<'a>(slices: impl IntoIterator<Item = &'a SliceInfo>, node_name: &str) -> ServiceEndpoints {
    // (port name, protocol) -> (ip, port) -> endpoint; BTreeMaps make the
    // result independent of slice order.
    let mut merged: BTreeMap<(String, Protocol), BTreeMap<(IpAddr, u16), Endpoint>> = BTreeMap::new();
    for slice in slices {
        for (port_name, protocol, number) in &slice.ports {
            let by_addr = merged.entry((port_name.clone(), *protocol)).or_default();
            for ep in &slice.endpoints {
                let keep_existing = by_addr
                    .get(&(ep.ip, *number))
                    .is_some_and(|existing| existing.ready || !ep.ready);
                if !keep_existing {
                    by_addr.insert((ep.ip, *number), ep.at_port(*number, node_name));
                }
            }
        }
    }
    merged
        .into_iter()
        .map(|(key, eps)| (key, eps.into_values().collect()))
        .collect()
}
