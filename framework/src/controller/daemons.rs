//! Daemons: one supervised long-running task per matching object and
//! daemon handler, started and cancelled as the object's cycles see it.

use super::Inner;
use super::cache::Key;
use super::invoke::{Change, Current};
use crate::backoff::Backoff;
use crate::error::{HandlerError, HandlerResult};
use crate::handler::{Cause, Handler, HandlerKind};
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

/// A running daemon of one object.
pub(crate) struct Daemon {
    uid: Option<String>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    grace: Duration,
}

/// The daemons of one controller, by object and handler id.
pub(crate) type Daemons = HashMap<Key, HashMap<String, Daemon>>;

/// Which daemons of an object to stop and which to start: those running
/// for another uid or no longer wanted stop; wanted ones not running start.
/// A daemon that ended by itself stays listed (it is not restarted).
pub(crate) fn plan(
    running: &HashMap<String, Option<String>>,
    wanted: &[&str],
    uid: &Option<String>,
) -> (Vec<String>, Vec<String>) {
    let mut stop: Vec<String> = running
        .iter()
        .filter(|(id, u)| *u != uid || !wanted.contains(&id.as_str()))
        .map(|(id, _)| id.clone())
        .collect();
    stop.sort();
    let start = wanted
        .iter()
        .filter(|id| running.get(**id).is_none_or(|u| u != uid))
        .map(|id| id.to_string())
        .collect();
    (stop, start)
}

/// Runs a daemon until it returns for good or `stop` is set: restarts it
/// after retryable failures with `backoff` (or a temporary error's delay),
/// at most `retries` times in a row; a run longer than the backoff cap
/// resets the count. `run(n)` starts run number `n` (0 first) and returns
/// `None` when there is nothing to run any more.
pub(crate) async fn supervise<F, Fut>(
    mut run: F,
    backoff: Backoff,
    retries: Option<u32>,
    mut stop: watch::Receiver<bool>,
) where
    F: FnMut(u32) -> Option<Fut>,
    Fut: Future<Output = HandlerResult>,
{
    let mut failures = 0u32;
    loop {
        let Some(fut) = run(failures) else { return };
        let started = tokio::time::Instant::now();
        let res = fut.await;
        if *stop.borrow() {
            return;
        }
        let e = match res {
            Ok(()) => {
                info!("daemon finished");
                return;
            }
            Err(e) if e.is_permanent() => {
                warn!(error = %e.message(), "daemon failed permanently; not restarted");
                return;
            }
            Err(e) => e,
        };
        if started.elapsed() > backoff.max {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        if retries.is_some_and(|r| failures > r) {
            warn!(error = %e.message(), failures, "daemon gave up; not restarted");
            return;
        }
        let delay = match &e {
            HandlerError::Temporary { delay: Some(d), .. } => *d,
            _ => backoff.delay(failures - 1),
        };
        warn!(error = %e.message(), failures, ?delay, "daemon failed; restarting");
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(delay.min(crate::time::FAR_FUTURE)) => {}
        }
    }
}

/// Stops a daemon: asks it to return, aborts it after `grace`.
fn stop(d: Daemon, grace: Option<Duration>) -> JoinHandle<()> {
    let _ = d.stop.send(true);
    let grace = grace.unwrap_or(d.grace).min(d.grace);
    let mut task = d.task;
    tokio::spawn(async move {
        if tokio::time::timeout(grace.min(crate::time::FAR_FUTURE), &mut task)
            .await
            .is_err()
        {
            warn!(?grace, "daemon did not return after cancellation; aborted");
            task.abort();
        }
    })
}

/// Aborts the daemons of a controller whose future is dropped (e.g. the
/// operator's `run` future), so that no daemon outlives its controller.
pub(crate) struct DaemonsGuard<K>(pub(crate) Arc<Inner<K>>);

impl<K> Drop for DaemonsGuard<K> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.daemons.lock() {
            for d in m.drain().flat_map(|(_, ds)| ds.into_values()) {
                let _ = d.stop.send(true);
                d.task.abort();
            }
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<K> Inner<K>
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
    fn daemon_handlers(&self) -> impl Iterator<Item = &Handler<K>> {
        self.handlers
            .iter()
            .filter(|h| matches!(h.kind, HandlerKind::Daemon { .. }))
    }

