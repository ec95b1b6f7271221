//! Self-tests of the fake Kubernetes API server in `tests/support/api_server.rs`,
//! driven by the real kube-rs client, watcher and reflector.

#[path = "support/api_server.rs"]
mod api_server;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use api_server::{Kind, TestApiServer};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// kproxy's selector for Services and EndpointSlices (same as kube-proxy's).
const PROXY_SELECTOR: &str = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";
const HEADLESS: &str = "service.kubernetes.io/headless";
const PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";

/// Every test body runs under this bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound for one eventual condition.
const WAIT: Duration = Duration::from_secs(5);

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    (!pairs.is_empty()).then(|| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn service(ns: &str, name: &str, label_pairs: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: labels(label_pairs),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice(ns: &str, name: &str, svc: &str, label_pairs: &[(&str, &str)]) -> EndpointSlice {
    let mut all = vec![("kubernetes.io/service-name", svc)];
    all.extend_from_slice(label_pairs);
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: labels(&all),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.0.0.1".into()],
            ..Default::default()
        }],
        ports: None,
    }
}

fn node(name: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A reflector running in the background; aborted on drop.
struct Reflector<K: Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store: Store<K>,
    errors: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl<K: Resource + Clone + 'static> Drop for Reflector<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn spawn_reflector<K>(api: Api<K>, config: watcher::Config) -> Reflector<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let errors = Arc::new(AtomicUsize::new(0));
    let counter = errors.clone();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if event.is_err() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    Reflector { store, errors, task }
}

fn names<K>(store: &Store<K>) -> Vec<String>
where
    K: Resource + Clone,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    let mut names: Vec<String> = store.state().iter().map(|o| o.name_any()).collect();
    names.sort();
    names
}

/// Poll `cond` every 10 ms until it holds; panic with `what` after [`WAIT`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test exceeded its time bound");
}

async fn start() -> TestApiServer {
    TestApiServer::start().await.expect("start fake API server")
}

fn watch_queries(server: &TestApiServer, path: &str) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with(&format!("GET {path}?")) && r.contains("watch=true"))
        .collect()
}

#[tokio::test]
async fn initial_list_paginates_then_watch_delivers_changes() {
    bounded(async {
        let server = start().await;
        for i in 0..25 {
            server.apply_service(service("default", &format!("svc-{i:02}"), &[]));
        }
        let api: Api<Service> = Api::all(server.client());
        let r = spawn_reflector(api, watcher::Config::default().page_size(4));
        r.store.wait_until_ready().await.expect("store ready");
        assert_eq!(r.store.len(), 25);
        // 25 objects in pages of 4: 6 full pages and one of 1.
        assert_eq!(server.list_count(Kind::Service), 7);
        let reqs = server.requests();
        assert!(
            reqs.iter().any(|r| r.contains("limit=4") && r.contains("continue=")),
            "{reqs:#?}"
        );
        assert!(server.wait_for_open_watches(Kind::Service, 1, WAIT).await);

        // The watch resumes from the list's resourceVersion with bookmarks on.
        let list_rv = server.resource_version();
        let watches = watch_queries(&server, "/api/v1/services");
        assert_eq!(watches.len(), 1, "{watches:#?}");
        assert!(
            watches[0].contains(&format!("resourceVersion={list_rv}")),
            "{watches:#?}"
        );
        assert!(watches[0].contains("allowWatchBookmarks=true"), "{watches:#?}");
        assert!(watches[0].contains("timeoutSeconds=290"), "{watches:#?}");

        // Add.
        let rv = server.apply_service(service("other", "new", &[]));
        eventually("added service reaches the store", || r.store.len() == 26).await;
        let added = r.store.find(|s| s.name_any() == "new").expect("new service");
        assert_eq!(added.resource_version().as_deref(), Some(rv.as_str()));
        assert_eq!(added.namespace().as_deref(), Some("other"));
        let uid = added.uid().expect("server fills uid");
        assert!(added.metadata.creation_timestamp.is_some());

        // Update: uid is kept, RV moves on.
        let mut changed = service("other", "new", &[("app", "x")]);
        changed.spec.as_mut().expect("spec").cluster_ip = Some("10.96.0.99".into());
        let rv2 = server.apply_service(changed);
        assert!(rv2.parse::<u64>().expect("rv") > rv.parse::<u64>().expect("rv"));
        eventually("updated service reaches the store", || {
            r.store
                .find(|s| s.name_any() == "new")
                .is_some_and(|s| s.resource_version().as_deref() == Some(rv2.as_str()))
        })
        .await;
        let updated = r.store.find(|s| s.name_any() == "new").expect("new service");
        assert_eq!(updated.uid(), Some(uid));
        assert_eq!(updated.labels().get("app").map(String::as_str), Some("x"));
        assert_eq!(
            updated.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
            Some("10.96.0.99")
        );

        // Delete.
        assert!(server.delete_service("other", "new").is_some());
        assert!(server.delete_service("other", "new").is_none());
        eventually("deleted service leaves the store", || r.store.len() == 25).await;
        assert_eq!(r.errors.load(Ordering::SeqCst), 0);
        // One list, one watch: nothing was relisted.
        assert_eq!(server.list_count(Kind::Service), 7);
    })
    .await;
}

