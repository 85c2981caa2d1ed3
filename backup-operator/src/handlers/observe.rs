//! Reading the cluster: PVCs, Secrets, Jobs and the mover results their pods left.

use crate::api::{BackupPolicy, POLICY_LABEL};
use crate::results::{self, JobOutcome, MoverResult};
use crate::status::JobRecord;
use crate::targets::PvcInfo;
use anyhow::Context as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

fn pvc_info(meta: &ObjectMeta) -> PvcInfo {
    PvcInfo {
        name: meta.name.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        terminating: meta.deletion_timestamp.is_some(),
    }
}

/// The PVCs of a namespace, from the watch cache once it has synced.
pub(crate) async fn pvcs(client: &Client, ns: &str) -> anyhow::Result<Vec<PvcInfo>> {
    if let Some(cached) = super::cached_pvcs(ns) {
        return Ok(cached.iter().map(|p| pvc_info(&p.metadata)).collect());
    }
    let list = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .list_metadata(&ListParams::default())
        .await
        .with_context(|| format!("listing PVCs in {ns}"))?;
    Ok(list.items.iter().map(|p| pvc_info(&p.metadata)).collect())
}

/// What backups record about each PVC of a namespace (spec and labels),
/// from the watch cache once it has synced.
pub(crate) async fn pvc_specs(
    client: &Client,
    ns: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, crate::api::RecordedPvc>> {
    let record = |p: &PersistentVolumeClaim| {
        (
            p.metadata.name.clone().unwrap_or_default(),
            crate::catalog::job::recorded(p),
        )
    };
    if let Some(cached) = super::cached_pvcs(ns) {
        return Ok(cached.iter().map(|p| record(p)).collect());
    }
    let list = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing PVCs in {ns}"))?;
    Ok(list.items.iter().map(record).collect())
}

/// Names of the policy's referenced Secrets that do not exist.
pub(crate) async fn missing_secrets(
    client: &Client,
    policy: &BackupPolicy,
    ns: &str,
) -> anyhow::Result<Vec<String>> {
    let Some(dest) = &policy.spec.destination else {
        return Ok(vec![]);
    };
    let mut names = vec![dest.repository_password_secret_ref.name.clone()];
    if let Some(s3) = &dest.s3 {
        names.push(s3.credentials_secret_ref.name.clone());
    }
    names.sort();
    names.dedup();
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    let mut missing = Vec::new();
    for n in names {
        // Only existence is checked; the data never leaves the API server here.
        if api
            .get_metadata_opt(&n)
            .await
            .with_context(|| format!("reading Secret {ns}/{n}"))?
            .is_none()
        {
            missing.push(n);
        }
    }
    Ok(missing)
}

/// The mover result of a finished Job: the termination message of its newest
/// pod. Only pods carrying the Job's uid count: anyone in the namespace can
/// make a pod labelled `job-name=<job>` with a forged result.
pub(crate) async fn job_result(
    client: &Client,
    ns: &str,
    job: &Job,
) -> anyhow::Result<Option<MoverResult>> {
    let pods = super::blocked::pods_of_job(client, ns, job).await?;
    let mut newest: Option<(Option<jiff::Timestamp>, MoverResult)> = None;
    for pod in pods {
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let statuses = pod
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default();
        for cs in statuses {
            let msg = cs.state.and_then(|s| s.terminated).and_then(|t| t.message);
            if let Some(r) = msg.as_deref().and_then(results::parse_result)
                && newest.as_ref().is_none_or(|(t, _)| *t <= created)
            {
                newest = Some((created, r));
            }
        }
    }
    Ok(newest.map(|(_, r)| r))
}

/// A policy's Jobs apart from its catalog Jobs.
pub(crate) struct PolicyJobs {
    /// Backup Jobs with their outcome and mover result.
    pub backups: Vec<JobRecord>,
    /// Maintenance Jobs (unlock), as they are.
    pub maintenance: Vec<Job>,
}

/// The policy's backup and maintenance Jobs, from one listing.
pub(crate) async fn policy_jobs(
    client: &Client,
    ns: &str,
    policy: &str,
) -> anyhow::Result<PolicyJobs> {
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!(
            "{POLICY_LABEL}={policy},!{}",
            crate::api::CATALOG_LABEL
        )))
        .await
        .with_context(|| format!("listing backup Jobs of {ns}/{policy}"))?;
    let (maintenance, backups): (Vec<Job>, Vec<Job>) = jobs
        .items
        .into_iter()
        .partition(|j| j.labels().contains_key(crate::api::MAINTENANCE_LABEL));
    let mut out = Vec::new();
    for job in backups {
        let name = job.metadata.name.clone().unwrap_or_default();
        let pvc = crate::desired::pvc_of(&job.metadata).unwrap_or_default();
        let finished_outcome = results::job_outcome(&job, None);
        let result = if finished_outcome == JobOutcome::Running {
            None
        } else {
            job_result(client, ns, &job).await?
        };
        let outcome = results::job_outcome(&job, result.as_ref());
        let finished = results::job_finished_at(&job);
        out.push(JobRecord {
            name,
            pvc,
            created: job.metadata.creation_timestamp.as_ref().map(|t| t.0),
            finished: if outcome == JobOutcome::Running {
                None
            } else {
                finished
            },
            outcome,
            result,
        });
    }
    Ok(PolicyJobs {
        backups: out,
        maintenance,
    })
}
