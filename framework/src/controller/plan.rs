//! The cause planner: from what is known about an object (its essence, the
//! stored diff base, the finalizer, whether it is being deleted) and which
//! handlers match it, what one processing cycle does. Pure, so every rule is
//! a table-driven unit test without a cluster.

use super::diffbase::DiffBase;
use crate::backoff::Backoff;
use crate::diff::get_path;
use crate::filters::FieldValues;
use crate::handler::{Cause, HandlerKind};
use crate::progress::HandlerRecord;
use jiff::Timestamp;
use serde_json::Value;
use std::time::Duration;

/// What the planner needs to know about one handler.
pub(crate) struct HandlerFacts<'a> {
    pub(crate) kind: &'a HandlerKind,
    /// The handler's filters (labels, annotations, `when`) pass now.
    pub(crate) matches: bool,
    /// An optional delete handler: it wants no finalizer.
    pub(crate) optional: bool,
    /// A field handler's value filters (`None`: none).
    pub(crate) values: Option<&'a FieldValues>,
}

/// What the planner needs to know about the object.
pub(crate) struct ObjectFacts<'a> {
    /// It carries a deletionTimestamp.
    pub(crate) deleting: bool,
    /// It carries our finalizer.
    pub(crate) has_finalizer: bool,
    /// Everything but metadata and status.
    pub(crate) essence: &'a Value,
    /// The diff base, if one is stored (or known to be written).
    pub(crate) base: Option<&'a DiffBase>,
    /// Resume handlers ran (or were not needed) in this process.
    pub(crate) resumed: bool,
    /// The delete handlers of this deletion are done (in this process).
    pub(crate) deletion_handled: bool,
}

/// What one cycle does about causes and the finalizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Nothing (timers and event handlers still run).
    Idle,
    /// A delete handler matches and the finalizer is missing: add it first.
    AddFinalizer,
    /// No delete handler matches (any more), but the finalizer is there:
    /// remove it, without running any delete handler.
    ReleaseFinalizer,
    /// Handle `cause` with these handlers (indices, registration order); the
    /// list may be empty (then only the diff base is stored, as kopf does).
    Handle { cause: Cause, handlers: Vec<usize> },
}

/// Whether a handler of this kind needs the diff base to know its cause.
pub(crate) fn needs_diff_base(kind: &HandlerKind) -> bool {
    matches!(
        kind,
        HandlerKind::Create | HandlerKind::Update | HandlerKind::Resume | HandlerKind::Field { .. }
    )
}

