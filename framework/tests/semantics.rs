//! Regression tests of the framework's processing semantics against a real
//! API server (see `integration.rs` for the kubeconfig rules and
//! `SKIP_CLUSTER_TESTS`). Each test works in its own namespace.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use operator_framework::{
    Context, Controller, Handler, HandlerError, HandlerResult, Operator, OperatorConfig,
    WatchEventType,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Log = Arc<Mutex<Vec<String>>>;

fn entries(l: &Log) -> Vec<String> {
    l.lock().map(|v| v.clone()).unwrap_or_default()
}

fn push(l: &Log, s: String) {
    if let Ok(mut v) = l.lock() {
        v.push(s);
    }
}

fn count(l: &Log, entry: &str) -> usize {
    entries(l).iter().filter(|e| *e == entry).count()
}

async fn wait_for(l: &Log, entry: &str) {
    eventually(
        Duration::from_secs(20),
        &format!("log entry `{entry}`"),
        || async { entries(l).iter().any(|e| e == entry).then_some(()) },
    )
    .await;
}

/// A handler that logs `{tag}:{name}` (and, for update and field handlers,
/// `:{changed paths}`) and succeeds.
fn logs<K>(
    log: &Log,
    tag: &str,
) -> impl Fn(Context<K>) -> futures::future::BoxFuture<'static, HandlerResult> + Send + Sync + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (log, tag) = (log.clone(), tag.to_string());
    move |ctx: Context<K>| {
        let (log, tag) = (log.clone(), tag.clone());
        Box::pin(async move {
            let paths: Vec<String> = ctx.diff.iter().map(|d| d.path.clone()).collect();
            let entry = if paths.is_empty() {
                format!("{tag}:{}", ctx.name())
            } else {
                format!("{tag}:{}:{}", ctx.name(), paths.join(","))
            };
            push(&log, entry);
            Ok(())
        })
    }
}

const FINALIZER: &str = "fwtest.operator-framework.dev/finalizer";

fn has_finalizer(o: &FwTest) -> bool {
    o.finalizers().iter().any(|f| f == FINALIZER)
}

