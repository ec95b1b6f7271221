//! An in-process fake Kubernetes API server for integration tests.
//!
//! # What it emulates
//!
//! Just enough of the Kubernetes API for `kube::runtime::watcher` (and so for
//! kproxy) to list and watch three resource kinds:
//!
//! * Services: `GET /api/v1/services` and `GET /api/v1/namespaces/{ns}/services`,
//! * EndpointSlices: `GET /apis/discovery.k8s.io/v1/endpointslices` and
//!   `GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices`,
//! * Nodes: `GET /api/v1/nodes`,
//!
//! plus `GET` of a single object (`.../services/{name}`, `.../nodes/{name}`, ...),
//! `GET /version`, and `POST` of Events (accepted, echoed back, not stored).
//!
//! Semantics that follow the real API server (and etcd):
//!
//! * One global, monotonically increasing `resourceVersion` counter shared by
//!   all kinds. Every write bumps it and stamps the object; lists report the
//!   current counter. `metadata.uid` and `metadata.creationTimestamp` are
//!   filled in on create and preserved on update.
//! * Lists honour `limit` + `continue` (pages in namespace/name order; a
//!   continue token whose list RV has been compacted away gets 410 Expired).
//!   List items carry no `kind`/`apiVersion`, like the real server.
//! * `labelSelector` (`k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//!   `k notin (a,b)`, comma-joined = AND) and `fieldSelector`
//!   (`metadata.name` / `metadata.namespace` with `=`, `==`, `!=`) on lists
//!   and watches. A malformed selector gets 400 BadRequest.
//! * Watches (`watch=true|1`) stream newline-delimited JSON events over a
//!   chunked response: first every event newer than the requested
//!   `resourceVersion` from a bounded history, then live events. An RV older
//!   than the compaction point gets an `ERROR` event with a 410 `Expired`
//!   Status, then the stream ends. `resourceVersion` absent or `0` starts
//!   with synthetic `ADDED` events for the current objects (and with
//!   `sendInitialEvents=true` a bookmark annotated
//!   `k8s.io/initial-events-end`). An object that stops matching a watcher's
//!   selectors is sent to it as `DELETED`; one that starts matching as `ADDED`.
//! * `BOOKMARK` events (when `allowWatchBookmarks=true`) every second by
//!   default and on demand; a bookmark's RV never passes an event that the
//!   watcher has not been sent yet.
//! * Watches end after `timeoutSeconds`, capped at 60 s.
//! * Unknown paths get 404, wrong methods 405, each with a `Status` body.
//!
//! # What it does not emulate
//!
//! No TLS, authentication, authorization, admission, validation, defaulting
//! (no ClusterIP allocation, no EndpointSlice controller), no create/update/
//! patch/delete through HTTP (tests write through the handle instead), no
//! protobuf, no HTTP/2, no `resourceVersionMatch=Exact` (lists always serve
//! the latest state), no snapshot consistency across list pages (later pages
//! show the latest state, stamped with the first page's RV, which is safe
//! for a list-then-watch client), no `remainingItemCount`, no other kinds.
//!
//! # Control
//!
//! [`TestApiServer`] is a cheap, cloneable handle. Writes (`apply_*`,
//! `delete_*`) and fault injection (`compact`, `expire_watches`,
//! `fail_next_lists`, ...) are synchronous; `start`, `stop` and `restart` are
//! async. `stop` closes the listener and every open connection, so clients
//! see the server go away; `restart` binds the same port again with the same
//! state. The server only ever binds 127.0.0.1.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State as AxumState};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Events kept for resuming watches before the oldest is compacted away.
const DEFAULT_HISTORY_LIMIT: usize = 10_000;
/// Default interval between periodic bookmarks.
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// Upper bound on (and default for) a watch's `timeoutSeconds`.
const MAX_WATCH_TIMEOUT_SECS: u64 = 60;
/// Largest request body read (only Event POSTs carry one).
const MAX_BODY_BYTES: usize = 1 << 20;

/// The resource kinds this server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    /// `kind` of one object.
    pub fn kind_name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }

    /// `kind` of a list of objects.
    pub fn list_kind_name(self) -> &'static str {
        match self {
            Kind::Service => "ServiceList",
            Kind::EndpointSlice => "EndpointSliceList",
            Kind::Node => "NodeList",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node)
    }

    fn index(self) -> usize {
        match self {
            Kind::Service => 0,
            Kind::EndpointSlice => 1,
            Kind::Node => 2,
        }
    }
}

/// Handle on a running (or stopped) fake API server. Clones share the server.
#[derive(Clone)]
pub struct TestApiServer {
    shared: Arc<Shared>,
    control: Arc<Control>,
}

