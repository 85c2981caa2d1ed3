//! Integration tests against a real API server.
//!
//! They use the kubeconfig in `KUBECONFIG`, else
//! `~/.cache/kube-backup/cluster/kubeconfig`, else the default. Without a
//! reachable cluster every test fails with a clear message, unless
//! `SKIP_CLUSTER_TESTS=1` is set (then each prints a SKIPPED line). Each test
//! works in its own namespace and removes it at the end.

mod common;

use common::*;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject};
use kube::{Client, ResourceExt};
use operator_framework::{
    Context, EventType, Handler, HandlerError, HandlerResult, LeaderElection, OperatorConfig,
    WatchEventType, on_create, on_delete, on_update,
};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

type Log = Arc<Mutex<Vec<String>>>;
/// (when, ctx.retry, progress annotation seen) of each run.
type Attempts = Arc<Mutex<Vec<(Instant, u32, Option<String>)>>>;
type Spans = Arc<Mutex<Vec<(String, Instant, Instant)>>>;

fn log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

fn entries(l: &Log) -> Vec<String> {
    l.lock().map(|v| v.clone()).unwrap_or_default()
}

fn push(l: &Log, s: String) {
    if let Ok(mut v) = l.lock() {
        v.push(s);
    }
}

/// A handler body that appends `{prefix}{object name}` to `log` (when the
/// run starts, inside the handler's task).
fn pushes_name(
    log: &Log,
    prefix: &str,
) -> impl Fn(Context<FwTest>) -> BoxFuture<'static, HandlerResult> + Send + Sync + 'static {
    let (log, prefix) = (log.clone(), prefix.to_string());
    move |ctx| {
        let (log, prefix) = (log.clone(), prefix.clone());
        Box::pin(async move {
            push(&log, format!("{prefix}{}", ctx.name()));
            Ok(())
        })
    }
}

/// Waits until `log` holds `entry`.
async fn wait_for_entry(log: &Log, entry: &str) {
    eventually(
        Duration::from_secs(20),
        &format!("log entry `{entry}`"),
        || async { entries(log).iter().any(|e| e == entry).then_some(()) },
    )
    .await;
}

/// The test [`config`] with leader election: Lease `lease` in `ns`, held as
/// `identity`.
fn leader_config(
    ns: &str,
    lease: &str,
    identity: &str,
    lease_duration: Duration,
    lease_renew_interval: Duration,
) -> OperatorConfig {
    OperatorConfig {
        leader_election: Some(LeaderElection::new(lease, ns, identity)),
        lease_duration,
        lease_renew_interval,
        ..config()
    }
}

/// Waits until the replica `r` holds the lease.
async fn wait_until_leading(r: &Running, what: &str, timeout: Duration) {
    eventually(timeout, what, || async {
        r.metrics.is_leader().then_some(())
    })
    .await;
}

/// Starts two replicas of an operator with leader election on the Lease
/// `lease` (renewed every 500 ms): `leader` first, until it leads, then
/// `standby`, which must stand by. Their create handler `who` logs
/// `{identity}:{object}` to `handled`.
async fn start_leader_and_standby(
    client: &Client,
    ns: &str,
    lease: &str,
    lease_duration: Duration,
    (leader, standby): (&str, &str),
    handled: &Log,
) -> (Running, Running) {
    let replica = |id: &str| {
        let handler = Handler::on_create("who", pushes_name(handled, &format!("{id}:")));
        let config = leader_config(ns, lease, id, lease_duration, Duration::from_millis(500));
        start(operator_with(
            client,
            config,
            controller(client, ns).handler(handler),
        ))
    };
    let r1 = replica(leader);
    wait_until_leading(&r1, &format!("{leader} leads"), Duration::from_secs(10)).await;
    let r2 = replica(standby);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!r2.metrics.is_leader(), "{standby} must stand by");
    (r1, r2)
}

/// Leader election for the only replica, `me`, on the Lease `lease` (3 s,
/// renewed every 300 ms).
fn only_replica_config(ns: &str, lease: &str) -> OperatorConfig {
    leader_config(
        ns,
        lease,
        "me",
        Duration::from_secs(3),
        Duration::from_millis(300),
    )
}

/// Starts an operator with `config` (with leader election) running `handler`
/// on the objects in `ns`, and waits until it leads.
async fn start_leading(
    client: &Client,
    ns: &str,
    config: OperatorConfig,
    handler: Handler<FwTest>,
) -> Running {
    let r = start(operator_with(
        client,
        config,
        controller(client, ns).handler(handler),
    ));
    wait_until_leading(&r, "leads", Duration::from_secs(10)).await;
    r
}

/// Another replica (`intruder`) takes the Lease `lease` over, as if this one
/// had been partitioned away.
async fn steal_lease(client: &Client, ns: &str, lease: &str) {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), ns);
    let renew_time =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    merge_patch(
        &leases,
        lease,
        serde_json::json!({"spec": {"holderIdentity": "intruder", "renewTime": renew_time}}),
    )
    .await;
}

/// What the macro-based handlers below record, per namespace.
static MACRO_LOG: LazyLock<Mutex<HashMap<String, Vec<String>>>> = LazyLock::new(Default::default);

fn macro_log(ns: &str) -> Vec<String> {
    MACRO_LOG
        .lock()
        .map(|m| m.get(ns).cloned().unwrap_or_default())
        .unwrap_or_default()
}

fn record(ctx: &Context<FwTest>, what: &str) {
    let ns = ctx.namespace().unwrap_or_default();
    if let Ok(mut m) = MACRO_LOG.lock() {
        m.entry(ns)
            .or_default()
            .push(format!("{what}:{}:{}", ctx.name(), ctx.object.spec.value));
    }
}

/// Create handler written with the attribute macro.
#[on_create(
    id = "create-x",
    retries = 3,
    backoff_base = "200ms",
    backoff_max = "2s",
    timeout = "30s"
)]
async fn created(ctx: Context<FwTest>) -> HandlerResult {
    record(&ctx, "create");
    ctx.patch_status(serde_json::json!({"phase": "Created"}))
        .await?;
    ctx.event(EventType::Normal, "Created", "handled by the test")
        .await?;
    Ok(())
}

#[on_update]
async fn updated(ctx: Context<FwTest>) -> HandlerResult {
    let changed: Vec<String> = ctx.diff.iter().map(|d| d.path.clone()).collect();
    record(&ctx, &format!("update[{}]", changed.join(",")));
    Ok(())
}

