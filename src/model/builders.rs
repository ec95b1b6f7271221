//! Builders of API objects (Service, EndpointSlice, Node) for unit tests,
//! integration tests, benchmarks and the synthetic-cluster generator. Test
//! support: built only for tests or with the `test-support` feature, never
//! into the shipped binary.
//!
//! They take `&str` and store strings as given, without parsing, so a test
//! can build malformed objects (`.cluster_ip("bogus")`) as easily as valid
//! ones. Nothing is defaulted behind the caller's back except what the API
//! server or the EndpointSlice controller would always fill in (the
//! service-name label of a slice, explicit endpoint conditions, the
//! `ipFamilies` matching the cluster IPs).
//!
//! ```
//! use kproxy::model::builders::{EpSpec, mk_node, mk_service, mk_slice};
//!
//! let svc = mk_service("default", "web")
//!     .cluster_ip("10.96.0.10")
//!     .port("http", 80, "TCP")
//!     .build();
//! let slice = mk_slice("default", "web-abc", "web")
//!     .port("http", 8080, "TCP")
//!     .endpoint("10.0.0.1")
//!     .endpoint_with(EpSpec::new("10.0.0.2").node("node-b").serving_terminating())
//!     .build();
//! let node = mk_node("node-a").zone("zone-a").internal_ip("192.168.0.1").build();
//! # let _ = (svc, slice, node);
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeSpec, NodeStatus, Service,
    ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig, Taint,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::endpoints::SERVICE_NAME_LABEL;
use super::node::ZONE_LABEL;

/// The label the EndpointSlice controller puts on the slices it manages.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

/// The value of [`MANAGED_BY_LABEL`] for the in-tree controller.
pub const MANAGED_BY_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// Starts a Service `ns/name` with no cluster IP, no ports and the default
/// type (ClusterIP).
pub fn mk_service(ns: &str, name: &str) -> ServiceBuilder {
    ServiceBuilder {
        svc: Service {
            metadata: meta(ns, name),
            spec: Some(ServiceSpec::default()),
            status: None,
        },
    }
}

/// Starts an EndpointSlice `ns/name` of address type IPv4 belonging to the
/// Service `ns/service` (through the `kubernetes.io/service-name` label).
pub fn mk_slice(ns: &str, name: &str, service: &str) -> SliceBuilder {
    let mut metadata = meta(ns, name);
    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(SERVICE_NAME_LABEL.to_string(), service.to_string());
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY_CONTROLLER.to_string());
    SliceBuilder {
        slice: EndpointSlice {
            address_type: "IPv4".to_string(),
            endpoints: Vec::new(),
            metadata,
            ports: None,
        },
    }
}

/// Starts a Node `name` without labels, addresses or taints.
pub fn mk_node(name: &str) -> NodeBuilder {
    NodeBuilder {
        node: Node {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: None,
        },
    }
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.to_string()),
        name: Some(name.to_string()),
        ..ObjectMeta::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

/// `"IPv6"` for anything that looks like an IPv6 address, else `"IPv4"`.
/// A guess on the spelling only: builders never parse.
fn family_of(ip: &str) -> String {
    if ip.contains(':') { "IPv6" } else { "IPv4" }.to_string()
}

// === ServiceBuilder ===

/// A Service under construction; see [`mk_service`].
#[derive(Clone, Debug)]
pub struct ServiceBuilder {
    svc: Service,
}

