//! Synthetic clusters for scale tests, benchmarks and backend unit tests:
//! N services × M endpoints, deterministic from a seed. The one cluster
//! generator of the project (test support: built only for tests or with the
//! `test-support` feature).
//!
//! **Pure**: every address comes from [`SynthParams`], so a harness decides
//! where VIPs and endpoints live (e.g. VIPs in 198.19.0.0/16 and endpoints in
//! a corner of 198.18.0.0/15 that carries no traffic). The same parameters
//! always give the same objects.
//!
//! The realistic mix ([`Mix::Realistic`], the default), per service (rolled
//! from the seed):
//!
//! | share | kind |
//! | --- | --- |
//! | ~3 % | DNS-like: `dns` 53/UDP + `dns-tcp` 53/TCP → 5353 |
//! | ~10 % | multi-port TCP: `http` 80 → 8080, `https` 443 → 8443 |
//! | the rest | one TCP port 80 → 8080 |
//! | ~10 % | `NodePort` (node ports allocated uniquely from 30000 up) |
//! | ~5 % | `LoadBalancer` with an ingress IP; of those ~40 % `externalTrafficPolicy: Local` with a `healthCheckNodePort`, ~30 % with `loadBalancerSourceRanges` |
//! | ~5 % | `sessionAffinity: ClientIP` |
//! | ~1 % | `internalTrafficPolicy: Local` |
//!
//! Node ports run out after 2768 (30000–32767): later NodePort and
//! LoadBalancer services fall back to ClusterIP, as a real cluster would
//! refuse them. Endpoints are spread over [`SynthParams::nodes`] nodes (the
//! first one is ours) in [`SynthParams::zones`] zones, ~95 % ready, ~3 %
//! serving-terminating, ~2 % not ready; EndpointSlices hold at most
//! [`MAX_ENDPOINTS_PER_SLICE`] endpoints, like the EndpointSlice controller's.
//!
//! [`Mix::ClusterIpOnly`] makes every service like the last row (ClusterIP,
//! `http` 80 → 8080) with every endpoint ready: the same cost for every
//! service, for comparing sizes and for tests that count chains or lines.
//! [`replace_endpoint`] gives the smallest change a sync can see.
//!
//! "Probe" services ([`SynthParams::probes`]) are plain ClusterIP TCP
//! services (80 → 8080) whose endpoints are exactly
//! [`SynthParams::probe_endpoints`], on our node: a harness points them at
//! real servers and moves them with [`probe_slice`].

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::builders::{EpSpec, MANAGED_BY_CONTROLLER, MANAGED_BY_LABEL, mk_node, mk_service, mk_slice};

/// The kinds of services and endpoints [`generate`] makes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mix {
    /// The realistic mix of the module doc's table.
    #[default]
    Realistic,
    /// Every service ClusterIP with one TCP port (`http` 80 → 8080), every
    /// endpoint ready.
    ClusterIpOnly,
}

/// The EndpointSlice controller's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// First node port handed out.
const NODE_PORT_MIN: i32 = 30000;
/// Last node port handed out (kube-apiserver's default range).
const NODE_PORT_MAX: i32 = 32767;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthParams {
    /// Seed of the pseudo-random mix.
    pub seed: u64,
    /// The kinds of services and endpoints.
    pub mix: Mix,
    /// Number of services.
    pub services: usize,
    /// Endpoints per service.
    pub endpoints_per_service: usize,
    /// Namespace of every object.
    pub namespace: String,
    /// Our node's name (the first of the nodes endpoints are spread over).
    pub node_name: String,
    /// Our node's InternalIP.
    pub node_ip: Ipv4Addr,
    /// Nodes endpoints are spread over, ours included (at least 1).
    pub nodes: usize,
    /// Zones the nodes are spread over (at least 1).
    pub zones: usize,
    /// Service `i` gets cluster IP `vip_base + i`; load-balancer ingress IPs
    /// follow the cluster IPs (`vip_base + services + j`).
    pub vip_base: Ipv4Addr,
    /// Endpoint addresses are `endpoint_base + k mod endpoint_pool`.
    pub endpoint_base: Ipv4Addr,
    /// Size of the endpoint address pool (at least `endpoints_per_service`,
    /// so the endpoints of one service are distinct).
    pub endpoint_pool: u32,
    /// Indexes of the probe services.
    pub probes: Vec<usize>,
    /// Endpoints of every probe service (ready, on our node).
    pub probe_endpoints: Vec<Ipv4Addr>,
}

