//! Backup Jobs fit for production clusters, against the deployed operator:
//! selections of nothing are reported, blocked Jobs are reported within a
//! minute, mover pods pass Pod Security `restricted`.

mod support;

use anyhow::Result;
use backup_operator::api::{BackupPolicy, RestorePhase};
use e2e::{TestNamespace, wait_for};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, ResourceQuota};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
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

/// Waits for a Warning Event with `reason` in the namespace; returns its note.
async fn warning_event(ns: &TestNamespace, reason: &str) -> Result<String> {
    let events: Api<Event> = ns.api();
    wait_for(
        &format!("a Warning Event {reason}"),
        Duration::from_secs(60),
        || async {
            Ok(events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some("Warning")
                })
                .map(|e| e.note.unwrap_or_default()))
        },
    )
    .await
}

#[tokio::test]
async fn a_selector_matching_no_pvc_is_a_no_targets_warning() -> Result<()> {
    let (_cluster, ns, s3) = setup("no-targets").await?;
    let sel = serde_json::json!({"selector": {"matchLabels": {"backup": "nothing-has-this"}}});
    create_policy(&ns, "empty", s3_spec(&s3, sel, NEVER_SOON, 3)).await?;
    let p = wait_policy(
        &ns,
        "empty",
        "TargetsResolved=False/NoTargets",
        Duration::from_secs(60),
        |p| {
            condition(p, "TargetsResolved")
                .is_some_and(|(s, r, _)| s == "False" && r == "NoTargets")
        },
    )
    .await?;
    let (_, _, message) = condition(&p, "TargetsResolved").unwrap_or_default();
    assert!(message.contains("spec.targets"), "{message}");
    let note = warning_event(&ns, "NoTargets").await?;
    assert!(note.contains("no PVC"), "{note}");
    Ok(())
}

/// Starts an on-demand backup and waits (at most a minute) until the policy
/// reports `BackupFailed=True` with `reason`; returns the condition message.
async fn reported_within_a_minute(
    ns: &TestNamespace,
    policy: &str,
    reason: &str,
) -> Result<String> {
    run_now(ns, policy, "1").await?;
    let started = std::time::Instant::now();
    let p = wait_policy(
        ns,
        policy,
        &format!("BackupFailed=True/{reason}"),
        Duration::from_secs(60),
        |p| condition(p, "BackupFailed").is_some_and(|(s, r, _)| s == "True" && r == reason),
    )
    .await?;
    eprintln!("{policy}: {reason} reported after {:?}", started.elapsed());
    let ready = condition(&p, "Ready").unwrap_or_default();
    assert_eq!(
        ready.0, "False",
        "not Ready while no backup can run: {ready:?}"
    );
    Ok(condition(&p, "BackupFailed").unwrap_or_default().2)
}

#[tokio::test]
async fn a_job_whose_pods_are_forbidden_is_reported_within_a_minute() -> Result<()> {
    let (cluster, ns, s3) = setup("forbidden").await?;
    pvc_with_files(&cluster, &ns, "data", &e2e::sample_files()).await?;
    // No pod may be created in the namespace any more.
    let quotas: Api<ResourceQuota> = ns.api();
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}
    }))?;
    quotas.create(&PostParams::default(), &quota).await?;
    create_policy(
        &ns,
        "quota",
        s3_spec(&s3, serde_json::json!({"names": ["data"]}), NEVER_SOON, 3),
    )
    .await?;
    let message = reported_within_a_minute(&ns, "quota", "PodForbidden").await?;
    assert!(message.contains("PVC data"), "{message}");
    assert!(message.contains("exceeded quota"), "{message}");
    let note = warning_event(&ns, "PodForbidden").await?;
    assert!(note.contains("PVC data"), "{note}");
    Ok(())
}

