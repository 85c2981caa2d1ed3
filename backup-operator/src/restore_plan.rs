//! Which snapshot a `Restore` means, and the PVC it creates: pure decisions.

use crate::api::{Backup, BackupPolicy, RESTORE_LABEL, RecordedPvc, Restore};
use crate::desired::MANAGER;
use crate::results::status_entry_name;
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
    /// The PVC spec recorded with the backup (default of a created target).
    pub recorded: Option<RecordedPvc>,
}

/// Why the source cannot be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// `backupName` names neither a Backup object nor a `storedBackups` entry.
    #[error("backup {0:?} is neither a Backup of the policy nor in its status.storedBackups")]
    BackupNotFound(String),
    /// `snapshotId` without `sourcePvc`, and no Backup or entry has it.
    #[error("snapshot {0:?} is not a Backup of the policy; set spec.sourcePvc")]
    SnapshotPvcUnknown(String),
    /// None of the three ways to name a backup was used.
    #[error("name one of backupName, snapshotId or latestOf")]
    NothingNamed,
}

fn id_matches(full: &str, given: &str) -> bool {
    !given.is_empty() && (full.starts_with(given) || given.starts_with(full))
}

/// Resolves the Restore's reference against the policy's `Backup` objects
/// (the catalog, also on a new cluster) and its `storedBackups`.
pub fn source(
    restore: &Restore,
    policy: &BackupPolicy,
    backups: &[Backup],
) -> Result<Source, SourceError> {
    let spec = &restore.spec;
    let policy_name = policy.metadata.name.as_deref().unwrap_or_default();
    let backups: Vec<&Backup> = backups
        .iter()
        .filter(|b| b.spec.policy == policy_name)
        .collect();
    let stored = policy
        .status
        .as_ref()
        .map(|s| s.stored_backups.as_slice())
        .unwrap_or_default();
    let by_id = |pvc: Option<&str>, id: &str| {
        backups
            .iter()
            .find(|b| pvc.is_none_or(|p| b.spec.pvc == p) && id_matches(&b.spec.snapshot_id, id))
            .copied()
    };
    let from_backup = |b: &Backup| Source {
        pvc: b.spec.pvc.clone(),
        snapshot: b.spec.snapshot_id.clone(),
        before: None,
        recorded: b.spec.source.clone(),
    };
    if let Some(name) = &spec.backup_name {
        // The Backup object's name, or the status entry's `<pvc>-<short id>`.
        let object = backups
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some(name.as_str()));
        let entry_name = backups
            .iter()
            .find(|b| &status_entry_name(&b.spec.pvc, &b.spec.short_id) == name);
        if let Some(b) = object.or(entry_name) {
            return Ok(from_backup(b));
        }
        let b = stored
            .iter()
            .find(|b| &b.name == name)
            .ok_or_else(|| SourceError::BackupNotFound(name.clone()))?;
        let snapshot = b
            .snapshot_id
            .clone()
            .ok_or_else(|| SourceError::BackupNotFound(name.clone()))?;
        let recorded = by_id(Some(&b.pvc_name), &snapshot).and_then(|o| o.spec.source.clone());
        return Ok(Source {
            pvc: b.pvc_name.clone(),
            snapshot,
            before: None,
            recorded,
        });
    }
    if let Some(id) = &spec.snapshot_id {
        if let Some(b) = by_id(spec.source_pvc.as_deref(), id) {
            return Ok(Source {
                snapshot: id.clone(),
                ..from_backup(b)
            });
        }
        let pvc = match &spec.source_pvc {
            Some(p) => p.clone(),
            None => stored
                .iter()
                .find(|b| b.snapshot_id.as_deref().is_some_and(|s| id_matches(s, id)))
                .map(|b| b.pvc_name.clone())
                .ok_or_else(|| SourceError::SnapshotPvcUnknown(id.clone()))?,
        };
        return Ok(Source {
            pvc,
            snapshot: id.clone(),
            before: None,
            recorded: None,
        });
    }
    if let Some(pvc) = &spec.latest_of {
        // The same choice the mover makes: the newest at or before `before`.
        let before = spec
            .before
            .as_deref()
            .and_then(|b| b.parse::<jiff::Timestamp>().ok());
        let newest = backups
            .iter()
            .filter(|b| &b.spec.pvc == pvc)
            .filter_map(|b| Some((b.spec.time.parse::<jiff::Timestamp>().ok()?, b)))
            .filter(|(t, _)| before.is_none_or(|x| *t <= x))
            .max_by_key(|(t, _)| *t)
            .map(|(_, b)| b);
        return Ok(Source {
            pvc: pvc.clone(),
            snapshot: "latest".into(),
            before: spec.before.clone(),
            recorded: newest.and_then(|b| b.spec.source.clone()),
        });
    }
    Err(SourceError::NothingNamed)
}

