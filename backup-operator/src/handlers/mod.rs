//! Framework handlers: thin I/O around the pure modules.

mod blocked;
mod copy_runs;
mod movers;
mod observe;
pub mod policy;
pub mod restore;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};

/// Operator-wide settings the handlers read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image with `/backup-mover`, used unless a policy names its own.
    pub mover_image: String,
    /// What policies may ask for beyond that.
    pub guardrails: crate::guardrails::Guardrails,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Sets the settings once at start-up (later calls are ignored).
pub fn init(settings: Settings) {
    let _ = SETTINGS.set(settings);
}

pub(crate) fn settings() -> Settings {
    SETTINGS.get().cloned().unwrap_or_else(|| Settings {
        mover_image: crate::DEFAULT_MOVER_IMAGE.to_string(),
        guardrails: Default::default(),
    })
}

/// Backup metrics of this replica (served with the framework's on `/metrics`).
pub fn backup_metrics() -> &'static crate::metrics::BackupMetrics {
    static METRICS: OnceLock<crate::metrics::BackupMetrics> = OnceLock::new();
    METRICS.get_or_init(Default::default)
}

/// Which policies exist per namespace, so a PVC event can be mapped to the
/// policies that may select it (filled by the policy handlers).
#[derive(Default)]
pub(crate) struct PolicyIndex(Mutex<BTreeMap<String, BTreeSet<String>>>);

impl PolicyIndex {
    pub(crate) fn insert(&self, ns: &str, name: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.entry(ns.to_string())
                .or_default()
                .insert(name.to_string());
        }
    }
    pub(crate) fn in_namespace(&self, ns: &str) -> Vec<String> {
        self.0
            .lock()
            .map(|m| {
                m.get(ns)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }
}

pub(crate) fn policy_index() -> &'static PolicyIndex {
    static INDEX: OnceLock<PolicyIndex> = OnceLock::new();
    INDEX.get_or_init(PolicyIndex::default)
}

/// Policies known in a namespace (for mapping PVC events to policies).
pub fn policies_in(ns: &str) -> Vec<String> {
    policy_index().in_namespace(ns)
}

/// The PVC metadata the cache keeps (selection needs names and labels only).
type PvcMeta = kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::PersistentVolumeClaim>;

/// A watch-fed cache of PVC metadata, so resolving targets does not list a
/// namespace's PVCs on every reconcile (1,000 policies over 10,000 PVCs would
/// otherwise move millions of objects). Metadata only, managed fields
/// dropped: the cache is the operator's largest memory user.
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
    // An Api of PartialObjectMeta makes metadata-only requests.
    let api = kube::Api::<PvcMeta>::all(client);
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|p| {
                p.metadata.managed_fields = None;
                p.metadata.annotations = None;
            }),
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