/// State reachable from request handlers.
struct Shared {
    port: u16,
    state: Mutex<ServerState>,
}

/// The listener task; dropping it (with the last handle) shuts the server down.
struct Control {
    running: tokio::sync::Mutex<Option<Running>>,
}

struct Running {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// (namespace, name); namespace is "" for cluster-scoped kinds.
type ObjKey = (String, String);

struct ServerState {
    rv: u64,
    next_uid: u64,
    objects: [BTreeMap<ObjKey, Arc<Value>>; 3],
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Watches may resume from any RV >= this; older ones get 410.
    compacted_rv: u64,
    watchers: Vec<WatcherReg>,
    requests: Vec<RequestRecord>,
    fail_lists: Option<(usize, u16)>,
    fail_watches: Option<(usize, u16)>,
    bookmark_interval: Duration,
}

/// One write: `old` is the previous state (None on create), `new` the new one
/// (None on delete).
struct Change {
    rv: u64,
    kind: Kind,
    old: Option<Arc<Value>>,
    new: Option<Arc<Value>>,
}

struct WatcherReg {
    kind: Kind,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

enum WatchMsg {
    Change(Arc<Change>),
    Bookmark,
    Expire,
}

#[derive(Clone, Debug)]
struct RequestRecord {
    method: String,
    path_and_query: String,
    kind: Option<Kind>,
    watch: bool,
    /// A collection GET that is not a watch.
    list: bool,
}

impl TestApiServer {
    /// Start a server on 127.0.0.1 with an OS-chosen port.
    pub async fn start() -> std::io::Result<TestApiServer> {
        Self::start_on(bind_loopback(0)?).await
    }

    /// Start a server on a listener the caller bound, e.g. on 127.0.0.1
    /// inside a test network namespace (`Netns::tcp_listener`), so a kproxy
    /// running there can reach it. `restart()` rebinds in the caller's
    /// namespace, so it is not for such servers.
    pub async fn start_on_std(listener: std::net::TcpListener) -> std::io::Result<TestApiServer> {
        listener.set_nonblocking(true)?;
        Self::start_on(TcpListener::from_std(listener)?).await
    }

    async fn start_on(listener: TcpListener) -> std::io::Result<TestApiServer> {
        let port = listener.local_addr()?.port();
        let server = TestApiServer {
            shared: Arc::new(Shared {
                port,
                state: Mutex::new(ServerState {
                    rv: 0,
                    next_uid: 0,
                    objects: Default::default(),
                    history: VecDeque::new(),
                    history_limit: DEFAULT_HISTORY_LIMIT,
                    compacted_rv: 0,
                    watchers: Vec::new(),
                    requests: Vec::new(),
                    fail_lists: None,
                    fail_watches: None,
                    bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
                }),
            }),
            control: Arc::new(Control {
                running: tokio::sync::Mutex::new(None),
            }),
        };
        let running = server.spawn_listener(listener);
        *server.control.running.lock().await = Some(running);
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.shared.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.shared.port))
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// A kube client for this server: plain HTTP, no auth.
    pub fn client(&self) -> kube::Client {
        let uri = Uri::try_from(self.url()).unwrap_or_else(|_| Uri::from_static("http://127.0.0.1"));
        let config = kube::Config::new(uri);
        match kube::Client::try_from(config) {
            Ok(client) => client,
            // Building a plain-HTTP client from a valid URI has no failure
            // mode in practice; fail loudly in the test if it ever does.
            Err(err) => panic!("building kube client for the test API server: {err}"),
        }
    }

    /// The kubeconfig YAML that points at this server (plain HTTP, no auth).
    pub fn kubeconfig_yaml(&self) -> String {
        let url = self.url();
        [
            "apiVersion: v1",
            "kind: Config",
            "clusters:",
            "- name: kproxy-test",
            "  cluster:",
            &format!("    server: {url}"),
            "contexts:",
            "- name: kproxy-test",
            "  context:",
            "    cluster: kproxy-test",
            "    user: kproxy-test",
            "    namespace: default",
            "current-context: kproxy-test",
            "preferences: {}",
            "users:",
            "- name: kproxy-test",
            "  user: {}",
            "",
        ]
        .join("\n")
    }

    /// Write [`Self::kubeconfig_yaml`] to `path` (for `kproxy --kubeconfig`).
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    // ----- lifecycle -------------------------------------------------------

    /// Close the listener and every open connection (watch streams included).
    /// Clients get connection refused until [`Self::restart`]. Idempotent.
    pub async fn stop(&self) {
        let running = self.control.running.lock().await.take();
        if let Some(running) = running {
            let _ = running.shutdown.send(true);
            let _ = running.task.await;
        }
        // Watch streams are owned by the connections just closed; drop our
        // ends of their channels too.
        self.state().watchers.clear();
    }

