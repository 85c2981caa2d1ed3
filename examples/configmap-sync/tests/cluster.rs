//! The example operator against a real API server. Uses `KUBECONFIG`, else
//! `~/.cache/kube-backup/cluster/kubeconfig`, else the default kubeconfig.
//! Fails with a clear message without a cluster unless `SKIP_CLUSTER_TESTS=1`.

use configmap_sync::{
    COPY_LABEL, ConfigMapSync, ConfigMapSyncSpec, SourceRef, operator, operator_with_resync,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt, ResourceExt};
use operator_framework::testing::{RunningOperator, run_in_background};
use operator_framework::{Operator, OperatorConfig};
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

async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(Duration::from_secs(30), what, f).await
}

async fn eventually_within<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
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

/// A client with the CRD installed (idempotent), or `None` when skipping.
async fn cluster() -> Option<Client> {
    let client = client().await?;
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
    Some(client)
}

/// Creates `<prefix>-<role>-<suffix>` for every role; the names in order.
async fn namespaces(client: &Client, prefix: &str, roles: &[&str]) -> Vec<String> {
    let sfx = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 0xfffff)
        .unwrap_or(0);
    let mut out = Vec::new();
    for role in roles {
        let n = format!("{prefix}-{role}-{sfx:x}");
        make_ns(client, &n).await;
        out.push(n);
    }
    out
}

/// Deletes the test namespaces, first removing the finalizer from
/// ConfigMapSyncs left in them (no operator runs any more to remove it).
async fn delete_namespaces(client: &Client, names: &[String]) {
    let nss: Api<Namespace> = Api::all(client.clone());
    for n in names {
        let syncs: Api<ConfigMapSync> = Api::namespaced(client.clone(), n);
        for s in syncs
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let _ = syncs
                .patch(
                    &s.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
    }
    for n in names {
        let _ = nss.delete(n, &DeleteParams::background()).await;
    }
}

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn sync_spec(name: &str, source: &str, targets: &[&String]) -> ConfigMapSync {
    ConfigMapSync::new(
        name,
        ConfigMapSyncSpec {
            source: SourceRef {
                name: source.into(),
            },
            target_namespaces: targets.iter().map(|t| t.to_string()).collect(),
        },
    )
}

/// The operator running in the background until [`Running::stop`].
struct Running(RunningOperator);

fn start(op: Operator) -> Running {
    Running(run_in_background(op))
}

impl Running {
    /// Stops the operator; its own error fails the test.
    async fn stop(self) {
        match tokio::time::timeout(Duration::from_secs(40), self.0.stop()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the operator failed: {e}"),
            Err(_) => panic!("the operator did not stop within 40s"),
        }
    }
}

/// Creates the ConfigMapSync `copy` of `source` into `targets` in `ns`.
async fn create_sync(
    client: &Client,
    ns: &str,
    source: &str,
    targets: &[&String],
) -> Api<ConfigMapSync> {
    let syncs: Api<ConfigMapSync> = Api::namespaced(client.clone(), ns);
    syncs
        .create(&PostParams::default(), &sync_spec("copy", source, targets))
        .await
        .expect("create ConfigMapSync");
    syncs
}

async fn copy_in(client: &Client, ns: &str, name: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("reading a copy")
}

fn condition<'a>(s: &'a ConfigMapSync, type_: &str) -> Option<&'a Condition> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// The notes of the events.k8s.io Events in `ns` about `name` with `reason`.
async fn event_notes(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    reason: &str,
) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("listing Events")
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some(type_)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test]
async fn copies_follow_the_spec_and_are_removed_on_delete() {
    let Some(client) = cluster().await else {
        return;
    };
    let nss = namespaces(&client, "cms", &["src", "t1", "t2"]).await;
    let (src, t1, t2) = (nss[0].clone(), nss[1].clone(), nss[2].clone());
    let source = config_map("settings", &[("color", "blue")]);
    Api::<ConfigMap>::namespaced(client.clone(), &src)
        .create(&PostParams::default(), &source)
        .await
        .expect("source");

    let running = start(operator(
        client.clone(),
        Api::namespaced(client.clone(), &src),
        OperatorConfig::default(),
    ));

    let syncs = create_sync(&client, &src, "settings", &[&t1, &t2]).await;
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

    running.stop().await;
    delete_namespaces(&client, &nss).await;
}

