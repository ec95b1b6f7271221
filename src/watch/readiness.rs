//! Readiness handles: the first sync waits until every watcher has
//! completed its initial list.

use std::sync::Arc;

use tokio::sync::watch;

/// Resolves when every handle has been marked ready.
#[derive(Clone, Debug)]
pub struct Readiness {
    rx: watch::Receiver<usize>,
}

/// One watcher's promise to report its initial list.
#[derive(Debug)]
pub struct ReadyHandle {
    tx: Arc<watch::Sender<usize>>,
}

// === impl Readiness ===

impl Readiness {
    /// A readiness gate with `n` handles.
    pub fn new(n: usize) -> (Self, Vec<ReadyHandle>) {
        let (tx, rx) = watch::channel(n);
        let tx = Arc::new(tx);
        let handles = (0..n).map(|_| ReadyHandle { tx: tx.clone() }).collect();
        (Self { rx }, handles)
    }

    /// Whether every handle is ready.
    pub fn is_ready(&self) -> bool {
        *self.rx.borrow() == 0
    }

    /// Waits until every handle is ready. Returns false if a handle was
    /// dropped without being marked (its watcher died).
    pub async fn wait(&mut self) -> bool {
        self.rx.wait_for(|n| *n == 0).await.is_ok()
    }
}

// === impl ReadyHandle ===

impl ReadyHandle {
    /// Marks this handle ready (consumes it).
    pub fn mark_ready(self) {
        self.tx.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_when_every_handle_is_marked() {
        let (mut r, mut handles) = Readiness::new(2);
        assert!(!r.is_ready());
        if let Some(h) = handles.pop() {
            h.mark_ready();
        }
        assert!(!r.is_ready());
        if let Some(h) = handles.pop() {
            h.mark_ready();
        }
        assert!(r.wait().await);
    }
}
