//! A controller: one watched kind, its handlers, and the secondary watches
//! that map other objects back to it.

use crate::conditions;
use crate::context::{Context, EventType, ObjectShared, is_namespaced};
use crate::diff::{diff, filter_path, get_path};
use crate::error::{Error, HandlerError};
use crate::handler::{Cause, Handler, HandlerKind, WatchEventType};
use crate::progress::Progress;
use crate::runtime::Runtime;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

/// The condition type set while a handler is failing.
pub const HANDLER_FAILED: &str = "HandlerFailed";
/// The condition type set when an object cannot be deserialised (also the
/// reason of the Warning Event posted then).
pub const INVALID_OBJECT: &str = "InvalidObject";
/// The reason of the Warning Event posted when an object that cannot be
/// deserialised is deleted: its delete handlers were skipped and the
/// finalizer was removed.
pub const INVALID_OBJECT_DELETED: &str = "InvalidObjectDeleted";

/// Identifies one object of the primary kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub(crate) namespace: Option<String>,
    pub(crate) name: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
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
}

fn ref_to_key<K: Resource<DynamicType = ()>>(r: ObjectRef<K>) -> Key {
    Key {
        namespace: r.namespace,
        name: r.name,
    }
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
        }
    }

    /// Registers a handler (see the attribute macros).
    pub fn handler(mut self, handler: Handler<K>) -> Self {
        self.handlers.push(handler);
        self
    }

    /// Watches the metadata of `C` objects and re-runs the handlers of the
    /// object named by their controller ownerReference (set by
    /// [`Context::adopt`]).
    pub fn owns<C>(self, api: Api<C>) -> Self
    where
        C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        self.owns_with(api, watcher::Config::default())
    }

    /// Like [`Controller::owns`], with a watcher configuration for the children.
    pub fn owns_with<C>(self, api: Api<C>, config: watcher::Config) -> Self
    where
        C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let kind = K::kind(&()).to_string();
        let api_version = K::api_version(&()).to_string();
        let namespaced = is_namespaced::<K>();
        self.watches_metadata_with(api, config, move |child: &PartialObjectMeta<C>| {
            child
                .owner_references()
                .iter()
                .filter(|r| {
                    r.controller == Some(true) && r.kind == kind && r.api_version == api_version
                })
                .map(|r| {
                    let o = ObjectRef::<K>::new(&r.name);
                    match (namespaced, child.namespace()) {
                        (true, Some(ns)) => o.within(&ns),
                        _ => o,
                    }
                })
                .collect()
        })
    }

    /// Watches full `C` objects and re-runs the handlers of the objects that
    /// `mapper` returns for each changed (or deleted) `C`.
    pub fn watches<C, F>(self, api: Api<C>, mapper: F) -> Self
    where
        C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        F: Fn(&C) -> Vec<ObjectRef<K>> + Send + Sync + 'static,
    {
        self.watches_with(api, watcher::Config::default(), mapper)
    }

    /// Like [`Controller::watches`], with a watcher configuration.
    pub fn watches_with<C, F>(mut self, api: Api<C>, config: watcher::Config, mapper: F) -> Self
    where
        C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        F: Fn(&C) -> Vec<ObjectRef<K>> + Send + Sync + 'static,
    {
        let mapper = Arc::new(mapper);
        let f: SecondaryFn = Arc::new(move |tx: Sender| {
            let stream = watcher::watcher(api.clone(), config.clone())
                .default_backoff()
                .touched_objects()
                .boxed();
            forward(stream, tx, mapper.clone()).boxed()
        });
        self.secondaries.push(f);
        self
    }

    /// Like [`Controller::watches`], but watches only metadata (cheaper).
    pub fn watches_metadata<C, F>(self, api: Api<C>, mapper: F) -> Self
    where
        C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        F: Fn(&PartialObjectMeta<C>) -> Vec<ObjectRef<K>> + Send + Sync + 'static,
    {
        self.watches_metadata_with(api, watcher::Config::default(), mapper)
    }

    /// Like [`Controller::watches_metadata`], with a watcher configuration.
    pub fn watches_metadata_with<C, F>(
        mut self,
        api: Api<C>,
        config: watcher::Config,
        mapper: F,
    ) -> Self
    where
        C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        F: Fn(&PartialObjectMeta<C>) -> Vec<ObjectRef<K>> + Send + Sync + 'static,
    {
        let mapper = Arc::new(mapper);
        let f: SecondaryFn = Arc::new(move |tx: Sender| {
            #[allow(deprecated)] // the replacement needs a scope bound on `C`
            let stream = watcher::metadata_watcher(api.clone(), config.clone())
                .default_backoff()
                .touched_objects()
                .boxed();
            forward(stream, tx, mapper.clone()).boxed()
        });
        self.secondaries.push(f);
        self
    }
}

async fn forward<T, K, F>(
    mut stream: BoxStream<'static, Result<T, watcher::Error>>,
    tx: Sender,
    mapper: Arc<F>,
) where
    K: Resource<DynamicType = ()>,
    F: Fn(&T) -> Vec<ObjectRef<K>> + Send + Sync + 'static,
{
    while let Some(item) = stream.next().await {
        match item {
            Ok(obj) => {
                for r in mapper(&obj) {
                    if tx.send((ref_to_key(r), Instant::now())).is_err() {
                        return;
                    }
                }
            }
            Err(e) => warn!(error = %e, kind = %K::kind(&()), "secondary watch error"),
        }
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
        let inner = Arc::new(Inner::<K> {
            rt,
            ar,
            kind: K::kind(&()).to_string(),
            namespaced: is_namespaced::<K>(),
            handlers: self.handlers.clone(),
            store: Arc::new(Mutex::new(HashMap::new())),
            deleted: Mutex::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
            ready: std::sync::atomic::AtomicBool::new(false),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        });
        let config = self.config.clone();
        let secondaries = self.secondaries.clone();
        run_controller(inner, dyn_api, config, secondaries, shutdown).boxed()
    }
}

/// Whether the controller's initial list finished; read by the operator.
pub(crate) type Store = Arc<Mutex<HashMap<Key, Arc<DynamicObject>>>>;

