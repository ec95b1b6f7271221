//! Runner and driver tests, on paused tokio time with a recording backend.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;
use crate::backend::{RecordingBackend, SyncKind};
use crate::model::builders::{mk_service, mk_slice};
use crate::model::{Model, SelectionOptions};

/// (time since start, kind) of every sync the runner asked for.
type SyncLog = Arc<Mutex<Vec<(Duration, SyncKind)>>>;

/// Records every sync the runner asks for; the sync result is taken from
/// `results` (true when it runs out).
fn spawn_runner(cfg: RunnerConfig, results: Vec<bool>) -> (Trigger, SyncLog, tokio::task::JoinHandle<()>) {
    let runner = Runner::new(cfg);
    let trigger = runner.trigger();
    let log = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let results = Arc::new(Mutex::new(results.into_iter()));
    let task_log = log.clone();
    let task = tokio::spawn(runner.run(move |kind| {
        let log = task_log.clone();
        let results = results.clone();
        async move {
            log.lock().expect("lock").push((start.elapsed(), kind));
            results.lock().expect("lock").next().unwrap_or(true)
        }
    }));
    (trigger, log, task)
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn cfg(min: u64, max: u64) -> RunnerConfig {
    RunnerConfig::try_new(Duration::from_secs(min), Duration::from_secs(max)).expect("valid")
}

fn secs(log: &SyncLog) -> Vec<(f64, SyncKind)> {
    log.lock()
        .expect("lock")
        .iter()
        .map(|(d, k)| ((d.as_secs_f64() * 10.0).round() / 10.0, *k))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn first_sync_is_immediate_and_full() {
    let (_t, log, task) = spawn_runner(cfg(1, 30), vec![]);
    settle().await;
    assert_eq!(secs(&log), vec![(0.0, SyncKind::Full)]);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn bursts_coalesce_and_respect_min_interval() {
    let (t, log, task) = spawn_runner(cfg(1, 30), vec![]);
    settle().await;
    advance(Duration::from_millis(200)).await;
    t.request();
    advance(Duration::from_millis(300)).await;
    t.request();
    t.request();
    settle().await;
    advance(Duration::from_millis(500)).await;
    settle().await;
    assert_eq!(secs(&log), vec![(0.0, SyncKind::Full), (1.0, SyncKind::Partial)]);
    // A trigger long after the last sync runs at once.
    advance(Duration::from_secs(5)).await;
    t.request();
    settle().await;
    assert_eq!(secs(&log).last(), Some(&(6.0, SyncKind::Partial)));
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn full_sync_every_max_interval_without_triggers() {
    let (_t, log, task) = spawn_runner(cfg(1, 30), vec![]);
    settle().await;
    for _ in 0..3 {
        advance(Duration::from_secs(30)).await;
        settle().await;
    }
    assert_eq!(
        secs(&log),
        vec![
            (0.0, SyncKind::Full),
            (30.0, SyncKind::Full),
            (60.0, SyncKind::Full),
            (90.0, SyncKind::Full)
        ]
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn partial_syncs_do_not_postpone_the_periodic_full_sync() {
    let (t, log, task) = spawn_runner(cfg(1, 30), vec![]);
    settle().await;
    for _ in 0..6 {
        advance(Duration::from_secs(10)).await;
        t.request();
        settle().await;
    }
    let kinds: Vec<SyncKind> = secs(&log).into_iter().map(|(_, k)| k).collect();
    assert!(kinds.iter().skip(1).any(|k| *k == SyncKind::Full), "{kinds:?}");
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_with_full_syncs() {
    // min 1s: retries after 1s, 2s, 4s, then success.
    let (t, log, task) = spawn_runner(cfg(1, 30), vec![false, false, false, true]);
    settle().await;
    for _ in 0..8 {
        advance(Duration::from_secs(1)).await;
        t.request(); // triggers must not cut the backoff short
        settle().await;
    }
    let got = secs(&log);
    assert_eq!(
        &got[..4],
        &[
            (0.0, SyncKind::Full),
            (1.0, SyncKind::Full),
            (3.0, SyncKind::Full),
            (7.0, SyncKind::Full)
        ]
    );
    task.abort();
}

#[test]
fn runner_config_is_validated() {
    assert!(RunnerConfig::try_new(Duration::from_secs(1), Duration::ZERO).is_err());
    assert!(RunnerConfig::try_new(Duration::from_secs(5), Duration::from_secs(1)).is_err());
    let c = cfg(1, 30);
    assert_eq!(c.retry_delay(1), Duration::from_secs(1));
    assert_eq!(c.retry_delay(3), Duration::from_secs(4));
    assert_eq!(c.retry_delay(30), Duration::from_secs(30));
}

fn model_with_web() -> SharedModel {
    let mut m = Model::new("node-a", SelectionOptions::default());
    m.apply_service(
        &mk_service("default", "web")
            .cluster_ip("10.96.0.10")
            .port("http", 80, "TCP")
            .build(),
    );
    m.apply_slice(
        &mk_slice("default", "web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint("10.244.0.5")
            .build(),
    );
    Arc::new(Mutex::new(m))
}

#[tokio::test]
async fn driver_acks_only_after_backend_success() {
    let model = model_with_web();
    let backend = RecordingBackend::new();
    let driver = Driver::new(model.clone(), Box::new(backend.clone()));
    let status = driver.status();

    backend.fail_next(1);
    assert!(!driver.sync(SyncKind::Full).await);
    assert_eq!(lock(&model).pending(), 1, "a failed sync keeps its changes pending");
    assert_eq!(status.borrow().consecutive_failures, 1);

    assert!(driver.sync(SyncKind::Full).await);
    assert_eq!(lock(&model).pending(), 0);
    assert_eq!(status.borrow().syncs, 1);
    assert_eq!(status.borrow().consecutive_failures, 0);
    let syncs = backend.syncs();
    assert_eq!(syncs.len(), 2);
    assert_eq!(syncs[1].changed.len(), 1, "the retried sync still carries the change");
    assert_eq!(syncs[1].desired.ports.len(), 1);
}

#[tokio::test]
async fn driver_sends_only_changed_ports_in_partial_syncs() {
    let model = model_with_web();
    lock(&model).apply_service(
        &mk_service("default", "db")
            .cluster_ip("10.96.0.11")
            .port("pg", 5432, "TCP")
            .build(),
    );
    let backend = RecordingBackend::new();
    let driver = Driver::new(model.clone(), Box::new(backend.clone()));
    assert!(driver.sync(SyncKind::Full).await);
    lock(&model).apply_slice(
        &mk_slice("default", "web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint("10.244.0.6")
            .build(),
    );
    assert!(driver.sync(SyncKind::Partial).await);
    let last = backend.syncs().pop().expect("a sync");
    assert_eq!(last.kind, SyncKind::Partial);
    assert_eq!(last.changed.len(), 1);
    assert_eq!(last.changed[0].to_string(), "default/web:http");
    assert_eq!(
        last.desired.ports.len(),
        2,
        "the backend always sees the full desired state"
    );
}

/// A backend that, while syncing, reverts the web slice to what was
/// programmed before: the race behind a change that never went live.
struct RevertingBackend {
    model: SharedModel,
    revert_to: Option<k8s_openapi::api::discovery::v1::EndpointSlice>,
}

impl crate::backend::Backend for RevertingBackend {
    fn mode(&self) -> crate::config::ProxyMode {
        crate::config::ProxyMode::Iptables
    }
    fn sync(
        &mut self,
        _: &crate::model::DesiredState,
        _: &crate::model::ChangeSet,
        _: SyncKind,
    ) -> Result<crate::backend::SyncStats, crate::backend::BackendError> {
        if let Some(slice) = self.revert_to.take() {
            lock(&self.model).apply_slice(&slice);
        }
        Ok(crate::backend::SyncStats::default())
    }
    fn render(&self, _: &crate::model::DesiredState) -> String {
        String::new()
    }
    fn cleanup(&mut self) -> Result<(), crate::backend::BackendError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_change_reverted_during_its_sync_gets_another_sync() {
    let model = model_with_web();
    let original = mk_slice("default", "web-1", "web")
        .port("http", 8080, "TCP")
        .endpoint("10.244.0.5")
        .build();
    {
        let mut m = lock(&model);
        let all = m.changes();
        m.ack(&all);
        m.apply_slice(
            &mk_slice("default", "web-1", "web")
                .port("http", 8080, "TCP")
                .endpoint("10.244.0.6")
                .build(),
        );
    }
    let backend = RevertingBackend {
        model: model.clone(),
        revert_to: Some(original),
    };
    let trigger = Trigger::default();
    let driver = Driver::new(model.clone(), Box::new(backend)).with_trigger(trigger.clone());
    assert!(driver.sync(SyncKind::Partial).await);
    assert_eq!(lock(&model).pending(), 1, "the revert is pending again after the ack");
    assert!(trigger.queued_since().is_some(), "and a sync was requested for it");
}
