//! The operator's stale-lock step (see `maintenance::unlock`): start the
//! unlock Jobs the planner asks for, and report each one's outcome once.

use crate::api::{BackupPolicy, CATALOG_LABEL, MAINTENANCE_LABEL, RESTORE_LABEL};
use crate::maintenance::unlock::{self, Busy, REPORTED_ANNOTATION};
use crate::results::{self, JobOutcome};
use crate::status::JobRecord;
use anyhow::Context as _;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use operator_framework::{Context, EventType};

use super::{observe, settings};

/// The operator's Jobs of the namespace that run now, as [`Busy`].
fn busy(jobs: &[Job]) -> Busy {
    let mut busy = Busy::default();
    for job in jobs {
        if results::job_outcome(job, None) != JobOutcome::Running {
            continue;
        }
        let labels = job.labels();
        if labels.contains_key(RESTORE_LABEL) || labels.contains_key(CATALOG_LABEL) {
            busy.any = true;
        } else if let Some(pvc) = crate::desired::pvc_of(&job.metadata) {
            busy.pvcs.insert(pvc);
        }
    }
    busy
}

/// Runs the unlock step for `policy` given its backup and maintenance Jobs.
pub(crate) async fn drive(
    ctx: &Context<BackupPolicy>,
    policy: &BackupPolicy,
    backup_jobs: &[JobRecord],
    maintenance_jobs: &[Job],
) -> anyhow::Result<()> {
    let client = ctx.client();
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let api = Api::<Job>::namespaced(client.clone(), &ns);
    // Nothing busy can only remove runs: the namespace's Jobs are listed
    // only when some PVC calls for an unlock at all.
    if !unlock::plan(backup_jobs, &Busy::default()).is_empty() {
        start(ctx, policy, backup_jobs, &api).await?;
    }
    let unreported = maintenance_jobs.iter().filter(|j| {
        j.labels().get(MAINTENANCE_LABEL).map(String::as_str) == Some(unlock::TASK)
            && !j.annotations().contains_key(REPORTED_ANNOTATION)
    });
    for job in unreported {
        let outcome = results::job_outcome(job, None);
        if outcome == JobOutcome::Running {
            continue;
        }
        let result = observe::job_result(&client, &ns, job).await?;
        let pvc = crate::desired::pvc_of(&job.metadata).unwrap_or_default();
        let (warning, reason, message) = unlock::report(&pvc, &outcome, result.as_ref());
        let kind = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        tracing::info!(policy = %name, %pvc, reason, "{message}");
        ctx.event(kind, reason, &message).await?;
        let patch = serde_json::json!({"metadata": {"annotations": {REPORTED_ANNOTATION: "true"}}});
        api.patch(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("marking unlock Job {} reported", job.name_any()))?;
    }
    Ok(())
}

/// Starts the unlock Jobs the planner asks for, given what runs in the
/// namespace now.
async fn start(
    ctx: &Context<BackupPolicy>,
    policy: &BackupPolicy,
    backup_jobs: &[JobRecord],
    api: &Api<Job>,
) -> anyhow::Result<()> {
    let client = ctx.client();
    let ns = policy.namespace().unwrap_or_default();
    let managed = format!("app.kubernetes.io/managed-by={}", crate::desired::MANAGER);
    let all = api
        .list(&ListParams::default().labels(&managed))
        .await
        .with_context(|| format!("listing the operator's Jobs in {ns}"))?
        .items;
    let runs = unlock::plan(backup_jobs, &busy(&all));
    if runs.is_empty() {
        return Ok(());
    }
    let root = super::policy::root_movers(&client, policy, &ns)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for run in runs {
        let mut job = unlock::unlock_job(policy, &run, &settings(ctx).mover_image)?;
        if root {
            crate::pod_security::elevate_job(&mut job, &policy.spec.job.identity);
        }
        ctx.adopt(&mut job);
        match api.create(&PostParams::default(), &job).await {
            Ok(_) => {
                let note = format!(
                    "Job {} met a lock on PVC {}'s repository and no Job of it runs: removing stale locks",
                    run.trigger, run.pvc
                );
                tracing::warn!(policy = %policy.name_any(), pvc = %run.pvc, "{note}");
                ctx.event(EventType::Normal, "UnlockStarted", &note).await?;
            }
            // Already started for this trigger.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).context("creating the unlock Job"),
        }
    }
    Ok(())
}
