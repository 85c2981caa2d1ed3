//! Desired objects: the VolumeSnapshot of a run, the temporary PVC of
//! `SnapshotThenCopy`, the PVC a restore from a snapshot creates.

use super::{
    ROLE_BACKUP, ROLE_COPY_SOURCE, ROLE_LABEL, SCHEDULED_TIME_ANNOTATION, SNAPSHOT_GROUP,
    VOLUME_SNAPSHOT_KIND, volume_snapshot_resource,
};
use crate::api::{BackupPolicy, Restore};
use crate::desired::{labels, pvc_annotations};
use crate::{naming, restore_plan};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, TypedLocalObjectReference,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::api::DynamicObject;
use serde_json::json;
use std::collections::BTreeMap;

/// Name of the snapshot of `pvc` for the run scheduled at `run_for`.
pub fn snapshot_name(policy: &str, pvc: &str, run_for: Timestamp) -> String {
    naming::snapshot_name(policy, pvc, run_for.as_second().div_euclid(60))
}

fn snapshot_object(
    policy: &BackupPolicy,
    pvc: &str,
    run_for: Timestamp,
    class: &str,
    role: &str,
) -> DynamicObject {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let ns = policy.metadata.namespace.clone().unwrap_or_default();
    let object_name = if role == ROLE_COPY_SOURCE {
        copy_source_snapshot_name(&name, pvc, run_for)
    } else {
        snapshot_name(&name, pvc, run_for)
    };
    let mut obj = DynamicObject::new(&object_name, &volume_snapshot_resource())
        .within(&ns)
        .data(json!({
            "spec": {
                "volumeSnapshotClassName": class,
                "source": {"persistentVolumeClaimName": pvc}
            }
        }));
    let mut l = labels(&name, pvc);
    l.insert(ROLE_LABEL.to_string(), role.to_string());
    obj.metadata.labels = Some(l);
    let mut annotations = pvc_annotations(pvc);
    annotations.insert(SCHEDULED_TIME_ANNOTATION.to_string(), run_for.to_string());
    obj.metadata.annotations = Some(annotations);
    obj
}

/// Name of the intermediate snapshot of a `SnapshotThenCopy` run (never the
/// name of a backup snapshot of the same PVC and time).
pub fn copy_source_snapshot_name(policy: &str, pvc: &str, run_for: Timestamp) -> String {
    naming::snapshot_name(
        policy,
        &format!("{pvc}-copy"),
        run_for.as_second().div_euclid(60),
    )
}

/// The VolumeSnapshot a `Snapshot` policy takes of `pvc` for the run at
/// `run_for`. It has no owner: deleting the policy keeps its snapshots, as
/// deleting a `Copy` policy keeps its repository; they carry the policy and
/// PVC labels so retention (and a user) can find them.
pub fn volume_snapshot(
    policy: &BackupPolicy,
    pvc: &str,
    run_for: Timestamp,
    class: &str,
) -> DynamicObject {
    snapshot_object(policy, pvc, run_for, class, ROLE_BACKUP)
}

/// The intermediate VolumeSnapshot of a `SnapshotThenCopy` run (labelled
/// `role=copy-source`, so it never counts as a stored backup).
pub fn copy_source_snapshot(
    policy: &BackupPolicy,
    pvc: &str,
    run_for: Timestamp,
    class: &str,
) -> DynamicObject {
    snapshot_object(policy, pvc, run_for, class, ROLE_COPY_SOURCE)
}

fn snapshot_data_source(snapshot: &str) -> TypedLocalObjectReference {
    TypedLocalObjectReference {
        api_group: Some(SNAPSHOT_GROUP.to_string()),
        kind: VOLUME_SNAPSHOT_KIND.to_string(),
        name: snapshot.to_string(),
    }
}

/// Name of the temporary PVC made from `snapshot` for a copy.
pub fn temporary_pvc_name(snapshot: &str) -> String {
    let hash = naming::short_hash(&["copy-source", snapshot]);
    let room = naming::NAME_MAX - hash.len() - 1;
    let head: String = format!("tmp-{snapshot}").chars().take(room).collect();
    format!("{}-{hash}", head.trim_end_matches('-'))
}

/// The temporary PVC of a `SnapshotThenCopy` run: made from `snapshot` (of
/// `size`, the snapshot's restoreSize or the source's request, in the
/// source's `storage_class`), owned by the policy so that it goes with it;
/// the copy Job mounts it instead of the live PVC.
pub fn temporary_pvc(
    policy: &BackupPolicy,
    pvc: &str,
    snapshot: &str,
    size: Quantity,
    storage_class: Option<String>,
) -> PersistentVolumeClaim {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let mut l = labels(&name, pvc);
    l.insert(ROLE_LABEL.to_string(), ROLE_COPY_SOURCE.to_string());
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(temporary_pvc_name(snapshot)),
            namespace: policy.metadata.namespace.clone(),
            labels: Some(l),
            annotations: Some(pvc_annotations(pvc)),
            owner_references: policy_owner(policy).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage_class,
            data_source: Some(snapshot_data_source(snapshot)),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size)])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn policy_owner(policy: &BackupPolicy) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: BackupPolicy::api_version(&()).to_string(),
        kind: BackupPolicy::kind(&()).to_string(),
        name: policy.metadata.name.clone()?,
        uid: policy.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Annotation on a `SnapshotThenCopy` Job: the snapshot its temporary PVC