/// The plan for one cycle.
pub(crate) fn plan(handlers: &[HandlerFacts<'_>], o: &ObjectFacts<'_>) -> Plan {
    let pick = |f: &dyn Fn(&HandlerKind) -> bool| -> Vec<usize> {
        handlers
            .iter()
            .enumerate()
            .filter(|(_, h)| h.matches && f(h.kind))
            .map(|(i, _)| i)
            .collect()
    };
    let deletes = pick(&|k| *k == HandlerKind::Delete);
    let optional: Vec<usize> = deletes
        .iter()
        .copied()
        .filter(|i| handlers[*i].optional)
        .collect();
    // Only the delete handlers that are not optional want the finalizer.
    let required = deletes.len() > optional.len();
    if o.deleting {
        return match (o.has_finalizer, deletes.is_empty()) {
            // Held by other finalizers: the optional handlers run once.
            (false, _) if !optional.is_empty() && !o.deletion_handled => Plan::Handle {
                cause: Cause::Delete,
                handlers: optional,
            },
            (false, _) => Plan::Idle,
            (true, true) => Plan::ReleaseFinalizer,
            (true, false) => Plan::Handle {
                cause: Cause::Delete,
                handlers: deletes,
            },
        };
    }
    match (required, o.has_finalizer) {
        (true, false) => return Plan::AddFinalizer,
        (false, true) => return Plan::ReleaseFinalizer,
        _ => {}
    }
    // kopf's "prematch": only objects that some create, update, resume or
    // field handler's filters match are handled (and get a diff base), even
    // if no handler of the cause at hand matches.
    if !handlers
        .iter()
        .any(|h| h.matches && needs_diff_base(h.kind))
    {
        return Plan::Idle;
    }
    // A field handler's value filters: `old` from the full diff base (on
    // creation the field was absent; with a digest it is unknown).
    let values_pass = |picked: Vec<usize>| -> Vec<usize> {
        picked
            .into_iter()
            .filter(|i| {
                let h = &handlers[*i];
                let (HandlerKind::Field { path }, Some(v)) = (h.kind, h.values) else {
                    return true;
                };
                let old = match o.base {
                    None => Some(None),
                    Some(b) => b.full().map(|old| get_path(old, path)),
                };
                v.accepts(old, get_path(o.essence, path))
            })
            .collect()
    };
    let Some(base) = o.base else {
        let handlers = values_pass(pick(&|k| match k {
            HandlerKind::Create => true,
            HandlerKind::Field { path } => get_path(o.essence, path).is_some_and(|v| !v.is_null()),
            _ => false,
        }));
        return Plan::Handle {
            cause: Cause::Create,
            handlers,
        };
    };
    if !o.resumed && handlers.iter().any(|h| *h.kind == HandlerKind::Resume) {
        return Plan::Handle {
            cause: Cause::Resume,
            handlers: pick(&|k| *k == HandlerKind::Resume),
        };
    }
    if base.matches(o.essence) {
        return Plan::Idle;
    }
    let handlers = values_pass(pick(&|k| match k {
        HandlerKind::Update => true,
        HandlerKind::Field { path } => base.field_changed(path, o.essence),
        _ => false,
    }));
    Plan::Handle {
        cause: Cause::Update,
        handlers,
    }
}

/// How a failed run is recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    /// No more runs for this cause (permanent error or retries exhausted).
    pub(crate) permanent: bool,
    /// Retried after this long (`None` when permanent).
    pub(crate) delay: Option<Duration>,
    /// The message recorded and shown.
    pub(crate) message: String,
}

/// Records a failed run in `rec`. `permanent`: the error said so;
/// `explicit_delay`: the delay a temporary error named; `limit`: the retry
/// limit (`None`: unlimited). Delays and timestamps saturate.
pub(crate) fn record_failure(
    rec: &mut HandlerRecord,
    message: &str,
    permanent: bool,
    explicit_delay: Option<Duration>,
    limit: Option<u32>,
    backoff: &Backoff,
    now: Timestamp,
) -> Failure {
    rec.retries = rec.retries.saturating_add(1);
    let exhausted = limit.is_some_and(|l| rec.retries > l);
    let message = if exhausted && !permanent {
        format!("gave up after {} failed runs: {message}", rec.retries)
    } else {
        message.to_string()
    };
    rec.message = Some(super::truncate(&message, 1024));
    if permanent || exhausted {
        rec.failure = true;
        rec.stopped = Some(now);
        rec.delayed = None;
        return Failure {
            permanent: true,
            delay: None,
            message,
        };
    }
    let d = explicit_delay.unwrap_or_else(|| backoff.delay(rec.retries - 1));
    rec.delayed = Some(crate::time::ts_after(now, d));
    rec.delays_ms.push(crate::time::millis(d));
    // Keep the annotation small under endless retries.
    if rec.delays_ms.len() > 20 {
        let excess = rec.delays_ms.len() - 20;
        rec.delays_ms.drain(..excess);
    }
    Failure {
        permanent: false,
        delay: Some(d),
        message,
    }
}