impl ServiceBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.svc.spec.get_or_insert_with(ServiceSpec::default)
    }

    fn last_port(&mut self) -> Option<&mut ServicePort> {
        self.spec().ports.as_mut().and_then(|p| p.last_mut())
    }

    fn ingress(mut self, ingress: LoadBalancerIngress) -> Self {
        let status = self.svc.status.get_or_insert_with(ServiceStatus::default);
        let lb = status.load_balancer.get_or_insert_with(LoadBalancerStatus::default);
        lb.ingress.get_or_insert_with(Vec::new).push(ingress);
        self
    }

    /// A single-stack cluster IP (`clusterIP` and `clusterIPs: [ip]`).
    pub fn cluster_ip(self, ip: &str) -> Self {
        self.cluster_ips(&[ip])
    }

    /// Cluster IPs, primary first (`clusterIP` is the first one). `ipFamilies`
    /// follows the spelling of each address.
    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        let spec = self.spec();
        spec.cluster_ip = ips.first().map(|s| (*s).to_string());
        spec.cluster_ips = Some(strings(ips));
        spec.ip_families = Some(ips.iter().map(|ip| family_of(ip)).collect());
        spec.ip_family_policy = Some(
            if ips.len() > 1 {
                "RequireDualStack"
            } else {
                "SingleStack"
            }
            .to_string(),
        );
        self
    }

    /// A headless service: `clusterIP: None`.
    pub fn headless(mut self) -> Self {
        let spec = self.spec();
        spec.cluster_ip = Some("None".to_string());
        spec.cluster_ips = Some(vec!["None".to_string()]);
        self
    }

    /// `type: ExternalName` pointing at `host`; no cluster IP.
    pub fn external_name(mut self, host: &str) -> Self {
        let spec = self.spec();
        spec.type_ = Some("ExternalName".to_string());
        spec.external_name = Some(host.to_string());
        spec.cluster_ip = None;
        spec.cluster_ips = None;
        spec.ip_families = None;
        self
    }

    /// `spec.type` (`ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalName`).
    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.to_string());
        self
    }

    /// Adds a port. An empty `name` leaves the name unset, as for the single
    /// unnamed port of a Service.
    pub fn port(self, name: &str, port: i32, protocol: &str) -> Self {
        self.add_port(name, port, protocol, None)
    }

    /// Adds a port with a node port (the type must be set separately).
    pub fn node_port(self, name: &str, port: i32, protocol: &str, node_port: i32) -> Self {
        self.add_port(name, port, protocol, Some(node_port))
    }

    fn add_port(mut self, name: &str, port: i32, protocol: &str, node_port: Option<i32>) -> Self {
        let p = ServicePort {
            name: (!name.is_empty()).then(|| name.to_string()),
            port,
            protocol: Some(protocol.to_string()),
            node_port,
            ..ServicePort::default()
        };
        self.spec().ports.get_or_insert_with(Vec::new).push(p);
        self
    }

    /// Sets a numeric target port on the last port added.
    pub fn target_port(mut self, target: i32) -> Self {
        if let Some(p) = self.last_port() {
            p.target_port = Some(IntOrString::Int(target));
        }
        self
    }

    /// Sets a named target port on the last port added.
    pub fn target_port_name(mut self, target: &str) -> Self {
        if let Some(p) = self.last_port() {
            p.target_port = Some(IntOrString::String(target.to_string()));
        }
        self
    }

    /// `spec.externalIPs`.
    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(strings(ips));
        self
    }

    /// Adds a load-balancer ingress IP (`ipMode` unset, i.e. VIP).
    pub fn lb_ingress(self, ip: &str) -> Self {
        self.ingress(LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ..LoadBalancerIngress::default()
        })
    }

    /// Adds a load-balancer ingress IP with `ipMode: Proxy`.
    pub fn lb_ingress_proxy_mode(self, ip: &str) -> Self {
        self.ingress(LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: Some("Proxy".to_string()),
            ..LoadBalancerIngress::default()
        })
    }

    /// Adds a load-balancer ingress with a hostname and no IP.
    pub fn lb_ingress_hostname(self, hostname: &str) -> Self {
        self.ingress(LoadBalancerIngress {
            hostname: Some(hostname.to_string()),
            ..LoadBalancerIngress::default()
        })
    }

    /// `spec.loadBalancerSourceRanges`.
    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges = Some(strings(ranges));
        self
    }

    /// `spec.externalTrafficPolicy: Local`.
    pub fn external_traffic_policy_local(mut self) -> Self {
        self.spec().external_traffic_policy = Some("Local".to_string());
        self
    }

    /// `spec.internalTrafficPolicy: Local`.
    pub fn internal_traffic_policy_local(mut self) -> Self {
        self.spec().internal_traffic_policy = Some("Local".to_string());
        self
    }

    /// `spec.healthCheckNodePort`.
    pub fn health_check_node_port(mut self, port: i32) -> Self {
        self.spec().health_check_node_port = Some(port);
        self
    }

    /// `sessionAffinity: ClientIP`, with `timeoutSeconds` when given.
    pub fn client_ip_affinity(mut self, timeout_seconds: Option<i32>) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".to_string());
        spec.session_affinity_config = timeout_seconds.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(t),
            }),
        });
        self
    }

    /// `spec.trafficDistribution` (`PreferClose`, `PreferSameZone`,
    /// `PreferSameNode`).
    pub fn traffic_distribution(mut self, value: &str) -> Self {
        self.spec().traffic_distribution = Some(value.to_string());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.svc
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Adds an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.svc
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.to_string());
        self
    }

    /// `metadata.resourceVersion`.
    pub fn resource_version(mut self, rv: &str) -> Self {
        self.svc.metadata.resource_version = Some(rv.to_string());
        self
    }

    pub fn build(self) -> Service {
        self.svc
    }
}

