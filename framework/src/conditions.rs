//! Helpers for `metav1.Condition` lists in a status.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Inserts or updates the condition of `type_` in `conditions`.
///
/// `lastTransitionTime` is set to now only when the condition is new or its
/// `status` changes. Returns `true` if anything changed (so callers can skip
/// writing an unchanged status).
pub fn upsert(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
) -> bool {
    upsert_at(
        conditions,
        type_,
        status,
        reason,
        message,
        observed_generation,
        Timestamp::now(),
    )
}

/// Like [`upsert`], with an explicit "now" (for tests).
pub fn upsert_at(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> bool {
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        let mut changed = false;
        if c.status != status {
            c.status = status.to_string();
            c.last_transition_time = Time(now);
            changed = true;
        }
        if c.reason != reason {
            c.reason = reason.to_string();
            changed = true;
        }
        if c.message != message {
            c.message = message.to_string();
            changed = true;
        }
        if c.observed_generation != observed_generation {
            c.observed_generation = observed_generation;
            changed = true;
        }
        changed
    } else {
        conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation,
            last_transition_time: Time(now),
        });
        true
    }
}

/// Finds the condition of `type_`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` exists with status `"True"`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Removes the condition of `type_`; returns `true` if one was removed.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    before != conditions.len()
}

/// Turns an arbitrary id (e.g. a handler id such as `create-x`) into a valid
/// condition reason (`CreateX`): CamelCase, letters/digits only, starting with
/// a letter.
pub fn reason_from_id(id: &str) -> String {
    let mut out = String::new();
    for part in id.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars);
        }
    }
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.insert(0, 'H');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_changes_only_with_status() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let t2 = Timestamp::from_second(3_000).unwrap();
        let mut cs = Vec::new();
        assert!(upsert_at(
            &mut cs,
            "Ready",
            "False",
            "Init",
            "m",
            Some(1),
            t0
        ));
        assert_eq!(cs[0].last_transition_time.0, t0);
        // same everything: no change
        assert!(!upsert_at(
            &mut cs,
            "Ready",
            "False",
            "Init",
            "m",
            Some(1),
            t1
        ));
        // reason/message/generation change: changed, same transition time
        assert!(upsert_at(
            &mut cs,
            "Ready",
            "False",
            "Other",
            "m2",
            Some(2),
            t1
        ));
        assert_eq!(cs[0].last_transition_time.0, t0);
        assert_eq!(cs[0].observed_generation, Some(2));
        // status change: new transition time
        assert!(upsert_at(
            &mut cs,
            "Ready",
            "True",
            "Other",
            "m2",
            Some(2),
            t2
        ));
        assert_eq!(cs[0].last_transition_time.0, t2);
        assert!(is_true(&cs, "Ready"));
        assert!(find(&cs, "Nope").is_none());
        assert!(upsert_at(&mut cs, "Other", "Unknown", "R", "", None, t2));
        assert_eq!(cs.len(), 2);
        assert!(remove(&mut cs, "Other"));
        assert!(!remove(&mut cs, "Other"));
    }

    #[test]
    fn reasons() {
        assert_eq!(reason_from_id("create-x"), "CreateX");
        assert_eq!(reason_from_id("my_handler.v2"), "MyHandlerV2");
        assert_eq!(reason_from_id("1abc"), "H1abc");
    }
}
