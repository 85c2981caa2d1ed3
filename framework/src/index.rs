//! User-defined indexes over a controller's watched objects (kopf's
//! `@kopf.index`).

use crate::controller::Key;
use crate::error::Error;
use std::any::{Any, type_name};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, RwLock};

/// A user-defined index: for every watched object, the `(key, value)` pairs
/// an index function returns, looked up by key. Define it with
/// [`Controller::index`](crate::Controller::index); read it with
/// [`Context::index`](crate::Context::index) in a handler, or with
/// [`Controller::index_reader`](crate::Controller::index_reader) (e.g. in
/// the mapper of a secondary watch).
///
/// ```
/// # use k8s_openapi::api::core::v1::ConfigMap;
/// # use kube::{Api, ResourceExt, runtime::watcher};
/// # use operator_framework::Controller;
/// # fn demo(client: kube::Client) -> Result<(), operator_framework::Error> {
/// // ConfigMaps by the value of their `app` label.
/// let controller = Controller::new(Api::<ConfigMap>::all(client), watcher::Config::default())
///     .index("by-app", |cm: &ConfigMap| {
///         cm.labels().get("app").map(|app| (app.clone(), cm.name_any())).into_iter().collect()
///     });
/// let by_app = controller.index_reader::<String, String>("by-app")?;
/// let _names: Vec<String> = by_app.get(&"web".to_string());
/// # Ok(()) }
/// ```
///
/// # Guarantees and caveats
///
/// * Kept current by the controller's cache: an object's pairs are replaced
///   when its cached version changes (watch events, the framework's own
///   writes) and removed when it leaves the cache (deletion, leaving the
///   watch's selection, a relist that no longer has it). Objects that do
///   not deserialise into `K` contribute nothing.
/// * The function runs while the cache is locked: it must be quick and pure
///   (no I/O, no reads of the controller's [`Store`](crate::Store) or
///   indexes, or it deadlocks).
/// * Empty while the controller is not running, and as eventually
///   consistent as the cache (see [`Store`](crate::Store)).
/// * [`Index::get`] returns the values of all objects for that key, ordered
///   by object (namespace, then name), each object's values in the order
///   the function returned them.
pub struct Index<IK, V> {
    state: Arc<RwLock<State<IK, V>>>,
}

struct State<IK, V> {
    by_key: HashMap<IK, BTreeMap<Key, Vec<V>>>,
    /// The keys each object contributes to (for exact removal).
    by_object: HashMap<Key, Vec<IK>>,
}

impl<IK, V> Clone for Index<IK, V> {
    fn clone(&self) -> Self {
        Index {
            state: self.state.clone(),
        }
    }
}

impl<IK, V> fmt::Debug for Index<IK, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.state.read().map(|s| s.by_key.len()).unwrap_or(0);
        f.debug_struct("Index").field("keys", &keys).finish()
    }
}

impl<IK: Hash + Eq + Clone, V: Clone> Index<IK, V> {
    pub(crate) fn new() -> Self {
        Index {
            state: Arc::new(RwLock::new(State {
                by_key: HashMap::new(),
                by_object: HashMap::new(),
            })),
        }
    }

    /// The values indexed under `key` (empty when none).
    pub fn get(&self, key: &IK) -> Vec<V> {
        self.state
            .read()
            .ok()
            .and_then(|s| {
                s.by_key
                    .get(key)
                    .map(|objs| objs.values().flatten().cloned().collect())
            })
            .unwrap_or_default()
    }

    /// Whether any object is indexed under `key`.
    pub fn contains_key(&self, key: &IK) -> bool {
        self.state.read().is_ok_and(|s| s.by_key.contains_key(key))
    }

