//! A read-only view of a controller's cache of its watched objects.

use crate::controller::{Cache, Key, typed};
use kube::api::DynamicObject;
use serde::de::DeserializeOwned;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// A read-only view of the objects a [`Controller`](crate::Controller)
/// watches, as its cache holds them: the latest version seen on the watch
/// or returned by the framework's own writes (so a handler sees its own
/// finalizer, progress and status writes), `metadata.managedFields`
/// stripped.
///
/// Get one from [`Controller::store`](crate::Controller::store) (e.g. for
/// the mapper of [`Controller::watches`](crate::Controller::watches)) or
/// from [`Context::store`](crate::Context::store) in a handler. Cloning is
/// cheap; all clones see the same cache.
///
/// # Guarantees and caveats
///
/// * Empty until the controller runs and while it does not (a standby
///   replica under leader election, after shutdown); [`Store::is_synced`]
///   tells when the first complete list has been applied. A relist
///   replaces the content at once, never item by item.
/// * Eventually consistent: an entry may lag the API server by the watch's
///   latency, and an object that was deleted may still be listed until its
///   deletion event arrives. Do not take absence as proof of deletion.
/// * Entries belong to one object, not to a name: after a delete and
///   re-create under the same name the entry is the new object (another
///   `uid`); [`Store::get_if_uid`] only returns the object you mean.
/// * Each read deserialises the entries it returns into `K` (objects that
///   do not deserialise are left out); for lookups on a hot path define an
///   [`index`](crate::Controller::index) instead of scanning [`Store::list`].
pub struct Store<K> {
    cache: Arc<Cache>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Store {
            cache: self.cache.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Store<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("len", &self.cache.keys().len())
            .field("synced", &self.cache.is_synced())
            .finish()
    }
}

impl<K: DeserializeOwned> Store<K> {
    pub(crate) fn new(cache: Arc<Cache>) -> Self {
        Store {
            cache,
            _kind: PhantomData,
        }
    }

    /// The object `name` in `namespace` (`None` for cluster-scoped kinds).
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        self.raw(namespace, name)
            .and_then(|o| typed(&o))
            .map(Arc::new)
    }

    /// The object `name` in `namespace` if it is still the one with `uid`
    /// (not a newer object of the same name).
    pub fn get_if_uid(&self, namespace: Option<&str>, name: &str, uid: &str) -> Option<Arc<K>> {
        self.raw(namespace, name)
            .filter(|o| o.metadata.uid.as_deref() == Some(uid))
            .and_then(|o| typed(&o))
            .map(Arc::new)
    }

    /// Every cached object (in no particular order).
    pub fn list(&self) -> Vec<Arc<K>> {
        self.filtered(|_| true)
    }

    /// The cached objects of one namespace (in no particular order).
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.filtered(|o| o.metadata.namespace.as_deref() == Some(namespace))
    }

    /// How many objects are cached (including any that do not deserialise).
    pub fn len(&self) -> usize {
        self.cache.keys().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the controller's first complete list has been applied (and
    /// it has not stopped since).
    pub fn is_synced(&self) -> bool {
        self.cache.is_synced()
    }

    fn raw(&self, namespace: Option<&str>, name: &str) -> Option<Arc<DynamicObject>> {
        self.cache.get(&Key {
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        })
    }

    fn filtered(&self, keep: impl Fn(&DynamicObject) -> bool) -> Vec<Arc<K>> {
        self.cache
            .values()
            .iter()
            .filter(|o| keep(o))
            .filter_map(|o| typed(o))
            .map(Arc::new)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::store_put;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(ns: &str, name: &str, uid: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": "1",
                         "managedFields": [{"manager": "x"}]},
            "data": {"k": name}
        }))
        .expect("object")
    }

    #[test]
    fn reads_by_key_uid_and_namespace() {
        let cache = Arc::new(Cache::default());
        let store = Store::<ConfigMap>::new(cache.clone());
        assert!(store.is_empty() && !store.is_synced());
        for o in [cm("a", "x", "u1"), cm("a", "y", "u2"), cm("b", "x", "u3")] {
            store_put(&cache, o, false);
        }
        let x = store.get(Some("a"), "x").expect("cached");
        assert_eq!(
            x.data.as_ref().and_then(|d| d.get("k")).map(String::as_str),
            Some("x")
        );
        assert!(
            x.metadata.managed_fields.is_none(),
            "managedFields stripped"
        );
        assert!(
            store.get(None, "x").is_none(),
            "the namespace is part of the key"
        );
        assert!(store.get_if_uid(Some("a"), "x", "u1").is_some());
        assert!(
            store.get_if_uid(Some("a"), "x", "u9").is_none(),
            "another object of that name"
        );
        assert_eq!(store.len(), 3);
        assert_eq!(store.list().len(), 3);
        let mut in_a: Vec<String> = store
            .list_namespace("a")
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        in_a.sort();
        assert_eq!(in_a, ["x", "y"]);
        // A re-created object replaces the entry of its name.
        store_put(&cache, cm("a", "x", "u4"), false);
        assert!(store.get_if_uid(Some("a"), "x", "u1").is_none());
        assert!(store.get_if_uid(Some("a"), "x", "u4").is_some());
    }
}
