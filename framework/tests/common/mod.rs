//! Shared helpers of the integration tests (cluster access, test CRD,
//! namespaces, operator setup, start/stop, object changes, polling).
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config, CustomResource, Resource, ResourceExt};
use operator_framework::{Controller, Metrics, Operator, OperatorConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The test resource. Its CRD (installed by [`install_crd`]) accepts any
/// spec, so tests can also create objects that do not deserialise.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fwtest.operator-framework.dev",
    version = "v1",
    kind = "FwTest",
    namespaced,
    status = "FwTestStatus",
    schema = "disabled"
)]
pub struct FwTestSpec {
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct FwTestStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

pub const PREFIX: &str = "fwtest.operator-framework.dev";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

fn kubeconfig_path() -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var("KUBECONFIG") {
        return Some(p.into());
    }
    let home = std::env::var("HOME").ok()?;
    let p = std::path::Path::new(&home).join(".cache/kube-backup/cluster/kubeconfig");
    p.exists().then_some(p)
}

/// A client for the test cluster, or `None` when `SKIP_CLUSTER_TESTS=1`.
/// Panics with a clear message when no API server is reachable.
pub async fn client(test: &str) -> Option<Client> {
    init_tracing();
    if std::env::var("SKIP_CLUSTER_TESTS").as_deref() == Ok("1") {
        // Written to the real stderr (not captured by the test harness) so
        // the skip is visible in the test output.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED cluster integration test `{test}` (SKIP_CLUSTER_TESTS=1)"
        );
        return None;
    }
    let config = match kubeconfig_path() {
        Some(p) => {
            let kc = Kubeconfig::read_from(&p).unwrap_or_else(|e| {
                panic!("cannot read kubeconfig {}: {e}; set SKIP_CLUSTER_TESTS=1 to skip cluster tests", p.display())
            });
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .unwrap_or_else(|e| panic!("bad kubeconfig {}: {e}", p.display()))
        }
        None => Config::infer().await.unwrap_or_else(|e| {
            panic!("no Kubernetes cluster configured ({e}); start the local cluster or set SKIP_CLUSTER_TESTS=1 to skip cluster tests")
        }),
    };
    let url = config.cluster_url.to_string();
    operator_framework::install_crypto_provider();
    let client = Client::try_from(config).unwrap_or_else(|e| panic!("cannot build a client: {e}"));
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!(
            "Kubernetes API server {url} not reachable: {e}. Start the local cluster (kubeconfig ~/.cache/kube-backup/cluster/kubeconfig or KUBECONFIG) or set SKIP_CLUSTER_TESTS=1 to skip cluster tests"
        ),
        Err(_) => panic!(
            "Kubernetes API server {url} did not answer within 10s. Start the local cluster or set SKIP_CLUSTER_TESTS=1 to skip cluster tests"
        ),
    }
    install_crd(&client).await;
    Some(client)
}

/// Installs the FwTest CRD (idempotent) and waits until it is established.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "fwtests.fwtest.operator-framework.dev"},
        "spec": {
            "group": "fwtest.operator-framework.dev",
            "names": {"kind": "FwTest", "plural": "fwtests", "singular": "fwtest", "listKind": "FwTestList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }
                }}
            }]
        }
    }))
    .expect("static CRD");
    let pp = PatchParams::apply("fwtest").force();
    crds.patch(
        "fwtests.fwtest.operator-framework.dev",
        &pp,
        &Patch::Apply(&crd),
    )
    .await
    .expect("installing the test CRD");
    eventually(Duration::from_secs(30), "CRD established", || async {
        let c = crds
            .get("fwtests.fwtest.operator-framework.dev")
            .await
            .ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
}

/// Creates a fresh namespace for one test.
pub async fn namespace(client: &Client, test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!("fw-{test}-{:x}", nanos % 0xfffff);
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"fwtest": "true"}}
    }))
    .expect("namespace");
    api.create(&PostParams::default(), &ns)
        .await
        .expect("creating the test namespace");
    name
}

