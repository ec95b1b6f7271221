//! Unit tests of the service model, kube-proxy's behaviour being the spec.
//!
//! - [`service`]: Service → ServicePort (`newBaseServiceInfo`).
//! - [`endpoints`]: EndpointSlices → endpoints (`EndpointSliceCache`).
//! - [`selection`]: `select_endpoints` (`CategorizeEndpoints`).
//! - [`tracker`]: the Model's index, desired state and change tracking.
//! - [`node`]: the proxy's own Node.
//! - [`builders`]: the public object builders themselves.

mod builders;
mod endpoints;
mod node;
mod plan;
mod selection;
mod service;
mod tracker;

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::{Endpoint, Problem, Protocol, ServiceName, ServicePort, ServicePortName, ServiceSkip, service_ports};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid IP literal in a test")
}

fn svc_name(ns: &str, name: &str) -> ServiceName {
    ServiceName::new(ns, name)
}

fn spn(ns: &str, name: &str, port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName::new(svc_name(ns, name), port, protocol)
}

/// Converts a Service, returning the result and the problems found.
fn convert(svc: &Service) -> (Result<Vec<ServicePort>, ServiceSkip>, Vec<Problem>) {
    let mut problems = Vec::new();
    let ports = service_ports(svc, &mut problems);
    (ports, problems)
}

/// Converts a Service that must yield exactly one port.
fn only_port(svc: &Service) -> ServicePort {
    let (ports, _) = convert(svc);
    let mut ports = ports.expect("service converts");
    assert_eq!(ports.len(), 1, "expected exactly one port: {ports:?}");
    ports.remove(0)
}

/// Endpoints as sorted `ip:port` strings.
fn addrs(eps: &[Endpoint]) -> Vec<String> {
    let mut v: Vec<String> = eps.iter().map(ToString::to_string).collect();
    v.sort();
    v
}

/// Sorted owned copies of `ip:port` literals.
fn sorted(items: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| (*s).to_string()).collect();
    v.sort();
    v
}
