//! The node proxy: watch the API server and keep the datapath in sync.

use std::sync::{Arc, Mutex};

use tracing::{error, info};

use crate::backend;
use crate::config::Config;
use crate::conntrack::Cleaner;
use crate::model::{Model, SelectionOptions};
use crate::sync::{Driver, Runner, RunnerConfig};
use crate::sys::Sys;
use crate::watch::{self, NoopObserver};

/// Runs until SIGINT/SIGTERM. Rules stay in place on exit (as with
/// kube-proxy), so a restart does not disturb traffic.
pub async fn run(cfg: &Config) -> anyhow::Result<()> {
    let node_name = super::node_name(cfg)?;
    let runner_cfg = RunnerConfig::try_new(cfg.min_sync_period, cfg.sync_period)?;
    let backend = backend::for_mode(cfg, Sys::real())?;
    info!(mode = %cfg.mode, node = %node_name, "Using {} proxier", cfg.mode);
    let client = super::kube_client(cfg).await?;

    let model = Arc::new(Mutex::new(Model::new(node_name.clone(), SelectionOptions::default())));
    let runner = Runner::new(runner_cfg);
    let mut watchers = watch::spawn(
        client,
        &node_name,
        model.clone(),
        runner.trigger(),
        Arc::new(NoopObserver),
    );
    let driver = Driver::new(model, backend).with_conntrack(Cleaner::new(Sys::real()));

    let work = async move {
        if !watchers.readiness.wait().await {
            error!("A watcher stopped before its initial list; exiting");
            return;
        }
        info!("Initial lists done; starting syncs");
        runner
            .run(move |kind| {
                let driver = driver.clone();
                async move { driver.sync(kind).await }
            })
            .await;
    };
    tokio::select! {
        _ = work => {}
        _ = shutdown_signal() => info!("Shutting down; rules are left in place"),
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
