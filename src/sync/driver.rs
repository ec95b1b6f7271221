//! The driver: one sync = take the pending ChangeSet from the model, hand
//! it to the backend, and acknowledge it only if the backend succeeded.
//!
//! ```text
//!  Model ──desired() + changes()──▶ Backend::sync (blocking thread) ──ok──▶ Model::ack
//!                                                              └─err──▶ changes stay pending
//!                                   └──▶ SyncStatus (watch channel) ──▶ health, metrics
//! ```
//!
//! The driver knows no rule syntax. It never holds the model lock while the
//! backend works, so watchers keep feeding the model during a slow sync.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info};

use std::time::SystemTime;

use crate::backend::{Backend, BackendError, SyncKind, SyncStats};
use crate::conntrack::{Cleaner, stale_flows};
use crate::health::service::{HealthCheckPort, health_check_ports};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::model::{ChangeSet, DesiredState, IpFamily};
use crate::sync::Trigger;

/// A shared model, locked briefly by watchers and the driver.
pub type SharedModel = Arc<Mutex<Model>>;

/// What health checks and metrics need to know about syncing.
#[derive(Clone, Debug, Default)]
pub struct SyncStatus {
    /// Successful syncs so far.
    pub syncs: u64,
    /// Failed syncs so far.
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// When the last successful sync finished.
    pub last_success: Option<Instant>,
    /// Kind, duration and stats of the last successful sync.
    pub last: Option<(SyncKind, std::time::Duration, SyncStats)>,
    /// The node is being deleted or drained (`/healthz` then says 503).
    pub node_draining: bool,
}

/// Runs syncs against one backend. Clones share the backend and status;
/// the runner guarantees one sync at a time.
#[derive(Clone)]
pub struct Driver {
    model: SharedModel,
    backend: Arc<Mutex<Box<dyn Backend>>>,
    status: Arc<watch::Sender<SyncStatus>>,
    conntrack: Option<Cleaner>,
    metrics: Option<Metrics>,
    hc_ports: Arc<watch::Sender<Vec<HealthCheckPort>>>,
    trigger: Option<Trigger>,
}

fn kind_name(kind: SyncKind) -> &'static str {
    match kind {
        SyncKind::Full => "full",
        SyncKind::Partial => "partial",
    }
}

/// The family a failed tool worked on (ip6tables → IPv6), for metrics.
fn error_family(err: &BackendError) -> IpFamily {
    match err {
        BackendError::Apply { tool, .. } | BackendError::Exec { tool, .. } if tool.starts_with("ip6") => IpFamily::V6,
        _ => IpFamily::V4,
    }
}

/// Locks a mutex, recovering from poisoning: a panicked sync must not stop
/// the proxy from trying again.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl Driver ===

impl Driver {
    pub fn new(model: SharedModel, backend: Box<dyn Backend>) -> Self {
        let (status, _) = watch::channel(SyncStatus::default());
        let (hc_ports, _) = watch::channel(Vec::new());
        Self {
            model,
            backend: Arc::new(Mutex::new(backend)),
            status: Arc::new(status),
            conntrack: None,
            metrics: None,
            hc_ports: Arc::new(hc_ports),
            trigger: None,
        }
    }