/// The number of merge/JSON patches of metadata the operator made.
fn metadata_patches(r: &Running) -> u64 {
    r.metrics
        .render()
        .lines()
        .find(|l| l.starts_with("operator_api_requests_total{verb=\"patch\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn update_and_field_handlers_fire_without_create_handlers() {
    let Some(client) = client("update_and_field_handlers_fire_without_create_handlers").await
    else {
        return;
    };
    let ns = namespace(&client, "updonly").await;
    let log: Log = Arc::default();
    // A create handler that matches no object here, an unfiltered update
    // handler and a field handler.
    let c = controller(&client, &ns)
        .handler(Handler::on_create("picked", logs(&log, "create")).label("pick=yes"))
        .handler(Handler::on_update("updated", logs(&log, "update")))
        .handler(Handler::on_field(
            "count",
            "spec.count",
            logs(&log, "field"),
        ));
    let running = start(operator(&client, c));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("plain", "v1")).await;
    // Its creation is recorded although no handler ran for it.
    let o = wait_handled(&api, "plain", Duration::from_secs(20)).await;
    assert!(annotation(&o, "progress").is_none());
    merge_patch(&api, "plain", serde_json::json!({"spec": {"value": "v2"}})).await;
    wait_for(&log, "update:plain:spec.value").await;
    merge_patch(&api, "plain", serde_json::json!({"spec": {"count": 3}})).await;
    wait_for(&log, "field:plain:spec.count").await;
    wait_for(&log, "update:plain:spec.count").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        entries(&log),
        vec![
            "update:plain:spec.value".to_string(),
            "update:plain:spec.count".to_string(),
            "field:plain:spec.count".to_string(),
        ],
        "each change handled once, no create handler run"
    );
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn the_finalizer_follows_the_delete_handlers_filters() {
    let Some(client) = client("the_finalizer_follows_the_delete_handlers_filters").await else {
        return;
    };
    let ns = namespace(&client, "finfilter").await;
    let log: Log = Arc::default();
    let c = controller(&client, &ns)
        .handler(Handler::on_create("seen", logs(&log, "create")))
        .handler(Handler::on_delete("cleanup", logs(&log, "delete")).label("fin=yes"));
    let running = start(operator(&client, c));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("a", "x")).await;
    let o = wait_handled(&api, "a", Duration::from_secs(20)).await;
    assert!(
        !has_finalizer(&o),
        "no delete handler matches: no finalizer"
    );

    let label = |v: Option<&str>| serde_json::json!({"metadata": {"labels": {"fin": v}}});
    merge_patch(&api, "a", label(Some("yes"))).await;
    eventually(Duration::from_secs(20), "finalizer added", || async {
        has_finalizer(&api.get("a").await.ok()?).then_some(())
    })
    .await;
    merge_patch(&api, "a", label(None)).await;
    eventually(Duration::from_secs(20), "finalizer removed", || async {
        (!has_finalizer(&api.get("a").await.ok()?)).then_some(())
    })
    .await;
    assert_eq!(
        count(&log, "delete:a"),
        0,
        "no delete handler run on release"
    );

    // Matching again: finalizer again, and a deletion runs the handler once.
    merge_patch(&api, "a", label(Some("yes"))).await;
    eventually(Duration::from_secs(20), "finalizer added again", || async {
        has_finalizer(&api.get("a").await.ok()?).then_some(())
    })
    .await;
    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&api, "a", Duration::from_secs(20)).await;
    // An object deleted while not matching is not held.
    create(&api, &obj("b", "x")).await;
    wait_handled(&api, "b", Duration::from_secs(20)).await;
    api.delete("b", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&api, "b", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&log, "delete:a"), 1);
    assert_eq!(count(&log, "delete:b"), 0);
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn leaving_the_watch_selection_is_not_a_deletion() {
    let Some(client) = client("leaving_the_watch_selection_is_not_a_deletion").await else {
        return;
    };
    let ns = namespace(&client, "selection").await;
    let log: Log = Arc::default();
    let l2 = log.clone();
    let events = Handler::on_event("events", move |ctx: Context<FwTest>| {
        let l = l2.clone();
        async move {
            if ctx.watch_event == Some(WatchEventType::Deleted) {
                push(&l, format!("deleted:{}", ctx.name()));
            }
            Ok(())
        }
    });
    let c = Controller::new(
        Api::<FwTest>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels("sel=yes"),
    )
    .handler(events)
    .handler(Handler::on_delete("cleanup", logs(&log, "delete")));
    let running = start(operator(&client, c));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    let selected = |name: &str| {
        let mut o = obj(name, "x");
        o.metadata.labels = Some([("sel".to_string(), "yes".to_string())].into());
        o
    };
    create(&api, &selected("leaves")).await;
    eventually(Duration::from_secs(20), "finalizer added", || async {
        has_finalizer(&api.get("leaves").await.ok()?).then_some(())
    })
    .await;
    merge_patch(
        &api,
        "leaves",
        serde_json::json!({"metadata": {"labels": {"sel": "no"}}}),
    )
    .await;
    // Released: out of the operator's scope, it must not hold the object.
    eventually(Duration::from_secs(20), "finalizer removed", || async {
        (!has_finalizer(&api.get("leaves").await.ok()?)).then_some(())
    })
    .await;
    // A real deletion, for contrast: seen as one.
    create(&api, &selected("deleted")).await;
    eventually(
        Duration::from_secs(20),
        "finalizer on the second",
        || async { has_finalizer(&api.get("deleted").await.ok()?).then_some(()) },
    )
    .await;
    api.delete("deleted", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(&log, "deleted:deleted").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        entries(&log),
        vec![
            "delete:deleted:spec".to_string(),
            "deleted:deleted".to_string()
        ],
        "the object that left the selection saw neither a delete handler nor a Deleted event"
    );
    assert!(api.get("leaves").await.is_ok(), "it still exists");
    running.stop().await;
    cleanup(&client, &ns).await;
}

