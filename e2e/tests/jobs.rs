//! Backup Jobs fit for production clusters, against the deployed operator:
//! selections of nothing are reported, blocked Jobs are reported within a
//! minute, mover pods pass Pod Security `restricted`.

mod support;

use anyhow::Result;
use e2e::{TestNamespace, wait_for};
use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, PostParams};
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
        s3.credentials_secret_ref.access_key_id_key = "NO_SUCH_KEY".into();
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
        key.contains("PVC data") && key.contains("NO_SUCH_KEY"),
        "{key}"
    );
    let image = image?;
    assert!(image.contains("PVC data"), "{image}");
    Ok(())
}
