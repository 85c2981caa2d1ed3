//! The diff base: the essence of an object as last handled, kept in the
//! `<prefix>/last-handled-configuration` annotation.
//!
//! It is stored in full (the essence's JSON) while that is at most
//! [`MAX_FULL_BYTES`], so update and field handlers get a field diff and old
//! values. Larger essences, Secrets (whose `data`/`stringData` must not be
//! copied into an annotation in clear) and kinds registered with
//! [`Controller::digest_diff_base`](crate::Controller::digest_diff_base) are
//! stored as a SHA-256 digest of the essence, plus one digest per watched
//! field path. Then a change is still detected, and a field handler still
//! fires only when its field changed, but the old values are unknown: the
//! diff is empty and `old_value()` is `None`.

use crate::diff::get_path;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The largest essence (compact JSON, bytes) stored in full. Kubernetes
/// allows 256 KiB for all annotations of an object together.
pub(crate) const MAX_FULL_BYTES: usize = 64 * 1024;

const DIGEST_PREFIX: &str = "sha256:";

/// A stored diff base.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum DiffBase {
    /// The whole essence.
    Full(Value),
    /// Digests only: of the whole essence and of each watched field.
    Digest {
        essence: String,
        fields: BTreeMap<String, String>,
    },
}

/// Hex SHA-256 of the canonical JSON form of `v` (object keys sorted), so
/// that the digest does not depend on the order the server sent keys in.
pub(crate) fn digest(v: &Value) -> String {
    let mut h = Sha256::new();
    canonical(v, &mut h);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn canonical(v: &Value, h: &mut Sha256) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            h.update(b"{");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                h.update(Value::String(k.clone()).to_string().as_bytes());
                h.update(b":");
                canonical(&m[k], h);
            }
            h.update(b"}");
        }
        Value::Array(a) => {
            h.update(b"[");
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                canonical(x, h);
            }
            h.update(b"]");
        }
        other => h.update(other.to_string().as_bytes()),
    }
}

/// The digest of the value at `path` ("-" when the field is absent, which
/// differs from an explicit `null`).
fn field_digest(essence: &Value, path: &str) -> String {
    get_path(essence, path).map_or_else(|| "-".to_string(), digest)
}

impl DiffBase {
    /// The diff base for `essence`: in full unless `digest_only` or larger
    /// than [`MAX_FULL_BYTES`]; with per-field digests for `field_paths`.
    pub(crate) fn of(essence: &Value, field_paths: &[&str], digest_only: bool) -> DiffBase {
        if !digest_only && essence.to_string().len() <= MAX_FULL_BYTES {
            return DiffBase::Full(essence.clone());
        }
        DiffBase::Digest {
            essence: digest(essence),
            fields: field_paths
                .iter()
                .map(|p| (p.to_string(), field_digest(essence, p)))
                .collect(),
        }
    }

    /// Parses an annotation value; `None` when it is unreadable.
    pub(crate) fn parse(s: &str) -> Option<DiffBase> {
        if let Some(rest) = s.strip_prefix(DIGEST_PREFIX) {
            let (essence, fields) = match rest.split_once('\n') {
                Some((e, f)) => (e, serde_json::from_str(f).ok()?),
                None => (rest, BTreeMap::new()),
            };
            return Some(DiffBase::Digest {
                essence: essence.to_string(),
                fields,
            });
        }
        serde_json::from_str(s).ok().map(DiffBase::Full)
    }

    /// The annotation value.
    pub(crate) fn encode(&self) -> String {
        match self {
            DiffBase::Full(v) => v.to_string(),
            DiffBase::Digest { essence, fields } if fields.is_empty() => {
                format!("{DIGEST_PREFIX}{essence}")
            }
            DiffBase::Digest { essence, fields } => {
                let f = serde_json::to_string(fields).unwrap_or_default();
                format!("{DIGEST_PREFIX}{essence}\n{f}")
            }
        }
    }

