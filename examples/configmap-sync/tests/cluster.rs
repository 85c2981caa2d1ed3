//! The example operator against a real API server. Uses `KUBECONFIG`, else
//! `~/.cache/kube-backup/cluster/kubeconfig`, else the default kubeconfig.
//! Fails with a clear message without a cluster unless `SKIP_CLUSTER_TESTS=1`.

use configmap_sync::{COPY_LABEL, ConfigMapSync, ConfigMapSyncSpec, SourceRef, operator};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt, ResourceExt};
use operator_framework::OperatorConfig;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

async fn client() -> Option<Client> {
    if std::env::var("SKIP_CLUSTER_TESTS").as_deref() == Ok("1") {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED configmap-sync cluster test (SKIP_CLUSTER_TESTS=1)"
        );
        return None;
    }
    let path = std::env::var("KUBECONFIG")
        .map(std::path::PathBuf::from)
        .ok()
        .or_else(|| {
            let p = std::path::Path::new(&std::env::var("HOME").ok()?)
                .join(".cache/kube-backup/cluster/kubeconfig");
            p.exists().then_some(p)
        });
    let config = match path {
        Some(p) => {
            let kc = Kubeconfig::read_from(&p).unwrap_or_else(|e| panic!("cannot read kubeconfig {}: {e}", p.display()));
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .unwrap_or_else(|e| panic!("bad kubeconfig: {e}"))
        }
        None => Config::infer().await.unwrap_or_else(|e| {
            panic!("no Kubernetes cluster configured ({e}); start the local cluster or set SKIP_CLUSTER_TESTS=1")
        }),
    };
    operator_framework::install_crypto_provider();
    let client = Client::try_from(config).unwrap_or_else(|e| panic!("client: {e}"));
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => Some(client),
        Ok(Err(e)) => panic!(
            "Kubernetes API server not reachable: {e}; start the local cluster or set SKIP_CLUSTER_TESTS=1"
        ),
        Err(_) => panic!(
            "Kubernetes API server did not answer in 10s; start the local cluster or set SKIP_CLUSTER_TESTS=1"
        ),
    }
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn make_ns(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
}

#[tokio::test]
async fn copies_follow_the_spec_and_are_removed_on_delete() {
    let Some(client) = client().await else { return };
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "configmapsyncs.examples.operator-framework.dev",
        &PatchParams::apply("configmap-sync-test").force(),
        &Patch::Apply(ConfigMapSync::crd()),
    )
    .await
    .expect("install CRD");
    eventually("CRD established", || async {
        let c = crds
            .get("configmapsyncs.examples.operator-framework.dev")
            .await
            .ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
    let sfx = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 0xfffff)
        .unwrap_or(0);
    let (src, t1, t2) = (
        format!("cms-src-{sfx:x}"),
        format!("cms-t1-{sfx:x}"),
        format!("cms-t2-{sfx:x}"),
    );
    for n in [&src, &t1, &t2] {
        make_ns(&client, n).await;
    }
    let source = ConfigMap {
        metadata: ObjectMeta {
            name: Some("settings".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("color".to_string(), "blue".to_string())])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), &src)
        .create(&PostParams::default(), &source)
        .await
        .expect("source");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let op = operator(
        client.clone(),
        Api::namespaced(client.clone(), &src),
        OperatorConfig::default(),
    );
    let running = tokio::spawn(op.run_until(async move {
        let _ = stop_rx.await;
    }));

    let syncs: Api<ConfigMapSync> = Api::namespaced(client.clone(), &src);
    let cms = ConfigMapSync::new(
        "copy",
        ConfigMapSyncSpec {
            source: SourceRef {
                name: "settings".into(),
            },
            target_namespaces: vec![t1.clone(), t2.clone()],
        },
    );
    syncs
        .create(&PostParams::default(), &cms)
        .await
        .expect("create ConfigMapSync");
    for t in [&t1, &t2] {
        let copy = eventually("copy created", || async {
            Api::<ConfigMap>::namespaced(client.clone(), t)
                .get_opt("settings")
                .await
                .ok()?
        })
        .await;
        assert_eq!(copy.data, source.data);
        assert_eq!(
            copy.labels().get(COPY_LABEL).cloned(),
            Some(format!("{src}.copy"))
        );
    }
    let status = eventually("status synced", || async {
        let s = syncs.get("copy").await.ok()?.status?;
        (s.synced_count == 2).then_some(s)
    })
    .await;
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // Dropping t2 from the list removes its copy (field handler).
    syncs
        .patch(
            "copy",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"targetNamespaces": [t1]}})),
        )
        .await
        .expect("patch");
    eventually("copy in t2 removed", || async {
        matches!(
            Api::<ConfigMap>::namespaced(client.clone(), &t2)
                .get_opt("settings")
                .await,
            Ok(None)
        )
        .then_some(())
    })
    .await;
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), &t1)
            .get_opt("settings")
            .await
            .expect("get")
            .is_some()
    );

    // Deleting the ConfigMapSync removes the remaining copy (delete handler + finalizer).
    syncs
        .delete("copy", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("copy in t1 removed and ConfigMapSync gone", || async {
        let copy_gone = matches!(
            Api::<ConfigMap>::namespaced(client.clone(), &t1)
                .get_opt("settings")
                .await,
            Ok(None)
        );
        let sync_gone = matches!(syncs.get_opt("copy").await, Ok(None));
        (copy_gone && sync_gone).then_some(())
    })
    .await;

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(40), running).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    for n in [&src, &t1, &t2] {
        let _ = nss.delete(n, &DeleteParams::background()).await;
    }
}
