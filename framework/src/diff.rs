//! Structural diffs between two JSON documents, and dotted field paths.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kind of change of one [`DiffItem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffOp {
    /// The field did not exist before.
    Add,
    /// The field changed its value.
    Change,
    /// The field was removed.
    Remove,
}

/// One changed field between the last handled and the current object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffItem {
    /// What happened to the field.
    pub op: DiffOp,
    /// Dotted path of the field, e.g. `spec.schedule` (array elements are not
    /// descended into: a changed list is one item).
    pub path: String,
    /// The old value (`None` for [`DiffOp::Add`]).
    pub old: Option<Value>,
    /// The new value (`None` for [`DiffOp::Remove`]).
    pub new: Option<Value>,
}

/// Computes the list of changed leaf fields between `old` and `new`.
///
/// Objects are compared key by key recursively; any other value (including
/// arrays) is compared as a whole. Keys are visited in sorted order, so the
/// result is deterministic.
pub fn diff(old: &Value, new: &Value) -> Vec<DiffItem> {
    let mut out = Vec::new();
    walk(&mut Vec::new(), Some(old), Some(new), &mut out);
    out
}

fn walk(path: &mut Vec<String>, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<DiffItem>) {
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                path.push(k.clone());
                walk(path, a.get(k), b.get(k), out);
                path.pop();
            }
        }
        (Some(a), Some(b)) if a == b => {}
        (Some(a), Some(b)) => out.push(DiffItem {
            op: DiffOp::Change,
            path: path.join("."),
            old: Some(a.clone()),
            new: Some(b.clone()),
        }),
        (None, Some(b)) => out.push(DiffItem {
            op: DiffOp::Add,
            path: path.join("."),
            old: None,
            new: Some(b.clone()),
        }),
        (Some(a), None) => out.push(DiffItem {
            op: DiffOp::Remove,
            path: path.join("."),
            old: Some(a.clone()),
            new: None,
        }),
        (None, None) => {}
    }
}

/// Looks up a dotted path (`spec.schedule`, `spec.targets.0.name`) in a JSON
/// document. Numeric segments index arrays. Returns `None` if absent.
pub fn get_path<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = doc;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Items of `items` that concern `path` or a field below or above it.
pub fn filter_path(items: &[DiffItem], path: &str) -> Vec<DiffItem> {
    items
        .iter()
        .filter(|d| {
            d.path == path
                || d.path.starts_with(&format!("{path}."))
                || path.starts_with(&format!("{}.", d.path))
                || d.path.is_empty()
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_reports_add_change_remove_sorted() {
        let old = json!({"spec": {"a": 1, "b": {"c": "x"}, "gone": true, "list": [1, 2]}});
        let new = json!({"spec": {"a": 2, "b": {"c": "x", "d": "y"}, "list": [1, 2, 3]}});
        let d = diff(&old, &new);
        let paths: Vec<(&str, DiffOp)> = d.iter().map(|i| (i.path.as_str(), i.op)).collect();
        assert_eq!(
            paths,
            vec![
                ("spec.a", DiffOp::Change),
                ("spec.b.d", DiffOp::Add),
                ("spec.gone", DiffOp::Remove),
                ("spec.list", DiffOp::Change),
            ]
        );
        assert_eq!(d[0].old, Some(json!(1)));
        assert_eq!(d[0].new, Some(json!(2)));
        assert!(diff(&old, &old).is_empty());
    }

    #[test]
    fn get_path_and_filter() {
        let doc = json!({"spec": {"schedule": "* * * * *", "t": [{"n": "a"}]}});
        assert_eq!(get_path(&doc, "spec.schedule"), Some(&json!("* * * * *")));
        assert_eq!(get_path(&doc, "spec.t.0.n"), Some(&json!("a")));
        assert_eq!(get_path(&doc, "spec.missing"), None);
        let d = diff(
            &json!({"spec": {"schedule": "a", "x": 1}}),
            &json!({"spec": {"schedule": "b", "x": 2}}),
        );
        let f = filter_path(&d, "spec.schedule");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].path, "spec.schedule");
        // a change of the whole parent concerns the child
        let d = diff(&json!({}), &json!({"spec": {"schedule": "a"}}));
        assert_eq!(filter_path(&d, "spec.schedule").len(), 1);
    }
}
