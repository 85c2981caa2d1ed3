//! Restore handlers: create the target PVC, run the restore Job, report.

use super::{movers, observe, settings};
use crate::api::{BackupPolicy, Restore, RestorePhase, RestoreStatus};
use crate::desired::{self, RestoreJobInput};
use crate::restore_plan;
use crate::results::{self, JobOutcome};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use operator_framework::{
    Context, EventType, HandlerError, HandlerResult, conditions, on_event, on_timer,
};
use std::time::Duration;

const READY: &str = "Ready";

/// Drives a Restore from Pending to Succeeded or Failed.
#[on_event(
    id = "restore",
    backoff_base = "2s",
    backoff_max = "2m",
    timeout = "120s"
)]
pub async fn reconcile(ctx: Context<Restore>) -> HandlerResult {
    reconcile_restore(ctx).await
}

/// A stuck pod (forbidden, unschedulable, no image, no Secret, no mount)
/// changes no Job, so no watch event comes: running restores are looked at
/// every 15 s.
#[on_timer(id = "restore-tick", interval = "15s", initial_delay = "10s")]
pub async fn restore_tick(ctx: Context<Restore>) -> HandlerResult {
    let running = ctx.object.status.as_ref().and_then(|s| s.phase) == Some(RestorePhase::Running);
    if !running {
        return Ok(());
    }
    reconcile_restore(ctx).await
}

