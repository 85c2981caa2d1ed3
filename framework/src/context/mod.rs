//! The handler context: the object, what changed, and helpers to act on it.

use crate::diff::{DiffItem, get_path};
use crate::error::Error;
use crate::handler::{Cause, WatchEventType};
use crate::runtime::Runtime;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::NamespaceScope;
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::any::TypeId;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

mod access;

/// The severity of an Event posted with [`Context::event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Informational.
    Normal,
    /// Something went wrong.
    Warning,
}

pub(crate) type Observer = Arc<dyn Fn(DynamicObject) + Send + Sync>;

/// Per-object data shared by the contexts of one processing cycle.
pub(crate) struct ObjectShared {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) ar: ApiResource,
    pub(crate) namespaced: bool,
    /// The latest known `.status` of the object (updated by `patch_status`).
    pub(crate) status: Mutex<Value>,
    /// Feeds objects returned by writes back into the controller's cache.
    pub(crate) observe: Observer,
    pub(crate) raw_meta: kube::api::ObjectMeta,
    /// The controller's cache (for [`Context::store`]).
    pub(crate) cache: Arc<crate::controller::Cache>,
    /// The controller's indexes (for [`Context::index`]).
    pub(crate) indexes: Arc<crate::index::Indexes>,
}

/// Everything a handler gets: the object, why it runs, what changed, and
/// helpers to talk to the API server.
///
/// All public fields are plain data; cloning a context is cheap.
pub struct Context<K> {
    /// The object as it was when the handler started.
    pub object: Arc<K>,
    /// Why the handler runs.
    pub cause: Cause,
    /// For event handlers ([`on_event`](crate::on_event)): whether the object
    /// exists ([`WatchEventType::Applied`]) or was deleted from the API
    /// ([`WatchEventType::Deleted`], then `object` is its last known
    /// version). `None` for all other handlers.
    pub watch_event: Option<WatchEventType>,
    /// How many runs of this handler for this cause failed before (0 on the
    /// first attempt).
    pub retry: u32,
    /// What changed between the last successfully handled configuration and
    /// the object now: for create everything is an `Add`; update, resume and
    /// delete handlers get the whole diff; field handlers only the items
    /// below their field; timers and event handlers an empty list. Empty
    /// also when the last handled configuration is only known as a digest
    /// (see [`Context::diff_known`]).
    pub diff: Vec<DiffItem>,
    /// The id of the running handler.
    pub handler_id: String,
    pub(crate) field: Option<String>,
    pub(crate) old_essence: Option<Arc<Value>>,
    pub(crate) diff_known: bool,
    pub(crate) new_essence: Arc<Value>,
    pub(crate) shared: Arc<ObjectShared>,
    /// For daemons: becomes `true` when the daemon must stop.
    pub(crate) cancel: Option<tokio::sync::watch::Receiver<bool>>,
}

impl<K> Clone for Context<K> {
    fn clone(&self) -> Self {
        Context {
            object: self.object.clone(),
            cause: self.cause,
            watch_event: self.watch_event,
            retry: self.retry,
            diff: self.diff.clone(),
            handler_id: self.handler_id.clone(),
            field: self.field.clone(),
            old_essence: self.old_essence.clone(),
            diff_known: self.diff_known,
            new_essence: self.new_essence.clone(),
            shared: self.shared.clone(),
            cancel: self.cancel.clone(),
        }
    }
}

/// What [`Context::apply_children`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildrenReport {
    /// Names of the children applied (created or updated).
    pub applied: Vec<String>,
    /// Names of the desired children that already matched (nothing sent).
    pub unchanged: Vec<String>,
    /// Names of owned children deleted because they were not desired.
    pub deleted: Vec<String>,
}

pub(crate) fn is_namespaced<R: Resource>() -> bool
where
    R::Scope: 'static,
{
    TypeId::of::<R::Scope>() == TypeId::of::<NamespaceResourceScope>()
}