    /// Stop (if running) and listen again on the same port with the same
    /// stored objects, history and resourceVersion counter.
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop().await;
        let mut guard = self.control.running.lock().await;
        if guard.is_some() {
            return Ok(());
        }
        // The old sockets may linger in TIME_WAIT; SO_REUSEADDR covers that.
        // Retry briefly in case the kernel has not finished closing.
        let mut attempt = 0;
        let listener = loop {
            match bind_loopback(self.shared.port) {
                Ok(l) => break l,
                Err(err) if attempt >= 50 => return Err(err),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        *guard = Some(self.spawn_listener(listener));
        Ok(())
    }

    /// Whether the server is currently listening.
    pub async fn is_running(&self) -> bool {
        self.control.running.lock().await.is_some()
    }

    fn spawn_listener(&self, listener: TcpListener) -> Running {
        let (shutdown, mut shutdown_rx) = watch::channel(false);
        let router = Router::new().fallback(handle).with_state(self.shared.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    changed = shutdown_rx.changed() => {
                        // Err: every handle was dropped; shut down too.
                        if changed.is_err() || *shutdown_rx.borrow() {
                            break;
                        }
                    }
                    accepted = listener.accept() => {
                        let Ok((stream, _peer)) = accepted else {
                            // e.g. EMFILE; don't spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let service = TowerToHyperService::new(router.clone());
                        conns.spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            drop(listener);
            // Abort every connection: open watch streams are cut mid-chunk,
            // exactly like a crashed API server.
            conns.shutdown().await;
        });
        Running { shutdown, task }
    }

    // ----- writes ----------------------------------------------------------

    /// Create or replace a Service. Returns the new resourceVersion.
    pub fn apply_service(&self, svc: Service) -> String {
        self.apply(Kind::Service, to_value(&svc))
    }

    /// Delete a Service. Returns the deletion's resourceVersion, or None if
    /// there was no such Service.
    pub fn delete_service(&self, namespace: &str, name: &str) -> Option<String> {
        self.delete(Kind::Service, namespace, name)
    }

    /// Create or replace an EndpointSlice. Returns the new resourceVersion.
    pub fn apply_slice(&self, slice: EndpointSlice) -> String {
        self.apply(Kind::EndpointSlice, to_value(&slice))
    }

    /// Delete an EndpointSlice. Returns the deletion's resourceVersion, or
    /// None if there was no such slice.
    pub fn delete_slice(&self, namespace: &str, name: &str) -> Option<String> {
        self.delete(Kind::EndpointSlice, namespace, name)
    }

    /// Create or replace a Node. Returns the new resourceVersion.
    pub fn apply_node(&self, node: Node) -> String {
        self.apply(Kind::Node, to_value(&node))
    }

    /// Delete a Node. Returns the deletion's resourceVersion, or None if
    /// there was no such Node.
    pub fn delete_node(&self, name: &str) -> Option<String> {
        self.delete(Kind::Node, "", name)
    }

    /// Create or replace an object of `kind` given as JSON. A missing
    /// namespace becomes "default" for namespaced kinds; a missing name is
    /// generated. Returns the new resourceVersion.
    pub fn apply(&self, kind: Kind, object: Value) -> String {
        let mut obj = match object {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let mut st = self.state();
        st.rv += 1;
        let rv = st.rv;
        obj.insert("apiVersion".into(), kind.api_version().into());
        obj.insert("kind".into(), kind.kind_name().into());
        let mut meta = match obj.remove("metadata") {
            Some(Value::Object(meta)) => meta,
            _ => Map::new(),
        };
        let namespace = if kind.namespaced() {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), ns.clone().into());
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        let name = match meta.get("name").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            Some(name) => name.to_string(),
            None => {
                let prefix = meta
                    .get("generateName")
                    .and_then(Value::as_str)
                    .unwrap_or("generated-")
                    .to_string();
                let name = format!("{prefix}{rv}");
                meta.insert("name".into(), name.clone().into());
                name
            }
        };
        let key = (namespace, name);
        let old = st.objects[kind.index()].get(&key).cloned();
        let old_meta = old.as_ref().and_then(|o| o.get("metadata"));
        for field in ["uid", "creationTimestamp"] {
            let missing = meta.get(field).is_none_or(Value::is_null);
            if missing && let Some(v) = old_meta.and_then(|m| m.get(field)) {
                meta.insert(field.into(), v.clone());
            }
        }
        if meta.get("uid").is_none_or(Value::is_null) {
            st.next_uid += 1;
            meta.insert(
                "uid".into(),
                format!("00000000-0000-4000-8000-{:012x}", st.next_uid).into(),
            );
        }
        if meta.get("creationTimestamp").is_none_or(Value::is_null) {
            meta.insert("creationTimestamp".into(), now_timestamp());
        }
        meta.insert("resourceVersion".into(), rv.to_string().into());
        obj.insert("metadata".into(), Value::Object(meta));
        let new = Arc::new(Value::Object(obj));
        st.objects[kind.index()].insert(key, new.clone());
        st.record_change(Change {
            rv,
            kind,
            old,
            new: Some(new),
        });
        rv.to_string()
    }

    /// Delete an object of `kind` (namespace is ignored for Nodes). Returns
    /// the deletion's resourceVersion, or None if there was no such object.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<String> {
        let ns = if kind.namespaced() { namespace } else { "" };
        let mut st = self.state();
        let old = st.objects[kind.index()].remove(&(ns.to_string(), name.to_string()))?;
        st.rv += 1;
        let rv = st.rv;
        st.record_change(Change {
            rv,
            kind,
            old: Some(old),
            new: None,
        });
        Some(rv.to_string())
    }