#[derive(Default)]
struct ObjState {
    /// Resume handlers ran (or are not needed) in this process.
    resumed: bool,
    /// Next run of each timer.
    timers: HashMap<String, Instant>,
    /// Failed timer runs in a row, per timer (reset on success).
    timer_failures: HashMap<String, u32>,
    /// Timers stopped by a permanent failure: the essence digest at the
    /// stop; they start over when the essence (the spec) changes.
    timer_stopped: HashMap<String, String>,
    /// Event-handler backoff: (failures, not before, generation at failure).
    event_backoff: HashMap<String, (u32, Instant, Option<i64>)>,
    /// The last bad-input message reported.
    invalid_reported: Option<String>,
}

pub(crate) struct Inner<K> {
    rt: Arc<Runtime>,
    ar: ApiResource,
    kind: String,
    namespaced: bool,
    handlers: Vec<Handler<K>>,
    store: Store,
    /// The last known version of objects deleted from the API, until their
    /// event handlers have seen the deletion (only kept when there are some).
    deleted: Mutex<HashMap<Key, Arc<DynamicObject>>>,
    states: Mutex<HashMap<Key, ObjState>>,
    ready: std::sync::atomic::AtomicBool,
    /// Tasks of due objects waiting for a worker slot.
    waiting: std::sync::atomic::AtomicUsize,
}

fn rv_of(o: &DynamicObject) -> Option<u64> {
    o.metadata.resource_version.as_deref()?.parse().ok()
}

/// Inserts `obj` into the store unless the store already has a newer version
/// (resourceVersions compared as integers, as etcd produces them). Only the
/// watcher adds new keys; writes made by the framework (`only_update`) just
/// refresh existing entries, so a write answered after the object's deletion
/// event cannot resurrect it.
fn store_put(store: &Store, obj: DynamicObject, only_update: bool) {
    let key = Key {
        namespace: obj.metadata.namespace.clone(),
        name: obj.metadata.name.clone().unwrap_or_default(),
    };
    if let Ok(mut s) = store.lock() {
        if let Some(old) = s.get(&key)
            && let (Some(a), Some(b)) = (rv_of(old), rv_of(&obj))
            && a > b
        {
            return;
        }
        if only_update && !s.contains_key(&key) {
            return;
        }
        s.insert(key, Arc::new(obj));
    }
}

fn store_insert(store: &Store, obj: DynamicObject) {
    store_put(store, obj, true);
}

fn key_of(obj: &DynamicObject) -> Key {
    Key {
        namespace: obj.metadata.namespace.clone(),
        name: obj.metadata.name.clone().unwrap_or_default(),
    }
}

