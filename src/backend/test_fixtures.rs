//! Fixtures shared by the backends' unit tests.

use crate::model::builders::{mk_service, mk_slice};
use crate::model::synth::{self, Mix, SynthParams};
use crate::model::{Model, SelectionOptions};

/// An EndpointSlice `<svc>-1` of `svc` with port `http` 8080/TCP.
pub fn slice(svc: &str, eps: &[&str]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    mk_slice("default", &format!("{svc}-1"), svc)
        .port("http", 8080, "TCP")
        .endpoints(eps)
        .build()
}

/// `n` ClusterIP services `svc-00000…` with one endpoint each (from the
/// synthetic generator), plus `web` (10.96.0.10) with two endpoints.
pub fn model_with(n: usize) -> Model {
    let mut m = Model::new("node-a", SelectionOptions::default());
    let filler = synth::generate(&SynthParams {
        mix: Mix::ClusterIpOnly,
        namespace: "default".to_string(),
        vip_base: "10.96.1.1".parse().expect("ip"),
        endpoint_base: "10.244.1.1".parse().expect("ip"),
        ..SynthParams::new(n, 1)
    });
    m.reset_services(&filler.services);
    m.reset_slices(&filler.slices);
    m.apply_service(
        &mk_service("default", "web")
            .cluster_ip("10.96.0.10")
            .port("http", 80, "TCP")
            .build(),
    );
    m.apply_slice(&slice("web", &["10.244.0.1", "10.244.0.2"]));
    m
}
