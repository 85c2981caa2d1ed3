//! Timers and level-triggered event handlers: run on every cycle of an
//! existing object that is not being deleted; their retry state is kept in
//! memory, not on the object.

use super::Inner;
use super::invoke::{Change, Current, ObjState, essence, min_opt};
use crate::error::HandlerError;
use crate::handler::{Cause, HandlerKind, WatchEventType};
use kube::Resource;
use kube::api::DynamicObject;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The explicit delay of a temporary error, else the backoff's.
fn retry_delay(e: &HandlerError, backoff: std::time::Duration) -> std::time::Duration {
    match e {
        HandlerError::Temporary { delay: Some(d), .. } => *d,
        _ => backoff,
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
    /// Runs the due timers; returns the earlier of `next` and the next due
    /// timer.
    pub(crate) async fn run_timers(
        self: &Arc<Self>,
        cur: &mut Current<K>,
        st: &mut ObjState,
        mut next: Option<Instant>,
    ) -> Option<Instant> {
        let now = Instant::now();
        for h in self.handlers.iter() {
            let HandlerKind::Timer {
                interval,
                initial_delay,
            } = h.kind
            else {
                continue;
            };
            if !self.passes(h, cur) {
                st.timers.remove(&h.id);
                continue;
            }
            if let Some(stopped_at) = st.timer_stopped.get(&h.id) {
                let current = crate::progress::digest(&essence(&cur.raw));
                if *stopped_at == current {
                    continue;
                }
                info!(handler = %h.id, "the object changed: restarting the stopped timer");
                st.timer_stopped.remove(&h.id);
                st.timer_failures.remove(&h.id);
                st.timers
                    .insert(h.id.clone(), crate::time::after(now, initial_delay));
            }
            let due = *st
                .timers
                .entry(h.id.clone())
                .or_insert(crate::time::after(now, initial_delay));
            if due > Instant::now() {
                next = min_opt(next, Some(due));
                continue;
            }
            let fails = st.timer_failures.get(&h.id).copied().unwrap_or(0);
            let ctx = self.context(h, Cause::Timer, cur, fails, Change::none());
            let res = self.invoke(h, ctx, fails > 0).await;
            self.refresh(cur);
            let at = match res {
                Ok(()) => {
                    st.timer_failures.remove(&h.id);
                    self.clear_failure(cur, h).await;
                    crate::time::from_now(interval)
                }
                Err(e) => {
                    let fails = fails.saturating_add(1);
                    let exhausted = h.retries.is_some_and(|limit| fails > limit);
                    if e.is_permanent() || exhausted {
                        let shown = if e.is_permanent() {
                            e
                        } else {
                            HandlerError::permanent(format!(
                                "gave up after {fails} failed runs: {}",
                                e.message()
                            ))
                        };
                        self.report_failure(cur, h, Cause::Timer, &shown, fails, true, None)
                            .await;
                        // Retrying cannot help until the object changes.
                        st.timers.remove(&h.id);
                        st.timer_failures.remove(&h.id);
                        st.timer_stopped
                            .insert(h.id.clone(), crate::progress::digest(&essence(&cur.raw)));
                        continue;
                    }
                    let delay = retry_delay(&e, h.backoff.delay(fails - 1));
                    self.report_failure(cur, h, Cause::Timer, &e, fails, false, Some(delay))
                        .await;
                    st.timer_failures.insert(h.id.clone(), fails);
                    crate::time::from_now(delay)
                }
            };
            st.timers.insert(h.id.clone(), at);
            next = min_opt(next, Some(at));
        }
        next
    }

    /// Runs the level-triggered event handlers (`Applied`) that are not
    /// backing off; returns the earlier of `next` and the next retry.
    pub(crate) async fn run_events(
        self: &Arc<Self>,
        cur: &mut Current<K>,
        st: &mut ObjState,
        mut next: Option<Instant>,
    ) -> Option<Instant> {
        let now = Instant::now();
        let generation = cur.dobj.metadata.generation;
        for h in self.handlers.iter() {
            if h.kind != HandlerKind::Event || !self.passes(h, cur) {
                continue;
            }
            let (fails, not_before, fgeneration) = st
                .event_backoff
                .get(&h.id)
                .copied()
                .unwrap_or((0, now, generation));
            if not_before > Instant::now() && fgeneration == generation {
                next = min_opt(next, Some(not_before));
                continue;
            }
            let mut ctx = self.context(h, Cause::Event, cur, fails, Change::none());
            ctx.watch_event = Some(WatchEventType::Applied);
            let res = self.invoke(h, ctx, fails > 0).await;
            self.refresh(cur);
            match res {
                Ok(()) => {
                    st.event_backoff.remove(&h.id);
                    self.clear_failure(cur, h).await;
                }
                Err(e) => {
                    let delay = retry_delay(&e, h.backoff.delay(fails));
                    let permanent = e.is_permanent();
                    let failures = fails.saturating_add(1);
                    self.report_failure(
                        cur,
                        h,
                        Cause::Event,
                        &e,
                        failures,
                        permanent,
                        (!permanent).then_some(delay),
                    )
                    .await;
                    if permanent {
                        // Not retried; runs again on the next event.
                        st.event_backoff.remove(&h.id);
                    } else {
                        let at = crate::time::from_now(delay);
                        st.event_backoff
                            .insert(h.id.clone(), (failures, at, generation));
                        next = min_opt(next, Some(at));
                    }
                }
            }
        }
        next
    }

    /// Runs the event handlers once for an object deleted from the API, with
    /// its last known version. Not retried: there is nothing left to retry on.
    pub(crate) async fn deliver_deleted(&self, last: &DynamicObject) {
        let cur = match self.parse(last.clone()) {
            Ok(c) => c,
            Err((_, msg)) => {
                debug!(error = %msg, "deleted object does not deserialise: event handlers skipped");
                return;
            }
        };
        for h in self.handlers.iter() {
            if h.kind != HandlerKind::Event || !self.passes(h, &cur) {
                continue;
            }
            let mut ctx = self.context(h, Cause::Event, &cur, 0, Change::none());
            ctx.watch_event = Some(WatchEventType::Deleted);
            if let Err(e) = self.invoke(h, ctx, false).await {
                warn!(handler = %h.id, error = %e.message(), "event handler failed on the deleted object; not retried");
            }
        }
    }
}
