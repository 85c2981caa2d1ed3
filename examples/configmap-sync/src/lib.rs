//! `configmap-sync`: an example operator on `operator-framework`.
//!
//! A namespaced `ConfigMapSync` (group `examples.operator-framework.dev`,
//! version `v1alpha1`) names a source ConfigMap in its own namespace and a
//! list of target namespaces; the operator keeps a copy of the source in every
//! target namespace, removes copies from namespaces dropped from the list, and
//! removes all copies when the `ConfigMapSync` is deleted.
//!
//! Handlers (all through the framework's public API only):
//! * `#[on_create]` `created`: first sync, status.
//! * `#[on_field(path = "spec.targetNamespaces")]` `targets_changed`: deletes
//!   copies in namespaces that were removed from the list, syncs the rest.
//! * `#[on_update]` `updated`: any other spec change (e.g. another source).
//! * `#[on_timer(interval = "30s")]` `resync`: repairs drift (source data
//!   changed, a copy edited or deleted); writes only when something differs.
//!   [`operator_with_resync`] runs it at another interval.
//! * `#[on_delete]` `deleted`: removes every copy.
//!
//! Operator data ([`CopyStats`]: copies written, on `/metrics`), an index
//! of the syncs by source and target ([`BY_SOURCE_TARGET`]), and, when
//! `OperatorConfig::webhooks` is set, a validating webhook that uses the
//! index to reject a second sync of the same source into the same target
//! namespace (they would overwrite each other's copy).

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use operator_framework::{
    AdmissionRequest, Context, Controller, EventType, Handler, HandlerError, HandlerResult, Index,
    Operator, OperatorConfig, Validation, conditions, on_create, on_delete, on_field, on_timer,
    on_update,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Prefix of the operator's annotations, finalizer and labels.
pub const PREFIX: &str = "configmap-sync.examples.operator-framework.dev";
/// Label put on every copy: `<namespace>.<name>` of the owning ConfigMapSync.
pub const COPY_LABEL: &str = "configmap-sync.examples.operator-framework.dev/owner";
/// How often the drift repair ([`resync`]) runs per object by default.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// How long to wait before syncing again while the source ConfigMap is missing.
pub const SOURCE_MISSING_RETRY: Duration = Duration::from_secs(10);

/// Which ConfigMap to copy where.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "examples.operator-framework.dev",
    version = "v1alpha1",
    kind = "ConfigMapSync",
    namespaced,
    status = "ConfigMapSyncStatus",
    shortname = "cms",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source.name"}"#,
    printcolumn = r#"{"name":"Synced","type":"integer","jsonPath":".status.syncedCount"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSyncSpec {
    /// The source ConfigMap, in the ConfigMapSync's namespace.
    pub source: SourceRef,
    /// Namespaces that get a copy (same name as the source).
    #[serde(default)]
    pub target_namespaces: Vec<String>,
}

/// A ConfigMap in the ConfigMapSync's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SourceRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Observed state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSyncStatus {
    /// Namespaces holding an up-to-date copy.
    #[serde(default)]
    pub synced_namespaces: Vec<String>,
    /// Number of namespaces holding a copy.
    #[serde(default)]
    pub synced_count: i64,
    /// `Ready` and the framework's per-handler `HandlerFailed.<Handler>`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The CRD as YAML.
pub fn crd_yaml() -> Result<String, anyhow::Error> {
    Ok(serde_saphyr::to_string(&ConfigMapSync::crd())?)
}

/// The copy of `source` that belongs into `namespace`.
pub fn desired_copy(sync: &ConfigMapSync, source: &ConfigMap, namespace: &str) -> ConfigMap {
    let owner = format!(
        "{}.{}",
        sync.namespace().unwrap_or_default(),
        sync.name_any()
    );
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(sync.spec.source.name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(COPY_LABEL.to_string(), owner)])),
            ..Default::default()
        },
        data: source.data.clone(),
        binary_data: source.binary_data.clone(),
        ..Default::default()
    }
}

/// Whether an existing copy already matches the desired one.
pub fn copy_is_current(existing: &ConfigMap, desired: &ConfigMap) -> bool {
    existing.data == desired.data
        && existing.binary_data == desired.binary_data
        && existing.labels().get(COPY_LABEL) == desired.labels().get(COPY_LABEL)
}

