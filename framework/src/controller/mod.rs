//! A controller: one watched kind, its handlers, and the secondary watches
//! that map other objects back to it.
//!
//! The engine is split by concern: [`plan`] decides what a cycle does
//! (pure), [`diffbase`] and [`persist`] say how state is kept on the object,
//! [`finalizer`] builds the finalizer patches, [`queue`] orders the work
//! (pure), [`run`] watches and dispatches, [`secondary`] maps other kinds
//! back, [`cycle`] and [`cause`] execute a cycle, [`daemons`] supervises
//! the daemons, [`invoke`] runs one
//! handler, [`timers`] the timers and event handlers, [`report`] writes
//! conditions and Events.

mod access;
mod cache;
mod cause;
mod cycle;
mod daemons;
pub(crate) mod diffbase;
mod finalizer;
mod invoke;
mod persist;
mod plan;
mod queue;
mod report;
mod run;
mod secondary;
mod timers;

use cache::Store;
pub(crate) use cache::{Cache, Key, store_put, typed};
pub(crate) use invoke::essence;

use crate::context::is_namespaced;
use crate::error::Error;
use crate::handler::{Handler, HandlerKind};
use crate::index::{Indexer, Indexes};
use crate::runtime::Runtime;
use futures::FutureExt;
use futures::future::BoxFuture;
use kube::Resource;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::time::Instant;

/// The prefix of the per-handler failure condition types: a handler with id
/// `copy-data` that is failing sets `HandlerFailed.CopyData` (see
/// [`handler_failed_condition`]).
pub const HANDLER_FAILED: &str = "HandlerFailed";
/// The condition type set when an object cannot be deserialised (also the
/// reason of the Warning Event posted then).
pub const INVALID_OBJECT: &str = "InvalidObject";
/// The reason of the Warning Event posted when an object that cannot be
/// deserialised is deleted: its delete handlers were skipped and the
/// finalizer was removed.
pub const INVALID_OBJECT_DELETED: &str = "InvalidObjectDeleted";

/// The condition type that reports failures of the handler `id`:
/// `HandlerFailed.<Id in CamelCase>` (e.g. `HandlerFailed.CopyData` for
/// `copy-data`). `True` (reason `Retrying` or `GaveUp`) while it fails,
/// `False` (reason `Succeeded`) once it succeeded again.
pub fn handler_failed_condition(id: &str) -> String {
    format!("{HANDLER_FAILED}.{}", crate::conditions::reason_from_id(id))
}

type Sender = tokio::sync::mpsc::UnboundedSender<(Key, Instant)>;
type SecondaryFn = Arc<dyn Fn(Sender) -> BoxFuture<'static, ()> + Send + Sync>;

/// What the operator tells its running controllers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunState {
    /// Keep handling.
    Run,
    /// Graceful shutdown: start nothing new, let in-flight handlers finish
    /// (within `shutdown_timeout`).
    Drain,
    /// Leadership is lost: another replica may already act, so in-flight
    /// handlers are cancelled at once.
    Cancel,
}

/// Trait object form of a [`Controller`], used by the [`Operator`](crate::Operator).
pub(crate) trait Runnable: Send + Sync {
    fn run(&self, rt: Arc<Runtime>, state: watch::Receiver<RunState>) -> BoxFuture<'static, ()>;
    /// Registration errors (invalid or duplicate handlers), reported by
    /// `Operator::run` before anything starts.
    fn problems(&self) -> Vec<String>;
    /// The admission webhooks of this controller's kind.
    fn webhooks(&self) -> Vec<crate::webhook::Route>;
}

/// A controller for objects of kind `K`: the handlers, and which other kinds
/// to watch so that changes of them re-run `K`'s handlers.
///
/// The primary objects are watched as `DynamicObject` and deserialised into
/// `K` one by one, so an object that does not fit `K` is reported on (a
/// `InvalidObject` condition and a Warning Event naming the field) while all
/// other objects keep being served.
pub struct Controller<K: Resource<DynamicType = ()>> {
    api: Api<K>,
    config: watcher::Config,
    handlers: Vec<Handler<K>>,
    secondaries: Vec<SecondaryFn>,
    problems: Vec<String>,
    digest_only: bool,
    /// Shared with the store views and index readers handed out before the
    /// controller runs.
    cache: Store,
    indexers: Vec<Arc<dyn Indexer<K>>>,
    webhooks: Vec<crate::webhook::Route>,
}

impl<K> Controller<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    K::Scope: 'static,
{
    /// A controller watching `api` (use `Api::all` or `Api::namespaced`) with
    /// the given watcher configuration (label/field selectors ...).
    pub fn new(api: Api<K>, config: watcher::Config) -> Self {
        Controller {
            api,
            config,
            handlers: Vec::new(),
            secondaries: Vec::new(),
            problems: Vec::new(),
            digest_only: false,
            cache: Arc::new(Cache::default()),
            indexers: Vec::new(),
            webhooks: Vec::new(),
        }
    }