#[tokio::test]
async fn a_missing_source_is_reported_retried_and_synced_once_it_appears() {
    let Some(client) = cluster().await else {
        return;
    };
    let nss = namespaces(&client, "cms-miss", &["src", "t1"]).await;
    let (src, t1) = (nss[0].clone(), nss[1].clone());
    // The default operator: its drift timer (30 s) does not fire before the
    // create handler's own retries have synced.
    let running = start(operator(
        client.clone(),
        Api::namespaced(client.clone(), &src),
        OperatorConfig::default(),
    ));
    let syncs = create_sync(&client, &src, "settings", &[&t1]).await;

    // Reported: Ready=False/SourceMissing by the example, the create
    // handler's HandlerFailed.Created=True and a Warning Event by the
    // framework, with the 10 s retry delay.
    let failed = eventually("missing source reported", || async {
        let s = syncs.get("copy").await.ok()?;
        let ready = condition(&s, "Ready")?;
        let failed = condition(&s, "HandlerFailed.Created")?;
        (ready.status == "False" && ready.reason == "SourceMissing" && failed.status == "True")
            .then(|| failed.clone())
    })
    .await;
    let not_found = format!("source ConfigMap {src}/settings not found");
    assert_eq!(failed.reason, "Retrying", "not given up: {failed:?}");
    assert!(
        failed.message.contains("retrying in 10.0s") && failed.message.contains(&not_found),
        "{failed:?}"
    );
    let notes = eventually("HandlerFailed Warning Event", || async {
        let n = event_notes(&client, &src, "copy", "Warning", "HandlerFailed").await;
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert!(
        notes.iter().any(|n| n.contains(&not_found)),
        "the Event names the missing source: {notes:?}"
    );

    // Still missing 10 s later: retried again (not given up), nothing copied.
    eventually_within(Duration::from_secs(40), "a second failed run", || async {
        let s = syncs.get("copy").await.ok()?;
        condition(&s, "HandlerFailed.Created")?
            .message
            .contains("failed 2 time(s)")
            .then_some(())
    })
    .await;
    assert!(copy_in(&client, &t1, "settings").await.is_none());

    // The source appears: the next retry (within 10 s; ConfigMaps are not
    // watched) makes the copy and clears the failure.
    let source = config_map("settings", &[("color", "blue")]);
    Api::<ConfigMap>::namespaced(client.clone(), &src)
        .create(&PostParams::default(), &source)
        .await
        .expect("create the source");
    let copy = eventually("copy made after the source appeared", || async {
        copy_in(&client, &t1, "settings").await
    })
    .await;
    assert_eq!(copy.data, source.data);
    let s = eventually("Ready=True and HandlerFailed.Created=False", || async {
        let s = syncs.get("copy").await.ok()?;
        let ready = condition(&s, "Ready")?;
        let failed = condition(&s, "HandlerFailed.Created")?;
        (ready.status == "True" && ready.reason == "Synced" && failed.status == "False")
            .then_some(s)
    })
    .await;
    let status = s.status.expect("status");
    assert_eq!(status.synced_namespaces, vec![t1.clone()]);
    assert_eq!(status.synced_count, 1);
    // Posted only by the create handler when it succeeds.
    let synced = eventually("Synced Event", || async {
        let n = event_notes(&client, &src, "copy", "Normal", "Synced").await;
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert_eq!(synced, vec!["copied into 1 namespace(s)".to_string()]);

    running.stop().await;
    delete_namespaces(&client, &nss).await;
}

#[tokio::test]
async fn the_drift_timer_restores_edited_and_deleted_copies() {
    let Some(client) = cluster().await else {
        return;
    };
    let nss = namespaces(&client, "cms-drift", &["src", "t1", "t2"]).await;
    let (src, t1, t2) = (nss[0].clone(), nss[1].clone(), nss[2].clone());
    let sources: Api<ConfigMap> = Api::namespaced(client.clone(), &src);
    sources
        .create(
            &PostParams::default(),
            &config_map("settings", &[("color", "blue")]),
        )
        .await
        .expect("create the source");
    let interval = Duration::from_secs(2);
    let running = start(operator_with_resync(
        client.clone(),
        Api::namespaced(client.clone(), &src),
        OperatorConfig::default(),
        interval,
    ));
    let syncs = create_sync(&client, &src, "settings", &[&t1, &t2]).await;
    let color = |c: &ConfigMap| c.data.as_ref().and_then(|d| d.get("color").cloned());
    for t in [&t1, &t2] {
        eventually("copies made", || async {
            copy_in(&client, t, "settings").await.map(|_| ())
        })
        .await;
    }

    // Edited by hand in t1, deleted by hand in t2: nothing watches the
    // copies, so only the timer can put them back.
    Api::<ConfigMap>::namespaced(client.clone(), &t1)
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"color": "red", "extra": "x"}})),
        )
        .await
        .expect("edit the copy in t1");
    Api::<ConfigMap>::namespaced(client.clone(), &t2)
        .delete("settings", &DeleteParams::default())
        .await
        .expect("delete the copy in t2");
    let restored = eventually("edited copy restored", || async {
        let c = copy_in(&client, &t1, "settings").await?;
        (color(&c).as_deref() == Some("blue")).then_some(c)
    })
    .await;
    assert_eq!(
        restored.data,
        config_map("settings", &[("color", "blue")]).data,
        "the hand-added key is gone too"
    );
    eventually("deleted copy recreated", || async {
        let c = copy_in(&client, &t2, "settings").await?;
        (color(&c).as_deref() == Some("blue")
            && c.labels().get(COPY_LABEL) == Some(&format!("{src}.copy")))
        .then_some(())
    })
    .await;
    let notes = eventually("DriftRepaired Event", || async {
        let n = event_notes(&client, &src, "copy", "Normal", "DriftRepaired").await;
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert!(
        notes.iter().any(|n| n.contains(&t1) || n.contains(&t2)),
        "the Event names the repaired namespaces: {notes:?}"
    );

    // A changed source reaches the copies at the next timer run as well.
    sources
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"color": "green"}})),
        )
        .await
        .expect("edit the source");
    for t in [&t1, &t2] {
        eventually("source change copied", || async {
            let c = copy_in(&client, t, "settings").await?;
            (color(&c).as_deref() == Some("green")).then_some(())
        })
        .await;
    }

    // In sync: further timer runs write nothing.
    let versions = |cms: ConfigMapSync, a: ConfigMap, b: ConfigMap| {
        (
            cms.resource_version(),
            a.resource_version(),
            b.resource_version(),
        )
    };
    let before = versions(
        syncs.get("copy").await.expect("get the ConfigMapSync"),
        copy_in(&client, &t1, "settings").await.expect("copy in t1"),
        copy_in(&client, &t2, "settings").await.expect("copy in t2"),
    );
    tokio::time::sleep(interval * 3).await;
    let after = versions(
        syncs.get("copy").await.expect("get the ConfigMapSync"),
        copy_in(&client, &t1, "settings").await.expect("copy in t1"),
        copy_in(&client, &t2, "settings").await.expect("copy in t2"),
    );
    assert_eq!(
        before, after,
        "a timer run with nothing to repair writes nothing"
    );

    running.stop().await;
    delete_namespaces(&client, &nss).await;
}

