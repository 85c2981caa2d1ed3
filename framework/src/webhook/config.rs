//! The webhook certificate (self-signed, made at start) and the
//! Validating/MutatingWebhookConfiguration that names it as CA bundle.

use super::{Admission, Route, WebhookConfig};
use crate::error::Error;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

/// A self-signed certificate for the host of `url` (also its own CA):
/// (PEM certificate, DER certificate, PKCS#8 DER key).
pub(crate) fn self_signed(url: &str) -> Result<(String, Vec<u8>, Vec<u8>), Error> {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    // `[::1]:443`, `127.0.0.1:443`, `name:443`: drop the port.
    let host = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    if host.is_empty() {
        return Err(Error::Config(format!("webhook url `{url}` has no host")));
    }
    let key = rcgen::generate_simple_self_signed(vec![host.to_string()])
        .map_err(|e| Error::Config(format!("generating the webhook certificate: {e}")))?;
    Ok((
        key.cert.pem(),
        key.cert.der().to_vec(),
        key.key_pair.serialize_der(),
    ))
}

fn webhook(route: &Route, cfg: &WebhookConfig, prefix: &str, ca_pem: &str) -> Value {
    let scope = if route.namespaced {
        "Namespaced"
    } else {
        "Cluster"
    };
    let mut w = json!({
        // Webhook names must be fully qualified (three or more segments).
        "name": format!("{}.{}.{prefix}", route.id, route.plural),
        "clientConfig": {
            "url": format!("{}{}", cfg.url, route.path()),
            "caBundle": k8s_openapi::ByteString(ca_pem.as_bytes().to_vec()),
        },
        "rules": [{
            "apiGroups": [route.group],
            "apiVersions": [route.version],
            "operations": ["CREATE", "UPDATE"],
            "resources": [route.plural],
            "scope": scope,
        }],
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": cfg.failure_policy,
        "timeoutSeconds": cfg.timeout_seconds.clamp(1, 30),
    });
    if let Some(sel) = &cfg.namespace_selector {
        w["namespaceSelector"] = serde_json::to_value(sel).unwrap_or(Value::Null);
    }
    w
}

/// Applies (server-side) the Validating and MutatingWebhookConfiguration
/// for `routes` with `ca_pem` as CA bundle, replacing what an earlier start
/// applied; a kind without webhooks has its configuration deleted.
pub(crate) async fn apply_configurations(
    client: &Client,
    cfg: &WebhookConfig,
    routes: &[Route],
    prefix: &str,
    field_manager: &str,
    ca_pem: &str,
) -> Result<(), Error> {
    let name = cfg
        .configuration_name
        .clone()
        .unwrap_or_else(|| prefix.to_string());
    let pp = PatchParams::apply(field_manager).force();
    let of = |a: Admission| -> Vec<Value> {
        routes
            .iter()
            .filter(|r| r.admission == a)
            .map(|r| webhook(r, cfg, prefix, ca_pem))
            .collect()
    };
    let validating = of(Admission::Validating);
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    if validating.is_empty() {
        delete_if_present(&api, &name).await?;
    } else {
        let body = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": validating,
        });
        api.patch(&name, &pp, &Patch::Apply(&body)).await?;
    }
    let mutating = of(Admission::Mutating);
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if mutating.is_empty() {
        delete_if_present(&api, &name).await?;
    } else {
        let body = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": mutating,
        });
        api.patch(&name, &pp, &Patch::Apply(&body)).await?;
    }
    Ok(())
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_name_the_url_host() {
        for url in [
            "https://127.0.0.1:9443",
            "https://op.ns.svc/x",
            "https://[::1]:1",
        ] {
            let (pem, der, key) = self_signed(url).expect(url);
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{url}");
            assert!(!der.is_empty() && !key.is_empty());
        }
        assert!(self_signed("https://").is_err());
    }
}
