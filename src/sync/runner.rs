//! The bounded-frequency runner: decides *when* to sync and of which kind.
//!
//! ```text
//!            trigger (coalesced)           sync-period since last full sync
//!                  │                                     │
//!   Start ──Full──▶ Idle ──Partial at ≥ last_start + min_interval──▶ Idle
//!                    │                                     ▲
//!                    └── failure ──▶ Backoff(n) ──Full at last_end + retry(n)
//! ```
//!
//! Rules, in order:
//! 1. The first sync runs at once and is Full.
//! 2. Triggers that arrive while waiting or syncing collapse into one sync.
//! 3. Two sync starts are never closer than `min_interval` (the first aside).
//! 4. A Full sync runs when `max_interval` has passed since the last Full
//!    one, whether or not anything changed; a triggered sync that is due
//!    then is upgraded to Full.
//! 5. After a failure the next sync is Full, after `retry_base * 2^(n-1)`
//!    (capped at `retry_max`) for the n-th failure in a row; triggers do not
//!    cut a backoff short.
//! 6. Only one sync runs at a time: the runner awaits each one.
//!
//! Worked example (min 1s, max 30s): a sync at t=0; triggers at t=0.2 and
//! t=0.5 → one Partial sync at t=1.0; no more triggers → Full at t=30.
//! Time comes from tokio, so tests run on paused time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use crate::backend::SyncKind;

/// Runner timing; validated by [`RunnerConfig::try_new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunnerConfig {
    pub min_interval: Duration,
    pub max_interval: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

/// A RunnerConfig that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunnerConfigError {
    /// The periodic interval must be positive.
    #[error("max interval must be greater than zero")]
    ZeroMaxInterval,
    /// min_interval may not exceed max_interval.
    #[error("min interval {min:?} is greater than max interval {max:?}")]
    MinAboveMax { min: Duration, max: Duration },
}

/// Asks the runner for a sync. Cheap to clone; never blocks.
#[derive(Clone, Debug, Default)]
pub struct Trigger {
    notify: Arc<Notify>,
    /// When the oldest request not yet covered by a successful sync was made.
    queued: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// The runner's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing run yet.
    Start,
    /// Last sync succeeded; waiting for a trigger or the periodic full sync.
    Idle,
    /// `failures` syncs in a row have failed.
    Backoff { failures: u32 },
}

/// The runner.
#[derive(Debug)]
pub struct Runner {
    cfg: RunnerConfig,
    trigger: Trigger,
}

// === impl RunnerConfig ===

impl RunnerConfig {
    pub fn try_new(min_interval: Duration, max_interval: Duration) -> Result<Self, RunnerConfigError> {
        if max_interval.is_zero() {
            return Err(RunnerConfigError::ZeroMaxInterval);
        }
        if min_interval > max_interval {
            return Err(RunnerConfigError::MinAboveMax {
                min: min_interval,
                max: max_interval,
            });
        }
        Ok(Self {
            min_interval,
            max_interval,
            retry_base: min_interval.max(Duration::from_millis(500)),
            retry_max: max_interval.min(Duration::from_secs(30)).max(min_interval),
        })
    }

    /// The wait before the next sync after `failures` failures in a row.
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        self.retry_base
            .saturating_mul(1u32 << exp)
            .min(self.retry_max.max(self.retry_base))
    }
}

// === impl Trigger ===

impl Trigger {
    /// Requests a sync; many requests before the sync runs count as one.
    pub fn request(&self) {
        self.queued_lock().get_or_insert_with(Instant::now);
        self.notify.notify_one();
    }

    /// When the oldest request that no successful sync has covered yet was
    /// made (kube-proxy's "oldest pending queued" for `/healthz`).
    pub fn queued_since(&self) -> Option<Instant> {
        *self.queued_lock()
    }

    fn queued_lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl Runner ===

impl Runner {
    pub fn new(cfg: RunnerConfig) -> Self {
        Self {
            cfg,
            trigger: Trigger::default(),
        }
    }

    pub fn trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    /// Runs syncs forever (until the returned future is dropped). `sync`
    /// returns whether the sync succeeded.
    pub async fn run<F, Fut>(self, mut sync: F)
    where
        F: FnMut(SyncKind) -> Fut,
        Fut: Future<Output = bool>,
    {
        let cfg = self.cfg;
        let notify = self.trigger.notify.clone();
        let mut state = State::Start;
        let mut last_start = Instant::now();
        let mut last_full = Instant::now();
        loop {
            let kind = match state {
                State::Start => SyncKind::Full,
                State::Idle => {
                    let full_due = last_full + cfg.max_interval;
                    tokio::select! {
                        _ = notify.notified() => {
                            let at = last_start + cfg.min_interval;
                            sleep_until(at).await;
                            if Instant::now() >= full_due { SyncKind::Full } else { SyncKind::Partial }
                        }
                        _ = sleep_until(full_due) => SyncKind::Full,
                    }
                }
                State::Backoff { failures } => {
                    sleep_until(Instant::now() + cfg.retry_delay(failures)).await;
                    SyncKind::Full
                }
            };
            // Triggers that came in before this sync starts are covered by it.
            drain(&notify);
            let covered = self.trigger.queued_lock().take();
            last_start = Instant::now();
            let ok = sync(kind).await;
            if !ok && let Some(t) = covered {
                // Still not programmed: the oldest request stays the oldest.
                let mut q = self.trigger.queued_lock();
                *q = Some(q.map_or(t, |later| later.min(t)));
            }
            state = match (ok, state) {
                (true, _) => {
                    if kind == SyncKind::Full {
                        last_full = last_start;
                    }
                    State::Idle
                }
                (false, State::Backoff { failures }) => State::Backoff {
                    failures: failures.saturating_add(1),
                },
                (false, _) => State::Backoff { failures: 1 },
            };
        }
    }
}

/// Consumes a stored permit, if any, without waiting.
fn drain(notify: &Notify) {
    use std::task::{Context, Poll};
    let fut = notify.notified();
    let mut fut = std::pin::pin!(fut);
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let _: Poll<()> = fut.as_mut().poll(&mut cx);
}