/// was made from (what [`super::cleanup_copy_source`] removes afterwards).
pub const COPY_SOURCE_ANNOTATION: &str = "backup.backup.example.com/copy-source";

/// Annotation on a copy-source snapshot whose run is over: `kept`
/// (`keepSnapshot`) or `failed` (never ready; left for the user to inspect).
pub const COPY_FINISHED_ANNOTATION: &str = "backup.backup.example.com/copy-finished";

/// The backup Job of a `SnapshotThenCopy` run: the policy's backup Job for
/// `pvc` (same repository, labels and `--pvc`, so its result is recorded for
/// `pvc`) that mounts the temporary PVC `temp_pvc` made from `snapshot`
/// instead of the live PVC. Named after the snapshot, so one Job per run.
pub fn copy_job(
    policy: &BackupPolicy,
    pvc: &str,
    temp_pvc: &str,
    snapshot: &str,
    run_for: Timestamp,
    image: &str,
) -> Result<Job, crate::desired::DesiredError> {
    let mut job = crate::desired::manual_job(policy, pvc, image, snapshot)?;
    let labels = job.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(
        "backup.backup.example.com/trigger".into(),
        "snapshot".into(),
    );
    labels.insert(ROLE_LABEL.into(), ROLE_COPY_SOURCE.into());
    // Which run this Job belongs to, read back by the copy-run planner.
    let mut annotations = pvc_annotations(pvc);
    annotations.insert(COPY_SOURCE_ANNOTATION.to_string(), snapshot.to_string());
    annotations.insert(SCHEDULED_TIME_ANNOTATION.to_string(), run_for.to_string());
    job.metadata.annotations = Some(annotations);
    let volumes = job
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|p| p.volumes.as_mut());
    for v in volumes.into_iter().flatten() {
        if let Some(claim) = v.persistent_volume_claim.as_mut()
            && claim.claim_name == pvc
        {
            claim.claim_name = temp_pvc.to_string();
        }
    }
    Ok(job)
}

