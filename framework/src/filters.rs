//! Handler filters: labels, annotations, a predicate, and the field value
//! filters of field handlers.

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The value filters of a field handler (kopf's `value`, `old`, `new`):
/// an absent field compares as JSON `null`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FieldValues {
    /// The field's current value must be this.
    pub(crate) value: Option<Value>,
    /// The change must come from this value (unknown with a digest diff
    /// base: then the filter does not pass).
    pub(crate) old: Option<Value>,
    /// The change must lead to this value.
    pub(crate) new: Option<Value>,
}

impl FieldValues {
    pub(crate) fn is_empty(&self) -> bool {
        self.value.is_none() && self.old.is_none() && self.new.is_none()
    }

    /// Whether a change of the field from `old` (`None`: unknown; `Some(None)`:
    /// absent) to `new` passes.
    pub(crate) fn accepts(&self, old: Option<Option<&Value>>, new: Option<&Value>) -> bool {
        let null = Value::Null;
        let new = new.unwrap_or(&null);
        let is = |want: &Option<Value>, got: &Value| want.as_ref().is_none_or(|w| w == got);
        let old_ok = match (&self.old, old) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(w), Some(o)) => w == o.unwrap_or(&null),
        };
        is(&self.value, new) && is(&self.new, new) && old_ok
    }
}

type Predicate<K> = Arc<dyn Fn(&K) -> bool + Send + Sync>;

/// The filters of a handler.
pub struct Filters<K> {
    pub(crate) labels: Vec<MetaFilter>,
    pub(crate) annotations: Vec<MetaFilter>,
    pub(crate) when: Option<Predicate<K>>,
}

impl<K> Default for Filters<K> {
    fn default() -> Self {
        Filters {
            labels: Vec::new(),
            annotations: Vec::new(),
            when: None,
        }
    }
}

impl<K> Clone for Filters<K> {
    fn clone(&self) -> Self {
        Filters {
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            when: self.when.clone(),
        }
    }
}

impl<K> Filters<K> {
    /// Whether an object with these labels/annotations (and value) passes.
    pub(crate) fn matches(
        &self,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        obj: &K,
    ) -> bool {
        self.labels.iter().all(|f| f.matches(labels))
            && self.annotations.iter().all(|f| f.matches(annotations))
            && self.when.as_ref().is_none_or(|p| p(obj))
    }
}

/// One label or annotation filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaFilter {
    /// `key=value`
    Equals(String, String),
    /// `key!=value`
    NotEquals(String, String),
    /// `key`
    Present(String),
    /// `!key`
    Absent(String),
}

impl MetaFilter {
    /// Parses `key=value`, `key!=value`, `key` or `!key`.
    pub fn parse(s: &str) -> MetaFilter {
        let s = s.trim();
        if let Some((k, v)) = s.split_once("!=") {
            MetaFilter::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = s.split_once('=') {
            MetaFilter::Equals(k.trim().into(), v.trim().into())
        } else if let Some(k) = s.strip_prefix('!') {
            MetaFilter::Absent(k.trim().into())
        } else {
            MetaFilter::Present(s.into())
        }
    }

    /// Whether `map` passes this filter.
    pub fn matches(&self, map: &BTreeMap<String, String>) -> bool {
        match self {
            MetaFilter::Equals(k, v) => map.get(k) == Some(v),
            MetaFilter::NotEquals(k, v) => map.get(k) != Some(v),
            MetaFilter::Present(k) => map.contains_key(k),
            MetaFilter::Absent(k) => !map.contains_key(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_filters() {
        let m: BTreeMap<String, String> = [("app".to_string(), "demo".to_string())].into();
        assert!(MetaFilter::parse("app=demo").matches(&m));
        assert!(!MetaFilter::parse("app=other").matches(&m));
        assert!(MetaFilter::parse("app!=other").matches(&m));
        assert!(!MetaFilter::parse("app!=demo").matches(&m));
        assert!(MetaFilter::parse("app").matches(&m));
        assert!(!MetaFilter::parse("!app").matches(&m));
        assert!(MetaFilter::parse("!tier").matches(&m));
        assert!(!MetaFilter::parse("tier").matches(&m));
    }

    #[test]
    fn field_values_compare_old_and_new() {
        use serde_json::json;
        let f = |value: Option<Value>, old: Option<Value>, new: Option<Value>| FieldValues {
            value,
            old,
            new,
        };
        let (a, b) = (json!("a"), json!("b"));
        assert!(FieldValues::default().accepts(None, None));
        let to_b = f(None, None, Some(b.clone()));
        assert!(to_b.accepts(Some(Some(&a)), Some(&b)));
        assert!(!to_b.accepts(Some(Some(&b)), Some(&a)));
        let from_a = f(None, Some(a.clone()), None);
        assert!(from_a.accepts(Some(Some(&a)), Some(&b)));
        assert!(!from_a.accepts(None, Some(&b)), "old unknown (digest)");
        let from_absent = f(None, Some(Value::Null), Some(a.clone()));
        assert!(from_absent.accepts(Some(None), Some(&a)), "absent is null");
        let is_a = f(Some(a.clone()), None, None);
        assert!(is_a.accepts(None, Some(&a)));
        assert!(!is_a.accepts(None, None));
    }

    #[test]
    fn filters_combine() {
        let mut f: Filters<u32> = Filters::default();
        let labels: BTreeMap<String, String> = [("app".to_string(), "demo".to_string())].into();
        let none = BTreeMap::new();
        assert!(f.matches(&none, &none, &1));
        f.labels.push(MetaFilter::parse("app=demo"));
        assert!(f.matches(&labels, &none, &1));
        assert!(!f.matches(&none, &none, &1));
        f.when = Some(Arc::new(|n: &u32| *n > 5));
        assert!(!f.matches(&labels, &none, &1));
        assert!(f.matches(&labels, &none, &6));
        f.annotations.push(MetaFilter::parse("x"));
        assert!(!f.matches(&labels, &none, &6));
    }
}