    /// All keys with at least one value (in no particular order).
    pub fn keys(&self) -> Vec<IK> {
        self.state
            .read()
            .map(|s| s.by_key.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Replaces what the object `obj` contributes by `pairs`.
    pub(crate) fn set(&self, obj: &Key, pairs: Vec<(IK, V)>) {
        let Ok(mut s) = self.state.write() else {
            return;
        };
        if let Some(old) = s.by_object.remove(obj) {
            for k in old {
                if let Some(objs) = s.by_key.get_mut(&k) {
                    objs.remove(obj);
                    if objs.is_empty() {
                        s.by_key.remove(&k);
                    }
                }
            }
        }
        if pairs.is_empty() {
            return;
        }
        let mut keys = Vec::new();
        for (k, v) in pairs {
            if !keys.contains(&k) {
                keys.push(k.clone());
            }
            s.by_key
                .entry(k)
                .or_default()
                .entry(obj.clone())
                .or_default()
                .push(v);
        }
        s.by_object.insert(obj.clone(), keys);
    }
}

type IndexFn<K, IK, V> = Arc<dyn Fn(&K) -> Vec<(IK, V)> + Send + Sync>;

/// An index of objects of kind `K`, with its key and value types erased.
pub(crate) trait Indexer<K>: Send + Sync {
    fn name(&self) -> &str;
    /// The object at `key` is now `obj` (`None`: gone or undeserialisable).
    fn update(&self, key: &Key, obj: Option<&K>);
    /// The typed [`Index`], for lookups by type.
    fn reader(&self) -> Arc<dyn Any + Send + Sync>;
}

pub(crate) struct Typed<K, IK, V> {
    pub(crate) name: String,
    pub(crate) f: IndexFn<K, IK, V>,
    pub(crate) index: Index<IK, V>,
}

impl<K, IK, V> Indexer<K> for Typed<K, IK, V>
where
    K: 'static,
    IK: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn update(&self, key: &Key, obj: Option<&K>) {
        let pairs = obj.map(|o| (self.f)(o)).unwrap_or_default();
        self.index.set(key, pairs);
    }

    fn reader(&self) -> Arc<dyn Any + Send + Sync> {
        Arc::new(self.index.clone())
    }
}

/// The indexes of one controller, by name.
#[derive(Clone, Default)]
pub(crate) struct Indexes {
    by_name: HashMap<String, Arc<dyn Any + Send + Sync>>,
}

impl Indexes {
    pub(crate) fn of<K>(indexers: &[Arc<dyn Indexer<K>>]) -> Self {
        Indexes {
            by_name: indexers
                .iter()
                .map(|i| (i.name().to_string(), i.reader()))
                .collect(),
        }
    }

    /// The index `name` with key type `IK` and value type `V`.
    pub(crate) fn get<IK: Send + Sync + 'static, V: Send + Sync + 'static>(
        &self,
        name: &str,
    ) -> Result<Index<IK, V>, Error> {
        let any = self.by_name.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            known.sort();
            Error::Config(format!(
                "no index `{name}` on this controller (defined: {known:?})"
            ))
        })?;
        any.downcast_ref::<Index<IK, V>>().cloned().ok_or_else(|| {
            Error::Config(format!(
                "index `{name}` does not map `{}` to `{}`",
                type_name::<IK>(),
                type_name::<V>()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> Key {
        Key {
            namespace: Some(ns.into()),
            name: name.into(),
        }
    }

    #[test]
    fn values_follow_their_objects() {
        let idx: Index<String, u32> = Index::new();
        idx.set(&key("b", "y"), vec![("k".into(), 3)]);
        idx.set(
            &key("a", "x"),
            vec![("k".into(), 1), ("k".into(), 2), ("j".into(), 9)],
        );
        assert_eq!(
            idx.get(&"k".into()),
            [1, 2, 3],
            "ordered by object, then as returned"
        );
        assert_eq!(idx.get(&"j".into()), [9]);
        // A new version replaces all of the object's pairs.
        idx.set(&key("a", "x"), vec![("m".into(), 5)]);
        assert_eq!(idx.get(&"k".into()), [3]);
        assert!(!idx.contains_key(&"j".into()), "an emptied key disappears");
        idx.set(&key("b", "y"), Vec::new());
        let mut keys = idx.keys();
        keys.sort();
        assert_eq!(keys, ["m"]);
        assert!(idx.get(&"zz".into()).is_empty());
    }

    #[test]
    fn lookups_check_name_and_types() {
        let typed: Arc<dyn Indexer<u32>> = Arc::new(Typed {
            name: "double".into(),
            f: Arc::new(|n: &u32| vec![(*n, n * 2)]),
            index: Index::new(),
        });
        typed.update(&key("a", "x"), Some(&4));
        let all = Indexes::of(std::slice::from_ref(&typed));
        let idx = all.get::<u32, u32>("double").expect("defined");
        assert_eq!(idx.get(&4), [8]);
        typed.update(&key("a", "x"), None);
        assert!(idx.get(&4).is_empty(), "the reader sees later updates");
        let e = all
            .get::<String, u32>("double")
            .expect_err("wrong key type");
        assert!(
            e.to_string()
                .contains("does not map `alloc::string::String`"),
            "{e}"
        );
        let e = all.get::<u32, u32>("nope").expect_err("unknown");
        assert!(
            e.to_string().contains("no index `nope`") && e.to_string().contains("double"),
            "{e}"
        );
    }
}
