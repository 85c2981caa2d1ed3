//! Admission webhooks called by a real API server (see `integration.rs`
//! for the kubeconfig rules and `SKIP_CLUSTER_TESTS`). The local cluster's
//! API server runs on this host, so it reaches `https://127.0.0.1:<port>`.

mod common;

use common::*;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, PostParams};
use operator_framework::testing::run_in_background;
use operator_framework::{
    AdmissionRequest, Operation, OperatorConfig, Validation, WebhookConfig, on_validate,
};

/// The macro form (id `no-bad`); the mutating webhook below is built by hand.
#[on_validate]
async fn no_bad(r: AdmissionRequest<FwTest>) -> Validation {
    if r.object.spec.value == "bad" {
        return Err(format!("value `bad` is not allowed ({:?})", r.operation));
    }
    Ok(())
}
use std::time::Duration;

#[tokio::test]
async fn the_api_server_calls_validating_and_mutating_webhooks() {
    let Some(client) = client("the_api_server_calls_validating_and_mutating_webhooks").await else {
        return;
    };
    let ns = namespace(&client, "webhooks").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut webhooks = WebhookConfig::new(addr, format!("https://127.0.0.1:{}", addr.port()));
    // Only this test's namespace: other tests' FwTests are not affected.
    webhooks.configuration_name = Some(format!("fwtest-{ns}"));
    webhooks.namespace_selector = Some(LabelSelector {
        match_labels: Some([("kubernetes.io/metadata.name".to_string(), ns.clone())].into()),
        ..Default::default()
    });
    let c = controller(&client, &ns).webhook(no_bad()).mutate(
        "default-count",
        |r: AdmissionRequest<FwTest>| async move {
            let mut o = r.object;
            if r.operation == Operation::Create && o.spec.count.is_none() {
                o.spec.count = Some(42);
            }
            Ok(o)
        },
    );
    let running = run_in_background(operator_with(
        &client,
        OperatorConfig {
            webhooks: Some(webhooks),
            ..config()
        },
        c,
    ));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    // The configuration is applied at start; the API server may take a
    // moment to see it.
    let refused = eventually(
        Duration::from_secs(30),
        "the bad object refused",
        || async {
            match api.create(&PostParams::default(), &obj("bad", "bad")).await {
                Err(kube::Error::Api(s)) => Some(s.message),
                Ok(_) => {
                    let _ = api.delete("bad", &DeleteParams::default()).await;
                    None
                }
                Err(_) => None,
            }
        },
    )
    .await;
    assert!(
        refused.contains("value `bad` is not allowed (Create)"),
        "{refused}"
    );
    // The two configurations may become active one after the other.
    let mut n = 0;
    let probe = eventually(Duration::from_secs(30), "a defaulted object", || {
        n += 1;
        let name = format!("probe-{n}");
        let api = api.clone();
        async move {
            let o = api
                .create(&PostParams::default(), &obj(&name, "fine"))
                .await
                .ok()?;
            let _ = api.delete(&name, &DeleteParams::default()).await;
            o.spec.count.is_some().then_some(o)
        }
    })
    .await;
    assert_eq!(
        probe.spec.count,
        Some(42),
        "defaulted by the mutating webhook"
    );
    let good = create(&api, &obj("good", "fine")).await;
    assert_eq!(good.spec.count, Some(42));
    let mut explicit = obj("explicit", "fine");
    explicit.spec.count = Some(7);
    assert_eq!(create(&api, &explicit).await.spec.count, Some(7));
    // Updates are validated too.
    let e = api
        .patch(
            "good",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"value": "bad"}})),
        )
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("(Update)"), "{e}");
    running.stop().await.expect("stops");
    let name = format!("fwtest-{ns}");
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = v.delete(&name, &DeleteParams::default()).await;
    let _ = m.delete(&name, &DeleteParams::default()).await;
    cleanup(&client, &ns).await;
}
