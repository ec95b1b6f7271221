//! Watching the API server: Services, EndpointSlices and the proxy's own
//! Node, fed into the model.
//!
//! ```text
//!  kube-rs watcher (list+watch, backoff, relist on 410)
//!     Init ─▶ InitApply* ─▶ InitDone ─▶ (Apply | Delete)* ─▶ Init (relist) ...
//!       │          │            │             │
//!       │     model.apply   model.retain(seen): only vanished objects go
//!       └─ seen = {}        ready.mark() (first time)
//!                                     every event ─▶ Trigger::request() if anything is pending
//! ```
//!
//! Selectors are kube-proxy's: objects labelled
//! `service.kubernetes.io/service-proxy-name` belong to another proxy, and
//! `service.kubernetes.io/headless` ones need no rules. API errors are
//! logged and retried with kube-rs's default backoff; known state is kept
//! across errors and relists. Nothing here selects endpoints or renders rules.

pub mod manifests;
pub mod readiness;

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::model::{Model, ServiceName, service_name, slice_key};
use crate::sync::{SharedModel, Trigger, lock};

pub use manifests::{ManifestError, Manifests};
pub use readiness::{Readiness, ReadyHandle};

/// kube-proxy's label selector for Services and EndpointSlices.
pub const PROXY_LABEL_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

#[cfg(test)]
mod selector_tests {
    use super::*;

    #[test]
    fn the_selector_and_the_predicate_name_the_same_labels() {
        let selector: Vec<String> = UNPROXIED_LABELS.iter().map(|l| format!("!{l}")).collect();
        assert_eq!(selector.join(","), PROXY_LABEL_SELECTOR);
    }
}

/// The labels [`PROXY_LABEL_SELECTOR`] excludes: objects carrying either are
/// not proxied by kube-proxy (another proxy's, or headless).
pub const UNPROXIED_LABELS: [&str; 2] = [
    "service.kubernetes.io/service-proxy-name",
    "service.kubernetes.io/headless",
];

/// Whether an object with `meta` matches [`PROXY_LABEL_SELECTOR`], for
/// objects that did not come through the API server's selector (manifests).
pub fn is_proxied(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .is_none_or(|labels| UNPROXIED_LABELS.iter().all(|l| !labels.contains_key(*l)))
}

