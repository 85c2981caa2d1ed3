//! CSI VolumeSnapshot scenarios with the operator deployed by `make deploy`.
//! They need the snapshot CRDs, the snapshot controller and a CSI driver with
//! a VolumeSnapshotClass: `make csi-up` on the local cluster (`make
//! test-snapshots` does both), `make kind-csi` on kind.

mod support;

use anyhow::{Result, bail};
use backup_operator::api::{BackupPolicySpec, Phase, RestorePhase};
use backup_operator::snapshot::{ROLE_COPY_SOURCE, ROLE_LABEL, volume_snapshot_resource};
use e2e::{
    TestNamespace, checksum_pvc, create_pvc, manifest_of, sample_files, wait_for, wait_pvc_bound,
};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::{DynamicObject, ListParams};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

const CSI_CLASS: &str = "csi-hostpath";
const SNAPSHOT_CLASS: &str = "csi-hostpath-snapclass";
const PASSWORD: &str = "e2e-snapshot-password";
/// A schedule that will not fire during a test (Jan 1st, 00:00).
const NEVER_SOON: &str = "0 0 1 1 *";

async fn setup(prefix: &str) -> Result<(e2e::Cluster, TestNamespace)> {
    let cluster = e2e::cluster().await?;
    if !snapshot_api_served(&cluster).await? {
        bail!(
            "the cluster serves no VolumeSnapshots: run `make csi-up` (or `make test-snapshots`)"
        );
    }
    let classes: Api<StorageClass> = Api::all(cluster.client.clone());
    if classes.get_opt(CSI_CLASS).await?.is_none() {
        bail!("StorageClass {CSI_CLASS} is missing: run `make csi-up` (or `make test-snapshots`)");
    }
    deployed_operator(&cluster).await?;
    let ns = cluster.namespace(prefix).await?;
    Ok((cluster, ns))
}

/// A CSI PVC holding `files`.
async fn csi_pvc_with_files(
    cluster: &e2e::Cluster,
    ns: &TestNamespace,
    name: &str,
    files: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    create_pvc(ns, name, "1Gi", Some(CSI_CLASS)).await?;
    wait_pvc_bound(ns, name, Duration::from_secs(60)).await?;
    e2e::fill_pvc(cluster, ns, name, files).await
}

fn snapshot_spec(
    pvc: &str,
    schedule: &str,
    max_backups: u32,
    class: &str,
) -> Result<BackupPolicySpec> {
    Ok(serde_json::from_value(serde_json::json!({
        "targets": {"names": [pvc]},
        "schedule": schedule,
        "method": "Snapshot",
        "retention": {"maxBackups": max_backups},
        "snapshot": {"volumeSnapshotClassName": class},
    }))?)
}

