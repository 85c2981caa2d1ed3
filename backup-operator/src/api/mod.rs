//! The custom resources of `backup.backup.example.com/v1alpha1`.

pub mod backup;
pub mod policy;
pub mod restore;
pub mod rules;

pub use backup::*;
pub use policy::*;
pub use restore::*;

/// API group of every kind here.
pub const GROUP: &str = "backup.backup.example.com";
/// Label on every object the operator creates for a policy.
pub const POLICY_LABEL: &str = "backup.backup.example.com/policy";
/// Label naming the PVC a CronJob or Job backs up (names longer than a
/// label value are shortened with a hash; see [`PVC_ANNOTATION`]).
pub const PVC_LABEL: &str = "backup.backup.example.com/pvc";
/// Annotation holding the PVC's full name on the same objects.
pub const PVC_ANNOTATION: &str = "backup.backup.example.com/pvc";
/// Label on restore Jobs and PVCs.
pub const RESTORE_LABEL: &str = "backup.backup.example.com/restore";
/// Annotation that starts an on-demand backup once per new value.
pub const RUN_NOW_ANNOTATION: &str = "backup.backup.example.com/run-now";
/// Label on catalog Jobs (they are not backup Jobs).
pub const CATALOG_LABEL: &str = "backup.backup.example.com/catalog";
/// Label (value: the task, e.g. `unlock`) on the maintenance Jobs the
/// operator runs for a policy's repositories; they are not backups.
pub const MAINTENANCE_LABEL: &str = "backup.backup.example.com/maintenance";