    // ----- inspection ------------------------------------------------------

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> String {
        self.state().rv.to_string()
    }

    /// A stored object, as the server would return it.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { namespace } else { "" };
        self.state().objects[kind.index()]
            .get(&(ns.to_string(), name.to_string()))
            .map(|v| (**v).clone())
    }

    /// Number of stored objects of `kind`.
    pub fn object_count(&self, kind: Kind) -> usize {
        self.state().objects[kind.index()].len()
    }

    /// Every request seen so far, as "METHOD /path?query" (query as sent,
    /// i.e. still percent-encoded).
    pub fn requests(&self) -> Vec<String> {
        self.state()
            .requests
            .iter()
            .map(|r| format!("{} {}", r.method, r.path_and_query))
            .collect()
    }

    /// Forget the recorded requests.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// Number of list (non-watch collection GET) requests for `kind`,
    /// including ones answered with an injected failure.
    pub fn list_count(&self, kind: Kind) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.kind == Some(kind) && r.list)
            .count()
    }

    /// Number of watch requests for `kind`.
    pub fn watch_count(&self, kind: Kind) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.kind == Some(kind) && r.watch)
            .count()
    }

    /// Number of currently open watch streams for `kind`.
    pub fn open_watches(&self, kind: Kind) -> usize {
        let mut st = self.state();
        st.watchers.retain(|w| !w.tx.is_closed());
        st.watchers.iter().filter(|w| w.kind == kind).count()
    }

    /// Poll until at least `n` watches of `kind` are open, or `timeout`
    /// passes. Returns whether the condition was met.
    pub async fn wait_for_open_watches(&self, kind: Kind, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.open_watches(kind) >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // ----- fault injection -------------------------------------------------

    /// Forget the event history: any watch resuming from an RV older than
    /// the current one gets an ERROR 410 Expired (and so do continue tokens
    /// of older lists). Open watches keep running.
    pub fn compact(&self) {
        let mut st = self.state();
        st.history.clear();
        st.compacted_rv = st.rv;
    }

    /// Send every open watch an ERROR 410 Expired event and end it, forcing
    /// kube-rs watchers to relist.
    pub fn expire_watches(&self) {
        let mut st = self.state();
        for w in st.watchers.drain(..) {
            let _ = w.tx.send(WatchMsg::Expire);
        }
    }

    /// Send every open watch that asked for bookmarks a BOOKMARK now.
    pub fn send_bookmarks(&self) {
        let mut st = self.state();
        st.watchers.retain(|w| w.tx.send(WatchMsg::Bookmark).is_ok());
    }

    /// Interval of periodic bookmarks for watches started from now on.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.state().bookmark_interval = interval.max(Duration::from_millis(10));
    }

    /// How many events to keep for resuming watches (at least 1).
    pub fn set_history_limit(&self, limit: usize) {
        let mut st = self.state();
        st.history_limit = limit.max(1);
        st.trim_history();
    }

    /// Answer the next `n` list requests (any kind) with HTTP `status` and a
    /// matching Status body. NB: kube's client transparently retries 429,
    /// 503 and 504 (up to 15 times), so use e.g. 500 to make a watcher see
    /// the error.
    pub fn fail_next_lists(&self, n: usize, status: u16) {
        self.state().fail_lists = (n > 0).then_some((n, status));
    }

    /// Answer the next `n` watch requests (any kind) with HTTP `status`.
    pub fn fail_next_watches(&self, n: usize, status: u16) {
        self.state().fail_watches = (n > 0).then_some((n, status));
    }

    fn state(&self) -> MutexGuard<'_, ServerState> {
        self.shared.lock()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ServerState {
    fn record_change(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        self.trim_history();
        self.watchers
            .retain(|w| w.tx.send(WatchMsg::Change(change.clone())).is_ok());
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted_rv = self.compacted_rv.max(dropped.rv);
            }
        }
    }

    /// Take one unit of an injected failure, if any.
    fn take_failure(slot: &mut Option<(usize, u16)>) -> Option<u16> {
        let (n, status) = (*slot)?;
        *slot = (n > 1).then_some((n - 1, status));
        Some(status)
    }
}