/// The JSON merge patch that turns the copy `existing` into `desired`: the
/// owner label, and `data` / `binaryData` with exactly the desired keys (keys
/// only in `existing` are set to `null`, i.e. removed; a map the source does
/// not have is removed as a whole).
pub fn copy_repair_patch(existing: &ConfigMap, desired: &ConfigMap) -> serde_json::Value {
    fn exactly<V: Serialize>(
        existing: Option<&BTreeMap<String, V>>,
        desired: Option<&BTreeMap<String, V>>,
    ) -> serde_json::Value {
        let Some(desired) = desired else {
            return serde_json::Value::Null;
        };
        let mut out = serde_json::Map::new();
        for k in existing.into_iter().flat_map(|m| m.keys()) {
            out.insert(k.clone(), serde_json::Value::Null);
        }
        for (k, v) in desired {
            out.insert(
                k.clone(),
                serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
            );
        }
        serde_json::Value::Object(out)
    }
    serde_json::json!({
        "metadata": {"labels": {COPY_LABEL: desired.labels().get(COPY_LABEL)}},
        "data": exactly(existing.data.as_ref(), desired.data.as_ref()),
        "binaryData": exactly(existing.binary_data.as_ref(), desired.binary_data.as_ref()),
    })
}

/// Namespaces in `old` but not in `new`.
pub fn removed_namespaces(old: &[String], new: &[String]) -> Vec<String> {
    let new: BTreeSet<&String> = new.iter().collect();
    let mut out: Vec<String> = old.iter().filter(|n| !new.contains(n)).cloned().collect();
    out.sort();
    out.dedup();
    out
}

fn strings(v: Option<serde_json::Value>) -> Vec<String> {
    v.and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// Operator data: how many copies this replica wrote (created or repaired).
#[derive(Debug, Default)]
pub struct CopyStats {
    /// Copies written since the start.
    pub written: AtomicU64,
}

impl CopyStats {
    /// The Prometheus series (appended to the framework's `/metrics`).
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP configmap_sync_copies_written_total Copies created or repaired.\n");
        out.push_str("# TYPE configmap_sync_copies_written_total counter\n");
        let n = self.written.load(Ordering::Relaxed);
        out.push_str(&format!("configmap_sync_copies_written_total {n}\n"));
    }
}

/// The index of the syncs by (namespace, source name, target namespace).
pub const BY_SOURCE_TARGET: &str = "by-source-target";

/// The key of [`BY_SOURCE_TARGET`].
pub type SourceTarget = (String, String, String);

/// The index function of [`BY_SOURCE_TARGET`]: one entry per target.
pub fn source_targets(s: &ConfigMapSync) -> Vec<(SourceTarget, String)> {
    let ns = s.namespace().unwrap_or_default();
    s.spec
        .target_namespaces
        .iter()
        .map(|t| {
            (
                (ns.clone(), s.spec.source.name.clone(), t.clone()),
                s.name_any(),
            )
        })
        .collect()
}

/// Rejects a sync whose source and target another sync already covers
/// (`others(key)`: the syncs indexed under the key). Pure.
pub fn check_conflicts(
    sync: &ConfigMapSync,
    others: impl Fn(&SourceTarget) -> Vec<String>,
) -> Validation {
    let name = sync.name_any();
    for (key, _) in source_targets(sync) {
        if let Some(other) = others(&key).into_iter().find(|o| *o != name) {
            return Err(format!(
                "ConfigMapSync {other} already copies {} into namespace {}",
                key.1, key.2
            ));
        }
    }
    Ok(())
}

/// Brings every copy up to date; returns the namespaces written to.
async fn sync(ctx: &Context<ConfigMapSync>) -> Result<Vec<String>, HandlerError> {
    let ns = ctx.namespace().unwrap_or_default();
    let client = ctx.client();
    let sources: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let Some(source) = sources.get_opt(&ctx.object.spec.source.name).await? else {
        set_ready(
            ctx,
            "False",
            "SourceMissing",
            "the source ConfigMap does not exist",
        )
        .await?;
        return Err(HandlerError::temporary(
            format!(
                "source ConfigMap {ns}/{} not found",
                ctx.object.spec.source.name
            ),
            Some(SOURCE_MISSING_RETRY),
        ));
    };
    let mut written = Vec::new();
    let mut synced = Vec::new();
    for target in &ctx.object.spec.target_namespaces {
        if *target == ns {
            continue; // never overwrite the source itself
        }
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), target);
        let desired = desired_copy(&ctx.object, &source, target);
        let name = &ctx.object.spec.source.name;
        match api.get_opt(name).await? {
            Some(c) if copy_is_current(&c, &desired) => {}
            Some(c) => {
                // A merge patch, not server-side apply: keys someone else
                // added to the copy belong to their field manager, and apply
                // would leave them in place.
                let pp = PatchParams {
                    field_manager: Some(ctx.field_manager().to_string()),
                    ..Default::default()
                };
                api.patch(name, &pp, &Patch::Merge(copy_repair_patch(&c, &desired)))
                    .await?;
                written.push(target.clone());
                count_written(ctx);
            }
            None => {
                api.patch(
                    name,
                    &PatchParams::apply(ctx.field_manager()).force(),
                    &Patch::Apply(&desired),
                )
                .await?;
                written.push(target.clone());
                count_written(ctx);
            }
        }
        synced.push(target.clone());
    }
    synced.sort();
    ctx.patch_status(serde_json::json!({
        "syncedNamespaces": synced,
        "syncedCount": synced.len(),
    }))
    .await?;
    set_ready(
        ctx,
        "True",
        "Synced",
        "all target namespaces hold a current copy",
    )
    .await?;
    Ok(written)
}

