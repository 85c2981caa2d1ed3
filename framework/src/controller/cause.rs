//! Handling one cause (create, update, resume, delete): running its
//! unfinished handlers in registration order and recording their outcomes in
//! the progress, which the cycle then persists with one patch.

use super::Inner;
use super::diffbase::DiffBase;
use super::invoke::{Change, Current, essence, min_opt};
use super::plan::{record_failure, record_success};
use crate::diff::{diff, filter_path};
use crate::error::HandlerError;
use crate::handler::{Cause, HandlerKind};
use crate::progress::Progress;
use jiff::Timestamp;
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt::Debug;
use std::sync::Arc;
use tokio::time::Instant;
use tracing::{debug, info};

/// The outcome of handling a cause in one cycle.
pub(crate) struct CauseRun {
    /// The records of its handlers.
    pub(crate) progress: Progress,
    /// All of them finished (succeeded or gave up).
    pub(crate) done: bool,
    /// When the earliest delayed handler is due.
    pub(crate) wait: Option<Instant>,
    /// The essence the handlers saw (stored as the diff base when done).
    pub(crate) essence: Value,
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
    /// Runs the not yet finished, not delayed handlers `idx` of `cause`,
    /// starting from `progress` (the stored or the unsaved one).
    pub(crate) async fn run_cause(
        self: &Arc<Self>,
        cause: Cause,
        idx: &[usize],
        cur: &mut Current<K>,
        base: Option<&DiffBase>,
        progress: Option<&str>,
    ) -> CauseRun {
        let new = essence(&cur.raw);
        let mut progress = Progress::parse(progress, cause.as_str());
        if cause == Cause::Update {
            let d = crate::progress::digest(&new);
            if progress.essence.as_ref().is_some_and(|e| *e != d) {
                info!(
                    "the object changed during its update handling: starting the update handlers over"
                );
                progress.handlers.clear();
            }
            progress.essence = Some(d);
        }
        let (full_diff, old, known) = match base {
            None => (diff(&json!({}), &new), None, true),
            Some(b) => match b.full() {
                Some(old) => (diff(old, &new), Some(old.clone()), true),
                None => (Vec::new(), None, false),
            },
        };
        let mut wait: Option<Instant> = None;
        debug!(%cause, handlers = idx.len(), "processing cause");
        for &i in idx {
            let h = &self.handlers[i];
            let rec = progress.handlers.entry(h.id.clone()).or_default();
            if rec.is_done() {
                continue;
            }
            let w = rec.wait(Timestamp::now());
            if !w.is_zero() {
                wait = min_opt(wait, Some(crate::time::from_now(w)));
                continue;
            }
            if rec.started.is_none() {
                rec.started = Some(Timestamp::now());
            }
            let retry = rec.retries;
            let diff = match &h.kind {
                HandlerKind::Field { path } => filter_path(&full_diff, path),
                _ => full_diff.clone(),
            };
            let change = Change {
                diff,
                old: old.clone(),
                known,
            };
            let ctx = self.context(h, cause, cur, retry, change);
            let res = self.invoke(h, ctx, retry > 0).await;
            self.refresh(cur);
            let rec = progress.handlers.entry(h.id.clone()).or_default();
            match res {
                Ok(()) => {
                    record_success(rec, Timestamp::now());
                    // Also clears a failure left by an earlier cause (no
                    // request unless such a condition is there).
                    self.clear_failure(cur, h).await;
                }
                Err(e) => {
                    let limit = h.retries.or(if cause == Cause::Delete {
                        Some(self.rt.config.delete_retries)
                    } else {
                        None
                    });
                    let explicit = match &e {
                        HandlerError::Temporary { delay, .. } => *delay,
                        _ => None,
                    };
                    let f = record_failure(
                        rec,
                        &e.message(),
                        e.is_permanent(),
                        explicit,
                        limit,
                        &h.backoff,
                        Timestamp::now(),
                    );
                    let retries = rec.retries;
                    if let Some(d) = f.delay {
                        wait = min_opt(wait, Some(crate::time::from_now(d)));
                    }
                    let shown = if f.permanent && !e.is_permanent() {
                        HandlerError::permanent(f.message.clone())
                    } else {
                        e
                    };
                    self.report_failure(cur, h, cause, &shown, retries, f.permanent, f.delay)
                        .await;
                }
            }
        }
        let done = idx.iter().all(|&i| {
            progress
                .handlers
                .get(&self.handlers[i].id)
                .is_some_and(|r| r.is_done())
        });
        CauseRun {
            progress,
            done,
            wait,
            essence: new,
        }
    }
}
