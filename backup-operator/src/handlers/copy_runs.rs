//! Drives `SnapshotThenCopy` runs: asks the planner what each PVC needs next
//! and does that one step. Called from the policy reconcile and its timer.

use super::settings;
use crate::api::BackupPolicy;
use crate::schedule::Schedule;
use crate::snapshot::copy_run::{self, CopyStep};
use crate::snapshot::{self, CopyRunItem, CopySetup, CopySourceState, PvcProblem, SnapshotError};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use operator_framework::{Context, EventType};
use std::collections::HashSet;

/// One round over the selected PVCs. Returns the per-PVC problems to report;
/// an `Err` concerns the whole policy (no snapshot API, unknown class, ...).
/// `results_read`: copy Jobs seen finished (their results read) before this
/// round; only those are cleaned up, since cleaning up deletes the pods that
/// hold the mover's result.
pub async fn drive(
    ctx: &Context<BackupPolicy>,
    schedule: &Schedule,
    pvcs: &[String],
    results_read: &HashSet<&str>,
    now: Timestamp,
) -> Result<Vec<PvcProblem>, SnapshotError> {
    let policy = &ctx.object;
    let client = ctx.client();
    let observed = snapshot::copy_runs(&client, policy).await?;
    let created = policy
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let mut problems = Vec::new();
    // Discovery and the class lookup, only once a PVC needs a step.
    let mut setup: Option<CopySetup> = None;
    for pvc in pvcs {
        let mut snaps = Vec::new();
        let mut jobs = Vec::new();
        for (p, item) in &observed {
            match item {
                CopyRunItem::Snapshot(s) if p == pvc => snaps.push(s.clone()),
                CopyRunItem::Job(j) if p == pvc => jobs.push(j.clone()),
                _ => {}
            }
        }
        let step = copy_run::next_step(schedule, created, policy.spec.suspend, &snaps, &jobs, now);
        match step {
            CopyStep::Idle | CopyStep::WaitForJob { .. } => {}
            CopyStep::Start { run_for } | CopyStep::Advance { run_for, .. } => {
                let setup = match &setup {
                    Some(s) => s,
                    None => setup.insert(snapshot::copy_setup(&client, policy).await?),
                };
                if let Some(p) = advance(ctx, setup, pvc, run_for, now).await? {
                    problems.push(p);
                }
            }
            // Finished after the Jobs were observed: the next round cleans up.
            CopyStep::Cleanup { job, .. } if !results_read.contains(job.as_str()) => {}
            CopyStep::Cleanup { snapshot, job } => {
                snapshot::cleanup_copy_source(&client, policy, &snapshot, &job).await?;
                tracing::info!(%pvc, %snapshot, "copy run finished; temporary PVC removed");
            }
        }
    }
    Ok(problems)
}

/// Starts a run of `pvc` at `now` (the run-now annotation): takes its snapshot;
/// the following rounds make the temporary PVC and the Job.
pub async fn start_now(
    ctx: &Context<BackupPolicy>,
    pvc: &str,
    now: Timestamp,
) -> Result<(), SnapshotError> {
    let run_for = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let setup = snapshot::copy_setup(&ctx.client(), &ctx.object).await?;
    match advance(ctx, &setup, pvc, run_for, now).await? {
        None => Ok(()),
        Some(p) => {
            tracing::warn!(%pvc, reason = p.reason, message = %p.message, "on-demand run not started");
            Ok(())
        }
    }
}

/// Takes the run's snapshot, and once it is ready the temporary PVC and the
/// copy Job. A problem that prevents the run is returned for the status.
async fn advance(
    ctx: &Context<BackupPolicy>,
    setup: &CopySetup,
    pvc: &str,
    run_for: Timestamp,
    now: Timestamp,
) -> Result<Option<PvcProblem>, SnapshotError> {
    let policy = &ctx.object;
    let client = ctx.client();
    match snapshot::ensure_copy_source(&client, policy, setup, pvc, run_for, now).await? {
        CopySourceState::Pending { .. } => Ok(None),
        CopySourceState::Problem(p) => Ok(Some(p)),
        CopySourceState::Failed { snapshot, message } => {
            snapshot::fail_copy_source(&client, policy, &snapshot).await?;
            Ok(Some(PvcProblem {
                pvc: pvc.to_string(),
                reason: snapshot::REASON_SNAPSHOT_FAILED,
                message: format!(
                    "PVC {pvc}: VolumeSnapshot {snapshot} for the run at {run_for} failed: {message}; the next run is at the next scheduled time"
                ),
            }))
        }
        CopySourceState::Ready {
            snapshot,
            pvc: temporary,
        } => {
            let mut job = match snapshot::desired::copy_job(
                policy,
                pvc,
                &temporary,
                &snapshot,
                run_for,
                &settings(ctx).mover_image,
            ) {
                Ok(j) => j,
                Err(e) => {
                    return Ok(Some(PvcProblem {
                        pvc: pvc.to_string(),
                        reason: "InvalidDestination",
                        message: e.to_string(),
                    }));
                }
            };
            let ns = policy.namespace().unwrap_or_default();
            let identity = &policy.spec.job.identity;
            let root = async {
                super::movers::ensure_service_account(&client, &ns).await?;
                if !crate::pod_security::wants_root(identity) {
                    return Ok(false);
                }
                super::movers::privileged_allowed(&client, &ns).await
            };
            match root.await {
                Ok(true) => crate::pod_security::elevate_job(&mut job, identity),
                Ok(false) => {}
                Err(e) => {
                    return Ok(Some(PvcProblem {
                        pvc: pvc.to_string(),
                        reason: "MoverSetupFailed",
                        message: format!("PVC {pvc}: {e:#}"),
                    }));
                }
            }
            crate::maintenance::owner::stamp_job(&mut job, &settings(ctx).cluster_id);
            ctx.adopt(&mut job);
            let api = Api::<Job>::namespaced(client, &ns);
            match api.create(&PostParams::default(), &job).await {
                Ok(created) => {
                    let note = format!(
                        "backing up PVC {pvc} from VolumeSnapshot {snapshot} (Job {})",
                        created.name_any()
                    );
                    // An Event that cannot be posted must not repeat the run.
                    if let Err(e) = ctx.event(EventType::Normal, "BackupStarted", &note).await {
                        tracing::warn!(error = %e, "posting BackupStarted");
                    }
                    Ok(None)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
                Err(source) => Err(SnapshotError::Kube {
                    context: format!("creating copy Job for PVC {ns}/{pvc}"),
                    source,
                }),
            }
        }
    }
}