/// VolumeSnapshots of `policy` with the given role label value.
async fn snapshots(ns: &TestNamespace, policy: &str, role: &str) -> Result<Vec<DynamicObject>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &volume_snapshot_resource());
    let selector = format!("backup.backup.example.com/policy={policy},{ROLE_LABEL}={role}");
    Ok(api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

#[tokio::test]
async fn snapshot_policy_takes_ready_snapshots_on_schedule_prunes_the_oldest_and_restores()
-> Result<()> {
    let (cluster, ns) = setup("snapsched").await?;
    let files = sample_files();
    csi_pvc_with_files(&cluster, &ns, "vol", &files).await?;
    create_policy(
        &ns,
        "snaps",
        snapshot_spec("vol", "* * * * *", 2, SNAPSHOT_CLASS)?,
    )
    .await?;

    // One snapshot per minute; with maxBackups 2 the third run removes the first.
    let seen = std::sync::Mutex::new(BTreeSet::new());
    let p = wait_for(
        "three scheduled snapshots, the oldest pruned",
        Duration::from_secs(330),
        || async {
            let now: Vec<String> = snapshots(&ns, "snaps", "backup")
                .await?
                .iter()
                .filter_map(|o| o.metadata.name.clone())
                .collect();
            let total = {
                let mut seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                seen.extend(now.iter().cloned());
                seen.len()
            };
            let api: Api<backup_operator::api::BackupPolicy> = ns.api();
            let p = api.get("snaps").await?;
            let ready = stored(&p).iter().filter(|b| b.status == "Ready").count();
            Ok((total >= 3 && now.len() == 2 && ready == 2).then_some(p))
        },
    )
    .await?;
    let status = p.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Active));
    assert!(status.last_backup_time.is_some() && status.next_run_time.is_some());
    assert!(
        cluster_has_no_cronjobs(&ns).await?,
        "Snapshot policies run no CronJob"
    );
    let remaining: BTreeSet<String> = snapshots(&ns, "snaps", "backup")
        .await?
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    let recorded: BTreeSet<String> = stored(&p).iter().map(|b| b.name.clone()).collect();
    if let Some(text) = operator_metrics(&cluster).await? {
        let l = format!("namespace=\"{}\",policy=\"snaps\",pvc=\"vol\"", ns.name);
        let ok = metric_value(
            &text,
            &format!("backup_operator_backups_total{{{l},result=\"success\"}}"),
        );
        assert!(
            ok.is_some_and(|v| v >= 2.0),
            "ready snapshots counted: {ok:?}"
        );
    }
    assert_eq!(
        recorded, remaining,
        "status.storedBackups and the cluster's snapshots differ"
    );
    for b in stored(&p) {
        assert_eq!(b.pvc_name, "vol");
        assert!(b.size > 0, "restoreSize of {} is {}", b.name, b.size);
        assert!(
            b.location.starts_with("VolumeSnapshot"),
            "location {}",
            b.location
        );
    }

    // Restore the newest snapshot into a new PVC: the same bytes come back.
    let newest = stored(&p)
        .into_iter()
        .max_by_key(|b| b.timestamp.clone())
        .map(|b| b.name)
        .unwrap_or_default();
    let r = restore_and_wait(
        &ns,
        "from-snap",
        serde_json::json!({"policyName": "snaps", "backupName": newest, "target": {"pvcName": "vol-back"}}),
    )
    .await?;
    assert_restore_succeeded(&r);
    let pvcs: Api<PersistentVolumeClaim> = ns.api();
    let back = pvcs.get("vol-back").await?;
    let source = back
        .spec
        .and_then(|s| s.data_source)
        .map(|d| (d.kind, d.name));
    assert_eq!(source, Some(("VolumeSnapshot".to_string(), newest)));
    assert_eq!(
        checksum_pvc(&cluster, &ns, "vol-back").await?,
        manifest_of(&files)
    );
    Ok(())
}

fn assert_restore_succeeded(r: &backup_operator::api::Restore) {
    let st = r.status.clone().unwrap_or_default();
    assert_eq!(
        st.phase,
        Some(RestorePhase::Succeeded),
        "{:?}",
        st.conditions
    );
}

async fn cluster_has_no_cronjobs(ns: &TestNamespace) -> Result<bool> {
    let api: Api<CronJob> = ns.api();
    Ok(api.list(&ListParams::default()).await?.items.is_empty())
}

/// The writer renames each finished record into place, so a consistent copy
/// holds records 0..n, each complete, and nothing else under that name.
const WRITER: &str = "i=0; while true; do echo \"record $i\" > /data/.tmp; mv /data/.tmp /data/$(printf r%06d $i); i=$((i+1)); sleep 0.02; done";
const CHECK: &str = "cd /data && n=$(ls | grep -c '^r') && [ \"$n\" -gt 0 ] && i=0 && while [ $i -lt $n ]; do f=$(printf r%06d $i); [ \"$(cat $f)\" = \"record $i\" ] || { echo \"BAD $f\"; exit 1; }; i=$((i+1)); done; echo \"OK $n\" | tee /dev/termination-log";

