//! One object during a cycle (its parsed form, the memory kept about it) and
//! running one handler: its context, its own task, its timeout.

use super::Inner;
use super::cache::{Key, key_of, rv_of, store_insert};
use super::persist::Persisted;
use crate::context::{Context, ObjectShared};
use crate::diff::DiffItem;
use crate::error::HandlerError;
use crate::handler::{Cause, Handler, HandlerKind};
use kube::Resource;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

/// What the controller remembers about one object between cycles, in this
/// process. Valid only for the object with `uid`.
#[derive(Default)]
pub(crate) struct ObjState {
    /// The object this memory belongs to.
    pub(crate) uid: Option<String>,
    /// Resume handlers ran (or are not needed) in this process.
    pub(crate) resumed: bool,
    /// The delete handlers of the object's deletion are done (optional
    /// ones, when other finalizers hold the object, run only once).
    pub(crate) deletion_handled: bool,
    /// What the object should hold (progress, diff base) when writing it
    /// failed: used instead of what it holds, so a finished handler does not
    /// run again, and written again by the next cycle.
    pub(crate) unsaved: Option<Persisted>,
    /// Next run of each timer.
    pub(crate) timers: HashMap<String, Instant>,
    /// Failed timer runs in a row, per timer (reset on success).
    pub(crate) timer_failures: HashMap<String, u32>,
    /// Timers stopped by a permanent failure: the essence digest at the
    /// stop; they start over when the essence (the spec) changes.
    pub(crate) timer_stopped: HashMap<String, String>,
    /// Event-handler backoff: (failures, not before, generation at failure).
    pub(crate) event_backoff: HashMap<String, (u32, Instant, Option<i64>)>,
    /// The last bad-input message reported.
    pub(crate) invalid_reported: Option<String>,
}

/// The current state of the object during one processing cycle.
pub(crate) struct Current<K> {
    pub(crate) raw: Value,
    pub(crate) dobj: DynamicObject,
    pub(crate) obj: Arc<K>,
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

pub(crate) fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// What a handler is told about the change it handles.
pub(crate) struct Change {
    pub(crate) diff: Vec<DiffItem>,
    /// The last handled essence, when known in full.
    pub(crate) old: Option<Value>,
    /// `false` when the diff base is a digest (no diff, no old values).
    pub(crate) known: bool,
}

impl Change {
    pub(crate) fn none() -> Change {
        Change {
            diff: Vec::new(),
            old: None,
            known: true,
        }
    }
}

struct AbortGuard(tokio::task::AbortHandle);

impl Drop for AbortGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
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
    pub(crate) fn dyn_api(&self, ns: Option<&str>) -> Api<DynamicObject> {
        match ns {
            Some(ns) if self.namespaced => {
                Api::namespaced_with(self.rt.client.clone(), ns, &self.ar)
            }
            _ => Api::all_with(self.rt.client.clone(), &self.ar),
        }
    }

    pub(crate) fn store_get(&self, key: &Key) -> Option<Arc<DynamicObject>> {
        self.store.get(key)
    }

    /// Notes that the object left the watch (deleted or unselected).
    pub(crate) fn departed(&self, key: Key, last: Arc<DynamicObject>) {
        if let Ok(mut d) = self.departed.lock() {
            d.insert(key, last);
        }
    }

    /// Whether `dobj` carries our finalizer.
    pub(crate) fn has_finalizer(&self, dobj: &DynamicObject) -> bool {
        let fin = self.rt.finalizer();
        dobj.finalizers().contains(&fin)
    }

    pub(crate) fn has_event_handlers(&self) -> bool {
        self.handlers.iter().any(|h| h.kind == HandlerKind::Event)
    }

    pub(crate) fn parse(&self, dobj: DynamicObject) -> Result<Current<K>, (Value, String)> {
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
    pub(crate) fn update_current(&self, cur: &mut Current<K>, obj: DynamicObject) {
        store_insert(&self.store, obj.clone());
        match self.parse(obj) {
            Ok(c) => *cur = c,
            Err((_, msg)) => warn!(error = %msg, "object written by us does not deserialise"),
        }
    }

    /// Picks up a newer version of the object from the store (written by a
    /// handler through its context).
    pub(crate) fn refresh(&self, cur: &mut Current<K>) {
        let key = key_of(&cur.dobj);
        if let Some(o) = self.store_get(&key)
            && o.metadata.uid == cur.dobj.metadata.uid
            && rv_of(&o) > rv_of(&cur.dobj)
            && let Ok(c) = self.parse((*o).clone())
        {
            *cur = c;
        }
    }

    pub(crate) fn passes(&self, h: &Handler<K>, cur: &Current<K>) -> bool {
        h.filters
            .matches(cur.obj.labels(), cur.obj.annotations(), &cur.obj)
    }

    pub(crate) fn context(
        &self,
        h: &Handler<K>,
        cause: Cause,
        cur: &Current<K>,
        retry: u32,
        change: Change,
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
            cache: self.store.clone(),
            indexes: self.indexes.clone(),
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
            diff: change.diff,
            handler_id: h.id.clone(),
            field,
            old_essence: change.old.map(Arc::new),
            diff_known: change.known,
            new_essence: Arc::new(essence(&cur.raw)),
            shared: Arc::new(shared),
            cancel: None,
        }
    }

    /// The time limit of one run of `h`: its own, else the operator's.
    fn timeout_of(&self, h: &Handler<K>) -> Option<Duration> {
        h.timeout.or(self.rt.config.handler_timeout)
    }

    /// Runs one handler in its own task (a panic is a failed run), within
    /// its timeout (a timed-out run is a failed, retryable run).
    pub(crate) async fn invoke(
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
        let res = match self.timeout_of(h) {
            Some(t) => {
                match tokio::time::timeout(t.min(crate::time::FAR_FUTURE), &mut task).await {
                    Ok(r) => r,
                    Err(_) => {
                        task.abort();
                        let _ = task.await;
                        Ok(Err(HandlerError::temporary(
                            format!("handler timed out after {t:?}"),
                            None,
                        )))
                    }
                }
            }
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
                    elapsed_ms = crate::time::millis(started.elapsed()),
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
}