    /// Starts and stops the daemons of `key` for the object as it is now
    /// (`None`: gone, or not deserialisable).
    pub(crate) fn sync_daemons(self: &Arc<Self>, key: &Key, cur: Option<&Current<K>>) {
        if self.daemon_handlers().next().is_none() {
            return;
        }
        let live = cur.filter(|c| c.dobj.metadata.deletion_timestamp.is_none());
        let uid = cur.and_then(|c| c.dobj.metadata.uid.clone());
        let wanted: Vec<&str> = match live {
            Some(c) => self
                .daemon_handlers()
                .filter(|h| self.passes(h, c))
                .map(|h| h.id.as_str())
                .collect(),
            None => Vec::new(),
        };
        let Ok(mut all) = self.daemons.lock() else {
            return;
        };
        let mine = all.entry(key.clone()).or_default();
        let running = mine
            .iter()
            .map(|(id, d)| (id.clone(), d.uid.clone()))
            .collect();
        let (to_stop, to_start) = plan(&running, &wanted, &uid);
        for id in to_stop {
            if let Some(d) = mine.remove(&id) {
                info!(daemon = %id, "stopping daemon");
                drop(stop(d, None));
            }
        }
        if let Some(c) = live {
            for id in to_start {
                if let Some(h) = self.daemon_handlers().find(|h| h.id == id) {
                    let d = self.spawn_daemon(key, h, c);
                    mine.insert(id, d);
                }
            }
        }
        if mine.is_empty() {
            all.remove(key);
        }
    }

    fn spawn_daemon(self: &Arc<Self>, key: &Key, h: &Handler<K>, cur: &Current<K>) -> Daemon {
        let (tx, rx) = watch::channel(false);
        let grace = match h.kind {
            HandlerKind::Daemon {
                cancellation_timeout,
            } => cancellation_timeout,
            _ => Duration::ZERO,
        };
        let uid = cur.dobj.metadata.uid.clone();
        let inner = self.clone();
        let (key2, h2, uid2, rx2) = (key.clone(), h.clone(), uid.clone(), rx.clone());
        let span = info_span!("daemon", kind = %self.kind, key = %key, id = %h.id);
        let task = tokio::spawn(
            supervise(
                move |retry| {
                    // Each (re)start gets the latest version of the object.
                    let o = inner.store_get(&key2).filter(|o| o.metadata.uid == uid2)?;
                    let cur = inner.parse((*o).clone()).ok()?;
                    let mut ctx = inner.context(&h2, Cause::Daemon, &cur, retry, Change::none());
                    ctx.cancel = Some(rx2.clone());
                    let (inner, h) = (inner.clone(), h2.clone());
                    Some(async move {
                        let started = std::time::Instant::now();
                        let task = tokio::spawn((h.func)(ctx));
                        let _abort = AbortOnDrop(task.abort_handle());
                        let res = match task.await {
                            Ok(r) => r,
                            Err(e) => Err(HandlerError::Other(anyhow::anyhow!(
                                "daemon task failed: {e}"
                            ))),
                        };
                        inner.rt.metrics.handler_run(
                            &inner.kind,
                            &h.id,
                            retry > 0,
                            started.elapsed(),
                        );
                        if let Err(e) = &res {
                            inner
                                .rt
                                .metrics
                                .handler_failure(&inner.kind, &h.id, e.is_permanent());
                        }
                        res
                    })
                },
                h.backoff,
                h.retries,
                rx,
            )
            .instrument(span),
        );
        info!(daemon = %h.id, "daemon started");
        Daemon {
            uid,
            stop: tx,
            task,
            grace,
        }
    }

