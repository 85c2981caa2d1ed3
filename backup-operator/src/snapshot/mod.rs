//! CSI VolumeSnapshot backups (`spec.method: Snapshot | SnapshotThenCopy`)
//! and restores from VolumeSnapshots.
//!
//! * `Snapshot`: no CronJob and no pod. The policy handler calls
//!   [`reconcile_snapshots`] on every reconcile and again at
//!   [`SnapshotOutcome::requeue_at`]; it takes the due VolumeSnapshots (one per
//!   PVC per scheduled time, at most one catch-up after downtime), applies
//!   retention to them and returns the `storedBackups` entries.
//! * `SnapshotThenCopy`: [`ensure_copy_source`] takes the snapshot and, once
//!   it is ready, a temporary PVC made from it that the copy Job backs up;
//!   [`cleanup_copy_source`] removes both afterwards (the snapshot only
//!   unless `keepSnapshot`).
//! * Restore: [`restore_from_snapshot`] creates the target PVC with
//!   `dataSource` pointing at the VolumeSnapshot.
//!
//! Clusters without the `snapshot.storage.k8s.io/v1` API get
//! [`SnapshotError::ApiUnavailable`] (condition reason
//! `SnapshotAPIUnavailable`); bad input (unknown class, a PVC without a CSI
//! driver, a class of another driver) gives a named reason and no snapshot is
//! attempted, so nothing loops.
//!
//! The pure parts are [`due`], [`observed`] and [`desired`]; the I/O is in
//! this module's async functions.

pub mod copy_run;
pub mod desired;
pub mod due;
pub mod observed;
mod reconcile;
pub mod status;

pub use reconcile::{
    CopyRunItem, CopySetup, CopySourceState, PvcProblem, SnapshotError, SnapshotOutcome,
    api_available, api_available_in, cleanup_copy_source, copy_runs, copy_setup, copy_source_name,
    ensure_copy_source, fail_copy_source, reconcile_snapshots, restore_from_snapshot,
};

use kube::api::{ApiResource, GroupVersionKind};

/// API group of the CSI snapshot kinds.
pub const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";
/// The served version the operator uses.
pub const SNAPSHOT_VERSION: &str = "v1";
/// Kind of a VolumeSnapshot (also the prefix of `storedBackups[].location`).
pub const VOLUME_SNAPSHOT_KIND: &str = "VolumeSnapshot";
/// Annotation on a VolumeSnapshot: the scheduled time (RFC 3339) it was taken for.
pub const SCHEDULED_TIME_ANNOTATION: &str = "backup.backup.example.com/scheduled-time";
/// Label telling a policy's backup snapshots from intermediate ones.
pub const ROLE_LABEL: &str = "backup.backup.example.com/role";
/// [`ROLE_LABEL`] value of a snapshot that is a stored backup.
pub const ROLE_BACKUP: &str = "backup";
/// [`ROLE_LABEL`] value of a `SnapshotThenCopy` snapshot and its temporary PVC.
pub const ROLE_COPY_SOURCE: &str = "copy-source";

/// Condition reason: the cluster does not serve `snapshot.storage.k8s.io/v1`.
pub const REASON_API_UNAVAILABLE: &str = "SnapshotAPIUnavailable";
/// Condition reason: `spec.snapshot.volumeSnapshotClassName` does not exist.
pub const REASON_CLASS_NOT_FOUND: &str = "VolumeSnapshotClassNotFound";
/// Condition reason: the class's driver is not the PVC's CSI driver.
pub const REASON_DRIVER_MISMATCH: &str = "SnapshotClassDriverMismatch";
/// Condition reason: the PVC's volume or storage class has no CSI driver.
pub const REASON_NO_CSI_DRIVER: &str = "NoCSIDriver";
/// Condition reason: a VolumeSnapshot failed or was not ready within its deadline.
pub const REASON_SNAPSHOT_FAILED: &str = "SnapshotFailed";
/// Condition reason: a selected PVC does not exist (any more).
pub const REASON_PVC_NOT_FOUND: &str = "PVCNotFound";

/// `snapshot.storage.k8s.io/v1` `VolumeSnapshot`, for `Api<DynamicObject>`.
pub fn volume_snapshot_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(SNAPSHOT_GROUP, SNAPSHOT_VERSION, VOLUME_SNAPSHOT_KIND),
        "volumesnapshots",
    )
}

/// `snapshot.storage.k8s.io/v1` `VolumeSnapshotClass` (cluster-scoped).
pub fn volume_snapshot_class_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(SNAPSHOT_GROUP, SNAPSHOT_VERSION, "VolumeSnapshotClass"),
        "volumesnapshotclasses",
    )
}

/// Helpers shared by the snapshot modules' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::schedule::Schedule;
    use jiff::Timestamp;

    pub fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    pub fn hourly() -> Schedule {
        Schedule::parse("0 * * * *", None).expect("valid")
    }
}
