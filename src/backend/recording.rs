//! A backend that records what it is asked to do, for tests of the watch
//! loop, the runner and the driver. Failures can be injected.

use std::sync::{Arc, Mutex};

use super::{Backend, BackendError, SyncKind, SyncStats};
use crate::config::ProxyMode;
use crate::model::{ChangeSet, DesiredState, ServicePortName};

/// One recorded sync.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub kind: SyncKind,
    /// The desired state it was given.
    pub desired: DesiredState,
    /// The service ports named by the change set.
    pub changed: Vec<ServicePortName>,
    /// Whether this call was made to fail.
    pub failed: bool,
}

#[derive(Debug, Default)]
struct Inner {
    syncs: Vec<Recorded>,
    fail_next: usize,
    cleanups: usize,
}

/// A cloneable handle: keep one clone in the test, give the other to the driver.
#[derive(Clone, Debug, Default)]
pub struct RecordingBackend {
    inner: Arc<Mutex<Inner>>,
}

// === impl RecordingBackend ===

impl RecordingBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `n` syncs fail.
    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    /// Every sync so far, failed ones included.
    pub fn syncs(&self) -> Vec<Recorded> {
        self.lock().syncs.clone()
    }

    /// The desired state of the last successful sync.
    pub fn last_programmed(&self) -> Option<DesiredState> {
        self.lock()
            .syncs
            .iter()
            .rev()
            .find(|s| !s.failed)
            .map(|s| s.desired.clone())
    }

    pub fn cleanups(&self) -> usize {
        self.lock().cleanups
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic in another test thread must not hide this test's result.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for RecordingBackend {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Iptables
    }

    fn sync(&mut self, desired: &DesiredState, changes: &ChangeSet, kind: SyncKind) -> Result<SyncStats, BackendError> {
        let mut inner = self.lock();
        let failed = inner.fail_next > 0;
        if failed {
            inner.fail_next -= 1;
        }
        inner.syncs.push(Recorded {
            kind,
            desired: desired.clone(),
            changed: changes.ports.keys().cloned().collect(),
            failed,
        });
        if failed {
            return Err(BackendError::Injected("recording backend told to fail".into()));
        }
        Ok(SyncStats {
            ports_written: match kind {
                SyncKind::Full => desired.ports.len(),
                SyncKind::Partial => changes.ports.len(),
            },
            ports_total: desired.ports.len(),
            ..SyncStats::default()
        })
    }

    fn render(&self, desired: &DesiredState) -> String {
        super::table::render_table(desired, &super::bare_plan_context)
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        self.lock().cleanups += 1;
        Ok(())
    }
}
