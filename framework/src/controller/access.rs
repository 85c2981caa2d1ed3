//! What a controller offers besides handlers: read access to its cache
//! (the store view and user-defined indexes) and admission webhooks.

use super::{Controller, typed};
use crate::context::is_namespaced;
use crate::error::Error;
use crate::index::{Index, Indexes};
use crate::store::Store as StoreView;
use kube::Resource;
use kube::api::ApiResource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

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
    /// A read-only view of this controller's cache of watched objects (see
    /// [`Store`](crate::Store)), e.g. for the mapper of a secondary watch.
    /// Empty until the operator runs the controller.
    pub fn store(&self) -> StoreView<K> {
        StoreView::new(self.cache.clone())
    }

    /// Defines the index `name` (kopf's `@kopf.index`): `f` returns the
    /// `(key, value)` pairs of each watched object, and the index, kept
    /// current by the watch, finds the values by key (see
    /// [`Index`](crate::Index) for the guarantees). Read it with
    /// [`Context::index`](crate::Context::index) or
    /// [`Controller::index_reader`]. A second index of the same name is not
    /// added; [`Operator::run`](crate::Operator::run) then fails with
    /// [`Error::Config`].
    pub fn index<IK, V, F>(mut self, name: impl Into<String>, f: F) -> Self
    where
        IK: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        F: Fn(&K) -> Vec<(IK, V)> + Send + Sync + 'static,
    {
        let name = name.into();
        if name.trim().is_empty() {
            self.problems.push("an index name is empty".into());
            return self;
        }
        if self.indexers.iter().any(|i| i.name() == name) {
            self.problems.push(format!("duplicate index `{name}`"));
            return self;
        }
        self.indexers.push(Arc::new(crate::index::Typed {
            name,
            f: Arc::new(f),
            index: Index::<IK, V>::new(),
        }));
        let indexers = self.indexers.clone();
        self.cache.set_hook(Arc::new(move |key, obj| {
            // One deserialisation per change, for all indexes.
            let parsed: Option<K> = obj.and_then(typed);
            for i in &indexers {
                i.update(key, parsed.as_ref());
            }
        }));
        self
    }

    /// The index `name` defined with [`Controller::index`], for use outside
    /// handlers (e.g. in a mapper). `Err` when there is no index of that
    /// name or its key or value type differs.
    pub fn index_reader<IK, V>(&self, name: &str) -> Result<Index<IK, V>, Error>
    where
        IK: Send + Sync + 'static,
        V: Send + Sync + 'static,
    {
        Indexes::of(&self.indexers).get(name)
    }

    /// Adds a validating admission webhook (kopf's `@kopf.on.validate`):
    /// the API server asks `f` before it stores a created or updated
    /// object of this kind; `Err(message)` rejects the request with that
    /// message. Served by the operator when
    /// [`OperatorConfig::webhooks`](crate::OperatorConfig::webhooks) is set
    /// (else [`Operator::run`](crate::Operator::run) fails). Runs on every
    /// replica, leader or not, and also for dry runs: keep it free of side
    /// effects and quick (the API server waits, at most `timeout_seconds`).
    pub fn validate<F, Fut>(self, id: impl Into<String>, f: F) -> Self
    where
        F: Fn(crate::AdmissionRequest<K>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = crate::Validation> + Send + 'static,
    {
        self.webhook(crate::Webhook::validating(id, f))
    }

    /// Adds a mutating admission webhook (kopf's `@kopf.on.mutate`): `f`
    /// returns the object to store (e.g. with defaults filled in); the API
    /// server gets the JSON patch from the submitted object (as `K`
    /// serialises it) to that one. `Err(message)` rejects the request. The
    /// same rules as [`Controller::validate`]; mutating webhooks run
    /// before validating ones.
    pub fn mutate<F, Fut>(self, id: impl Into<String>, f: F) -> Self
    where
        F: Fn(crate::AdmissionRequest<K>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = crate::Mutation<K>> + Send + 'static,
    {
        self.webhook(crate::Webhook::mutating(id, f))
    }

    /// Registers a webhook made by [`on_validate`](crate::on_validate),
    /// [`on_mutate`](crate::on_mutate) or [`Webhook`](crate::Webhook).
    /// An invalid or duplicate id is not added; `Operator::run` then fails.
    pub fn webhook(mut self, w: crate::Webhook<K>) -> Self {
        self.add_webhook(w.id, w.admission, w.review);
        self
    }

    fn add_webhook(
        &mut self,
        id: String,
        admission: crate::webhook::Admission,
        review: crate::webhook::Review,
    ) {
        let valid = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            self.problems.push(format!(
                "webhook id `{id}` must be lower-case letters, digits and `-`"
            ));
            return;
        }
        if self.webhooks.iter().any(|w| w.id == id) {
            self.problems.push(format!("duplicate webhook id `{id}`"));
            return;
        }
        let ar = ApiResource::erase::<K>(&());
        self.webhooks.push(crate::webhook::Route {
            id,
            admission,
            group: ar.group,
            version: ar.version,
            plural: ar.plural,
            namespaced: is_namespaced::<K>(),
            review,
        });
    }
}
