//! Framework handlers: thin I/O around the pure modules.

mod blocked;
mod catalog;
mod copy_runs;
mod movers;
mod observe;
pub mod policy;
pub mod restore;
mod unlock;

use operator_framework::Context;
use std::sync::{Arc, OnceLock};

/// Operator-wide settings the handlers read (registered with
/// `Operator::data`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image with `/backup-mover`, used unless a policy names its own.
    pub mover_image: String,
    /// How often every policy's repositories are listed (besides after
    /// each backup and on creation).
    pub catalog_interval: std::time::Duration,
    /// What policies may ask for beyond that.
    pub guardrails: crate::guardrails::Guardrails,
    /// This cluster's identity, recorded by backups in each repository's
    /// owner marker (see `maintenance::owner`); empty: not recorded.
    pub cluster_id: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mover_image: crate::DEFAULT_MOVER_IMAGE.to_string(),
            catalog_interval: std::time::Duration::from_secs(600),
            guardrails: Default::default(),
            cluster_id: String::new(),
        }
    }
}

/// The operator's [`Settings`] (the defaults when none were registered).
pub(crate) fn settings<K>(ctx: &Context<K>) -> Arc<Settings>
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
    ctx.try_data::<Settings>().unwrap_or_default()
}

/// The backup metrics of this replica (registered with `Operator::data` and
/// rendered by a collector on the framework's `/metrics`); `None` when the
/// operator registered none (nothing is recorded then).
pub(crate) fn backup_metrics<K>(ctx: &Context<K>) -> Option<Arc<crate::metrics::BackupMetrics>>
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
    ctx.try_data::<crate::metrics::BackupMetrics>()
}

/// The name of the policies controller's index of policies by namespace
/// (maps PVC events to the policies that may select the PVC).
pub const POLICIES_BY_NAMESPACE: &str = "policies-by-namespace";

/// The index function of [`POLICIES_BY_NAMESPACE`]: namespace -> policy name.
pub fn policy_namespace(p: &crate::api::BackupPolicy) -> Vec<(String, String)> {
    use kube::ResourceExt;
    vec![(p.namespace().unwrap_or_default(), p.name_any())]
}

/// The PVCs the cache keeps: names, labels and the few spec fields a
/// backup records (see [`trim_pvc`]).
type PvcMeta = k8s_openapi::api::core::v1::PersistentVolumeClaim;

/// Keeps what selection and the recorded PVC spec need: the cache is the
/// operator's largest memory user.
fn trim_pvc(p: &mut PvcMeta) {
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    p.status = None;
    if let Some(s) = p.spec.as_mut() {
        *s = k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
            access_modes: s.access_modes.take(),
            storage_class_name: s.storage_class_name.take(),
            volume_mode: s.volume_mode.take(),
            resources: s.resources.take().map(|r| {
                k8s_openapi::api::core::v1::VolumeResourceRequirements {
                    requests: r.requests,
                    limits: None,
                }
            }),
            ..Default::default()
        };
    }
}

/// A watch-fed cache of PVCs (trimmed), so resolving targets does not list a
/// namespace's PVCs on every reconcile (1,000 policies over 10,000 PVCs would
/// otherwise move millions of objects). Trimmed to names, labels and a few spec fields.
static PVC_CACHE: OnceLock<kube::runtime::reflector::Store<PvcMeta>> = OnceLock::new();

static PVC_CACHE_READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Starts the PVC cache (once); until it has synced, handlers list from the API.
pub fn start_pvc_cache(client: kube::Client) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt as _, reflector, watcher};
    let (reader, writer) = reflector::store();
    if PVC_CACHE.set(reader).is_err() {
        return;
    }
    let api = kube::Api::<PvcMeta>::all(client);
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(trim_pvc),
    );
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(watcher::Event::InitDone) => {
                    PVC_CACHE_READY.store(true, std::sync::atomic::Ordering::Release)
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "PVC watch error (retrying)"),
            }
        }
    });
}

pub(crate) fn cached_pvcs(ns: &str) -> Option<Vec<std::sync::Arc<PvcMeta>>> {
    let store = PVC_CACHE.get()?;
    if !PVC_CACHE_READY.load(std::sync::atomic::Ordering::Acquire) {
        return None;
    }
    Some(
        store
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .collect(),
    )
}
