//! Framework handlers: thin I/O around the pure modules.

pub mod policy;
pub mod restore;
mod observe;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};

/// Operator-wide settings the handlers read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image with `/backup-mover`, used unless a policy names its own.
    pub mover_image: String,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Sets the settings once at start-up (later calls are ignored).
pub fn init(settings: Settings) {
    let _ = SETTINGS.set(settings);
}

pub(crate) fn settings() -> Settings {
    SETTINGS.get().cloned().unwrap_or_else(|| Settings { mover_image: crate::DEFAULT_MOVER_IMAGE.to_string() })
}

/// Which policies exist per namespace, so a PVC event can be mapped to the
/// policies that may select it (filled by the policy handlers).
#[derive(Default)]
pub(crate) struct PolicyIndex(Mutex<BTreeMap<String, BTreeSet<String>>>);

impl PolicyIndex {
    pub(crate) fn insert(&self, ns: &str, name: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.entry(ns.to_string()).or_default().insert(name.to_string());
        }
    }
    pub(crate) fn in_namespace(&self, ns: &str) -> Vec<String> {
        self.0.lock().map(|m| m.get(ns).map(|s| s.iter().cloned().collect()).unwrap_or_default()).unwrap_or_default()
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
