//! Backup-operator scenarios against a real cluster with the operator
//! deployed by `make deploy` (so its RBAC is what is tested), moto as S3.
//! Each test has its own namespace and bucket.

mod support;

use anyhow::Result;
use backup_operator::api::{BackupPolicy, PVC_ANNOTATION, PVC_LABEL, Phase, Restore, RestorePhase};
use e2e::{
    TestNamespace, checksum_pvc, create_pvc, manifest_of, sample_files, wait_for, wait_pvc_bound,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use std::time::Duration;
use support::*;

const PASSWORD: &str = "e2e-repository-password";
/// A schedule that will not fire during a test (Jan 1st, 00:00).
const NEVER_SOON: &str = "0 0 1 1 *";

async fn setup(prefix: &str) -> Result<(e2e::Cluster, TestNamespace, S3Fixture)> {
    let cluster = e2e::cluster().await?;
    deployed_operator(&cluster).await?;
    let ns = cluster.namespace(prefix).await?;
    let s3 = s3_fixture(&cluster, &ns, PASSWORD).await?;
    Ok((cluster, ns, s3))
}

async fn cronjobs(ns: &TestNamespace, policy: &str) -> Result<Vec<CronJob>> {
    let api: Api<CronJob> = ns.api();
    Ok(api
        .list(&ListParams::default().labels(&format!("backup.backup.example.com/policy={policy}")))
        .await?
        .items)
}

#[tokio::test]
async fn scheduled_backup_is_recorded_with_its_size() -> Result<()> {
    let (cluster, ns, s3) = setup("scheduled").await?;
    pvc_with_files(&cluster, &ns, "data", &sample_files()).await?;
    create_policy(
        &ns,
        "every-minute",
        s3_spec(&s3, serde_json::json!({"names": ["data"]}), "* * * * *", 3),
    )
    .await?;

    let cjs = cronjobs(&ns, "every-minute").await?;
    let p = wait_policy(
        &ns,
        "every-minute",
        "a scheduled backup in status",
        Duration::from_secs(200),
        |p| !stored(p).is_empty(),
    )
    .await?;
    let b = &stored(&p)[0];
    assert_eq!(b.pvc_name, "data");
    assert!(
        b.size > 70_000,
        "size {} should cover the sample files",
        b.size
    );
    assert!(b.location.contains(&s3.bucket), "location {}", b.location);
    assert_eq!(b.status, "Completed");
    let status = p.status.clone().unwrap_or_default();
    assert!(status.last_backup_time.is_some());
    assert!(status.next_run_time.is_some());
    assert_eq!(status.phase, Some(Phase::Active));

    // The CronJob the operator made is the one that ran.
    let cjs = if cjs.is_empty() {
        cronjobs(&ns, "every-minute").await?
    } else {
        cjs
    };
    assert_eq!(cjs.len(), 1);
    let spec = cjs[0].spec.clone().unwrap_or_default();
    assert_eq!(spec.schedule, "* * * * *");
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    let jobs: Api<Job> = ns.api();
    let list = jobs
        .list(&ListParams::default().labels("backup.backup.example.com/policy=every-minute"))
        .await?;
    assert!(list.items.iter().any(|j| {
        j.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "CronJob")
    }));

    // The backup shows in the operator's metrics.
    if let Some(text) = operator_metrics(&cluster).await? {
        let l = format!(
            "namespace=\"{}\",policy=\"every-minute\",pvc=\"data\"",
            ns.name
        );
        let ok = metric_value(
            &text,
            &format!("backup_operator_backups_total{{{l},result=\"success\"}}"),
        );
        assert!(ok.is_some_and(|v| v >= 1.0), "success counter {ok:?}");
        let last = metric_value(
            &text,
            &format!("backup_operator_last_success_timestamp_seconds{{{l}}}"),
        );
        assert!(last.is_some_and(|t| t > 1.7e9), "last success {last:?}");
        let kept = metric_value(&text, &format!("backup_operator_stored_backups{{{l}}}"));
        assert!(kept.is_some_and(|n| n >= 1.0), "stored backups {kept:?}");
        let interval = metric_value(
            &text,
            &format!(
                "backup_operator_schedule_interval_seconds{{namespace=\"{}\",policy=\"every-minute\"}}",
                ns.name
            ),
        );
        assert_eq!(interval, Some(60.0));
    }
    Ok(())
}