// === SliceBuilder ===

/// An EndpointSlice under construction; see [`mk_slice`].
#[derive(Clone, Debug)]
pub struct SliceBuilder {
    slice: EndpointSlice,
}

/// One endpoint of a slice, for [`SliceBuilder::endpoint_with`].
///
/// `None` conditions are left absent in the object (the API's "unknown");
/// [`EpSpec::new`] starts ready, serving and not terminating, explicitly, as
/// the EndpointSlice controller writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpSpec {
    pub ip: String,
    /// More addresses after `ip` (only the first one is used by proxies).
    pub more_ips: Vec<String>,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
}

impl EpSpec {
    /// A ready endpoint (ready, serving, not terminating).
    pub fn new(ip: &str) -> Self {
        Self {
            ip: ip.to_string(),
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
            ..Self::default()
        }
    }

    /// An endpoint without any condition set.
    pub fn bare(ip: &str) -> Self {
        Self {
            ip: ip.to_string(),
            ..Self::default()
        }
    }

    /// `nodeName`.
    pub fn node(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }

    /// `zone`.
    pub fn zone(mut self, zone: &str) -> Self {
        self.zone = Some(zone.to_string());
        self
    }

    /// Sets the three conditions explicitly.
    pub fn conditions(mut self, ready: bool, serving: bool, terminating: bool) -> Self {
        self.ready = Some(ready);
        self.serving = Some(serving);
        self.terminating = Some(terminating);
        self
    }

    /// Not ready, not serving, not terminating (e.g. failing probes).
    pub fn unready(self) -> Self {
        self.conditions(false, false, false)
    }

    /// Terminating but still passing readiness: usable as a last resort.
    pub fn serving_terminating(self) -> Self {
        self.conditions(false, true, true)
    }

    /// Terminating and no longer serving: never used.
    pub fn terminating_not_serving(self) -> Self {
        self.conditions(false, false, true)
    }

    /// `hints.forZones`.
    pub fn zone_hints(mut self, zones: &[&str]) -> Self {
        self.zone_hints = strings(zones);
        self
    }

    /// `hints.forNodes`.
    pub fn node_hints(mut self, nodes: &[&str]) -> Self {
        self.node_hints = strings(nodes);
        self
    }

    /// Appends a further address.
    pub fn more_ip(mut self, ip: &str) -> Self {
        self.more_ips.push(ip.to_string());
        self
    }

    /// The API object.
    pub fn build(self) -> Endpoint {
        let conditions = (self.ready.is_some() || self.serving.is_some() || self.terminating.is_some()).then_some(
            EndpointConditions {
                ready: self.ready,
                serving: self.serving,
                terminating: self.terminating,
            },
        );
        let hints = (!self.zone_hints.is_empty() || !self.node_hints.is_empty()).then(|| EndpointHints {
            for_zones: (!self.zone_hints.is_empty())
                .then(|| self.zone_hints.iter().map(|z| ForZone { name: z.clone() }).collect()),
            for_nodes: (!self.node_hints.is_empty())
                .then(|| self.node_hints.iter().map(|n| ForNode { name: n.clone() }).collect()),
        });
        let mut addresses = vec![self.ip];
        addresses.extend(self.more_ips);
        Endpoint {
            addresses,
            conditions,
            hints,
            node_name: self.node,
            zone: self.zone,
            ..Endpoint::default()
        }
    }
}