#[tokio::test]
async fn a_new_source_name_replaces_the_copies() {
    let Some(client) = cluster().await else {
        return;
    };
    let nss = namespaces(&client, "cms-src", &["src", "t1", "t2"]).await;
    let (src, t1, t2) = (nss[0].clone(), nss[1].clone(), nss[2].clone());
    let sources: Api<ConfigMap> = Api::namespaced(client.clone(), &src);
    let settings = config_map("settings", &[("color", "blue")]);
    let other = config_map("other", &[("size", "large")]);
    for cm in [&settings, &other] {
        sources
            .create(&PostParams::default(), cm)
            .await
            .expect("create a source");
    }
    let running = start(operator(
        client.clone(),
        Api::namespaced(client.clone(), &src),
        OperatorConfig::default(),
    ));
    let syncs = create_sync(&client, &src, "settings", &[&t1, &t2]).await;
    for t in [&t1, &t2] {
        eventually("copies of settings made", || async {
            copy_in(&client, t, "settings").await.map(|_| ())
        })
        .await;
    }

    syncs
        .patch(
            "copy",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"source": {"name": "other"}}})),
        )
        .await
        .expect("switch the source");
    for t in [&t1, &t2] {
        let copy = eventually("copy of the new source made", || async {
            copy_in(&client, t, "other").await
        })
        .await;
        assert_eq!(copy.data, other.data);
        assert_eq!(copy.labels().get(COPY_LABEL), Some(&format!("{src}.copy")));
        eventually("copy of the old source removed", || async {
            copy_in(&client, t, "settings")
                .await
                .is_none()
                .then_some(())
        })
        .await;
    }
    let status = eventually("status after the switch", || async {
        let s = syncs.get("copy").await.ok()?;
        (condition(&s, "Ready")?.status == "True").then_some(s.status?)
    })
    .await;
    let mut want = vec![t1.clone(), t2.clone()];
    want.sort();
    assert_eq!(status.synced_namespaces, want);
    // The sources themselves are untouched.
    for (name, cm) in [("settings", &settings), ("other", &other)] {
        let s = sources.get(name).await.expect("source still there");
        assert_eq!(s.data, cm.data, "{name}");
    }

    // Deleting the ConfigMapSync now removes the copies of the new source.
    syncs
        .delete("copy", &DeleteParams::default())
        .await
        .expect("delete");
    for t in [&t1, &t2] {
        eventually("copy of the new source removed on delete", || async {
            copy_in(&client, t, "other").await.is_none().then_some(())
        })
        .await;
    }

    running.stop().await;
    delete_namespaces(&client, &nss).await;
}