/// Denies updates of FwTest objects in `ns` that carry the label `block`
/// and the diff base annotation, so that the operator's final write fails.
async fn block_diff_base_writes(client: &Client, ns: &str) -> String {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let name = format!("{ns}-block");
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["fwtest.operator-framework.dev"], "apiVersions": ["v1"],
                "operations": ["UPDATE"], "resources": ["fwtests"]
            }]},
            "validations": [{
                "expression": "!(has(object.metadata.labels) && 'block' in object.metadata.labels && has(object.metadata.annotations) && 'fwtest.operator-framework.dev/last-handled-configuration' in object.metadata.annotations)",
                "message": "diff base writes blocked by the test"
            }]
        }
    }))
    .expect("policy");
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
        }
    }))
    .expect("binding");
    let pp = PostParams::default();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&pp, &policy)
        .await
        .expect("creating the policy");
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&pp, &binding)
        .await
        .expect("creating the binding");
    // Wait until the policy is in force (it takes the server a moment).
    let api: Api<FwTest> = Api::namespaced(client.clone(), ns);
    let mut probe = obj("probe", "x");
    probe.metadata.labels = Some([("block".to_string(), "1".to_string())].into());
    create(&api, &probe).await;
    let key = "fwtest.operator-framework.dev/last-handled-configuration";
    eventually(Duration::from_secs(30), "the policy denies", || async {
        let patch = serde_json::json!({"metadata": {"annotations": {key: "probe"}}});
        match api
            .patch("probe", &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(s)) if s.message.contains("blocked by the test") => Some(()),
            _ => {
                let undo = serde_json::json!({"metadata": {"annotations": {key: null}}});
                let _ = api
                    .patch("probe", &PatchParams::default(), &Patch::Merge(&undo))
                    .await;
                None
            }
        }
    })
    .await;
    api.delete("probe", &DeleteParams::default())
        .await
        .expect("deleting the probe");
    name
}

async fn unblock(client: &Client, name: &str) {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let dp = DeleteParams::default();
    let _ = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .delete(name, &dp)
        .await;
    let _ = Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .delete(name, &dp)
        .await;
}

