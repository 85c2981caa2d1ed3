//! Compile-time check of the public API promised to operators built on the
//! framework (no cluster needed: nothing is run against a server).

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ObjectMeta};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, CustomResource, ResourceExt};
use operator_framework::{
    Cause, Context, Controller, EventType, Handler, HandlerError, HandlerKind, HandlerResult,
    LeaderElection, Operator, OperatorConfig, conditions,
};
use operator_framework::{
    on_create, on_delete, on_event, on_field, on_resume, on_timer, on_update,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug)]
#[kube(
    group = "contract.example.com",
    version = "v1",
    kind = "MyCr",
    namespaced,
    status = "MyStatus",
    schema = "disabled"
)]
pub struct MyCrSpec {
    pub schedule: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct MyStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

fn my_predicate(o: &MyCr) -> bool {
    !o.spec.schedule.is_empty()
}

#[on_create(id = "create-x", retries = 10, backoff_base = "1s", backoff_max = "5m", timeout = "60s", labels("app=demo"), annotations("x"), when = my_predicate)]
async fn created(ctx: Context<MyCr>) -> HandlerResult {
    let _api: Api<MyCr> = ctx.api();
    let _client: Client = ctx.client();
    let _ = (
        ctx.name(),
        ctx.namespace(),
        ctx.cause == Cause::Create,
        ctx.retry,
        &ctx.diff,
    );
    ctx.patch_status(serde_json::json!({"phase": "Active"}))
        .await?;
    ctx.event(EventType::Warning, "Reason", "note").await?;
    let mut child = CronJob {
        metadata: ObjectMeta {
            name: Some(format!("{}-cron", ctx.name())),
            ..Default::default()
        },
        ..Default::default()
    };
    ctx.adopt(&mut child);
    let report = ctx.apply_children::<CronJob>(vec![child]).await?;
    let _ = (report.applied, report.deleted);
    let mut conds: Vec<Condition> = Vec::new();
    let changed: bool = conditions::upsert(&mut conds, "Ready", "True", "Ok", "fine", Some(1));
    let _ = (changed, conditions::find(&conds, "Ready"));
    if ctx.retry > 3 {
        return Err(HandlerError::temporary("msg", Some(Duration::from_secs(5))));
    }
    if ctx.retry > 5 {
        return Err(HandlerError::permanent("msg"));
    }
    let _n: u32 = "1".parse()?;
    Err(anyhow::anyhow!("retry me"))?;
    Ok(())
}

#[on_update]
async fn updated(_ctx: Context<MyCr>) -> HandlerResult {
    Ok(())
}

#[on_delete]
async fn deleted(_ctx: Context<MyCr>) -> HandlerResult {
    Ok(())
}

#[on_resume]
async fn resumed(_ctx: Context<MyCr>) -> HandlerResult {
    Ok(())
}

#[on_field(path = "spec.schedule")]
async fn schedule_changed(ctx: Context<MyCr>) -> HandlerResult {
    let _ = (ctx.old_value(), ctx.new_value());
    Ok(())
}

#[on_timer(interval = "60s", initial_delay = "5s")]
async fn tick(_ctx: Context<MyCr>) -> HandlerResult {
    Ok(())
}

/// A documented level-triggered reconcile.
#[on_event]
pub async fn reconcile(ctx: Context<MyCr>) -> HandlerResult {
    if ctx.watch_event == Some(operator_framework::WatchEventType::Deleted) {
        return Ok(());
    }
    Ok(())
}

/// Non-default values for both backoff options (the defaults are 1s / 5m).
#[on_update(
    id = "backoff-both",
    retries = 4,
    backoff_base = "250ms",
    backoff_max = "45s"
)]
async fn backoff_both(_ctx: Context<MyCr>) -> HandlerResult {
    Ok(())
}

/// Only the cap: the base keeps its default.
#[on_timer(interval = "1m", backoff_max = "90s")]
async fn backoff_max_only(_ctx: Context<MyCr>) -> HandlerResult {
    Ok(())
}

/// Only the base: the cap keeps its default.
#[on_event(backoff_base = "1m30s")]
async fn backoff_base_only(_ctx: Context<MyCr>) -> HandlerResult {
    Ok(())
}

