//! Running a controller: the primary watch, the secondary watches, the
//! periodic resync, and the dispatcher that serialises and coalesces the
//! work per object under the operator's worker limit.

use super::cache::{Key, apply_relist, key_of, store_put};
use super::queue::Queue;
use super::{Inner, RunState, SecondaryFn};
use futures::StreamExt;
use kube::Resource;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, error, info, info_span, warn};

pub(super) async fn run_controller<K>(
    inner: Arc<Inner<K>>,
    dyn_api: Api<DynamicObject>,
    config: watcher::Config,
    secondaries: Vec<SecondaryFn>,
    mut shutdown: watch::Receiver<RunState>,
) where
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
    let _daemons = super::daemons::DaemonsGuard(inner.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Key, Instant)>();
    let mut background = JoinSet::new();
    // Primary watch.
    {
        let inner = inner.clone();
        let tx = tx.clone();
        background.spawn(async move {
            let health = &inner.rt.metrics.health;
            health.started(&inner.kind, false);
            let mut stream = watcher::watcher(dyn_api, config).default_backoff().boxed();
            // A (re)list is collected, then applied to the cache at once.
            let mut relist: Option<HashMap<Key, DynamicObject>> = None;
            while let Some(ev) = stream.next().await {
                if ev.is_ok() {
                    health.ok(&inner.kind);
                }
                match ev {
                    Ok(watcher::Event::InitApply(o)) if relist.is_some() => {
                        if let Some(listed) = relist.as_mut() {
                            listed.insert(key_of(&o), o);
                        }
                    }
                    Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                        let key = key_of(&o);
                        store_put(&inner.store, o, false);
                        let _ = tx.send((key, Instant::now()));
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        // Deleted, or no longer selected by the watch's
                        // selectors: a cycle tells the two apart.
                        let key = key_of(&o);
                        inner.store.remove(&key);
                        inner.departed(key.clone(), Arc::new(o));
                        let _ = tx.send((key, Instant::now()));
                    }
                    Ok(watcher::Event::Init) => relist = Some(HashMap::new()),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(listed) = relist.take() {
                            let keys: Vec<Key> = listed.keys().cloned().collect();
                            for (k, last) in apply_relist(&inner.store, listed) {
                                // Gone (or unselected) while the watch was
                                // down: the last version we know stands in.
                                inner.departed(k.clone(), last);
                                let _ = tx.send((k, Instant::now()));
                            }
                            for k in keys {
                                let _ = tx.send((k, Instant::now()));
                            }
                        }
                        health.synced(&inner.kind);
                        if inner.store.set_synced() {
                            inner.rt.metrics.controller_synced();
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, kind = %inner.kind, "watch error");
                        health.failed(&inner.kind, &e.to_string());
                    }
                }
            }
        });
    }
    for s in secondaries {
        background.spawn(s(tx.clone()));
    }
    // Periodic resync.
    {
        let inner = inner.clone();
        let tx = tx.clone();
        // Clamped: `Interval` adds the period to instants.
        let period = inner.rt.config.resync.min(crate::time::FAR_FUTURE);
        if !period.is_zero() {
            background.spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + period, period);
                loop {
                    tick.tick().await;
                    let keys: Vec<Key> = inner.store.keys();
                    for k in keys {
                        let _ = tx.send((k, Instant::now()));
                    }
                }
            });
        }
    }
    drop(tx);

    // Dispatcher: per-object serialisation and coalescing.
    let mut queue = Queue::default();
    let mut tasks: JoinSet<Option<Instant>> = JoinSet::new();
    let mut task_keys: HashMap<tokio::task::Id, Key> = HashMap::new();
    let mut rx_closed = false;

    loop {
        if *shutdown.borrow() != RunState::Run {
            break;
        }
        for key in queue.take_due(Instant::now()) {
            let inner2 = inner.clone();
            let shutdown2 = shutdown.clone();
            let k2 = key.clone();
            let handle = tasks.spawn(async move {
                inner2
                    .waiting
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let permit = inner2.rt.slots.clone().acquire_owned().await;
                inner2
                    .waiting
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let permit = permit.ok()?;
                if *shutdown2.borrow() != RunState::Run {
                    return None;
                }
                inner2.rt.metrics.in_flight_add(1);
                let span = info_span!("object", kind = %inner2.kind, key = %k2);
                let next = inner2.process(&k2).instrument(span).await;
                inner2.rt.metrics.in_flight_add(-1);
                drop(permit);
                next
            });
            task_keys.insert(handle.id(), key);
        }
        inner.rt.metrics.set_queued(
            &inner.kind,
            queue.due_count(Instant::now())
                + inner.waiting.load(std::sync::atomic::Ordering::Relaxed),
        );
        let next_due = queue.next_due();
        tokio::select! {
            changed = shutdown.changed() => {
                // A dropped sender means the operator is gone: stop as well.
                if changed.is_err() { break; }
            }
            msg = rx.recv(), if !rx_closed => match msg {
                Some((k, at)) => queue.schedule(k, at),
                None => {
                    // All producers (watches, resync) ended: keep serving
                    // what is scheduled, but stop polling the channel.
                    warn!(kind = %inner.kind, "all event sources ended");
                    rx_closed = true;
                }
            },
            Some(res) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let (id, next) = match res {
                    Ok((id, next)) => (id, next),
                    Err(e) => {
                        error!(error = %e, kind = %inner.kind, "object task failed");
                        (e.id(), Some(Instant::now() + Duration::from_secs(5)))
                    }
                };
                if let Some(key) = task_keys.remove(&id) {
                    queue.finished(&key, next);
                }
            }
            _ = async {
                match next_due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }

    background.abort_all();
    // Daemons are cancelled with the controller: at once when leadership
    // is lost, else within their cancellation timeout (at most the
    // shutdown timeout), alongside the draining handlers.
    let daemon_grace = match *shutdown.borrow() {
        RunState::Cancel => Duration::ZERO,
        _ => inner.rt.config.shutdown_timeout,
    };
    let daemons = inner.stop_all_daemons(daemon_grace);
    let drained = if *shutdown.borrow() == RunState::Cancel {
        false
    } else {
        // Graceful shutdown: stop watching, let in-flight handlers finish,
        // unless the grace period ends or leadership is lost meanwhile.
        let grace = inner.rt.config.shutdown_timeout;
        let drain =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} });
        let lost = async {
            // A dropped sender means the operator is gone and aborts us anyway.
            if shutdown.wait_for(|s| *s == RunState::Cancel).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = drain => {
                if r.is_err() {
                    warn!(kind = %inner.kind, "shutdown timeout: cancelling in-flight handlers");
                }
                r.is_ok()
            }
            _ = lost => false,
        }
    };
    if !drained {
        if *shutdown.borrow() == RunState::Cancel {
            warn!(kind = %inner.kind, "leadership lost: cancelling in-flight handlers");
        }
        // Dropping an object task drops its handler run, which aborts the
        // handler's task (see `invoke`): nothing of it is recorded.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    // Cycles that ended meanwhile may have started daemons: stop those too.
    daemons.await;
    inner.stop_all_daemons(Duration::ZERO).await;
    inner.rt.metrics.health.stopped(&inner.kind);
    info!(kind = %inner.kind, "controller stopped");
}
