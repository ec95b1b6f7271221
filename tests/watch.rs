//! The watch loop end to end: the real kube-rs client and watchers against
//! the fake API server (`tests/support/api_server.rs`), feeding the model,
//! the bounded-frequency runner and the driver, with a [`RecordingBackend`]
//! in place of a datapath. Wired exactly as `kproxy::cmd::run` wires it:
//! no sync runs before both initial lists are done.
//!
//! kube-rs behaviour these tests rely on (see `tests/api_server.rs`): a
//! failed list or watch is retried after the default backoff (800 ms, with
//! jitter, reset by any successful event); a 410 makes the watcher relist;
//! a watch that ends is resumed from the last resourceVersion seen.
//!
//! Every test is bounded by [`TEST_TIMEOUT`]; every eventual condition is
//! polled with a deadline, never asserted after a sleep.

#[path = "support/api_server.rs"]
mod api_server;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use api_server::{Kind, TestApiServer};
use kproxy::backend::{Recorded, RecordingBackend, SyncKind};
use kproxy::model::builders::{EpSpec, mk_node, mk_service, mk_slice};
use kproxy::model::{DesiredState, Model, Protocol, SelectionOptions, ServiceName, ServicePortName};
use kproxy::sync::{Driver, Runner, RunnerConfig, SharedModel, SyncStatus};
use kproxy::watch::{self, Readiness, WatchObserver};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The node kproxy runs on in these tests.
const NODE: &str = "node-a";
/// Every test body runs under this bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound for one eventual condition (covers a kube-rs retry: 0.8-1.6 s).
const WAIT: Duration = Duration::from_secs(6);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(5);
/// Runner timing: syncs close together, no periodic full sync during a test.
const MIN_SYNC: Duration = Duration::from_millis(10);
const MAX_SYNC: Duration = Duration::from_secs(60);

const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

// === Harness ===

/// Counts what the watch loop reports, per kind.
#[derive(Debug, Default)]
struct CountingObserver {
    problems: Mutex<HashMap<&'static str, usize>>,
    errors: Mutex<HashMap<&'static str, usize>>,
}

impl CountingObserver {
    fn problems(&self, kind: &str) -> usize {
        count(&self.problems, kind)
    }

    fn errors(&self, kind: &str) -> usize {
        count(&self.errors, kind)
    }
}

fn count(map: &Mutex<HashMap<&'static str, usize>>, kind: &str) -> usize {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(kind)
        .copied()
        .unwrap_or(0)
}

fn bump(map: &Mutex<HashMap<&'static str, usize>>, kind: &'static str) {
    *map.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
}

impl WatchObserver for CountingObserver {
    fn object_problem(&self, kind: &'static str) {
        bump(&self.problems, kind);
    }

    fn watch_error(&self, kind: &'static str) {
        bump(&self.errors, kind);
    }
}

/// fake API server → `watch::spawn` → Model → Runner (gated on readiness)
/// → Driver → RecordingBackend. Tasks are aborted on drop.
struct Harness {
    backend: RecordingBackend,
    model: SharedModel,
    readiness: Readiness,
    status: tokio::sync::watch::Receiver<SyncStatus>,
    observer: Arc<CountingObserver>,
    tasks: Vec<JoinHandle<()>>,
}

