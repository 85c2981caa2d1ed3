//! Where the framework keeps its per-object state between cycles: the
//! handlers' progress and the diff base. Behind a small trait so that the
//! engine does not depend on the storage (annotations now; `.status` could be
//! another implementation, as kopf offers both).

use kube::api::ObjectMeta;
use serde_json::{Map, Value, json};

/// The persisted state of one object (raw values, parsed by their users).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Persisted {
    /// The diff base ([`DiffBase::encode`](super::diffbase::DiffBase::encode)).
    pub(crate) base: Option<String>,
    /// The progress of the cause being handled
    /// ([`Progress::to_annotation`](crate::progress::Progress::to_annotation)).
    pub(crate) progress: Option<String>,
}

/// Reads the persisted state of an object and says how to write a new one.
pub(crate) trait Persistence: Send + Sync {
    /// The state as stored on the object.
    fn read(&self, meta: &ObjectMeta) -> Persisted;

    /// The merge patch that turns `actual` into `desired` (`None`: they are
    /// equal, nothing to write). Only the fields that differ are in it, so
    /// one patch per cycle carries progress and diff base together.
    fn patch(&self, actual: &Persisted, desired: &Persisted) -> Option<Value>;
}

/// State kept in two annotations: `<prefix>/last-handled-configuration` and
/// `<prefix>/progress`.
pub(crate) struct Annotations {
    pub(crate) base_key: String,
    pub(crate) progress_key: String,
}

impl Annotations {
    pub(crate) fn new(prefix: &str) -> Annotations {
        Annotations {
            base_key: format!("{prefix}/last-handled-configuration"),
            progress_key: format!("{prefix}/progress"),
        }
    }
}

impl Persistence for Annotations {
    fn read(&self, meta: &ObjectMeta) -> Persisted {
        let get = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k)).cloned();
        Persisted {
            base: get(&self.base_key),
            progress: get(&self.progress_key),
        }
    }

    fn patch(&self, actual: &Persisted, desired: &Persisted) -> Option<Value> {
        let mut ann = Map::new();
        for (key, a, d) in [
            (&self.base_key, &actual.base, &desired.base),
            (&self.progress_key, &actual.progress, &desired.progress),
        ] {
            if a != d {
                ann.insert(key.clone(), d.clone().map_or(Value::Null, Value::String));
            }
        }
        (!ann.is_empty()).then(|| json!({"metadata": {"annotations": ann}}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(base: Option<&str>, progress: Option<&str>) -> Persisted {
        Persisted {
            base: base.map(str::to_string),
            progress: progress.map(str::to_string),
        }
    }

    #[test]
    fn patches_only_what_differs() {
        let a = Annotations::new("x.io");
        let cases = [
            (p(None, None), p(None, None), None),
            (p(Some("b"), None), p(Some("b"), None), None),
            (
                p(None, None),
                p(None, Some("{}")),
                Some(json!({"metadata": {"annotations": {"x.io/progress": "{}"}}})),
            ),
            (
                p(None, Some("{}")),
                p(Some("{\"spec\":1}"), None),
                Some(json!({"metadata": {"annotations": {
                    "x.io/progress": null,
                    "x.io/last-handled-configuration": "{\"spec\":1}"
                }}})),
            ),
            (
                p(Some("old"), None),
                p(Some("new"), None),
                Some(
                    json!({"metadata": {"annotations": {"x.io/last-handled-configuration": "new"}}}),
                ),
            ),
        ];
        for (actual, desired, want) in cases {
            assert_eq!(
                a.patch(&actual, &desired),
                want,
                "{actual:?} -> {desired:?}"
            );
        }
    }

    #[test]
    fn reads_both_annotations() {
        let a = Annotations::new("x.io");
        let meta = ObjectMeta {
            annotations: Some(
                [
                    ("x.io/progress".to_string(), "P".to_string()),
                    (
                        "x.io/last-handled-configuration".to_string(),
                        "B".to_string(),
                    ),
                    ("other".to_string(), "o".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        assert_eq!(a.read(&meta), p(Some("B"), Some("P")));
        assert_eq!(a.read(&ObjectMeta::default()), p(None, None));
    }
}