/// Hooks for what the watch loop observes (metrics are wired in here).
pub trait WatchObserver: Send + Sync + 'static {
    /// A malformed object (or part of one) was skipped.
    fn object_problem(&self, _kind: &'static str) {}
    /// The watch stream reported an error and will retry.
    fn watch_error(&self, _kind: &'static str) {}
}

/// An observer that does nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopObserver;

impl WatchObserver for NoopObserver {}

/// How one kind of object is indexed in the model.
trait Indexed: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static {
    type Key: Eq + Hash + Send;
    const KIND: &'static str;
    fn key(&self) -> Option<Self::Key>;
    fn apply(model: &mut Model, obj: &Self);
    fn delete(model: &mut Model, obj: &Self);
    fn retain(model: &mut Model, keep: &HashSet<Self::Key>);
}

impl Indexed for Service {
    type Key = ServiceName;
    const KIND: &'static str = "Service";
    fn key(&self) -> Option<ServiceName> {
        service_name(self)
    }
    fn apply(model: &mut Model, obj: &Self) {
        model.apply_service(obj);
    }
    fn delete(model: &mut Model, obj: &Self) {
        if let Some(name) = service_name(obj) {
            model.delete_service(&name);
        }
    }
    fn retain(model: &mut Model, keep: &HashSet<ServiceName>) {
        model.retain_services(keep);
    }
}

impl Indexed for EndpointSlice {
    type Key = (String, String);
    const KIND: &'static str = "EndpointSlice";
    fn key(&self) -> Option<(String, String)> {
        slice_key(self)
    }
    fn apply(model: &mut Model, obj: &Self) {
        model.apply_slice(obj);
    }
    fn delete(model: &mut Model, obj: &Self) {
        if let Some((ns, name)) = slice_key(obj) {
            model.delete_slice(&ns, &name);
        }
    }
    fn retain(model: &mut Model, keep: &HashSet<(String, String)>) {
        model.retain_slices(keep);
    }
}

impl Indexed for Node {
    type Key = String;
    const KIND: &'static str = "Node";
    fn key(&self) -> Option<String> {
        self.metadata.name.clone()
    }
    fn apply(model: &mut Model, obj: &Self) {
        model.set_node(Some(obj));
    }
    fn delete(model: &mut Model, _obj: &Self) {
        model.set_node(None);
    }
    fn retain(model: &mut Model, keep: &HashSet<String>) {
        if keep.is_empty() {
            model.set_node(None);
        }
    }
}

/// The running watchers.
pub struct Watchers {
    pub tasks: Vec<JoinHandle<()>>,
    /// Resolves once Services and EndpointSlices have both been listed.
    pub readiness: Readiness,
}

/// Starts the three watchers.
pub fn spawn(
    client: Client,
    node_name: &str,
    model: SharedModel,
    trigger: Trigger,
    observer: std::sync::Arc<dyn WatchObserver>,
) -> Watchers {
    let (readiness, mut handles) = Readiness::new(2);
    let (Some(slices_ready), Some(services_ready)) = (handles.pop(), handles.pop()) else {
        unreachable!("Readiness::new(2) returns two handles");
    };
    let selector = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
    let tasks = vec![
        tokio::spawn(
            run::<Service>(
                Api::all(client.clone()),
                selector.clone(),
                model.clone(),
                trigger.clone(),
                Some(services_ready),
                observer.clone(),
            )
            .instrument(info_span!("watch", kind = "Service")),
        ),
        tokio::spawn(
            run::<EndpointSlice>(
                Api::all(client.clone()),
                selector,
                model.clone(),
                trigger.clone(),
                Some(slices_ready),
                observer.clone(),
            )
            .instrument(info_span!("watch", kind = "EndpointSlice")),
        ),
        tokio::spawn(
            run::<Node>(
                Api::all(client),
                watcher::Config::default().fields(&format!("metadata.name={node_name}")),
                model,
                trigger,
                None,
                observer,
            )
            .instrument(info_span!("watch", kind = "Node")),
        ),
    ];
    Watchers { tasks, readiness }
}

/// One watcher's loop; runs until the task is dropped.
async fn run<K: Indexed>(
    api: Api<K>,
    cfg: watcher::Config,
    model: SharedModel,
    trigger: Trigger,
    mut ready: Option<ReadyHandle>,
    observer: std::sync::Arc<dyn WatchObserver>,
) {
    let stream = watcher(api, cfg).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut seen: Option<HashSet<K::Key>> = None;
    let mut lists = 0u64;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                observer.watch_error(K::KIND);
                warn!(error = %err, "Watch failed; retrying with backoff, known state kept");
                continue;
            }
        };
        let mut model = lock(&model);
        match event {
            watcher::Event::Init => seen = Some(HashSet::new()),
            watcher::Event::InitApply(obj) => {
                if let (Some(seen), Some(key)) = (seen.as_mut(), obj.key()) {
                    seen.insert(key);
                }
                K::apply(&mut model, &obj);
            }
            watcher::Event::InitDone => {
                lists += 1;
                let keep = seen.take().unwrap_or_default();
                let count = keep.len();
                K::retain(&mut model, &keep);
                if let Some(ready) = ready.take() {
                    ready.mark_ready();
                    info!(objects = count, "Initial list done");
                } else {
                    debug!(objects = count, lists, "Relist done");
                }
            }
            watcher::Event::Apply(obj) => K::apply(&mut model, &obj),
            watcher::Event::Delete(obj) => K::delete(&mut model, &obj),
        }
        for problem in model.take_problems() {
            observer.object_problem(K::KIND);
            warn!(subject = %problem.subject, "{}", problem.message);
        }
        let pending = model.pending() > 0;
        drop(model);
        if pending {
            trigger.request();
        }
    }
}