    /// Whether `essence` is the one this base was taken of.
    pub(crate) fn matches(&self, essence: &Value) -> bool {
        match self {
            DiffBase::Full(v) => v == essence,
            DiffBase::Digest { essence: d, .. } => *d == digest(essence),
        }
    }

    /// Whether the field at `path` differs between this base and `essence`.
    /// With a digest base that has no digest of that field (a field handler
    /// added since), the field counts as changed when the essence did.
    pub(crate) fn field_changed(&self, path: &str, essence: &Value) -> bool {
        match self {
            DiffBase::Full(old) => get_path(old, path) != get_path(essence, path),
            DiffBase::Digest { fields, .. } => match fields.get(path) {
                Some(d) => *d != field_digest(essence, path),
                None => !self.matches(essence),
            },
        }
    }

    /// The old essence, when stored in full.
    pub(crate) fn full(&self) -> Option<&Value> {
        match self {
            DiffBase::Full(v) => Some(v),
            DiffBase::Digest { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_essences_are_stored_in_full_and_round_trip() {
        let e = json!({"spec": {"a": 1, "b": "x"}});
        let b = DiffBase::of(&e, &["spec.a"], false);
        assert_eq!(b, DiffBase::Full(e.clone()));
        assert_eq!(DiffBase::parse(&b.encode()), Some(b.clone()));
        assert!(b.matches(&e));
        assert!(!b.matches(&json!({"spec": {"a": 2, "b": "x"}})));
        assert!(b.field_changed("spec.a", &json!({"spec": {"a": 2, "b": "x"}})));
        assert!(!b.field_changed("spec.a", &json!({"spec": {"a": 1, "b": "y"}})));
        assert_eq!(b.full(), Some(&e));
    }

    #[test]
    fn large_essences_are_stored_as_a_bounded_digest() {
        let big = "x".repeat(MAX_FULL_BYTES + 1);
        let e = json!({"data": {"big": big, "mode": "a"}});
        let b = DiffBase::of(&e, &["data.mode", "data.missing"], false);
        let s = b.encode();
        assert!(s.len() < 512, "bounded: {} bytes", s.len());
        assert!(!s.contains("xxxx"), "no content in the digest form");
        assert_eq!(DiffBase::parse(&s), Some(b.clone()));
        assert!(b.full().is_none());
        assert!(b.matches(&e));
        let mode_b = json!({"data": {"big": big, "mode": "b"}});
        assert!(!b.matches(&mode_b));
        assert!(b.field_changed("data.mode", &mode_b));
        let big_changed = json!({"data": {"big": "y", "mode": "a"}});
        assert!(!b.field_changed("data.mode", &big_changed));
        assert!(!b.field_changed("data.missing", &big_changed));
        let missing_set = json!({"data": {"big": "y", "mode": "a", "missing": null}});
        assert!(
            b.field_changed("data.missing", &missing_set),
            "absent and null differ"
        );
        // A field without a stored digest follows the whole essence.
        assert!(b.field_changed("data.other", &mode_b));
        assert!(!b.field_changed("data.other", &e));
    }

    #[test]
    fn digest_only_never_stores_the_content() {
        let secret = json!({"data": {"password": "aHVudGVyMg=="}, "type": "Opaque"});
        let b = DiffBase::of(&secret, &[], true);
        let s = b.encode();
        assert!(s.starts_with("sha256:") && !s.contains("aHVudGVyMg"), "{s}");
        assert_eq!(s.len(), "sha256:".len() + 64);
        assert_eq!(DiffBase::parse(&s), Some(b));
    }

    #[test]
    fn digests_ignore_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, {"q": 2, "p": 3}], "x": null}}"#)
                .expect("json");
        let b: Value =
            serde_json::from_str(r#"{"a": {"x": null, "y": [1, {"p": 3, "q": 2}]}, "b": 1}"#)
                .expect("json");
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"b": 2})));
    }

    #[test]
    fn unreadable_values_are_no_base() {
        assert_eq!(DiffBase::parse("not json"), None);
        assert_eq!(DiffBase::parse("sha256:abc\nnot json"), None);
    }
}
