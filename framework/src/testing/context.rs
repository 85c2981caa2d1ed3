//! [`ContextBuilder`]: a handler's context without a cluster.

use crate::context::{Context, ObjectShared, is_namespaced};
use crate::controller::{Cache, essence, store_put};
use crate::data::DataMap;
use crate::diff::{diff, filter_path};
use crate::handler::Cause;
use crate::index::{Index, Indexer, Typed};
use crate::metrics::Metrics;
use crate::operator::OperatorConfig;
use crate::runtime::Runtime;
use kube::api::{ApiResource, DynamicObject};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Builds the [`Context`] a handler gets, for unit tests without a cluster.
///
/// By default the context is that of a create handler (`cause`
/// [`Cause::Create`], the whole object as `Add` items in `diff`); with
/// [`ContextBuilder::old`] that of an update handler (the diff between the
/// two essences, `old_value()` the old one). [`ContextBuilder::field`]
/// narrows it to a field handler.
///
/// Guarantees and caveats:
/// * Pure data works without a cluster: the object, the diff, old and new
///   values, [`Context::data`], [`Context::store`] and [`Context::index`]
///   (over the objects given to [`ContextBuilder::cached`] and the object
///   itself), [`Context::adopt`] and [`Context::owner_selector`].
/// * Without [`ContextBuilder::client`] the client points at
///   `http://127.0.0.1:1`, where nothing listens: any API call (status
///   patches, Events, children) fails at once with a connection error.
/// * [`ContextBuilder::build`] must run inside a Tokio runtime (a kube
///   client spawns its request buffer).
pub struct ContextBuilder<K> {
    object: K,
    old: Option<K>,
    cause: Option<Cause>,
    retry: u32,
    handler_id: String,
    field: Option<String>,
    data: DataMap,
    client: Option<Client>,
    prefix: String,
    cached: Vec<K>,
    indexers: Vec<Arc<dyn Indexer<K>>>,
    cancel: Option<tokio::sync::watch::Receiver<bool>>,
}

impl<K> ContextBuilder<K>
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
    /// A context for `object` (a create, unless [`ContextBuilder::old`]).
    pub fn new(object: K) -> Self {
        ContextBuilder {
            object,
            old: None,
            cause: None,
            retry: 0,
            handler_id: "test".into(),
            field: None,
            data: DataMap::default(),
            client: None,
            prefix: "test.operator-framework.dev".into(),
            cached: Vec::new(),
            indexers: Vec::new(),
            cancel: None,
        }
    }

    /// Makes it a daemon's context: [`Context::cancelled`] completes (and
    /// [`Context::is_cancelled`] is `true`) once `true` is sent on the
    /// channel of `cancel` or its sender is dropped.
    pub fn daemon(mut self, cancel: tokio::sync::watch::Receiver<bool>) -> Self {
        self.cause = Some(Cause::Daemon);
        self.cancel = Some(cancel);
        self
    }

    /// The last handled version: the context becomes an update's (cause
    /// [`Cause::Update`] unless set), with the diff from `old` to the object.
    pub fn old(mut self, old: K) -> Self {
        self.old = Some(old);
        self
    }

    /// Sets the cause (default: `Create`, or `Update` with an old object).
    pub fn cause(mut self, cause: Cause) -> Self {
        self.cause = Some(cause);
        self
    }

    /// Sets [`Context::retry`] (default 0).
    pub fn retry(mut self, retry: u32) -> Self {
        self.retry = retry;
        self
    }

    /// Sets [`Context::handler_id`] (default `test`).
    pub fn handler_id(mut self, id: impl Into<String>) -> Self {
        self.handler_id = id.into();
        self
    }

    /// Makes it a field handler's context for the dotted `path`: `diff`
    /// holds only the items below it, `old_value()`/`new_value()` its values.
    pub fn field(mut self, path: impl Into<String>) -> Self {
        self.field = Some(path.into());
        self
    }

    /// Registers operator data, as [`Operator::data`](crate::Operator::data) does.
    pub fn data<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.data.insert(value);
        self
    }

    /// The client the context's helpers use (default: one that reaches
    /// nothing, see above).
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The operator prefix (default `test.operator-framework.dev`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Another object in the controller's cache (the object itself always is).
    pub fn cached(mut self, object: K) -> Self {
        self.cached.push(object);
        self
    }

    /// Defines an index, as [`Controller::index`](crate::Controller::index)
    /// does, over the cached objects.
    pub fn index<IK, V, F>(mut self, name: impl Into<String>, f: F) -> Self
    where
        IK: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        F: Fn(&K) -> Vec<(IK, V)> + Send + Sync + 'static,
    {
        self.indexers.push(Arc::new(Typed {
            name: name.into(),
            f: Arc::new(f),
            index: Index::<IK, V>::new(),
        }));
        self
    }

    /// The context.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (building the default client needs one).
    pub fn build(self) -> Context<K> {
        crate::tls::install_crypto_provider();
        let client = self.client.unwrap_or_else(unreachable_client);
        let rt = Arc::new(Runtime::new(
            client,
            self.prefix,
            OperatorConfig::default(),
            Arc::new(Metrics::default()),
            None,
            Arc::new(self.data),
        ));
        let cache = Arc::new(Cache::default());
        let indexers = self.indexers.clone();
        cache.set_hook(Arc::new(move |key, obj| {
            let parsed: Option<K> = obj.and_then(crate::controller::typed);
            for i in &indexers {
                i.update(key, parsed.as_ref());
            }
        }));
        for o in self.cached.iter().chain(std::iter::once(&self.object)) {
            if let Some(d) = to_dynamic(o) {
                store_put(&cache, d, false);
            }
        }
        let raw = serde_json::to_value(&self.object).unwrap_or(Value::Null);
        let new = essence(&raw);
        let old = self
            .old
            .as_ref()
            .map(|o| essence(&serde_json::to_value(o).unwrap_or(Value::Null)));
        let full = diff(old.as_ref().unwrap_or(&json!({})), &new);
        let items = match &self.field {
            Some(p) => filter_path(&full, p),
            None => full,
        };
        let cause = self.cause.unwrap_or(match old {
            Some(_) => Cause::Update,
            None => Cause::Create,
        });
        let cache2 = cache.clone();
        let shared = ObjectShared {
            rt,
            ar: ApiResource::erase::<K>(&()),
            namespaced: is_namespaced::<K>(),
            status: Mutex::new(raw.get("status").cloned().unwrap_or(Value::Null)),
            observe: Arc::new(move |o: DynamicObject| store_put(&cache2, o, true)),
            raw_meta: self.object.meta().clone(),
            cache,
            indexes: Arc::new(crate::index::Indexes::of(&self.indexers)),
        };
        Context {
            object: Arc::new(self.object),
            cause,
            watch_event: None,
            retry: self.retry,
            diff: items,
            handler_id: self.handler_id,
            field: self.field,
            old_essence: old.map(Arc::new),
            diff_known: true,
            new_essence: Arc::new(new),
            shared: Arc::new(shared),
            cancel: self.cancel,
        }
    }
}

