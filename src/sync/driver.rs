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
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info};

use crate::backend::{Backend, BackendError, SyncKind, SyncStats};
use crate::conntrack::{Cleaner, stale_flows};
use crate::model::{ChangeSet, DesiredState, HealthCheckPort, IpFamily, Model, health_check_ports};
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

/// Hooks for what the driver observes; metrics are wired in here, through
/// the same kind of seam as the watch's `WatchObserver`. Every method
/// defaults to doing nothing.
pub trait SyncObserver: Send + Sync + 'static {
    /// Changes waiting for a sync now (services, endpoints).
    fn pending(&self, _services: usize, _endpoints: usize) {}
    /// A sync succeeded; `elapsed` is its whole duration.
    fn sync_done(&self, _kind: SyncKind, _stats: &SyncStats, _elapsed: Duration, _now_unix: f64) {}
    /// A sync failed, for `family`'s rules.
    fn sync_failed(&self, _kind: SyncKind, _family: IpFamily) {}
    /// Changes that reached the kernel (services, endpoints).
    fn changes_synced(&self, _services: usize, _endpoints: usize) {}
    /// An EndpointSlice change of `family` was programmed `seconds` after it
    /// was triggered.
    fn network_programming(&self, _family: IpFamily, _seconds: f64) {}
    /// A conntrack cleanup of `family` ran.
    fn conntrack(&self, _family: IpFamily, _took: Duration, _deleted: usize) {}
}

/// An observer that does nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopSyncObserver;

impl SyncObserver for NoopSyncObserver {}

/// Runs syncs against one backend. Clones share the backend and status;
/// the runner guarantees one sync at a time.
#[derive(Clone)]
pub struct Driver {
    model: SharedModel,
    backend: Arc<Mutex<Box<dyn Backend>>>,
    status: Arc<watch::Sender<SyncStatus>>,
    conntrack: Option<Cleaner>,
    observer: Arc<dyn SyncObserver>,
    hc_ports: Arc<watch::Sender<Vec<HealthCheckPort>>>,
    trigger: Option<Trigger>,
}

fn kind_name(kind: SyncKind) -> &'static str {
    match kind {
        SyncKind::Full => "full",
        SyncKind::Partial => "partial",
    }
}

/// The families a failure is counted for: its own, or both when it is not
/// about one family (one nftables transaction for both, a failed task).
fn error_families(err: &BackendError) -> Vec<IpFamily> {
    err.family().map_or_else(|| IpFamily::ALL.to_vec(), |f| vec![f])
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
            observer: Arc::new(NoopSyncObserver),
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

    /// Reports what syncs do (metrics).
    pub fn with_observer(mut self, observer: Arc<dyn SyncObserver>) -> Self {
        self.observer = observer;
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
        self.observer.pending(changes.service_changes, changes.endpoint_changes);
        let started = Instant::now();
        let backend = self.backend.clone();
        let cleaner = self.conntrack.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = lock(&backend).sync(&desired, &changes, kind);
            // Only once the new rules are in place: flows deleted earlier
            // could be re-created through the old ones.
            let cleaned = match (&result, &cleaner) {
                (Ok(_), Some(cleaner)) => clean_conntrack(cleaner, &changes, &desired),
                _ => Vec::new(),
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
                error!(kind = kind_name(kind), error = %err.chain(), "Sync failed; changes stay pending and a full sync will be retried");
                if let BackendError::Apply { context: Some(ctx), .. } = &err {
                    error!("Offending input:\n{ctx}");
                }
                for family in error_families(&err) {
                    self.observer.sync_failed(kind, family);
                }
                self.observer.pending(changes.service_changes, changes.endpoint_changes);
                self.record_failure();
                false
            }
            Err(join) => {
                error!(kind = kind_name(kind), error = %join, "Sync panicked; a full sync will be retried");
                for family in IpFamily::ALL {
                    self.observer.sync_failed(kind, family);
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
        cleaned: Vec<(IpFamily, Duration, usize)>,
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
        let o = &self.observer;
        let now_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        o.sync_done(kind, &stats, elapsed, now_unix);
        o.changes_synced(changes.service_changes, changes.endpoint_changes);
        if still_pending == 0 {
            o.pending(0, 0);
        }
        for (family, t) in &changes.trigger_times {
            if let Ok(ts) = t.parse::<k8s_openapi::jiff::Timestamp>() {
                let latency = now_unix - ts.as_millisecond() as f64 / 1000.0;
                if latency >= 0.0 {
                    o.network_programming(*family, latency);
                }
            }
        }
        for (family, took, deleted) in cleaned {
            o.conntrack(family, took, deleted);
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
            Err(e) => Err(BackendError::Task(e.to_string())),
        }
    }

    fn record_failure(&self) {
        self.status.send_modify(|s| {
            s.failures += 1;
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        });
    }
}

/// Deletes the stale UDP flows of `changes`, one run per IP family the
/// desired state or the flows use: (family, time taken, entries deleted).
fn clean_conntrack(cleaner: &Cleaner, changes: &ChangeSet, desired: &DesiredState) -> Vec<(IpFamily, Duration, usize)> {
    let flows = stale_flows(changes);
    IpFamily::ALL
        .into_iter()
        .filter_map(|family| {
            let mine: Vec<_> = flows.iter().filter(|f| f.family() == family).cloned().collect();
            if mine.is_empty() && desired.ports_of(family).next().is_none() {
                return None;
            }
            let t = std::time::Instant::now();
            let stats = cleaner.delete(&mine);
            Some((family, t.elapsed(), stats.deleted_entries))
        })
        .collect()
}
