//! Reporting: failure conditions (one per handler id), Warning Events, and
//! objects that cannot be deserialised.

use super::cache::store_insert;
use super::invoke::{Current, ObjState};
use super::{
    HANDLER_FAILED, INVALID_OBJECT, INVALID_OBJECT_DELETED, Inner, handler_failed_condition,
    truncate,
};
use crate::conditions;
use crate::context::EventType;
use crate::error::{Error, HandlerError};
use crate::handler::{Cause, Handler};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use kube::api::{DynamicObject, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt::Debug;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, error, warn};

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
    /// Logs a failed run, posts a Warning Event (`HandlerFailed`, or
    /// `HandlerGaveUp` when final) and sets the handler's condition.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn report_failure(
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
            warn!(handler = %h.id, %cause, retries, error = %msg, delay_ms = delay.map(crate::time::millis), "handler failed, will retry");
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
        let type_ = handler_failed_condition(&h.id);
        let reason = if permanent { "GaveUp" } else { "Retrying" };
        self.write_condition(cur, &type_, "True", reason, &text, generation)
            .await;
    }

    /// Turns the handler's failure condition `False` after a success (no
    /// request unless it is `True`).
    pub(crate) async fn clear_failure(&self, cur: &mut Current<K>, h: &Handler<K>) {
        let type_ = handler_failed_condition(&h.id);
        let failing = conditions_of(&cur.raw)
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True");
        if failing {
            let generation = cur.dobj.metadata.generation;
            let text = format!("handler {} succeeded", h.id);
            self.write_condition(cur, &type_, "False", "Succeeded", &text, generation)
                .await;
        }
    }

    /// Turns a leftover `InvalidObject=True` condition `False` once the
    /// object deserialises again.
    pub(crate) async fn clear_invalid(&self, cur: &mut Current<K>) {
        if conditions_of(&cur.raw)
            .iter()
            .any(|c| c.type_ == INVALID_OBJECT && c.status == "True")
        {
            let generation = cur.dobj.metadata.generation;
            self.write_condition(
                cur,
                INVALID_OBJECT,
                "False",
                "Valid",
                "the object deserialises",
                generation,
            )
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
            // The one shared condition of earlier versions, superseded by
            // the per-handler ones: dropped along with any write.
            conditions::remove(&mut conds, HANDLER_FAILED);
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
    pub(crate) async fn release_invalid(&self, dobj: &DynamicObject, msg: &str) -> Option<Instant> {
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

    pub(crate) async fn report_invalid(
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

/// Logs a failed metadata write and says when to look again: a conflict
/// (the object changed meanwhile; its new version is on its way through the
/// watch) is retried soon and quietly, anything else after a second.
pub(crate) fn retry_after_write_error(e: &Error, what: &str) -> Instant {
    if let Error::Kube(kube::Error::Api(s)) = e
        && s.code == 409
    {
        debug!(error = %e, "{what}: conflict, retrying with the newer version");
        return Instant::now() + Duration::from_millis(200);
    }
    warn!(error = %e, "{what} failed");
    Instant::now() + Duration::from_secs(1)
}

pub(crate) fn conditions_of(raw: &Value) -> Vec<Condition> {
    raw.pointer("/status/conditions")
        .and_then(|v| serde_json::from_value::<Vec<Condition>>(v.clone()).ok())
        .unwrap_or_default()
}