#[on_delete]
async fn deleted(ctx: Context<FwTest>) -> HandlerResult {
    record(&ctx, "delete");
    Ok(())
}

#[tokio::test]
async fn create_update_delete_fire_once_each_in_order_with_finalizer() {
    let Some(client) = client("create_update_delete_fire_once_each_in_order_with_finalizer").await
    else {
        return;
    };
    let ns = namespace(&client, "cud").await;
    let running = start(operator(
        &client,
        controller(&client, &ns)
            .handler(created())
            .handler(updated())
            .handler(deleted()),
    ));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("one", "v1")).await;

    // Created, finalizer added, last-handled stored, status written.
    let o = eventually(Duration::from_secs(20), "create handled", || async {
        let o = api.get("one").await.ok()?;
        (annotation(&o, "last-handled-configuration").is_some()
            && o.status.as_ref()?.phase.as_deref() == Some("Created"))
        .then_some(o)
    })
    .await;
    assert!(
        o.finalizers().contains(&format!("{PREFIX}/finalizer")),
        "finalizer added: {:?}",
        o.finalizers()
    );
    assert!(
        annotation(&o, "progress").is_none(),
        "no progress left after success"
    );

    merge_patch(&api, "one", serde_json::json!({"spec": {"value": "v2"}})).await;
    eventually(Duration::from_secs(20), "update handled", || async {
        macro_log(&ns)
            .iter()
            .any(|l| l.starts_with("update"))
            .then_some(())
    })
    .await;

    api.delete("one", &DeleteParams::default())
        .await
        .expect("delete");
    // Gone once the delete handler ran.
    wait_gone(&api, "one", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        macro_log(&ns),
        vec![
            "create:one:v1".to_string(),
            "update[spec.value]:one:v2".to_string(),
            "delete:one:v2".to_string()
        ]
    );
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn failing_twice_then_succeeding_is_retried_with_growing_delays() {
    let Some(client) = client("failing_twice_then_succeeding_is_retried_with_growing_delays").await
    else {
        return;
    };
    let ns = namespace(&client, "retry").await;
    let attempts: Attempts = Arc::default();
    let a2 = attempts.clone();
    let flaky = Handler::on_create("flaky", move |ctx: Context<FwTest>| {
        let a = a2.clone();
        async move {
            let progress = ctx
                .object
                .annotations()
                .get(&format!("{PREFIX}/progress"))
                .cloned();
            let n = {
                let mut v = a.lock().map_err(|_| HandlerError::permanent("poisoned"))?;
                v.push((Instant::now(), ctx.retry, progress));
                v.len()
            };
            if n <= 2 {
                return Err(anyhow::anyhow!("induced failure {n}").into());
            }
            Ok(())
        }
    })
    .backoff(Duration::from_millis(800), Duration::from_secs(30))
    .without_jitter();
    let running = start(operator(&client, controller(&client, &ns).handler(flaky)));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("flaky", "x")).await;

    // While failing, the object shows the retry count and the HandlerFailed condition.
    let c = wait_handler_failed(&api, "flaky", "True", Duration::from_secs(20)).await;
    assert_eq!(
        (c.type_.as_str(), c.reason.as_str()),
        ("HandlerFailed.Flaky", "Retrying")
    );
    assert!(c.message.contains("induced failure"), "{}", c.message);
    // The condition shows how often the handler failed so far.
    assert!(
        [
            "failed 1 time(s), retrying in",
            "failed 2 time(s), retrying in"
        ]
        .iter()
        .any(|m| c.message.contains(m)),
        "retry count in the condition: {}",
        c.message
    );

    let done = wait_handled(&api, "flaky", Duration::from_secs(30)).await;
    let v = attempts.lock().expect("lock").clone();
    assert_eq!(v.len(), 3, "exactly three runs");
    assert_eq!(
        v.iter().map(|a| a.1).collect::<Vec<_>>(),
        vec![0, 1, 2],
        "ctx.retry counts"
    );
    let d1 = v[1].0 - v[0].0;
    let d2 = v[2].0 - v[1].0;
    assert!(d1 >= Duration::from_millis(750), "first delay {d1:?}");
    assert!(d2 >= Duration::from_millis(1550), "second delay {d2:?}");
    assert!(d2 > d1, "delays grow: {d1:?} then {d2:?}");
    // The third run saw the progress record of the two failures.
    let rec: serde_json::Value = serde_json::from_str(
        v[2].2
            .as_deref()
            .expect("progress annotation during retries"),
    )
    .expect("json");
    assert_eq!(rec["cause"], "create");
    assert_eq!(rec["handlers"]["flaky"]["retries"], 2);
    assert_eq!(
        rec["handlers"]["flaky"]["delaysMs"],
        serde_json::json!([800, 1600])
    );
    // After success: no progress annotation, condition cleared, no finalizer (no delete handler).
    assert!(annotation(&done, "progress").is_none());
    let c = wait_handler_failed(&api, "flaky", "False", Duration::from_secs(10)).await;
    assert_eq!(
        (c.type_.as_str(), c.reason.as_str()),
        ("HandlerFailed.Flaky", "Succeeded")
    );
    assert!(
        done.finalizers().is_empty(),
        "no delete handler, no finalizer"
    );
    assert_eq!(running.metrics.handler_failures("flaky"), 2);
    assert_eq!(running.metrics.handler_runs("flaky"), 3);
    // Each failure was posted as a HandlerFailed Warning Event about the
    // object; the recorder folds the repeats into one Event with a series
    // count (keeping the first note).
    let evs = events_for(&client, &ns, "flaky", "HandlerFailed").await;
    assert_eq!(evs.len(), 1, "one aggregated Event: {evs:?}");
    let ev = &evs[0];
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    let note = ev.note.clone().unwrap_or_default();
    assert!(
        note.contains("failed 1 time(s)") && note.contains("induced failure 1"),
        "{note}"
    );
    assert_eq!(
        ev.series.as_ref().map(|s| s.count),
        Some(2),
        "both failures were posted: {ev:?}"
    );
    assert!(
        events_for(&client, &ns, "flaky", "HandlerGaveUp")
            .await
            .is_empty(),
        "no give-up without a retry limit"
    );
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn restarted_operator_does_not_rerun_finished_handlers_and_keeps_backoff() {
    let Some(client) =
        client("restarted_operator_does_not_rerun_finished_handlers_and_keeps_backoff").await
    else {
        return;
    };
    let ns = namespace(&client, "restart").await;
    let runs: Log = log();
    let build = |runs: Log, who: &'static str| {
        let first = Handler::on_create("first", pushes_name(&runs, &format!("{who}:first:")));
        let r2 = runs.clone();
        let second = Handler::on_create("second", move |ctx: Context<FwTest>| {
            let r = r2.clone();
            async move {
                push(&r, format!("{who}:second:{}:{}", ctx.name(), ctx.retry));
                if ctx.retry == 0 {
                    return Err(HandlerError::temporary(
                        "not yet",
                        Some(Duration::from_secs(6)),
                    ));
                }
                Ok(())
            }
        });
        let resume = Handler::on_resume("resume", pushes_name(&runs, &format!("{who}:resume:")));
        operator(
            &client,
            controller(&client, &ns)
                .handler(first)
                .handler(second)
                .handler(resume),
        )
    };
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    let op1 = start(build(runs.clone(), "op1"));
    create(&api, &obj("r", "x")).await;
    let failed_at = eventually(
        Duration::from_secs(20),
        "second handler failed once",
        || async {
            let o = api.get("r").await.ok()?;
            let p = annotation(&o, "progress")?;
            p.contains("\"retries\":1").then_some(Instant::now())
        },
    )
    .await;
    op1.stop().await;
    let op2 = start(build(runs.clone(), "op2"));
    // op2 must wait for the persisted delay before retrying `second`, and never rerun `first`.
    eventually(
        Duration::from_secs(30),
        "second handler retried by op2",
        || async {
            entries(&runs)
                .iter()
                .any(|e| e.starts_with("op2:second"))
                .then_some(())
        },
    )
    .await;
    let retried_after = failed_at.elapsed();
    eventually(Duration::from_secs(10), "create finished", || async {
        let o = api.get("r").await.ok()?;
        (annotation(&o, "last-handled-configuration").is_some()
            && annotation(&o, "progress").is_none())
        .then_some(())
    })
    .await;
    op2.stop().await;
    // A third start: nothing to do but resume.
    let op3 = start(build(runs.clone(), "op3"));
    eventually(Duration::from_secs(20), "resume by op3", || async {
        entries(&runs)
            .iter()
            .any(|e| e.starts_with("op3:resume"))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    op3.stop().await;
    let e = entries(&runs);
    assert_eq!(
        e,
        vec![
            "op1:first:r".to_string(),
            "op1:second:r:0".to_string(),
            "op2:second:r:1".to_string(),
            "op3:resume:r".to_string(),
        ],
        "first never reran; second resumed its backoff; op2 ran no resume before create finished"
    );
    assert!(
        retried_after >= Duration::from_secs(3),
        "the persisted 6s delay was honoured across the restart (retried {retried_after:?} after the failure was seen)"
    );
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn adopted_children_follow_owner_and_child_changes_retrigger_events() {
    let Some(client) =
        client("adopted_children_follow_owner_and_child_changes_retrigger_events").await
    else {
        return;
    };
    let ns = namespace(&client, "children").await;
    let events: Log = log();
    let apply = Handler::on_create("children", |ctx: Context<FwTest>| async move {
        let cm = |name: &str| -> ConfigMap {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "data": {"value": ctx.object.spec.value}
            }))
            .expect("configmap")
        };
        let report = ctx
            .apply_children(vec![
                cm(&format!("{}-a", ctx.name())),
                cm(&format!("{}-b", ctx.name())),
            ])
            .await?;
        if report.applied.len() != 2 {
            return Err(HandlerError::permanent(format!(
                "unexpected report {report:?}"
            )));
        }
        // Now shrink the set: `-b` must be deleted.
        let report = ctx
            .apply_children(vec![cm(&format!("{}-a", ctx.name()))])
            .await?;
        if report.deleted != vec![format!("{}-b", ctx.name())] {
            return Err(HandlerError::permanent(format!(
                "unexpected report {report:?}"
            )));
        }
        // The same desired set again: nothing is sent.
        let report = ctx
            .apply_children(vec![cm(&format!("{}-a", ctx.name()))])
            .await?;
        if report.unchanged != vec![format!("{}-a", ctx.name())] || !report.applied.is_empty() {
            return Err(HandlerError::permanent(format!(
                "unexpected report {report:?}"
            )));
        }
        // A changed desired child is applied again.
        let mut changed = cm(&format!("{}-a", ctx.name()));
        changed.data = Some([("value".to_string(), "changed".to_string())].into());
        let report = ctx.apply_children(vec![changed]).await?;
        if report.applied != vec![format!("{}-a", ctx.name())] {
            return Err(HandlerError::permanent(format!(
                "unexpected report {report:?}"
            )));
        }
        Ok(())
    });
    let on_event = Handler::on_event("reconcile", pushes_name(&events, ""));
    let running = start(operator(
        &client,
        controller(&client, &ns)
            .handler(apply)
            .handler(on_event)
            .owns::<ConfigMap>(Api::namespaced(client.clone(), &ns)),
    ));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = create(&api, &obj("parent", "x")).await;
    let child = eventually(Duration::from_secs(20), "child applied", || async {
        let o = api.get("parent").await.ok()?;
        annotation(&o, "last-handled-configuration")?;
        cms.get_opt("parent-a").await.ok()?
    })
    .await;
    assert!(
        cms.get_opt("parent-b").await.expect("get").is_none(),
        "undesired child deleted"
    );
    assert_eq!(
        child
            .data
            .as_ref()
            .and_then(|d| d.get("value"))
            .map(String::as_str),
        Some("changed")
    );
    let oref = &child.owner_references()[0];
    assert_eq!(oref.uid, owner.uid().unwrap_or_default());
    assert_eq!(oref.controller, Some(true));
    assert_eq!(
        child.labels().get(&format!("{PREFIX}/owner-uid")),
        owner.uid().as_ref()
    );
    // A change of the child re-runs the owner's event handler.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = entries(&events).len();
    merge_patch(
        &cms,
        "parent-a",
        serde_json::json!({"metadata": {"labels": {"touched": "yes"}}}),
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "event handler re-ran after the child changed",
        || async { (entries(&events).len() > before).then_some(()) },
    )
    .await;
    // Deleting the owner garbage-collects the child.
    api.delete("parent", &DeleteParams::background())
        .await
        .expect("delete");
    wait_gone(&cms, "parent-a", Duration::from_secs(90)).await;
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn timer_fires_repeatedly_and_stops_when_object_goes() {
    let Some(client) = client("timer_fires_repeatedly_and_stops_when_object_goes").await else {
        return;
    };
    let ns = namespace(&client, "timer").await;
    let ticks: Log = log();
    let timer = Handler::on_timer(
        "tick",
        Duration::from_millis(700),
        Duration::from_millis(200),
        pushes_name(&ticks, ""),
    );
    let running = start(operator(&client, controller(&client, &ns).handler(timer)));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("tick", "x")).await;
    eventually(Duration::from_secs(20), "three ticks", || async {
        (entries(&ticks).len() >= 3).then_some(())
    })
    .await;
    api.delete("tick", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&api, "tick", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_delete = entries(&ticks).len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        entries(&ticks).len(),
        after_delete,
        "no ticks after the object went"
    );
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn objects_run_concurrently_but_one_object_never_twice_at_once() {
    let Some(client) = client("objects_run_concurrently_but_one_object_never_twice_at_once").await
    else {
        return;
    };
    let ns = namespace(&client, "conc").await;
    let spans: Spans = Arc::default();
    let s2 = spans.clone();
    let slow = Handler::on_event("slow", move |ctx: Context<FwTest>| {
        let s = s2.clone();
        async move {
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(600)).await;
            if let Ok(mut v) = s.lock() {
                v.push((ctx.name(), start, Instant::now()));
            }
            Ok(())
        }
    });
    let running = start(operator(&client, controller(&client, &ns).handler(slow)));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("a", "0")).await;
    create(&api, &obj("b", "0")).await;
    // A burst of changes on `a`.
    for i in 1..=8 {
        merge_patch(
            &api,
            "a",
            serde_json::json!({"spec": {"value": i.to_string()}}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(Duration::from_secs(20), "runs for both", || async {
        let v = spans.lock().ok()?.clone();
        (v.iter().any(|s| s.0 == "a") && v.iter().any(|s| s.0 == "b")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = spans.lock().expect("lock").clone();
    let a: Vec<_> = v.iter().filter(|s| s.0 == "a").collect();
    let b: Vec<_> = v.iter().filter(|s| s.0 == "b").collect();
    for (i, x) in a.iter().enumerate() {
        for y in a.iter().skip(i + 1) {
            assert!(x.2 <= y.1 || y.2 <= x.1, "two runs for `a` overlapped");
        }
    }
    assert!(
        a.iter().any(|x| b.iter().any(|y| x.1 < y.2 && y.1 < x.2)),
        "`a` and `b` were handled concurrently"
    );
    assert!(
        a.len() < 9,
        "the burst of 9 events for `a` coalesced into {} runs",
        a.len()
    );
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_handles() {
    let Some(client) = client("with_two_replicas_only_the_leader_handles").await else {
        return;
    };
    let ns = namespace(&client, "leader").await;
    let handled: Log = log();
    let (r1, r2) = start_leader_and_standby(
        &client,
        &ns,
        "fwtest-leader",
        Duration::from_secs(4),
        ("replica-1", "replica-2"),
        &handled,
    )
    .await;
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    for n in ["x1", "x2", "x3"] {
        create(&api, &obj(n, "v")).await;
    }
    eventually(Duration::from_secs(20), "three handled", || async {
        (entries(&handled).len() >= 3).then_some(())
    })
    .await;
    assert!(
        entries(&handled)
            .iter()
            .all(|e| e.starts_with("replica-1:")),
        "{:?}",
        entries(&handled)
    );
    // Hand-over: the leader stops gracefully, replica-2 takes over.
    r1.stop().await;
    wait_until_leading(&r2, "replica-2 leads", Duration::from_secs(10)).await;
    create(&api, &obj("y1", "v")).await;
    wait_for_entry(&handled, "replica-2:y1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        entries(&handled).len(),
        4,
        "no object handled twice: {:?}",
        entries(&handled)
    );
    r2.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn bad_objects_are_reported_and_panics_are_failed_runs() {
    let Some(client) = client("bad_objects_are_reported_and_panics_are_failed_runs").await else {
        return;
    };
    let ns = namespace(&client, "bad").await;
    let runs: Log = log();
    let r = runs.clone();
    let h = Handler::on_create("maybe-panic", move |ctx: Context<FwTest>| {
        let r = r.clone();
        async move {
            push(&r, format!("{}:{}", ctx.name(), ctx.retry));
            if ctx.name() == "panicky" && ctx.retry == 0 {
                panic!("induced panic");
            }
            Ok(())
        }
    })
    .backoff(Duration::from_millis(300), Duration::from_secs(2));
    let running = start(operator(&client, controller(&client, &ns).handler(h)));
    // An object whose spec does not fit FwTestSpec (count must be an integer).
    let ar = ApiResource::erase::<FwTest>(&());
    let dapi: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let bad: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "fwtest.operator-framework.dev/v1", "kind": "FwTest",
        "metadata": {"name": "bad"},
        "spec": {"value": "x", "count": "many"}
    }))
    .expect("json");
    create(&dapi, &bad).await;
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("good", "x")).await;
    create(&api, &obj("panicky", "x")).await;
    let cond = wait_invalid_object(&dapi, "bad").await;
    let msg = cond["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("spec.count"), "names the field: {msg}");
    assert!(msg.contains("invalid type"), "says why: {msg}");
    // The Warning Event about `bad` names the field too.
    let ev = wait_event(&client, &ns, "bad", "InvalidObject").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    let note = ev.note.unwrap_or_default();
    assert!(note.contains("spec.count"), "names the field: {note}");
    assert!(note.contains("invalid type"), "says why: {note}");
    eventually(
        Duration::from_secs(20),
        "good and panicky handled",
        || async {
            let e = entries(&runs);
            (e.contains(&"good:0".to_string()) && e.contains(&"panicky:1".to_string()))
                .then_some(())
        },
    )
    .await;
    assert!(!entries(&runs).iter().any(|e| e.starts_with("bad:")));
    assert_eq!(running.metrics.handler_failures("maybe-panic"), 1);
    // Fixing the object makes it handled.
    merge_patch(&dapi, "bad", serde_json::json!({"spec": {"count": 3}})).await;
    wait_for_entry(&runs, "bad:0").await;
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn metrics_endpoint_and_no_writes_on_noop_resync() {
    let Some(client) = client("metrics_endpoint_and_no_writes_on_noop_resync").await else {
        return;
    };
    let ns = namespace(&client, "metrics").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let h = Handler::on_create("trivial", |_ctx: Context<FwTest>| async { Ok(()) });
    let running = start(operator_with(
        &client,
        OperatorConfig {
            metrics_addr: Some(addr),
            resync: Duration::from_secs(1),
            ..config()
        },
        controller(&client, &ns).handler(h),
    ));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("m", "x")).await;
    wait_handled(&api, "m", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = running.metrics.api_writes();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        running.metrics.api_writes(),
        writes,
        "resyncs of a handled object write nothing"
    );
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    };
    let m = get("/metrics").await;
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(
        m.contains("operator_handler_runs_total{controller=\"FwTest\",handler=\"trivial\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("operator_handler_duration_seconds_bucket"),
        "{m}"
    );
    assert!(m.contains("operator_objects_queued"), "{m}");
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn field_handlers_see_old_and_new_values_and_filters_select_objects() {
    let Some(client) =
        client("field_handlers_see_old_and_new_values_and_filters_select_objects").await
    else {
        return;
    };
    let ns = namespace(&client, "field").await;
    let seen: Log = log();
    let s1 = seen.clone();
    let field = Handler::on_field(
        "count-changed",
        "spec.count",
        move |ctx: Context<FwTest>| {
            let s = s1.clone();
            async move {
                let paths: Vec<String> = ctx.diff.iter().map(|d| d.path.clone()).collect();
                push(
                    &s,
                    format!(
                        "field:{}:{:?}->{:?}:{}",
                        ctx.name(),
                        ctx.old_value(),
                        ctx.new_value(),
                        paths.join(",")
                    ),
                );
                Ok(())
            }
        },
    );
    let labelled =
        Handler::on_create("labelled", pushes_name(&seen, "labelled:")).label("pick=yes");
    let predicate = Handler::on_create("predicate", pushes_name(&seen, "predicate:"))
        .when(|o: &FwTest| o.spec.value == "go");
    let running = start(operator(
        &client,
        controller(&client, &ns)
            .handler(field)
            .handler(labelled)
            .handler(predicate),
    ));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    let mut f = obj("f", "go");
    f.spec.count = Some(1);
    f.metadata.labels = Some([("pick".to_string(), "yes".to_string())].into());
    create(&api, &f).await;
    create(&api, &obj("g", "no")).await;
    wait_handled(&api, "f", Duration::from_secs(20)).await;
    merge_patch(&api, "f", serde_json::json!({"spec": {"count": 2}})).await;
    eventually(Duration::from_secs(20), "count change seen", || async {
        entries(&seen)
            .iter()
            .any(|e| e.contains("Some(Number(1))->Some(Number(2))"))
            .then_some(())
    })
    .await;
    merge_patch(&api, "f", serde_json::json!({"spec": {"value": "gone"}})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut e = entries(&seen);
    e.sort();
    assert_eq!(
        e,
        vec![
            "field:f:None->Some(Number(1)):spec".to_string(),
            "field:f:Some(Number(1))->Some(Number(2)):spec.count".to_string(),
            "labelled:f".to_string(),
            "predicate:f".to_string(),
        ]
    );
    // No handler ran for `g`, but the unfiltered field handler's filters
    // match it, so its creation is recorded (as kopf does): a later change
    // of its field is an update.
    let g = wait_handled(&api, "g", Duration::from_secs(10)).await;
    assert!(annotation(&g, "progress").is_none());
    running.stop().await;
    cleanup(&client, &ns).await;
}

fn value_is_go(o: &FwTest) -> bool {
    o.spec.value == "go"
}

/// Every filter option of the macros at once; an object must pass all.
#[on_create(
    id = "macro-filtered",
    labels("pick=yes", "!skip"),
    annotations("team=a", "!hold"),
    when = value_is_go
)]
async fn macro_filtered(ctx: Context<FwTest>) -> HandlerResult {
    record(&ctx, "filtered");
    Ok(())
}

#[tokio::test]
async fn macro_label_annotation_and_when_filters_select_objects() {
    let Some(client) = client("macro_label_annotation_and_when_filters_select_objects").await
    else {
        return;
    };
    let ns = namespace(&client, "macrofilter").await;
    let running = start(operator(
        &client,
        controller(&client, &ns).handler(macro_filtered()),
    ));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    let make = |name: &str, value: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]| {
        let mut o = obj(name, value);
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        o.metadata.labels = Some(map(labels));
        o.metadata.annotations = Some(map(annotations));
        o
    };
    let pick = ("pick", "yes");
    let team_a = ("team", "a");
    for o in [
        make("match", "go", &[pick], &[team_a]),
        make("nolabel", "go", &[], &[team_a]),
        make("skipped", "go", &[pick, ("skip", "1")], &[team_a]),
        make("otherteam", "go", &[pick], &[("team", "b")]),
        make("held", "go", &[pick], &[team_a, ("hold", "")]),
        make("notgo", "no", &[pick], &[team_a]),
    ] {
        create(&api, &o).await;
    }
    wait_handled(&api, "match", Duration::from_secs(20)).await;
    // Time for the others to be (wrongly) handled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(macro_log(&ns), vec!["filtered:match:go".to_string()]);
    for name in ["nolabel", "skipped", "otherteam", "held", "notgo"] {
        let o = api.get(name).await.expect("get a filtered-out object");
        assert!(
            annotation(&o, "last-handled-configuration").is_none(),
            "{name}: filtered out, so not handled"
        );
    }

    // Once an object matches, its (still pending) create runs: the filters,
    // not timing, kept them out. An annotation change and a spec change.
    merge_patch(
        &api,
        "otherteam",
        serde_json::json!({"metadata": {"annotations": {"team": "a"}}}),
    )
    .await;
    merge_patch(&api, "notgo", serde_json::json!({"spec": {"value": "go"}})).await;
    eventually(Duration::from_secs(20), "both now handled", || async {
        let l = macro_log(&ns);
        (l.contains(&"filtered:otherteam:go".to_string())
            && l.contains(&"filtered:notgo:go".to_string()))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut l = macro_log(&ns);
    l.sort();
    assert_eq!(
        l,
        vec![
            "filtered:match:go".to_string(),
            "filtered:notgo:go".to_string(),
            "filtered:otherteam:go".to_string(),
        ]
    );
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn failing_delete_handlers_cannot_block_deletion() {
    let Some(client) = client("failing_delete_handlers_cannot_block_deletion").await else {
        return;
    };
    let ns = namespace(&client, "delfail").await;
    let runs: Log = log();
    let r = runs.clone();
    let bad_delete = Handler::on_delete("bad-delete", move |ctx: Context<FwTest>| {
        let r = r.clone();
        async move {
            push(&r, ctx.name());
            if ctx.name() == "perm" {
                return Err(HandlerError::permanent("cannot clean up"));
            }
            Err(anyhow::anyhow!("still cannot clean up").into())
        }
    })
    .retries(1)
    .backoff(Duration::from_millis(200), Duration::from_secs(1));
    let running = start(operator(
        &client,
        controller(&client, &ns).handler(bad_delete),
    ));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    for n in ["perm", "flaky"] {
        create(&api, &obj(n, "x")).await;
    }
    for n in ["perm", "flaky"] {
        eventually(Duration::from_secs(20), "finalizer added", || async {
            (!api.get(n).await.ok()?.finalizers().is_empty()).then_some(())
        })
        .await;
        api.delete(n, &DeleteParams::default())
            .await
            .expect("delete");
    }
    // Deleted despite the failing delete handler.
    for n in ["perm", "flaky"] {
        wait_gone(&api, n, Duration::from_secs(30)).await;
    }
    let e = entries(&runs);
    assert_eq!(
        e.iter().filter(|x| *x == "perm").count(),
        1,
        "permanent: one run"
    );
    assert_eq!(
        e.iter().filter(|x| *x == "flaky").count(),
        2,
        "retries(1): two runs"
    );
    // The give-up is reported as a Warning Event.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let gave_up = eventually(Duration::from_secs(10), "HandlerGaveUp events", || async {
        let list = events.list(&Default::default()).await.ok()?;
        let v: Vec<_> = list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("HandlerGaveUp"))
            .collect();
        (v.len() >= 2).then_some(v)
    })
    .await;
    assert!(
        gave_up
            .iter()
            .all(|e| e.type_.as_deref() == Some("Warning"))
    );
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_handlers_finish() {
    let Some(client) = client("graceful_shutdown_lets_in_flight_handlers_finish").await else {
        return;
    };
    let ns = namespace(&client, "shutdown").await;
    let runs: Log = log();
    let r = runs.clone();
    let slow = Handler::on_create("slow", move |ctx: Context<FwTest>| {
        let r = r.clone();
        async move {
            push(&r, format!("start:{}", ctx.name()));
            tokio::time::sleep(Duration::from_secs(2)).await;
            push(&r, format!("done:{}", ctx.name()));
            Ok(())
        }
    });
    let running = start(operator(&client, controller(&client, &ns).handler(slow)));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("s", "x")).await;
    wait_for_entry(&runs, "start:s").await;
    running.stop().await;
    assert_eq!(
        entries(&runs),
        vec!["start:s".to_string(), "done:s".to_string()]
    );
    let o = api.get("s").await.expect("get");
    assert!(
        annotation(&o, "last-handled-configuration").is_some(),
        "the finished handler's result was persisted before exit"
    );
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn max_in_flight_limits_objects_processed_at_once() {
    let Some(client) = client("max_in_flight_limits_objects_processed_at_once").await else {
        return;
    };
    let ns = namespace(&client, "limit").await;
    let current = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done: Log = log();
    let (c, p, d) = (current.clone(), peak.clone(), done.clone());
    let h = Handler::on_create("limited", move |ctx: Context<FwTest>| {
        let (c, p, d) = (c.clone(), p.clone(), d.clone());
        async move {
            let now = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            push(&d, ctx.name());
            Ok(())
        }
    });
    let running = start(operator_with(
        &client,
        OperatorConfig {
            max_in_flight: 2,
            ..config()
        },
        controller(&client, &ns).handler(h),
    ));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    for i in 0..6 {
        create(&api, &obj(&format!("o{i}"), "x")).await;
    }
    eventually(Duration::from_secs(30), "all six handled", || async {
        (entries(&done).len() == 6).then_some(())
    })
    .await;
    assert_eq!(
        peak.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "at most 2 objects at once, and 2 were reached"
    );
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_after_the_lease_expires() {
    let Some(client) = client("a_crashed_leader_is_replaced_after_the_lease_expires").await else {
        return;
    };
    let ns = namespace(&client, "crash").await;
    let handled: Log = log();
    let (r1, r2) = start_leader_and_standby(
        &client,
        &ns,
        "fwtest-crash",
        Duration::from_secs(3),
        ("crashy", "standby"),
        &handled,
    )
    .await;
    let crashed_at = Instant::now();
    r1.crash().await;
    let took_over = eventually(Duration::from_secs(20), "standby takes over", || async {
        r2.metrics.is_leader().then_some(crashed_at.elapsed())
    })
    .await;
    assert!(
        took_over >= Duration::from_secs(2),
        "the lease was not released, so the standby waited for it to expire ({took_over:?})"
    );
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("after", "v")).await;
    wait_for_entry(&handled, "standby:after").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        entries(&handled),
        vec!["standby:after".to_string()],
        "the crashed replica handles nothing"
    );
    r2.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn watched_objects_are_mapped_back_by_the_mapper() {
    let Some(client) = client("watched_objects_are_mapped_back_by_the_mapper").await else {
        return;
    };
    let ns = namespace(&client, "watches").await;
    let events: Log = log();
    let on_event = Handler::on_event("seen", pushes_name(&events, ""));
    let running = start(operator(
        &client,
        controller(&client, &ns)
            .handler(on_event)
            .watches::<ConfigMap, _>(Api::namespaced(client.clone(), &ns), |cm: &ConfigMap| {
                // Map by label, not by ownership.
                cm.labels()
                    .get("fwtest/for")
                    .map(|n| {
                        vec![
                            operator_framework::ObjectRef::new(n)
                                .within(&cm.namespace().unwrap_or_default()),
                        ]
                    })
                    .unwrap_or_default()
            }),
    ));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("target", "x")).await;
    create(&api, &obj("other", "x")).await;
    eventually(Duration::from_secs(20), "initial events", || async {
        let e = entries(&events);
        (e.contains(&"target".to_string()) && e.contains(&"other".to_string())).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_target = entries(&events).iter().filter(|e| *e == "target").count();
    let before_other = entries(&events).iter().filter(|e| *e == "other").count();
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "signal", "labels": {"fwtest/for": "target"}},
        "data": {"k": "v"}
    }))
    .expect("cm");
    create(&Api::<ConfigMap>::namespaced(client.clone(), &ns), &cm).await;
    eventually(
        Duration::from_secs(10),
        "target re-run by the mapped ConfigMap",
        || async {
            (entries(&events).iter().filter(|e| *e == "target").count() > before_target)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        entries(&events).iter().filter(|e| *e == "other").count(),
        before_other,
        "objects the mapper does not name are not re-run"
    );
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_stops_handling_until_it_wins_it_back() {
    let Some(client) =
        client("a_leader_that_loses_its_lease_stops_handling_until_it_wins_it_back").await
    else {
        return;
    };
    let ns = namespace(&client, "lost").await;
    let handled: Log = log();
    let handler = Handler::on_create("who", pushes_name(&handled, ""));
    let r = start_leading(
        &client,
        &ns,
        only_replica_config(&ns, "fwtest-lost"),
        handler,
    )
    .await;
    // Someone else takes the lease over (as if we had been partitioned away).
    steal_lease(&client, &ns, "fwtest-lost").await;
    eventually(Duration::from_secs(10), "stops leading", || async {
        (!r.metrics.is_leader()).then_some(())
    })
    .await;
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("during", "x")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        entries(&handled).is_empty(),
        "nothing handled while not leading"
    );
    // The intruder never renews: the lease expires and we lead again.
    wait_until_leading(&r, "leads again", Duration::from_secs(20)).await;
    eventually(
        Duration::from_secs(20),
        "object handled after winning the lease back",
        || async { (entries(&handled) == vec!["during".to_string()]).then_some(()) },
    )
    .await;
    r.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn an_invalid_object_carrying_the_finalizer_can_still_be_deleted() {
    let Some(client) =
        client("an_invalid_object_carrying_the_finalizer_can_still_be_deleted").await
    else {
        return;
    };
    let ns = namespace(&client, "invdel").await;
    let runs: Log = log();
    let cleanup_handler = Handler::on_delete("cleanup", pushes_name(&runs, ""));
    let running = start(operator(
        &client,
        controller(&client, &ns).handler(cleanup_handler),
    ));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    let dapi: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<FwTest>(&()));
    create(&api, &obj("doomed", "x")).await;
    eventually(Duration::from_secs(20), "finalizer added", || async {
        let o = api.get("doomed").await.ok()?;
        o.finalizers()
            .contains(&format!("{PREFIX}/finalizer"))
            .then_some(())
    })
    .await;
    // The CRD keeps unknown spec fields, so the server accepts a wrong type.
    merge_patch(
        &dapi,
        "doomed",
        serde_json::json!({"spec": {"count": "many"}}),
    )
    .await;
    wait_invalid_object(&dapi, "doomed").await;
    dapi.delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    // Gone despite our finalizer.
    wait_gone(&dapi, "doomed", Duration::from_secs(20)).await;
    let ev = wait_event(&client, &ns, "doomed", "InvalidObjectDeleted").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    let note = ev.note.unwrap_or_default();
    assert!(note.contains("spec.count"), "names the field: {note}");
    assert!(
        note.contains("delete handlers were skipped"),
        "says the delete handlers were skipped: {note}"
    );
    assert!(
        entries(&runs).is_empty(),
        "the delete handler cannot run on an invalid object: {:?}",
        entries(&runs)
    );
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn a_failing_timer_backs_off_then_resumes_its_interval() {
    let Some(client) = client("a_failing_timer_backs_off_then_resumes_its_interval").await else {
        return;
    };
    let ns = namespace(&client, "timerbackoff").await;
    /// (object, when, ctx.retry) of each timer run.
    type Runs = Arc<Mutex<Vec<(String, Instant, u32)>>>;
    let runs: Runs = Arc::default();
    let r = runs.clone();
    let interval = Duration::from_secs(2);
    let timer = Handler::on_timer(
        "flaky-tick",
        interval,
        Duration::from_millis(100),
        move |ctx: Context<FwTest>| {
            let r = r.clone();
            async move {
                let n = {
                    let mut v = r.lock().map_err(|_| HandlerError::permanent("poisoned"))?;
                    v.push((ctx.name(), Instant::now(), ctx.retry));
                    v.iter().filter(|x| x.0 == ctx.name()).count()
                };
                if ctx.name() == "perm" {
                    return Err(HandlerError::permanent("never works"));
                }
                if n <= 3 {
                    return Err(anyhow::anyhow!("induced timer failure {n}").into());
                }
                Ok(())
            }
        },
    )
    .backoff(Duration::from_millis(250), Duration::from_secs(30))
    .without_jitter();
    let running = start(operator(&client, controller(&client, &ns).handler(timer)));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    for n in ["flaky", "perm"] {
        create(&api, &obj(n, "x")).await;
    }
    let of = |name: &str| -> Vec<(Instant, u32)> {
        runs.lock()
            .map(|v| {
                v.iter()
                    .filter(|x| x.0 == name)
                    .map(|x| (x.1, x.2))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Three failures, then three successful runs.
    eventually(Duration::from_secs(30), "six runs of the timer", || async {
        (of("flaky").len() >= 6).then_some(())
    })
    .await;
    let v = of("flaky");
    assert_eq!(
        v.iter().take(6).map(|x| x.1).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 0, 0],
        "ctx.retry counts the failures in a row and resets on success"
    );
    let gaps: Vec<Duration> = v.windows(2).take(5).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps[0] < gaps[1] && gaps[1] < gaps[2],
        "the retries back off with growing gaps: {gaps:?}"
    );
    assert!(
        gaps[2] < interval,
        "failed runs are retried with the backoff, not the interval: {gaps:?}"
    );
    assert!(
        gaps[3] >= interval && gaps[4] >= interval,
        "after the success the normal interval applies again: {gaps:?}"
    );
    let c = wait_handler_failed(&api, "flaky", "False", Duration::from_secs(10)).await;
    assert_eq!(c.type_, "HandlerFailed.FlakyTick");

    // A permanent error stops the timer for that object ...
    let o = api.get("perm").await.expect("get perm");
    let c = condition(&o, "HandlerFailed.FlakyTick").expect("perm failure condition");
    assert!(
        c.status == "True" && c.message.contains("failed permanently"),
        "{c:?}"
    );
    assert_eq!(of("perm").len(), 1, "no retries after a permanent error");
    // ... until the spec changes.
    merge_patch(&api, "perm", serde_json::json!({"spec": {"value": "y"}})).await;
    eventually(
        Duration::from_secs(10),
        "timer restarted by the spec change",
        || async { (of("perm").len() == 2).then_some(()) },
    )
    .await;
    tokio::time::sleep(interval + Duration::from_millis(500)).await;
    assert_eq!(of("perm").len(), 2, "stopped again after the new failure");
    running.stop().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_cancels_in_flight_handlers_at_once() {
    let Some(client) =
        client("a_leader_that_loses_its_lease_cancels_in_flight_handlers_at_once").await
    else {
        return;
    };
    let ns = namespace(&client, "cancel").await;
    let runs: Log = log();
    let cancelled_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    /// Records when the handler's future is dropped before it finished.
    struct OnCancel(Arc<Mutex<Option<Instant>>>, bool);
    impl Drop for OnCancel {
        fn drop(&mut self) {
            if !self.1
                && let Ok(mut t) = self.0.lock()
            {
                *t = Some(Instant::now());
            }
        }
    }
    let (r, c) = (runs.clone(), cancelled_at.clone());
    let slow = Handler::on_create("slow", move |ctx: Context<FwTest>| {
        let (r, c) = (r.clone(), c.clone());
        async move {
            push(&r, format!("start:{}", ctx.name()));
            let mut guard = OnCancel(c, false);
            tokio::time::sleep(Duration::from_secs(30)).await;
            guard.1 = true;
            push(&r, format!("done:{}", ctx.name()));
            Ok(())
        }
    });
    let config = OperatorConfig {
        // A graceful drain would let the handler run on for this long.
        shutdown_timeout: Duration::from_secs(30),
        ..only_replica_config(&ns, "fwtest-cancel")
    };
    let r = start_leading(&client, &ns, config, slow).await;
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("long", "x")).await;
    wait_for_entry(&runs, "start:long").await;
    // Another replica takes the lease over.
    let stolen_at = Instant::now();
    steal_lease(&client, &ns, "fwtest-cancel").await;
    let cancelled = eventually(Duration::from_secs(10), "handler cancelled", || async {
        cancelled_at.lock().ok().and_then(|t| *t)
    })
    .await;
    let took = cancelled.saturating_duration_since(stolen_at);
    assert!(
        took < Duration::from_secs(3),
        "the in-flight handler was cancelled {took:?} after the lease was lost"
    );
    assert!(!r.metrics.is_leader(), "stopped leading");
    assert_eq!(
        entries(&runs),
        vec!["start:long".to_string()],
        "the handler's work was not completed"
    );
    let o = api.get("long").await.expect("get");
    assert!(
        annotation(&o, "last-handled-configuration").is_none()
            && annotation(&o, "progress").is_none(),
        "nothing of the cancelled run was recorded"
    );
    // The intruder never renews, so we would lead again and rerun the slow
    // handler: end without the graceful drain.
    r.crash().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
async fn event_handlers_see_applied_then_deleted_once() {
    let Some(client) = client("event_handlers_see_applied_then_deleted_once").await else {
        return;
    };
    let ns = namespace(&client, "evtype").await;
    let seen: Log = log();
    let s = seen.clone();
    let observe = Handler::on_event("observe", move |ctx: Context<FwTest>| {
        let s = s.clone();
        async move {
            let what = match ctx.watch_event {
                Some(WatchEventType::Applied) => "applied",
                Some(WatchEventType::Deleted) => "deleted",
                None => "none",
            };
            push(
                &s,
                format!("{what}:{}:{}", ctx.name(), ctx.object.spec.value),
            );
            if ctx.watch_event == Some(WatchEventType::Deleted) {
                // Would be retried quickly if deletions were retried.
                return Err(anyhow::anyhow!("induced failure after deletion").into());
            }
            Ok(())
        }
    })
    .backoff(Duration::from_millis(100), Duration::from_millis(200));
    // A delete handler too: the object goes through its finalizer first.
    let on_delete = Handler::on_delete("cleanup", pushes_name(&seen, "delete-handler:"));
    let running = start(operator(
        &client,
        controller(&client, &ns).handler(observe).handler(on_delete),
    ));
    let api: Api<FwTest> = Api::namespaced(client.clone(), &ns);
    create(&api, &obj("e", "v1")).await;
    wait_for_entry(&seen, "applied:e:v1").await;
    merge_patch(&api, "e", serde_json::json!({"spec": {"value": "v2"}})).await;
    // The modification is seen.
    wait_for_entry(&seen, "applied:e:v2").await;
    api.delete("e", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(Duration::from_secs(20), "deletion seen", || async {
        entries(&seen)
            .iter()
            .any(|e| e.starts_with("deleted:"))
            .then_some(())
    })
    .await;
    assert!(
        matches!(api.get_opt("e").await, Ok(None)),
        "seen as deleted only once gone from the API"
    );
    // Time for several retries, had there been any.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let e = entries(&seen);
    let deleted: Vec<&String> = e.iter().filter(|x| x.starts_with("deleted:")).collect();
    assert_eq!(
        deleted,
        vec!["deleted:e:v2"],
        "one deletion run, with the last known object: {e:?}"
    );
    assert_eq!(e.last().map(String::as_str), Some("deleted:e:v2"), "{e:?}");
    assert!(
        e.iter()
            .filter(|x| !x.starts_with("deleted:") && !x.starts_with("delete-handler:"))
            .all(|x| x.starts_with("applied:e:")),
        "everything before was applied: {e:?}"
    );
    let dh = e
        .iter()
        .position(|x| x == "delete-handler:e")
        .expect("delete handler ran");
    assert!(
        e[dh + 1..].iter().all(|x| x.starts_with("deleted:")),
        "no applied runs while being deleted: {e:?}"
    );
    running.stop().await;
    cleanup(&client, &ns).await;
}
