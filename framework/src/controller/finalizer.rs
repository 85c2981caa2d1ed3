//! JSON patches that add or remove our finalizer, each guarded by a `test`
//! of exactly what it relies on (as kube-runtime's finalizer helper does),
//! so that a concurrent change of other metadata (labels, another
//! controller's finalizer, a status write) does not make them fail the way a
//! resourceVersion guard would, while a change of the list itself does
//! (the server answers 422 and the next cycle retries with the new list).

use serde_json::{Value, json};

/// The patch adding `fin` to the object whose finalizers are `current`.
pub(crate) fn add(current: &[String], fin: &str) -> json_patch::Patch {
    let ops = if current.is_empty() {
        // A missing list tests equal to null.
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [fin]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": fin},
        ])
    };
    to_patch(ops)
}

/// The patch removing `fin` from `current`: a `test` that it is still at
/// the index we saw it at, then the removal of that index. `None` when it is
/// not there.
pub(crate) fn remove(current: &[String], fin: &str) -> Option<json_patch::Patch> {
    let i = current.iter().position(|f| f == fin)?;
    let path = format!("/metadata/finalizers/{i}");
    Some(to_patch(json!([
        {"op": "test", "path": path, "value": fin},
        {"op": "remove", "path": path},
    ])))
}

fn to_patch(ops: Value) -> json_patch::Patch {
    // The operations above are well-formed by construction.
    serde_json::from_value(ops).unwrap_or_else(|_| json_patch::Patch(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(doc: &Value, p: &json_patch::Patch) -> Result<Value, String> {
        let mut d = doc.clone();
        json_patch::patch(&mut d, p).map_err(|e| e.to_string())?;
        Ok(d)
    }

    fn fins(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn adds_to_a_missing_or_existing_list() {
        let p = add(&[], "x/f");
        assert_eq!(p.0.len(), 2);
        // The API server's JSON patch treats a missing field as null in a
        // `test`; this crate needs the null spelled out.
        let doc = json!({"metadata": {"name": "a", "finalizers": null}});
        let out = apply(&doc, &p).expect("applies");
        assert_eq!(out["metadata"]["finalizers"], json!(["x/f"]));
        let p = add(&fins(&["other"]), "x/f");
        let doc = json!({"metadata": {"finalizers": ["other"]}});
        let out = apply(&doc, &p).expect("applies");
        assert_eq!(out["metadata"]["finalizers"], json!(["other", "x/f"]));
        // The list changed meanwhile: the test fails, nothing is written.
        let doc = json!({"metadata": {"finalizers": ["other", "third"]}});
        assert!(apply(&doc, &p).is_err());
    }

    #[test]
    fn removes_exactly_the_index_seen() {
        assert!(remove(&fins(&["a"]), "x/f").is_none());
        let seen = fins(&["a", "x/f", "b"]);
        let p = remove(&seen, "x/f").expect("present");
        let doc = json!({"metadata": {"finalizers": ["a", "x/f", "b"], "labels": {"new": "1"}}});
        let out = apply(&doc, &p).expect("other metadata changes do not matter");
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        // Another finalizer was removed before ours: the index moved.
        let doc = json!({"metadata": {"finalizers": ["x/f", "b"]}});
        assert!(apply(&doc, &p).is_err(), "never removes another finalizer");
    }
}
