//! Test helpers (kopf's `KopfRunner` and more): run an operator in the
//! background of a test with one call, and build a handler [`Context`] to
//! unit-test a handler without a cluster.
//!
//! [`Context`]: crate::Context
//!
//! ```
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use operator_framework::{Cause, Context, HandlerResult, testing::ContextBuilder};
//! use std::sync::Arc;
//!
//! struct Greeting(String);
//!
//! async fn greet(ctx: Context<ConfigMap>) -> HandlerResult {
//!     let greeting = ctx.data::<Greeting>()?;
//!     assert_eq!(greeting.0, "hi");
//!     assert_eq!(ctx.cause, Cause::Update);
//!     assert_eq!(ctx.diff[0].path, "data.k");
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let old: ConfigMap = serde_json::from_value(serde_json::json!({
//!     "metadata": {"name": "c", "namespace": "ns"}, "data": {"k": "1"}})).unwrap();
//! let mut new = old.clone();
//! new.data = Some([("k".to_string(), "2".to_string())].into());
//! let ctx = ContextBuilder::new(new)
//!     .old(old)
//!     .data(Arc::new(Greeting("hi".into())))
//!     .build();
//! assert!(greet(ctx).await.is_ok());
//! # }
//! ```

mod context;

pub use context::ContextBuilder;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::operator::Operator;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An operator running in a background task of the test's runtime; see
/// [`run_in_background`].
pub struct RunningOperator {
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), Error>>>,
    metrics: Arc<Metrics>,
}

/// Runs `operator` in a background task (on the current Tokio runtime)
/// until [`RunningOperator::stop`] or until the handle is dropped.
///
/// Guarantees and caveats:
/// * [`RunningOperator::stop`] shuts the operator down gracefully (as
///   SIGTERM would: in-flight handlers get `shutdown_timeout`, a held lease
///   is released) and returns the operator's own result, so a test sees a
///   configuration error or a failed start as an `Err`. A panic inside
///   the operator's task is resumed in the caller.
/// * Dropping the handle only *starts* the graceful shutdown; nothing
///   waits for it, and the task dies with the runtime at the end of the
///   test. Call `stop().await` to know that it ended and how.
/// * The operator runs against whatever cluster its client talks to:
///   tests should use their own namespaces (or kinds) and clean up.
pub fn run_in_background(operator: Operator) -> RunningOperator {
    let (tx, rx) = oneshot::channel::<()>();
    let metrics = operator.metrics();
    let handle = tokio::spawn(operator.run_until(async move {
        let _ = rx.await;
    }));
    RunningOperator {
        stop: Some(tx),
        handle: Some(handle),
        metrics,
    }
}

impl RunningOperator {
    /// The operator's metrics (e.g. to wait for
    /// [`Metrics::is_ready`](crate::Metrics::is_ready)).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Whether the operator has ended already (by itself: an error, or all
    /// its controllers stopped).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Stops the operator gracefully and returns its result.
    pub async fn stop(mut self) -> Result<(), Error> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        match handle.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Config(format!(
                "the operator task was cancelled: {e}"
            ))),
        }
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
