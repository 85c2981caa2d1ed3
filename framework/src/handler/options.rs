//! Handler kinds and options beyond the basic causes: daemons, optional
//! delete handlers, field value filters.

use super::{Handler, HandlerKind};
use crate::context::Context;
use crate::error::HandlerResult;
use std::future::Future;
use std::time::Duration;

impl<K: Send + Sync + 'static> Handler<K> {
    /// A daemon: one long-running task per object that exists, is not being
    /// deleted and matches the filters (kopf's `@kopf.daemon`).
    ///
    /// * Started when the controller first sees such an object (at start-up
    ///   for existing ones, or when an object starts matching).
    /// * Cancelled when the object gets a `deletionTimestamp`, is deleted,
    ///   leaves the watch's selection, stops matching the filters, or does
    ///   not deserialise any more, and when the controller stops (shutdown,
    ///   lost leadership). Cancellation is cooperative: the daemon should
    ///   watch [`Context::cancelled`](crate::Context::cancelled) (or sleep
    ///   with [`Context::sleep`](crate::Context::sleep)) and return; after
    ///   `cancellation_timeout` (default 10 s; at shutdown at most the
    ///   operator's `shutdown_timeout`; at once when leadership is lost) its
    ///   task is aborted.
    /// * A daemon that returns `Ok` or a permanent error is not restarted
    ///   for that object (until the object stops matching and matches
    ///   again, or is re-created). Any other error or a panic restarts it
    ///   after the handler's backoff (or the delay of a
    ///   [`HandlerError::temporary`](crate::HandlerError::temporary)), up
    ///   to `retries` times; the count resets after a run that lasted
    ///   longer than the backoff cap.
    /// * `ctx.object` is the object when the run started; read the current
    ///   version with [`Context::latest`](crate::Context::latest). Spec
    ///   changes do not restart a daemon. The handler `timeout` does not
    ///   apply. Daemons keep no state on the object and add no finalizer:
    ///   an object may be gone from the API before its daemon has returned.
    ///   Failures are logged and counted in the metrics, not written to the
    ///   object.
    pub fn daemon<F, Fut>(id: impl Into<String>, f: F) -> Self
    where
        F: Fn(Context<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self::new(
            HandlerKind::Daemon {
                cancellation_timeout: Duration::from_secs(10),
            },
            id,
            f,
        )
    }

    /// For a daemon: how long a cancelled run may take to return before its
    /// task is aborted (default 10 s). No effect on other handlers.
    pub fn cancellation_timeout(mut self, timeout: Duration) -> Self {
        if let HandlerKind::Daemon {
            cancellation_timeout,
        } = &mut self.kind
        {
            *cancellation_timeout = timeout;
        }
        self
    }

    /// Makes a delete handler optional (kopf's `optional=True`): it puts
    /// no finalizer on the objects it matches, so deleting them never
    /// waits for the operator. It runs when an object it matches is being
    /// deleted and still exists: with all delete handlers when our
    /// finalizer is there (because another delete handler wants it), else
    /// once (per process) while other finalizers hold the object. An object
    /// deleted without any finalizer is gone at once: no optional handler
    /// runs for it. No effect on other handlers.
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// For a field handler: fires only while the field's value (after the
    /// change) is `value`; an absent field is `null`. Checked like the
    /// other filters on every create and update.
    pub fn value(mut self, value: impl Into<serde_json::Value>) -> Self {
        self.values.value = Some(value.into());
        self
    }

    /// For a field handler: fires only for changes away from `old` (an
    /// absent field is `null`, so on creation the old value is `null`).
    /// With a digest diff base the old value is unknown and the handler
    /// does not fire.
    pub fn old(mut self, old: impl Into<serde_json::Value>) -> Self {
        self.values.old = Some(old.into());
        self
    }

    /// For a field handler: fires only for changes to `new` (an absent
    /// field is `null`: a removal).
    pub fn new_value(mut self, new: impl Into<serde_json::Value>) -> Self {
        self.values.new = Some(new.into());
        self
    }
}