    /// Registers a handler (see the attribute macros). An invalid handler
    /// (see [`Handler::validate`]) or one whose id is already registered on
    /// this controller is not added; the error is returned by
    /// [`Operator::run`](crate::Operator::run) before anything starts. Use
    /// [`Controller::try_handler`] to get it at once.
    pub fn handler(mut self, handler: Handler<K>) -> Self {
        match self.check(&handler) {
            Ok(()) => self.handlers.push(handler),
            Err(e) => self.problems.push(e),
        }
        self
    }

    /// Like [`Controller::handler`], but returns the registration error.
    pub fn try_handler(mut self, handler: Handler<K>) -> Result<Self, Error> {
        self.check(&handler).map_err(Error::Config)?;
        self.handlers.push(handler);
        Ok(self)
    }

    fn check(&self, h: &Handler<K>) -> Result<(), String> {
        h.validate().map_err(|e| e.to_string())?;
        let condition = handler_failed_condition(&h.id);
        for other in &self.handlers {
            if other.id == h.id {
                return Err(format!("duplicate handler id `{}`", h.id));
            }
            if handler_failed_condition(&other.id) == condition {
                return Err(format!(
                    "handler ids `{}` and `{}` map to the same condition type `{condition}`",
                    other.id, h.id
                ));
            }
        }
        Ok(())
    }

    /// Stores the diff base (`last-handled-configuration`) of every object
    /// as a digest, never in full: for kinds whose content must not be
    /// copied into an annotation (Secrets always are). Update and field
    /// handlers then still run on every change, with an empty `diff` and no
    /// old values (see [`Context::diff_known`](crate::Context::diff_known)).
    pub fn digest_diff_base(mut self) -> Self {
        self.digest_only = true;
        self
    }
}

impl<K> Runnable for Controller<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    K::Scope: 'static,
{
    fn run(&self, rt: Arc<Runtime>, shutdown: watch::Receiver<RunState>) -> BoxFuture<'static, ()> {
        let ar = ApiResource::erase::<K>(&());
        let client = self.api.clone().into_client();
        let dyn_api: Api<DynamicObject> = match self.api.namespace() {
            Some(ns) => Api::namespaced_with(client, ns, &ar),
            None => Api::all_with(client, &ar),
        };
        // Secret data must never land in an annotation in clear.
        let digest_only = self.digest_only || (ar.group.is_empty() && ar.kind == "Secret");
        let field_paths = self
            .handlers
            .iter()
            .filter_map(|h| match &h.kind {
                HandlerKind::Field { path } => Some(path.clone()),
                _ => None,
            })
            .collect();
        // Rebuilt from a fresh list each time the controller starts.
        self.cache.clear();
        let inner = Arc::new(Inner::<K> {
            persistence: Box::new(persist::Annotations::new(&rt.prefix)),
            rt,
            ar,
            kind: K::kind(&()).to_string(),
            namespaced: is_namespaced::<K>(),
            handlers: self.handlers.clone(),
            digest_only,
            field_paths,
            store: self.cache.clone(),
            indexes: Arc::new(Indexes::of(&self.indexers)),
            departed: Mutex::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
            daemons: Mutex::new(HashMap::new()),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        });
        let config = self.config.clone();
        let secondaries = self.secondaries.clone();
        run::run_controller(inner, dyn_api, config, secondaries, shutdown).boxed()
    }

    fn webhooks(&self) -> Vec<crate::webhook::Route> {
        self.webhooks.clone()
    }

    fn problems(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| format!("controller {}: {p}", K::kind(&())))
            .collect()
    }
}

/// The shared state of one running controller.
pub(crate) struct Inner<K> {
    rt: Arc<Runtime>,
    ar: ApiResource,
    kind: String,
    namespaced: bool,
    handlers: Vec<Handler<K>>,
    persistence: Box<dyn persist::Persistence>,
    /// Store diff bases as digests only (Secrets, or by choice).
    digest_only: bool,
    /// The paths of the field handlers (digested in a digest diff base).
    field_paths: Vec<String>,
    store: Store,
    indexes: Arc<Indexes>,
    /// Objects that left the watch (deleted, or no longer selected), until
    /// a cycle has told the two apart and acted on it.
    departed: Mutex<HashMap<Key, Arc<DynamicObject>>>,
    /// Per-object memory; each entry is only valid for the object with its
    /// uid (a new object of the same name starts afresh).
    states: Mutex<HashMap<Key, invoke::ObjState>>,
    /// The running daemons, per object.
    daemons: Mutex<daemons::Daemons>,
    /// Tasks of due objects waiting for a worker slot.
    waiting: std::sync::atomic::AtomicUsize,
}

