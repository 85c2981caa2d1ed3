//! Handler filters: labels, annotations and a predicate.

use std::collections::BTreeMap;
use std::sync::Arc;

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