#[tokio::test]
async fn list_pages_with_limit_and_continue() {
    bounded(async {
        let server = start().await;
        for i in 0..10 {
            server.apply_node(node(&format!("node-{i}")));
        }
        let api: Api<Node> = Api::all(server.client());
        let mut seen = Vec::new();
        let mut rvs = Vec::new();
        let mut lp = ListParams::default().limit(3);
        let mut pages = 0;
        loop {
            let page = api.list(&lp).await.expect("list page");
            pages += 1;
            assert!(page.items.len() <= 3);
            rvs.push(page.metadata.resource_version.clone().expect("list rv"));
            for n in &page.items {
                assert!(n.resource_version().is_some());
                assert!(n.uid().is_some());
                assert!(n.metadata.creation_timestamp.is_some());
                assert!(n.namespace().is_none());
            }
            seen.extend(page.items.iter().map(|n| n.name_any()));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => break,
            }
        }
        assert_eq!(pages, 4);
        let expected: Vec<String> = (0..10).map(|i| format!("node-{i}")).collect();
        assert_eq!(seen, expected);
        assert!(rvs.iter().all(|rv| *rv == "10"), "{rvs:?}");

        // Unpaged list, and the raw list shape (no kind/apiVersion on items).
        let raw: serde_json::Value = server
            .client()
            .request(
                axum::http::Request::get("/api/v1/nodes?limit=500")
                    .body(vec![])
                    .expect("request"),
            )
            .await
            .expect("raw list");
        assert_eq!(raw["kind"], "NodeList");
        assert_eq!(raw["apiVersion"], "v1");
        assert_eq!(raw["metadata"]["resourceVersion"], "10");
        assert!(raw["metadata"].get("continue").is_none());
        assert_eq!(raw["items"].as_array().map(Vec::len), Some(10));
        assert!(raw["items"][0].get("kind").is_none());
    })
    .await;
}

