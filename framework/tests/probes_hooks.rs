//! `/healthz` on watch health, startup/cleanup hooks, optional delete
//! handlers and field value filters against a real API server (see
//! `integration.rs` for the kubeconfig rules and `SKIP_CLUSTER_TESTS`).

mod common;

use common::*;
use kube::api::{Api, DeleteParams};
use kube::runtime::watcher;
use kube::{CustomResource, ResourceExt};
use operator_framework::testing::run_in_background;
use operator_framework::{Context, Controller, Handler, HandlerResult, Operator, OperatorConfig};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Log = Arc<Mutex<Vec<String>>>;

fn entries(l: &Log) -> Vec<String> {
    l.lock().map(|v| v.clone()).unwrap_or_default()
}

fn logs(
    log: &Log,
    tag: &'static str,
) -> impl Fn(Context<FwTest>) -> futures::future::BoxFuture<'static, HandlerResult> + Send + Sync + 'static
{
    let log = log.clone();
    move |ctx: Context<FwTest>| {
        let log = log.clone();
        Box::pin(async move {
            if let Ok(mut v) = log.lock() {
                v.push(format!("{tag}:{}", ctx.name()));
            }
            Ok(())
        })
    }
}

async fn wait_for(l: &Log, entry: &str) {
    eventually(Duration::from_secs(20), &format!("`{entry}`"), || async {
        entries(l).iter().any(|e| e == entry).then_some(())
    })
    .await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The endpoint starts with the operator: not bound yet is "no answer".
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// A kind whose CRD is never installed: its watch cannot sync.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug)]
#[kube(
    group = "missing.fwtest.operator-framework.dev",
    version = "v1",
    kind = "Missing",
    namespaced,
    schema = "disabled"
)]
pub struct MissingSpec {
    pub x: String,
}

#[tokio::test]
async fn healthz_fails_while_a_watch_cannot_sync() {
    let Some(client) = client("healthz_fails_while_a_watch_cannot_sync").await else {
        return;
    };
    let ns = namespace(&client, "health").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let noop = |_: Context<Missing>| async { Ok(()) };
    let op = Operator::new(client.clone(), PREFIX)
        .config(OperatorConfig {
            metrics_addr: Some(addr),
            unhealthy_after: Duration::from_secs(1),
            ..config()
        })
        .controller(controller(&client, &ns).handler(Handler::on_create("c", noop_fw)))
        .controller(
            Controller::new(
                Api::<Missing>::namespaced(client.clone(), &ns),
                watcher::Config::default(),
            )
            .handler(Handler::on_create("m", noop)),
        );
    let running = run_in_background(op);
    let metrics = running.metrics();
    eventually(Duration::from_secs(20), "/healthz fails", || async {
        let r = http_get(addr, "/healthz").await;
        r.starts_with("HTTP/1.1 503").then_some(r)
    })
    .await;
    let r = http_get(addr, "/healthz").await;
    assert!(r.contains("watch Missing has not synced"), "{r}");
    assert!(
        !r.contains("watch FwTest"),
        "the working watch is fine: {r}"
    );
    assert!(!metrics.is_healthy());
    running.stop().await.expect("stops");
    cleanup(&client, &ns).await;
}

async fn noop_fw(_: Context<FwTest>) -> HandlerResult {
    Ok(())
}

#[tokio::test]
async fn hooks_optional_delete_handlers_and_value_filters() {
    let Some(client) = client("hooks_optional_delete_handlers_and_value_filters").await else {
        return;
    };
    let ns = namespace(&client, "hooks").await;
    let log: Log = Arc::default();
    let (l1, l2) = (log.clone(), log.clone());
    let c = controller(&client, &ns)
        .handler(Handler::on_create("created", logs(&log, "create")))
        .handler(Handler::on_delete("gone", logs(&log, "delete")).optional())
        .handler(Handler::on_field("to-go", "spec.value", logs(&log, "to-go")).new_value("go"))
        .handler(Handler::on_field("from-go", "spec.value", logs(&log, "from-go")).old("go"));
    let op = operator(&client, c)
        .on_startup(move |ctx| {
            let l = l1.clone();
            async move {
                ctx.client.apiserver_version().await?;
                l.lock()
                    .map_err(|_| anyhow::anyhow!("lock"))?
                    .push("startup".into());
                Ok(())
            }
        })
        .on_cleanup(move |_| {
            let l = l2.clone();
            async move {
                l.lock()
                    .map_err(|_| anyhow::anyhow!("lock"))?
                    .push("cleanup".into());
                Ok(())
            }
        });
    let running = run_in_background(op);
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    let mut held = obj("a", "x");
    held.metadata.finalizers = Some(vec!["fwtest/hold".into()]);
    create(&api, &held).await;
    wait_for(&log, "create:a").await;
    assert_eq!(entries(&log)[0], "startup", "startup hooks run first");
    // Value filters: only the change to `go`, then only the one from it.
    merge_patch(&api, "a", serde_json::json!({"spec": {"value": "go"}})).await;
    wait_for(&log, "to-go:a").await;
    merge_patch(&api, "a", serde_json::json!({"spec": {"value": "stop"}})).await;
    wait_for(&log, "from-go:a").await;
    let o = wait_handled(&api, "a", Duration::from_secs(20)).await;
    assert_eq!(
        o.finalizers(),
        ["fwtest/hold"],
        "an optional delete handler adds no finalizer"
    );
    // Deleted while another finalizer holds it: the optional handler runs once.
    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(&log, "delete:a").await;
    merge_patch(
        &api,
        "a",
        serde_json::json!({"metadata": {"annotations": {"poke": "1"}}}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    merge_patch(
        &api,
        "a",
        serde_json::json!({"metadata": {"finalizers": null}}),
    )
    .await;
    wait_gone(&api, "a", Duration::from_secs(20)).await;
    running.stop().await.expect("stops");
    let got = entries(&log);
    assert_eq!(
        got,
        [
            "startup",
            "create:a",
            "to-go:a",
            "from-go:a",
            "delete:a",
            "cleanup"
        ],
        "each once, cleanup last"
    );
    cleanup(&client, &ns).await;
}