#[tokio::test]
async fn on_demand_backup_then_restore_into_new_pvc_is_byte_identical() -> Result<()> {
    let (cluster, ns, s3) = setup("roundtrip").await?;
    let files = sample_files();
    pvc_with_files(&cluster, &ns, "app-data", &files).await?;
    create_policy(
        &ns,
        "manual",
        s3_spec(
            &s3,
            serde_json::json!({"names": ["app-data"]}),
            NEVER_SOON,
            5,
        ),
    )
    .await?;
    run_now(&ns, "manual", "first").await?;
    let p = wait_policy(
        &ns,
        "manual",
        "the on-demand backup in status",
        Duration::from_secs(180),
        |p| !stored(p).is_empty(),
    )
    .await?;
    assert_eq!(
        p.status
            .as_ref()
            .and_then(|s| s.last_run_now.clone())
            .as_deref(),
        Some("first")
    );
    let backup = stored(&p)[0].name.clone();

    let done = restore_and_wait(
        &ns,
        "back",
        serde_json::json!({"policyName": "manual", "backupName": backup, "target": {"pvcName": "app-data-restored"}}),
    )
    .await?;
    let st = done.status.clone().unwrap_or_default();
    assert_eq!(
        st.phase,
        Some(RestorePhase::Succeeded),
        "restore failed: {:?}",
        st.conditions
    );
    assert!(
        st.bytes_restored.unwrap_or(0) >= 70_000,
        "bytes restored {:?}",
        st.bytes_restored
    );
    assert!(st.start_time.is_some() && st.completion_time.is_some());

    let restored = checksum_pvc(&cluster, &ns, "app-data-restored").await?;
    assert_eq!(
        restored,
        manifest_of(&files),
        "restored data differs from the original"
    );
    Ok(())
}

#[tokio::test]
async fn a_pvc_name_longer_than_a_label_value_is_backed_up_and_restored() -> Result<()> {
    let (cluster, ns, s3) = setup("longpvc").await?;
    let files = sample_files();
    // 84 characters: a valid PVC name, too long for a label value.
    let long = format!("data-{}", "l".repeat(79));
    pvc_with_files(&cluster, &ns, &long, &files).await?;
    create_policy(
        &ns,
        "long",
        s3_spec(&s3, serde_json::json!({"names": [long]}), NEVER_SOON, 5),
    )
    .await?;
    let cjs = wait_for(
        "the CronJob of the long-named PVC",
        Duration::from_secs(60),
        || async {
            let c = cronjobs(&ns, "long").await?;
            Ok((!c.is_empty()).then_some(c))
        },
    )
    .await?;
    assert_eq!(cjs.len(), 1, "one CronJob for the PVC");
    let meta = &cjs[0].metadata;
    assert_eq!(
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(PVC_ANNOTATION)),
        Some(&long),
        "the full name is kept in an annotation"
    );
    let label = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(PVC_LABEL))
        .cloned()
        .unwrap_or_default();
    assert!(label.len() <= 63 && label.starts_with("data-"), "{label}");

    run_now(&ns, "long", "1").await?;
    let p = wait_policy(
        &ns,
        "long",
        "the backup in status",
        Duration::from_secs(180),
        |p| !stored(p).is_empty(),
    )
    .await?;
    let entry = stored(&p)[0].clone();
    assert_eq!(entry.pvc_name, long, "stored under the PVC's full name");

    let done = restore_and_wait(
        &ns,
        "back",
        serde_json::json!({"policyName": "long", "backupName": entry.name, "target": {"pvcName": "long-restored"}}),
    )
    .await?;
    let st = done.status.clone().unwrap_or_default();
    assert_eq!(
        st.phase,
        Some(RestorePhase::Succeeded),
        "{:?}",
        st.conditions
    );
    let restored = checksum_pvc(&cluster, &ns, "long-restored").await?;
    assert_eq!(restored, manifest_of(&files), "restored data differs");
    Ok(())
}

