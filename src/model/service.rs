//! Service objects → [`ServicePort`]s, the way kube-proxy's
//! `newBaseServiceInfo` reads them.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;

use super::{
    Problem, Protocol, ServiceName, ServicePort, ServicePortName, SessionAffinity, TrafficDistribution, TrafficPolicy,
};

/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;

/// The legacy source-ranges annotation. Like kube-proxy, kproxy ignores it
/// (only cloud providers read it); it is named here for tests and docs.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// Why a Service produces no service ports at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceSkip {
    /// `spec.clusterIP: None`; kube-proxy programs nothing for it.
    #[error("headless service")]
    Headless,
    /// `type: ExternalName` is DNS only.
    #[error("ExternalName service")]
    ExternalName,
    /// No usable cluster IP (missing or unparseable).
    #[error("no valid cluster IP")]
    NoClusterIp,
    /// The object lacks a namespace or name.
    #[error("service without namespace or name")]
    Unnamed,
}

/// The name of a Service object, if it has both parts.
pub fn service_name(svc: &Service) -> Option<ServiceName> {
    let ns = svc.metadata.namespace.as_deref()?;
    let name = svc.metadata.name.as_deref()?;
    Some(ServiceName::new(ns, name))
}

/// Converts one Service into its service ports.
///
/// Unusable parts of an otherwise valid service (an unparseable external IP,
/// a port with an unknown protocol, a bad source range) are dropped and
/// reported in `problems`; the rest of the service is still programmed.
pub fn service_ports(svc: &Service, problems: &mut Vec<Problem>) -> Result<Vec<ServicePort>, ServiceSkip> {
    let name = service_name(svc).ok_or(ServiceSkip::Unnamed)?;
    let Some(spec) = svc.spec.as_ref() else {
        return Err(ServiceSkip::NoClusterIp);
    };
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if svc_type == "ExternalName" {
        return Err(ServiceSkip::ExternalName);
    }
    let cluster_ips = cluster_ips(&name, spec, problems)?;

    let external_ips = parse_ips(&name, "externalIPs", spec.external_ips.iter().flatten(), problems);
    let load_balancer_ips = load_balancer_ips(&name, svc, problems);
    let load_balancer_source_ranges = source_ranges(&name, svc, problems);

    let has_node_ports = matches!(svc_type, "NodePort" | "LoadBalancer");
    let externally_reachable = has_node_ports || !external_ips.is_empty();
    let external_policy = if externally_reachable && spec.external_traffic_policy.as_deref() == Some("Local") {
        TrafficPolicy::Local
    } else {
        TrafficPolicy::Cluster
    };
    let internal_policy = match spec.internal_traffic_policy.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    // kube-proxy's apiservice.NeedsHealthCheck: type LoadBalancer and Local.
    let health_check_node_port = match external_policy {
        TrafficPolicy::Local if svc_type == "LoadBalancer" => port_u16(spec.health_check_node_port.unwrap_or(0)),
        _ => 0,
    };
    let session_affinity = session_affinity(spec);
    let traffic_distribution = match spec.traffic_distribution.as_deref() {
        Some("PreferClose") | Some("PreferSameZone") => TrafficDistribution::PreferSameZone,
        Some("PreferSameNode") => TrafficDistribution::PreferSameNode,
        _ => TrafficDistribution::Unset,
    };

    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let port_name = p.name.clone().unwrap_or_default();
        let Some(protocol) = Protocol::from_api(p.protocol.as_deref()) else {
            problems.push(Problem::new(
                &name,
                format!(
                    "port {port_name:?}: unsupported protocol {:?}",
                    p.protocol.as_deref().unwrap_or("")
                ),
            ));
            continue;
        };
        let port = port_u16(p.port);
        if port == 0 {
            problems.push(Problem::new(
                &name,
                format!("port {port_name:?}: invalid port number {}", p.port),
            ));
            continue;
        }
        let node_port = if has_node_ports {
            port_u16(p.node_port.unwrap_or(0))
        } else {
            0
        };
        ports.push(ServicePort {
            name: ServicePortName::new(name.clone(), port_name, protocol),
            cluster_ips: cluster_ips.clone(),
            port,
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            external_policy,
            internal_policy,
            health_check_node_port,
            session_affinity,
            traffic_distribution,
        });
    }
    Ok(ports)
}

fn port_u16(p: i32) -> u16 {
    u16::try_from(p).unwrap_or(0)
}

fn cluster_ips(
    name: &ServiceName,
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    problems: &mut Vec<Problem>,
) -> Result<Vec<IpAddr>, ServiceSkip> {
    let raw: Vec<&str> = match spec.cluster_ips.as_ref().filter(|ips| !ips.is_empty()) {
        Some(ips) => ips.iter().map(String::as_str).collect(),
        None => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    if raw.first().is_some_and(|ip| *ip == "None") {
        return Err(ServiceSkip::Headless);
    }
    let ips = parse_ips(name, "clusterIPs", raw.into_iter(), problems);
    // At most one per family, first wins (clusterIPs[0] is the primary).
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips {
        if !out.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
            out.push(ip);
        }
    }
    if out.is_empty() {
        return Err(ServiceSkip::NoClusterIp);
    }
    Ok(out)
}

fn parse_ips<'a, S: AsRef<str> + 'a>(
    name: &ServiceName,
    field: &str,
    raw: impl Iterator<Item = S>,
    problems: &mut Vec<Problem>,
) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for s in raw {
        let s = s.as_ref().trim();
        if s.is_empty() || s == "None" {
            continue;
        }
        match s.parse::<IpAddr>() {
            Ok(ip) if !out.contains(&ip) => out.push(ip),
            Ok(_) => {}
            Err(_) => problems.push(Problem::new(name, format!("{field}: invalid IP {s:?} ignored"))),
        }
    }
    out
}

fn load_balancer_ips(name: &ServiceName, svc: &Service, problems: &mut Vec<Problem>) -> Vec<IpAddr> {
    let is_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    if !is_lb {
        return Vec::new();
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let ips = ingress
        .into_iter()
        .flatten()
        // ipMode Proxy: the load balancer delivers to the node with the
        // destination rewritten already, so no VIP rule is wanted.
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_deref());
    parse_ips(name, "status.loadBalancer.ingress", ips, problems)
}

fn source_ranges(name: &ServiceName, svc: &Service, problems: &mut Vec<Problem>) -> Vec<IpNet> {
    // kube-proxy reads only the spec field; the legacy annotation is for
    // cloud providers' load balancers, not for the node's rules.
    let raw = svc.spec.as_ref().and_then(|s| s.load_balancer_source_ranges.as_ref());
    let mut out = Vec::new();
    for s in raw.into_iter().flatten().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        match s.parse::<IpNet>() {
            Ok(net) => out.push(net.trunc()),
            Err(_) => problems.push(Problem::new(
                name,
                format!("loadBalancerSourceRanges: invalid CIDR {s:?} ignored"),
            )),
        }
    }
    out
}

fn session_affinity(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> SessionAffinity {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return SessionAffinity::None;
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .and_then(|t| u32::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
    SessionAffinity::ClientIp {
        timeout_seconds: timeout,
    }
}