fn bind_loopback(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    socket.listen(1024)
}

fn to_value<T: serde::Serialize>(obj: &T) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

fn now_timestamp() -> Value {
    let t = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    serde_json::to_value(t).unwrap_or(Value::Null)
}

// ----- selectors -------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelReq {
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        match self {
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        }
    }
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Split at commas outside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    terms.push(&s[start..]);
    Ok(terms)
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut reqs = Vec::new();
    for raw in split_terms(s)? {
        let term = raw.trim();
        if term.is_empty() {
            return Err(format!("empty requirement in label selector {s:?}"));
        }
        let req = if let Some(key) = term.strip_prefix('!') {
            LabelReq::NotExists(key.trim().to_string())
        } else if let Some((k, v)) = term.split_once("!=") {
            LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = term.split_once("==") {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = term.split_once('=') {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some(open) = term.find('(') {
            let head: Vec<&str> = term[..open].split_whitespace().collect();
            let Some(inner) = term[open + 1..].strip_suffix(')') else {
                return Err(format!("bad set requirement {term:?}"));
            };
            let values: Vec<String> = inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            if values.iter().any(|v| !valid_label_value(v)) {
                return Err(format!("invalid label value in {term:?}"));
            }
            match head.as_slice() {
                [k, "in"] if !values.is_empty() => LabelReq::In(k.to_string(), values),
                [k, "notin"] if !values.is_empty() => LabelReq::NotIn(k.to_string(), values),
                _ => return Err(format!("bad set requirement {term:?}")),
            }
        } else {
            LabelReq::Exists(term.to_string())
        };
        let (key, value) = match &req {
            LabelReq::Exists(k) | LabelReq::NotExists(k) => (k, None),
            LabelReq::Eq(k, v) | LabelReq::NotEq(k, v) => (k, Some(v)),
            LabelReq::In(k, _) | LabelReq::NotIn(k, _) => (k, None),
        };
        if !valid_label_key(key) {
            return Err(format!("invalid label key {key:?}"));
        }
        if let Some(v) = value
            && !valid_label_value(v)
        {
            return Err(format!("invalid label value {v:?}"));
        }
        reqs.push(req);
    }
    Ok(reqs)
}

#[derive(Clone, Debug, PartialEq)]
enum FieldReq {
    Eq(&'static str, String),
    NotEq(&'static str, String),
}

fn parse_field_selector(s: &str) -> Result<Vec<FieldReq>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut reqs = Vec::new();
    for raw in s.split(',') {
        let term = raw.trim();
        let (field, value, negate) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, true)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, v, false)
        } else {
            return Err(format!("invalid field selector requirement {term:?}"));
        };
        let field = match field.trim() {
            "metadata.name" => "name",
            "metadata.namespace" => "namespace",
            other => return Err(format!("field label not supported: {other}")),
        };
        let value = value.trim().to_string();
        reqs.push(if negate {
            FieldReq::NotEq(field, value)
        } else {
            FieldReq::Eq(field, value)
        });
    }
    Ok(reqs)
}

/// What one list or watch request selects.
#[derive(Clone, Debug)]
struct Filter {
    kind: Kind,
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let meta = obj.get("metadata").and_then(Value::as_object);
        let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str).unwrap_or("");
        if let Some(ns) = &self.namespace
            && field("namespace") != ns
        {
            return false;
        }
        let labels = meta.and_then(|m| m.get("labels")).and_then(Value::as_object);
        self.labels.iter().all(|r| r.matches(labels))
            && self.fields.iter().all(|r| match r {
                FieldReq::Eq(f, v) => field(f) == v,
                FieldReq::NotEq(f, v) => field(f) != v,
            })
    }

    /// The event (type, object) this watcher should see for `change`.
    fn event_for(&self, change: &Change) -> Option<(&'static str, Value)> {
        if change.kind != self.kind {
            return None;
        }
        let old_matches = change.old.as_deref().is_some_and(|o| self.matches(o));
        let new_matches = change.new.as_deref().is_some_and(|n| self.matches(n));
        match (&change.old, &change.new, old_matches, new_matches) {
            (_, Some(new), false, true) => Some(("ADDED", (**new).clone())),
            (Some(_), Some(new), true, true) => Some(("MODIFIED", (**new).clone())),
            (Some(old), _, true, false) => {
                // The last state the watcher saw, stamped with the RV of the
                // change that removed it from view.
                let mut obj = (**old).clone();
                if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("resourceVersion".into(), change.rv.to_string().into());
                }
                Some(("DELETED", obj))
            }
            _ => None,
        }
    }
}