impl SynthParams {
    /// `services` × `endpoints` with defaults for the rest: seed 1, the
    /// realistic mix, namespace `scale`, node `node-a` (198.18.1.1) among 5 nodes in 3 zones, VIPs from
    /// 198.19.0.0, endpoints in 198.18.64.0/18, no probes.
    pub fn new(services: usize, endpoints: usize) -> Self {
        Self {
            seed: 1,
            mix: Mix::Realistic,
            services,
            endpoints_per_service: endpoints,
            namespace: "scale".to_string(),
            node_name: "node-a".to_string(),
            node_ip: Ipv4Addr::new(198, 18, 1, 1),
            nodes: 5,
            zones: 3,
            vip_base: Ipv4Addr::new(198, 19, 0, 0),
            endpoint_base: Ipv4Addr::new(198, 18, 64, 0),
            endpoint_pool: 1 << 14,
            probes: Vec::new(),
            probe_endpoints: Vec::new(),
        }
    }

    /// The name of service `i`.
    pub fn service_name(&self, i: usize) -> String {
        format!("svc-{i:05}")
    }

    /// The cluster IP of service `i`.
    pub fn vip(&self, i: usize) -> Ipv4Addr {
        add(self.vip_base, i as u32)
    }

    /// The name of node `k` (0 is ours).
    pub fn node(&self, k: usize) -> String {
        if k == 0 {
            self.node_name.clone()
        } else {
            format!("synth-node-{k}")
        }
    }

    /// The zone of node `k`.
    pub fn zone(&self, k: usize) -> String {
        format!("zone-{}", k % self.zones.max(1))
    }

    /// Endpoint address `k` past the pool (`endpoint_base + endpoint_pool +
    /// k`): never generated, for an endpoint a harness adds later.
    pub fn spare_endpoint(&self, k: u32) -> Ipv4Addr {
        add(self.endpoint_base, self.endpoint_pool.wrapping_add(k))
    }
}

/// A generated cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SynthCluster {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// Our node.
    pub node: Option<Node>,
    /// What the mix came to.
    pub summary: SynthSummary,
}

/// Counts of what was generated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SynthSummary {
    pub services: usize,
    pub service_ports: usize,
    pub endpoints: usize,
    pub slices: usize,
    pub node_port: usize,
    pub load_balancer: usize,
    pub local_external: usize,
    pub source_ranges: usize,
    pub affinity: usize,
    pub udp: usize,
    pub multi_port: usize,
    pub terminating: usize,
}

/// splitmix64: tiny, fast and good enough for a deterministic mix.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn add(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n))
}

