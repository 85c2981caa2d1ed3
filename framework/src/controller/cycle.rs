//! One processing cycle of one object: tell a departed object's deletion
//! from its leaving the selection, plan (see [`plan`](super::plan)), act on
//! the finalizer or handle the cause, persist the outcome with one patch,
//! then run timers and event handlers.

use super::Inner;
use super::cache::{Key, store_insert};
use super::diffbase::DiffBase;
use super::finalizer;
use super::invoke::{Current, ObjState, essence};
use super::persist::Persisted;
use super::plan::{HandlerFacts, ObjectFacts, Plan, plan};
use super::report::retry_after_write_error;
use crate::error::Error;
use crate::handler::{Cause, HandlerKind};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

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
    pub(crate) async fn process(self: &Arc<Self>, key: &Key) -> Option<Instant> {
        self.rt.metrics.cycle(&self.kind);
        let gone = self.departed.lock().ok().and_then(|mut d| d.remove(key));
        if let Some(last) = gone
            && let Some(retry) = self.settle_departed(key, &last).await
        {
            return Some(retry);
        }
        let Some(dobj) = self.store_get(key) else {
            self.sync_daemons(key, None);
            if let Ok(mut s) = self.states.lock() {
                s.remove(key);
            }
            debug!("object gone");
            return None;
        };
        let uid = dobj.metadata.uid.clone();
        let mut st = take_state(&self.states, key, &uid);
        let next = self.process_object((*dobj).clone(), &mut st).await;
        if self.store_get(key).is_some_and(|o| o.metadata.uid == uid)
            && let Ok(mut s) = self.states.lock()
        {
            s.insert(key.clone(), st);
        }
        next
    }

    /// An object left the watch: deleted, or no longer selected by the
    /// watch's label/field selectors. Only a deletion is one: event handlers
    /// then see it; an object that merely left the selection is released
    /// (our finalizer removed, no delete handler run). `Some`: retry then.
    async fn settle_departed(&self, key: &Key, last: &Arc<DynamicObject>) -> Option<Instant> {
        if self
            .store_get(key)
            .is_some_and(|o| o.metadata.uid == last.metadata.uid)
        {
            return None; // selected again meanwhile
        }
        let events = self.has_event_handlers();
        if !events && !self.has_finalizer(last) {
            return None;
        }
        let api = self.dyn_api(last.metadata.namespace.as_deref());
        self.rt.metrics.api_request("get");
        match api.get_opt(&last.name_any()).await {
            Err(e) => {
                warn!(error = %e, "checking whether the object was deleted failed");
                self.departed(key.clone(), last.clone());
                Some(crate::time::from_now(Duration::from_secs(1)))
            }
            Ok(Some(o)) if o.metadata.uid == last.metadata.uid => {
                if self.has_finalizer(&o) {
                    if let Err(e) = self.remove_finalizer(&o).await {
                        self.departed(key.clone(), last.clone());
                        return Some(retry_after_write_error(
                            &e,
                            "releasing an object that left the selection",
                        ));
                    }
                    info!(
                        "the object left the watch's selection: finalizer removed, no delete handler run"
                    );
                } else {
                    debug!("the object left the watch's selection");
                }
                None
            }
            _ => {
                if events {
                    self.deliver_deleted(last).await;
                }
                None
            }
        }
    }

    async fn process_object(
        self: &Arc<Self>,
        dobj: DynamicObject,
        st: &mut ObjState,
    ) -> Option<Instant> {
        let key = super::cache::key_of(&dobj);
        let parsed = self.parse(dobj.clone());
        self.sync_daemons(&key, parsed.as_ref().ok());
        let mut cur = match parsed {
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
        self.clear_invalid(&mut cur).await;
        if !self.handlers.iter().any(|h| h.kind == HandlerKind::Resume) {
            st.resumed = true;
        }
        let deleting = cur.dobj.metadata.deletion_timestamp.is_some();
        let actual = self.persistence.read(&cur.dobj.metadata);
        let known = st.unsaved.clone().unwrap_or(actual);
        let base = known.base.as_deref().and_then(DiffBase::parse);
        let now_essence = essence(&cur.raw);
        let facts: Vec<HandlerFacts<'_>> = self
            .handlers
            .iter()
            .map(|h| HandlerFacts {
                kind: &h.kind,
                matches: self.passes(h, &cur),
                optional: h.optional,
                values: (!h.values.is_empty()).then_some(&h.values),
            })
            .collect();
        let planned = plan(
            &facts,
            &ObjectFacts {
                deleting,
                has_finalizer: self.has_finalizer(&cur.dobj),
                essence: &now_essence,
                base: base.as_ref(),
                resumed: st.resumed,
                deletion_handled: st.deletion_handled,
            },
        );
        let mut next = None;
        match planned {
            Plan::AddFinalizer => {
                if let Err(e) = self.add_finalizer(&mut cur).await {
                    return Some(retry_after_write_error(&e, "adding the finalizer"));
                }
                debug!("finalizer added");
                // One write per cycle: the rest follows at once.
                return Some(Instant::now());
            }
            Plan::ReleaseFinalizer => {
                if let Err(e) = self.remove_finalizer(&cur.dobj).await {
                    return Some(retry_after_write_error(&e, "removing the finalizer"));
                }
                info!("no delete handler matches the object: finalizer removed");
                return (!deleting).then(Instant::now);
            }
            Plan::Handle { cause, handlers } => {
                let run = self
                    .run_cause(
                        cause,
                        &handlers,
                        &mut cur,
                        base.as_ref(),
                        known.progress.as_deref(),
                    )
                    .await;
                if cause == Cause::Delete && run.done {
                    if let Err(e) = self.remove_finalizer(&cur.dobj).await {
                        // Remembered, so the delete handlers do not run again.
                        st.unsaved = Some(Persisted {
                            base: known.base,
                            progress: Some(run.progress.to_annotation()),
                        });
                        return Some(retry_after_write_error(&e, "removing the finalizer"));
                    }
                    st.unsaved = None;
                    st.deletion_handled = true;
                    info!("delete handlers done: finalizer removed");
                    return None;
                }
                let desired = match (run.done, cause) {
                    (true, Cause::Create | Cause::Update) => Persisted {
                        base: Some(self.diff_base(&run.essence)),
                        progress: None,
                    },
                    (true, _) => Persisted {
                        base: known.base,
                        progress: None,
                    },
                    (false, _) => Persisted {
                        base: known.base,
                        progress: Some(run.progress.to_annotation()),
                    },
                };
                if let Err(at) = self.persist(&mut cur, desired, st).await {
                    return Some(at);
                }
                if run.done {
                    if matches!(cause, Cause::Create | Cause::Resume) {
                        // An object created in this process needs no resume.
                        st.resumed = true;
                    }
                    info!(%cause, "all handlers done");
                    // Another cause may follow (an update after a resume, or
                    // a change made meanwhile): look again at once.
                    return Some(Instant::now());
                }
                if deleting {
                    return run.wait;
                }
                next = run.wait;
            }
            Plan::Idle if deleting => return None,
            Plan::Idle => {
                // No resume is due (or none matches) in this process.
                st.resumed = true;
                // Writes what an earlier cycle failed to write, and drops a
                // progress record no cause needs (nothing when in step).
                let desired = Persisted {
                    base: known.base,
                    progress: None,
                };
                if let Err(at) = self.persist(&mut cur, desired, st).await {
                    return Some(at);
                }
            }
        }
        let next = self.run_timers(&mut cur, st, next).await;
        self.run_events(&mut cur, st, next).await
    }

    /// The diff base to store for `essence`.
    fn diff_base(&self, essence: &Value) -> String {
        let paths: Vec<&str> = self.field_paths.iter().map(String::as_str).collect();
        DiffBase::of(essence, &paths, self.digest_only).encode()
    }

    /// Writes `desired` (one merge patch of what differs; nothing when the
    /// object holds it already). On failure it is kept in memory and used
    /// by the next cycles until written. `Err`: retry then.
    async fn persist(
        &self,
        cur: &mut Current<K>,
        desired: Persisted,
        st: &mut ObjState,
    ) -> Result<(), Instant> {
        let actual = self.persistence.read(&cur.dobj.metadata);
        let Some(patch) = self.persistence.patch(&actual, &desired) else {
            st.unsaved = None;
            return Ok(());
        };
        match self.patch_meta(cur, patch).await {
            Ok(()) => {
                st.unsaved = None;
                Ok(())
            }
            Err(e) => {
                st.unsaved = Some(desired);
                Err(retry_after_write_error(
                    &e,
                    "writing progress and diff base",
                ))
            }
        }
    }

    async fn patch_meta(&self, cur: &mut Current<K>, patch: Value) -> Result<(), Error> {
        let api = self.dyn_api(cur.dobj.metadata.namespace.as_deref());
        self.rt.metrics.api_request("patch");
        let res = api
            .patch(
                &cur.dobj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        self.update_current(cur, res);
        Ok(())
    }

    async fn add_finalizer(&self, cur: &mut Current<K>) -> Result<(), Error> {
        let patch = finalizer::add(cur.dobj.finalizers(), &self.rt.finalizer());
        let api = self.dyn_api(cur.dobj.metadata.namespace.as_deref());
        self.rt.metrics.api_request("patch");
        let res = api
            .patch(
                &cur.dobj.name_any(),
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
            .await?;
        self.update_current(cur, res);
        Ok(())
    }

    /// Removes our finalizer from `dobj` with a JSON patch that tests its
    /// index first; a vanished object is fine.
    pub(crate) async fn remove_finalizer(&self, dobj: &DynamicObject) -> Result<(), Error> {
        let Some(patch) = finalizer::remove(dobj.finalizers(), &self.rt.finalizer()) else {
            return Ok(());
        };
        let api = self.dyn_api(dobj.metadata.namespace.as_deref());
        self.rt.metrics.api_request("patch");
        match api
            .patch(
                &dobj.name_any(),
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
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
}

/// Takes the memory kept about the object `key` out of `states`: the
/// memory of the object with `uid`, or a fresh one when what is kept belongs
/// to another object of the same name (deleted and recreated without the
/// deletion being seen, e.g. while the watch was down).
fn take_state(states: &Mutex<HashMap<Key, ObjState>>, key: &Key, uid: &Option<String>) -> ObjState {
    states
        .lock()
        .ok()
        .and_then(|mut s| s.remove(key))
        .filter(|s| s.uid == *uid)
        .unwrap_or_else(|| ObjState {
            uid: uid.clone(),
            ..Default::default()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_belongs_to_one_uid_not_to_a_name() {
        let states = Mutex::new(HashMap::new());
        let key = Key {
            namespace: Some("ns".into()),
            name: "a".into(),
        };
        let u1 = Some("uid-1".to_string());
        let u2 = Some("uid-2".to_string());
        let mut st = take_state(&states, &key, &u1);
        assert_eq!(st.uid, u1);
        st.resumed = true;
        st.timer_stopped.insert("t".into(), "digest".into());
        states.lock().expect("lock").insert(key.clone(), st);
        // A new object of the same name: nothing of the old one carries over.
        let fresh = take_state(&states, &key, &u2);
        assert_eq!(fresh.uid, u2);
        assert!(!fresh.resumed && fresh.timer_stopped.is_empty());
        // The same object gets its memory back.
        let mut st = take_state(&states, &key, &u1);
        st.resumed = true;
        states.lock().expect("lock").insert(key.clone(), st);
        assert!(take_state(&states, &key, &u1).resumed);
    }
}