// ----- HTTP ------------------------------------------------------------------

/// What a request path names.
enum Target {
    Collection {
        kind: Kind,
        namespace: Option<String>,
    },
    Object {
        kind: Kind,
        namespace: Option<String>,
        name: String,
    },
    Events,
    Version,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let core = |rest: &[&str]| -> Option<Target> {
        match rest {
            ["services"] => Some(Target::Collection {
                kind: Kind::Service,
                namespace: None,
            }),
            ["nodes"] => Some(Target::Collection {
                kind: Kind::Node,
                namespace: None,
            }),
            ["nodes", name] => Some(Target::Object {
                kind: Kind::Node,
                namespace: None,
                name: name.to_string(),
            }),
            ["namespaces", ns, "services"] => Some(Target::Collection {
                kind: Kind::Service,
                namespace: Some(ns.to_string()),
            }),
            ["namespaces", ns, "services", name] => Some(Target::Object {
                kind: Kind::Service,
                namespace: Some(ns.to_string()),
                name: name.to_string(),
            }),
            ["namespaces", _, "events"] | ["events"] => Some(Target::Events),
            _ => None,
        }
    };
    let target = match segs.as_slice() {
        ["version"] => Some(Target::Version),
        ["api", "v1", rest @ ..] => core(rest),
        ["apis", "discovery.k8s.io", "v1", "endpointslices"] => Some(Target::Collection {
            kind: Kind::EndpointSlice,
            namespace: None,
        }),
        ["apis", "discovery.k8s.io", "v1", "namespaces", ns, "endpointslices"] => Some(Target::Collection {
            kind: Kind::EndpointSlice,
            namespace: Some(ns.to_string()),
        }),
        [
            "apis",
            "discovery.k8s.io",
            "v1",
            "namespaces",
            ns,
            "endpointslices",
            name,
        ] => Some(Target::Object {
            kind: Kind::EndpointSlice,
            namespace: Some(ns.to_string()),
            name: name.to_string(),
        }),
        ["apis", "events.k8s.io", "v1", "namespaces", _, "events"] | ["apis", "events.k8s.io", "v1", "events"] => {
            Some(Target::Events)
        }
        _ => None,
    };
    // Reject empty path segments such as /api/v1/namespaces//services.
    match &target {
        Some(Target::Collection {
            namespace: Some(ns), ..
        })
        | Some(Target::Object {
            namespace: Some(ns), ..
        }) if ns.is_empty() => None,
        Some(Target::Object { name, .. }) if name.is_empty() => None,
        _ => target,
    }
}

/// Query parameters that matter here.
#[derive(Default)]
struct Params {
    watch: bool,
    label_selector: String,
    field_selector: String,
    limit: Option<usize>,
    continue_token: Option<String>,
    resource_version: Option<String>,
    timeout_seconds: Option<u64>,
    allow_bookmarks: bool,
    send_initial_events: bool,
}

fn parse_params(uri: &Uri) -> Result<Params, String> {
    let pairs: Vec<(String, String)> = match uri.query() {
        None => Vec::new(),
        Some(_) => {
            Query::<Vec<(String, String)>>::try_from_uri(uri)
                .map_err(|e| format!("invalid query string: {e}"))?
                .0
        }
    };
    let truthy = |v: &str| matches!(v, "true" | "1" | "True" | "TRUE");
    let mut p = Params::default();
    for (k, v) in pairs {
        match k.as_str() {
            "watch" => p.watch = truthy(&v),
            "labelSelector" => p.label_selector = v,
            "fieldSelector" => p.field_selector = v,
            "limit" => {
                let n: i64 = v.parse().map_err(|_| format!("invalid limit {v:?}"))?;
                p.limit = (n > 0).then(|| usize::try_from(n).unwrap_or(usize::MAX));
            }
            "continue" => p.continue_token = Some(v).filter(|s| !s.is_empty()),
            "resourceVersion" => p.resource_version = Some(v),
            "timeoutSeconds" => {
                let n: u64 = v.parse().map_err(|_| format!("invalid timeoutSeconds {v:?}"))?;
                p.timeout_seconds = Some(n);
            }
            "allowWatchBookmarks" => p.allow_bookmarks = truthy(&v),
            "sendInitialEvents" => p.send_initial_events = truthy(&v),
            _ => {}
        }
    }
    Ok(p)
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

fn status_value(code: u16, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason_for(code),
        "code": code,
    })
}