#[tokio::test]
async fn snapshot_then_copy_backs_up_a_volume_in_use_consistently() -> Result<()> {
    let (cluster, ns) = setup("snapcopy").await?;
    let s3 = s3_fixture(&cluster, &ns, PASSWORD).await?;
    create_pvc(&ns, "live", "1Gi", Some(CSI_CLASS)).await?;
    wait_pvc_bound(&ns, "live", Duration::from_secs(60)).await?;
    start_pod(&cluster, &ns, "writer", WRITER, "live").await?;
    let pods: Api<Pod> = ns.api();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut spec = s3_spec(&s3, serde_json::json!({"names": ["live"]}), NEVER_SOON, 3);
    spec.method = backup_operator::api::BackupMethod::SnapshotThenCopy;
    spec.snapshot =
        serde_json::from_value(serde_json::json!({"volumeSnapshotClassName": SNAPSHOT_CLASS}))?;
    create_policy(&ns, "stc", spec).await?;
    assert!(
        cluster_has_no_cronjobs(&ns).await?,
        "SnapshotThenCopy runs no CronJob"
    );
    run_now(&ns, "stc", "one").await?;
    let p = wait_policy(
        &ns,
        "stc",
        "the copy in status",
        Duration::from_secs(240),
        |p| stored(p).iter().any(|b| b.status == "Completed"),
    )
    .await?;
    let backup = stored(&p)[0].clone();
    assert_eq!(
        backup.pvc_name, "live",
        "recorded under the live PVC's name"
    );
    assert!(
        backup.location.contains(&s3.bucket),
        "location {}",
        backup.location
    );

    // The temporary PVC and the intermediate snapshot go away afterwards.
    let pvcs: Api<PersistentVolumeClaim> = ns.api();
    wait_for(
        "temporary PVC and snapshot removed",
        Duration::from_secs(90),
        || async {
            let tmp = pvcs
                .list(&ListParams::default().labels(&format!("{ROLE_LABEL}={ROLE_COPY_SOURCE}")))
                .await?
                .items;
            let snaps = snapshots(&ns, "stc", ROLE_COPY_SOURCE).await?;
            Ok((tmp.is_empty() && snaps.is_empty()).then_some(()))
        },
    )
    .await?;
    let writer = pods.get("writer").await?;
    assert_eq!(
        writer.status.and_then(|s| s.phase).as_deref(),
        Some("Running"),
        "the writer kept running through the backup"
    );

    // The copy restores into a new PVC and is consistent.
    let r = restore_and_wait(
        &ns,
        "copy-back",
        serde_json::json!({"policyName": "stc", "backupName": backup.name, "target": {"pvcName": "live-back"}}),
    )
    .await?;
    assert_restore_succeeded(&r);
    let out = e2e::run_pod(
        &ns,
        &e2e::busybox_pod(&cluster, "check", CHECK, Some("live-back")),
        Duration::from_secs(120),
    )
    .await?;
    assert!(
        out.succeeded,
        "restored copy is inconsistent: {}",
        out.output
    );
    assert!(out.output.contains("OK "), "{}", out.output);
    Ok(())
}

#[tokio::test]
async fn bad_snapshot_input_gives_named_conditions_and_no_snapshots() -> Result<()> {
    let (cluster, ns) = setup("snapbad").await?;
    csi_pvc_with_files(&cluster, &ns, "csi-vol", &sample_files()).await?;
    // A PVC of the non-CSI default class.
    create_pvc(&ns, "plain-vol", "1Gi", None).await?;
    wait_pvc_bound(&ns, "plain-vol", Duration::from_secs(60)).await?;
    create_policy(
        &ns,
        "no-class",
        snapshot_spec("csi-vol", "* * * * *", 2, "no-such-class")?,
    )
    .await?;
    create_policy(
        &ns,
        "no-csi",
        snapshot_spec("plain-vol", "* * * * *", 2, SNAPSHOT_CLASS)?,
    )
    .await?;

    wait_policy(
        &ns,
        "no-class",
        "VolumeSnapshotClassNotFound",
        Duration::from_secs(60),
        |p| {
            condition(p, "Ready")
                .is_some_and(|(s, r, _)| s == "False" && r == "VolumeSnapshotClassNotFound")
        },
    )
    .await?;
    let p = wait_policy(&ns, "no-csi", "NoCSIDriver", Duration::from_secs(90), |p| {
        condition(p, "BackupFailed").is_some_and(|(s, r, _)| s == "True" && r == "NoCSIDriver")
    })
    .await?;
    let (_, _, message) = condition(&p, "BackupFailed").unwrap_or_default();
    assert!(
        message.contains("plain-vol"),
        "the message names the PVC: {message}"
    );
    // Past a scheduled minute: still no snapshot attempted, no loop.
    tokio::time::sleep(Duration::from_secs(65)).await;
    assert!(snapshots(&ns, "no-class", "backup").await?.is_empty());
    assert!(snapshots(&ns, "no-csi", "backup").await?.is_empty());
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let warnings = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("NoCSIDriver"))
        .count();
    assert!(
        (1..=2).contains(&warnings),
        "one NoCSIDriver Event (not one per tick), got {warnings}"
    );
    Ok(())
}
