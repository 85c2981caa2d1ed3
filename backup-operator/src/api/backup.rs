//! `Backup`: one snapshot the repository holds, as the catalog found it.
//!
//! Created and deleted by the operator only (users read them): the
//! repository is the truth, these objects are its cached listing.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One stored backup of one PVC.
// clippy reads the repeated `type_ = "string"` of the printer columns as
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "backup.backup.example.com",
    version = "v1alpha1",
    kind = "Backup",
    plural = "backups",
    namespaced,
    status = "BackupStatus",
    derive = "PartialEq",
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policy"),
    printcolumn(name = "PVC", type_ = "string", json_path = ".spec.pvc"),
    printcolumn(name = "Time", type_ = "date", json_path = ".spec.time"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".spec.size"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase")
)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// The BackupPolicy that made it.
    pub policy: String,
    /// The PVC it holds.
    pub pvc: String,
    /// restic snapshot id (full).
    pub snapshot_id: String,
    /// Short snapshot id (restic's 8 characters).
    pub short_id: String,
    /// When the backup was taken (RFC 3339).
    pub time: String,
    /// Bytes of file data it holds.
    #[serde(default)]
    pub size: i64,
    /// Files it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<i64>,
    /// Bytes this backup added to the repository (before compression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_added: Option<i64>,
    /// Repository holding it (never with credentials).
    pub location: String,
    /// The PVC as it was at backup time (the default for a restore that
    /// creates its target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RecordedPvc>,
}

/// What a Backup's state is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// `Completed` or `Partial`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Some entries of the PVC could not be read.
    #[serde(default)]
    pub partial: bool,
    /// What a partial backup left out (the first paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The PVC spec recorded with each backup (passed to the mover as JSON in
/// `MOVER_PVC_SPEC` and stored in the snapshot's description).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecordedPvc {
    /// `spec.resources.requests.storage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// `spec.accessModes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// `spec.storageClassName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// `spec.volumeMode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// The PVC's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}
