//! The node proxy: watch the API server and keep the datapath in sync.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::backend;
use crate::config::Config;
use crate::conntrack::Cleaner;
use crate::health::service::AllAddresses;
use crate::health::{self, ProxyHealth, ServiceHealthServer};
use crate::metrics::Metrics;
use crate::model::{Model, SelectionOptions};
use crate::sync::{Driver, Runner, RunnerConfig};
use crate::sys::Sys;
use crate::watch;

/// Runs until SIGINT/SIGTERM. Rules stay in place on exit (as with
/// kube-proxy), so a restart does not disturb traffic.
pub async fn run(cfg: &Config) -> anyhow::Result<()> {
    let node_name = super::node_name(cfg)?;
    let runner_cfg = RunnerConfig::try_new(cfg.min_sync_period, cfg.sync_period)?;
    let backend = backend::for_mode(cfg, Sys::real())?;
    info!(mode = %cfg.mode, node = %node_name, "Using {} proxier", cfg.mode);
    for mut other in backend::other_modes(cfg, Sys::real()) {
        if let Err(e) = other.cleanup() {
            warn!(mode = %other.mode(), error = %e, "Cannot remove another mode's leftovers");
        }
    }
    let client = super::kube_client(cfg).await?;

    let metrics = Metrics::new(cfg.mode);
    let model = Arc::new(Mutex::new(Model::new(node_name.clone(), SelectionOptions::default())));
    let runner = Runner::new(runner_cfg);
    let trigger = runner.trigger();
    let mut watchers = watch::spawn(
        client,
        &node_name,
        model.clone(),
        trigger.clone(),
        Arc::new(metrics.clone()),
    );
    let driver = Driver::new(model, backend)
        .with_conntrack(Cleaner::new(Sys::real()))
        .with_observer(Arc::new(metrics.clone()))
        .with_trigger(trigger.clone());

    // kube-proxy's health timeout: two sync periods.
    let health = ProxyHealth::new(driver.status(), trigger, cfg.sync_period * 2);
    let hc_server = ServiceHealthServer::new(Arc::new(AllAddresses), health.clone());
    let side = vec![
        tokio::spawn(serve_forever("metrics", cfg.metrics_bind_address, {
            let metrics = metrics.clone();
            move |l| health::serve_metrics(l, metrics.clone())
        })),
        tokio::spawn(serve_forever("healthz", cfg.healthz_bind_address, {
            let health = health.clone();
            let metrics = metrics.clone();
            move |l| health::serve_proxy_health(l, health.clone(), Some(metrics.clone()))
        })),
        tokio::spawn(hc_server.run(driver.health_check_ports())),
    ];

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
    for task in side {
        task.abort();
    }
    Ok(())
}

/// Binds `addr` and serves it; a bind failure is logged and retried, never fatal.
async fn serve_forever<F, Fut>(what: &'static str, addr: SocketAddr, serve: F)
where
    F: Fn(TcpListener) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                info!(%addr, "Serving {what}");
                serve(listener).await;
            }
            Err(e) => {
                warn!(%addr, error = %e, "Cannot bind the {what} address; retrying in 5s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
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
