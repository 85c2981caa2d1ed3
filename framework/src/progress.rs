//! Per-object, per-handler progress records, persisted in an annotation.
//!
//! The annotation `<prefix>/progress` holds a JSON [`Progress`] while the
//! handlers of one cause (create, update, resume, delete) are being worked
//! on. It is removed when all of them are done; then (for create and update)
//! `<prefix>/last-handled-configuration` is written instead, in the same
//! patch (one patch per processing cycle).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The progress of all handlers of one cause on one object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The cause these records belong to (`create`, `update`, `resume`, `delete`).
    pub cause: String,
    /// One record per handler id.
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerRecord>,
    /// For updates: a digest of the essence being handled. When the object
    /// changes again before all update handlers are done, the records are
    /// started over so that every handler sees the newest state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub essence: Option<String>,
}

/// A stable digest (64-bit FNV-1a, hex) of a JSON value's compact form.
pub fn digest(v: &serde_json::Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The progress of one handler on one object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandlerRecord {
    /// When the handler first started for this cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Timestamp>,
    /// When the handler finished (succeeded or gave up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Timestamp>,
    /// Not to be retried before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed: Option<Timestamp>,
    /// Number of failed runs so far.
    #[serde(default)]
    pub retries: u32,
    /// The handler succeeded.
    #[serde(default)]
    pub success: bool,
    /// The handler failed permanently (or exhausted its retries).
    #[serde(default)]
    pub failure: bool,
    /// The last error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The delays (in milliseconds) chosen after the last (at most 20)
    /// failures, for inspection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delays_ms: Vec<u64>,
}

impl HandlerRecord {
    /// The handler needs no more runs for this cause.
    pub fn is_done(&self) -> bool {
        self.success || self.failure
    }

    /// How long until the handler may run again (zero if it may run now).
    pub fn wait(&self, now: Timestamp) -> std::time::Duration {
        match self.delayed {
            Some(d) if d > now => {
                let span = d.duration_since(now);
                std::time::Duration::try_from(span).unwrap_or_default()
            }
            _ => std::time::Duration::ZERO,
        }
    }
}

impl Progress {
    /// Parses the annotation value; a missing or unreadable value, or one of
    /// another cause, yields an empty record for `cause`.
    pub fn parse(annotation: Option<&str>, cause: &str) -> Progress {
        annotation
            .and_then(|s| serde_json::from_str::<Progress>(s).ok())
            .filter(|p| p.cause == cause)
            .unwrap_or_else(|| Progress {
                cause: cause.to_string(),
                handlers: BTreeMap::new(),
                essence: None,
            })
    }

    /// The annotation value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_cause_mismatch() {
        let now = Timestamp::now();
        let mut p = Progress::parse(None, "create");
        assert!(p.handlers.is_empty());
        let r = p.handlers.entry("a".into()).or_default();
        r.retries = 2;
        r.delayed = Some(now + jiff::SignedDuration::from_secs(5));
        r.delays_ms = vec![1000, 2000];
        let s = p.to_annotation();
        let back = Progress::parse(Some(&s), "create");
        assert_eq!(back, p);
        assert!(!back.handlers["a"].is_done());
        let w = back.handlers["a"].wait(now);
        assert!(w > std::time::Duration::from_secs(4) && w <= std::time::Duration::from_secs(5));
        assert!(Progress::parse(Some(&s), "update").handlers.is_empty());
        assert!(
            Progress::parse(Some("not json"), "create")
                .handlers
                .is_empty()
        );
        let done = HandlerRecord {
            success: true,
            ..Default::default()
        };
        assert!(done.is_done());
        let a = digest(&serde_json::json!({"spec": {"a": 1}}));
        assert_eq!(a, digest(&serde_json::json!({"spec": {"a": 1}})));
        assert_ne!(a, digest(&serde_json::json!({"spec": {"a": 2}})));
        assert_eq!(a.len(), 16);
        assert_eq!(done.wait(now), std::time::Duration::ZERO);
    }
}