#[tokio::test]
async fn label_selectors_filter_lists_and_watches() {
    bounded(async {
        let server = start().await;
        server.apply_service(service("default", "plain", &[]));
        server.apply_service(service("default", "headless", &[(HEADLESS, "")]));
        server.apply_service(service("default", "other-proxy", &[(PROXY_NAME, "foo")]));
        server.apply_slice(slice("default", "plain-abc", "plain", &[]));
        server.apply_slice(slice("default", "headless-abc", "headless", &[(HEADLESS, "")]));

        let svcs = spawn_reflector(
            Api::<Service>::all(server.client()),
            watcher::Config::default().labels(PROXY_SELECTOR),
        );
        let slices = spawn_reflector(
            Api::<EndpointSlice>::all(server.client()),
            watcher::Config::default().labels(PROXY_SELECTOR),
        );
        svcs.store.wait_until_ready().await.expect("services ready");
        slices.store.wait_until_ready().await.expect("slices ready");
        assert_eq!(names(&svcs.store), ["plain"]);
        assert_eq!(names(&slices.store), ["plain-abc"]);
        let reqs = server.requests();
        assert!(
            reqs.iter()
                .any(|r| r.starts_with("GET /apis/discovery.k8s.io/v1/endpointslices?")),
            "{reqs:#?}"
        );
        assert!(server.wait_for_open_watches(Kind::Service, 1, WAIT).await);
        assert!(server.wait_for_open_watches(Kind::EndpointSlice, 1, WAIT).await);

        // Gaining an excluded label is a DELETED for this watcher...
        server.apply_service(service("default", "plain", &[(HEADLESS, "")]));
        eventually("relabelled service leaves the store", || svcs.store.is_empty()).await;
        // ...and losing it again an ADDED.
        server.apply_service(service("default", "headless", &[]));
        eventually("unlabelled service enters the store", || {
            names(&svcs.store) == ["headless"]
        })
        .await;
        // Changes to excluded objects are invisible.
        server.apply_service(service("default", "other-proxy", &[(PROXY_NAME, "bar")]));
        server.delete_service("default", "plain");
        server.apply_slice(slice("default", "new-abc", "new", &[]));
        eventually("new slice arrives", || slices.store.len() == 2).await;
        assert_eq!(names(&svcs.store), ["headless"]);
        assert_eq!(svcs.errors.load(Ordering::SeqCst), 0);

        // The other selector forms, through plain lists.
        let api: Api<Service> = Api::all(server.client());
        let list = |sel: String| {
            let api = api.clone();
            async move {
                let mut names: Vec<String> = api
                    .list(&ListParams::default().labels(&sel))
                    .await
                    .expect("list")
                    .items
                    .iter()
                    .map(|s| s.name_any())
                    .collect();
                names.sort();
                names
            }
        };
        assert_eq!(list(PROXY_NAME.to_string()).await, ["other-proxy"]);
        assert_eq!(list(format!("{PROXY_NAME}=bar")).await, ["other-proxy"]);
        assert_eq!(list(format!("{PROXY_NAME}==bar")).await, ["other-proxy"]);
        assert_eq!(list(format!("{PROXY_NAME}!=bar")).await, ["headless"]);
        assert_eq!(list(format!("{PROXY_NAME} in (foo, bar)")).await, ["other-proxy"]);
        assert_eq!(list(format!("{PROXY_NAME} notin (bar)")).await, ["headless"]);
        assert_eq!(list(format!("!{HEADLESS},{PROXY_NAME}")).await, ["other-proxy"]);
        assert!(list("app=nope".to_string()).await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn node_field_selector_and_get() {
    bounded(async {
        let server = start().await;
        for name in ["a", "b", "c"] {
            server.apply_node(node(name));
        }
        let r = spawn_reflector(
            Api::<Node>::all(server.client()),
            watcher::Config::default().fields("metadata.name=b"),
        );
        r.store.wait_until_ready().await.expect("ready");
        assert_eq!(names(&r.store), ["b"]);
        assert!(server.wait_for_open_watches(Kind::Node, 1, WAIT).await);

        let mut a = node("a");
        a.metadata.labels = labels(&[("x", "1")]);
        server.apply_node(a);
        let mut b = node("b");
        b.metadata.labels = labels(&[("x", "2")]);
        let rv = server.apply_node(b);
        eventually("node b updated", || {
            r.store
                .find(|n| n.name_any() == "b")
                .is_some_and(|n| n.resource_version().as_deref() == Some(rv.as_str()))
        })
        .await;
        assert_eq!(names(&r.store), ["b"]);
        server.delete_node("b");
        eventually("node b deleted", || r.store.is_empty()).await;

        let api: Api<Node> = Api::all(server.client());
        let c = api.get("c").await.expect("get node c");
        assert_eq!(c.name_any(), "c");
        match api.get("b").await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
            other => panic!("expected 404, got {other:?}"),
        }
        // The deprecated single-object watch path works as a name-filtered watch.
        let mut one = server
            .client()
            .request_events::<Node>(
                axum::http::Request::get("/api/v1/nodes/c?watch=true&resourceVersion=0")
                    .body(vec![])
                    .expect("request"),
            )
            .await
            .expect("single-object watch")
            .boxed();
        match one.try_next().await {
            Ok(Some(WatchEvent::Added(n))) => assert_eq!(n.name_any(), "c"),
            other => panic!("expected ADDED c, got {other:?}"),
        }
        server.apply_node(node("a"));
        let rv_c = server.apply_node(node("c"));
        match one.try_next().await {
            Ok(Some(WatchEvent::Modified(n))) => {
                assert_eq!(n.resource_version(), Some(rv_c));
            }
            other => panic!("expected MODIFIED c, got {other:?}"),
        }
        drop(one);

        let not_b = api
            .list(&ListParams::default().fields("metadata.name!=b"))
            .await
            .expect("list");
        assert_eq!(not_b.items.len(), 2);
    })
    .await;
}

#[tokio::test]
async fn compact_and_expire_force_a_relist_without_losing_objects() {
    bounded(async {
        let server = start().await;
        for i in 0..5 {
            server.apply_service(service("default", &format!("svc-{i}"), &[]));
        }
        let r = spawn_reflector(Api::<Service>::all(server.client()), watcher::Config::default());
        r.store.wait_until_ready().await.expect("ready");
        assert!(server.wait_for_open_watches(Kind::Service, 1, WAIT).await);
        let lists = server.list_count(Kind::Service);
        assert_eq!(lists, 1);

        server.compact();
        server.expire_watches();
        server.apply_service(service("default", "after-expiry", &[]));
        let deadline = tokio::time::Instant::now() + WAIT;
        while !(server.list_count(Kind::Service) > lists && r.store.len() == 6) {
            // The store never loses the old objects while relisting.
            assert!(r.store.len() >= 5);
            assert!(tokio::time::Instant::now() < deadline, "no relist");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(r.errors.load(Ordering::SeqCst) >= 1, "the 410 surfaces as an error");
        assert!(r.store.find(|s| s.name_any() == "after-expiry").is_some());

        // A raw watch from a compacted RV gets ERROR 410 Expired and ends.
        let api: Api<Service> = Api::all(server.client());
        let old_rv = "2";
        let events: Vec<_> = api
            .watch(&WatchParams::default(), old_rv)
            .await
            .expect("watch")
            .collect()
            .await;
        assert_eq!(events.len(), 1, "{events:?}");
        match &events[0] {
            Ok(WatchEvent::Error(status)) => {
                assert_eq!(status.code, 410);
                assert_eq!(status.reason, "Expired");
            }
            other => panic!("expected ERROR 410, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn stop_and_restart_are_ridden_through() {
    bounded(async {
        let server = start().await;
        server.apply_service(service("default", "before", &[]));
        let r = spawn_reflector(Api::<Service>::all(server.client()), watcher::Config::default());
        r.store.wait_until_ready().await.expect("ready");
        assert!(server.wait_for_open_watches(Kind::Service, 1, WAIT).await);

        server.stop().await;
        assert!(!server.is_running().await);
        assert!(
            tokio::net::TcpStream::connect(server.addr()).await.is_err(),
            "connection must be refused while stopped"
        );
        let rv_down = server.apply_service(service("default", "while-down", &[]));
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.restart().await.expect("restart");
        assert!(server.is_running().await);

        eventually("change made while down arrives", || r.store.len() == 2).await;
        assert!(r.errors.load(Ordering::SeqCst) >= 1, "the outage surfaces as an error");
        // History survived the restart: the watch resumed, no relist.
        assert_eq!(server.list_count(Kind::Service), 1);
        let rv_after = server.apply_service(service("default", "after", &[]));
        assert!(rv_after.parse::<u64>().expect("rv") > rv_down.parse::<u64>().expect("rv"));
        eventually("change after restart arrives", || r.store.len() == 3).await;

        // Down again, and this time the history is compacted meanwhile: the
        // resumed watch gets 410 and the watcher relists.
        server.stop().await;
        server.delete_service("default", "before");
        server.compact();
        server.restart().await.expect("restart");
        eventually("relist after compaction", || {
            server.list_count(Kind::Service) == 2 && names(&r.store) == ["after", "while-down"]
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn stop_closes_open_watch_streams() {
    bounded(async {
        let server = start().await;
        let api: Api<Node> = Api::all(server.client());
        let mut stream = api
            .watch(&WatchParams::default().timeout(30), "0")
            .await
            .expect("watch")
            .boxed();
        server.apply_node(node("n1"));
        match stream.try_next().await {
            Ok(Some(WatchEvent::Added(n))) => assert_eq!(n.name_any(), "n1"),
            other => panic!("expected ADDED, got {other:?}"),
        }
        server.stop().await;
        // The stream ends (or errors) promptly instead of hanging.
        let end = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match stream.next().await {
                    None | Some(Err(_)) => break,
                    Some(Ok(WatchEvent::Bookmark(_))) => {}
                    Some(Ok(other)) => panic!("unexpected event after stop: {other:?}"),
                }
            }
        })
        .await;
        assert!(end.is_ok(), "watch stream did not end after stop()");
        assert!(api.list(&ListParams::default()).await.is_err());
        server.restart().await.expect("restart");
        assert_eq!(api.list(&ListParams::default()).await.expect("list").items.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn bookmarks_are_sent_and_accepted() {
    bounded(async {
        let server = start().await;
        server.apply_service(service("default", "s", &[]));
        let api: Api<Service> = Api::all(server.client());

        // On demand, carrying the latest RV the watcher is caught up with,
        // including changes of other kinds.
        let start_rv = server.resource_version();
        let mut stream = api
            .watch(&WatchParams::default().timeout(30), &start_rv)
            .await
            .expect("watch")
            .boxed();
        assert!(server.wait_for_open_watches(Kind::Service, 1, WAIT).await);
        let node_rv = server.apply_node(node("n"));
        server.send_bookmarks();
        match stream.try_next().await {
            Ok(Some(WatchEvent::Bookmark(bm))) => {
                assert_eq!(bm.metadata.resource_version, node_rv);
                assert_eq!(bm.types.kind, "Service");
            }
            other => panic!("expected BOOKMARK, got {other:?}"),
        }
        // Periodically (default: every second).
        let periodic = tokio::time::timeout(Duration::from_secs(3), stream.try_next()).await;
        assert!(
            matches!(periodic, Ok(Ok(Some(WatchEvent::Bookmark(_))))),
            "{periodic:?}"
        );
        drop(stream);
        eventually("a dropped watch is unregistered", || {
            server.open_watches(Kind::Service) == 0
        })
        .await;

        // Not sent without allowWatchBookmarks.
        let mut quiet = api
            .watch(&WatchParams::default().disable_bookmarks().timeout(2), &node_rv)
            .await
            .expect("watch")
            .boxed();
        server.send_bookmarks();
        let end = tokio::time::timeout(Duration::from_secs(4), quiet.try_next()).await;
        assert!(
            matches!(end, Ok(Ok(None))),
            "expected the watch to time out quietly: {end:?}"
        );

        // kube-rs watchers take the bookmark RV as their resume point.
        let r = spawn_reflector(api.clone(), watcher::Config::default());
        r.store.wait_until_ready().await.expect("ready");
        assert!(server.wait_for_open_watches(Kind::Service, 1, WAIT).await);
        let bookmark_rv = server.apply_node(node("m"));
        server.send_bookmarks();
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.stop().await;
        server.restart().await.expect("restart");
        eventually("watch resumed from the bookmark RV", || {
            watch_queries(&server, "/api/v1/services")
                .iter()
                .any(|q| q.contains(&format!("resourceVersion={bookmark_rv}")))
        })
        .await;
        assert_eq!(names(&r.store), ["s"]);
    })
    .await;
}

#[tokio::test]
async fn streaming_list_watcher_works() {
    bounded(async {
        let server = start().await;
        for i in 0..3 {
            server.apply_slice(slice("ns", &format!("sl-{i}"), "svc", &[]));
        }
        let r = spawn_reflector(
            Api::<EndpointSlice>::all(server.client()),
            watcher::Config::default().streaming_lists(),
        );
        r.store.wait_until_ready().await.expect("ready");
        assert_eq!(r.store.len(), 3);
        assert_eq!(server.list_count(Kind::EndpointSlice), 0);
        server.delete_slice("ns", "sl-0");
        eventually("delete arrives", || r.store.len() == 2).await;
    })
    .await;
}

#[tokio::test]
async fn watch_ends_after_timeout_seconds() {
    bounded(async {
        let server = start().await;
        let api: Api<Service> = Api::namespaced(server.client(), "default");
        let started = tokio::time::Instant::now();
        let events: Vec<_> = api
            .watch(&WatchParams::default().disable_bookmarks().timeout(1), "0")
            .await
            .expect("watch")
            .collect()
            .await;
        assert!(events.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(900));
        assert!(started.elapsed() < Duration::from_secs(3));
    })
    .await;
}

#[tokio::test]
async fn namespaced_paths() {
    bounded(async {
        let server = start().await;
        server.apply_service(service("a", "s1", &[]));
        server.apply_service(service("b", "s2", &[]));
        server.apply_slice(slice("a", "s1-x", "s1", &[]));
        let svcs: Api<Service> = Api::namespaced(server.client(), "a");
        let items = svcs.list(&ListParams::default()).await.expect("list").items;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].name_any(), "s1");
        assert_eq!(svcs.get("s1").await.expect("get").name_any(), "s1");
        assert!(svcs.get("s2").await.is_err());
        let slices: Api<EndpointSlice> = Api::namespaced(server.client(), "b");
        assert!(
            slices
                .list(&ListParams::default())
                .await
                .expect("list")
                .items
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn injected_list_failures() {
    bounded(async {
        let server = start().await;
        server.apply_node(node("n"));

        // A 500 reaches the watcher, which backs off and relists.
        server.fail_next_lists(1, 500);
        let r = spawn_reflector(Api::<Node>::all(server.client()), watcher::Config::default());
        r.store.wait_until_ready().await.expect("ready");
        assert_eq!(names(&r.store), ["n"]);
        assert_eq!(r.errors.load(Ordering::SeqCst), 1);
        assert_eq!(server.list_count(Kind::Node), 2);

        // A 503 is retried inside kube's client: the caller never sees it.
        server.fail_next_lists(1, 503);
        let api: Api<Node> = Api::all(server.client());
        assert_eq!(api.list(&ListParams::default()).await.expect("list").items.len(), 1);
        assert_eq!(server.list_count(Kind::Node), 4);

        // Watch failures.
        server.fail_next_watches(1, 500);
        match api.watch(&WatchParams::default(), "0").await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 500),
            Err(other) => panic!("expected a 500 Status, got {other:?}"),
            Ok(_) => panic!("expected a 500 Status, got a stream"),
        }
    })
    .await;
}

#[tokio::test]
async fn odd_requests_get_status_errors() {
    bounded(async {
        let server = start().await;
        let client = server.client();
        let expect_status = |path: &'static str, method: &'static str, code: u16| {
            let client = client.clone();
            async move {
                let req = axum::http::Request::builder()
                    .method(method)
                    .uri(path)
                    .body(vec![])
                    .expect("request");
                match client.request_text(req).await {
                    Err(kube::Error::Api(status)) => {
                        assert_eq!(status.code, code, "{method} {path}: {status:?}")
                    }
                    other => panic!("{method} {path}: expected {code}, got {other:?}"),
                }
            }
        };
        expect_status("/nope", "GET", 404).await;
        expect_status("/api/v1/pods", "GET", 404).await;
        expect_status("/api/v1/namespaces//services", "GET", 404).await;
        expect_status("/api/v1/services", "POST", 405).await;
        expect_status("/api/v1/services?labelSelector=a%20b", "GET", 400).await;
        expect_status("/api/v1/services?labelSelector=a%20in%20(b", "GET", 400).await;
        expect_status("/api/v1/services?labelSelector=,", "GET", 400).await;
        expect_status("/api/v1/nodes?fieldSelector=spec.foo%3Dx", "GET", 400).await;
        expect_status("/api/v1/nodes?fieldSelector=nonsense", "GET", 400).await;
        expect_status("/api/v1/nodes?limit=abc", "GET", 400).await;
        expect_status("/api/v1/nodes?continue=garbage", "GET", 400).await;
        expect_status("/api/v1/nodes?watch=true&resourceVersion=xyz", "GET", 400).await;
        expect_status("/api/v1/nodes?watch=1&timeoutSeconds=-1", "GET", 400).await;
        // Malformed percent-escapes are taken literally (like Go's lenient
        // parsing of unknown parameters), not fatal.
        let odd = axum::http::Request::get("/api/v1/nodes?%zz=1&%ff%fe=%c3")
            .body(vec![])
            .expect("request");
        assert!(client.request_text(odd).await.is_ok());

        // Still healthy afterwards.
        let version = client.apiserver_version().await.expect("version");
        assert_eq!(version.major, "1");
        let posted: serde_json::Value = client
            .request(
                axum::http::Request::post("/apis/events.k8s.io/v1/namespaces/default/events")
                    .header("content-type", "application/json")
                    .body(br#"{"kind":"Event","reason":"Test"}"#.to_vec())
                    .expect("request"),
            )
            .await
            .expect("event POST");
        assert_eq!(posted["reason"], "Test");
        assert!(server.requests().iter().any(|r| r == "GET /nope"));
    })
    .await;
}

#[tokio::test]
async fn kubeconfig_points_at_the_server() {
    bounded(async {
        let server = start().await;
        server.apply_node(node("from-kubeconfig"));
        let path = std::env::temp_dir().join(format!(
            "kproxy-api-server-test-{}-{}.kubeconfig",
            std::process::id(),
            server.port()
        ));
        server.write_kubeconfig(&path).expect("write kubeconfig");
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("parse kubeconfig");
        let _ = std::fs::remove_file(&path);
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config from kubeconfig");
        assert_eq!(config.cluster_url.to_string().trim_end_matches('/'), server.url());
        let client = kube::Client::try_from(config).expect("client");
        let nodes = Api::<Node>::all(client)
            .list(&ListParams::default())
            .await
            .expect("list");
        assert_eq!(nodes.items.len(), 1);
        assert_eq!(nodes.items[0].name_any(), "from-kubeconfig");
    })
    .await;
}
