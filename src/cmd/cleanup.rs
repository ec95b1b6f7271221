//! `kproxy --cleanup`: remove everything kproxy installed, then exit.

use tracing::info;

use crate::backend;
use crate::config::Config;

/// Runs every mode's cleanup; idempotent.
pub fn run(cfg: &Config) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for mut b in backend::all_backends(cfg, crate::sys::Sys::real()) {
        let mode = b.mode();
        match b.cleanup() {
            Ok(()) => info!(mode = %mode, "Cleaned up"),
            Err(e) => failures.push(format!("{mode}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("cleanup failed: {}", failures.join("; ")))
    }
}