#[tokio::test]
async fn a_missing_secret_key_and_a_missing_image_are_reported_within_a_minute() -> Result<()> {
    let (cluster, ns, s3) = setup("stuck-pods").await?;
    pvc_with_files(&cluster, &ns, "data", &e2e::sample_files()).await?;
    let mut no_key = s3_spec(&s3, serde_json::json!({"names": ["data"]}), NEVER_SOON, 3);
    if let Some(s3) = no_key.destination.as_mut().and_then(|d| d.s3.as_mut()) {
        // An allowed key name the Secret does not hold.
        s3.credentials_secret_ref.access_key_id_key = "accessKeyId".into();
    }
    create_policy(&ns, "no-key", no_key).await?;
    let mut no_image = s3_spec(&s3, serde_json::json!({"names": ["data"]}), NEVER_SOON, 3);
    no_image.job.mover_image = Some("localhost/no-such-mover:0.0.1".into());
    create_policy(&ns, "no-image", no_image).await?;
    let (key, image) = tokio::join!(
        reported_within_a_minute(&ns, "no-key", "SecretMissing"),
        reported_within_a_minute(&ns, "no-image", "ImagePullFailed"),
    );
    let key = key?;
    assert!(
        key.contains("PVC data") && key.contains("accessKeyId"),
        "{key}"
    );
    let image = image?;
    assert!(image.contains("PVC data"), "{image}");
    Ok(())
}

/// Sets (or with `None` removes) a label on the test namespace.
async fn label_namespace(ns: &TestNamespace, key: &str, value: Option<&str>) -> Result<()> {
    let api: Api<Namespace> = Api::all(ns.client.clone());
    api.patch(
        &ns.name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {key: value}}})),
    )
    .await?;
    Ok(())
}

/// What a cluster admin does to allow root movers in a namespace.
async fn allow_root_movers(ns: &TestNamespace) -> Result<()> {
    let api: Api<Namespace> = Api::all(ns.client.clone());
    api.patch(
        &ns.name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
            "backup.backup.example.com/privileged-movers": "true"}}})),
    )
    .await?;
    Ok(())
}

const RESTRICTED: &str = "pod-security.kubernetes.io/enforce";

/// One on-demand backup of `pvc` by `policy`; returns the stored backup's name.
async fn backup_once(ns: &TestNamespace, policy: &str, pvc: &str) -> Result<String> {
    run_now(ns, policy, "1").await?;
    let p = wait_policy(
        ns,
        policy,
        "a stored backup",
        Duration::from_secs(180),
        |p| stored(p).iter().any(|b| b.pvc_name == pvc),
    )
    .await?;
    Ok(stored(&p)
        .into_iter()
        .find(|b| b.pvc_name == pvc)
        .map(|b| b.name)
        .unwrap_or_default())
}

/// The security context the mover pods of the policy's Jobs ran with.
async fn mover_pod_security(
    ns: &TestNamespace,
    policy: &str,
) -> Result<Vec<(Option<i64>, Option<bool>)>> {
    let pods: Api<Pod> = ns.api();
    let list = pods
        .list(&ListParams::default().labels(&format!("backup.backup.example.com/policy={policy}")))
        .await?;
    Ok(list
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref()?.security_context.as_ref())
        .map(|s| (s.run_as_user, s.run_as_non_root))
        .collect())
}

#[tokio::test]
async fn a_restricted_namespace_backs_up_and_restores_byte_identical_as_non_root() -> Result<()> {
    let (cluster, ns, s3) = setup("restricted").await?;
    let files = e2e::sample_files();
    pvc_with_files(&cluster, &ns, "data", &files).await?;
    // The helper pods of the test run as root: restricted only for the movers.
    label_namespace(&ns, RESTRICTED, Some("restricted")).await?;
    create_policy(
        &ns,
        "restricted",
        s3_spec(&s3, serde_json::json!({"names": ["data"]}), NEVER_SOON, 3),
    )
    .await?;
    let backup = backup_once(&ns, "restricted", "data").await?;
    let p: Api<BackupPolicy> = ns.api();
    let p = p.get("restricted").await?;
    assert_eq!(
        condition(&p, "BackupFailed").map(|c| c.0).as_deref(),
        Some("False")
    );
    for (uid, non_root) in mover_pod_security(&ns, "restricted").await? {
        assert_eq!((uid, non_root), (Some(65532), Some(true)));
    }
    let r = restore_and_wait(
        &ns,
        "back",
        serde_json::json!({"policyName": "restricted", "backupName": backup,
            "target": {"pvcName": "restored"}}),
    )
    .await?;
    let st = r.status.unwrap_or_default();
    assert_eq!(
        st.phase,
        Some(RestorePhase::Succeeded),
        "{:?}",
        st.conditions
    );
    label_namespace(&ns, RESTRICTED, None).await?;
    assert_eq!(
        e2e::checksum_pvc(&cluster, &ns, "restored").await?,
        e2e::manifest_of(&files)
    );
    // Pod Security is what the pods were checked against: a root mover is
    // refused there and reported as such, not shown Ready.
    label_namespace(&ns, RESTRICTED, Some("restricted")).await?;
    allow_root_movers(&ns).await?;
    create_policy(
        &ns,
        "root-in-restricted",
        s3_spec(&s3, serde_json::json!({"names": ["data"]}), NEVER_SOON, 3),
    )
    .await?;
    let message = reported_within_a_minute(&ns, "root-in-restricted", "PodForbidden").await?;
    assert!(
        message.contains("PVC data") && message.contains("PodSecurity"),
        "{message}"
    );
    Ok(())
}

