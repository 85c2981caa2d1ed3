//! What mover pods need from their namespace: the mover ServiceAccount
//! (made once per namespace by the operator) and the admin's word on root
//! movers (an annotation on the cluster-scoped Namespace).

use crate::desired::MANAGER;
use crate::pod_security::{self, MOVER_SERVICE_ACCOUNT};
use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, ServiceAccount};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};

fn ensured() -> &'static Mutex<BTreeSet<String>> {
    static SET: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    SET.get_or_init(Default::default)
}

/// Applies the namespace's mover ServiceAccount (no token automount, no
/// bindings) once per namespace and process.
pub(crate) async fn ensure_service_account(client: &Client, ns: &str) -> anyhow::Result<()> {
    if ensured().lock().is_ok_and(|s| s.contains(ns)) {
        return Ok(());
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(MOVER_SERVICE_ACCOUNT.into()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                MANAGER.to_string(),
            )])),
            ..Default::default()
        },
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .patch(
            MOVER_SERVICE_ACCOUNT,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&sa),
        )
        .await
        .with_context(|| format!("applying ServiceAccount {ns}/{MOVER_SERVICE_ACCOUNT}"))?;
    if let Ok(mut s) = ensured().lock() {
        s.insert(ns.to_string());
    }
    Ok(())
}

/// Whether the cluster admin allows root movers in the namespace.
pub(crate) async fn privileged_allowed(client: &Client, ns: &str) -> anyhow::Result<bool> {
    let meta = Api::<Namespace>::all(client.clone())
        .get_metadata(ns)
        .await
        .with_context(|| format!("reading Namespace {ns}"))?;
    Ok(pod_security::privileged_allowed(
        &meta.metadata.annotations.unwrap_or_default(),
    ))
}

/// For each of `pvcs` that is ReadWriteOnce and mounted by a running pod:
/// that pod's node, where its mover Job must run too.
pub(crate) async fn pinned_nodes(
    client: &Client,
    ns: &str,
    pvcs: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if pvcs.is_empty() {
        return Ok(out);
    }
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing pods in {ns}"))?
        .items;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    for pvc in pvcs {
        let Some(node) = crate::placement::node_using(pvc, &pods) else {
            continue;
        };
        let modes = claims
            .get_opt(pvc)
            .await
            .with_context(|| format!("reading PVC {ns}/{pvc}"))?
            .and_then(|c| c.spec)
            .and_then(|s| s.access_modes)
            .unwrap_or_default();
        if crate::placement::single_node(&modes) {
            out.insert(pvc.clone(), node);
        }
    }
    Ok(out)
}
