//! Handler registrations: what a handler reacts to and its options.

use crate::backoff::Backoff;
use crate::context::Context;
use crate::error::HandlerResult;
pub use crate::filters::MetaFilter;
use crate::filters::{FieldValues, Filters};
use futures::future::BoxFuture;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

mod options;

/// Why a handler is being run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The object was seen for the first time (it has no
    /// `last-handled-configuration` annotation yet).
    Create,
    /// The object's essence (everything but `metadata` and `status`) differs
    /// from the last handled one.
    Update,
    /// The object is being deleted (it carries our finalizer).
    Delete,
    /// The operator (re)started and found the object already handled.
    Resume,
    /// A watched field changed (see [`Handler::on_field`]); the field handlers
    /// run as part of the create or update processing.
    Field,
    /// A timer fired.
    Timer,
    /// Level-triggered reconciliation (any watch event, a child change, or the
    /// periodic resync), and once more when the object was deleted; see
    /// [`Context::watch_event`](crate::Context::watch_event).
    Event,
    /// A daemon runs (see [`Handler::daemon`]).
    Daemon,
}

impl Cause {
    /// Lower-case name used in progress records and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Cause::Create => "create",
            Cause::Update => "update",
            Cause::Delete => "delete",
            Cause::Resume => "resume",
            Cause::Field => "field",
            Cause::Timer => "timer",
            Cause::Event => "event",
            Cause::Daemon => "daemon",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an event handler ([`on_event`](crate::on_event)) is told about the
/// object, in [`Context::watch_event`](crate::Context::watch_event).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchEventType {
    /// The object exists and is not being deleted: it was added or
    /// modified, a child or watched object changed, or the resync came
    /// round. Failed runs are retried with backoff.
    Applied,
    /// The object was deleted from the API (after its finalizers); the
    /// context holds its last known version. Delivered once, not retried.
    Deleted,
}

impl WatchEventType {
    /// Lower-case name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            WatchEventType::Applied => "applied",
            WatchEventType::Deleted => "deleted",
        }
    }
}

impl fmt::Display for WatchEventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a handler reacts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandlerKind {
    /// Runs once when an object is created (persisted progress).
    Create,
    /// Runs once per change of the object's essence (persisted progress).
    Update,
    /// Runs when the object is deleted; the framework keeps its finalizer on
    /// the objects whose filters a delete handler matches (and only on them).
    Delete,
    /// Runs once per operator start for every existing, already created object.
    Resume,
    /// Runs when the value at the dotted `path` changes (also on creation when
    /// the field is set).
    Field {
        /// Dotted path, e.g. `spec.schedule`.
        path: String,
    },
    /// Runs every `interval` while the object exists and is not being deleted.
    /// Failed runs are retried with the handler's backoff; a permanent error
    /// stops the timer for the object until its spec changes.
    Timer {
        /// Time between runs (measured from the end of one run).
        interval: Duration,
        /// Delay before the first run after the object is first seen.
        initial_delay: Duration,
    },
    /// Level-triggered reconcile: every watch event, child change, resync
    /// ([`WatchEventType::Applied`]), and once when the object was deleted
    /// from the API ([`WatchEventType::Deleted`]).
    Event,
    /// A long-running task per matching object (see [`Handler::daemon`]).
    Daemon {
        /// How long a cancelled daemon may take to return before its task
        /// is aborted.
        cancellation_timeout: Duration,
    },
}

type HandlerFn<K> = Arc<dyn Fn(Context<K>) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// One registered handler for objects of kind `K`.
///
/// Usually created by an attribute macro ([`on_create`](crate::on_create) ...),
/// which turns `async fn name(ctx: Context<K>) -> HandlerResult` into
/// `fn name() -> Handler<K>`. It can also be built by hand:
///
/// ```
/// # use operator_framework::{Handler, Context, HandlerResult};
/// # use k8s_openapi::api::core::v1::ConfigMap;
/// async fn created(ctx: Context<ConfigMap>) -> HandlerResult { Ok(()) }
/// let h: Handler<ConfigMap> = Handler::on_create("created", created).retries(3);
/// ```
pub struct Handler<K> {
    pub(crate) id: String,
    pub(crate) kind: HandlerKind,
    pub(crate) func: HandlerFn<K>,
    pub(crate) retries: Option<u32>,
    pub(crate) backoff: Backoff,
    pub(crate) timeout: Option<Duration>,
    pub(crate) filters: Filters<K>,
    pub(crate) optional: bool,
    pub(crate) values: FieldValues,
}

