//! Daemons against a real API server (see `integration.rs` for the
//! kubeconfig rules and `SKIP_CLUSTER_TESTS`).

mod common;

use common::*;
use kube::api::{Api, DeleteParams};
use operator_framework::testing::run_in_background;
use operator_framework::{Context, Handler, HandlerError};
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

async fn wait_for(l: &Log, entry: &str) {
    eventually(Duration::from_secs(20), &format!("`{entry}`"), || async {
        entries(l).iter().any(|e| e == entry).then_some(())
    })
    .await;
}

/// Logs `start:<name>`, runs until cancelled, logs `stop:<name>`.
fn watcher(log: &Log) -> Handler<FwTest> {
    let log = log.clone();
    Handler::daemon("watcher", move |ctx: Context<FwTest>| {
        let log = log.clone();
        async move {
            push(&log, format!("start:{}", ctx.name()));
            while !ctx.sleep(Duration::from_millis(50)).await {}
            assert!(ctx.is_cancelled());
            push(&log, format!("stop:{}", ctx.name()));
            Ok(())
        }
    })
    .label("daemon=yes")
}

/// Fails its first two runs, then runs until cancelled.
fn flaky(log: &Log) -> Handler<FwTest> {
    let log = log.clone();
    Handler::daemon("flaky", move |ctx: Context<FwTest>| {
        let log = log.clone();
        async move {
            push(&log, format!("flaky:{}:{}", ctx.name(), ctx.retry));
            if ctx.retry < 2 {
                return Err(HandlerError::temporary("not yet", None));
            }
            ctx.cancelled().await;
            Ok(())
        }
    })
    .label("flaky=yes")
    .backoff(Duration::from_millis(100), Duration::from_secs(1))
}

#[tokio::test]
async fn daemons_follow_their_objects_and_stop_on_shutdown() {
    let Some(client) = client("daemons_follow_their_objects_and_stop_on_shutdown").await else {
        return;
    };
    let ns = namespace(&client, "daemons").await;
    let log: Log = Arc::default();
    let c = controller(&client, &ns)
        .handler(watcher(&log))
        .handler(flaky(&log));
    let running = run_in_background(operator(&client, c));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    let labelled = |name: &str, label: &str| {
        let mut o = obj(name, "v");
        o.metadata.labels = Some([(label.to_string(), "yes".to_string())].into());
        o
    };
    create(&api, &labelled("a", "daemon")).await;
    create(&api, &obj("b", "v")).await;
    wait_for(&log, "start:a").await;
    // `b` matches no daemon's filters: nothing starts for it (the cycles
    // of `a` and `b` follow the same watch; `a`'s daemon started).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!entries(&log).contains(&"start:b".to_string()));
    // Starting to match starts it; stopping to match cancels it.
    merge_patch(
        &api,
        "b",
        serde_json::json!({"metadata": {"labels": {"daemon": "yes"}}}),
    )
    .await;
    wait_for(&log, "start:b").await;
    merge_patch(
        &api,
        "a",
        serde_json::json!({"metadata": {"labels": {"daemon": null}}}),
    )
    .await;
    wait_for(&log, "stop:a").await;
    // Deletion cancels it.
    api.delete("b", &DeleteParams::default())
        .await
        .expect("delete b");
    wait_for(&log, "stop:b").await;
    // Retryable failures restart the daemon with backoff.
    create(&api, &labelled("c", "flaky")).await;
    wait_for(&log, "flaky:c:2").await;
    let flaky_runs: Vec<String> = entries(&log)
        .into_iter()
        .filter(|e| e.starts_with("flaky:"))
        .collect();
    assert_eq!(flaky_runs, ["flaky:c:0", "flaky:c:1", "flaky:c:2"]);
    // Shutdown cancels the running daemons and waits for them.
    create(&api, &labelled("d", "daemon")).await;
    wait_for(&log, "start:d").await;
    running.stop().await.expect("the operator stops cleanly");
    assert!(
        entries(&log).contains(&"stop:d".to_string()),
        "{:?}",
        entries(&log)
    );
    let starts = entries(&log)
        .iter()
        .filter(|e| e.starts_with("start:"))
        .count();
    assert_eq!(starts, 3, "each daemon started once: {:?}", entries(&log));
    cleanup(&client, &ns).await;
}
