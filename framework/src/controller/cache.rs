//! The controller's cache of the watched objects, keyed by namespace/name,
//! and the hook that keeps the indexes in step with it.

use kube::api::DynamicObject;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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

/// Called with an object's key and its new version (`None`: removed)
/// whenever the cache's entry for it changes; keeps the indexes current.
pub(crate) type Hook = Arc<dyn Fn(&Key, Option<&DynamicObject>) + Send + Sync>;

/// The watched objects, as last seen (watch events and write responses),
/// with the hook that keeps the controller's indexes in step.
#[derive(Default)]
pub(crate) struct Cache {
    objects: Mutex<HashMap<Key, Arc<DynamicObject>>>,
    hook: RwLock<Option<Hook>>,
    synced: AtomicBool,
}

/// The cache of one controller, shared with its store views and contexts.
pub(crate) type Store = Arc<Cache>;

impl Cache {
    /// Sets the index hook (replacing an earlier one).
    pub(crate) fn set_hook(&self, hook: Hook) {
        if let Ok(mut h) = self.hook.write() {
            *h = Some(hook);
        }
    }

    /// Tells the indexes about a changed entry. Called with the objects'
    /// lock held, so that index updates happen in the cache's order.
    fn changed(&self, key: &Key, obj: Option<&DynamicObject>) {
        if let Ok(h) = self.hook.read()
            && let Some(h) = h.as_ref()
        {
            h(key, obj);
        }
    }

    pub(crate) fn get(&self, key: &Key) -> Option<Arc<DynamicObject>> {
        self.objects.lock().ok()?.get(key).cloned()
    }