impl SliceBuilder {
    /// Address type IPv6.
    pub fn ipv6(self) -> Self {
        self.address_type("IPv6")
    }

    /// Any address type (`IPv4`, `IPv6`, `FQDN`).
    pub fn address_type(mut self, address_type: &str) -> Self {
        self.slice.address_type = address_type.to_string();
        self
    }

    /// Adds a port. `name` is always set (the controller writes `""` for an
    /// unnamed service port).
    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.slice.ports.get_or_insert_with(Vec::new).push(EndpointPort {
            name: Some(name.to_string()),
            port: Some(port),
            protocol: Some(protocol.to_string()),
            app_protocol: None,
        });
        self
    }

    /// Adds a ready endpoint on no node.
    pub fn endpoint(self, ip: &str) -> Self {
        self.endpoint_with(EpSpec::new(ip))
    }

    /// Adds a ready endpoint on `node`.
    pub fn endpoint_on(self, ip: &str, node: &str) -> Self {
        self.endpoint_with(EpSpec::new(ip).node(node))
    }

    /// Adds ready endpoints on no node.
    pub fn endpoints(self, ips: &[&str]) -> Self {
        ips.iter().fold(self, |b, ip| b.endpoint(ip))
    }

    /// Adds an endpoint described by `spec`.
    pub fn endpoint_with(mut self, spec: EpSpec) -> Self {
        self.slice.endpoints.push(spec.build());
        self
    }

    /// Adds (or overwrites) a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.slice
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Removes a label (e.g. the service-name label, for an orphan slice).
    pub fn without_label(mut self, key: &str) -> Self {
        if let Some(labels) = self.slice.metadata.labels.as_mut() {
            labels.remove(key);
        }
        self
    }

    /// `metadata.resourceVersion`.
    pub fn resource_version(mut self, rv: &str) -> Self {
        self.slice.metadata.resource_version = Some(rv.to_string());
        self
    }

    pub fn build(self) -> EndpointSlice {
        self.slice
    }
}

// === NodeBuilder ===

/// A Node under construction; see [`mk_node`].
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    node: Node,
}

impl NodeBuilder {
    fn address(mut self, type_: &str, ip: &str) -> Self {
        self.node
            .status
            .get_or_insert_with(NodeStatus::default)
            .addresses
            .get_or_insert_with(Vec::new)
            .push(NodeAddress {
                address: ip.to_string(),
                type_: type_.to_string(),
            });
        self
    }

    /// The `topology.kubernetes.io/zone` label.
    pub fn zone(self, zone: &str) -> Self {
        self.label(ZONE_LABEL, zone)
    }

    /// Adds a status address of type InternalIP.
    pub fn internal_ip(self, ip: &str) -> Self {
        self.address("InternalIP", ip)
    }

    /// Adds a status address of type ExternalIP.
    pub fn external_ip(self, ip: &str) -> Self {
        self.address("ExternalIP", ip)
    }

    /// Adds a status address of type Hostname.
    pub fn hostname(self, name: &str) -> Self {
        self.address("Hostname", name)
    }

    /// Sets a deletion timestamp (the Unix epoch).
    pub fn deleting(mut self) -> Self {
        self.node.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        self
    }

    /// Adds a `NoSchedule` taint with `key`.
    pub fn taint(mut self, key: &str) -> Self {
        self.node
            .spec
            .get_or_insert_with(NodeSpec::default)
            .taints
            .get_or_insert_with(Vec::new)
            .push(Taint {
                key: key.to_string(),
                effect: "NoSchedule".to_string(),
                ..Taint::default()
            });
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.node
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.to_string());
        self
    }

    pub fn build(self) -> Node {
        self.node
    }
}
