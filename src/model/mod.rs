//! The service model. **Pure**: no I/O, no clock, no globals, no tokio.
//!
//! ```text
//!  Service ──service_ports()──▶ ServicePort ─┐
//!                                            ├─▶ Model (tracker) ──▶ DesiredState + ChangeSet
//!  EndpointSlice ──SliceInfo──merge_slices()─┘        │                    │
//!  Node ──NodeInfo───────────────────────────────────┘          select_endpoints()
//!                                                                 (EndpointSelection)
//! ```
//!
//! - [`types`]: the nouns (`ServiceName`, `ServicePortName`, `ServicePort`,
//!   `Endpoint`, policies, `Vip`).
//! - [`service`]: a Service object → its service ports (kube-proxy's
//!   `newBaseServiceInfo`).
//! - [`endpoints`]: EndpointSlices → endpoints per port (kube-proxy's
//!   `EndpointSliceCache`).
//! - [`selection`]: which endpoints each traffic class uses (kube-proxy's
//!   `CategorizeEndpoints`).
//! - [`plan`]: per service port and family, every policy decision a
//!   datapath makes (routes, drop/reject, affinity, firewall, masquerade).
//! - [`node`]: the proxy's own Node.
//! - [`tracker`]: the index of objects, the desired state, and change
//!   tracking with acknowledgement.
//!
//! Test support, compiled only for unit tests or with the `test-support`
//! feature (which the integration tests and benches turn on; the shipped
//! binary has neither): `builders` (API objects: `mk_service`, `mk_slice`,
//! `mk_node`) and `synth` (the synthetic-cluster generator).
//!
//! Input problems (a malformed object) are collected as [`Problem`]s for the
//! caller to log and count; the model never logs.

#[cfg(any(test, feature = "test-support"))]
pub mod builders;
pub mod endpoints;
pub mod node;
pub mod plan;
pub mod selection;
pub mod service;
#[cfg(any(test, feature = "test-support"))]
pub mod synth;
pub mod tracker;
pub mod types;

#[cfg(test)]
mod tests;

pub use endpoints::{SERVICE_NAME_LABEL, ServiceEndpoints, SliceInfo, SliceSkip, merge_slices, slice_service};
pub use node::NodeInfo;
pub use plan::{
    ClusterIpMasquerade, Firewall, FirewallScope, HealthCheckPort, Masquerade, NoLocal, Part, PlanContext, PortPlan,
    Refusal, Route, health_check_ports,
};
pub use selection::{EndpointSelection, SelectionOptions, select_endpoints};
pub use service::{ServiceSkip, service_name, service_ports};
pub use tracker::{
    ChangeSet, DesiredState, FamilyEndpoints, Model, PortChange, ServicePortState, TRIGGER_TIME_ANNOTATION, slice_key,
};
pub use types::*;

use std::fmt;

/// Something wrong with an API object, found while reading it. The object
/// (or the offending part of it) was skipped; everything else goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What the problem is about: `ns/name` of a service, or a kind.
    pub subject: String,
    pub message: String,
}

// === impl Problem ===

impl Problem {
    pub fn new(service: &ServiceName, message: impl Into<String>) -> Self {
        Self {
            subject: service.to_string(),
            message: message.into(),
        }
    }

    pub fn object(kind: &str, message: impl Into<String>) -> Self {
        Self {
            subject: kind.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}