/// Generates the cluster `p` describes.
pub fn generate(p: &SynthParams) -> SynthCluster {
    let mut rng = SplitMix64::new(p.seed);
    let mut out = SynthCluster {
        node: Some(
            mk_node(&p.node_name)
                .zone(&p.zone(0))
                .internal_ip(&p.node_ip.to_string())
                .build(),
        ),
        ..SynthCluster::default()
    };
    let mut next_node_port = NODE_PORT_MIN;
    let mut next_lb_ip = p.services as u32;
    let mut next_endpoint: u64 = 0;
    let pool = u64::from(p.endpoint_pool.max(1));
    for i in 0..p.services {
        let name = p.service_name(i);
        let probe = p.probes.contains(&i);
        // Probes are always plain ClusterIP TCP services.
        let plain = probe || p.mix == Mix::ClusterIpOnly;
        // Every roll happens for every service, probe or not, so the mix of
        // the others does not depend on which ones are probes.
        let shape = rng.below(100);
        let want_np = rng.percent(10);
        let want_lb = rng.percent(5);
        let local = rng.percent(40);
        let ranges = rng.percent(30);
        let affinity = rng.percent(5);
        let itp_local = rng.percent(1);
        let (udp, multi) = if plain {
            (false, false)
        } else {
            (shape < 3, (3..13).contains(&shape))
        };
        // (name, port, protocol, target)
        let ports: Vec<(&str, i32, &str, i32)> = if udp {
            vec![("dns", 53, "UDP", 5353), ("dns-tcp", 53, "TCP", 5353)]
        } else if multi {
            vec![("http", 80, "TCP", 8080), ("https", 443, "TCP", 8443)]
        } else {
            vec![("http", 80, "TCP", 8080)]
        };
        let needed = ports.len() as i32 + i32::from(local);
        let type_ = match (plain, want_lb, want_np) {
            (false, true, _) if next_node_port + needed - 1 <= NODE_PORT_MAX => "LoadBalancer",
            (false, false, true) if next_node_port + ports.len() as i32 - 1 <= NODE_PORT_MAX => "NodePort",
            _ => "ClusterIP",
        };
        let mut svc = mk_service(&p.namespace, &name).cluster_ip(&p.vip(i).to_string());
        if type_ != "ClusterIP" {
            svc = svc.type_(type_);
        }
        for (pname, port, proto, target) in &ports {
            svc = if type_ == "ClusterIP" {
                svc.port(pname, *port, proto)
            } else {
                next_node_port += 1;
                svc.node_port(pname, *port, proto, next_node_port - 1)
            }
            .target_port(*target);
        }
        let summary = &mut out.summary;
        if type_ == "LoadBalancer" {
            svc = svc.lb_ingress(&add(p.vip_base, next_lb_ip).to_string());
            next_lb_ip += 1;
            summary.load_balancer += 1;
            if local {
                svc = svc
                    .external_traffic_policy_local()
                    .health_check_node_port(next_node_port);
                next_node_port += 1;
                summary.local_external += 1;
            }
            if ranges {
                svc = svc.source_ranges(&["198.18.2.0/24", "198.18.128.0/17"]);
                summary.source_ranges += 1;
            }
        } else if type_ == "NodePort" {
            summary.node_port += 1;
        }
        if affinity && !plain {
            svc = svc.client_ip_affinity(Some(10800));
            summary.affinity += 1;
        }
        if itp_local && !plain {
            svc = svc.internal_traffic_policy_local();
        }
        summary.services += 1;
        summary.service_ports += ports.len();
        summary.udp += usize::from(udp);
        summary.multi_port += usize::from(multi);
        out.services.push(svc.build());

        // Endpoints.
        let eps: Vec<EpSpec> = if probe {
            p.probe_endpoints
                .iter()
                .map(|ip| EpSpec::new(&ip.to_string()).node(&p.node_name).zone(&p.zone(0)))
                .collect()
        } else {
            (0..p.endpoints_per_service)
                .map(|_| {
                    let ip = add(p.endpoint_base, (next_endpoint % pool) as u32);
                    next_endpoint += 1;
                    let k = rng.below(p.nodes.max(1) as u64) as usize;
                    let state = rng.below(100);
                    let spec = EpSpec::new(&ip.to_string()).node(&p.node(k)).zone(&p.zone(k));
                    match state {
                        _ if p.mix == Mix::ClusterIpOnly => spec,
                        0..95 => spec,
                        95..98 => {
                            summary.terminating += 1;
                            spec.serving_terminating()
                        }
                        _ => spec.unready(),
                    }
                })
                .collect()
        };
        summary.endpoints += eps.len();
        for (n, chunk) in eps.chunks(MAX_ENDPOINTS_PER_SLICE).enumerate() {
            let mut slice =
                mk_slice(&p.namespace, &format!("{name}-{n}"), &name).label(MANAGED_BY_LABEL, MANAGED_BY_CONTROLLER);
            for (pname, _, proto, target) in &ports {
                slice = slice.port(pname, *target, proto);
            }
            for ep in chunk {
                slice = slice.endpoint_with(ep.clone());
            }
            out.slices.push(slice.build());
            summary.slices += 1;
        }
        if eps.is_empty() {
            // A service without endpoints still has its (empty) slice.
            let mut slice =
                mk_slice(&p.namespace, &format!("{name}-0"), &name).label(MANAGED_BY_LABEL, MANAGED_BY_CONTROLLER);
            for (pname, _, proto, target) in &ports {
                slice = slice.port(pname, *target, proto);
            }
            out.slices.push(slice.build());
            summary.slices += 1;
        }
    }
    out
}