#[tokio::test]
async fn wrong_repository_password_fails_clearly_then_recovers() -> Result<()> {
    let (cluster, ns, s3) = setup("wrongpw").await?;
    pvc_with_files(&cluster, &ns, "vol", &sample_files()).await?;
    create_policy(
        &ns,
        "pw",
        s3_spec(&s3, serde_json::json!({"names": ["vol"]}), NEVER_SOON, 5),
    )
    .await?;
    run_now(&ns, "pw", "1").await?;
    wait_policy(&ns, "pw", "first backup", Duration::from_secs(180), |p| {
        stored(p).len() == 1
    })
    .await?;

    // The repository exists with PASSWORD; a different password must fail with a named reason.
    put_secret(&ns, "repo-password", &[("password", "not-the-password")]).await?;
    run_now(&ns, "pw", "2").await?;
    let p = wait_policy(
        &ns,
        "pw",
        "BackupFailed=True",
        Duration::from_secs(180),
        |p| condition(p, "BackupFailed").is_some_and(|(s, _, _)| s == "True"),
    )
    .await?;
    let (_, reason, message) = condition(&p, "BackupFailed").unwrap_or_default();
    assert_eq!(reason, "WrongPassword", "message: {message}");
    assert!(message.contains("PVC vol"), "{message}");
    assert!(
        !message.contains("not-the-password"),
        "the secret leaked into status"
    );

    put_secret(&ns, "repo-password", &[("password", PASSWORD)]).await?;
    run_now(&ns, "pw", "3").await?;
    let p = wait_policy(&ns, "pw", "recovery", Duration::from_secs(180), |p| {
        condition(p, "BackupFailed").is_some_and(|(s, _, _)| s == "False") && stored(p).len() == 2
    })
    .await?;
    assert_eq!(p.status.and_then(|s| s.phase), Some(Phase::Active));
    Ok(())
}

#[tokio::test]
async fn retention_keeps_exactly_max_backups_and_the_repository_agrees() -> Result<()> {
    let (cluster, ns, s3) = setup("retention").await?;
    pvc_with_files(&cluster, &ns, "keep", &sample_files()).await?;
    create_policy(
        &ns,
        "two",
        s3_spec(&s3, serde_json::json!({"names": ["keep"]}), NEVER_SOON, 2),
    )
    .await?;
    let mut seen = Vec::new();
    for i in 1..=3 {
        run_now(&ns, "two", &format!("run-{i}")).await?;
        let p = wait_policy(
            &ns,
            "two",
            &format!("backup {i} recorded"),
            Duration::from_secs(180),
            |p| {
                p.status.as_ref().and_then(|s| s.last_run_now.as_deref())
                    == Some(format!("run-{i}").as_str())
                    && stored(p).iter().any(|b| !seen.contains(&b.name))
            },
        )
        .await?;
        for b in stored(&p) {
            if !seen.contains(&b.name) {
                seen.push(b.name);
            }
        }
    }
    let p = wait_policy(
        &ns,
        "two",
        "two stored backups",
        Duration::from_secs(60),
        |p| stored(p).len() == 2,
    )
    .await?;
    let names: Vec<String> = stored(&p).into_iter().map(|b| b.name).collect();
    assert_eq!(seen.len(), 3, "three distinct backups were made: {seen:?}");
    assert!(
        !names.contains(&seen[0]),
        "the oldest backup must be gone: {names:?}"
    );
    let snaps = repository_snapshots(&s3, &ns.name, "keep", PASSWORD)?;
    assert_eq!(snaps.len(), 2, "repository snapshots: {snaps:?}");
    Ok(())
}