/// `stat` of every file under /data: `uid:gid mode path`, sorted.
async fn owners(cluster: &e2e::Cluster, ns: &TestNamespace, pvc: &str) -> Result<String> {
    let script = "cd /data && find . -type f | sort | while read -r f; do stat -c '%u:%g %a %n' \"$f\"; done";
    let name = format!("owners-{pvc}");
    let out = e2e::run_pod(
        ns,
        &e2e::busybox_pod(cluster, &name, script, Some(pvc)),
        Duration::from_secs(120),
    )
    .await?;
    anyhow::ensure!(out.succeeded, "stat pod failed: {}", out.output);
    Ok(out.output)
}

#[tokio::test]
async fn root_movers_where_the_admin_allows_keep_three_owners() -> Result<()> {
    let (cluster, ns, s3) = setup("root-movers").await?;
    e2e::create_pvc(&ns, "owned", "1Gi", None).await?;
    e2e::wait_pvc_bound(&ns, "owned", Duration::from_secs(60)).await?;
    // Files only their owners can read.
    let script = "cd /data && for u in 0 1001 2002; do echo \"file of $u\" > f$u && chown $u:$u f$u && chmod 600 f$u; done && sync";
    let out = e2e::run_pod(
        &ns,
        &e2e::busybox_pod(&cluster, "owners-fill", script, Some("owned")),
        Duration::from_secs(120),
    )
    .await?;
    anyhow::ensure!(out.succeeded, "fill pod failed: {}", out.output);
    let before = owners(&cluster, &ns, "owned").await?;
    assert!(before.contains("1001:1001 600 ./f1001"), "{before}");
    allow_root_movers(&ns).await?;
    create_policy(
        &ns,
        "root",
        s3_spec(&s3, serde_json::json!({"names": ["owned"]}), NEVER_SOON, 3),
    )
    .await?;
    let backup = backup_once(&ns, "root", "owned").await?;
    for (uid, _) in mover_pod_security(&ns, "root").await? {
        assert_eq!(uid, Some(0));
    }
    let r = restore_and_wait(
        &ns,
        "back",
        serde_json::json!({"policyName": "root", "backupName": backup,
            "target": {"pvcName": "restored"}}),
    )
    .await?;
    let st = r.status.unwrap_or_default();
    assert_eq!(
        st.phase,
        Some(RestorePhase::Succeeded),
        "{:?}",
        st.conditions
    );
    assert_eq!(owners(&cluster, &ns, "restored").await?, before);
    Ok(())
}