    /// Stops every daemon (the controller stops): each is told at once and
    /// gets its cancellation timeout, at most `grace` (`Duration::ZERO`
    /// aborts at once); the future completes when all have ended.
    pub(crate) fn stop_all_daemons(&self, grace: Duration) -> impl Future<Output = ()> + use<K> {
        let all: Vec<Daemon> = match self.daemons.lock() {
            Ok(mut m) => m.drain().flat_map(|(_, ds)| ds.into_values()).collect(),
            Err(_) => Vec::new(),
        };
        let reapers: Vec<JoinHandle<()>> = all.into_iter().map(|d| stop(d, Some(grace))).collect();
        async move {
            for r in reapers {
                let _ = r.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn plan_starts_stops_and_replaces_by_uid() {
        let u1 = Some("u1".to_string());
        let u2 = Some("u2".to_string());
        let running: HashMap<String, Option<String>> =
            [("a".to_string(), u1.clone()), ("b".to_string(), u1.clone())].into();
        // Same object: `b` no longer matches, `c` starts matching.
        assert_eq!(
            plan(&running, &["a", "c"], &u1),
            (vec!["b".to_string()], vec!["c".to_string()])
        );
        // Re-created under the same name: all restart.
        let (stop, mut start) = plan(&running, &["a", "b"], &u2);
        start.sort();
        assert_eq!(
            (stop, start),
            (
                vec!["a".to_string(), "b".to_string()],
                vec!["a".to_string(), "b".to_string()]
            )
        );
        // Gone: all stop.
        assert_eq!(plan(&running, &[], &None).0.len(), 2);
        assert_eq!(
            plan(&HashMap::new(), &["a"], &u1),
            (vec![], vec!["a".to_string()])
        );
    }

    // Real time, in milliseconds: sleeps never end early, so the gaps
    // between runs are lower bounds.
    fn backoff() -> Backoff {
        Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_secs(5),
            jitter: false,
        }
    }

    /// Runs `supervise` over scripted outcomes, recording when each run started.
    async fn script(outcomes: Vec<HandlerResult>, retries: Option<u32>) -> Vec<(u32, Duration)> {
        let t0 = tokio::time::Instant::now();
        let log = Arc::new(Mutex::new(Vec::new()));
        let outcomes = Arc::new(Mutex::new(outcomes.into_iter()));
        let (_tx, rx) = watch::channel(false);
        let log2 = log.clone();
        supervise(
            move |n| {
                log2.lock().expect("log").push((n, t0.elapsed()));
                let next = outcomes.lock().expect("outcomes").next();
                next.map(std::future::ready)
            },
            backoff(),
            retries,
            rx,
        )
        .await;
        log.lock().expect("log").clone()
    }

    #[tokio::test]
    async fn failures_restart_with_backoff_until_success() {
        let ms = Duration::from_millis;
        let runs = script(
            vec![
                Err(HandlerError::Other(anyhow::anyhow!("boom"))),
                Err(HandlerError::Other(anyhow::anyhow!("boom"))),
                Err(HandlerError::temporary("later", Some(ms(100)))),
                Ok(()),
                Err(HandlerError::Other(anyhow::anyhow!("never run"))),
            ],
            None,
        )
        .await;
        let retries: Vec<u32> = runs.iter().map(|r| r.0).collect();
        assert_eq!(retries, [0, 1, 2, 3], "restarted until Ok, then not again");
        // base, base * 2, then the temporary error's own delay.
        for (i, want) in [ms(20), ms(40), ms(100)].into_iter().enumerate() {
            let gap = runs[i + 1].1 - runs[i].1;
            assert!(gap >= want, "gap {i}: {gap:?} < {want:?}");
        }
    }

    #[tokio::test]
    async fn permanent_errors_and_exhausted_retries_stop_restarts() {
        let runs = script(vec![Err(HandlerError::permanent("no")), Ok(())], None).await;
        assert_eq!(runs.len(), 1);
        let boom = || Err(HandlerError::Other(anyhow::anyhow!("boom")));
        let runs = script(vec![boom(), boom(), boom(), boom()], Some(2)).await;
        assert_eq!(runs.len(), 3, "the first run and 2 retries");
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait_for_a_restart() {
        let (tx, rx) = watch::channel(false);
        let runs = Arc::new(Mutex::new(0u32));
        let runs2 = runs.clone();
        let sup = tokio::spawn(supervise(
            move |_| {
                *runs2.lock().expect("runs") += 1;
                Some(std::future::ready(Err(HandlerError::temporary(
                    "x",
                    Some(Duration::from_secs(3600)),
                ))))
            },
            backoff(),
            None,
            rx,
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(true).expect("send");
        tokio::time::timeout(Duration::from_secs(1), sup)
            .await
            .expect("stopped")
            .expect("joined");
        assert_eq!(*runs.lock().expect("runs"), 1);
    }
}