/// The PVC a restore creates: no owner, so deleting the Restore keeps the data.
/// Defaults, first wins: the Restore's `target`, the policy's `spec.restore`,
/// the PVC spec recorded with the backup, the source PVC's request, 1Gi RWO.
pub fn target_pvc(
    restore: &Restore,
    policy: &BackupPolicy,
    source_request: Option<Quantity>,
    recorded: Option<&RecordedPvc>,
) -> PersistentVolumeClaim {
    let t = &restore.spec.target;
    let defaults = policy.spec.restore.clone().unwrap_or_default();
    let rec = recorded.cloned().unwrap_or_default();
    let size = t
        .size
        .clone()
        .map(Quantity)
        .or_else(|| defaults.size.clone().map(Quantity))
        .or_else(|| rec.size.clone().map(Quantity))
        .or(source_request)
        .unwrap_or_else(|| Quantity("1Gi".into()));
    let access_modes = if rec.access_modes.is_empty() {
        vec!["ReadWriteOnce".into()]
    } else {
        rec.access_modes.clone()
    };
    // The recorded labels, then ours (they win: the restore label marks it ours).
    let mut labels = rec.labels.clone();
    labels.insert(
        RESTORE_LABEL.to_string(),
        restore.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        MANAGER.to_string(),
    );
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(t.pvc_name.clone()),
            namespace: restore.metadata.namespace.clone(),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(access_modes),
            storage_class_name: t
                .storage_class_name
                .clone()
                .or(defaults.storage_class_name)
                .or(rec.storage_class_name),
            volume_mode: rec.volume_mode,
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
                warning: None,
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
            source(&r, &policy(), &[]),
            Ok(Source {
                pvc: "data".into(),
                snapshot: "abcd1234ffff".into(),
                before: None,
                recorded: None
            })
        );
        let r = restore(
            serde_json::json!({"policyName": "p", "snapshotId": "abcd1234", "target": {"pvcName": "t"}}),
        );
        assert_eq!(source(&r, &policy(), &[]).map(|s| s.pvc), Ok("data".into()));
        let r = restore(
            serde_json::json!({"policyName": "p", "snapshotId": "ffff", "target": {"pvcName": "t"}}),
        );
        assert!(matches!(
            source(&r, &policy(), &[]),
            Err(SourceError::SnapshotPvcUnknown(_))
        ));
        let r = restore(
            serde_json::json!({"policyName": "p", "backupName": "nope", "target": {"pvcName": "t"}}),
        );
        assert!(matches!(
            source(&r, &policy(), &[]),
            Err(SourceError::BackupNotFound(_))
        ));
    }

    #[test]
    fn latest_with_before() {
        let r = restore(
            serde_json::json!({"policyName": "p", "latestOf": "data", "before": "2026-01-02T00:00:00Z", "target": {"pvcName": "t"}}),
        );
        let s = source(&r, &policy(), &[]).expect("source");
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
        let pvc = target_pvc(&r, &policy(), Some(Quantity("5Gi".into())), None);
        let spec = pvc.spec.expect("spec");
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        let size = spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned());
        assert_eq!(size, Some(Quantity("2Gi".into())));
        assert!(pvc.metadata.owner_references.is_none());
    }

    fn backup(name: &str, pvc: &str, id: &str, time: &str) -> Backup {
        let mut b = Backup::new(
            name,
            crate::api::BackupSpec {
                policy: "p".into(),
                pvc: pvc.into(),
                snapshot_id: format!("{id}{}", "0".repeat(56)),
                short_id: id.into(),
                time: time.into(),
                size: 1,
                files: None,
                bytes_added: None,
                location: "/repo/ns/data".into(),
                source: Some(RecordedPvc {
                    size: Some(format!("{}Gi", &time[9..10])),
                    access_modes: vec!["ReadWriteMany".into()],
                    storage_class_name: Some("recorded".into()),
                    volume_mode: Some("Filesystem".into()),
                    labels: BTreeMap::from([("app".to_string(), "db".to_string())]),
                }),
            },
        );
        b.metadata.namespace = Some("ns".into());
        b
    }

    #[test]
    fn a_new_cluster_resolves_every_reference_from_backup_objects() {
        let mut p = policy();
        p.metadata.name = Some("p".into());
        p.status = None;
        let objs = [
            backup(
                "p-data-11111111",
                "data",
                "11111111",
                "2026-01-01T00:00:00Z",
            ),
            backup(
                "p-data-22222222",
                "data",
                "22222222",
                "2026-01-02T00:00:00Z",
            ),
            backup(
                "p-data-33333333",
                "data",
                "33333333",
                "2026-01-03T00:00:00Z",
            ),
        ];
        let r = |spec: serde_json::Value| restore(spec);
        let by_object = source(&r(serde_json::json!({"policyName": "p", "backupName": "p-data-22222222", "target": {"pvcName": "t"}})), &p, &objs).expect("by object name");
        assert!(by_object.snapshot.starts_with("22222222") && by_object.snapshot.len() == 64);
        let by_entry = source(&r(serde_json::json!({"policyName": "p", "backupName": "data-22222222", "target": {"pvcName": "t"}})), &p, &objs).expect("by entry name");
        assert_eq!(by_entry, by_object);
        let by_id = source(&r(serde_json::json!({"policyName": "p", "snapshotId": "11111111", "target": {"pvcName": "t"}})), &p, &objs).expect("by id");
        assert_eq!(
            (by_id.pvc.as_str(), by_id.snapshot.as_str()),
            ("data", "11111111")
        );
        let latest = source(&r(serde_json::json!({"policyName": "p", "latestOf": "data", "before": "2026-01-02T12:00:00Z", "target": {"pvcName": "t"}})), &p, &objs).expect("latest");
        assert_eq!(latest.snapshot, "latest");
        assert_eq!(
            latest.recorded.as_ref().and_then(|r| r.size.as_deref()),
            Some("2Gi"),
            "the backup the mover will pick"
        );
        // Another policy's Backup objects do not count.
        let mut foreign = objs[0].clone();
        foreign.spec.policy = "other".into();
        assert!(source(&r(serde_json::json!({"policyName": "p", "backupName": "p-data-11111111", "target": {"pvcName": "t"}})), &p, &[foreign]).is_err());
    }

    #[test]
    fn a_created_target_takes_the_recorded_spec_as_default() {
        let mut p = policy();
        p.spec.restore = None;
        let b = backup(
            "p-data-11111111",
            "data",
            "11111111",
            "2026-01-03T00:00:00Z",
        );
        let r = restore(
            serde_json::json!({"policyName": "p", "latestOf": "data", "target": {"pvcName": "t"}}),
        );
        let pvc = target_pvc(&r, &p, Some(Quantity("5Gi".into())), b.spec.source.as_ref());
        let spec = pvc.spec.expect("spec");
        assert_eq!(spec.storage_class_name.as_deref(), Some("recorded"));
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteMany".to_string()]));
        assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
        let size = spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned());
        assert_eq!(size, Some(Quantity("3Gi".into())));
        let labels = pvc.metadata.labels.expect("labels");
        assert_eq!(labels.get("app").map(String::as_str), Some("db"));
        assert_eq!(labels.get(RESTORE_LABEL).map(String::as_str), Some("r1"));
    }
}
