//! From an AdmissionReview request to a typed [`AdmissionRequest`] and
//! from a function's answer to the AdmissionReview response.

use super::{AdmissionRequest, Mutation, Operation, Review, Validation};
use crate::data::DataMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::future::Future;
use std::sync::Arc;

fn parse<K: DeserializeOwned>(
    req: &Value,
    data: Arc<DataMap>,
) -> Result<AdmissionRequest<K>, String> {
    let operation = match req["operation"].as_str() {
        Some("CREATE") => Operation::Create,
        Some("UPDATE") => Operation::Update,
        other => return Err(format!("unsupported operation {other:?}")),
    };
    let object = serde_json::from_value(req["object"].clone())
        .map_err(|e| format!("the object does not deserialise: {e}"))?;
    let old_object = match req.get("oldObject") {
        Some(v) if !v.is_null() => Some(
            serde_json::from_value(v.clone())
                .map_err(|e| format!("the old object does not deserialise: {e}"))?,
        ),
        _ => None,
    };
    Ok(AdmissionRequest {
        operation,
        object,
        old_object,
        namespace: req["namespace"].as_str().map(str::to_string),
        username: req["userInfo"]["username"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        dry_run: req["dryRun"].as_bool().unwrap_or(false),
        data,
    })
}

fn uid(req: &Value) -> Value {
    req.get("uid").cloned().unwrap_or(Value::Null)
}

pub(crate) fn denied(req: &Value, message: &str) -> Value {
    json!({
        "uid": uid(req),
        "allowed": false,
        "status": {"code": 403, "reason": "Forbidden", "message": message},
    })
}

/// A validating webhook's review function.
pub(crate) fn validator<K, F, Fut>(f: F) -> Review
where
    K: DeserializeOwned + Send + 'static,
    F: Fn(AdmissionRequest<K>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Validation> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |req: Value, data: Arc<DataMap>| {
        let f = f.clone();
        Box::pin(async move {
            let parsed = match parse::<K>(&req, data) {
                Ok(p) => p,
                Err(e) => return denied(&req, &e),
            };
            match f(parsed).await {
                Ok(()) => json!({"uid": uid(&req), "allowed": true}),
                Err(message) => denied(&req, &message),
            }
        })
    })
}

/// A mutating webhook's review function: the JSON patch goes from the
/// submitted object, as `K` serialises it, to the returned one, so fields
/// that `K` does not know are left alone.
pub(crate) fn mutator<K, F, Fut>(f: F) -> Review
where
    K: DeserializeOwned + Serialize + Send + 'static,
    F: Fn(AdmissionRequest<K>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Mutation<K>> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |req: Value, data: Arc<DataMap>| {
        let f = f.clone();
        Box::pin(async move {
            let parsed = match parse::<K>(&req, data) {
                Ok(p) => p,
                Err(e) => return denied(&req, &e),
            };
            let before = serde_json::to_value(&parsed.object).unwrap_or(Value::Null);
            let after = match f(parsed).await {
                Ok(o) => serde_json::to_value(&o).unwrap_or(Value::Null),
                Err(message) => return denied(&req, &message),
            };
            let patch = json_patch::diff(&before, &after);
            if patch.0.is_empty() {
                return json!({"uid": uid(&req), "allowed": true});
            }
            let bytes = serde_json::to_vec(&patch).unwrap_or_default();
            json!({
                "uid": uid(&req),
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": k8s_openapi::ByteString(bytes),
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn request(op: &str, data: Value) -> Value {
        json!({
            "uid": "u-1", "operation": op, "namespace": "ns",
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "c", "namespace": "ns"}, "data": data},
        })
    }

    #[tokio::test]
    async fn validators_allow_or_deny_with_the_message() {
        let v = validator(|r: AdmissionRequest<ConfigMap>| async move {
            assert_eq!(
                (r.username.as_str(), r.namespace.as_deref()),
                ("alice", Some("ns"))
            );
            match r.object.data.as_ref().and_then(|d| d.get("mode")) {
                Some(m) if m == "bad" => Err(format!("mode {m} is not allowed")),
                _ => Ok(()),
            }
        });
        let data = Arc::new(DataMap::default());
        let ok = v(request("CREATE", json!({"mode": "good"})), data.clone()).await;
        assert_eq!(ok, json!({"uid": "u-1", "allowed": true}));
        let no = v(request("UPDATE", json!({"mode": "bad"})), data.clone()).await;
        assert_eq!(no["allowed"], false);
        assert_eq!(no["status"]["message"], "mode bad is not allowed");
        let del = v(request("DELETE", json!({})), data).await;
        assert_eq!(del["allowed"], false, "unsupported operations are denied");
    }

    #[tokio::test]
    async fn mutators_answer_with_a_json_patch_of_their_changes() {
        let m = mutator(|r: AdmissionRequest<ConfigMap>| async move {
            let mut o = r.object;
            o.data
                .get_or_insert_with(Default::default)
                .entry("mode".into())
                .or_insert("auto".into());
            Ok(o)
        });
        let data = Arc::new(DataMap::default());
        let res = m(request("CREATE", json!({"x": "1"})), data.clone()).await;
        assert_eq!(res["patchType"], "JSONPatch");
        let bytes: k8s_openapi::ByteString =
            serde_json::from_value(res["patch"].clone()).expect("base64");
        let patch: Value = serde_json::from_slice(&bytes.0).expect("json");
        assert_eq!(
            patch,
            json!([{"op": "add", "path": "/data/mode", "value": "auto"}])
        );
        let unchanged = m(request("CREATE", json!({"mode": "manual"})), data).await;
        assert_eq!(
            unchanged,
            json!({"uid": "u-1", "allowed": true}),
            "no patch when nothing changes"
        );
    }
}
