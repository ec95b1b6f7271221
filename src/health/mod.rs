//! Health: `/healthz` and `/livez` (kube-proxy's meaning) and the
//! health-check node ports of externalTrafficPolicy Local services.
//!
//! ```text
//!  Trigger::queued_since ─┐
//!  SyncStatus (driver) ───┼─▶ ProxyHealth::check(now) ──▶ /livez, /healthz (+ node eligible)
//!                         └─▶ service health servers ──▶ :healthCheckNodePort/ → 200 | 503
//! ```
//!
//! Unhealthy means: an update was queued longer than the health timeout
//! (2 × sync period, as kube-proxy) ago and no sync has succeeded since.
//! `/healthz` is also 503 while the node is being deleted or carries the
//! ToBeDeletedByClusterAutoscaler taint, so load balancers drain it first.
//! Nothing here takes a lock the sync holds: it reads watch channels.

pub mod http;
pub mod service;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::sync::{SyncStatus, Trigger};

pub use service::{HealthCheckPort, ServiceHealthServer};

/// The proxy's health, as `/healthz` and `/livez` report it.
#[derive(Clone)]
pub struct ProxyHealth {
    status: watch::Receiver<SyncStatus>,
    trigger: Trigger,
    timeout: Duration,
}

/// One health verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    /// The node is not being deleted or drained.
    pub node_eligible: bool,
    pub last_updated: Option<Instant>,
}

// === impl ProxyHealth ===

impl ProxyHealth {
    pub fn new(status: watch::Receiver<SyncStatus>, trigger: Trigger, timeout: Duration) -> Self {
        Self {
            status,
            trigger,
            timeout,
        }
    }

    /// The verdict at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        let status = self.status.borrow();
        let stuck = self
            .trigger
            .queued_since()
            .is_some_and(|queued| now.saturating_duration_since(queued) > self.timeout);
        Verdict {
            healthy: !stuck,
            node_eligible: !status.node_draining,
            last_updated: status.last_success,
        }
    }
}

/// Serves `/healthz` and `/livez` on `listener` until dropped.
pub async fn serve_proxy_health(listener: TcpListener, health: ProxyHealth, metrics: Option<Metrics>) {
    let handler: http::Handler = Arc::new(move |path: &str| {
        let v = health.check(Instant::now());
        let (ok, livez) = match path {
            "/healthz" => (v.healthy && v.node_eligible, false),
            "/livez" => (v.healthy, true),
            _ => return http::not_found(),
        };
        let code = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        if let Some(m) = &metrics {
            if livez {
                m.livez(code.as_u16());
            } else {
                m.healthz(code.as_u16());
            }
        }
        let now = SystemTime::now();
        let last = v
            .last_updated
            .map(|t| now - Instant::now().saturating_duration_since(t))
            .map(rfc3339)
            .unwrap_or_default();
        let mut body = format!("{{\"lastUpdated\": \"{last}\",\"currentTime\": \"{}\"", rfc3339(now));
        if !livez {
            body.push_str(&format!(", \"nodeEligible\": {}", v.node_eligible));
        }
        body.push('}');
        http::response(code, "application/json", body)
    });
    http::serve(listener, handler).await;
}

/// Serves `/metrics` on `listener` until dropped.
pub async fn serve_metrics(listener: TcpListener, metrics: Metrics) {
    let handler: http::Handler = Arc::new(move |path: &str| match path {
        "/metrics" => http::response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        _ => http::not_found(),
    });
    http::serve(listener, handler).await;
}

/// RFC 3339 with UTC, as Go's time formatting prints it.
pub fn rfc3339(t: SystemTime) -> String {
    let ts = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| k8s_openapi::jiff::Timestamp::from_second(i64::try_from(d.as_secs()).ok()?).ok());
    ts.map(|t| t.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests;
