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

use crate::backend::{Backend, SyncKind, SyncStats};
use crate::conntrack::{Cleaner, stale_flows};
use crate::model::Model;

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
}

/// Runs syncs against one backend. Clones share the backend and status;
/// the runner guarantees one sync at a time.
#[derive(Clone)]
pub struct Driver {
    model: SharedModel,
    backend: Arc<Mutex<Box<dyn Backend>>>,
    status: Arc<watch::Sender<SyncStatus>>,
    conntrack: Option<Cleaner>,
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
        Self {
            model,
            backend: Arc::new(Mutex::new(backend)),
            status: Arc::new(status),
            conntrack: None,
        }
    }

    /// Deletes stale UDP conntrack entries after each successful sync.
    pub fn with_conntrack(mut self, cleaner: Cleaner) -> Self {
        self.conntrack = Some(cleaner);
        self
    }

    /// Subscribes to sync status updates.
    pub fn status(&self) -> watch::Receiver<SyncStatus> {
        self.status.subscribe()
    }

    /// Runs one sync; returns whether it succeeded.
    pub async fn sync(&self, kind: SyncKind) -> bool {
        let (desired, changes) = {
            let model = lock(&self.model);
            (model.desired(), model.changes())
        };
        let started = Instant::now();
        let backend = self.backend.clone();
        let cleaner = self.conntrack.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = lock(&backend).sync(&desired, &changes, kind);
            // Only once the new rules are in place: flows deleted earlier
            // could be re-created through the old ones.
            if let (Ok(_), Some(cleaner)) = (&result, &cleaner) {
                cleaner.delete(&stale_flows(&changes));
            }
            (result, changes)
        })
        .await;
        let elapsed = started.elapsed();
        let kind_str = match kind {
            SyncKind::Full => "full",
            SyncKind::Partial => "partial",
        };
        match joined {
            Ok((Ok(stats), changes)) => {
                let first = self.status.borrow().syncs == 0;
                lock(&self.model).ack(&changes);
                if first {
                    info!(
                        ports = stats.ports_total,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "Initial sync done"
                    );
                } else {
                    debug!(
                        kind = kind_str,
                        changed = changes.ports.len(),
                        written = stats.ports_written,
                        rules = stats.rules_written,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "Sync done"
                    );
                }
                self.status.send_modify(|s| {
                    s.syncs += 1;
                    s.consecutive_failures = 0;
                    s.last_success = Some(Instant::now());
                    s.last = Some((kind, elapsed, stats));
                });
                true
            }
            Ok((Err(err), _)) => {
                error!(kind = kind_str, error = %err, "Sync failed; changes stay pending and a full sync will be retried");
                if let crate::backend::BackendError::Apply { context: Some(ctx), .. } = &err {
                    error!("Offending input:\n{ctx}");
                }
                self.record_failure();
                false
            }
            Err(join) => {
                error!(kind = kind_str, error = %join, "Sync panicked; a full sync will be retried");
                self.record_failure();
                false
            }
        }
    }

    /// Removes everything the backend installed.
    pub async fn cleanup(&self) -> Result<(), crate::backend::BackendError> {
        let backend = self.backend.clone();
        match tokio::task::spawn_blocking(move || lock(&backend).cleanup()).await {
            Ok(r) => r,
            Err(e) => Err(crate::backend::BackendError::Exec {
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