/// Removes our finalizers from leftover test objects, then deletes the namespace.
pub async fn cleanup(client: &Client, ns: &str) {
    let api: Api<FwTest> = Api::namespaced(client.clone(), ns);
    if let Ok(list) = api.list(&ListParams::default()).await {
        for o in list.items {
            let _ = api
                .patch(
                    &o.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
    }
    let nss: Api<Namespace> = Api::all(client.clone());
    let _ = nss.delete(ns, &DeleteParams::background()).await;
}

/// The operator settings of the tests: a 60 s resync, a 10 s shutdown drain.
pub fn config() -> OperatorConfig {
    OperatorConfig {
        resync: Duration::from_secs(60),
        shutdown_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// A controller of the FwTest objects in `ns`.
pub fn controller(client: &Client, ns: &str) -> Controller<FwTest> {
    Controller::new(
        Api::<FwTest>::namespaced(client.clone(), ns),
        watcher::Config::default(),
    )
}

/// An operator with the test [`config`] running `controller`.
pub fn operator(client: &Client, controller: Controller<FwTest>) -> Operator {
    operator_with(client, config(), controller)
}

/// An operator with `config` running `controller`.
pub fn operator_with(
    client: &Client,
    config: OperatorConfig,
    controller: Controller<FwTest>,
) -> Operator {
    Operator::new(client.clone(), PREFIX)
        .config(config)
        .controller(controller)
}

pub fn obj(name: &str, value: &str) -> FwTest {
    FwTest::new(
        name,
        FwTestSpec {
            value: value.into(),
            count: None,
        },
    )
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates `object`; panics if the API server refuses it.
pub async fn create<K>(api: &Api<K>, object: &K) -> K
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    api.create(&PostParams::default(), object)
        .await
        .unwrap_or_else(|e| panic!("creating {}: {e}", object.name_any()))
}

/// Applies the JSON merge patch `patch` to the object `name`.
pub async fn merge_patch<K>(api: &Api<K>, name: &str, patch: serde_json::Value)
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("patching {name}: {e}"));
}

/// Waits until the object `name` no longer exists.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    eventually(timeout, &format!("`{name}` gone"), || async {
        matches!(api.get_opt(name).await, Ok(None)).then_some(())
    })
    .await;
}

/// Waits until the object `name` carries the record of a finished create or
/// update (the `last-handled-configuration` annotation) and returns it.
pub async fn wait_handled(api: &Api<FwTest>, name: &str, timeout: Duration) -> FwTest {
    eventually(timeout, &format!("`{name}` handled"), || async {
        let o = api.get(name).await.ok()?;
        annotation(&o, "last-handled-configuration")
            .is_some()
            .then_some(o)
    })
    .await
}

/// Waits until the object `name` has a handler's failure condition
/// (`HandlerFailed.<Id>`) with `status` and returns that condition.
pub async fn wait_handler_failed(
    api: &Api<FwTest>,
    name: &str,
    status: &str,
    timeout: Duration,
) -> Condition {
    let what = format!("condition HandlerFailed.*={status} on `{name}`");
    eventually(timeout, &what, || async {
        let o = api.get(name).await.ok()?;
        o.status?
            .conditions
            .into_iter()
            .find(|c| c.type_.starts_with("HandlerFailed.") && c.status == status)
    })
    .await
}

/// Waits until the object `name` (read untyped: its spec does not fit
/// [`FwTestSpec`]) has the condition `InvalidObject=True` and returns it.
pub async fn wait_invalid_object(api: &Api<DynamicObject>, name: &str) -> serde_json::Value {
    let what = format!("InvalidObject condition on `{name}`");
    eventually(Duration::from_secs(20), &what, || async {
        let o = api.get(name).await.ok()?;
        let conds = o.data.pointer("/status/conditions")?.as_array()?.clone();
        conds
            .into_iter()
            .find(|c| c["type"] == "InvalidObject" && c["status"] == "True")
    })
    .await
}

/// A running operator that can be stopped gracefully.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), operator_framework::Error>>,
    pub metrics: Arc<Metrics>,
}

pub fn start(op: Operator) -> Running {
    let (tx, rx) = oneshot::channel::<()>();
    let metrics = op.metrics();
    let handle = tokio::spawn(op.run_until(async move {
        let _ = rx.await;
    }));
    Running {
        stop: Some(tx),
        handle,
        metrics,
    }
}

impl Running {
    /// Simulates a crash: the operator's future is dropped without a graceful
    /// shutdown (no lease release).
    pub async fn crash(mut self) {
        self.handle.abort();
        let _ = (&mut self.handle).await;
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(Duration::from_secs(40), &mut self.handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("operator returned an error: {e}"),
            Ok(Err(e)) => panic!("operator task failed: {e}"),
            Err(_) => panic!("operator did not stop within 40s"),
        }
    }
}

pub fn annotation(o: &FwTest, key: &str) -> Option<String> {
    o.annotations().get(&format!("{PREFIX}/{key}")).cloned()
}

pub fn condition<'a>(o: &'a FwTest, type_: &str) -> Option<&'a Condition> {
    o.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// The events.k8s.io Events in `ns` regarding the object `name` with `reason`.
pub async fn events_for(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .collect()
}

/// Waits for the first events.k8s.io Event in `ns` regarding the object
/// `name` with `reason`.
pub async fn wait_event(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> k8s_openapi::api::events::v1::Event {
    let what = format!("{reason} event about `{name}`");
    eventually(Duration::from_secs(10), &what, || async {
        events_for(client, ns, name, reason)
            .await
            .into_iter()
            .next()
    })
    .await
}