fn to_dynamic<K: Resource<DynamicType = ()> + Serialize>(o: &K) -> Option<DynamicObject> {
    let mut v = serde_json::to_value(o).ok()?;
    // Typed objects serialise their type; DynamicObject needs it.
    if let Value::Object(m) = &mut v {
        m.insert("apiVersion".into(), K::api_version(&()).into());
        m.insert("kind".into(), K::kind(&()).into());
    }
    serde_json::from_value(v).ok()
}

fn unreachable_client() -> Client {
    let url = "http://127.0.0.1:1".parse().expect("a valid static URL");
    match Client::try_from(kube::Config::new(url)) {
        Ok(c) => c,
        Err(e) => panic!("building a client for tests failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::DiffOp;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
        let data: std::collections::BTreeMap<String, String> = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "data": data
        }))
        .expect("configmap")
    }

    #[tokio::test]
    async fn a_create_context_has_the_whole_object_as_added() {
        let ctx = ContextBuilder::new(cm("a", &[("k", "v")])).build();
        assert_eq!(ctx.cause, Cause::Create);
        assert_eq!(ctx.diff.len(), 1);
        assert_eq!(
            (ctx.diff[0].op, ctx.diff[0].path.as_str()),
            (DiffOp::Add, "data")
        );
        assert_eq!(ctx.old_value(), None);
        assert_eq!(ctx.new_value(), Some(json!({"data": {"k": "v"}})));
        assert!(ctx.data::<String>().is_err(), "no data registered");
        assert_eq!(
            ctx.owner_selector(),
            "test.operator-framework.dev/owner-uid=uid-a"
        );
    }

    #[tokio::test]
    async fn an_update_context_has_the_diff_old_values_and_data() {
        let ctx = ContextBuilder::new(cm("a", &[("k", "2"), ("n", "x")]))
            .old(cm("a", &[("k", "1")]))
            .field("data.k")
            .retry(2)
            .handler_id("h")
            .data(Arc::new(5u8))
            .build();
        assert_eq!(ctx.cause, Cause::Update);
        assert_eq!((ctx.retry, ctx.handler_id.as_str()), (2, "h"));
        assert_eq!(ctx.diff.len(), 1, "only the field's items: {:?}", ctx.diff);
        assert_eq!(ctx.diff[0].op, DiffOp::Change);
        assert_eq!(ctx.old_value(), Some(json!("1")));
        assert_eq!(ctx.new_value(), Some(json!("2")));
        assert_eq!(*ctx.data::<u8>().expect("registered"), 5);
    }

    #[tokio::test]
    async fn store_and_indexes_hold_the_cached_objects_and_the_object() {
        let ctx = ContextBuilder::new(cm("a", &[("app", "web")]))
            .cached(cm("b", &[("app", "web")]))
            .cached(cm("c", &[("app", "db")]))
            .index("by-app", |c: &ConfigMap| {
                let app = c.data.as_ref().and_then(|d| d.get("app")).cloned();
                let name = c.metadata.name.clone().unwrap_or_default();
                app.map(|a| (a, name)).into_iter().collect()
            })
            .build();
        let idx = ctx.index::<String, String>("by-app").expect("defined");
        assert_eq!(idx.get(&"web".into()), ["a", "b"]);
        assert_eq!(ctx.store().len(), 3);
        assert!(ctx.store().get_if_uid(Some("ns"), "c", "uid-c").is_some());
        assert!(ctx.index::<String, String>("other").is_err());
    }

    #[tokio::test]
    async fn api_calls_fail_fast_without_a_cluster() {
        let ctx = ContextBuilder::new(cm("a", &[])).build();
        let res = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            ctx.patch_status(json!({"phase": "x"})),
        )
        .await
        .expect("no hang");
        assert!(res.is_err(), "nothing listens on 127.0.0.1:1");
    }
}
