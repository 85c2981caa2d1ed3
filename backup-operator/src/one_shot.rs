//! Jobs that run the mover once on a policy's repositories without
//! mounting a PVC: the catalog listing and the stale-lock removal.

use crate::api::BackupPolicy;
use crate::desired::{self, PolicyRepos};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// A one-shot mover Job: no retry, ten minutes at most, kept an hour after
/// it ends (a safety net for catalog Jobs, which the operator deletes once
/// read; for an unlock Job, whose name stands for its trigger, the bound on
/// how soon the same trigger could start another).
pub fn job(
    policy: &BackupPolicy,
    repos: &PolicyRepos<'_>,
    job_name: String,
    args: Vec<String>,
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
) -> Job {
    let (env, volumes, mounts) = desired::destination_access(repos.dest);
    Job {
        metadata: ObjectMeta {
            name: Some(job_name),
            namespace: Some(repos.ns.clone()),
            labels: Some(labels.clone()),
            annotations,
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(600),
            ttl_seconds_after_finished: Some(3600),
            template: desired::mover_pod(
                repos.image,
                args,
                env,
                volumes,
                mounts,
                &policy.spec.job,
                labels,
            ),
            ..Default::default()
        }),
        status: None,
    }
}