fn count_written(ctx: &Context<ConfigMapSync>) {
    if let Some(stats) = ctx.try_data::<CopyStats>() {
        stats.written.fetch_add(1, Ordering::Relaxed);
    }
}

async fn set_ready(
    ctx: &Context<ConfigMapSync>,
    status: &str,
    reason: &str,
    message: &str,
) -> Result<(), HandlerError> {
    let mut conds: Vec<Condition> = ctx
        .status()
        .get("conditions")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    if conditions::upsert(
        &mut conds,
        "Ready",
        status,
        reason,
        message,
        ctx.object.metadata.generation,
    ) {
        ctx.patch_status(serde_json::json!({ "conditions": conds }))
            .await?;
    }
    Ok(())
}

async fn delete_copies(
    ctx: &Context<ConfigMapSync>,
    source: &str,
    namespaces: &[String],
) -> HandlerResult {
    let ns = ctx.namespace().unwrap_or_default();
    let owner = format!("{ns}.{}", ctx.name());
    for target in namespaces {
        if *target == ns {
            continue;
        }
        let api: Api<ConfigMap> = Api::namespaced(ctx.client(), target);
        let Some(copy) = api.get_opt(source).await? else {
            continue;
        };
        // Only delete what we made.
        if copy.labels().get(COPY_LABEL) == Some(&owner) {
            match api.delete(source, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// First sync of a new ConfigMapSync.
#[on_create(backoff_base = "2s", backoff_max = "2m")]
pub async fn created(ctx: Context<ConfigMapSync>) -> HandlerResult {
    let written = sync(&ctx).await?;
    ctx.event(
        EventType::Normal,
        "Synced",
        &format!("copied into {} namespace(s)", written.len()),
    )
    .await?;
    Ok(())
}

/// Copies in namespaces removed from `spec.targetNamespaces` are deleted.
#[on_field(path = "spec.targetNamespaces")]
pub async fn targets_changed(ctx: Context<ConfigMapSync>) -> HandlerResult {
    let old = strings(ctx.old_value());
    let new = strings(ctx.new_value());
    let removed = removed_namespaces(&old, &new);
    delete_copies(&ctx, &ctx.object.spec.source.name, &removed).await?;
    if !removed.is_empty() {
        tracing::info!(?removed, "removed copies from dropped namespaces");
    }
    Ok(())
}

/// Any spec change: sync again.
#[on_update]
pub async fn updated(ctx: Context<ConfigMapSync>) -> HandlerResult {
    // A new source name leaves the old copies behind: remove them first.
    if let Some(old) = ctx.old_value() {
        let old_source = old.pointer("/spec/source/name").and_then(|v| v.as_str());
        if let Some(old_source) = old_source
            && old_source != ctx.object.spec.source.name
        {
            let targets = strings(old.pointer("/spec/targetNamespaces").cloned());
            delete_copies(&ctx, old_source, &targets).await?;
        }
    }
    sync(&ctx).await?;
    Ok(())
}

/// Drift repair every [`DEFAULT_RESYNC_INTERVAL`] (first run that long after
/// the operator first sees the object): writes only what differs.
#[on_timer(interval = "30s", initial_delay = "30s")]
pub async fn resync(ctx: Context<ConfigMapSync>) -> HandlerResult {
    repair_drift(ctx).await
}

/// The drift-repair timer ([`resync`]) with another interval, used also as
/// its initial delay (tests use a short one).
pub fn resync_every(interval: Duration) -> Handler<ConfigMapSync> {
    Handler::on_timer("resync", interval, interval, repair_drift)
}

async fn repair_drift(ctx: Context<ConfigMapSync>) -> HandlerResult {
    let written = sync(&ctx).await?;
    if !written.is_empty() {
        ctx.event(
            EventType::Normal,
            "DriftRepaired",
            &format!("re-synced {}", written.join(", ")),
        )
        .await?;
    }
    Ok(())
}

/// Removes every copy.
#[on_delete]
pub async fn deleted(ctx: Context<ConfigMapSync>) -> HandlerResult {
    let targets = ctx.object.spec.target_namespaces.clone();
    delete_copies(&ctx, &ctx.object.spec.source.name, &targets).await
}

/// The controller with all handlers, watching `api`.
pub fn controller(api: Api<ConfigMapSync>) -> Controller<ConfigMapSync> {
    controller_with_timer(api, resync())
}

/// The controller with a drift-repair timer that runs every `interval`.
pub fn controller_with_resync(
    api: Api<ConfigMapSync>,
    interval: Duration,
) -> Controller<ConfigMapSync> {
    controller_with_timer(api, resync_every(interval))
}

fn controller_with_timer(
    api: Api<ConfigMapSync>,
    timer: Handler<ConfigMapSync>,
) -> Controller<ConfigMapSync> {
    Controller::new(api, watcher::Config::default())
        .index(BY_SOURCE_TARGET, source_targets)
        .handler(created())
        .handler(targets_changed())
        .handler(updated())
        .handler(timer)
        .handler(deleted())
}

/// The whole operator (with the validating webhook when
/// `config.webhooks` is set).
pub fn operator(client: Client, api: Api<ConfigMapSync>, config: OperatorConfig) -> Operator {
    assemble(client, config, controller(api))
}

/// Adds the data, the metrics collector and (with a webhook
/// configuration) the validating webhook.
fn assemble(client: Client, config: OperatorConfig, c: Controller<ConfigMapSync>) -> Operator {
    let c = match (&config.webhooks, c.index_reader(BY_SOURCE_TARGET)) {
        (Some(_), Ok(index)) => c.validate("conflicts", move |r| validate_sync(index.clone(), r)),
        _ => c,
    };
    let stats = Arc::new(CopyStats::default());
    let op = Operator::new(client, PREFIX)
        .config(config)
        .data(stats.clone())
        .controller(c);
    op.metrics().add_collector(move |out| stats.render(out));
    op
}

async fn validate_sync(
    index: Index<SourceTarget, String>,
    r: AdmissionRequest<ConfigMapSync>,
) -> Validation {
    check_conflicts(&r.object, |k| index.get(k))
}

/// The whole operator with the drift repair running every `interval`
/// instead of [`DEFAULT_RESYNC_INTERVAL`].
pub fn operator_with_resync(
    client: Client,
    api: Api<ConfigMapSync>,
    config: OperatorConfig,
    interval: Duration,
) -> Operator {
    assemble(client, config, controller_with_resync(api, interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync_obj() -> ConfigMapSync {
        let mut s = ConfigMapSync::new(
            "s",
            ConfigMapSyncSpec {
                source: SourceRef {
                    name: "settings".into(),
                },
                target_namespaces: vec!["a".into(), "b".into()],
            },
        );
        s.metadata.namespace = Some("src".into());
        s
    }

    #[test]
    fn desired_copy_carries_data_and_owner_label() {
        let source = ConfigMap {
            data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
            ..Default::default()
        };
        let c = desired_copy(&sync_obj(), &source, "a");
        assert_eq!(c.metadata.name.as_deref(), Some("settings"));
        assert_eq!(c.metadata.namespace.as_deref(), Some("a"));
        assert_eq!(
            c.labels().get(COPY_LABEL).map(String::as_str),
            Some("src.s")
        );
        assert_eq!(c.data, source.data);
        assert!(copy_is_current(&c, &c));
        let mut changed = c.clone();
        changed.data = None;
        assert!(!copy_is_current(&changed, &c));
    }

    #[test]
    fn repair_patch_sets_desired_keys_and_removes_others() {
        let source = ConfigMap {
            data: Some(BTreeMap::from([("color".to_string(), "blue".to_string())])),
            ..Default::default()
        };
        let desired = desired_copy(&sync_obj(), &source, "a");
        let mut edited = desired.clone();
        edited.data = Some(BTreeMap::from([
            ("color".to_string(), "red".to_string()),
            ("extra".to_string(), "x".to_string()),
        ]));
        edited.labels_mut().insert("mine".into(), "yes".into());
        edited.labels_mut().remove(COPY_LABEL);
        assert_eq!(
            copy_repair_patch(&edited, &desired),
            serde_json::json!({
                "metadata": {"labels": {COPY_LABEL: "src.s"}},
                "data": {"color": "blue", "extra": null},
                "binaryData": null,
            })
        );
    }

    #[test]
    fn removed_namespaces_diff() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            removed_namespaces(&v(&["a", "b", "c"]), &v(&["b"])),
            v(&["a", "c"])
        );
        assert!(removed_namespaces(&v(&["a"]), &v(&["a", "b"])).is_empty());
    }

    #[test]
    fn crd_has_group_kind_and_status() {
        let y = crd_yaml().expect("yaml");
        assert!(y.contains("configmapsyncs.examples.operator-framework.dev"));
        assert!(y.contains("kind: ConfigMapSync"));
        assert!(y.contains("targetNamespaces"));
        assert!(y.contains("status: {}") || y.contains("status:"));
    }

    #[test]
    fn resync_every_matches_the_macro_timer_at_the_default_interval() {
        assert_eq!(
            format!("{:?}", resync_every(DEFAULT_RESYNC_INTERVAL)),
            format!("{:?}", resync())
        );
        assert_eq!(
            *resync_every(Duration::from_secs(2)).kind(),
            operator_framework::HandlerKind::Timer {
                interval: Duration::from_secs(2),
                initial_delay: Duration::from_secs(2)
            }
        );
    }

    #[test]
    fn handlers_are_registered_with_ids() {
        let ids: Vec<String> = [
            created().handler_id().to_string(),
            targets_changed().handler_id().to_string(),
            updated().handler_id().to_string(),
            resync().handler_id().to_string(),
            deleted().handler_id().to_string(),
        ]
        .to_vec();
        assert_eq!(
            ids,
            ["created", "targets_changed", "updated", "resync", "deleted"]
        );
    }

    /// A handler unit test without a cluster (the framework's
    /// `ContextBuilder`): adding a namespace deletes nothing, so the field
    /// handler succeeds without any API call (the builder's client reaches
    /// nothing: a call would fail the handler).
    #[tokio::test]
    async fn targets_changed_without_removed_namespaces_touches_nothing() {
        use operator_framework::testing::ContextBuilder;
        let old = sync_obj();
        let mut new = sync_obj();
        new.spec.target_namespaces.push("c".into());
        let ctx = ContextBuilder::new(new)
            .old(old)
            .field("spec.targetNamespaces")
            .build();
        assert_eq!(ctx.diff.len(), 1, "{:?}", ctx.diff);
        let handler = targets_changed();
        assert_eq!(handler.handler_id(), "targets_changed");
        assert!(handler.call(ctx).await.is_ok());
    }

    /// Reading the source needs the API server: without one the create
    /// handler fails with a retryable error, at once.
    #[tokio::test]
    async fn created_fails_retryably_without_a_cluster() {
        use operator_framework::testing::ContextBuilder;
        let ctx = ContextBuilder::new(sync_obj()).build();
        let e = created().call(ctx).await.expect_err("no API server");
        assert!(!e.is_permanent(), "{e}");
    }

    #[test]
    fn a_second_sync_of_a_source_into_a_target_is_a_conflict() {
        let s = sync_obj(); // src/s: settings -> a, b
        let keys = source_targets(&s);
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys[0].0,
            ("src".to_string(), "settings".to_string(), "a".to_string())
        );
        // Only itself in the index: fine (an update of the same sync).
        assert!(check_conflicts(&s, |_| vec!["s".into()]).is_ok());
        let other = |k: &SourceTarget| {
            if k.2 == "b" {
                vec!["other".to_string()]
            } else {
                Vec::new()
            }
        };
        let e = check_conflicts(&s, other).expect_err("b is taken");
        assert_eq!(
            e,
            "ConfigMapSync other already copies settings into namespace b"
        );
    }

    #[test]
    fn copy_stats_render_a_counter() {
        let stats = CopyStats::default();
        stats.written.fetch_add(3, Ordering::Relaxed);
        let mut out = String::new();
        stats.render(&mut out);
        assert!(
            out.ends_with("configmap_sync_copies_written_total 3\n"),
            "{out}"
        );
    }
}