/// The PVC a `Restore` from the VolumeSnapshot `snapshot` creates: the usual
/// restore target (name, labels, size and class defaults of
/// [`restore_plan::target_pvc`]) with `dataSource` pointing at the snapshot.
/// The size is at least the snapshot's `restoreSize`; without a class from
/// the Restore or the policy, the source PVC's class is used (it must be a
/// class of the snapshot's CSI driver).
pub fn restore_pvc(
    restore: &Restore,
    policy: &BackupPolicy,
    snapshot: &str,
    restore_size: Option<Quantity>,
    source_storage_class: Option<String>,
) -> PersistentVolumeClaim {
    let explicit_size = restore.spec.target.size.is_some()
        || policy
            .spec
            .restore
            .as_ref()
            .is_some_and(|r| r.size.is_some());
    let mut pvc = restore_plan::target_pvc(restore, policy, restore_size.clone(), None);
    if let Some(spec) = pvc.spec.as_mut() {
        spec.data_source = Some(snapshot_data_source(snapshot));
        if spec.storage_class_name.is_none() {
            spec.storage_class_name = source_storage_class;
        }
        // A PVC smaller than the snapshot cannot be provisioned: raise it.
        if let (true, Some(min)) = (explicit_size, restore_size.as_ref()) {
            let requests = spec
                .resources
                .get_or_insert_with(Default::default)
                .requests
                .get_or_insert_with(Default::default);
            let current = requests
                .get("storage")
                .and_then(|q| super::observed::quantity_bytes(&q.0));
            let minimum = super::observed::quantity_bytes(&min.0);
            if let (Some(c), Some(m)) = (current, minimum)
                && c < m
            {
                requests.insert("storage".to_string(), min.clone());
            }
        }
    }
    pvc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{POLICY_LABEL, PVC_LABEL};

    fn policy() -> BackupPolicy {
        let mut p = BackupPolicy::new(
            "nightly",
            serde_json::from_value(json!({
                "targets": {"names": ["data"]}, "schedule": "@hourly", "method": "Snapshot",
                "snapshot": {"volumeSnapshotClassName": "csi-hostpath-snapclass"}
            }))
            .expect("spec"),
        );
        p.metadata.namespace = Some("apps".into());
        p.metadata.uid = Some("uid-1".into());
        p
    }

    #[test]
    fn snapshot_object_is_labelled_and_named_by_run() {
        let at: Timestamp = "2026-01-01T10:00:00Z".parse().expect("ts");
        let o = volume_snapshot(&policy(), "data", at, "csi-hostpath-snapclass");
        let v = serde_json::to_value(&o).expect("json");
        assert_eq!(v["apiVersion"], "snapshot.storage.k8s.io/v1");
        assert_eq!(v["kind"], "VolumeSnapshot");
        assert_eq!(v["metadata"]["namespace"], "apps");
        assert_eq!(
            v["spec"]["volumeSnapshotClassName"],
            "csi-hostpath-snapclass"
        );
        assert_eq!(v["spec"]["source"]["persistentVolumeClaimName"], "data");
        let labels = o.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels[POLICY_LABEL], "nightly");
        assert_eq!(labels[PVC_LABEL], "data");
        assert_eq!(labels[ROLE_LABEL], ROLE_BACKUP);
        assert_eq!(
            o.metadata.annotations.as_ref().expect("ann")[SCHEDULED_TIME_ANNOTATION],
            "2026-01-01T10:00:00Z"
        );
        let name = o.metadata.name.clone().expect("name");
        assert_eq!(
            name,
            naming::snapshot_name("nightly", "data", at.as_second() / 60)
        );
        assert!(
            o.metadata.owner_references.is_none(),
            "snapshots outlive the policy"
        );
        // Same run, same name: creating twice is idempotent.
        assert_eq!(
            Some(name),
            volume_snapshot(&policy(), "data", at, "c").metadata.name
        );
    }

    #[test]
    fn copy_source_snapshot_is_apart_from_backups() {
        let at: Timestamp = "2026-01-01T10:00:00Z".parse().expect("ts");
        let backup = volume_snapshot(&policy(), "data", at, "c");
        let copy = copy_source_snapshot(&policy(), "data", at, "c");
        assert_ne!(backup.metadata.name, copy.metadata.name);
        assert_eq!(
            copy.metadata.labels.as_ref().expect("labels")[ROLE_LABEL],
            ROLE_COPY_SOURCE
        );
        assert_eq!(
            copy.metadata.labels.as_ref().expect("labels")[PVC_LABEL],
            "data"
        );
    }

    #[test]
    fn copy_job_reads_the_temporary_pvc() {
        let mut p = policy();
        p.spec.method = crate::api::BackupMethod::SnapshotThenCopy;
        p.spec.destination = Some(
            serde_json::from_value(json!({"nfs": {"server": "n", "path": "/e"}, "repositoryPasswordSecretRef": {"name": "pw"}}))
                .expect("destination"),
        );
        let job = copy_job(
            &p,
            "data",
            "tmp-snap-1-abcd",
            "snap-1",
            Timestamp::UNIX_EPOCH,
            "img",
        )
        .expect("job");
        let claims: Vec<String> = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.volumes.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
            .collect();
        assert_eq!(
            claims,
            ["tmp-snap-1-abcd"],
            "mounts the copy, not the live PVC"
        );
        let labels = job.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels[PVC_LABEL], "data", "recorded for the source PVC");
        assert_eq!(
            job.metadata.annotations.as_ref().expect("ann")[COPY_SOURCE_ANNOTATION],
            "snap-1"
        );
        assert!(
            copy_job(&policy(), "data", "t", "s", Timestamp::UNIX_EPOCH, "img").is_err(),
            "needs a destination"
        );
    }

    #[test]
    fn temporary_pvc_comes_from_the_snapshot_and_is_owned() {
        let pvc = temporary_pvc(
            &policy(),
            "data",
            "snap-1",
            Quantity("1Gi".into()),
            Some("csi-hostpath".into()),
        );
        let spec = pvc.spec.as_ref().expect("spec");
        let ds = spec.data_source.as_ref().expect("dataSource");
        assert_eq!(
            (ds.api_group.as_deref(), ds.kind.as_str(), ds.name.as_str()),
            (Some(SNAPSHOT_GROUP), "VolumeSnapshot", "snap-1")
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some("csi-hostpath"));
        let owner = &pvc.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("BackupPolicy", "uid-1")
        );
        let n = temporary_pvc_name(&"x".repeat(63));
        assert!(n.len() <= 63 && !n.contains("--"), "{n}");
    }

    #[test]
    fn restore_pvc_points_at_the_snapshot_and_fits_it() {
        let restore: Restore = serde_json::from_value(json!({
            "apiVersion": "backup.backup.example.com/v1alpha1", "kind": "Restore",
            "metadata": {"name": "r1", "namespace": "apps"},
            "spec": {"policyName": "nightly", "backupName": "snap-1", "target": {"pvcName": "restored", "size": "1Mi"}}
        }))
        .expect("restore");
        let pvc = restore_pvc(
            &restore,
            &policy(),
            "snap-1",
            Some(Quantity("1Gi".into())),
            Some("csi-hostpath".into()),
        );
        let spec = pvc.spec.as_ref().expect("spec");
        let ds = spec.data_source.as_ref().expect("dataSource");
        assert_eq!(
            (ds.api_group.as_deref(), ds.kind.as_str(), ds.name.as_str()),
            (Some("snapshot.storage.k8s.io"), "VolumeSnapshot", "snap-1")
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some("csi-hostpath"));
        let size = &spec
            .resources
            .as_ref()
            .expect("res")
            .requests
            .as_ref()
            .expect("req")["storage"];
        assert_eq!(size.0, "1Gi", "raised to the snapshot's restoreSize");
        assert_eq!(pvc.metadata.name.as_deref(), Some("restored"));
    }
}