#[tokio::test]
async fn a_job_for_a_rwo_pvc_in_use_runs_on_the_pods_node_and_unschedulable_is_reported()
-> Result<()> {
    let (cluster, ns, s3) = setup("placement").await?;
    let files = e2e::sample_files();
    pvc_with_files(&cluster, &ns, "data", &files).await?;
    start_pod(&cluster, &ns, "app", "sleep 3600", "data").await?;
    let pods: Api<Pod> = ns.api();
    let node = pods
        .get("app")
        .await?
        .spec
        .and_then(|s| s.node_name)
        .unwrap_or_default();
    create_policy(
        &ns,
        "in-use",
        s3_spec(&s3, serde_json::json!({"names": ["data"]}), NEVER_SOON, 3),
    )
    .await?;
    backup_once(&ns, "in-use", "data").await?;
    let jobs: Api<Job> = ns.api();
    let list = jobs
        .list(&ListParams::default().labels("backup.backup.example.com/policy=in-use"))
        .await?;
    assert_eq!(list.items.len(), 1);
    let terms = list.items[0]
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.clone())
        .unwrap_or_default();
    assert!(
        terms.iter().all(|t| t
            .match_fields
            .iter()
            .flatten()
            .any(|f| f.key == "metadata.name" && f.values.as_deref() == Some(&[node.clone()][..])))
            && !terms.is_empty(),
        "the Job is pinned to node {node}: {terms:?}"
    );

    // No node has the label: reported as Unschedulable within a minute.
    let mut nowhere = s3_spec(&s3, serde_json::json!({"names": ["data"]}), NEVER_SOON, 3);
    nowhere.job.node_selector =
        Some([("e2e.kube-backup/no-such-node".to_string(), "x".to_string())].into());
    create_policy(&ns, "nowhere", nowhere).await?;
    let message = reported_within_a_minute(&ns, "nowhere", "Unschedulable").await?;
    assert!(message.contains("PVC data"), "{message}");
    Ok(())
}

#[tokio::test]
async fn excluded_files_are_not_backed_up() -> Result<()> {
    let (cluster, ns, s3) = setup("excludes").await?;
    let kept = e2e::sample_files();
    let mut files = kept.clone();
    files.insert("scratch/build.tmp".into(), b"temporary".to_vec());
    files.insert("cache/blob".into(), b"cached".to_vec());
    pvc_with_files(&cluster, &ns, "data", &files).await?;
    let mut spec = s3_spec(&s3, serde_json::json!({"names": ["data"]}), NEVER_SOON, 3);
    spec.exclude = vec!["*.tmp".into(), "cache/**".into()];
    create_policy(&ns, "excludes", spec).await?;
    let backup = backup_once(&ns, "excludes", "data").await?;
    let r = restore_and_wait(
        &ns,
        "back",
        serde_json::json!({"policyName": "excludes", "backupName": backup,
            "target": {"pvcName": "restored"}}),
    )
    .await?;
    let st = r.status.unwrap_or_default();
    assert_eq!(
        st.phase,
        Some(RestorePhase::Succeeded),
        "{:?}",
        st.conditions
    );
    assert_eq!(
        e2e::checksum_pvc(&cluster, &ns, "restored").await?,
        e2e::manifest_of(&kept)
    );
    Ok(())
}

#[tokio::test]
async fn a_policy_with_a_foreign_mover_image_runs_nothing_and_says_why() -> Result<()> {
    let (cluster, ns, s3) = setup("guardrails").await?;
    pvc_with_files(&cluster, &ns, "data", &e2e::sample_files()).await?;
    let mut spec = s3_spec(&s3, serde_json::json!({"names": ["data"]}), NEVER_SOON, 3);
    spec.job.mover_image = Some("registry.example.com/not-allowed/mover:1".into());
    create_policy(&ns, "foreign", spec).await?;
    run_now(&ns, "foreign", "1").await?;
    let p = wait_policy(
        &ns,
        "foreign",
        "Ready=False/NotAllowed",
        Duration::from_secs(60),
        |p| condition(p, "Ready").is_some_and(|(s, r, _)| s == "False" && r == "NotAllowed"),
    )
    .await?;
    let (_, _, message) = condition(&p, "Ready").unwrap_or_default();
    assert!(message.contains("spec.job.moverImage"), "{message}");
    // Give a wrongly started run time to show up: none may.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let jobs: Api<Job> = ns.api();
    let cjs: Api<k8s_openapi::api::batch::v1::CronJob> = ns.api();
    let sel = ListParams::default().labels("backup.backup.example.com/policy=foreign");
    assert!(jobs.list(&sel).await?.items.is_empty(), "no Job runs");
    assert!(cjs.list(&sel).await?.items.is_empty(), "no CronJob exists");
    Ok(())
}
