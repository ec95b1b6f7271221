//! Syncing: *when* ([`runner`]) and *how* ([`driver`]) the desired state
//! reaches the backend.
//!
//! ```text
//!  watch ──Trigger::request()──▶ Runner ──SyncKind──▶ Driver ──▶ Backend
//!                                  ▲                    │
//!                                  └──── ok / failed ───┘
//! ```

pub mod driver;
pub mod runner;

#[cfg(test)]
mod tests;

pub use driver::{Driver, NoopSyncObserver, SharedModel, SyncObserver, SyncStatus, lock};
pub use runner::{Runner, RunnerConfig, RunnerConfigError, Trigger};