impl Harness {
    fn start(server: &TestApiServer) -> Self {
        let model: SharedModel = Arc::new(Mutex::new(Model::new(NODE, SelectionOptions::default())));
        let runner = Runner::new(RunnerConfig::try_new(MIN_SYNC, MAX_SYNC).expect("valid runner config"));
        let observer = Arc::new(CountingObserver::default());
        let watchers = watch::spawn(server.client(), NODE, model.clone(), runner.trigger(), observer.clone());
        let backend = RecordingBackend::new();
        let driver = Driver::new(model.clone(), Box::new(backend.clone()));
        let status = driver.status();
        let readiness = watchers.readiness.clone();
        let mut gate = watchers.readiness;
        let mut tasks = watchers.tasks;
        // As cmd::run does it: no sync before both initial lists.
        tasks.push(tokio::spawn(async move {
            if !gate.wait().await {
                return;
            }
            runner
                .run(move |kind| {
                    let driver = driver.clone();
                    async move { driver.sync(kind).await }
                })
                .await;
        }));
        Self {
            backend,
            model,
            readiness,
            status,
            observer,
            tasks,
        }
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn syncs(&self) -> Vec<Recorded> {
        self.backend.syncs()
    }

    /// Waits until the last successful sync satisfies `cond`.
    async fn wait_programmed(&self, what: &str, cond: impl Fn(&DesiredState) -> bool) {
        wait_until(what, WAIT, || self.backend.last_programmed().is_some_and(|d| cond(&d))).await;
    }

    /// Waits until every change is programmed and acknowledged.
    async fn wait_settled(&self) {
        wait_until("the model has nothing pending", WAIT, || {
            self.model().pending() == 0 && !self.syncs().is_empty()
        })
        .await;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Polls `cond` until it holds; panics naming `what` after `timeout`.
async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test exceeded its time bound");
}

async fn start_server() -> TestApiServer {
    TestApiServer::start().await.expect("start fake API server")
}

// === Helpers on the desired state ===

/// `ns/name:port` over TCP.
fn tcp(ns: &str, name: &str, port: &str) -> ServicePortName {
    ServicePortName::new(ServiceName::new(ns, name), port, Protocol::Tcp)
}

/// Every IPv4 endpoint of a service port, as `ip:port`; None if the port is
/// not in the desired state.
fn endpoints(desired: &DesiredState, port: &ServicePortName) -> Option<Vec<String>> {
    desired
        .ports
        .get(port)
        .map(|s| s.v4.endpoints.iter().map(ToString::to_string).collect())
}

/// The IPv4 endpoints selected for cluster-policy traffic, as `ip:port`.
fn cluster_endpoints(desired: &DesiredState, port: &ServicePortName) -> Option<Vec<String>> {
    desired
        .ports
        .get(port)
        .map(|s| s.v4.selection.cluster.iter().map(ToString::to_string).collect())
}

/// The services present in a desired state.
fn services(desired: &DesiredState) -> BTreeSet<String> {
    desired.ports.keys().map(|p| p.service.to_string()).collect()
}

fn port_names(desired: &DesiredState) -> Vec<ServicePortName> {
    desired.ports.keys().cloned().collect()
}

/// A ClusterIP service with one TCP port named `http` on port 80.
fn web_service(ns: &str, name: &str, ip: &str) -> k8s_openapi::api::core::v1::Service {
    mk_service(ns, name).cluster_ip(ip).port("http", 80, "TCP").build()
}

/// A slice for `service` with port `http` 8080/TCP and ready endpoints.
fn web_slice(ns: &str, name: &str, service: &str, ips: &[&str]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    mk_slice(ns, name, service)
        .port("http", 8080, "TCP")
        .endpoints(ips)
        .build()
}

// === Tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_programmed_before_both_initial_lists() {
    bounded(async {
        let server = start_server().await;
        server.apply_service(web_service("default", "web", "10.96.0.10"));
        server.apply_slice(web_slice("default", "web-1", "web", &["10.0.0.1"]));
        // The fake server's injected list failures hit any kind, so the
        // EndpointSlice list is made to fail on its own with an object the
        // client cannot decode: every list of slices fails until it is gone.
        server.apply(
            Kind::EndpointSlice,
            json!({
                "metadata": {
                    "namespace": "default",
                    "name": "undecodable",
                    "labels": {"kubernetes.io/service-name": "web"},
                },
                "addressType": "IPv4",
                "endpoints": 42,
            }),
        );
        let h = Harness::start(&server);

        // Services are listed and watched; slices fail and are retried.
        wait_until("the Service watch is open", WAIT, || {
            server.open_watches(Kind::Service) >= 1
        })
        .await;
        wait_until("the EndpointSlice list failed and was retried", WAIT, || {
            server.list_count(Kind::EndpointSlice) >= 2
        })
        .await;
        assert!(h.observer.errors("EndpointSlice") >= 1);
        assert!(!h.readiness.is_ready(), "ready without the EndpointSlice list");
        assert!(
            h.syncs().is_empty(),
            "synced before the EndpointSlice list: {:?}",
            h.syncs()
        );
        // The service itself already reached the model.
        assert_eq!(port_names(&h.model().desired()), [tcp("default", "web", "http")]);

        // Now the slices list succeeds: the first sync is Full and complete.
        server.delete(Kind::EndpointSlice, "default", "undecodable");
        wait_until("the first sync", WAIT, || !h.syncs().is_empty()).await;
        assert!(h.readiness.is_ready());
        let first = &h.syncs()[0];
        assert_eq!(first.kind, SyncKind::Full);
        assert!(!first.failed);
        assert_eq!(port_names(&first.desired), [tcp("default", "web", "http")]);
        assert_eq!(
            endpoints(&first.desired, &tcp("default", "web", "http")),
            Some(vec!["10.0.0.1:8080".to_string()])
        );
        h.wait_settled().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_updates_and_deletes_reach_the_backend() {
    bounded(async {
        let server = start_server().await;
        let h = Harness::start(&server);
        wait_until("the first (empty) sync", WAIT, || !h.syncs().is_empty()).await;
        assert_eq!(h.syncs()[0].kind, SyncKind::Full);
        assert!(h.syncs()[0].desired.ports.is_empty());

        let web = tcp("default", "web", "http");
        let api = tcp("default", "api", "http");

        // Create.
        server.apply_service(web_service("default", "web", "10.96.0.10"));
        server.apply_slice(web_slice("default", "web-1", "web", &["10.0.0.1"]));
        server.apply_service(web_service("default", "api", "10.96.0.11"));
        server.apply_slice(web_slice("default", "api-1", "api", &["10.0.1.1"]));
        h.wait_programmed("web and api with their endpoints", |d| {
            endpoints(d, &web) == Some(vec!["10.0.0.1:8080".into()])
                && endpoints(d, &api) == Some(vec!["10.0.1.1:8080".into()])
        })
        .await;
        h.wait_settled().await;
        let vip = h
            .backend
            .last_programmed()
            .and_then(|d| d.ports.get(&web).map(|s| s.port.cluster_ips.clone()));
        assert_eq!(vip, Some(vec!["10.96.0.10".parse::<IpAddr>().expect("ip")]));

        // Update one endpoint of web: a Partial sync names exactly web:http.
        let before = h.syncs().len();
        server.apply_slice(web_slice("default", "web-1", "web", &["10.0.0.2"]));
        h.wait_programmed("web's new endpoint", |d| {
            endpoints(d, &web) == Some(vec!["10.0.0.2:8080".into()])
        })
        .await;
        h.wait_settled().await;
        let after: Vec<Recorded> = h.syncs().split_off(before);
        let update = after
            .iter()
            .find(|s| endpoints(&s.desired, &web) == Some(vec!["10.0.0.2:8080".into()]))
            .expect("the sync that programmed the update");
        assert_eq!(update.kind, SyncKind::Partial);
        assert!(!update.failed);
        assert_eq!(update.changed, std::slice::from_ref(&web));
        assert!(
            after.iter().all(|s| s.changed.iter().all(|p| *p == web)),
            "only web:http may be reported as changed: {after:#?}"
        );
        // The untouched service is still programmed as it was.
        assert_eq!(endpoints(&update.desired, &api), Some(vec!["10.0.1.1:8080".into()]));

        // Delete web: it disappears from the next programmed state.
        let before = h.syncs().len();
        server.delete_service("default", "web");
        h.wait_programmed("web is gone", |d| !d.ports.contains_key(&web)).await;
        let after: Vec<Recorded> = h.syncs().split_off(before);
        let removal = after
            .iter()
            .find(|s| !s.failed && !s.desired.ports.contains_key(&web))
            .expect("the sync that removed web");
        assert_eq!(removal.kind, SyncKind::Partial);
        assert_eq!(removal.changed, std::slice::from_ref(&web));
        assert_eq!(port_names(&removal.desired), std::slice::from_ref(&api));

        // Its slice going away changes nothing a backend can see.
        h.wait_settled().await;
        let before = h.syncs().len();
        server.delete_slice("default", "web-1");
        // A later change to api is the marker that the slice delete was seen.
        server.apply_slice(web_slice("default", "api-1", "api", &["10.0.1.2"]));
        h.wait_programmed("api's new endpoint", |d| {
            endpoints(d, &api) == Some(vec!["10.0.1.2:8080".into()])
        })
        .await;
        let after: Vec<Recorded> = h.syncs().split_off(before);
        assert!(after.iter().all(|s| s.changed.iter().all(|p| *p == api)), "{after:#?}");
        assert_eq!(h.status.borrow().failures, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_and_proxy_name_labelled_objects_are_ignored() {
    bounded(async {
        let server = start_server().await;
        // Programmed.
        server.apply_service(web_service("default", "plain", "10.96.0.1"));
        server.apply_slice(web_slice("default", "plain-1", "plain", &["10.0.0.1"]));
        // A slice of plain that belongs to another proxy: never read.
        server.apply_slice(
            mk_slice("default", "plain-other", "plain")
                .label(PROXY_NAME_LABEL, "other")
                .port("http", 8080, "TCP")
                .endpoint("10.0.0.99")
                .build(),
        );
        // Another proxy's service.
        server.apply_service(
            mk_service("default", "other-proxy")
                .cluster_ip("10.96.0.2")
                .port("http", 80, "TCP")
                .label(PROXY_NAME_LABEL, "other")
                .build(),
        );
        server.apply_slice(
            mk_slice("default", "other-proxy-1", "other-proxy")
                .label(PROXY_NAME_LABEL, "other")
                .port("http", 8080, "TCP")
                .endpoint("10.0.0.2")
                .build(),
        );
        // Labelled headless (even with a cluster IP, the selector drops it).
        server.apply_service(
            mk_service("default", "labelled-headless")
                .cluster_ip("10.96.0.3")
                .port("http", 80, "TCP")
                .label(HEADLESS_LABEL, "")
                .build(),
        );
        server.apply_slice(
            mk_slice("default", "labelled-headless-1", "labelled-headless")
                .label(HEADLESS_LABEL, "")
                .port("http", 8080, "TCP")
                .endpoint("10.0.0.3")
                .build(),
        );
        // clusterIP: None without the label: read, but it has no ports.
        server.apply_service(
            mk_service("default", "headless")
                .headless()
                .port("http", 80, "TCP")
                .build(),
        );
        server.apply_slice(web_slice("default", "headless-1", "headless", &["10.0.0.4"]));

        let h = Harness::start(&server);
        let plain = tcp("default", "plain", "http");
        wait_until("the first sync", WAIT, || !h.syncs().is_empty()).await;
        let first = h.syncs()[0].clone();
        assert_eq!(first.kind, SyncKind::Full);
        assert_eq!(port_names(&first.desired), std::slice::from_ref(&plain));
        assert_eq!(endpoints(&first.desired, &plain), Some(vec!["10.0.0.1:8080".into()]));

        // The selector is sent to the server for Services and EndpointSlices.
        let reqs = server.requests();
        for path in ["GET /api/v1/services?", "GET /apis/discovery.k8s.io/v1/endpointslices?"] {
            let sent: Vec<&String> = reqs.iter().filter(|r| r.starts_with(path)).collect();
            assert!(!sent.is_empty(), "no request for {path}: {reqs:#?}");
            let with_selector = sent
                .iter()
                .all(|r| r.contains("labelSelector=") && r.contains("service-proxy-name") && r.contains("headless"));
            assert!(with_selector, "{path} without the proxy label selector: {reqs:#?}");
        }

        // Live changes to ignored objects stay invisible: a new
        // other-proxy service, a changed headless one, then a marker.
        server.apply_service(
            mk_service("default", "late-other")
                .cluster_ip("10.96.0.5")
                .port("http", 80, "TCP")
                .label(PROXY_NAME_LABEL, "other")
                .build(),
        );
        server.apply_service(
            mk_service("default", "headless")
                .headless()
                .port("http", 80, "TCP")
                .port("https", 443, "TCP")
                .build(),
        );
        server.apply_slice(
            mk_slice("default", "plain-other", "plain")
                .label(PROXY_NAME_LABEL, "other")
                .port("http", 8080, "TCP")
                .endpoint("10.0.0.98")
                .build(),
        );
        server.apply_service(web_service("default", "marker", "10.96.0.6"));
        server.apply_slice(web_slice("default", "marker-1", "marker", &["10.0.0.6"]));
        let marker = tcp("default", "marker", "http");
        h.wait_programmed("the marker service", |d| {
            endpoints(d, &marker) == Some(vec!["10.0.0.6:8080".into()])
        })
        .await;
        let allowed: BTreeSet<String> = ["default/plain", "default/marker"].map(String::from).into();
        for sync in h.syncs() {
            assert!(
                services(&sync.desired).is_subset(&allowed),
                "an ignored service was programmed: {:?}",
                services(&sync.desired)
            );
            if let Some(eps) = endpoints(&sync.desired, &plain) {
                assert_eq!(eps, ["10.0.0.1:8080"], "an ignored slice was read");
            }
        }
        assert!(h.model().desired().ports.keys().all(|p| p.service.name != "headless"));

        // Gaining the label is a delete for us.
        server.apply_service(
            mk_service("default", "plain")
                .cluster_ip("10.96.0.1")
                .port("http", 80, "TCP")
                .label(PROXY_NAME_LABEL, "other")
                .build(),
        );
        h.wait_programmed("plain is gone once labelled", |d| {
            port_names(d) == std::slice::from_ref(&marker)
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watch_relists_without_losing_state() {
    bounded(async {
        let server = start_server().await;
        for i in 0..5 {
            server.apply_service(web_service("default", &format!("s{i}"), &format!("10.96.0.{}", 10 + i)));
            server.apply_slice(web_slice(
                "default",
                &format!("s{i}-1"),
                &format!("s{i}"),
                &[&format!("10.0.0.{}", 10 + i)],
            ));
        }
        let h = Harness::start(&server);
        let port = |i: usize| tcp("default", &format!("s{i}"), "http");
        let ep = |i: usize| Some(vec![format!("10.0.0.{}:8080", 10 + i)]);
        h.wait_programmed("the five services", |d| (0..5).all(|i| endpoints(d, &port(i)) == ep(i)))
            .await;
        h.wait_settled().await;
        for kind in [Kind::Service, Kind::EndpointSlice] {
            assert!(server.wait_for_open_watches(kind, 1, WAIT).await, "{kind:?} watch open");
        }
        let lists = (server.list_count(Kind::Service), server.list_count(Kind::EndpointSlice));
        let errors = h.observer.errors("Service");
        let before = h.syncs().len();

        // Break every watch; meanwhile delete s4, add s5 and rewrite s0
        // with a label only (a new resourceVersion, nothing to program).
        server.compact();
        server.expire_watches();
        server.delete_service("default", "s4");
        server.delete_slice("default", "s4-1");
        server.apply_service(web_service("default", "s5", "10.96.0.15"));
        server.apply_slice(web_slice("default", "s5-1", "s5", &["10.0.0.15"]));
        server.apply_service(
            mk_service("default", "s0")
                .cluster_ip("10.96.0.10")
                .port("http", 80, "TCP")
                .label("touched", "yes")
                .build(),
        );

        wait_until("both kinds relisted", WAIT, || {
            server.list_count(Kind::Service) > lists.0 && server.list_count(Kind::EndpointSlice) > lists.1
        })
        .await;
        h.wait_programmed("s4 gone, s5 programmed", |d| {
            !d.ports.contains_key(&port(4)) && endpoints(d, &port(5)) == ep(5)
        })
        .await;
        h.wait_settled().await;
        assert!(
            h.observer.errors("Service") > errors,
            "the 410 surfaced as a watch error"
        );

        let after: Vec<Recorded> = h.syncs().split_off(before);
        assert!(!after.is_empty());
        for sync in &after {
            assert!(!sync.failed);
            assert_eq!(sync.kind, SyncKind::Partial, "{sync:#?}");
            // Known state was never dropped while relisting.
            for i in 0..4 {
                assert_eq!(endpoints(&sync.desired, &port(i)), ep(i), "s{i} lost in {sync:#?}");
            }
            // Only what really changed is reported.
            assert!(
                sync.changed.iter().all(|p| *p == port(4) || *p == port(5)),
                "unchanged services reported as changed: {:?}",
                sync.changed
            );
        }
        let changed: BTreeSet<ServicePortName> = after.iter().flat_map(|s| s.changed.clone()).collect();
        assert_eq!(changed, [port(4), port(5)].into());
        let programmed = h.backend.last_programmed().expect("programmed");
        assert_eq!(port_names(&programmed), [0, 1, 2, 3, 5].map(port));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_is_ridden_through() {
    bounded(async {
        let server = start_server().await;
        server.apply_service(web_service("default", "a", "10.96.0.1"));
        server.apply_slice(web_slice("default", "a-1", "a", &["10.0.0.1"]));
        server.apply_service(web_service("default", "b", "10.96.0.2"));
        server.apply_slice(web_slice("default", "b-1", "b", &["10.0.0.2"]));
        let h = Harness::start(&server);
        let a = tcp("default", "a", "http");
        let b = tcp("default", "b", "http");
        let c = tcp("default", "c", "http");
        h.wait_programmed("a and b", |d| {
            endpoints(d, &a) == Some(vec!["10.0.0.1:8080".into()])
                && endpoints(d, &b) == Some(vec!["10.0.0.2:8080".into()])
        })
        .await;
        for kind in Kind::ALL {
            assert!(server.wait_for_open_watches(kind, 1, WAIT).await, "{kind:?} watch open");
        }
        let lists: Vec<usize> = Kind::ALL.iter().map(|k| server.list_count(*k)).collect();
        let errors = (h.observer.errors("Service"), h.observer.errors("EndpointSlice"));

        // Down: the watchers notice (their streams end, reconnects fail).
        server.stop().await;
        wait_until("the watchers see the outage", WAIT, || {
            h.observer.errors("Service") > errors.0 && h.observer.errors("EndpointSlice") > errors.1
        })
        .await;
        // Up again, nothing changed meanwhile.
        server.restart().await.expect("restart");
        server.apply_service(web_service("default", "c", "10.96.0.3"));
        server.apply_slice(web_slice("default", "c-1", "c", &["10.0.0.3"]));
        h.wait_programmed("c after the restart", |d| {
            endpoints(d, &c) == Some(vec!["10.0.0.3:8080".into()])
        })
        .await;

        for sync in h.syncs() {
            assert!(!sync.failed);
            assert_eq!(endpoints(&sync.desired, &a), Some(vec!["10.0.0.1:8080".into()]));
            assert_eq!(endpoints(&sync.desired, &b), Some(vec!["10.0.0.2:8080".into()]));
        }
        // The history survived, so the watches resumed without a relist.
        let lists_after: Vec<usize> = Kind::ALL.iter().map(|k| server.list_count(*k)).collect();
        assert_eq!(lists_after, lists);
        assert_eq!(h.status.borrow().failures, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_zone_and_addresses_reach_the_model() {
    bounded(async {
        let server = start_server().await;
        server.apply_service(web_service("default", "web", "10.96.0.10"));
        server.apply_slice(
            mk_slice("default", "web-1", "web")
                .port("http", 8080, "TCP")
                .endpoint_with(
                    EpSpec::new("10.0.0.1")
                        .node("node-a")
                        .zone("zone-a")
                        .zone_hints(&["zone-a"]),
                )
                .endpoint_with(
                    EpSpec::new("10.0.0.2")
                        .node("node-b")
                        .zone("zone-b")
                        .zone_hints(&["zone-b"]),
                )
                .build(),
        );
        // Another node: the field selector keeps it out.
        server.apply_node(mk_node("node-b").zone("zone-b").internal_ip("192.168.0.2").build());
        let h = Harness::start(&server);
        let web = tcp("default", "web", "http");
        let both = Some(vec!["10.0.0.1:8080".to_string(), "10.0.0.2:8080".to_string()]);

        // No Node yet: no zone, so hints are not used.
        wait_until("the first sync", WAIT, || !h.syncs().is_empty()).await;
        assert!(server.wait_for_open_watches(Kind::Node, 1, WAIT).await);
        let first = h.syncs()[0].clone();
        assert_eq!(first.desired.node.name, NODE);
        assert_eq!(first.desired.node.zone, None);
        assert!(first.desired.node.addresses.is_empty());
        assert_eq!(cluster_endpoints(&first.desired, &web), both);
        let reqs = server.requests();
        let node_reqs: Vec<&String> = reqs.iter().filter(|r| r.starts_with("GET /api/v1/nodes?")).collect();
        assert!(!node_reqs.is_empty(), "{reqs:#?}");
        assert!(
            node_reqs
                .iter()
                .all(|r| r.contains("fieldSelector=metadata.name%3Dnode-a")),
            "{reqs:#?}"
        );

        // Our Node appears: zone and addresses reach the model, and the
        // slice is now selected by its zone hints.
        server.apply_node(mk_node("node-a").zone("zone-a").internal_ip("192.168.0.1").build());
        h.wait_programmed("zone hints applied", |d| {
            cluster_endpoints(d, &web) == Some(vec!["10.0.0.1:8080".into()])
        })
        .await;
        let node = h.model().desired().node;
        assert_eq!(node.name, NODE);
        assert_eq!(node.zone.as_deref(), Some("zone-a"));
        assert_eq!(node.addresses, ["192.168.0.1".parse::<IpAddr>().expect("ip")]);
        let programmed = h.backend.last_programmed().expect("programmed");
        assert_eq!(programmed.node.zone.as_deref(), Some("zone-a"));
        assert_eq!(endpoints(&programmed, &web), both, "every endpoint is still known");

        // The Node goes away: no zone, every endpoint again.
        server.delete_node("node-a");
        h.wait_programmed("hints dropped with the node", |d| cluster_endpoints(d, &web) == both)
            .await;
        assert_eq!(h.model().desired().node.zone, None);
        assert_eq!(h.model().desired().node.name, NODE);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_is_retried_and_keeps_changes() {
    bounded(async {
        let server = start_server().await;
        server.apply_service(web_service("default", "web", "10.96.0.10"));
        server.apply_slice(web_slice("default", "web-1", "web", &["10.0.0.1"]));
        let h = Harness::start(&server);
        let web = tcp("default", "web", "http");
        h.wait_programmed("web", |d| endpoints(d, &web) == Some(vec!["10.0.0.1:8080".into()]))
            .await;
        h.wait_settled().await;
        let before = h.syncs().len();

        h.backend.fail_next(1);
        server.apply_slice(web_slice("default", "web-1", "web", &["10.0.0.2"]));
        h.wait_programmed("the change, on the retry", |d| {
            endpoints(d, &web) == Some(vec!["10.0.0.2:8080".into()])
        })
        .await;
        h.wait_settled().await;

        let after: Vec<Recorded> = h.syncs().split_off(before);
        assert_eq!(after.iter().filter(|s| s.failed).count(), 1, "{after:#?}");
        let failed = after.iter().position(|s| s.failed).expect("a failed sync");
        assert!(
            after[..failed]
                .iter()
                .all(|s| endpoints(&s.desired, &web) != Some(vec!["10.0.0.2:8080".into()])),
            "the change was programmed before the failure: {after:#?}"
        );
        assert_eq!(after[failed].kind, SyncKind::Partial);
        // Normally the change's own sync fails; a stray trigger left over
        // from the previous sync may run (and fail) an empty one first.
        assert!(
            after[failed].changed == std::slice::from_ref(&web) || after[failed].changed.is_empty(),
            "{after:#?}"
        );
        let retry = after.get(failed + 1).expect("a retry");
        assert!(!retry.failed);
        assert_eq!(retry.kind, SyncKind::Full, "a retry after a failure is Full");
        assert_eq!(
            retry.changed,
            std::slice::from_ref(&web),
            "the failed sync's changes stay pending"
        );
        assert_eq!(endpoints(&retry.desired, &web), Some(vec!["10.0.0.2:8080".into()]));

        // The driver's status counts the failure and clears it on success.
        wait_until("the status records the recovery", WAIT, || {
            let status = h.status.borrow();
            status.failures == 1 && status.consecutive_failures == 0 && status.last_success.is_some()
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_objects_are_skipped_not_fatal() {
    bounded(async {
        let server = start_server().await;
        server.apply_service(web_service("default", "web", "10.96.0.10"));
        // One invalid address among valid ones.
        server.apply_slice(
            mk_slice("default", "web-1", "web")
                .port("http", 8080, "TCP")
                .endpoints(&["10.0.0.1", "not-an-ip", "10.0.0.3"])
                .build(),
        );
        // A port with a protocol kube-proxy does not know, next to a good one.
        server.apply_service(
            mk_service("default", "odd")
                .cluster_ip("10.96.0.11")
                .port("http", 80, "TCP")
                .port("quic", 443, "QUIC")
                .build(),
        );
        server.apply_slice(web_slice("default", "odd-1", "odd", &["10.0.1.1"]));
        // A service whose cluster IP does not parse: skipped as a whole.
        server.apply_service(
            mk_service("default", "bogus-ip")
                .cluster_ip("bogus")
                .port("http", 80, "TCP")
                .build(),
        );

        let h = Harness::start(&server);
        let web = tcp("default", "web", "http");
        let odd = tcp("default", "odd", "http");
        h.wait_programmed("the good parts", |d| {
            endpoints(d, &web) == Some(vec!["10.0.0.1:8080".into(), "10.0.0.3:8080".into()])
                && endpoints(d, &odd) == Some(vec!["10.0.1.1:8080".into()])
        })
        .await;
        let programmed = h.backend.last_programmed().expect("programmed");
        assert_eq!(port_names(&programmed), [odd.clone(), web.clone()]);
        assert!(
            h.observer.problems("Service") >= 2,
            "bad port and bad cluster IP reported"
        );
        assert!(h.observer.problems("EndpointSlice") >= 1, "bad address reported");

        // The watchers keep going: later objects still arrive, including
        // after an object the client cannot even decode.
        server.apply(
            Kind::Service,
            json!({
                "metadata": {"namespace": "default", "name": "undecodable"},
                "spec": {"ports": "not-a-list"},
            }),
        );
        server.apply_service(web_service("default", "later", "10.96.0.12"));
        server.apply_slice(
            mk_slice("default", "later-1", "later")
                .port("http", 8080, "TCP")
                .endpoints(&["10.0.2.1", "10.0.2.999"])
                .build(),
        );
        let later = tcp("default", "later", "http");
        h.wait_programmed("a service applied after the malformed ones", |d| {
            endpoints(d, &later) == Some(vec!["10.0.2.1:8080".into()])
        })
        .await;
        let programmed = h.backend.last_programmed().expect("programmed");
        assert_eq!(port_names(&programmed), [later.clone(), odd.clone(), web.clone()]);
        assert!(h.syncs().iter().all(|s| !s.failed));
        server.delete_service("default", "undecodable");
        assert!(
            h.tasks.iter().all(|t| !t.is_finished()),
            "a watcher or the runner stopped"
        );
    })
    .await;
}