fn json_response(code: u16, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(code: u16, message: &str) -> Response {
    json_response(code, &status_value(code, message))
}

async fn handle(AxumState(shared): AxumState<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = uri.path().to_string();
    let target = parse_path(&path);
    let params = parse_params(&uri);
    let watch = params.as_ref().is_ok_and(|p| p.watch);

    let (kind, is_collection) = match &target {
        Some(Target::Collection { kind, .. }) => (Some(*kind), true),
        Some(Target::Object { kind, .. }) => (Some(*kind), false),
        _ => (None, false),
    };
    shared.lock().requests.push(RequestRecord {
        method: method.to_string(),
        path_and_query: uri
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or(path.clone()),
        kind,
        watch: method == Method::GET && kind.is_some() && watch,
        list: method == Method::GET && is_collection && !watch,
    });

    let Some(target) = target else {
        return error_response(
            404,
            &format!("the server could not find the requested resource ({path})"),
        );
    };
    let params = match params {
        Ok(p) => p,
        Err(msg) => return error_response(400, &msg),
    };

    match target {
        Target::Version => {
            if method != Method::GET {
                return error_response(405, "method not allowed");
            }
            json_response(
                200,
                &json!({
                    "major": "1",
                    "minor": "34",
                    "gitVersion": "v1.34.0-kproxy-fake",
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean",
                    "buildDate": "2025-01-01T00:00:00Z",
                    "goVersion": "go1.24.0",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                }),
            )
        }
        Target::Events => {
            if method != Method::POST {
                return error_response(405, "only POST of events is supported");
            }
            match axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await {
                Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                    Ok(v) if v.is_object() => json_response(201, &v),
                    _ => error_response(400, "request body is not a JSON object"),
                },
                Err(_) => error_response(400, "unreadable request body"),
            }
        }
        Target::Object { kind, namespace, name } => {
            if method != Method::GET {
                return error_response(405, "this fake API server is read-only over HTTP");
            }
            if params.watch {
                // Deprecated single-object watch: a collection watch on the name.
                let mut params = params;
                let sel = format!("metadata.name={name}");
                params.field_selector = if params.field_selector.is_empty() {
                    sel
                } else {
                    format!("{},{sel}", params.field_selector)
                };
                return collection(&shared, kind, namespace, params);
            }
            let key = (namespace.unwrap_or_default(), name);
            let obj = shared.lock().objects[kind.index()].get(&key).cloned();
            match obj {
                Some(obj) => json_response(200, &obj),
                None => error_response(404, &format!("{} \"{}\" not found", kind.plural(), key.1)),
            }
        }
        Target::Collection { kind, namespace } => {
            if method != Method::GET {
                return error_response(405, "this fake API server is read-only over HTTP");
            }
            collection(&shared, kind, namespace, params)
        }
    }
}

/// A list or watch of a collection.
fn collection(shared: &Arc<Shared>, kind: Kind, namespace: Option<String>, params: Params) -> Response {
    let labels = match parse_label_selector(&params.label_selector) {
        Ok(l) => l,
        Err(msg) => return error_response(400, &format!("unable to parse requirement: {msg}")),
    };
    let fields = match parse_field_selector(&params.field_selector) {
        Ok(f) => f,
        Err(msg) => return error_response(400, &msg),
    };
    let filter = Filter {
        kind,
        namespace,
        labels,
        fields,
    };
    if params.watch {
        start_watch(shared, filter, &params)
    } else {
        list(shared, &filter, &params)
    }
}

fn parse_continue(token: &str) -> Option<(u64, ObjKey)> {
    let (rv, rest) = token.split_once(':')?;
    let (ns, name) = rest.split_once('/')?;
    Some((rv.parse().ok()?, (ns.to_string(), name.to_string())))
}