async fn run_controller<K>(
    inner: Arc<Inner<K>>,
    dyn_api: Api<DynamicObject>,
    config: watcher::Config,
    secondaries: Vec<SecondaryFn>,
    mut shutdown: watch::Receiver<RunState>,
) where
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
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Key, Instant)>();
    let mut background = JoinSet::new();
    // Primary watch.
    {
        let inner = inner.clone();
        let tx = tx.clone();
        background.spawn(async move {
            let mut stream = watcher::watcher(dyn_api, config).default_backoff().boxed();
            let mut relist: Option<HashSet<Key>> = None;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                        let key = key_of(&o);
                        if let Some(seen) = relist.as_mut() {
                            seen.insert(key.clone());
                        }
                        store_put(&inner.store, o, false);
                        let _ = tx.send((key, Instant::now()));
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        let key = key_of(&o);
                        if let Ok(mut s) = inner.store.lock() {
                            s.remove(&key);
                        }
                        inner.remember_deleted(key.clone(), Arc::new(o));
                        let _ = tx.send((key, Instant::now()));
                    }
                    Ok(watcher::Event::Init) => relist = Some(HashSet::new()),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(seen) = relist.take() {
                            let gone: Vec<Key> = inner
                                .store
                                .lock()
                                .map(|s| s.keys().filter(|k| !seen.contains(k)).cloned().collect())
                                .unwrap_or_default();
                            for k in gone {
                                // Deleted while the watch was down: the last
                                // version we know stands for the deleted one.
                                let last = inner.store.lock().ok().and_then(|mut s| s.remove(&k));
                                if let Some(o) = last {
                                    inner.remember_deleted(k.clone(), o);
                                }
                                let _ = tx.send((k, Instant::now()));
                            }
                        }
                        if !inner.ready.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            inner.rt.metrics.controller_synced();
                        }
                    }
                    Err(e) => warn!(error = %e, kind = %inner.kind, "watch error"),
                }
            }
        });
    }
    for s in secondaries {
        background.spawn(s(tx.clone()));
    }
    // Periodic resync.
    {
        let inner = inner.clone();
        let tx = tx.clone();
        let period = inner.rt.config.resync;
        if !period.is_zero() {
            background.spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + period, period);
                loop {
                    tick.tick().await;
                    let keys: Vec<Key> = inner
                        .store
                        .lock()
                        .map(|s| s.keys().cloned().collect())
                        .unwrap_or_default();
                    for k in keys {
                        let _ = tx.send((k, Instant::now()));
                    }
                }
            });
        }
    }
    drop(tx);

    // Dispatcher: per-object serialisation and coalescing.
    let mut due: BTreeMap<(Instant, u64), Key> = BTreeMap::new();
    let mut due_of: HashMap<Key, (Instant, u64)> = HashMap::new();
    let mut running: HashSet<Key> = HashSet::new();
    let mut dirty: HashMap<Key, Instant> = HashMap::new();
    let mut tasks: JoinSet<Option<Instant>> = JoinSet::new();
    let mut task_keys: HashMap<tokio::task::Id, Key> = HashMap::new();
    let mut seq: u64 = 0;
    let mut rx_closed = false;

    let schedule = |key: Key,
                    at: Instant,
                    due: &mut BTreeMap<(Instant, u64), Key>,
                    due_of: &mut HashMap<Key, (Instant, u64)>,
                    running: &HashSet<Key>,
                    dirty: &mut HashMap<Key, Instant>,
                    seq: &mut u64| {
        if running.contains(&key) {
            let e = dirty.entry(key).or_insert(at);
            if at < *e {
                *e = at;
            }
            return;
        }
        if let Some(old) = due_of.get(&key).copied() {
            if old.0 <= at {
                return;
            }
            due.remove(&old);
        }
        *seq += 1;
        due.insert((at, *seq), key.clone());
        due_of.insert(key, (at, *seq));
    };

    loop {
        if *shutdown.borrow() != RunState::Run {
            break;
        }
        let now = Instant::now();
        while let Some((&(t, s), _)) = due.first_key_value() {
            if t > now {
                break;
            }
            let Some(key) = due.remove(&(t, s)) else {
                break;
            };
            due_of.remove(&key);
            running.insert(key.clone());
            let inner2 = inner.clone();
            let shutdown2 = shutdown.clone();
            let k2 = key.clone();
            let handle = tasks.spawn(async move {
                inner2
                    .waiting
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let permit = inner2.rt.slots.clone().acquire_owned().await;
                inner2
                    .waiting
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let permit = permit.ok()?;
                if *shutdown2.borrow() != RunState::Run {
                    return None;
                }
                inner2.rt.metrics.in_flight_add(1);
                let span = info_span!("object", kind = %inner2.kind, key = %k2);
                let next = inner2.process(&k2).instrument(span).await;
                inner2.rt.metrics.in_flight_add(-1);
                drop(permit);
                next
            });
            task_keys.insert(handle.id(), key);
        }
        let due_now = due.range(..(Instant::now(), u64::MAX)).count();
        inner.rt.metrics.set_queued(
            &inner.kind,
            due_now + inner.waiting.load(std::sync::atomic::Ordering::Relaxed),
        );
        let next_due = due.first_key_value().map(|((t, _), _)| *t);
        tokio::select! {
            changed = shutdown.changed() => {
                // A dropped sender means the operator is gone: stop as well.
                if changed.is_err() { break; }
            }
            msg = rx.recv(), if !rx_closed => match msg {
                Some((k, at)) => schedule(k, at, &mut due, &mut due_of, &running, &mut dirty, &mut seq),
                None => {
                    // All producers (watches, resync) ended: keep serving
                    // what is scheduled, but stop polling the channel.
                    warn!(kind = %inner.kind, "all event sources ended");
                    rx_closed = true;
                }
            },
            Some(res) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let (id, next) = match res {
                    Ok((id, next)) => (id, next),
                    Err(e) => {
                        error!(error = %e, kind = %inner.kind, "object task failed");
                        (e.id(), Some(Instant::now() + Duration::from_secs(5)))
                    }
                };
                if let Some(key) = task_keys.remove(&id) {
                    running.remove(&key);
                    if let Some(at) = dirty.remove(&key) {
                        schedule(key.clone(), at, &mut due, &mut due_of, &running, &mut dirty, &mut seq);
                    }
                    if let Some(at) = next {
                        schedule(key, at, &mut due, &mut due_of, &running, &mut dirty, &mut seq);
                    }
                }
            }
            _ = async {
                match next_due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }

    background.abort_all();
    let drained = if *shutdown.borrow() == RunState::Cancel {
        false
    } else {
        // Graceful shutdown: stop watching, let in-flight handlers finish,
        // unless the grace period ends or leadership is lost meanwhile.
        let grace = inner.rt.config.shutdown_timeout;
        let drain =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} });
        let lost = async {
            // A dropped sender means the operator is gone and aborts us anyway.
            if shutdown.wait_for(|s| *s == RunState::Cancel).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = drain => {
                if r.is_err() {
                    warn!(kind = %inner.kind, "shutdown timeout: cancelling in-flight handlers");
                }
                r.is_ok()
            }
            _ = lost => false,
        }
    };
    if !drained {
        if *shutdown.borrow() == RunState::Cancel {
            warn!(kind = %inner.kind, "leadership lost: cancelling in-flight handlers");
        }
        // Dropping an object task drops its handler run, which aborts the
        // handler's task (see `invoke`): nothing of it is recorded.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    info!(kind = %inner.kind, "controller stopped");
}

/// The current state of the object during one processing cycle.
struct Current<K> {
    raw: Value,
    dobj: DynamicObject,
    obj: Arc<K>,
}