#[tokio::test]
async fn a_finished_handler_does_not_run_again_when_its_outcome_cannot_be_written() {
    let Some(client) =
        client("a_finished_handler_does_not_run_again_when_its_outcome_cannot_be_written").await
    else {
        return;
    };
    let ns = namespace(&client, "unsaved").await;
    let policy = block_diff_base_writes(&client, &ns).await;
    // In a task, so that the (cluster-wide) policy is removed even when an
    // assertion fails.
    let (c2, ns2) = (client.clone(), ns.clone());
    let outcome = tokio::spawn(async move {
        let (client, ns) = (c2, ns2);
        let log: Log = Arc::default();
        let c = controller(&client, &ns).handler(Handler::on_create("once", logs(&log, "create")));
        let running = start(operator(&client, c));
        let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
        let mut o = obj("blocked", "x");
        o.metadata.labels = Some([("block".to_string(), "1".to_string())].into());
        create(&api, &o).await;
        wait_for(&log, "create:blocked:spec").await;
        // The write of its outcome keeps failing (retried every second)...
        tokio::time::sleep(Duration::from_secs(4)).await;
        let o = api.get("blocked").await.expect("get");
        assert!(annotation(&o, "last-handled-configuration").is_none());
        // ...until it is allowed; the handler ran once all along.
        merge_patch(
            &api,
            "blocked",
            serde_json::json!({"metadata": {"labels": {"block": null}}}),
        )
        .await;
        wait_handled(&api, "blocked", Duration::from_secs(20)).await;
        assert_eq!(entries(&log), vec!["create:blocked:spec".to_string()]);
        running.stop().await;
    })
    .await;
    unblock(&client, &policy).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn progress_and_diff_base_take_one_patch_per_cycle() {
    let Some(client) = client("progress_and_diff_base_take_one_patch_per_cycle").await else {
        return;
    };
    let ns = namespace(&client, "onepatch").await;
    let log: Log = Arc::default();
    let l2 = log.clone();
    let flaky = Handler::on_create("flaky", move |ctx: Context<FwTest>| {
        let l = l2.clone();
        async move {
            push(&l, format!("flaky:{}", ctx.retry));
            if ctx.retry == 0 {
                return Err(HandlerError::temporary(
                    "once",
                    Some(Duration::from_secs(1)),
                ));
            }
            Ok(())
        }
    });
    let c = controller(&client, &ns)
        .handler(Handler::on_create("a", logs(&log, "a")))
        .handler(flaky)
        .handler(Handler::on_create("c", logs(&log, "c")));
    let running = start(operator(&client, c));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("p", "x")).await;
    let o = wait_handled(&api, "p", Duration::from_secs(20)).await;
    assert!(annotation(&o, "progress").is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        entries(&log),
        vec!["a:p:spec", "flaky:0", "c:p:spec", "flaky:1"],
        "finished handlers never ran again"
    );
    // Cycle 1: the progress of all three; cycle 2: the diff base (and the
    // progress removed). Not one write per handler.
    assert_eq!(metadata_patches(&running), 2);
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn the_finalizer_is_removed_by_index_despite_concurrent_changes() {
    let Some(client) = client("the_finalizer_is_removed_by_index_despite_concurrent_changes").await
    else {
        return;
    };
    let ns = namespace(&client, "finindex").await;
    let log: Log = Arc::default();
    let (l2, c2, ns2) = (log.clone(), client.clone(), ns.clone());
    // Changes the object behind the framework's back while it runs (so the
    // framework's copy is stale when it removes the finalizer).
    let delete = Handler::on_delete("cleanup", move |ctx: Context<FwTest>| {
        let (l, api) = (l2.clone(), Api::<FwTest>::namespaced(c2.clone(), &ns2));
        async move {
            push(&l, format!("delete:{}", ctx.name()));
            let patch = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
            api.patch(&ctx.name(), &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        }
    });
    let running = start(operator(&client, controller(&client, &ns).handler(delete)));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    let mut o = obj("held", "x");
    o.metadata.finalizers = Some(vec!["example.com/other".to_string()]);
    create(&api, &o).await;
    eventually(Duration::from_secs(20), "finalizer added", || async {
        let o = api.get("held").await.ok()?;
        (o.finalizers() == [String::from("example.com/other"), FINALIZER.to_string()]).then_some(())
    })
    .await;
    api.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(Duration::from_secs(20), "our finalizer removed", || async {
        let o = api.get("held").await.ok()?;
        (o.finalizers() == [String::from("example.com/other")]).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(entries(&log), vec!["delete:held".to_string()], "ran once");
    merge_patch(
        &api,
        "held",
        serde_json::json!({"metadata": {"finalizers": null}}),
    )
    .await;
    wait_gone(&api, "held", Duration::from_secs(10)).await;
    running.stop().await;
    cleanup(&client, &ns).await;
}

fn base_of(meta: &ObjectMeta) -> Option<String> {
    meta.annotations
        .as_ref()?
        .get(&format!("{PREFIX}/last-handled-configuration"))
        .cloned()
}

/// Logs `{tag}:{name}:known={diff_known}:{changed paths}`.
fn logs_change<K>(
    log: &Log,
    tag: &str,
) -> impl Fn(Context<K>) -> futures::future::BoxFuture<'static, HandlerResult> + Send + Sync + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (log, tag) = (log.clone(), tag.to_string());
    move |ctx: Context<K>| {
        let (log, tag) = (log.clone(), tag.clone());
        Box::pin(async move {
            let paths: Vec<String> = ctx.diff.iter().map(|d| d.path.clone()).collect();
            push(
                &log,
                format!(
                    "{tag}:{}:known={}:{}",
                    ctx.name(),
                    ctx.diff_known(),
                    paths.join(",")
                ),
            );
            Ok(())
        })
    }
}

#[tokio::test]
async fn large_essences_and_secrets_get_a_digest_diff_base() {
    let Some(client) = client("large_essences_and_secrets_get_a_digest_diff_base").await else {
        return;
    };
    let ns = namespace(&client, "digest").await;
    let log: Log = Arc::default();
    // Only the test's objects (not the namespace's kube-root-ca.crt).
    let mine = || watcher::Config::default().labels("fwtest=yes");
    let cms = Controller::new(Api::<ConfigMap>::namespaced(client.clone(), &ns), mine())
        .handler(Handler::on_update(
            "cm-update",
            logs_change(&log, "cm-update"),
        ))
        .handler(Handler::on_field(
            "cm-mode",
            "data.mode",
            logs_change(&log, "cm-mode"),
        ));
    let secrets = Controller::new(Api::<Secret>::namespaced(client.clone(), &ns), mine()).handler(
        Handler::on_update("secret-update", logs_change(&log, "secret-update")),
    );
    let running = start(
        Operator::new(client.clone(), PREFIX)
            .config(config())
            .controller(cms)
            .controller(secrets),
    );
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let big = "x".repeat(100 * 1024);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "big", "labels": {"fwtest": "yes"}},
        "data": {"big": big, "mode": "a"}
    }))
    .expect("cm");
    cm_api
        .create(&PostParams::default(), &cm)
        .await
        .expect("create cm");
    let small: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "small", "labels": {"fwtest": "yes"}}, "data": {"mode": "a"}
    }))
    .expect("cm");
    cm_api
        .create(&PostParams::default(), &small)
        .await
        .expect("create cm");
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "s", "labels": {"fwtest": "yes"}}, "stringData": {"password": "hunter2-in-clear"}
    }))
    .expect("secret");
    secret_api
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");

    let base = eventually(Duration::from_secs(20), "big handled", || async {
        base_of(&cm_api.get("big").await.ok()?.metadata)
    })
    .await;
    assert!(base.starts_with("sha256:") && base.len() < 1024, "{base}");
    let small_base = eventually(Duration::from_secs(20), "small handled", || async {
        base_of(&cm_api.get("small").await.ok()?.metadata)
    })
    .await;
    assert_eq!(small_base, r#"{"data":{"mode":"a"}}"#, "small ones in full");
    let secret_base = eventually(Duration::from_secs(20), "secret handled", || async {
        base_of(&secret_api.get("s").await.ok()?.metadata)
    })
    .await;
    assert!(secret_base.starts_with("sha256:"), "{secret_base}");
    let encoded = "aHVudGVyMi1pbi1jbGVhcg=="; // base64 of the password
    assert!(!secret_base.contains("hunter2") && !secret_base.contains(encoded));

    // A change of another key does not fire the field handler; a change of
    // its field does; the update handler runs each time, without a diff.
    let patch_data = |key: &str, v: &str| serde_json::json!({"data": {key: v}});
    // (Still large after the change: the new base is a digest again.)
    merge_patch(&cm_api, "big", patch_data("big", &"y".repeat(100 * 1024))).await;
    wait_for(&log, "cm-update:big:known=false:").await;
    merge_patch(&cm_api, "big", patch_data("mode", "b")).await;
    wait_for(&log, "cm-mode:big:known=false:").await;
    merge_patch(&cm_api, "small", patch_data("mode", "b")).await;
    wait_for(&log, "cm-mode:small:known=true:data.mode").await;
    let patch = serde_json::json!({"stringData": {"password": "changed"}});
    merge_patch(&secret_api, "s", patch).await;
    wait_for(&log, "secret-update:s:known=false:").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut e = entries(&log);
    e.sort();
    assert_eq!(
        e,
        vec![
            "cm-mode:big:known=false:",
            "cm-mode:big:known=true:data", // on creation (the field is set)
            "cm-mode:small:known=true:data",
            "cm-mode:small:known=true:data.mode",
            "cm-update:big:known=false:",
            "cm-update:big:known=false:",
            "cm-update:small:known=true:data.mode",
            "secret-update:s:known=false:",
        ]
    );
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn each_handler_has_its_own_failure_condition() {
    let Some(client) = client("each_handler_has_its_own_failure_condition").await else {
        return;
    };
    let ns = namespace(&client, "conds").await;
    let recovers = Handler::on_create("recovers", |ctx: Context<FwTest>| async move {
        if ctx.retry < 1 {
            return Err(HandlerError::temporary(
                "not yet",
                Some(Duration::from_secs(2)),
            ));
        }
        Ok(())
    });
    let gives_up = Handler::on_create("gives-up", |_ctx: Context<FwTest>| async move {
        Err(HandlerError::permanent("broken for good"))
    });
    let c = controller(&client, &ns).handler(gives_up).handler(recovers);
    let running = start(operator(&client, c));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("two", "x")).await;
    let o = eventually(
        Duration::from_secs(30),
        "both reported, one recovered",
        || async {
            let o = api.get("two").await.ok()?;
            let r = condition(&o, "HandlerFailed.Recovers")?;
            (r.status == "False").then_some(o)
        },
    )
    .await;
    let g = condition(&o, "HandlerFailed.GivesUp").expect("its own condition");
    assert_eq!((g.status.as_str(), g.reason.as_str()), ("True", "GaveUp"));
    assert!(g.message.contains("broken for good"), "{}", g.message);
    let r = condition(&o, "HandlerFailed.Recovers").expect("condition");
    assert_eq!(r.reason, "Succeeded");
    assert!(
        condition(&o, "HandlerFailed").is_none(),
        "no shared condition"
    );
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn hung_handlers_time_out_by_default() {
    let Some(client) = client("hung_handlers_time_out_by_default").await else {
        return;
    };
    let ns = namespace(&client, "timeout").await;
    let log: Log = Arc::default();
    let l2 = log.clone();
    let hangs = Handler::on_create("hangs", move |ctx: Context<FwTest>| {
        let l = l2.clone();
        async move {
            push(&l, format!("run:{}", ctx.retry));
            if ctx.retry == 0 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok(())
        }
    })
    .backoff(Duration::from_millis(200), Duration::from_secs(1));
    let config = OperatorConfig {
        handler_timeout: Some(Duration::from_secs(1)),
        ..config()
    };
    let running = start(operator_with(
        &client,
        config,
        controller(&client, &ns).handler(hangs),
    ));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("h", "x")).await;
    let o = wait_handled(&api, "h", Duration::from_secs(20)).await;
    assert_eq!(entries(&log), vec!["run:0", "run:1"]);
    let c = eventually(Duration::from_secs(10), "condition cleared", || async {
        let o = api.get("h").await.ok()?;
        condition(&o, "HandlerFailed.Hangs").cloned()
    })
    .await;
    assert_eq!(c.reason, "Succeeded", "{c:?} on {:?}", o.metadata.name);
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn huge_delays_and_intervals_do_not_panic() {
    let Some(client) = client("huge_delays_and_intervals_do_not_panic").await else {
        return;
    };
    let ns = namespace(&client, "huge").await;
    let log: Log = Arc::default();
    let l2 = log.clone();
    let later = Handler::on_create("later", move |ctx: Context<FwTest>| {
        let l = l2.clone();
        async move {
            push(&l, ctx.name());
            if ctx.name() == "never" {
                return Err(HandlerError::temporary(
                    "not in this life",
                    Some(Duration::MAX),
                ));
            }
            Ok(())
        }
    })
    .timeout(Duration::MAX)
    .backoff(Duration::MAX, Duration::MAX);
    let timer = Handler::on_timer("rarely", Duration::MAX, Duration::MAX, logs(&log, "timer"));
    let config = OperatorConfig {
        resync: Duration::MAX,
        shutdown_timeout: Duration::MAX,
        handler_timeout: Some(Duration::MAX),
        ..config()
    };
    let c = controller(&client, &ns).handler(later).handler(timer);
    let running = start(operator_with(&client, config, c));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("never", "x")).await;
    let progress = eventually(Duration::from_secs(20), "the failure recorded", || async {
        let o = api.get("never").await.ok()?;
        annotation(&o, "progress").filter(|p| p.contains("\"retries\":1"))
    })
    .await;
    assert!(progress.contains("\"delayed\":\"9999-"), "{progress}");
    // The controller lives on: another object is handled.
    create(&api, &obj("fine", "x")).await;
    wait_handled(&api, "fine", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&log, "never"), 1, "not retried before the delay");
    assert_eq!(count(&log, "timer:never"), 0);
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn registration_errors_stop_the_operator_before_it_starts() {
    // No cluster needed: nothing is contacted before the checks.
    operator_framework::install_crypto_provider();
    let config = kube::Config::new("http://127.0.0.1:1".parse().expect("url"));
    let client = Client::try_from(config).expect("client");
    let noop = |_ctx: Context<FwTest>| async { Ok(()) };
    let c = Controller::new(
        Api::<FwTest>::all(client.clone()),
        watcher::Config::default(),
    )
    .handler(Handler::on_create("same", noop))
    .handler(Handler::on_update("same", noop));
    let res = Operator::new(client.clone(), PREFIX)
        .controller(c)
        .run_until(std::future::pending())
        .await;
    let e = res.expect_err("duplicate ids are an error").to_string();
    assert!(e.contains("duplicate handler id `same`"), "{e}");
    let c = Controller::new(
        Api::<FwTest>::all(client.clone()),
        watcher::Config::default(),
    )
    .handler(Handler::on_timer(
        "zero",
        Duration::ZERO,
        Duration::ZERO,
        noop,
    ));
    let e = Operator::new(client.clone(), PREFIX)
        .controller(c)
        .run_until(std::future::pending())
        .await
        .expect_err("a zero interval is an error")
        .to_string();
    assert!(e.contains("interval is zero"), "{e}");
    let e = Operator::new(client, PREFIX)
        .config(OperatorConfig {
            handler_timeout: Some(Duration::ZERO),
            ..Default::default()
        })
        .run_until(std::future::pending())
        .await
        .expect_err("a zero timeout is an error")
        .to_string();
    assert!(e.contains("handler_timeout is zero"), "{e}");
}