    pub(crate) fn keys(&self) -> Vec<Key> {
        self.objects
            .lock()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// All entries (a snapshot).
    pub(crate) fn values(&self) -> Vec<Arc<DynamicObject>> {
        self.objects
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn remove(&self, key: &Key) -> Option<Arc<DynamicObject>> {
        let mut s = self.objects.lock().ok()?;
        let gone = s.remove(key);
        if gone.is_some() {
            self.changed(key, None);
        }
        gone
    }

    /// Empties the cache (a controller starting again, e.g. after regaining
    /// the lease, rebuilds it from a fresh list).
    pub(crate) fn clear(&self) {
        self.synced.store(false, Ordering::Release);
        if let Ok(mut s) = self.objects.lock() {
            for k in s.keys() {
                self.changed(k, None);
            }
            s.clear();
        }
    }

    /// Whether the first complete list has been applied.
    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Marks the cache synced; `true` if it was not before.
    pub(crate) fn set_synced(&self) -> bool {
        !self.synced.swap(true, Ordering::AcqRel)
    }
}

/// `o` as a `K`, if it deserialises.
pub(crate) fn typed<K: DeserializeOwned>(o: &DynamicObject) -> Option<K> {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
}

pub(crate) fn key_of(obj: &DynamicObject) -> Key {
    Key {
        namespace: obj.metadata.namespace.clone(),
        name: obj.metadata.name.clone().unwrap_or_default(),
    }
}

pub(crate) fn rv_of(o: &DynamicObject) -> Option<u64> {
    o.metadata.resource_version.as_deref()?.parse().ok()
}

/// Inserts `obj` into the store unless the store already has a newer version
/// (resourceVersions compared as integers, as etcd produces them). Only the
/// watcher adds new keys; writes made by the framework (`only_update`) just
/// refresh existing entries of the same object (same uid), so a write
/// answered after the object's deletion event cannot resurrect it, nor
/// overwrite a new object of the same name.
pub(crate) fn store_put(store: &Cache, obj: DynamicObject, only_update: bool) {
    if let Ok(mut s) = store.objects.lock() {
        put(store, &mut s, obj, only_update);
    }
}

fn put(
    cache: &Cache,
    s: &mut HashMap<Key, Arc<DynamicObject>>,
    mut obj: DynamicObject,
    only_update: bool,
) {
    // Nobody reads them; they are often the larger part of an object.
    obj.metadata.managed_fields = None;
    let key = key_of(&obj);
    {
        match s.get(&key) {
            Some(old) => {
                if let (Some(a), Some(b)) = (rv_of(old), rv_of(&obj))
                    && a > b
                {
                    return;
                }
                if only_update && old.metadata.uid != obj.metadata.uid {
                    return;
                }
            }
            None if only_update => return,
            None => {}
        }
        cache.changed(&key, Some(&obj));
        s.insert(key, Arc::new(obj));
    }
}

/// Replaces the store's content by a complete relist, at once (one lock):
/// the listed objects replace older versions (a newer one, from one of our
/// writes, is kept); entries not listed are removed and returned: they left
/// the watch (deleted, or unselected) while it was down.
pub(crate) fn apply_relist(
    store: &Cache,
    listed: HashMap<Key, DynamicObject>,
) -> Vec<(Key, Arc<DynamicObject>)> {
    let Ok(mut s) = store.objects.lock() else {
        return Vec::new();
    };
    let gone: Vec<Key> = s
        .keys()
        .filter(|k| !listed.contains_key(*k))
        .cloned()
        .collect();
    let gone = gone
        .into_iter()
        .filter_map(|k| s.remove(&k).map(|o| (k, o)))
        .collect::<Vec<_>>();
    for (k, _) in &gone {
        store.changed(k, None);
    }
    for (_, o) in listed {
        put(store, &mut s, o, false);
    }
    gone
}

/// Refreshes the store with an object returned by one of our writes.
pub(crate) fn store_insert(store: &Cache, obj: DynamicObject) {
    store_put(store, obj, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ApiResource;

    #[test]
    fn a_relist_replaces_the_content_at_once_and_reports_what_went() {
        let store = Cache::default();
        let named = |name: &str, rv: &str| {
            let mut o = mk(rv, name);
            o.metadata.name = Some(name.into());
            o
        };
        for o in [named("stays", "5"), named("gone", "6"), named("newer", "9")] {
            store_put(&store, o, false);
        }
        let listed: HashMap<Key, DynamicObject> =
            [named("stays", "7"), named("newer", "8"), named("new", "7")]
                .into_iter()
                .map(|o| (key_of(&o), o))
                .collect();
        let gone = apply_relist(&store, listed);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0.name, "gone");
        let s = store.objects.lock().unwrap();
        let rv = |n: &str| {
            let k = Key {
                namespace: Some("ns".into()),
                name: n.into(),
            };
            s.get(&k).and_then(|o| o.metadata.resource_version.clone())
        };
        assert_eq!(rv("stays").as_deref(), Some("7"));
        assert_eq!(rv("newer").as_deref(), Some("9"), "a newer write is kept");
        assert_eq!(rv("new").as_deref(), Some("7"));
        assert_eq!(rv("gone"), None);
    }

    #[test]
    fn managed_fields_are_not_kept() {
        let store = Cache::default();
        let mut o = mk("1", "u");
        o.metadata.managed_fields = Some(vec![Default::default()]);
        store_put(&store, o, false);
        let s = store.objects.lock().unwrap();
        assert!(s.values().all(|o| o.metadata.managed_fields.is_none()));
    }

    fn mk(rv: &str, uid: &str) -> DynamicObject {
        let mut o = DynamicObject::new(
            "a",
            &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
        );
        o.metadata.namespace = Some("ns".into());
        o.metadata.resource_version = Some(rv.into());
        o.metadata.uid = Some(uid.into());
        o
    }

    #[test]
    fn store_keeps_newer_versions_of_the_same_object() {
        let store = Cache::default();
        store_insert(&store, mk("8", "u1"));
        assert!(store.keys().is_empty(), "writes do not add keys");
        store_put(&store, mk("10", "u1"), false);
        store_insert(&store, mk("9", "u1"));
        let key = Key {
            namespace: Some("ns".into()),
            name: "a".into(),
        };
        let get = || store.get(&key).unwrap();
        assert_eq!(get().metadata.resource_version.as_deref(), Some("10"));
        store_insert(&store, mk("11", "u1"));
        assert_eq!(get().metadata.resource_version.as_deref(), Some("11"));
        // A late write response about an older object of the same name.
        store_put(&store, mk("12", "u2"), false);
        store_insert(&store, mk("13", "u1"));
        assert_eq!(get().metadata.uid.as_deref(), Some("u2"));
    }
}