enum CauseOutcome {
    /// No handler of the cause applies to the object: nothing ran, nothing
    /// was written.
    Nothing,
    Done,
    Pending(Option<Instant>),
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The part of an object that handlers react to: everything but `metadata`,
/// `status`, `apiVersion` and `kind`.
pub(crate) fn essence(raw: &Value) -> Value {
    let mut e = raw.clone();
    if let Value::Object(m) = &mut e {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    e
}

impl<K> Inner<K>
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
    fn dyn_api(&self, ns: Option<&str>) -> Api<DynamicObject> {
        match ns {
            Some(ns) if self.namespaced => {
                Api::namespaced_with(self.rt.client.clone(), ns, &self.ar)
            }
            _ => Api::all_with(self.rt.client.clone(), &self.ar),
        }
    }

    fn store_get(&self, key: &Key) -> Option<Arc<DynamicObject>> {
        self.store.lock().ok()?.get(key).cloned()
    }

    /// Keeps the last version of a deleted object for the event handlers.
    fn remember_deleted(&self, key: Key, last: Arc<DynamicObject>) {
        if !self.handlers.iter().any(|h| h.kind == HandlerKind::Event) {
            return;
        }
        if let Ok(mut d) = self.deleted.lock() {
            d.insert(key, last);
        }
    }

    /// Runs the event handlers once for an object deleted from the API, with
    /// its last known version. Not retried: there is nothing left to retry on.
    async fn deliver_deleted(self: &Arc<Self>, last: &DynamicObject) {
        let cur = match self.parse(last.clone()) {
            Ok(c) => c,
            Err((_, msg)) => {
                debug!(error = %msg, "deleted object does not deserialise: event handlers skipped");
                return;
            }
        };
        for h in self.handlers.iter() {
            if h.kind != HandlerKind::Event || !self.passes(h, &cur) {
                continue;
            }
            let mut ctx = self.context(h, Cause::Event, &cur, 0, Vec::new(), None);
            ctx.watch_event = Some(WatchEventType::Deleted);
            if let Err(e) = self.invoke(h, ctx, false).await {
                warn!(handler = %h.id, error = %e.message(), "event handler failed on the deleted object; not retried");
            }
        }
    }

    async fn process(self: &Arc<Self>, key: &Key) -> Option<Instant> {
        self.rt.metrics.cycle(&self.kind);
        let gone = self.deleted.lock().ok().and_then(|mut d| d.remove(key));
        if let Some(last) = gone {
            self.deliver_deleted(&last).await;
            // A recreated object with the same name starts afresh.
            if let Ok(mut s) = self.states.lock() {
                s.remove(key);
            }
        }
        let Some(dobj) = self.store_get(key) else {
            if let Ok(mut s) = self.states.lock() {
                s.remove(key);
            }
            debug!("object gone");
            return None;
        };
        let mut st = self
            .states
            .lock()
            .ok()
            .and_then(|mut s| s.remove(key))
            .unwrap_or_default();
        let next = self.process_object((*dobj).clone(), &mut st).await;
        if self.store_get(key).is_some()
            && let Ok(mut s) = self.states.lock()
        {
            s.insert(key.clone(), st);
        }
        next
    }

    fn parse(&self, dobj: DynamicObject) -> Result<Current<K>, (Value, String)> {
        let raw = match serde_json::to_value(&dobj) {
            Ok(v) => v,
            Err(e) => return Err((Value::Null, e.to_string())),
        };
        match serde_path_to_error::deserialize::<_, K>(&raw) {
            Ok(obj) => Ok(Current {
                raw,
                dobj,
                obj: Arc::new(obj),
            }),
            Err(e) => {
                let path = e.path().to_string();
                let msg = if path == "." || path.is_empty() {
                    e.inner().to_string()
                } else {
                    format!("field `{path}`: {}", e.inner())
                };
                Err((raw, msg))
            }
        }
    }

    /// Replaces `cur` with a newer object (from a write response or the store).
    fn update_current(&self, cur: &mut Current<K>, obj: DynamicObject) {
        store_insert(&self.store, obj.clone());
        match self.parse(obj) {
            Ok(c) => *cur = c,
            Err((_, msg)) => warn!(error = %msg, "object written by us does not deserialise"),
        }
    }

    /// Picks up a newer version of the object from the store (written by a
    /// handler through its context).
    fn refresh(&self, cur: &mut Current<K>) {
        let key = key_of(&cur.dobj);
        if let Some(o) = self.store_get(&key)
            && rv_of(&o) > rv_of(&cur.dobj)
            && let Ok(c) = self.parse((*o).clone())
        {
            *cur = c;
        }
    }

    async fn process_object(
        self: &Arc<Self>,
        dobj: DynamicObject,
        st: &mut ObjState,
    ) -> Option<Instant> {
        let mut cur = match self.parse(dobj.clone()) {
            Ok(c) => c,
            Err((_, msg)) if dobj.metadata.deletion_timestamp.is_some() => {
                // Delete handlers need a typed object: without one they cannot
                // run, and keeping the finalizer would block deletion forever.
                return self.release_invalid(&dobj, &msg).await;
            }
            Err((raw, msg)) => {
                self.report_invalid(&dobj, &raw, &msg, st).await;
                return None;
            }
        };
        st.invalid_reported = None;
        if conditions_of(&cur.raw)
            .iter()
            .any(|c| c.type_ == INVALID_OBJECT && c.status == "True")
        {
            let generation = cur.dobj.metadata.generation;
            self.write_condition(
                &mut cur,
                INVALID_OBJECT,
                "False",
                "Valid",
                "the object deserialises",
                generation,
            )
            .await;
        }

        let has_delete = self.handlers.iter().any(|h| h.kind == HandlerKind::Delete);
        let mut next: Option<Instant> = None;

        if cur.dobj.metadata.deletion_timestamp.is_some() {
            if self.has_finalizer(&cur.dobj) {
                match self.run_cause(Cause::Delete, &mut cur).await {
                    CauseOutcome::Done | CauseOutcome::Nothing => {
                        if let Err(e) = self.remove_finalizer(&cur.dobj).await {
                            return Some(retry_after_write_error(&e, "removing the finalizer"));
                        }
                        info!("finalizer removed");
                    }
                    CauseOutcome::Pending(t) => next = t,
                }
            }
            return next;
        }

        if has_delete
            && !self.has_finalizer(&cur.dobj)
            && let Err(e) = self.add_finalizer(&mut cur).await
        {
            return Some(retry_after_write_error(&e, "adding the finalizer"));
        }

        let has_cause_handlers = self.handlers.iter().any(|h| {
            matches!(
                h.kind,
                HandlerKind::Create
                    | HandlerKind::Update
                    | HandlerKind::Resume
                    | HandlerKind::Field { .. }
                    | HandlerKind::Delete
            )
        });
        let has_resume = self.handlers.iter().any(|h| h.kind == HandlerKind::Resume);
        if !has_resume {
            st.resumed = true;
        }
        if has_cause_handlers {
            for _ in 0..4 {
                let last = self.last_handled(&cur);
                let cause = match last {
                    None => Cause::Create,
                    Some(_) if !st.resumed => Cause::Resume,
                    Some(l) if l != essence(&cur.raw) => Cause::Update,
                    Some(_) => break,
                };
                match self.run_cause(cause, &mut cur).await {
                    CauseOutcome::Done => {
                        if matches!(cause, Cause::Create | Cause::Resume) {
                            st.resumed = true;
                        }
                    }
                    CauseOutcome::Nothing if cause == Cause::Resume => st.resumed = true,
                    CauseOutcome::Nothing => break,
                    CauseOutcome::Pending(t) => {
                        next = min_opt(next, t);
                        break;
                    }
                }
            }
        }

        // Timers.
        let now = Instant::now();
        for h in self.handlers.iter() {
            let HandlerKind::Timer {
                interval,
                initial_delay,
            } = h.kind
            else {
                continue;
            };
            if !self.passes(h, &cur) {
                st.timers.remove(&h.id);
                continue;
            }
            if let Some(stopped_at) = st.timer_stopped.get(&h.id) {
                let current = crate::progress::digest(&essence(&cur.raw));
                if *stopped_at == current {
                    continue;
                }
                info!(handler = %h.id, "the object changed: restarting the stopped timer");
                st.timer_stopped.remove(&h.id);
                st.timer_failures.remove(&h.id);
                st.timers.insert(h.id.clone(), now + initial_delay);
            }
            let due = *st.timers.entry(h.id.clone()).or_insert(now + initial_delay);
            if due > Instant::now() {
                next = min_opt(next, Some(due));
                continue;
            }
            let fails = st.timer_failures.get(&h.id).copied().unwrap_or(0);
            let ctx = self.context(h, Cause::Timer, &cur, fails, Vec::new(), None);
            let res = self.invoke(h, ctx, fails > 0).await;
            self.refresh(&mut cur);
            let at = match res {
                Ok(()) => {
                    st.timer_failures.remove(&h.id);
                    self.clear_failure(&mut cur, h).await;
                    Instant::now() + interval
                }
                Err(e) => {
                    let fails = fails + 1;
                    let exhausted = h.retries.is_some_and(|limit| fails > limit);
                    if e.is_permanent() || exhausted {
                        let shown = if e.is_permanent() {
                            e
                        } else {
                            HandlerError::permanent(format!(
                                "gave up after {fails} failed runs: {}",
                                e.message()
                            ))
                        };
                        self.report_failure(&mut cur, h, Cause::Timer, &shown, fails, true, None)
                            .await;
                        // Retrying cannot help until the object changes.
                        st.timers.remove(&h.id);
                        st.timer_failures.remove(&h.id);
                        st.timer_stopped
                            .insert(h.id.clone(), crate::progress::digest(&essence(&cur.raw)));
                        continue;
                    }
                    let delay = match &e {
                        HandlerError::Temporary { delay: Some(d), .. } => *d,
                        _ => h.backoff.delay(fails - 1),
                    };
                    self.report_failure(&mut cur, h, Cause::Timer, &e, fails, false, Some(delay))
                        .await;
                    st.timer_failures.insert(h.id.clone(), fails);
                    Instant::now() + delay
                }
            };
            st.timers.insert(h.id.clone(), at);
            next = min_opt(next, Some(at));
        }

        // Level-triggered event handlers.
        let generation = cur.dobj.metadata.generation;
        for h in self.handlers.iter() {
            if h.kind != HandlerKind::Event || !self.passes(h, &cur) {
                continue;
            }
            let (fails, not_before, fgeneration) = st
                .event_backoff
                .get(&h.id)
                .copied()
                .unwrap_or((0, now, generation));
            if not_before > Instant::now() && fgeneration == generation {
                next = min_opt(next, Some(not_before));
                continue;
            }
            let mut ctx = self.context(h, Cause::Event, &cur, fails, Vec::new(), None);
            ctx.watch_event = Some(WatchEventType::Applied);
            let res = self.invoke(h, ctx, fails > 0).await;
            self.refresh(&mut cur);
            match res {
                Ok(()) => {
                    st.event_backoff.remove(&h.id);
                    self.clear_failure(&mut cur, h).await;
                }
                Err(e) => {
                    let delay = match &e {
                        HandlerError::Temporary { delay: Some(d), .. } => *d,
                        _ => h.backoff.delay(fails),
                    };
                    let permanent = e.is_permanent();
                    self.report_failure(
                        &mut cur,
                        h,
                        Cause::Event,
                        &e,
                        fails + 1,
                        permanent,
                        (!permanent).then_some(delay),
                    )
                    .await;
                    if permanent {
                        // Not retried; runs again on the next event.
                        st.event_backoff.remove(&h.id);
                    } else {
                        let at = Instant::now() + delay;
                        st.event_backoff
                            .insert(h.id.clone(), (fails + 1, at, generation));
                        next = min_opt(next, Some(at));
                    }
                }
            }
        }
        next
    }

    fn passes(&self, h: &Handler<K>, cur: &Current<K>) -> bool {
        h.filters
            .matches(cur.obj.labels(), cur.obj.annotations(), &cur.obj)
    }

    fn last_handled(&self, cur: &Current<K>) -> Option<Value> {
        cur.dobj
            .metadata
            .annotations
            .as_ref()?
            .get(&self.rt.last_handled_key())
            .and_then(|s| serde_json::from_str(s).ok())
    }

    fn context(
        &self,
        h: &Handler<K>,
        cause: Cause,
        cur: &Current<K>,
        retry: u32,
        diff: Vec<crate::diff::DiffItem>,
        old: Option<Value>,
    ) -> Context<K> {
        let shared = ObjectShared {
            rt: self.rt.clone(),
            ar: self.ar.clone(),
            namespaced: self.namespaced,
            status: Mutex::new(cur.raw.get("status").cloned().unwrap_or(Value::Null)),
            observe: {
                let store = self.store.clone();
                Arc::new(move |o: DynamicObject| store_insert(&store, o))
            },
            raw_meta: cur.dobj.metadata.clone(),
        };
        let field = match &h.kind {
            HandlerKind::Field { path } => Some(path.clone()),
            _ => None,
        };
        Context {
            object: cur.obj.clone(),
            cause,
            watch_event: None,
            retry,
            diff,
            handler_id: h.id.clone(),
            field,
            old_essence: old.map(Arc::new),
            new_essence: Arc::new(essence(&cur.raw)),
            shared: Arc::new(shared),
        }
    }

    /// Runs one handler in its own task (a panic is a failed run), with the
    /// handler's timeout.
    async fn invoke(
        &self,
        h: &Handler<K>,
        ctx: Context<K>,
        is_retry: bool,
    ) -> Result<(), HandlerError> {
        let started = std::time::Instant::now();
        let span = info_span!("handler", id = %h.id, cause = %ctx.cause, retry = ctx.retry);
        let fut = (h.func)(ctx).instrument(span.clone());
        let mut task = tokio::spawn(fut);
        // If this cycle is cancelled (shutdown timeout), cancel the handler too.
        let _cancel_with_cycle = AbortGuard(task.abort_handle());
        let res = match h.timeout {
            Some(t) => match tokio::time::timeout(t, &mut task).await {
                Ok(r) => r,
                Err(_) => {
                    task.abort();
                    let _ = task.await;
                    Ok(Err(HandlerError::temporary(
                        format!("handler timed out after {t:?}"),
                        None,
                    )))
                }
            },
            None => task.await,
        };
        let res = match res {
            Ok(r) => r,
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic payload".into());
                Err(HandlerError::Other(anyhow::anyhow!(
                    "handler panicked: {msg}"
                )))
            }
            Err(e) => Err(HandlerError::Other(anyhow::anyhow!(
                "handler task cancelled: {e}"
            ))),
        };
        self.rt
            .metrics
            .handler_run(&self.kind, &h.id, is_retry, started.elapsed());
        match &res {
            Ok(()) => span.in_scope(|| {
                info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "handler succeeded"
                )
            }),
            Err(e) => {
                self.rt
                    .metrics
                    .handler_failure(&self.kind, &h.id, e.is_permanent());
            }
        }
        res
    }

    fn cause_handlers(
        &self,
        cause: Cause,
        old: &Value,
        new: &Value,
        cur: &Current<K>,
    ) -> Vec<&Handler<K>> {
        self.handlers
            .iter()
            .filter(|h| match (&h.kind, cause) {
                (HandlerKind::Create, Cause::Create)
                | (HandlerKind::Update, Cause::Update)
                | (HandlerKind::Delete, Cause::Delete)
                | (HandlerKind::Resume, Cause::Resume) => true,
                (HandlerKind::Field { path }, Cause::Create) => {
                    get_path(new, path).is_some_and(|v| !v.is_null())
                }
                (HandlerKind::Field { path }, Cause::Update) => {
                    get_path(old, path) != get_path(new, path)
                }
                _ => false,
            })
            .filter(|h| self.passes(h, cur))
            .collect()
    }

    /// Runs the not yet finished handlers of `cause`, keeping their progress
    /// in the progress annotation; when all are done, writes the final
    /// annotations (last-handled configuration) and returns `Done`.
    async fn run_cause(self: &Arc<Self>, cause: Cause, cur: &mut Current<K>) -> CauseOutcome {
        let last = self.last_handled(cur);
        let old = last.clone().unwrap_or_else(|| json!({}));
        let new = essence(&cur.raw);
        let full_diff = diff(&old, &new);
        let handlers = self.cause_handlers(cause, &old, &new, cur);
        let pkey = self.rt.progress_key();
        let had_progress = cur
            .dobj
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(&pkey));
        let mut progress = Progress::parse(
            cur.dobj
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(&pkey))
                .map(String::as_str),
            cause.as_str(),
        );
        if cause == Cause::Update {
            let d = crate::progress::digest(&new);
            if progress.essence.as_ref().is_some_and(|e| *e != d) {
                info!(
                    "the object changed during its update handling: starting the update handlers over"
                );
                progress.handlers.clear();
            }
            progress.essence = Some(d);
        }
        if handlers.is_empty() && !had_progress {
            // E.g. all create handlers are filtered out for this object: do
            // not mark it as handled (no write at all).
            return CauseOutcome::Nothing;
        }
        let mut wait: Option<Instant> = None;
        let mut written_progress = had_progress;
        debug!(%cause, handlers = handlers.len(), "processing cause");
        for h in handlers.iter() {
            let rec = progress.handlers.entry(h.id.clone()).or_default();
            if rec.is_done() {
                continue;
            }
            let w = rec.wait(Timestamp::now());
            if !w.is_zero() {
                wait = min_opt(wait, Some(Instant::now() + w));
                continue;
            }
            if rec.started.is_none() {
                rec.started = Some(Timestamp::now());
            }
            let retry = rec.retries;
            let (diff_items, field_old) = match &h.kind {
                HandlerKind::Field { path } => (filter_path(&full_diff, path), last.clone()),
                _ => (full_diff.clone(), last.clone()),
            };
            let ctx = self.context(h, cause, cur, retry, diff_items, field_old);
            let res = self.invoke(h, ctx, retry > 0).await;
            self.refresh(cur);
            let rec = progress.handlers.entry(h.id.clone()).or_default();
            match res {
                Ok(()) => {
                    rec.success = true;
                    rec.stopped = Some(Timestamp::now());
                    rec.delayed = None;
                    // Also clears a failure left by an earlier cause (no
                    // request unless such a condition is there).
                    self.clear_failure(cur, h).await;
                }
                Err(e) => {
                    let limit = h.retries.or(if cause == Cause::Delete {
                        Some(self.rt.config.delete_retries)
                    } else {
                        None
                    });
                    rec.retries += 1;
                    rec.message = Some(truncate(&e.message(), 1024));
                    let exhausted = limit.is_some_and(|l| rec.retries > l);
                    let permanent = e.is_permanent() || exhausted;
                    let mut delay = None;
                    if permanent {
                        rec.failure = true;
                        rec.stopped = Some(Timestamp::now());
                        rec.delayed = None;
                        if exhausted && !e.is_permanent() {
                            rec.message = Some(truncate(
                                &format!(
                                    "gave up after {} failed runs: {}",
                                    rec.retries,
                                    e.message()
                                ),
                                1024,
                            ));
                        }
                    } else {
                        let d = match &e {
                            HandlerError::Temporary { delay: Some(d), .. } => *d,
                            _ => h.backoff.delay(rec.retries - 1),
                        };
                        rec.delayed = Timestamp::now().checked_add(d).ok();
                        rec.delays_ms.push(d.as_millis() as u64);
                        // Keep the annotation small under endless retries.
                        if rec.delays_ms.len() > 20 {
                            let excess = rec.delays_ms.len() - 20;
                            rec.delays_ms.drain(..excess);
                        }
                        wait = min_opt(wait, Some(Instant::now() + d));
                        delay = Some(d);
                    }
                    let retries = rec.retries;
                    let shown = if exhausted && !e.is_permanent() {
                        HandlerError::permanent(rec.message.clone().unwrap_or_default())
                    } else {
                        e
                    };
                    self.report_failure(cur, h, cause, &shown, retries, permanent, delay)
                        .await;
                }
            }
            let all_done = handlers
                .iter()
                .all(|h| progress.handlers.get(&h.id).is_some_and(|r| r.is_done()));
            if !all_done {
                let value = progress.to_annotation();
                let current = cur
                    .dobj
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(&pkey));
                if current != Some(&value) {
                    let patch = json!({"metadata": {"annotations": {pkey.clone(): value}}});
                    if let Err(e) = self.patch_meta(cur, patch).await {
                        warn!(error = %e, "writing progress failed");
                        return CauseOutcome::Pending(Some(
                            Instant::now() + Duration::from_secs(1),
                        ));
                    }
                    written_progress = true;
                }
            }
        }
        let all_done = handlers
            .iter()
            .all(|h| progress.handlers.get(&h.id).is_some_and(|r| r.is_done()));
        if !all_done {
            return CauseOutcome::Pending(wait);
        }
        let mut ann = serde_json::Map::new();
        if written_progress {
            ann.insert(pkey.clone(), Value::Null);
        }
        if matches!(cause, Cause::Create | Cause::Update) {
            let lh = serde_json::to_string(&new).unwrap_or_default();
            ann.insert(self.rt.last_handled_key(), Value::String(lh));
        }
        if cause == Cause::Delete {
            // The finalizer removal writes the annotation removal too.
            return CauseOutcome::Done;
        }
        if !ann.is_empty() {
            let patch = json!({"metadata": {"annotations": ann}});
            if let Err(e) = self.patch_meta(cur, patch).await {
                warn!(error = %e, "writing the handled state failed");
                return CauseOutcome::Pending(Some(Instant::now() + Duration::from_secs(1)));
            }
        }
        info!(%cause, "all handlers done");
        CauseOutcome::Done
    }

    async fn patch_meta(&self, cur: &mut Current<K>, patch: Value) -> Result<(), Error> {
        let api = self.dyn_api(cur.dobj.metadata.namespace.as_deref());
        self.rt.metrics.api_request("patch");
        let name = cur.dobj.metadata.name.clone().unwrap_or_default();
        let res = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.update_current(cur, res);
        Ok(())
    }

    async fn add_finalizer(&self, cur: &mut Current<K>) -> Result<(), Error> {
        let mut fins = cur.dobj.metadata.finalizers.clone().unwrap_or_default();
        fins.push(self.rt.finalizer());
        let patch = json!({"metadata": {"finalizers": fins, "resourceVersion": cur.dobj.metadata.resource_version}});
        self.patch_meta(cur, patch).await?;
        debug!("finalizer added");
        Ok(())
    }

    /// Whether `dobj` carries our finalizer.
    fn has_finalizer(&self, dobj: &DynamicObject) -> bool {
        let fin = self.rt.finalizer();
        dobj.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.contains(&fin))
    }

    /// Removes our finalizer (and a leftover progress annotation) from
    /// `dobj`, guarded by its resourceVersion; a vanished object is fine.
    async fn remove_finalizer(&self, dobj: &DynamicObject) -> Result<(), Error> {
        let fin = self.rt.finalizer();
        let fins: Vec<String> = dobj
            .metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| *f != fin)
            .collect();
        let mut patch = json!({"metadata": {"finalizers": fins, "resourceVersion": dobj.metadata.resource_version}});
        if dobj
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(&self.rt.progress_key()))
        {
            patch["metadata"]["annotations"] = json!({ self.rt.progress_key(): null });
        }
        let api = self.dyn_api(dobj.metadata.namespace.as_deref());
        self.rt.metrics.api_request("patch");
        let name = dobj.metadata.name.clone().unwrap_or_default();
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(o) => {
                store_insert(&self.store, o);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn report_failure(
        &self,
        cur: &mut Current<K>,
        h: &Handler<K>,
        cause: Cause,
        e: &HandlerError,
        retries: u32,
        permanent: bool,
        delay: Option<Duration>,
    ) {
        let msg = truncate(&e.message(), 4000);
        let text = match delay {
            Some(d) if !permanent => format!(
                "handler {} ({cause}) failed {retries} time(s), retrying in {:.1}s: {msg}",
                h.id,
                d.as_secs_f64()
            ),
            _ => format!(
                "handler {} ({cause}) failed permanently after {retries} run(s): {msg}",
                h.id
            ),
        };
        if permanent {
            error!(handler = %h.id, %cause, retries, error = %msg, "handler failed permanently");
        } else {
            warn!(handler = %h.id, %cause, retries, error = %msg, delay_ms = delay.map(|d| d.as_millis() as u64), "handler failed, will retry");
        }
        let reference = cur.obj.object_ref(&());
        let reason = if permanent {
            "HandlerGaveUp"
        } else {
            "HandlerFailed"
        };
        if let Err(err) = self
            .rt
            .publish_event(EventType::Warning, reason, &text, &h.id, &reference)
            .await
        {
            debug!(error = %err, "posting the event failed");
        }
        let generation = cur.dobj.metadata.generation;
        self.write_condition(
            cur,
            HANDLER_FAILED,
            "True",
            &conditions::reason_from_id(&h.id),
            &text,
            generation,
        )
        .await;
    }

    async fn clear_failure(&self, cur: &mut Current<K>, h: &Handler<K>) {
        let reason = conditions::reason_from_id(&h.id);
        let failing = conditions_of(&cur.raw)
            .iter()
            .any(|c| c.type_ == HANDLER_FAILED && c.status == "True" && c.reason == reason);
        if failing {
            let generation = cur.dobj.metadata.generation;
            let text = format!("handler {} succeeded", h.id);
            self.write_condition(cur, HANDLER_FAILED, "False", &reason, &text, generation)
                .await;
        }
    }

    /// Read-modify-write of one condition in `.status.conditions`, guarded by
    /// the resourceVersion; retried on conflict with a fresh read.
    async fn write_condition(
        &self,
        cur: &mut Current<K>,
        type_: &str,
        status: &str,
        reason: &str,
        message: &str,
        generation: Option<i64>,
    ) {
        let api = self.dyn_api(cur.dobj.metadata.namespace.as_deref());
        let name = cur.dobj.metadata.name.clone().unwrap_or_default();
        let mut raw = cur.raw.clone();
        for attempt in 0..3 {
            let mut conds = conditions_of(&raw);
            if !conditions::upsert(&mut conds, type_, status, reason, message, generation) {
                return;
            }
            let rv = raw
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null);
            let patch =
                json!({"metadata": {"resourceVersion": rv}, "status": {"conditions": conds}});
            self.rt.metrics.api_request("patch_status");
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(o) => {
                    if let Ok(v) = serde_json::to_value(&o) {
                        cur.raw["status"] = v.get("status").cloned().unwrap_or(Value::Null);
                    }
                    let rv = o.metadata.resource_version.clone();
                    store_insert(&self.store, o);
                    cur.dobj.metadata.resource_version = rv.clone();
                    cur.raw["metadata"]["resourceVersion"] = json!(rv);
                    return;
                }
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < 2 => {
                    self.rt.metrics.api_request("get");
                    match api.get(&name).await {
                        Ok(o) => match serde_json::to_value(&o) {
                            Ok(v) => raw = v,
                            Err(_) => return,
                        },
                        Err(e) => {
                            debug!(error = %e, "re-reading for a condition failed");
                            return;
                        }
                    }
                }
                Err(e) => {
                    debug!(error = %e, condition = type_, "writing a condition failed (does the kind have a status subresource with conditions?)");
                    return;
                }
            }
        }
    }

    /// An object that is being deleted but cannot be deserialised: its delete
    /// handlers cannot run, so our finalizer is removed without them (else the
    /// object could never go), and a Warning Event says so.
    async fn release_invalid(&self, dobj: &DynamicObject, msg: &str) -> Option<Instant> {
        if !self.has_finalizer(dobj) {
            return None;
        }
        if let Err(e) = self.remove_finalizer(dobj).await {
            return Some(retry_after_write_error(
                &e,
                "removing the finalizer of an invalid object",
            ));
        }
        let text = format!(
            "the object cannot be deserialised ({msg}); its delete handlers were skipped and the finalizer was removed"
        );
        error!(error = %msg, "invalid object deleted: delete handlers skipped, finalizer removed");
        // Posted after the removal succeeded, so a retried removal does not
        // post it twice.
        if let Err(e) = self
            .rt
            .publish_event(
                EventType::Warning,
                INVALID_OBJECT_DELETED,
                &truncate(&text, 1000),
                "Delete",
                &self.reference_of(dobj),
            )
            .await
        {
            debug!(error = %e, "posting the event failed");
        }
        None
    }

    fn reference_of(&self, dobj: &DynamicObject) -> k8s_openapi::api::core::v1::ObjectReference {
        k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(self.ar.api_version.clone()),
            kind: Some(self.ar.kind.clone()),
            name: dobj.metadata.name.clone(),
            namespace: dobj.metadata.namespace.clone(),
            uid: dobj.metadata.uid.clone(),
            ..Default::default()
        }
    }

    async fn report_invalid(
        &self,
        dobj: &DynamicObject,
        raw: &Value,
        msg: &str,
        st: &mut ObjState,
    ) {
        if st.invalid_reported.as_deref() == Some(msg) {
            return;
        }
        error!(error = %msg, "object cannot be deserialised; not handling it");
        let text = format!("cannot deserialise the object: {msg}");
        let reference = self.reference_of(dobj);
        let already = conditions_of(raw)
            .iter()
            .any(|c| c.type_ == INVALID_OBJECT && c.status == "True" && c.message == text);
        if !already {
            if let Err(e) = self
                .rt
                .publish_event(
                    EventType::Warning,
                    INVALID_OBJECT,
                    &text,
                    "Deserialize",
                    &reference,
                )
                .await
            {
                debug!(error = %e, "posting the event failed");
            }
            let mut conds = conditions_of(raw);
            conditions::upsert(
                &mut conds,
                INVALID_OBJECT,
                "True",
                "DeserializationFailed",
                &text,
                dobj.metadata.generation,
            );
            let api = self.dyn_api(dobj.metadata.namespace.as_deref());
            let patch = json!({"metadata": {"resourceVersion": dobj.metadata.resource_version}, "status": {"conditions": conds}});
            self.rt.metrics.api_request("patch_status");
            match api
                .patch_status(
                    &dobj.metadata.name.clone().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(o) => store_insert(&self.store, o),
                Err(e) => debug!(error = %e, "writing the InvalidObject condition failed"),
            }
        }
        st.invalid_reported = Some(msg.to_string());
    }
}