/// Applies an RFC 7386 JSON merge patch to `target`.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = Value::Object(Default::default());
        }
        if let Value::Object(t) = target {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
    } else {
        *target = patch.clone();
    }
}

impl<K> Context<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    /// A Kubernetes client (the operator's).
    pub fn client(&self) -> Client {
        self.shared.rt.client.clone()
    }

    /// An `Api<K>` over all namespaces (for cluster-scoped kinds the one to
    /// use; for namespaced kinds see [`Context::api`]).
    pub fn api_all(&self) -> Api<K> {
        Api::all(self.client())
    }

    /// The object's name.
    pub fn name(&self) -> String {
        self.object.name_any()
    }

    /// The object's namespace (`None` for cluster-scoped objects).
    pub fn namespace(&self) -> Option<String> {
        self.object.namespace()
    }

    /// The operator's prefix (annotations, finalizer, field manager).
    pub fn prefix(&self) -> &str {
        &self.shared.rt.prefix
    }

    /// The field manager used for server-side apply.
    pub fn field_manager(&self) -> &str {
        &self.shared.rt.field_manager
    }

    /// The previous value: for a field handler the old value of its field,
    /// otherwise the whole last handled essence (everything but `metadata` and
    /// `status`). `None` if there was none (creation, or the field was unset).
    pub fn old_value(&self) -> Option<Value> {
        let old = self.old_essence.as_deref()?;
        match &self.field {
            Some(p) => get_path(old, p).cloned(),
            None => Some(old.clone()),
        }
    }

    /// Whether [`Context::diff`] and [`Context::old_value`] are known. They
    /// are not when the last handled configuration was stored as a digest
    /// only: always for Secrets, for essences larger than 64 KiB, and with
    /// [`Controller::digest_diff_base`](crate::Controller::digest_diff_base).
    /// Then an update (or field) handler knows that the object (or its
    /// field) changed, but not from what: `diff` is empty and `old_value()`
    /// is `None`.
    pub fn diff_known(&self) -> bool {
        self.diff_known
    }

    /// The current value: for a field handler the new value of its field,
    /// otherwise the whole current essence. `None` if the field is unset.
    pub fn new_value(&self) -> Option<Value> {
        match &self.field {
            Some(p) => get_path(&self.new_essence, p).cloned(),
            None => Some((*self.new_essence).clone()),
        }
    }

    /// The object's latest known `.status` (including this handler's own
    /// [`patch_status`](Self::patch_status) writes).
    pub fn status(&self) -> Value {
        self.shared
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or(Value::Null)
    }

    fn dyn_api(&self) -> Api<DynamicObject> {
        match self.namespace() {
            Some(ns) if self.shared.namespaced => {
                Api::namespaced_with(self.client(), &ns, &self.shared.ar)
            }
            _ => Api::all_with(self.client(), &self.shared.ar),
        }
    }

    /// Merge-patches the object's `/status` subresource: `status` is the
    /// content of `.status` (e.g. `json!({"phase": "Active"})`), not the whole
    /// object. Nothing is sent when the patch would not change the latest
    /// known status. Lists (such as `conditions`) are replaced whole by a merge
    /// patch, so read-modify-write them (see [`Context::status`] and
    /// [`conditions`](crate::conditions)).
    pub async fn patch_status(&self, status: Value) -> Result<(), Error> {
        let current = self.status();
        let mut merged = current.clone();
        merge_patch(&mut merged, &status);
        if merged == current {
            return Ok(());
        }
        let api = self.dyn_api();
        self.shared.rt.metrics.api_request("patch_status");
        let res = api
            .patch_status(
                &self.name(),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await?;
        if let Ok(mut s) = self.shared.status.lock() {
            *s = res.data.get("status").cloned().unwrap_or(Value::Null);
        }
        (self.shared.observe)(res);
        Ok(())
    }

    /// Posts an Event (events.k8s.io/v1) regarding the object.
    pub async fn event(&self, type_: EventType, reason: &str, note: &str) -> Result<(), Error> {
        let reference = self.object.object_ref(&());
        self.shared
            .rt
            .publish_event(type_, reason, note, &self.handler_id, &reference)
            .await
    }

    /// Makes `child` owned by this object: sets the controller
    /// ownerReference (replacing another controller reference), the namespace
    /// (if the child has none and the owner is namespaced) and the owner labels
    /// `<prefix>/owner-uid` and `<prefix>/owner-name` (the latter when the
    /// name fits a label value). Owned children are garbage-collected with
    /// their owner.
    pub fn adopt<C: Resource<DynamicType = ()>>(&self, child: &mut C) {
        let owner = &self.object;
        let uid = owner.meta().uid.clone().unwrap_or_default();
        let oref = OwnerReference {
            api_version: K::api_version(&()).to_string(),
            kind: K::kind(&()).to_string(),
            name: owner.name_any(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let prefix = self.shared.rt.prefix.clone();
        let ns = self.namespace();
        let meta = child.meta_mut();
        let refs = meta.owner_references.get_or_insert_with(Vec::new);
        refs.retain(|r| r.controller != Some(true) && r.uid != uid);
        refs.push(oref);
        if meta.namespace.is_none() && self.shared.namespaced {
            meta.namespace = ns;
        }
        let labels = meta.labels.get_or_insert_with(Default::default);
        labels.insert(format!("{prefix}/owner-uid"), uid);
        let name = owner.name_any();
        if name.len() <= 63 {
            labels.insert(format!("{prefix}/owner-name"), name);
        }
    }

    /// The label selector that finds this object's adopted children.
    pub fn owner_selector(&self) -> String {
        format!(
            "{}/owner-uid={}",
            self.shared.rt.prefix,
            self.object.meta().uid.clone().unwrap_or_default()
        )
    }

    fn child_api<C: Resource<DynamicType = ()>>(&self, ns: Option<&str>) -> Api<DynamicObject>
    where
        C::Scope: 'static,
    {
        let ar = ApiResource::erase::<C>(&());
        match ns {
            Some(ns) if is_namespaced::<C>() => Api::namespaced_with(self.client(), ns, &ar),
            _ => Api::all_with(self.client(), &ar),
        }
    }

    /// Reconciles the set of owned children of kind `C`: each desired child
    /// is [adopted](Self::adopt) and server-side applied (the operator's field
    /// manager, `force`); owned children of kind `C` (found by the owner label,
    /// in the owner's namespace, or cluster-wide for cluster-scoped owners)
    /// whose name is not among the desired ones are deleted.
    pub async fn apply_children<C>(&self, desired: Vec<C>) -> Result<ChildrenReport, Error>
    where
        C: Resource<DynamicType = ()>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
        C::Scope: 'static,
    {
        let child_namespaced = is_namespaced::<C>();
        let pp = PatchParams::apply(&self.shared.rt.field_manager).force();
        let applied_key = format!("{}/applied", self.shared.rt.prefix);
        let mut report = ChildrenReport::default();
        // What exists now (one list, not one read per child).
        let owner_ns = if self.shared.namespaced {
            self.namespace()
        } else {
            None
        };
        let list_api = self.child_api::<C>(owner_ns.as_deref());
        self.shared.rt.metrics.api_request("list");
        let owned = list_api
            .list(&ListParams::default().labels(&self.owner_selector()))
            .await?;
        let child_key = |ns: Option<String>, name: String| -> (Option<String>, String) {
            (if child_namespaced { ns } else { None }, name)
        };
        let existing: BTreeMap<(Option<String>, String), Value> = owned
            .items
            .iter()
            .filter_map(|o| {
                let v = serde_json::to_value(o).ok()?;
                Some((child_key(o.namespace(), o.name_any()), v))
            })
            .collect();
        let mut keep: BTreeSet<(Option<String>, String)> = BTreeSet::new();
        for mut child in desired {
            self.adopt(&mut child);
            let name = child.name_any();
            if name.is_empty() {
                return Err(Error::Config(format!(
                    "apply_children: a desired {} has no name",
                    C::kind(&())
                )));
            }
            let ns = child.namespace();
            if child_namespaced && ns.is_none() {
                return Err(Error::Config(format!(
                    "apply_children: {} {name} needs a namespace (the owner is cluster-scoped)",
                    C::kind(&())
                )));
            }
            let key = child_key(ns.clone(), name.clone());
            keep.insert(key.clone());
            let body = apply_body::<C>(&child, &applied_key)?;
            let unchanged = existing.get(&key).is_some_and(|ex| {
                let hash = body
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(&applied_key));
                let had = ex
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(&applied_key));
                let mut cmp = body.clone();
                if let Value::Object(m) = &mut cmp {
                    // List items need not carry their type.
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                hash.is_some() && hash == had && is_subset(&cmp, ex)
            });
            if unchanged {
                report.unchanged.push(name);
                continue;
            }
            let api = self.child_api::<C>(ns.as_deref());
            self.shared.rt.metrics.api_request("apply");
            api.patch(&name, &pp, &Patch::Apply(&body)).await?;
            report.applied.push(name);
        }
        let uid = self.object.meta().uid.clone().unwrap_or_default();
        for item in owned.items {
            let key = child_key(item.namespace(), item.name_any());
            let controlled = item
                .owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && r.uid == uid);
            if keep.contains(&key) || !controlled {
                continue;
            }
            let api = self.child_api::<C>(key.0.as_deref());
            self.shared.rt.metrics.api_request("delete");
            match api.delete(&key.1, &DeleteParams::background()).await {
                Ok(_) => report.deleted.push(key.1),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(report)
    }

    /// Creates `child` after adopting it; an existing object of that name is
    /// left as it is (returns `Ok(None)`).
    pub async fn create_child<C>(&self, mut child: C) -> Result<Option<C>, Error>
    where
        C: Resource<DynamicType = ()>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
        C::Scope: 'static,
    {
        self.adopt(&mut child);
        let api = self.child_api::<C>(child.namespace().as_deref());
        let mut body: DynamicObject = serde_json::from_value(serde_json::to_value(&child)?)?;
        body.types = Some(kube::api::TypeMeta {
            api_version: C::api_version(&()).into(),
            kind: C::kind(&()).into(),
        });
        self.shared.rt.metrics.api_request("create");
        match api.create(&PostParams::default(), &body).await {
            Ok(c) => Ok(Some(serde_json::from_value(serde_json::to_value(&c)?)?)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The object's metadata as the framework saw it when the cycle started.
    pub fn raw_metadata(&self) -> &kube::api::ObjectMeta {
        &self.shared.raw_meta
    }
}

impl<K> Context<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    K::Scope: NamespaceScope,
{
    /// An `Api<K>` scoped to the object's namespace (only for namespaced
    /// kinds; use [`Context::api_all`] for cluster-scoped ones).
    pub fn api(&self) -> Api<K> {
        let api = Api::all(self.client());
        match self.namespace() {
            Some(ns) => api.constrain(&ns),
            None => api,
        }
    }
}

/// The server-side-apply body of a child: apiVersion/kind set, server-owned
/// fields removed, and the annotation `applied_key` holding a digest of the
/// rest (so a later apply can tell whether the desired state changed).
fn apply_body<C: Resource<DynamicType = ()> + Serialize>(
    child: &C,
    applied_key: &str,
) -> Result<Value, Error> {
    let mut body = serde_json::to_value(child)?;
    if let Value::Object(m) = &mut body {
        m.insert(
            "apiVersion".into(),
            Value::String(C::api_version(&()).into()),
        );
        m.insert("kind".into(), Value::String(C::kind(&()).into()));
        m.remove("status");
        if let Some(Value::Object(md)) = m.get_mut("metadata") {
            for k in [
                "resourceVersion",
                "managedFields",
                "uid",
                "creationTimestamp",
                "generation",
            ] {
                md.remove(k);
            }
        }
    }
    let hash = crate::progress::digest(&body);
    if let Some(Value::Object(md)) = body.get_mut("metadata") {
        let ann = md
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(a) = ann {
            a.insert(applied_key.to_string(), Value::String(hash));
        }
    }
    Ok(body)
}

/// Whether every field set in `desired` has the same value in `actual`
/// (objects compared key by key, arrays element by element; fields only in
/// `actual`, such as server defaults, are ignored).
pub(crate) fn is_subset(desired: &Value, actual: &Value) -> bool {
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => d.iter().all(|(k, v)| match a.get(k) {
            Some(av) => is_subset(v, av),
            // The server drops nulls and (omitempty) empty lists/maps.
            None => {
                v.is_null()
                    || v.as_array().is_some_and(|x| x.is_empty())
                    || v.as_object().is_some_and(|x| x.is_empty())
            }
        }),
        (Value::Array(d), Value::Array(a)) => {
            d.len() == a.len() && d.iter().zip(a).all(|(x, y)| is_subset(x, y))
        }
        (d, a) => d == a,
    }
}

pub(crate) fn to_kube_event_type(t: EventType) -> KubeEventType {
    match t {
        EventType::Normal => KubeEventType::Normal,
        EventType::Warning => KubeEventType::Warning,
    }
}

pub(crate) fn kube_event(t: EventType, reason: &str, note: &str, action: &str) -> KubeEvent {
    let trunc = |s: &str, n: usize| -> String {
        if s.len() <= n {
            s.to_string()
        } else {
            let mut end = n;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string()
        }
    };
    KubeEvent {
        type_: to_kube_event_type(t),
        reason: trunc(reason, 128),
        note: Some(trunc(note, 1000)),
        action: trunc(if action.is_empty() { "Handle" } else { action }, 128),
        secondary: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_ignores_server_defaults() {
        let desired = json!({"spec": {"a": 1, "l": [{"x": 1}], "n": null}});
        let actual = json!({"spec": {"a": 1, "b": 2, "l": [{"x": 1, "y": 2}]}, "status": {}});
        assert!(is_subset(&desired, &actual));
        assert!(!is_subset(&json!({"spec": {"a": 2}}), &actual));
        assert!(!is_subset(
            &json!({"spec": {"l": [{"x": 1}, {"x": 2}]}}),
            &actual
        ));
        assert!(!is_subset(&json!({"spec": {"c": 1}}), &actual));
        assert!(is_subset(&json!({"spec": {"args": [], "m": {}}}), &actual));
    }

    #[test]
    fn apply_body_has_type_and_digest() {
        let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "c", "resourceVersion": "5", "uid": "u"},
            "data": {"k": "v"}
        }))
        .unwrap();
        let b = apply_body(&cm, "p/applied").unwrap();
        assert_eq!(b["apiVersion"], "v1");
        assert_eq!(b["kind"], "ConfigMap");
        assert!(b["metadata"].get("resourceVersion").is_none());
        let h = b["metadata"]["annotations"]["p/applied"]
            .as_str()
            .unwrap()
            .to_string();
        let mut cm2 = cm.clone();
        cm2.data = Some([("k".to_string(), "w".to_string())].into());
        let b2 = apply_body(&cm2, "p/applied").unwrap();
        assert_ne!(
            b2["metadata"]["annotations"]["p/applied"].as_str().unwrap(),
            h
        );
    }

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1]});
        merge_patch(
            &mut t,
            &json!({"a": null, "b": {"c": 5}, "l": [2], "n": "x"}),
        );
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "l": [2], "n": "x"}));
        let mut n = Value::Null;
        merge_patch(&mut n, &json!({"phase": "A"}));
        assert_eq!(n, json!({"phase": "A"}));
    }
}