fn list(shared: &Arc<Shared>, filter: &Filter, params: &Params) -> Response {
    let mut st = shared.lock();
    if let Some(code) = ServerState::take_failure(&mut st.fail_lists) {
        return error_response(code, "injected list failure");
    }
    let (list_rv, after) = match &params.continue_token {
        None => (st.rv, None),
        Some(token) => match parse_continue(token) {
            None => return error_response(400, "continue key is not valid"),
            Some((rv, _)) if rv < st.compacted_rv => {
                return error_response(
                    410,
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter.",
                );
            }
            Some((rv, key)) => (rv, Some(key)),
        },
    };
    let objects = &st.objects[filter.kind.index()];
    let range = match &after {
        Some(key) => objects.range::<ObjKey, _>((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded)),
        None => objects.range::<ObjKey, _>(..),
    };
    let mut items = Vec::new();
    let mut last_key = None;
    let mut more = false;
    for (key, obj) in range {
        if !filter.matches(obj) {
            continue;
        }
        if params.limit.is_some_and(|limit| items.len() >= limit) {
            more = true;
            break;
        }
        let mut item = (**obj).clone();
        if let Some(map) = item.as_object_mut() {
            map.remove("kind");
            map.remove("apiVersion");
        }
        items.push(item);
        last_key = Some(key);
    }
    let mut metadata = Map::new();
    metadata.insert("resourceVersion".into(), list_rv.to_string().into());
    if more && let Some((ns, name)) = last_key {
        metadata.insert("continue".into(), format!("{list_rv}:{ns}/{name}").into());
    }
    let body = json!({
        "kind": filter.kind.list_kind_name(),
        "apiVersion": filter.kind.api_version(),
        "metadata": metadata,
        "items": items,
    });
    drop(st);
    json_response(200, &body)
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_line(kind: Kind, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": kind.kind_name(), "apiVersion": kind.api_version(), "metadata": metadata}),
    )
}

fn expired_line(message: &str) -> Bytes {
    event_line("ERROR", &status_value(410, message))
}

fn start_watch(shared: &Arc<Shared>, filter: Filter, params: &Params) -> Response {
    let mut st = shared.lock();
    if let Some(code) = ServerState::take_failure(&mut st.fail_watches) {
        return error_response(code, "injected watch failure");
    }
    let requested = match params.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => return error_response(400, &format!("invalid resource version {rv:?}")),
        },
    };
    let timeout = Duration::from_secs(
        params
            .timeout_seconds
            .filter(|&s| s > 0)
            .unwrap_or(MAX_WATCH_TIMEOUT_SECS)
            .min(MAX_WATCH_TIMEOUT_SECS),
    );
    let mut pending = VecDeque::new();
    let mut done = false;
    match requested {
        Some(rv) if rv < st.compacted_rv => {
            pending.push_back(expired_line(&format!(
                "too old resource version: {rv} ({})",
                st.compacted_rv
            )));
            done = true;
        }
        Some(rv) => {
            for change in st.history.iter().filter(|c| c.rv > rv) {
                if let Some((ty, obj)) = filter.event_for(change) {
                    pending.push_back(event_line(ty, &obj));
                }
            }
        }
        None => {
            for obj in st.objects[filter.kind.index()].values() {
                if filter.matches(obj) {
                    pending.push_back(event_line("ADDED", obj));
                }
            }
            if params.send_initial_events && params.allow_bookmarks {
                pending.push_back(bookmark_line(filter.kind, st.rv, true));
            }
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    if !done {
        st.watchers.push(WatcherReg { kind: filter.kind, tx });
    }
    let interval = st.bookmark_interval;
    let progress = st.rv;
    drop(st);

    let stream = WatchStream {
        pending,
        rx,
        filter,
        bookmarks: params.allow_bookmarks,
        progress,
        deadline: Instant::now() + timeout,
        ticker: tokio::time::interval_at(Instant::now() + interval, interval),
        done,
    };
    let body = Body::from_stream(futures::stream::unfold(stream, |mut s| async move {
        s.next_chunk().await.map(|chunk| (Ok::<_, Infallible>(chunk), s))
    }));
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// One open watch, owned by its response body.
struct WatchStream {
    pending: VecDeque<Bytes>,
    rx: mpsc::UnboundedReceiver<WatchMsg>,
    filter: Filter,
    bookmarks: bool,
    /// Every change up to this RV has been sent (or filtered out).
    progress: u64,
    deadline: Instant,
    ticker: tokio::time::Interval,
    done: bool,
}

impl WatchStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if self.done {
                return None;
            }
            tokio::select! {
                () = tokio::time::sleep_until(self.deadline) => self.done = true,
                msg = self.rx.recv() => match msg {
                    // The server stopped or dropped this watch.
                    None => self.done = true,
                    Some(WatchMsg::Change(change)) => {
                        self.progress = self.progress.max(change.rv);
                        if let Some((ty, obj)) = self.filter.event_for(&change) {
                            self.pending.push_back(event_line(ty, &obj));
                        }
                    }
                    Some(WatchMsg::Bookmark) => {
                        if self.bookmarks {
                            self.pending.push_back(bookmark_line(self.filter.kind, self.progress, false));
                        }
                    }
                    Some(WatchMsg::Expire) => {
                        self.pending.push_back(expired_line("watch expired by the test"));
                        self.done = true;
                    }
                },
                _ = self.ticker.tick(), if self.bookmarks => {
                    self.pending.push_back(bookmark_line(self.filter.kind, self.progress, false));
                }
            }
        }
    }
}