/// The slice of probe service `i` with `endpoints` (ready, on our node): it
/// replaces the generated one (same name).
pub fn probe_slice(p: &SynthParams, i: usize, endpoints: &[Ipv4Addr]) -> EndpointSlice {
    let name = p.service_name(i);
    let mut slice = mk_slice(&p.namespace, &format!("{name}-0"), &name)
        .label(MANAGED_BY_LABEL, MANAGED_BY_CONTROLLER)
        .port("http", 8080, "TCP");
    for ip in endpoints {
        slice = slice.endpoint_with(EpSpec::new(&ip.to_string()).node(&p.node_name).zone(&p.zone(0)));
    }
    slice.build()
}

/// Service `i`'s first EndpointSlice as `cluster` holds it, with its first
/// endpoint's address replaced by `ip`: one endpoint gone and one new, the
/// smallest change a sync can see. `None` when service `i` has no endpoint.
pub fn replace_endpoint(cluster: &SynthCluster, p: &SynthParams, i: usize, ip: Ipv4Addr) -> Option<EndpointSlice> {
    let name = format!("{}-0", p.service_name(i));
    let mut slice = cluster
        .slices
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))?
        .clone();
    *slice.endpoints.first_mut()?.addresses.first_mut()? = ip.to_string();
    Some(slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, SelectionOptions};

    fn params(n: usize, m: usize) -> SynthParams {
        SynthParams {
            probes: vec![0, n - 1],
            probe_endpoints: vec![Ipv4Addr::new(198, 18, 1, 10)],
            ..SynthParams::new(n, m)
        }
    }

    #[test]
    fn same_seed_same_objects() {
        let a = generate(&params(300, 10));
        let b = generate(&params(300, 10));
        assert_eq!(a, b);
        let other = generate(&SynthParams {
            seed: 2,
            ..params(300, 10)
        });
        assert_ne!(a.services, other.services);
    }

    #[test]
    fn sizes_as_asked() {
        let c = generate(&params(1000, 10));
        assert_eq!(c.services.len(), 1000);
        assert_eq!(c.summary.services, 1000);
        // Two probes with one endpoint each, the rest with 10.
        assert_eq!(c.summary.endpoints, 998 * 10 + 2);
        let counted: usize = c.slices.iter().map(|s| s.endpoints.len()).sum();
        assert_eq!(counted, c.summary.endpoints);
        assert_eq!(c.slices.len(), 1000);

        let big = generate(&params(50, 250));
        assert_eq!(big.summary.endpoints, 48 * 250 + 2);
        assert!(big.slices.iter().all(|s| s.endpoints.len() <= MAX_ENDPOINTS_PER_SLICE));
        assert_eq!(big.slices.len(), 48 * 3 + 2);
    }

    #[test]
    fn the_mix_is_realistic() {
        let c = generate(&params(5000, 10));
        let s = &c.summary;
        assert!(s.node_port > 300 && s.node_port < 700, "{s:?}");
        assert!(s.load_balancer > 150 && s.load_balancer < 350, "{s:?}");
        assert!(s.local_external > 0 && s.local_external < s.load_balancer, "{s:?}");
        assert!(
            s.source_ranges > 0 && s.affinity > 100 && s.udp > 50 && s.multi_port > 300,
            "{s:?}"
        );
        assert!(s.terminating > 0, "{s:?}");
        assert!(s.service_ports > s.services);
    }

    #[test]
    fn cluster_ip_only_is_one_ready_tcp_port_per_service() {
        let p = SynthParams {
            mix: Mix::ClusterIpOnly,
            ..params(2000, 3)
        };
        let c = generate(&p);
        let s = &c.summary;
        assert_eq!(s.service_ports, 2000, "{s:?}");
        assert_eq!(
            (
                s.node_port,
                s.load_balancer,
                s.affinity,
                s.udp,
                s.multi_port,
                s.terminating
            ),
            (0, 0, 0, 0, 0, 0),
            "{s:?}"
        );
        for svc in &c.services {
            let spec = svc.spec.as_ref().expect("spec");
            assert_eq!(spec.type_, None, "ClusterIP");
            assert_eq!(spec.internal_traffic_policy, None);
        }
        let ready =
            |e: &k8s_openapi::api::discovery::v1::Endpoint| e.conditions.as_ref().and_then(|c| c.ready) == Some(true);
        assert!(c.slices.iter().flat_map(|s| &s.endpoints).all(ready));
    }

    #[test]
    fn replace_endpoint_changes_one_address_of_one_slice() {
        let p = params(20, 3);
        let c = generate(&p);
        let spare = p.spare_endpoint(0);
        assert!(
            !c.slices
                .iter()
                .flat_map(|s| &s.endpoints)
                .any(|e| e.addresses[0] == spare.to_string())
        );
        let before = c
            .slices
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("svc-00005-0"));
        let after = replace_endpoint(&c, &p, 5, spare).expect("service 5 has endpoints");
        let before = before.expect("slice of service 5");
        assert_eq!(after.metadata, before.metadata);
        assert_eq!(after.endpoints[0].addresses, vec![spare.to_string()]);
        assert_eq!(after.endpoints[1..], before.endpoints[1..]);
        let empty = SynthParams {
            endpoints_per_service: 0,
            ..p.clone()
        };
        assert_eq!(replace_endpoint(&generate(&empty), &empty, 5, spare), None);
    }

    #[test]
    fn node_ports_are_unique_even_when_exhausted() {
        let c = generate(&params(40_000, 1));
        let mut seen = std::collections::BTreeSet::new();
        for svc in &c.services {
            let spec = svc.spec.as_ref().expect("spec");
            for p in spec.ports.iter().flatten() {
                if let Some(np) = p.node_port {
                    assert!(seen.insert(np), "node port {np} twice");
                    assert!((NODE_PORT_MIN..=NODE_PORT_MAX).contains(&np));
                }
            }
            if let Some(hc) = spec.health_check_node_port {
                assert!(seen.insert(hc), "health check port {hc} twice");
            }
        }
        assert!(seen.len() > 2700, "{}", seen.len());
    }

    #[test]
    fn the_model_accepts_everything() {
        let p = params(500, 10);
        let c = generate(&p);
        let mut m = Model::new(&p.node_name, SelectionOptions::default());
        m.set_node(c.node.as_ref());
        m.reset_services(&c.services);
        m.reset_slices(&c.slices);
        assert_eq!(m.take_problems(), vec![]);
        let d = m.desired();
        assert_eq!(d.ports_of(crate::model::IpFamily::V4).count(), c.summary.service_ports);

        // A probe moves: only its slice changes.
        let moved = probe_slice(&p, 0, &[Ipv4Addr::new(198, 18, 1, 11)]);
        assert_eq!(moved.metadata.name, c.slices[0].metadata.name);
        assert_eq!(moved.endpoints[0].addresses, vec!["198.18.1.11".to_string()]);
    }
}