/// Records a successful run in `rec`.
pub(crate) fn record_success(rec: &mut HandlerRecord, now: Timestamp) {
    rec.success = true;
    rec.stopped = Some(now);
    rec.delayed = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(p: &str) -> HandlerKind {
        HandlerKind::Field { path: p.into() }
    }

    /// (kind, matches) per handler.
    fn facts(hs: &[(HandlerKind, bool)]) -> Vec<HandlerFacts<'_>> {
        hs.iter()
            .map(|(kind, matches)| HandlerFacts {
                kind,
                matches: *matches,
                optional: false,
                values: None,
            })
            .collect()
    }

    fn handle(cause: Cause, handlers: &[usize]) -> Plan {
        Plan::Handle {
            cause,
            handlers: handlers.to_vec(),
        }
    }

    #[test]
    fn plans_causes_and_finalizers() {
        use HandlerKind::{Create, Delete, Event, Resume, Update};
        let e1 = json!({"spec": {"a": 1, "f": "x"}});
        let e2 = json!({"spec": {"a": 2, "f": "x"}});
        let e3 = json!({"spec": {"a": 1, "f": "y"}});
        let b1 = DiffBase::Full(e1.clone());
        let d1 = DiffBase::of(&e1, &["spec.f"], true);
        let t = true;
        // (name, handlers, deleting, finalizer, essence, base, resumed, plan)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            Vec<(HandlerKind, bool)>,
            bool,
            bool,
            &Value,
            Option<&DiffBase>,
            bool,
            Plan,
        )> = vec![
            (
                "update-only: a new object gets its diff base stored",
                vec![(Update, t)],
                false,
                false,
                &e1,
                None,
                t,
                handle(Cause::Create, &[]),
            ),
            (
                "update-only: a change then runs the update handler",
                vec![(Update, t)],
                false,
                false,
                &e2,
                Some(&b1),
                t,
                handle(Cause::Update, &[0]),
            ),
            (
                "filtered create plus unfiltered update: creation is recorded",
                vec![(Create, false), (Update, t)],
                false,
                false,
                &e1,
                None,
                t,
                handle(Cause::Create, &[]),
            ),
            (
                "no change: idle",
                vec![(Create, t), (Update, t)],
                false,
                false,
                &e1,
                Some(&b1),
                t,
                Plan::Idle,
            ),
            (
                "only event handlers: nothing to store",
                vec![(Event, t)],
                false,
                false,
                &e1,
                None,
                t,
                Plan::Idle,
            ),
            (
                "a field handler runs on create when its field is set",
                vec![(field("spec.f"), t), (field("spec.none"), t)],
                false,
                false,
                &e1,
                None,
                t,
                handle(Cause::Create, &[0]),
            ),
            (
                "a field handler runs on update only when its field changed",
                vec![(field("spec.f"), t), (field("spec.a"), t)],
                false,
                false,
                &e3,
                Some(&b1),
                t,
                handle(Cause::Update, &[0]),
            ),
            (
                "with a digest base field handlers still see which field changed",
                vec![(field("spec.f"), t), (Update, t)],
                false,
                false,
                &e2,
                Some(&d1),
                t,
                handle(Cause::Update, &[1]),
            ),
            (
                "resume first in a new process",
                vec![(Resume, t), (Update, t)],
                false,
                false,
                &e2,
                Some(&b1),
                false,
                handle(Cause::Resume, &[0]),
            ),
            (
                "resume handlers that do not match still mark the resume",
                vec![(Resume, false), (Update, t)],
                false,
                false,
                &e1,
                Some(&b1),
                false,
                handle(Cause::Resume, &[]),
            ),
            (
                "no handler's filters match: the object is not touched",
                vec![(Create, false), (field("spec.f"), false), (Event, t)],
                false,
                false,
                &e1,
                None,
                t,
                Plan::Idle,
            ),
            (
                "... nor updated",
                vec![(Update, false)],
                false,
                false,
                &e2,
                Some(&b1),
                t,
                Plan::Idle,
            ),
            (
                "an object that starts matching without a diff base is created",
                vec![(Create, t)],
                false,
                false,
                &e2,
                None,
                t,
                handle(Cause::Create, &[0]),
            ),
            (
                "no resume on a new object",
                vec![(Resume, t), (Create, t)],
                false,
                false,
                &e1,
                None,
                false,
                handle(Cause::Create, &[1]),
            ),
            (
                "a matching delete handler wants the finalizer",
                vec![(Delete, t), (Create, t)],
                false,
                false,
                &e1,
                None,
                t,
                Plan::AddFinalizer,
            ),
            (
                "a delete handler that does not match wants no finalizer",
                vec![(Delete, false), (Create, t)],
                false,
                false,
                &e1,
                None,
                t,
                handle(Cause::Create, &[1]),
            ),
            (
                "an object that stops matching is released",
                vec![(Delete, false)],
                false,
                true,
                &e1,
                None,
                t,
                Plan::ReleaseFinalizer,
            ),
            (
                "deleting with the finalizer runs the matching delete handlers",
                vec![(Delete, t), (Delete, false), (Delete, t)],
                true,
                true,
                &e1,
                Some(&b1),
                t,
                handle(Cause::Delete, &[0, 2]),
            ),
            (
                "deleting when no delete handler matches: released without handlers",
                vec![(Delete, false)],
                true,
                true,
                &e1,
                Some(&b1),
                t,
                Plan::ReleaseFinalizer,
            ),
            (
                "deleting without our finalizer: nothing",
                vec![(Delete, t)],
                true,
                false,
                &e1,
                None,
                t,
                Plan::Idle,
            ),
            (
                "delete-only: no diff base needed",
                vec![(Delete, t)],
                false,
                true,
                &e1,
                None,
                t,
                Plan::Idle,
            ),
        ];
        for (name, hs, deleting, has_finalizer, essence, base, resumed, want) in cases {
            let hf = facts(&hs);
            let o = ObjectFacts {
                deleting,
                has_finalizer,
                essence,
                base,
                resumed,
                deletion_handled: false,
            };
            assert_eq!(plan(&hf, &o), want, "{name}");
        }
    }

    #[test]
    fn field_value_filters_pick_changes() {
        let e1 = json!({"spec": {"mode": "a"}});
        let e2 = json!({"spec": {"mode": "b"}});
        let full = DiffBase::Full(e1.clone());
        let digest = DiffBase::of(&e1, &["spec.mode"], true);
        let kind = field("spec.mode");
        let to_b = FieldValues {
            new: Some(json!("b")),
            ..Default::default()
        };
        let from_a = FieldValues {
            old: Some(json!("a")),
            ..Default::default()
        };
        let from_absent = FieldValues {
            old: Some(serde_json::Value::Null),
            ..Default::default()
        };
        let facts = |v: &'static FieldValues| -> Vec<HandlerFacts<'static>> {
            let kind: &'static HandlerKind = Box::leak(Box::new(kind.clone()));
            vec![HandlerFacts {
                kind,
                matches: true,
                optional: false,
                values: Some(v),
            }]
        };
        let leak = |v: FieldValues| -> &'static FieldValues { Box::leak(Box::new(v)) };
        let (to_b, from_a, from_absent) = (leak(to_b), leak(from_a), leak(from_absent));
        let obj = |essence, base| ObjectFacts {
            deleting: false,
            has_finalizer: false,
            essence,
            base,
            resumed: true,
            deletion_handled: false,
        };
        let cases: Vec<(&str, &'static FieldValues, &Value, Option<&DiffBase>, Plan)> = vec![
            (
                "a -> b passes new=b",
                to_b,
                &e2,
                Some(&full),
                handle(Cause::Update, &[0]),
            ),
            (
                "a -> b passes old=a",
                from_a,
                &e2,
                Some(&full),
                handle(Cause::Update, &[0]),
            ),
            (
                "a digest: old unknown",
                from_a,
                &e2,
                Some(&digest),
                handle(Cause::Update, &[]),
            ),
            (
                "created with b passes new=b",
                to_b,
                &e2,
                None,
                handle(Cause::Create, &[0]),
            ),
            (
                "created with a: new=b does not",
                to_b,
                &e1,
                None,
                handle(Cause::Create, &[]),
            ),
            (
                "created: old is absent",
                from_absent,
                &e1,
                None,
                handle(Cause::Create, &[0]),
            ),
            (
                "created: old=a does not pass",
                from_a,
                &e1,
                None,
                handle(Cause::Create, &[]),
            ),
        ];
        for (name, v, essence, base, want) in cases {
            assert_eq!(plan(&facts(v), &obj(essence, base)), want, "{name}");
        }
    }

    #[test]
    fn optional_delete_handlers_want_no_finalizer_and_run_once() {
        let e = json!({"spec": {}});
        let b = DiffBase::Full(e.clone());
        let del = HandlerKind::Delete;
        let hs = |optional: &[bool]| -> Vec<HandlerFacts<'_>> {
            optional
                .iter()
                .map(|o| HandlerFacts {
                    kind: &del,
                    matches: true,
                    optional: *o,
                    values: None,
                })
                .collect()
        };
        let obj = |deleting, has_finalizer, deletion_handled| ObjectFacts {
            deleting,
            has_finalizer,
            essence: &e,
            base: Some(&b),
            resumed: true,
            deletion_handled,
        };
        let only_optional = hs(&[true]);
        assert_eq!(
            plan(&only_optional, &obj(false, false, false)),
            Plan::Idle,
            "no finalizer"
        );
        assert_eq!(
            plan(&only_optional, &obj(false, true, false)),
            Plan::ReleaseFinalizer,
            "a finalizer only optional handlers match is released"
        );
        assert_eq!(
            plan(&only_optional, &obj(true, false, false)),
            handle(Cause::Delete, &[0]),
            "held by others: runs"
        );
        assert_eq!(
            plan(&only_optional, &obj(true, false, true)),
            Plan::Idle,
            "once"
        );
        let mixed = hs(&[true, false]);
        assert_eq!(plan(&mixed, &obj(false, false, false)), Plan::AddFinalizer);
        assert_eq!(
            plan(&mixed, &obj(true, true, false)),
            handle(Cause::Delete, &[0, 1]),
            "with our finalizer all matching delete handlers run"
        );
    }

    #[test]
    fn failures_back_off_then_give_up() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
            jitter: false,
        };
        let now = Timestamp::from_second(1_000_000).expect("ts");
        let mut rec = HandlerRecord::default();
        let f = record_failure(&mut rec, "boom", false, None, Some(1), &b, now);
        assert_eq!(f.delay, Some(Duration::from_secs(1)));
        assert!(!f.permanent && !rec.is_done());
        assert_eq!(rec.delayed, Some(now + jiff::SignedDuration::from_secs(1)));
        let f = record_failure(&mut rec, "boom", false, None, Some(1), &b, now);
        assert!(f.permanent && rec.failure && rec.is_done());
        assert_eq!(f.message, "gave up after 2 failed runs: boom");
        assert_eq!(rec.delays_ms, vec![1000]);

        let mut rec = HandlerRecord::default();
        let f = record_failure(&mut rec, "stop", true, None, None, &b, now);
        assert!(f.permanent && f.delay.is_none());
        assert_eq!(f.message, "stop");
        record_success(&mut rec, now);
        assert!(rec.success);
    }

    #[test]
    fn huge_delays_saturate() {
        let mut rec = HandlerRecord::default();
        let f = record_failure(
            &mut rec,
            "later",
            false,
            Some(Duration::MAX),
            None,
            &Backoff::default(),
            Timestamp::now(),
        );
        assert_eq!(f.delay, Some(Duration::MAX));
        assert_eq!(rec.delayed, Some(Timestamp::MAX), "never due, not due now");
        assert!(rec.wait(Timestamp::now()) > Duration::from_secs(86_400 * 365));
        assert_eq!(rec.delays_ms, vec![u64::MAX]);
    }
}