async fn reconcile_restore(ctx: Context<Restore>) -> HandlerResult {
    let restore = ctx.object.clone();
    let prev = restore.status.clone().unwrap_or_default();
    if matches!(
        prev.phase,
        Some(RestorePhase::Succeeded | RestorePhase::Failed)
    ) || restore.metadata.deletion_timestamp.is_some()
    {
        return Ok(());
    }
    let ns = restore.namespace().unwrap_or_default();
    let client = ctx.client();
    let policy_name = &restore.spec.policy_name;
    let Some(policy) = Api::<BackupPolicy>::namespaced(client.clone(), &ns)
        .get_opt(policy_name)
        .await?
    else {
        let msg = format!("BackupPolicy {policy_name} not found in {ns}");
        set(
            &ctx,
            &prev,
            RestorePhase::Pending,
            "PolicyNotFound",
            &msg,
            |_| {},
        )
        .await?;
        return Err(HandlerError::temporary(msg, Some(Duration::from_secs(30))));
    };
    let not_allowed = crate::guardrails::violations(
        &policy.spec,
        &settings(&ctx).mover_image,
        &settings(&ctx).guardrails,
    );
    if !not_allowed.is_empty() {
        return fail(&ctx, &prev, "NotAllowed", &not_allowed.join("; ")).await;
    }
    let backups = Api::<crate::api::Backup>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("{}={policy_name}", crate::api::POLICY_LABEL)))
        .await?
        .items;
    let source = match restore_plan::source(&restore, &policy, &backups) {
        Ok(s) => s,
        Err(e) => {
            let cataloged = policy
                .status
                .as_ref()
                .is_some_and(|s| s.last_catalog_time.is_some());
            if !cataloged && policy.spec.destination.is_some() {
                // A new policy (or cluster): its backups are listed soon.
                let msg = format!("{e}; waiting for the first catalog listing");
                set(
                    &ctx,
                    &prev,
                    RestorePhase::Pending,
                    "WaitingForCatalog",
                    &msg,
                    |_| {},
                )
                .await?;
                return Err(HandlerError::temporary(msg, Some(Duration::from_secs(10))));
            }
            return fail(&ctx, &prev, "BackupNotFound", &e.to_string()).await;
        }
    };

    // A VolumeSnapshot backup restores by creating the PVC from it: no Job.
    if let Some(vs) = crate::snapshot::status::restore_source(
        &policy,
        &source.pvc,
        &source.snapshot,
        source.before.as_deref(),
    ) {
        if !restore.spec.target.create {
            let msg = format!(
                "backup {vs} is a VolumeSnapshot: it restores into a new PVC only (target.create: true)"
            );
            return fail(&ctx, &prev, "SnapshotNeedsNewPVC", &msg).await;
        }
        let pvc = match crate::snapshot::restore_from_snapshot(&client, &restore, &policy, &vs)
            .await
        {
            Ok(p) => p,
            Err(e) if e.is_transient() => return Err(HandlerError::temporary(e.to_string(), None)),
            Err(e) => return fail(&ctx, &prev, e.reason(), &e.to_string()).await,
        };
        let target = &restore.spec.target.pvc_name;
        if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
            let msg = format!("PVC {target} was created from VolumeSnapshot {vs}");
            ctx.event(EventType::Normal, "RestoreSucceeded", &msg)
                .await?;
            return set(
                &ctx,
                &prev,
                RestorePhase::Succeeded,
                "Restored",
                &msg,
                |s| {
                    s.completion_time = Some(Time(jiff::Timestamp::now()));
                    s.snapshot_id = Some(vs.clone());
                },
            )
            .await;
        }
        let msg = format!("PVC {target} is being provisioned from VolumeSnapshot {vs}");
        set(
            &ctx,
            &prev,
            RestorePhase::Running,
            "ProvisioningFromSnapshot",
            &msg,
            |s| {
                if s.start_time.is_none() {
                    s.start_time = Some(Time(jiff::Timestamp::now()));
                }
            },
        )
        .await?;
        return Err(HandlerError::temporary(msg, Some(Duration::from_secs(3))));
    }

    let job_name = crate::naming::restore_job_name(&restore.name_any());
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);
    if let Some(job) = jobs.get_opt(&job_name).await? {
        return follow_job(&ctx, &prev, &ns, &job).await;
    }

    // Target PVC: create it, or write into an existing one only when allowed.
    let target = &restore.spec.target;
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    let existing = pvcs.get_opt(&target.pvc_name).await?;
    let ours = existing
        .as_ref()
        .and_then(|p| p.labels().get(crate::api::RESTORE_LABEL).cloned())
        .is_some_and(|r| r == restore.name_any());
    match (&existing, target.create) {
        (Some(_), true) if !ours => {
            let msg = format!(
                "PVC {} already exists; set target.create=false and target.overwrite=true to write into it",
                target.pvc_name
            );
            return fail(&ctx, &prev, "TargetExists", &msg).await;
        }
        (None, false) => {
            let msg = format!(
                "PVC {} does not exist and target.create is false",
                target.pvc_name
            );
            set(
                &ctx,
                &prev,
                RestorePhase::Pending,
                "TargetNotFound",
                &msg,
                |_| {},
            )
            .await?;
            return Err(HandlerError::temporary(msg, Some(Duration::from_secs(30))));
        }
        (Some(_), false) if !target.overwrite => {
            let msg = format!(
                "PVC {} exists; restoring into it needs target.overwrite=true",
                target.pvc_name
            );
            return fail(&ctx, &prev, "OverwriteNotAllowed", &msg).await;
        }
        (Some(_), false) => {
            if let Some(pod) = pod_using(&client, &ns, &target.pvc_name).await? {
                let msg = format!(
                    "PVC {} is mounted by running pod {pod}; stop it first",
                    target.pvc_name
                );
                set(
                    &ctx,
                    &prev,
                    RestorePhase::Pending,
                    "TargetInUse",
                    &msg,
                    |_| {},
                )
                .await?;
                return Err(HandlerError::temporary(msg, Some(Duration::from_secs(20))));
            }
        }
        (None, true) => {
            let source_request = pvcs
                .get_opt(&source.pvc)
                .await?
                .and_then(|p| p.spec)
                .and_then(|s| s.resources)
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").cloned());
            let pvc = restore_plan::target_pvc(
                &restore,
                &policy,
                source_request,
                source.recorded.as_ref(),
            );
            match pvcs.create(&PostParams::default(), &pvc).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        (Some(_), true) => {} // created by this restore earlier
    }

    let input = RestoreJobInput {
        restore: &restore.name_any(),
        namespace: &ns,
        policy: &policy,
        source_pvc: &source.pvc,
        snapshot: &source.snapshot,
        before: source.before.as_deref(),
        target_pvc: &target.pvc_name,
        image: &settings(&ctx).mover_image,
        identity: restore.spec.job.as_ref(),
    };
    let mut job = match desired::restore_job(&input) {
        Ok(j) => j,
        Err(e) => return fail(&ctx, &prev, "InvalidPolicy", &e.to_string()).await,
    };
    let identity = restore
        .spec
        .job
        .clone()
        .unwrap_or_else(|| policy.spec.job.identity.clone());
    movers::ensure_service_account(&client, &ns).await?;
    if crate::pod_security::wants_root(&identity)
        && movers::privileged_allowed(&client, &ns).await?
    {
        crate::pod_security::elevate_job(&mut job, &identity);
    }
    ctx.adopt(&mut job);
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let msg = format!(
        "restoring {} of PVC {} into PVC {}",
        source.snapshot, source.pvc, target.pvc_name
    );
    ctx.event(EventType::Normal, "RestoreStarted", &msg).await?;
    set(
        &ctx,
        &prev,
        RestorePhase::Running,
        "JobRunning",
        &msg,
        |s| {
            s.start_time = Some(Time(jiff::Timestamp::now()));
        },
    )
    .await
}

