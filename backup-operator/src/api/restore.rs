//! `Restore`: bring one stored backup back into a PVC.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::rules;

/// Desired restore.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "backup.backup.example.com",
    version = "v1alpha1",
    kind = "Restore",
    plural = "restores",
    namespaced,
    status = "RestoreStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.pvcName"),
    printcolumn(name = "Backup", type_ = "string", json_path = ".status.snapshotId"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.spec == oldSelf.spec").message("a Restore is immutable; create a new one"),
    validation = Rule::new("size(self.metadata.name) <= 63").message("a Restore name has at most 63 characters (it is used as a label value)")
)]
#[x_kube(validation = Rule::new("[has(self.backupName), has(self.snapshotId), has(self.latestOf)].filter(x, x).size() == 1").message("name exactly one of backupName, snapshotId or latestOf"))]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// Policy whose destination and credentials are used.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rules::dns_name("spec.policyName"))]
    pub policy_name: String,
    /// A `status.storedBackups[].name` of the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_name: Option<String>,
    /// A snapshot id (restic) or VolumeSnapshot name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// PVC the `snapshotId` belongs to (default: looked up in the policy's `storedBackups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = rules::dns_name("spec.sourcePvc"))]
    pub source_pvc: Option<String>,
    /// The newest backup of this PVC (optionally taken before `before`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = rules::dns_name("spec.latestOf"))]
    pub latest_of: Option<String>,
    /// With `latestOf`: only backups taken before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Where the data goes.
    pub target: RestoreTarget,
    /// Who the restore mover runs as (default: the policy's `spec.job`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<super::MoverIdentity>,
}

/// The PVC restored into.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTarget {
    /// PVC name in the Restore's namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rules::dns_name("spec.target.pvcName"))]
    pub pvc_name: String,
    /// Create the PVC (it must not exist). Default true.
    #[serde(default = "default_true")]
    pub create: bool,
    /// Storage class of a created PVC (default: policy `spec.restore`, then the cluster default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = rules::dns_name("spec.target.storageClassName"))]
    pub storage_class_name: Option<String>,
    /// Size of a created PVC (default: policy `spec.restore.size`, then 1Gi or the snapshot size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = rules::positive_quantity("spec.target.size"))]
    pub size: Option<String>,
    /// Allow writing into an existing PVC (`create: false`). Files in the backup replace existing ones.
    #[serde(default)]
    pub overwrite: bool,
}

fn default_true() -> bool {
    true
}

/// Observed state of a restore.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    /// Standard conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// When the restore Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Bytes written into the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_restored: Option<i64>,
    /// The snapshot restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
}

/// Lifecycle of a restore.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestorePhase {
    /// Waiting for its inputs.
    Pending,
    /// The restore Job runs.
    Running,
    /// Data is back.
    Succeeded,
    /// See conditions.
    Failed,
}
