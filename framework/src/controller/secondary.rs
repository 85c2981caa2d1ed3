//! Secondary watches: other kinds whose changes re-run the handlers of the
//! primary objects they map to (owned children, or any mapping).

use super::cache::Key;
use super::{Controller, SecondaryFn, Sender};
use crate::context::is_namespaced;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use tokio::time::Instant;
use tracing::warn;

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
    /// Watches the metadata of `C` objects and re-runs the handlers of the
    /// object named by their controller ownerReference (set by
    /// [`Context::adopt`](crate::Context::adopt)).
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