#[tokio::test]
async fn selector_relabel_schedule_suspend_and_delete_drive_cronjobs() -> Result<()> {
    let (cluster, ns, s3) = setup("cronjobs").await?;
    let _cluster = &cluster;
    for name in ["a", "b", "c"] {
        create_pvc(&ns, name, "1Gi", None).await?;
    }
    let pvcs: Api<PersistentVolumeClaim> = ns.api();
    for name in ["a", "b", "c"] {
        pvcs.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"backup": "yes"}}})),
        )
        .await?;
    }
    let sel = serde_json::json!({"selector": {"matchLabels": {"backup": "yes"}}});
    create_policy(&ns, "sel", s3_spec(&s3, sel, "30 3 * * *", 3)).await?;
    let count = |n: usize| {
        let ns = &ns;
        async move {
            wait_for(
                &format!("{n} CronJobs"),
                Duration::from_secs(60),
                || async {
                    let c = cronjobs(ns, "sel").await?;
                    Ok((c.len() == n).then_some(c))
                },
            )
            .await
        }
    };
    let cjs = count(3).await?;
    for cj in &cjs {
        let spec = cj.spec.clone().unwrap_or_default();
        assert_eq!(spec.schedule, "30 3 * * *");
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert!(
            cj.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "BackupPolicy" && o.controller == Some(true))
        );
    }

    // Relabelling a PVC removes its CronJob; labelling it again brings it back.
    pvcs.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"backup": "no"}}})),
    )
    .await?;
    count(2).await?;
    pvcs.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"backup": "yes"}}})),
    )
    .await?;
    count(3).await?;

    // A new schedule reaches every CronJob.
    let policies: Api<BackupPolicy> = ns.api();
    policies
        .patch(
            "sel",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"schedule": "15 4 * * *"}})),
        )
        .await?;
    wait_for(
        "schedule updated on all CronJobs",
        Duration::from_secs(60),
        || async {
            let c = cronjobs(&ns, "sel").await?;
            Ok((c.len() == 3
                && c.iter()
                    .all(|cj| cj.spec.as_ref().is_some_and(|s| s.schedule == "15 4 * * *")))
            .then_some(()))
        },
    )
    .await?;

    // Suspend and resume.
    policies
        .patch(
            "sel",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"suspend": true}})),
        )
        .await?;
    wait_policy(
        &ns,
        "sel",
        "phase Suspended",
        Duration::from_secs(60),
        |p| p.status.as_ref().and_then(|s| s.phase) == Some(Phase::Suspended),
    )
    .await?;
    wait_for(
        "all CronJobs suspended",
        Duration::from_secs(60),
        || async {
            let c = cronjobs(&ns, "sel").await?;
            Ok(c.iter()
                .all(|cj| cj.spec.as_ref().and_then(|s| s.suspend) == Some(true))
                .then_some(()))
        },
    )
    .await?;
    policies
        .patch(
            "sel",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"suspend": false}})),
        )
        .await?;
    wait_policy(&ns, "sel", "phase Active", Duration::from_secs(60), |p| {
        p.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
    })
    .await?;

    // An invalid schedule is an Error with a reason and leaves the CronJobs alone; fixing it recovers.
    policies
        .patch(
            "sel",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"schedule": "61 * * * *"}})),
        )
        .await?;
    let p = wait_policy(
        &ns,
        "sel",
        "InvalidSchedule",
        Duration::from_secs(60),
        |p| condition(p, "Ready").is_some_and(|(_, r, _)| r == "InvalidSchedule"),
    )
    .await?;
    assert_eq!(p.status.and_then(|s| s.phase), Some(Phase::Error));
    let c = cronjobs(&ns, "sel").await?;
    assert!(
        c.iter()
            .all(|cj| cj.spec.as_ref().is_some_and(|s| s.schedule == "15 4 * * *")),
        "CronJobs must keep the last valid schedule"
    );
    policies
        .patch(
            "sel",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"schedule": "@daily"}})),
        )
        .await?;
    wait_policy(&ns, "sel", "recovered", Duration::from_secs(60), |p| {
        p.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
    })
    .await?;

    // `kubectl get backuppolicies` shows the printer columns.
    let mut cmd = std::process::Command::new("kubectl");
    cmd.args(["get", "backuppolicies", "-n", &ns.name]);
    if let Some(kc) = &_cluster.kubeconfig {
        cmd.env("KUBECONFIG", kc);
    }
    let out = cmd.output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap_or_default().to_string();
    for col in ["NAME", "PHASE", "LAST BACKUP", "NEXT RUN", "AGE"] {
        assert!(header.contains(col), "missing column {col}: {header}");
    }
    assert!(table.contains("sel") && table.contains("Active"), "{table}");

    // Deleting the policy removes its CronJobs (garbage collection by owner reference).
    policies.delete("sel", &DeleteParams::default()).await?;
    count(0).await?;
    Ok(())
}