    /// Requests another sync when changes are still pending after one
    /// succeeds (e.g. a change reverted while its sync was running: the
    /// watcher saw nothing pending then, and the ack re-marks it).
    pub fn with_trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = Some(trigger);
        self
    }

    /// Deletes stale UDP conntrack entries after each successful sync.
    pub fn with_conntrack(mut self, cleaner: Cleaner) -> Self {
        self.conntrack = Some(cleaner);
        self
    }

    /// Records sync metrics.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Subscribes to sync status updates.
    pub fn status(&self) -> watch::Receiver<SyncStatus> {
        self.status.subscribe()
    }

    /// Subscribes to the health-check node ports programmed services need.
    pub fn health_check_ports(&self) -> watch::Receiver<Vec<HealthCheckPort>> {
        self.hc_ports.subscribe()
    }

    /// Runs one sync; returns whether it succeeded.
    pub async fn sync(&self, kind: SyncKind) -> bool {
        let (desired, changes) = {
            let model = lock(&self.model);
            (model.desired(), model.changes())
        };
        let draining = desired.node.is_draining();
        self.status
            .send_if_modified(|s| std::mem::replace(&mut s.node_draining, draining) != draining);
        if let Some(m) = &self.metrics {
            m.pending(changes.service_changes, changes.endpoint_changes);
        }
        let started = Instant::now();
        let backend = self.backend.clone();
        let cleaner = self.conntrack.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = lock(&backend).sync(&desired, &changes, kind);
            // Only once the new rules are in place: flows deleted earlier
            // could be re-created through the old ones.
            let cleaned = match (&result, &cleaner) {
                (Ok(_), Some(cleaner)) => {
                    let t = std::time::Instant::now();
                    let stats = cleaner.delete(&stale_flows(&changes));
                    Some((t.elapsed(), stats.deleted_entries))
                }
                _ => None,
            };
            (result, changes, desired, cleaned)
        })
        .await;
        let elapsed = started.elapsed();
        match joined {
            Ok((Ok(stats), changes, desired, cleaned)) => {
                self.succeeded(kind, stats, &changes, &desired, elapsed, cleaned);
                true
            }
            Ok((Err(err), changes, _, _)) => {
                error!(kind = kind_name(kind), error = %err, "Sync failed; changes stay pending and a full sync will be retried");
                if let BackendError::Apply { context: Some(ctx), .. } = &err {
                    error!("Offending input:\n{ctx}");
                }
                if let Some(m) = &self.metrics {
                    m.sync_failed(kind, error_family(&err));
                    m.pending(changes.service_changes, changes.endpoint_changes);
                }
                self.record_failure();
                false
            }
            Err(join) => {
                error!(kind = kind_name(kind), error = %join, "Sync panicked; a full sync will be retried");
                if let Some(m) = &self.metrics {
                    m.sync_failed(kind, IpFamily::V4);
                }
                self.record_failure();
                false
            }
        }
    }

    fn succeeded(
        &self,
        kind: SyncKind,
        stats: SyncStats,
        changes: &ChangeSet,
        desired: &DesiredState,
        elapsed: std::time::Duration,
        cleaned: Option<(std::time::Duration, usize)>,
    ) {
        let first = self.status.borrow().syncs == 0;
        let still_pending = {
            let mut model = lock(&self.model);
            model.ack(changes);
            model.pending()
        };
        if still_pending > 0
            && let Some(t) = &self.trigger
        {
            t.request();
        }
        if first {
            info!(
                ports = stats.ports_total,
                elapsed_ms = elapsed.as_millis() as u64,
                "Initial sync done"
            );
        } else {
            debug!(
                kind = kind_name(kind),
                changed = changes.ports.len(),
                written = stats.ports_written,
                rules = stats.rules_written,
                elapsed_ms = elapsed.as_millis() as u64,
                "Sync done"
            );
        }
        if let Some(m) = &self.metrics {
            let now = SystemTime::now();
            let now_unix = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            m.sync_done(kind, &stats, elapsed, now_unix);
            m.changes_synced(changes.service_changes, changes.endpoint_changes);
            if still_pending == 0 {
                m.pending(0, 0);
            }
            for t in &changes.trigger_times {
                if let Ok(ts) = t.parse::<k8s_openapi::jiff::Timestamp>() {
                    let latency = now_unix - ts.as_millisecond() as f64 / 1000.0;
                    if latency >= 0.0 {
                        m.network_programming(IpFamily::V4, latency);
                    }
                }
            }
            if let Some((took, deleted)) = cleaned {
                m.conntrack(IpFamily::V4, took, deleted);
            }
        }
        let ports = health_check_ports(desired);
        self.hc_ports.send_if_modified(|cur| {
            let changed = *cur != ports;
            if changed {
                *cur = ports;
            }
            changed
        });
        self.status.send_modify(|s| {
            s.syncs += 1;
            s.consecutive_failures = 0;
            s.last_success = Some(Instant::now());
            s.last = Some((kind, elapsed, stats));
        });
    }

    /// Removes everything the backend installed.
    pub async fn cleanup(&self) -> Result<(), BackendError> {
        let backend = self.backend.clone();
        match tokio::task::spawn_blocking(move || lock(&backend).cleanup()).await {
            Ok(r) => r,
            Err(e) => Err(BackendError::Exec {
                tool: "cleanup".into(),
                message: e.to_string(),
            }),
        }
    }

    fn record_failure(&self) {
        self.status.send_modify(|s| {
            s.failures += 1;
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        });
    }
}
