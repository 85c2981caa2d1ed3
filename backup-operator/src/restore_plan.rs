//! Which snapshot a `Restore` means, and the PVC it creates: pure decisions.

use crate::api::{BackupPolicy, RESTORE_LABEL, Restore};
use crate::desired::MANAGER;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// The snapshot to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// PVC whose repository holds it.
    pub pvc: String,
    /// Snapshot id, or `latest`.
    pub snapshot: String,
    /// With `latest`: only snapshots before this time.
    pub before: Option<String>,
}

/// Why the source cannot be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// `backupName` is not in the policy's `storedBackups`.
    #[error("backup {0:?} is not in status.storedBackups of the policy")]
    BackupNotFound(String),
    /// `snapshotId` without `sourcePvc` and not in `storedBackups`.
    #[error("snapshot {0:?} is not in status.storedBackups of the policy; set spec.sourcePvc")]
    SnapshotPvcUnknown(String),
    /// None of the three ways to name a backup was used.
    #[error("name one of backupName, snapshotId or latestOf")]
    NothingNamed,
}

/// Resolves the Restore's reference against the policy's stored backups.
pub fn source(restore: &Restore, policy: &BackupPolicy) -> Result<Source, SourceError> {
    let spec = &restore.spec;
    let stored = policy
        .status
        .as_ref()
        .map(|s| s.stored_backups.as_slice())
        .unwrap_or_default();
    if let Some(name) = &spec.backup_name {
        let b = stored
            .iter()
            .find(|b| &b.name == name)
            .ok_or_else(|| SourceError::BackupNotFound(name.clone()))?;
        let snapshot = b
            .snapshot_id
            .clone()
            .ok_or_else(|| SourceError::BackupNotFound(name.clone()))?;
        return Ok(Source {
            pvc: b.pvc_name.clone(),
            snapshot,
            before: None,
        });
    }
    if let Some(id) = &spec.snapshot_id {
        let pvc = match &spec.source_pvc {
            Some(p) => p.clone(),
            None => stored
                .iter()
                .find(|b| {
                    b.snapshot_id
                        .as_deref()
                        .is_some_and(|s| s.starts_with(id.as_str()) || id.starts_with(s))
                })
                .map(|b| b.pvc_name.clone())
                .ok_or_else(|| SourceError::SnapshotPvcUnknown(id.clone()))?,
        };
        return Ok(Source {
            pvc,
            snapshot: id.clone(),
            before: None,
        });
    }
    if let Some(pvc) = &spec.latest_of {
        return Ok(Source {
            pvc: pvc.clone(),
            snapshot: "latest".into(),
            before: spec.before.clone(),
        });
    }
    Err(SourceError::NothingNamed)
}

/// The PVC a restore creates: no owner, so deleting the Restore keeps the data.
pub fn target_pvc(
    restore: &Restore,
    policy: &BackupPolicy,
    source_request: Option<Quantity>,
) -> PersistentVolumeClaim {
    let t = &restore.spec.target;
    let defaults = policy.spec.restore.clone().unwrap_or_default();
    let size = t
        .size
        .clone()
        .map(Quantity)
        .or_else(|| defaults.size.clone().map(Quantity))
        .or(source_request)
        .unwrap_or_else(|| Quantity("1Gi".into()));
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(t.pvc_name.clone()),
            namespace: restore.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([
                (
                    RESTORE_LABEL.to_string(),
                    restore.metadata.name.clone().unwrap_or_default(),
                ),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    MANAGER.to_string(),
                ),
            ])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: t.storage_class_name.clone().or(defaults.storage_class_name),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size)])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupPolicyStatus, StoredBackup};

    fn policy() -> BackupPolicy {
        let mut p = BackupPolicy::new(
            "p",
            serde_json::from_value(serde_json::json!({
                "targets": {"names": ["data"]}, "schedule": "@daily",
                "destination": {"nfs": {"server": "n", "path": "/e"}, "repositoryPasswordSecretRef": {"name": "pw"}},
                "restore": {"storageClassName": "fast", "size": "2Gi"}
            }))
            .expect("spec"),
        );
        p.status = Some(BackupPolicyStatus {
            stored_backups: vec![StoredBackup {
                name: "data-abcd1234".into(),
                timestamp: "2026-01-01T00:00:00Z".into(),
                pvc_name: "data".into(),
                size: 1,
                location: "/repo/ns/data".into(),
                status: "Completed".into(),
                snapshot_id: Some("abcd1234ffff".into()),
            }],
            ..Default::default()
        });
        p
    }

    fn restore(spec: serde_json::Value) -> Restore {
        let mut r = Restore::new("r1", serde_json::from_value(spec).expect("restore spec"));
        r.metadata.namespace = Some("ns".into());
        r
    }

    #[test]
    fn backup_name_and_snapshot_id_resolve_to_the_pvc() {
        let r = restore(
            serde_json::json!({"policyName": "p", "backupName": "data-abcd1234", "target": {"pvcName": "t"}}),
        );
        assert_eq!(
            source(&r, &policy()),
            Ok(Source {
                pvc: "data".into(),
                snapshot: "abcd1234ffff".into(),
                before: None
            })
        );
        let r = restore(
            serde_json::json!({"policyName": "p", "snapshotId": "abcd1234", "target": {"pvcName": "t"}}),
        );
        assert_eq!(source(&r, &policy()).map(|s| s.pvc), Ok("data".into()));
        let r = restore(
            serde_json::json!({"policyName": "p", "snapshotId": "ffff", "target": {"pvcName": "t"}}),
        );
        assert!(matches!(
            source(&r, &policy()),
            Err(SourceError::SnapshotPvcUnknown(_))
        ));
        let r = restore(
            serde_json::json!({"policyName": "p", "backupName": "nope", "target": {"pvcName": "t"}}),
        );
        assert!(matches!(
            source(&r, &policy()),
            Err(SourceError::BackupNotFound(_))
        ));
    }

    #[test]
    fn latest_with_before() {
        let r = restore(
            serde_json::json!({"policyName": "p", "latestOf": "data", "before": "2026-01-02T00:00:00Z", "target": {"pvcName": "t"}}),
        );
        let s = source(&r, &policy()).expect("source");
        assert_eq!(
            (s.snapshot.as_str(), s.before.as_deref()),
            ("latest", Some("2026-01-02T00:00:00Z"))
        );
    }

    #[test]
    fn created_pvc_uses_policy_defaults_and_has_no_owner() {
        let r = restore(
            serde_json::json!({"policyName": "p", "latestOf": "data", "target": {"pvcName": "t"}}),
        );
        let pvc = target_pvc(&r, &policy(), Some(Quantity("5Gi".into())));
        let spec = pvc.spec.expect("spec");
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        let size = spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned());
        assert_eq!(size, Some(Quantity("2Gi".into())));
        assert!(pvc.metadata.owner_references.is_none());
    }
}