#[tokio::test]
async fn twenty_policies_at_once_all_become_active() -> Result<()> {
    let (_cluster, ns, s3) = setup("twenty").await?;
    for i in 0..20 {
        create_pvc(&ns, &format!("pvc-{i}"), "1Gi", None).await?;
    }
    let creates = (0..20).map(|i| {
        let spec = s3_spec(
            &s3,
            serde_json::json!({"names": [format!("pvc-{i}")]}),
            "0 1 * * *",
            3,
        );
        let ns = &ns;
        async move { create_policy(ns, &format!("policy-{i}"), spec).await }
    });
    for r in futures::future::join_all(creates).await {
        r?;
    }
    let policies: Api<BackupPolicy> = ns.api();
    wait_for(
        "20 policies Active with a CronJob each",
        Duration::from_secs(120),
        || async {
            let all = policies.list(&ListParams::default()).await?;
            let active = all
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active))
                .count();
            let cjs: Api<CronJob> = ns.api();
            let n = cjs.list(&ListParams::default()).await?.items.len();
            Ok((active == 20 && n == 20).then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn admission_rejects_invalid_specs() -> Result<()> {
    let cluster = e2e::cluster().await?;
    let ns = cluster.namespace("admission").await?;
    let api: Api<BackupPolicy> = ns.api();
    let long_name = format!("p{}", "x".repeat(63));
    let cases = [
        (
            long_name.as_str(),
            serde_json::json!({"targets": {"names": ["a"]}, "schedule": "@daily",
            "destination": {"nfs": {"server": "n", "path": "/x"}, "repositoryPasswordSecretRef": {"name": "pw"}}}),
            "at most 63 characters",
        ),
        (
            "no-targets",
            serde_json::json!({"targets": {}, "schedule": "@daily",
            "destination": {"nfs": {"server": "n", "path": "/x"}, "repositoryPasswordSecretRef": {"name": "pw"}}}),
            "targets needs names or a selector",
        ),
        (
            "two-destinations",
            serde_json::json!({"targets": {"names": ["a"]}, "schedule": "@daily",
            "destination": {"nfs": {"server": "n", "path": "/x"}, "s3": {"endpoint": "http://x", "bucket": "bkt", "credentialsSecretRef": {"name": "c"}},
                            "repositoryPasswordSecretRef": {"name": "pw"}}}),
            "exactly one of s3 or nfs",
        ),
        (
            "empty-schedule",
            serde_json::json!({"targets": {"names": ["a"]}, "schedule": "",
            "destination": {"nfs": {"server": "n", "path": "/x"}, "repositoryPasswordSecretRef": {"name": "pw"}}}),
            "schedule",
        ),
    ];
    for (name, spec, expect) in cases {
        let obj = serde_json::json!({"apiVersion": "backup.backup.example.com/v1alpha1", "kind": "BackupPolicy",
            "metadata": {"name": name}, "spec": spec});
        let dynamic: BackupPolicy = match serde_json::from_value(obj) {
            Ok(p) => p,
            Err(e) => panic!("{name}: test object does not deserialize: {e}"),
        };
        match api.create(&PostParams::default(), &dynamic).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{name}: {}", s.message);
                assert!(s.message.contains(expect), "{name}: {}", s.message);
            }
            other => panic!("{name}: expected a 422 rejection, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn operator_killed_mid_backup_records_the_result_once() -> Result<()> {
    let (cluster, ns, s3) = setup("killed").await?;
    create_pvc(&ns, "big", "2Gi", None).await?;
    wait_pvc_bound(&ns, "big", Duration::from_secs(60)).await?;
    e2e::fill_pvc_random(&cluster, &ns, "big", 8, 64 * 1024 * 1024).await?;
    create_policy(
        &ns,
        "k",
        s3_spec(&s3, serde_json::json!({"names": ["big"]}), NEVER_SOON, 5),
    )
    .await?;
    run_now(&ns, "k", "once").await?;

    // Wait for the backup pod to run, then kill the operator pod.
    let pods: Api<Pod> = ns.api();
    wait_for("backup pod running", Duration::from_secs(120), || async {
        let l = pods
            .list(&ListParams::default().labels("backup.backup.example.com/policy=k"))
            .await?;
        Ok(l.items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .then_some(()))
    })
    .await?;
    let op_pods: Api<Pod> = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
    for p in op_pods
        .list(&ListParams::default().labels("control-plane=controller-manager"))
        .await?
        .items
    {
        if let Some(name) = p.metadata.name {
            op_pods
                .delete(
                    &name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                )
                .await?;
        }
    }
    wait_operator_available(&cluster).await?;
    let p = wait_policy(
        &ns,
        "k",
        "the backup recorded after the restart",
        Duration::from_secs(240),
        |p| !stored(p).is_empty(),
    )
    .await?;
    // Give the new operator a few reconciles; the entry must stay single.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let api: Api<BackupPolicy> = ns.api();
    let p2 = api.get("k").await?;
    assert_eq!(stored(&p).len(), 1);
    assert_eq!(
        stored(&p2),
        stored(&p),
        "the result must be recorded exactly once"
    );
    Ok(())
}

/// On a cluster without the snapshot CRDs (the local cluster before
/// `make csi-up`), a `Snapshot` policy says so and a `Copy` policy next to it
/// keeps working.
#[tokio::test]
async fn snapshot_policy_without_snapshot_api_reports_it_and_copy_still_works() -> Result<()> {
    let (cluster, ns, s3) = setup("nosnapapi").await?;
    if snapshot_api_served(&cluster).await? {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED snapshot_policy_without_snapshot_api...: this cluster serves snapshot.storage.k8s.io/v1 (run it before `make csi-up`)"
        );
        return Ok(());
    }
    pvc_with_files(&cluster, &ns, "vol", &sample_files()).await?;
    let spec: backup_operator::api::BackupPolicySpec = serde_json::from_value(serde_json::json!({
        "targets": {"names": ["vol"]},
        "schedule": "* * * * *",
        "method": "Snapshot",
        "snapshot": {"volumeSnapshotClassName": "csi-hostpath-snapclass"},
    }))?;
    create_policy(&ns, "snaps", spec).await?;
    create_policy(
        &ns,
        "copies",
        s3_spec(&s3, serde_json::json!({"names": ["vol"]}), NEVER_SOON, 3),
    )
    .await?;
    let p = wait_policy(
        &ns,
        "snaps",
        "SnapshotAPIUnavailable",
        Duration::from_secs(60),
        |p| {
            condition(p, "Ready")
                .is_some_and(|(s, r, _)| s == "False" && r == "SnapshotAPIUnavailable")
        },
    )
    .await?;
    assert_eq!(p.status.and_then(|s| s.phase), Some(Phase::Error));
    wait_policy(
        &ns,
        "copies",
        "the Copy policy Active",
        Duration::from_secs(60),
        |p| p.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active),
    )
    .await?;
    assert_eq!(cronjobs(&ns, "copies").await?.len(), 1);
    assert!(
        cronjobs(&ns, "snaps").await?.is_empty(),
        "Snapshot policies run no CronJob"
    );
    Ok(())
}

/// A Restore into an existing PVC needs `overwrite: true` and waits while a
/// running pod mounts the PVC; then it writes the backup's bytes into it.
#[tokio::test]
async fn restore_into_an_existing_pvc_needs_overwrite_and_waits_for_its_pod() -> Result<()> {
    let (cluster, ns, s3) = setup("overwrite").await?;
    let files = sample_files();
    pvc_with_files(&cluster, &ns, "app", &files).await?;
    create_policy(
        &ns,
        "manual",
        s3_spec(&s3, serde_json::json!({"names": ["app"]}), NEVER_SOON, 5),
    )
    .await?;
    run_now(&ns, "manual", "one").await?;
    let p = wait_policy(
        &ns,
        "manual",
        "the backup in status",
        Duration::from_secs(180),
        |p| !stored(p).is_empty(),
    )
    .await?;
    let backup = stored(&p)[0].name.clone();
    create_pvc(&ns, "other", "1Gi", None).await?;
    wait_pvc_bound(&ns, "other", Duration::from_secs(60)).await?;

    let refused = |r: &Restore, reason: &str| {
        let st = r.status.clone().unwrap_or_default();
        st.phase == Some(RestorePhase::Failed) && st.conditions.iter().any(|c| c.reason == reason)
    };
    let r = restore_and_wait(
        &ns,
        "create-over-existing",
        serde_json::json!({"policyName": "manual", "backupName": backup, "target": {"pvcName": "other"}}),
    )
    .await?;
    assert!(refused(&r, "TargetExists"), "{:?}", r.status);
    let r = restore_and_wait(
        &ns,
        "no-overwrite",
        serde_json::json!({"policyName": "manual", "backupName": backup,
            "target": {"pvcName": "other", "create": false}}),
    )
    .await?;
    assert!(refused(&r, "OverwriteNotAllowed"), "{:?}", r.status);

    // A running pod holds the PVC: the restore waits, then proceeds once it is gone.
    start_pod(&cluster, &ns, "holder", "sleep 3600", "other").await?;
    create_restore(
        &ns,
        "overwrite",
        serde_json::json!({"policyName": "manual", "backupName": backup,
            "target": {"pvcName": "other", "create": false, "overwrite": true}}),
    )
    .await?;
    let restores: Api<Restore> = ns.api();
    wait_for(
        "the restore to wait for the holder pod",
        Duration::from_secs(60),
        || async {
            let r = restores.get("overwrite").await?;
            let st = r.status.unwrap_or_default();
            let waiting = st.phase == Some(RestorePhase::Pending)
                && st
                    .conditions
                    .iter()
                    .any(|c| c.reason == "TargetInUse" && c.message.contains("holder"));
            Ok(waiting.then_some(()))
        },
    )
    .await?;
    let pods: Api<Pod> = ns.api();
    pods.delete("holder", &DeleteParams::default()).await?;
    let done = wait_restore_finished(&ns, "overwrite").await?;
    let st = done.status.unwrap_or_default();
    assert_eq!(
        st.phase,
        Some(RestorePhase::Succeeded),
        "{:?}",
        st.conditions
    );
    assert_eq!(
        checksum_pvc(&cluster, &ns, "other").await?,
        manifest_of(&files)
    );
    Ok(())
}