/// The validating webhook (called by the real API server on 127.0.0.1)
/// uses the index to reject a second sync of one source into one target;
/// the copies written are counted in the operator data on `/metrics`.
#[tokio::test]
async fn a_second_sync_of_the_same_source_and_target_is_rejected_at_admission() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use operator_framework::WebhookConfig;
    let Some(client) = cluster().await else {
        return;
    };
    let nss = namespaces(&client, "cmw", &["src", "t1"]).await;
    let (src, t1) = (nss[0].clone(), nss[1].clone());
    Api::<ConfigMap>::namespaced(client.clone(), &src)
        .create(
            &PostParams::default(),
            &config_map("settings", &[("k", "v")]),
        )
        .await
        .expect("source");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut webhooks = WebhookConfig::new(addr, format!("https://127.0.0.1:{}", addr.port()));
    let config_name = format!("configmap-sync-{src}");
    webhooks.configuration_name = Some(config_name.clone());
    webhooks.namespace_selector = Some(LabelSelector {
        match_labels: Some([("kubernetes.io/metadata.name".to_string(), src.clone())].into()),
        ..Default::default()
    });
    let running = start(operator(
        client.clone(),
        Api::namespaced(client.clone(), &src),
        OperatorConfig {
            webhooks: Some(webhooks),
            ..Default::default()
        },
    ));
    let metrics = running.0.metrics();
    let syncs = create_sync(&client, &src, "settings", &[&t1]).await;
    eventually("the copy", || async {
        copy_in(&client, &t1, "settings").await
    })
    .await;
    // The first sync must be in the operator's cache (and the webhook
    // configuration active) before the second one is refused.
    let refused = eventually("the second sync refused", || async {
        match syncs
            .create(
                &PostParams::default(),
                &sync_spec("again", "settings", &[&t1]),
            )
            .await
        {
            Err(kube::Error::Api(s)) => Some(s.message),
            Ok(_) => {
                let _ = syncs.delete("again", &DeleteParams::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await;
    assert!(
        refused.contains("ConfigMapSync copy already copies settings into namespace"),
        "{refused}"
    );
    // Updating the first sync itself is fine.
    syncs
        .patch(
            "copy",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"targetNamespaces": [t1.clone()]}})),
        )
        .await
        .expect("an update of the same sync is allowed");
    assert!(
        metrics
            .render()
            .contains("configmap_sync_copies_written_total 1"),
        "{}",
        metrics.render()
    );
    running.stop().await;
    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete(&config_name, &DeleteParams::default())
        .await;
    delete_namespaces(&client, &nss).await;
}
