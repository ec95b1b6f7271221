//! Last-activity tracking for idle timeouts, shared by both directions of a
//! connection (or session) without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// When payload last moved, in milliseconds since the activity began.
#[derive(Debug)]
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

// === impl Activity ===

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Records activity now.
    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    pub(super) async fn idle(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_the_whole_limit_after_the_last_touch() {
        let a = Activity::new();
        let limit = Duration::from_secs(10);
        tokio::time::advance(Duration::from_secs(6)).await;
        a.touch();
        let idle = a.idle(limit);
        tokio::pin!(idle);
        assert!(
            tokio::time::timeout(Duration::from_secs(9), &mut idle).await.is_err(),
            "touched 9 s ago"
        );
        a.touch();
        assert!(
            tokio::time::timeout(Duration::from_secs(9), &mut idle).await.is_err(),
            "touched again"
        );
        tokio::time::timeout(Duration::from_secs(11), &mut idle)
            .await
            .expect("idle for 10 s after the last touch");
    }
}
