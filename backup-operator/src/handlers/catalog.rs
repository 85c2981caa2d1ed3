//! The catalog round of a policy: read a finished catalog Job's listing
//! from its pod's log, create and delete `Backup` objects, start the next
//! Job when one is due. The decisions are in `crate::catalog`.

use super::settings;
use crate::api::{Backup, BackupPolicy, CATALOG_LABEL, POLICY_LABEL};
use crate::catalog::{self, job as cjob, plan};
use crate::results::{self, JobOutcome};
use crate::status::JobRecord;
use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, PropagationPolicy,
};
use kube::{Api, ResourceExt};
use operator_framework::Context;

/// A failed catalog Job is kept this long before the next try (no tight loop).
const RETRY_AFTER_SECS: i64 = 60;
/// Backup objects created or deleted at once.
const PARALLEL: usize = 16;

/// What a reconcile learned from the catalog.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// A listing was read and applied.
    pub round: Option<(plan::Plan, jiff::Timestamp)>,
    /// A catalog Job failed (its reason).
    pub failed: Option<String>,
    /// Look again after this long (a pod log not readable yet, a failed
    /// Job waiting for its retry): no watch event may come.
    pub retry_after: Option<std::time::Duration>,
}

fn label_selector(policy: &str) -> String {
    format!("{POLICY_LABEL}={policy},{CATALOG_LABEL}=true")
}

/// The PVCs a catalog Job was asked about (from its own args).
fn requested(job: &Job) -> Vec<String> {
    let args = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.args.clone())
        .unwrap_or_default();
    args.windows(2)
        .filter(|w| w[0] == "--target")
        .filter_map(|w| w[1].split_once('=').map(|(p, _)| p.to_string()))
        .collect()
}

/// Drives the policy's catalog; `jobs` are its backup Jobs.
pub(crate) async fn drive(
    ctx: &Context<BackupPolicy>,
    policy: &BackupPolicy,
    selected: &[String],
    jobs: &[JobRecord],
    now: jiff::Timestamp,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    if policy.spec.destination.is_none() {
        return Ok(out);
    }
    let name = policy.name_any();
    let ns = policy.namespace().unwrap_or_default();
    let client = ctx.client();
    let job_api = Api::<Job>::namespaced(client.clone(), &ns);
    let backups = Api::<Backup>::namespaced(client.clone(), &ns);
    let listed = job_api
        .list(&ListParams::default().labels(&label_selector(&name)))
        .await
        .with_context(|| format!("listing catalog Jobs of {ns}/{name}"))?;
    let mut busy = false;
    let uid = policy.metadata.uid.clone().unwrap_or_default();
    // Only Jobs this policy made count; a look-alike is neither read nor deleted.
    let ours = listed.items.into_iter().filter(|j| {
        j.owner_references()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
    });
    for job in ours {
        let job_name = job.name_any();
        let outcome = results::job_outcome(&job, None);
        let expected = expected_for(policy, &job, &settings(ctx).mover_image);
        if !expected
            .as_ref()
            .is_some_and(|e| cjob::same_program(e, &job))
        {
            // Not a Job this policy would run (or the policy changed since):
            // nothing it says is used.
            tracing::warn!(job = %job_name, "ignoring a catalog Job that does not run the expected mover program");
            if outcome != JobOutcome::Running {
                delete_job(&job_api, &job_name).await?;
            } else {
                busy = true;
            }
            continue;
        }
        match outcome {
            JobOutcome::Running => busy = true,
            JobOutcome::Succeeded if out.round.is_none() => {
                let created = job
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or(now);
                let Some(log) = catalog_log(&client, &ns, &job).await? else {
                    busy = true;
                    out.retry_after = Some(std::time::Duration::from_secs(5));
                    continue;
                };
                let lines = catalog::parse_log(&log);
                let existing = backups
                    .list(&ListParams::default().labels(&format!("{POLICY_LABEL}={name}")))
                    .await
                    .with_context(|| format!("listing Backups of {ns}/{name}"))?
                    .items;
                let p = plan::plan(policy, &requested(&job), &lines, &existing);
                apply(&backups, &p).await?;
                delete_job(&job_api, &job_name).await?;
                out.round = Some((p, created));
            }
            JobOutcome::Succeeded => delete_job(&job_api, &job_name).await?,
            JobOutcome::Failed { reason, message } => {
                out.failed = Some(format!(
                    "catalog Job {job_name} failed: {reason}: {message}"
                ));
                let finished = results::job_finished_at(&job).unwrap_or(now);
                if now.duration_since(finished).as_secs() >= RETRY_AFTER_SECS {
                    delete_job(&job_api, &job_name).await?;
                } else {
                    busy = true;
                    out.retry_after = Some(std::time::Duration::from_secs(
                        RETRY_AFTER_SECS.unsigned_abs() / 2,
                    ));
                }
            }
        }
    }
    let mut status = policy.status.clone().unwrap_or_default();
    if let Some((_, started)) = &out.round {
        status.last_catalog_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            *started,
        ));
    }
    if busy {
        return Ok(out);
    }
    if let Some(why) = cjob::due(&status, jobs, now, settings(ctx).catalog_interval) {
        let with_backups: Vec<String> = backups
            .list_metadata(&ListParams::default().labels(&format!("{POLICY_LABEL}={name}")))
            .await
            .with_context(|| format!("listing Backups of {ns}/{name}"))?
            .items
            .iter()
            .filter_map(|b| crate::desired::pvc_of(&b.metadata))
            .collect();
        let pvcs = cjob::pvcs_to_list(policy, selected, &with_backups);
        if pvcs.is_empty() {
            return Ok(out);
        }
        let mut job = cjob::catalog_job(policy, &pvcs, &settings(ctx).mover_image, now)?;
        ctx.adopt(&mut job);
        match job_api.create(&PostParams::default(), &job).await {
            Ok(_) => tracing::info!(policy = %name, ?why, pvcs = pvcs.len(), "started catalog Job"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).context("creating the catalog Job"),
        }
    }
    Ok(out)
}

