//! The cluster identity backups record in a repository's owner marker
//! (`MOVER_CLUSTER_ID`): forget/prune run only where the marker names this
//! cluster, so a repository shared with, or restored from, another cluster
//! is never pruned by us unless its policy sets `retention.adoptRepository`.
//!
//! The default identity is the uid of the `kube-system` Namespace: stable
//! for the life of a cluster, different on a rebuilt one, and readable with
//! the `namespaces get` the operator already has. Admins who move a
//! workload between clusters on purpose set `--cluster-id` to the same
//! value on both.

use anyhow::Context as _;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, PodTemplateSpec};
use kube::{Api, Client};

/// The mover's environment variable for the identity.
pub const CLUSTER_ID_ENV: &str = "MOVER_CLUSTER_ID";

/// `configured` when set, else the `kube-system` Namespace's uid.
pub async fn resolve(client: &Client, configured: &str) -> anyhow::Result<String> {
    let configured = configured.trim();
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    let ns = Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await
        .context(
            "reading the kube-system Namespace for the cluster identity \
             (grant namespaces get, or set --cluster-id / CLUSTER_ID)",
        )?;
    ns.metadata
        .uid
        .filter(|u| !u.is_empty())
        .context("the kube-system Namespace has no uid: set --cluster-id / CLUSTER_ID")
}

/// Sets the identity on the mover container of a pod template (replacing
/// an earlier value); an empty identity leaves the template unchanged.
pub fn stamp(template: &mut PodTemplateSpec, cluster_id: &str) {
    if !cluster_id.is_empty() {
        crate::desired::set_mover_env(template, CLUSTER_ID_ENV, cluster_id);
    }
}

/// [`stamp`] on a CronJob's Job template.
pub fn stamp_cronjob(cj: &mut CronJob, cluster_id: &str) {
    if let Some(t) = cj.spec.as_mut().and_then(|s| s.job_template.spec.as_mut()) {
        stamp(&mut t.template, cluster_id);
    }
}

/// [`stamp`] on a Job.
pub fn stamp_job(job: &mut Job, cluster_id: &str) {
    if let Some(s) = job.spec.as_mut() {
        stamp(&mut s.template, cluster_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(t: &PodTemplateSpec) -> Vec<(String, Option<String>)> {
        t.spec
            .iter()
            .flat_map(|p| &p.containers)
            .flat_map(|c| c.env.iter().flatten())
            .filter(|e| e.name == CLUSTER_ID_ENV)
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn every_backup_job_carries_the_cluster_identity_once() {
        let policy = crate::desired::tests::policy();
        let mut cj = crate::desired::cronjob(&policy, "data", "img").expect("cronjob");
        stamp_cronjob(&mut cj, "uid-1");
        stamp_cronjob(&mut cj, "uid-2");
        let t = &cj
            .spec
            .expect("spec")
            .job_template
            .spec
            .expect("job")
            .template;
        assert_eq!(env_of(t), [(CLUSTER_ID_ENV.into(), Some("uid-2".into()))]);

        let mut job = crate::desired::manual_job(&policy, "data", "img", "1").expect("job");
        stamp_job(&mut job, "");
        assert!(env_of(&job.spec.expect("spec").template).is_empty());
    }
}
