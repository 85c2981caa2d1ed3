//! Admission webhooks (kopf's `@kopf.on.validate` / `@kopf.on.mutate`):
//! validating and mutating functions of a controller's kind, served over
//! TLS by the operator with a self-generated certificate, and the
//! Validating/MutatingWebhookConfiguration applied with its CA bundle.

mod config;
mod review;
mod server;

pub(crate) use config::{apply_configurations, self_signed};
pub(crate) use server::serve;

use crate::data::DataMap;
use crate::error::Error;
use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where and how the operator serves its admission webhooks (see
/// [`OperatorConfig::webhooks`](crate::OperatorConfig::webhooks)).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The address the TLS server listens on.
    pub listen: SocketAddr,
    /// The base URL the API server calls, without a trailing slash, e.g.
    /// `https://127.0.0.1:9443` (an API server on the same host) or
    /// `https://my-operator.my-ns.svc:443`. Its host is put into the
    /// certificate's subject alternative names.
    pub url: String,
    /// The name of the Validating- and MutatingWebhookConfiguration
    /// (default: the operator's prefix).
    pub configuration_name: Option<String>,
    /// Only objects in namespaces matching this selector are sent to the
    /// webhooks (default: all).
    pub namespace_selector: Option<LabelSelector>,
    /// `Fail` (default: requests are rejected while the webhook cannot be
    /// reached) or `Ignore`.
    pub failure_policy: String,
    /// Seconds the API server waits for an answer (1-30, default 10).
    pub timeout_seconds: i32,
}

impl WebhookConfig {
    /// Serves on `listen`, called by the API server at `url`.
    pub fn new(listen: SocketAddr, url: impl Into<String>) -> Self {
        WebhookConfig {
            listen,
            url: url.into(),
            configuration_name: None,
            namespace_selector: None,
            failure_policy: "Fail".into(),
            timeout_seconds: 10,
        }
    }
}

/// The operation an admission request is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// The object is being created.
    Create,
    /// The object is being updated.
    Update,
}

/// What a validating or mutating function gets.
pub struct AdmissionRequest<K> {
    /// Create or update.
    pub operation: Operation,
    /// The object as it would be stored.
    pub object: K,
    /// The object before an update (`None` on create).
    pub old_object: Option<K>,
    /// The request's namespace (`None` for cluster-scoped kinds).
    pub namespace: Option<String>,
    /// The user making the request.
    pub username: String,
    /// A dry run: the function must not have side effects then.
    pub dry_run: bool,
    pub(crate) data: Arc<DataMap>,
}

impl<K> AdmissionRequest<K> {
    /// The operator data of type `T` (see [`Context::data`](crate::Context::data)).
    pub fn data<T: Send + Sync + 'static>(&self) -> Result<Arc<T>, Error> {
        self.data.require::<T>()
    }
}

/// A validating function's answer: `Err(message)` rejects the request with
/// that message.
pub type Validation = Result<(), String>;
/// A mutating function's answer: the object to store (the framework sends
/// the JSON patch from the submitted object to it), or `Err(message)` to
/// reject the request.
pub type Mutation<K> = Result<K, String>;

/// A validating or mutating webhook of kind `K`, registered with
/// [`Controller::webhook`](crate::Controller::webhook); made by
/// [`on_validate`](crate::on_validate) / [`on_mutate`](crate::on_mutate)
/// or by hand. See [`Controller::validate`](crate::Controller::validate)
/// and [`Controller::mutate`](crate::Controller::mutate) for the rules.
pub struct Webhook<K> {
    pub(crate) id: String,
    pub(crate) admission: Admission,
    pub(crate) review: Review,
    _kind: PhantomData<fn() -> K>,
}

impl<K: DeserializeOwned + Serialize + Send + 'static> Webhook<K> {
    /// A validating webhook: `Err(message)` rejects the request.
    pub fn validating<F, Fut>(id: impl Into<String>, f: F) -> Self
    where
        F: Fn(AdmissionRequest<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Validation> + Send + 'static,
    {
        Webhook {
            id: id.into(),
            admission: Admission::Validating,
            review: review::validator(f),
            _kind: PhantomData,
        }
    }

    /// A mutating webhook: returns the object to store.
    pub fn mutating<F, Fut>(id: impl Into<String>, f: F) -> Self
    where
        F: Fn(AdmissionRequest<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Mutation<K>> + Send + 'static,
    {
        Webhook {
            id: id.into(),
            admission: Admission::Mutating,
            review: review::mutator(f),
            _kind: PhantomData,
        }
    }

    /// The webhook's id (lower-case letters, digits and `-`).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Answers one AdmissionReview `request` (JSON in, `response` JSON out).
pub(crate) type Review =
    Arc<dyn Fn(Value, Arc<DataMap>) -> BoxFuture<'static, Value> + Send + Sync>;

/// Whether a webhook validates or mutates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Validating,
    Mutating,
}

/// One webhook of a controller, type-erased.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) id: String,
    pub(crate) admission: Admission,
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) plural: String,
    pub(crate) namespaced: bool,
    pub(crate) review: Review,
}

impl Route {
    /// The URL path this webhook is served on.
    pub(crate) fn path(&self) -> String {
        let what = match self.admission {
            Admission::Validating => "validate",
            Admission::Mutating => "mutate",
        };
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("/{what}/{group}/{}/{}", self.plural, self.id)
    }
}