/// No backoff options at all.
#[on_delete]
async fn backoff_default(_ctx: Context<MyCr>) -> HandlerResult {
    Ok(())
}

#[allow(dead_code)]
fn build(client: Client) -> Result<Operator, Box<dyn std::error::Error>> {
    Ok(Operator::new(client.clone(), "backup.backup.example.com")
        .config(OperatorConfig {
            max_in_flight: 16,
            metrics_addr: Some("127.0.0.1:8080".parse()?),
            leader_election: Some(LeaderElection {
                lease_name: "x".into(),
                lease_namespace: "default".into(),
                identity: "me".into(),
            }),
            resync: Duration::from_secs(300),
            ..Default::default()
        })
        .controller(
            Controller::new(Api::<MyCr>::all(client.clone()), watcher::Config::default())
                .handler(created())
                .handler(updated())
                .handler(deleted())
                .handler(resumed())
                .handler(schedule_changed())
                .handler(tick())
                .handler(reconcile())
                .owns::<CronJob>(Api::all(client.clone()))
                .watches::<Job, _>(
                    Api::all(client.clone()),
                    |job: &Job| -> Vec<ObjectRef<MyCr>> {
                        job.labels()
                            .get("policy")
                            .map(|p| {
                                vec![ObjectRef::new(p).within(&job.namespace().unwrap_or_default())]
                            })
                            .unwrap_or_default()
                    },
                ),
        ))
}

#[test]
fn macro_options_end_up_in_the_handler() {
    let h = created();
    assert_eq!(h.handler_id(), "create-x");
    assert_eq!(*h.kind(), operator_framework::HandlerKind::Create);
    let f = schedule_changed();
    assert_eq!(
        *f.kind(),
        operator_framework::HandlerKind::Field {
            path: "spec.schedule".into()
        }
    );
    assert_eq!(
        *tick().kind(),
        operator_framework::HandlerKind::Timer {
            interval: Duration::from_secs(60),
            initial_delay: Duration::from_secs(5)
        }
    );
    assert_eq!(reconcile().handler_id(), "reconcile");
    let dbg = format!("{h:?}");
    assert!(dbg.contains("retries: Some(10)"), "{dbg}");
    assert!(dbg.contains("timeout: Some(60s)"), "{dbg}");
}

async fn noop(_ctx: Context<MyCr>) -> HandlerResult {
    Ok(())
}

/// The backoff is visible only through `Debug`: a macro-built handler must
/// print exactly like the same handler built with the builder methods.
/// (`labels`, `annotations` and `when` are not visible through any public
/// API; `tests/integration.rs` checks them by what they select.)
#[test]
fn macro_backoff_options_end_up_in_the_handler() {
    let ms = Duration::from_millis;
    let same = |macro_built: Handler<MyCr>, by_hand: Handler<MyCr>| {
        assert_eq!(format!("{macro_built:?}"), format!("{by_hand:?}"));
    };
    same(
        backoff_both(),
        Handler::on_update("backoff-both", noop)
            .retries(4)
            .backoff(ms(250), ms(45_000)),
    );
    same(
        backoff_max_only(),
        Handler::on_timer("backoff_max_only", ms(60_000), ms(0), noop)
            .backoff(ms(1_000), ms(90_000)),
    );
    same(
        backoff_base_only(),
        Handler::on_event("backoff_base_only", noop).backoff(ms(90_000), ms(300_000)),
    );
    same(
        backoff_default(),
        Handler::on_delete("backoff_default", noop),
    );
    // And the values themselves, in case Debug stopped printing them.
    let dbg = format!("{:?}", backoff_both());
    assert!(
        dbg.contains("backoff: Backoff { base: 250ms, max: 45s, jitter: true }"),
        "{dbg}"
    );
    let dbg = format!("{:?}", backoff_default());
    assert!(
        dbg.contains("backoff: Backoff { base: 1s, max: 300s, jitter: true }"),
        "{dbg}"
    );
    assert_eq!(*backoff_default().kind(), HandlerKind::Delete);
}
