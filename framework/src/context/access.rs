//! What a handler reads besides its object: operator data, the
//! controller's store and indexes, and (for daemons) cancellation.

use super::Context;
use crate::error::Error;
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;

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
    /// The operator-wide value of type `T` registered with
    /// [`Operator::data`](crate::Operator::data): the same `Arc` for every
    /// handler of every controller (share mutable state through a `Mutex`
    /// or atomics inside `T`). `Err` ([`Error::Config`], naming the type)
    /// when none was registered, so `ctx.data::<T>()?` in a handler fails
    /// the run with a clear message.
    pub fn data<T: Send + Sync + 'static>(&self) -> Result<Arc<T>, Error> {
        self.shared.rt.data.require::<T>()
    }

    /// Like [`Context::data`], `None` when no `T` was registered.
    pub fn try_data<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.shared.rt.data.get::<T>()
    }

    /// Completes when this daemon must stop (see
    /// [`Handler::daemon`](crate::Handler::daemon)); for all other handlers
    /// it never completes (they are cancelled by dropping them).
    pub async fn cancelled(&self) {
        match self.cancel.clone() {
            Some(mut rx) => {
                // A dropped sender also means: stop.
                let _ = rx.wait_for(|stop| *stop).await;
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Whether this daemon has been asked to stop (`false` for other
    /// handlers).
    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|rx| *rx.borrow() || rx.has_changed().is_err())
    }

    /// Sleeps for `duration`, or less if the daemon is cancelled meanwhile
    /// (kopf's `stopped.wait(..)`). `true`: cancelled, return now.
    pub async fn sleep(&self, duration: std::time::Duration) -> bool {
        tokio::select! {
            _ = self.cancelled() => true,
            _ = tokio::time::sleep(duration.min(crate::time::FAR_FUTURE)) => self.is_cancelled(),
        }
    }

    /// The object's current version in the controller's cache, if it is
    /// still the same object (same uid); `None` once it is gone. For
    /// daemons, whose `object` is the version they started with.
    pub fn latest(&self) -> Option<Arc<K>> {
        let uid = self.object.meta().uid.clone()?;
        self.store()
            .get_if_uid(self.namespace().as_deref(), &self.name(), &uid)
    }

    /// A read-only view of the controller's cache of its watched objects
    /// (see [`Store`](crate::Store) for what it guarantees).
    pub fn store(&self) -> crate::Store<K> {
        crate::Store::new(self.shared.cache.clone())
    }

    /// The controller's index `name` (defined with
    /// [`Controller::index`](crate::Controller::index)). `Err`
    /// ([`Error::Config`]) when the controller has no index of that name or
    /// its key or value type is not `IK` / `V`.
    pub fn index<IK, V>(&self, name: &str) -> Result<crate::Index<IK, V>, Error>
    where
        IK: Send + Sync + 'static,
        V: Send + Sync + 'static,
    {
        self.shared.indexes.get(name)
    }
}