async fn follow_job(
    ctx: &Context<Restore>,
    prev: &RestoreStatus,
    ns: &str,
    job: &Job,
) -> HandlerResult {
    let client = ctx.client();
    let name = job.name_any();
    let running = results::job_outcome(job, None) == JobOutcome::Running;
    let result = if running {
        None
    } else {
        observe::job_result(&client, ns, job).await?
    };
    match results::job_outcome(job, result.as_ref()) {
        JobOutcome::Running => {
            let start = job.status.as_ref().and_then(|s| s.start_time.clone());
            if let Some(b) = super::blocked::job_stuck(&client, ns, job).await? {
                let msg = format!("restore Job {name} cannot run: {}", b.message);
                let old = conditions::find(&prev.conditions, READY);
                if old.is_none_or(|c| c.reason != b.reason || c.message != msg) {
                    ctx.event(EventType::Warning, b.reason, &msg).await?;
                }
                set(ctx, prev, RestorePhase::Running, b.reason, &msg, |s| {
                    if s.start_time.is_none() {
                        s.start_time = start.clone();
                    }
                })
                .await?;
                return Ok(());
            }
            set(
                ctx,
                prev,
                RestorePhase::Running,
                "JobRunning",
                &format!("restore Job {name} is running"),
                |s| {
                    if s.start_time.is_none() {
                        s.start_time = start;
                    }
                },
            )
            .await
        }
        JobOutcome::Succeeded => {
            let r = result.unwrap_or_default();
            let msg = format!(
                "restored snapshot {} ({} bytes)",
                r.snapshot_id.clone().unwrap_or_default(),
                r.bytes_restored.unwrap_or(0)
            );
            ctx.event(EventType::Normal, "RestoreSucceeded", &msg)
                .await?;
            let completion = job.status.as_ref().and_then(|s| s.completion_time.clone());
            set(ctx, prev, RestorePhase::Succeeded, "Restored", &msg, |s| {
                s.completion_time = completion.or_else(|| Some(Time(jiff::Timestamp::now())));
                s.bytes_restored = r.bytes_restored.and_then(|b| i64::try_from(b).ok());
                s.snapshot_id = r.snapshot_id.clone();
            })
            .await
        }
        JobOutcome::Failed { reason, message } => {
            fail(
                ctx,
                prev,
                &reason,
                &format!("restore Job {name} failed: {message}"),
            )
            .await
        }
    }
}

/// A pod (not Succeeded/Failed) that mounts the PVC.
async fn pod_using(client: &kube::Client, ns: &str, pvc: &str) -> anyhow::Result<Option<String>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    Ok(pods.items.into_iter().find_map(|p| {
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let mounts = p
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|vs| {
                vs.iter().any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == pvc)
                })
            });
        (mounts && phase != "Succeeded" && phase != "Failed").then(|| p.name_any())
    }))
}

async fn fail(
    ctx: &Context<Restore>,
    prev: &RestoreStatus,
    reason: &str,
    msg: &str,
) -> HandlerResult {
    ctx.event(EventType::Warning, reason, msg).await?;
    set(ctx, prev, RestorePhase::Failed, reason, msg, |s| {
        s.completion_time = Some(Time(jiff::Timestamp::now()));
    })
    .await
}

/// Writes phase, the Ready condition and extra fields, only if something changed.
async fn set(
    ctx: &Context<Restore>,
    prev: &RestoreStatus,
    phase: RestorePhase,
    reason: &str,
    msg: &str,
    extra: impl FnOnce(&mut RestoreStatus),
) -> HandlerResult {
    let mut status = prev.clone();
    status.phase = Some(phase);
    let ok = matches!(phase, RestorePhase::Succeeded);
    conditions::upsert(
        &mut status.conditions,
        READY,
        if ok { "True" } else { "False" },
        reason,
        msg,
        ctx.object.metadata.generation,
    );
    extra(&mut status);
    if &status != prev {
        let value = serde_json::to_value(&status)
            .map_err(|e| HandlerError::permanent(format!("encoding status: {e}")))?;
        ctx.patch_status(value).await?;
    }
    Ok(())
}
