//! Operator-wide startup and cleanup hooks (kopf's `@kopf.on.startup` and
//! `@kopf.on.cleanup`), registered with
//! [`Operator::on_startup`](crate::Operator::on_startup) and
//! [`Operator::on_cleanup`](crate::Operator::on_cleanup).

use crate::data::DataMap;
use crate::error::Error;
use futures::future::BoxFuture;
use kube::Client;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// What a startup or cleanup hook gets: the operator's client and data.
#[derive(Clone)]
pub struct HookContext {
    /// The operator's client.
    pub client: Client,
    data: Arc<DataMap>,
}

impl HookContext {
    /// The operator data of type `T` (see [`Context::data`](crate::Context::data)).
    pub fn data<T: Send + Sync + 'static>(&self) -> Result<Arc<T>, Error> {
        self.data.require::<T>()
    }

    /// Like [`HookContext::data`], `None` when no `T` was registered.
    pub fn try_data<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.data.get::<T>()
    }
}

pub(crate) type Hook =
    Arc<dyn Fn(HookContext) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

pub(crate) fn context(client: Client, data: Arc<DataMap>) -> HookContext {
    HookContext { client, data }
}

/// Runs the startup hooks in order; the first failure stops the start.
pub(crate) async fn startup(hooks: &[Hook], ctx: &HookContext) -> Result<(), Error> {
    for (i, h) in hooks.iter().enumerate() {
        h(ctx.clone())
            .await
            .map_err(|e| Error::Hook(format!("startup hook #{}: {e:#}", i + 1)))?;
    }
    if !hooks.is_empty() {
        info!(hooks = hooks.len(), "startup hooks done");
    }
    Ok(())
}

/// Runs every cleanup hook in order, all within `limit`; failures are
/// logged (the operator is stopping anyway).
pub(crate) async fn cleanup(hooks: &[Hook], ctx: &HookContext, limit: Duration) {
    let all = async {
        for (i, h) in hooks.iter().enumerate() {
            if let Err(e) = h(ctx.clone()).await {
                warn!(error = %format!("{e:#}"), hook = i + 1, "cleanup hook failed");
            }
        }
    };
    if tokio::time::timeout(limit.min(crate::time::FAR_FUTURE), all)
        .await
        .is_err()
    {
        warn!(?limit, "cleanup hooks did not finish in time; abandoned");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn hook(log: &Arc<Mutex<Vec<String>>>, name: &str, fail: bool) -> Hook {
        let (log, name) = (log.clone(), name.to_string());
        Arc::new(move |ctx: HookContext| {
            let (log, name) = (log.clone(), name.clone());
            Box::pin(async move {
                let n = ctx.data::<u32>().map(|v| *v).unwrap_or(0);
                log.lock().expect("log").push(format!("{name}:{n}"));
                if fail {
                    anyhow::bail!("{name} failed");
                }
                Ok(())
            })
        })
    }

    fn ctx() -> HookContext {
        crate::tls::install_crypto_provider();
        let url = "http://127.0.0.1:1".parse().expect("a valid static URL");
        let client = Client::try_from(kube::Config::new(url)).expect("client");
        let mut data = DataMap::default();
        data.insert(Arc::new(7u32));
        context(client, Arc::new(data))
    }

    #[tokio::test]
    async fn startup_stops_at_the_first_failure_cleanup_runs_all() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let hooks = [
            hook(&log, "a", false),
            hook(&log, "b", true),
            hook(&log, "c", false),
        ];
        let e = startup(&hooks, &ctx()).await.expect_err("b fails");
        assert!(
            matches!(&e, Error::Hook(m) if m.contains("startup hook #2: b failed")),
            "{e}"
        );
        assert_eq!(*log.lock().expect("log"), ["a:7", "b:7"]);
        log.lock().expect("log").clear();
        cleanup(&hooks, &ctx(), Duration::from_secs(5)).await;
        assert_eq!(*log.lock().expect("log"), ["a:7", "b:7", "c:7"]);
    }

    #[tokio::test]
    async fn cleanup_is_bounded_in_time() {
        let slow: Hook = Arc::new(|_| Box::pin(std::future::pending()));
        let started = std::time::Instant::now();
        cleanup(&[slow], &ctx(), Duration::from_millis(50)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