/// At most `max` bytes of `s` (on a char boundary), marked when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Context;
    use crate::error::HandlerResult;
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::time::Duration;

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééé", 3), "é…");
    }

    async fn noop(_ctx: Context<ConfigMap>) -> HandlerResult {
        Ok(())
    }

    fn controller() -> Controller<ConfigMap> {
        // A client is needed to build an Api; it never connects here.
        crate::tls::install_crypto_provider();
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        Controller::new(Api::all(client), watcher::Config::default())
    }

    #[tokio::test]
    async fn duplicate_and_invalid_handlers_are_rejected_at_registration() {
        let c = controller()
            .handler(Handler::on_create("a", noop))
            .handler(Handler::on_update("a", noop))
            .handler(Handler::on_update("a_b", noop))
            .handler(Handler::on_update("a-b", noop))
            .handler(Handler::on_timer("t", Duration::ZERO, Duration::ZERO, noop))
            .handler(Handler::on_create("z", noop).backoff(Duration::ZERO, Duration::from_secs(1)));
        assert_eq!(c.handlers.len(), 2, "only `a` and `a_b` registered");
        let p = c.problems();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("duplicate handler id `a`"), "{p:?}");
        assert!(
            p[1].contains("same condition type `HandlerFailed.AB`"),
            "{p:?}"
        );
        assert!(p[2].contains("interval"), "{p:?}");
        assert!(p[3].contains("backoff"), "{p:?}");
        assert!(p[0].starts_with("controller ConfigMap: "), "{p:?}");
        let e = controller()
            .try_handler(Handler::on_create("a", noop))
            .and_then(|c| c.try_handler(Handler::on_delete("a", noop)));
        assert!(matches!(e, Err(Error::Config(m)) if m.contains("duplicate handler id `a`")));
    }

    fn cm(name: &str, rv: &str, app: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns", "uid": name, "resourceVersion": rv,
                         "labels": {"app": app}}
        }))
        .expect("object")
    }

    #[tokio::test]
    async fn indexes_follow_the_cache_through_writes_deletions_and_relists() {
        let by_app = |c: &ConfigMap| {
            let app = c
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .cloned();
            let name = c.metadata.name.clone().unwrap_or_default();
            app.map(|a| (a, name)).into_iter().collect()
        };
        let c = controller()
            .index("by-app", by_app)
            .index("by-app", by_app)
            .index("names", |c: &ConfigMap| {
                vec![(0u8, c.metadata.name.clone())]
            });
        assert_eq!(
            c.problems(),
            ["controller ConfigMap: duplicate index `by-app`"]
        );
        let idx = c.index_reader::<String, String>("by-app").expect("defined");
        assert!(c.index_reader::<String, u32>("by-app").is_err(), "typed");
        let store = c.store();
        let apps = |a: &str| idx.get(&a.to_string());
        cache::store_put(&c.cache, cm("a", "1", "web"), false);
        cache::store_put(&c.cache, cm("b", "1", "web"), false);
        assert_eq!(apps("web"), ["a", "b"]);
        // A write response of a newer version moves the object.
        cache::store_insert(&c.cache, cm("a", "2", "db"));
        assert_eq!(apps("web"), ["b"]);
        assert_eq!(apps("db"), ["a"]);
        // An older version does not win.
        cache::store_put(&c.cache, cm("a", "1", "web"), false);
        assert_eq!(apps("db"), ["a"]);
        let key = |n: &str| Key {
            namespace: Some("ns".into()),
            name: n.into(),
        };
        c.cache.remove(&key("b"));
        assert!(apps("web").is_empty(), "a departed object leaves the index");
        let listed: HashMap<Key, DynamicObject> = [cm("c", "5", "web")]
            .into_iter()
            .map(|o| (cache::key_of(&o), o))
            .collect();
        cache::apply_relist(&c.cache, listed);
        assert_eq!(apps("web"), ["c"]);
        assert!(
            apps("db").is_empty(),
            "a relist drops what it no longer has"
        );
        assert_eq!(store.len(), 1);
        let names = c
            .index_reader::<u8, Option<String>>("names")
            .expect("defined");
        assert_eq!(names.get(&0), [Some("c".to_string())]);
        c.cache.clear();
        assert!(idx.keys().is_empty() && names.keys().is_empty() && store.is_empty());
    }

    #[test]
    fn condition_types_are_per_handler() {
        assert_eq!(
            handler_failed_condition("copy-data"),
            "HandlerFailed.CopyData"
        );
        assert_ne!(handler_failed_condition("a"), handler_failed_condition("b"));
    }
}
