//! Operator data, the store view and indexes against a real API server
//! (see `integration.rs` for the kubeconfig rules and `SKIP_CLUSTER_TESTS`).

mod common;

use common::*;
use kube::ResourceExt;
use kube::api::Api;
use operator_framework::{Context, Handler, HandlerResult, ObjectRef};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Operator data: what the handlers saw.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

impl Seen {
    fn entries(&self) -> Vec<String> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Records `name: same-value=[..] cached=<bool>` from the index and store.
async fn record(ctx: Context<FwTest>) -> HandlerResult {
    let seen = ctx.data::<Seen>()?;
    let by_value = ctx.index::<String, String>("by-value")?;
    let mut same = by_value.get(&ctx.object.spec.value);
    same.sort();
    let ns = ctx.namespace();
    let cached = ctx
        .store()
        .get_if_uid(
            ns.as_deref(),
            &ctx.name(),
            &ctx.object.uid().unwrap_or_default(),
        )
        .is_some();
    let missing = ctx.data::<u64>().is_err() && ctx.try_data::<u64>().is_none();
    if let Ok(mut v) = seen.0.lock() {
        v.push(format!(
            "{}: same-value={same:?} cached={cached} missing-data-is-err={missing}",
            ctx.name()
        ));
    }
    Ok(())
}

#[tokio::test]
async fn handlers_and_mappers_read_data_store_and_indexes() {
    let Some(client) = client("handlers_and_mappers_read_data_store_and_indexes").await else {
        return;
    };
    let ns = namespace(&client, "data").await;
    let seen = Arc::new(Seen::default());
    let c = controller(&client, &ns)
        .index("by-value", |o: &FwTest| {
            vec![(o.spec.value.clone(), o.name_any())]
        })
        .handler(Handler::on_create("record", record))
        .handler(Handler::on_update("record-update", record));
    // A mapper reading the index: a ConfigMap named after a value re-runs
    // the handlers of the objects with that value.
    let idx = c
        .index_reader::<String, String>("by-value")
        .expect("the index is defined");
    let store = c.store();
    let mapped: Arc<Mutex<Vec<String>>> = Arc::default();
    let mapped2 = mapped.clone();
    let mns = ns.clone();
    let c = c.watches(
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns),
        move |cm| {
            let names = idx.get(&cm.name_any());
            if let Ok(mut m) = mapped2.lock() {
                m.push(format!(
                    "{}->{names:?} store={}",
                    cm.name_any(),
                    store.len()
                ));
            }
            names
                .into_iter()
                .map(|n| ObjectRef::new(&n).within(&mns))
                .collect()
        },
    );
    let running = start(operator(&client, c).data(seen.clone()));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("a", "blue")).await;
    wait_handled(&api, "a", Duration::from_secs(20)).await;
    create(&api, &obj("b", "blue")).await;
    wait_handled(&api, "b", Duration::from_secs(20)).await;
    let got = seen.entries();
    assert_eq!(
        got,
        [
            r#"a: same-value=["a"] cached=true missing-data-is-err=true"#,
            r#"b: same-value=["a", "b"] cached=true missing-data-is-err=true"#,
        ],
        "handlers see the shared data, their cached object and the index"
    );
    // Changing the value moves the object in the index.
    merge_patch(&api, "a", serde_json::json!({"spec": {"value": "red"}})).await;
    eventually(Duration::from_secs(20), "the update of `a`", || async {
        seen.entries()
            .contains(&r#"a: same-value=["a"] cached=true missing-data-is-err=true"#.to_string())
            .then_some(())
            .filter(|_| seen.entries().len() == 3)
    })
    .await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "blue"}})).expect("cm");
    create(&cms, &cm).await;
    eventually(Duration::from_secs(20), "the mapper's lookup", || async {
        mapped
            .lock()
            .ok()?
            .contains(&r#"blue->["b"] store=2"#.to_string())
            .then_some(())
    })
    .await;
    running.stop().await;
    cleanup(&client, &ns).await;
}