/// The catalog Job this policy would run for the same PVCs.
fn expected_for(policy: &BackupPolicy, job: &Job, mover_image: &str) -> Option<Job> {
    let created = job.metadata.creation_timestamp.as_ref().map(|t| t.0)?;
    cjob::catalog_job(policy, &requested(job), mover_image, created).ok()
}

async fn delete_job(api: &Api<Job>, name: &str) -> anyhow::Result<()> {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting catalog Job {name}")),
    }
}

/// The log of the Job's own pod: labelled with the Job's uid (which the Job
/// controller sets), owned by that Job, running the expected program. A pod
/// a namespace user made to look like it is never read.
async fn catalog_log(client: &kube::Client, ns: &str, job: &Job) -> anyhow::Result<Option<String>> {
    let Some(uid) = job.metadata.uid.clone() else {
        return Ok(None);
    };
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/controller-uid={uid}")))
        .await
        .with_context(|| format!("listing pods of catalog Job {}", job.name_any()))?;
    let Some(pod) = list.items.into_iter().find(|p| cjob::pod_of_job(p, job)) else {
        return Ok(None);
    };
    let params = LogParams {
        container: Some("mover".into()),
        limit_bytes: Some(catalog::MAX_LOG_BYTES),
        ..Default::default()
    };
    let text = pods
        .logs(&pod.name_any(), &params)
        .await
        .with_context(|| format!("reading the log of catalog pod {}", pod.name_any()))?;
    Ok(Some(text))
}

async fn apply(api: &Api<Backup>, p: &plan::Plan) -> anyhow::Result<()> {
    let creates: Vec<anyhow::Result<()>> = futures::stream::iter(p.creates.clone())
        .map(|b| create_backup(api.clone(), b))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    creates.into_iter().collect::<anyhow::Result<()>>()?;
    let deletes: Vec<anyhow::Result<()>> = futures::stream::iter(p.deletes.clone())
        .map(|name| delete_backup(api.clone(), name))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    deletes.into_iter().collect()
}

async fn create_backup(api: Api<Backup>, b: Backup) -> anyhow::Result<()> {
    let name = b.name_any();
    match api.create(&PostParams::default(), &b).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).with_context(|| format!("creating Backup {name}")),
    }
    // The status is a subresource: the create ignored it.
    let status = serde_json::json!({"status": b.status});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .with_context(|| format!("writing the status of Backup {name}"))?;
    Ok(())
}

async fn delete_backup(api: Api<Backup>, name: String) -> anyhow::Result<()> {
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting Backup {name}")),
    }
}