/// At most `max` bytes of `s` (on a char boundary), marked when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

struct AbortGuard(tokio::task::AbortHandle);

impl Drop for AbortGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Logs a failed metadata write and says when to look again: a conflict
/// (the object changed meanwhile; its new version is on its way through the
/// watch) is retried soon and quietly, anything else after a second.
fn retry_after_write_error(e: &Error, what: &str) -> Instant {
    if let Error::Kube(kube::Error::Api(s)) = e
        && s.code == 409
    {
        debug!(error = %e, "{what}: conflict, retrying with the newer version");
        return Instant::now() + Duration::from_millis(200);
    }
    warn!(error = %e, "{what} failed");
    Instant::now() + Duration::from_secs(1)
}

fn conditions_of(raw: &Value) -> Vec<Condition> {
    raw.pointer("/status/conditions")
        .and_then(|v| serde_json::from_value::<Vec<Condition>>(v.clone()).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééé", 3), "é…");
    }

    #[test]
    fn essence_strips_metadata_and_status() {
        let raw = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a"}, "spec": {"a": 1}, "status": {"b": 2}, "data": {"k": "v"}});
        assert_eq!(essence(&raw), json!({"spec": {"a": 1}, "data": {"k": "v"}}));
    }

    #[test]
    fn store_keeps_newer_versions() {
        let store: Store = Arc::new(Mutex::new(HashMap::new()));
        let mk = |rv: &str| {
            let mut o = DynamicObject::new(
                "a",
                &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
            );
            o.metadata.namespace = Some("ns".into());
            o.metadata.resource_version = Some(rv.into());
            o
        };
        store_insert(&store, mk("8"));
        assert!(store.lock().unwrap().is_empty(), "writes do not add keys");
        store_put(&store, mk("10"), false);
        store_insert(&store, mk("9"));
        let key = Key {
            namespace: Some("ns".into()),
            name: "a".into(),
        };
        let rv = || {
            store
                .lock()
                .unwrap()
                .get(&key)
                .unwrap()
                .metadata
                .resource_version
                .clone()
        };
        assert_eq!(rv().as_deref(), Some("10"));
        store_insert(&store, mk("11"));
        assert_eq!(rv().as_deref(), Some("11"));
    }
}