impl<K> Clone for Handler<K> {
    fn clone(&self) -> Self {
        Handler {
            id: self.id.clone(),
            kind: self.kind.clone(),
            func: self.func.clone(),
            retries: self.retries,
            backoff: self.backoff,
            timeout: self.timeout,
            filters: self.filters.clone(),
            optional: self.optional,
            values: self.values.clone(),
        }
    }
}

impl<K> fmt::Debug for Handler<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<K: Send + Sync + 'static> Handler<K> {
    /// A handler of any kind from an async function.
    pub fn new<F, Fut>(kind: HandlerKind, id: impl Into<String>, f: F) -> Self
    where
        F: Fn(Context<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Handler {
            id: id.into(),
            kind,
            func: Arc::new(move |ctx| Box::pin(f(ctx))),
            retries: None,
            backoff: Backoff::default(),
            timeout: None,
            filters: Filters::default(),
            optional: false,
            values: FieldValues::default(),
        }
    }

    /// A create handler.
    pub fn on_create<F, Fut>(id: impl Into<String>, f: F) -> Self
    where
        F: Fn(Context<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self::new(HandlerKind::Create, id, f)
    }

    /// An update handler.
    pub fn on_update<F, Fut>(id: impl Into<String>, f: F) -> Self
    where
        F: Fn(Context<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self::new(HandlerKind::Update, id, f)
    }

    /// A delete handler.
    pub fn on_delete<F, Fut>(id: impl Into<String>, f: F) -> Self
    where
        F: Fn(Context<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self::new(HandlerKind::Delete, id, f)
    }

    /// A resume handler.
    pub fn on_resume<F, Fut>(id: impl Into<String>, f: F) -> Self
    where
        F: Fn(Context<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self::new(HandlerKind::Resume, id, f)
    }

    /// A field-change handler for the dotted `path`.
    pub fn on_field<F, Fut>(id: impl Into<String>, path: impl Into<String>, f: F) -> Self
    where
        F: Fn(Context<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self::new(HandlerKind::Field { path: path.into() }, id, f)
    }

    /// A timer handler: runs `initial_delay` after the object is first seen,
    /// then every `interval` (see [`HandlerKind::Timer`]).
    pub fn on_timer<F, Fut>(
        id: impl Into<String>,
        interval: Duration,
        initial_delay: Duration,
        f: F,
    ) -> Self
    where
        F: Fn(Context<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self::new(
            HandlerKind::Timer {
                interval,
                initial_delay,
            },
            id,
            f,
        )
    }

    /// A level-triggered event handler.
    pub fn on_event<F, Fut>(id: impl Into<String>, f: F) -> Self
    where
        F: Fn(Context<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self::new(HandlerKind::Event, id, f)
    }

    /// Gives up after this many failed runs (default: unlimited, except for
    /// delete handlers, see [`OperatorConfig::delete_retries`](crate::OperatorConfig::delete_retries)).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = Some(n);
        self
    }

    /// Sets the exponential backoff base and cap (both above zero, base at
    /// most cap; checked at registration).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff.base = base;
        self.backoff.max = max;
        self
    }

    /// Disables the random jitter of the backoff (mostly for tests).
    pub fn without_jitter(mut self) -> Self {
        self.backoff.jitter = false;
        self
    }

    /// Cancels each run after `timeout`; a timed-out run is a failed,
    /// retryable run. Default: [`OperatorConfig::handler_timeout`](crate::OperatorConfig::handler_timeout)
    /// (10 minutes); `Duration::MAX` means no limit. Zero is rejected at
    /// registration.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Only for objects matching this label filter: `key=value`, `key!=value`,
    /// `key` (present) or `!key` (absent). Several filters must all match.
    pub fn label(mut self, filter: &str) -> Self {
        self.filters.labels.push(MetaFilter::parse(filter));
        self
    }

    /// Only for objects matching this annotation filter (same syntax as
    /// [`Handler::label`]).
    pub fn annotation(mut self, filter: &str) -> Self {
        self.filters.annotations.push(MetaFilter::parse(filter));
        self
    }

    /// Only for objects for which `pred` returns `true`.
    pub fn when(mut self, pred: impl Fn(&K) -> bool + Send + Sync + 'static) -> Self {
        self.filters.when = Some(Arc::new(pred));
        self
    }

    /// Overrides the id (default: the function name).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Runs the handler's function once with `ctx`, directly: no timeout,
    /// retries, progress, conditions or Events (for unit tests with a
    /// context from [`ContextBuilder`](crate::testing::ContextBuilder)).
    pub fn call(&self, ctx: Context<K>) -> BoxFuture<'static, HandlerResult> {
        (self.func)(ctx)
    }

    /// The handler id.
    pub fn handler_id(&self) -> &str {
        &self.id
    }

    /// What the handler reacts to.
    pub fn kind(&self) -> &HandlerKind {
        &self.kind
    }

    /// Checks the options: a non-empty id, a non-empty field path, a timer
    /// interval, backoff base and cap and a timeout above zero, a base not
    /// above the cap. [`Controller::handler`](crate::Controller::handler)
    /// runs it (and rejects duplicate ids); the macros reject the same at
    /// compile time.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |what: String| {
            Err(crate::Error::Config(format!(
                "handler `{}`: {what}",
                self.id
            )))
        };
        if self.id.trim().is_empty() {
            return bad("the id is empty".into());
        }
        match &self.kind {
            HandlerKind::Field { path } if path.trim().is_empty() => {
                return bad("the field path is empty".into());
            }
            HandlerKind::Timer { interval, .. } if interval.is_zero() => {
                return bad("the timer interval is zero".into());
            }
            _ => {}
        }
        if self.backoff.base.is_zero() || self.backoff.max.is_zero() {
            return bad(format!(
                "the backoff base and cap must be above zero (got {:?} and {:?})",
                self.backoff.base, self.backoff.max
            ));
        }
        if self.backoff.base > self.backoff.max {
            return bad(format!(
                "the backoff base {:?} is above its cap {:?}",
                self.backoff.base, self.backoff.max
            ));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return bad("the timeout is zero".into());
        }
        if !self.values.is_empty() && !matches!(self.kind, HandlerKind::Field { .. }) {
            return bad("value, old and new filters need a field handler".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_zero_durations_and_empty_names() {
        async fn noop(_ctx: Context<u32>) -> HandlerResult {
            Ok(())
        }
        let ok = Handler::on_create("ok", noop);
        assert!(ok.validate().is_ok());
        let s = Duration::from_secs(1);
        let bad: Vec<(Handler<u32>, &str)> = vec![
            (Handler::on_create("", noop), "id is empty"),
            (Handler::on_field("f", " ", noop), "field path is empty"),
            (
                Handler::on_timer("t", Duration::ZERO, s, noop),
                "interval is zero",
            ),
            (
                Handler::on_create("b", noop).backoff(Duration::ZERO, s),
                "above zero",
            ),
            (
                Handler::on_create("m", noop).backoff(s, Duration::ZERO),
                "above zero",
            ),
            (
                Handler::on_create("o", noop).backoff(s * 2, s),
                "above its cap",
            ),
            (
                Handler::on_create("z", noop).timeout(Duration::ZERO),
                "timeout is zero",
            ),
        ];
        for (h, want) in bad {
            let e = h.validate().expect_err(want).to_string();
            assert!(e.contains(want), "{e}");
        }
        let max = Handler::on_timer("max", Duration::MAX, Duration::MAX, noop)
            .backoff(Duration::MAX, Duration::MAX)
            .timeout(Duration::MAX);
        assert!(max.validate().is_ok(), "huge durations are fine");
    }
}
