//! Backup Jobs fit for production clusters, against the deployed operator:
//! selections of nothing are reported, blocked Jobs are reported within a
//! minute, mover pods pass Pod Security `restricted`.

mod support;

use anyhow::Result;
use e2e::{TestNamespace, wait_for};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
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
