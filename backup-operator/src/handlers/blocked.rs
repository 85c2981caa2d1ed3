//! Reads why a policy's running backup Jobs are stuck: the Jobs' Events, their
//! pods (by the Job's own uid: its `controller-uid` label and controller
//! owner reference, not the `job-name` label any pod can carry) and those
//! pods' Events.

use crate::api::POLICY_LABEL;
use crate::job_failures::{self, BlockedJob};
use anyhow::Context as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::ListParams;
use kube::{Api, Client};
use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

/// Label the Job controller puts on the pods of a Job: its uid.
pub(crate) const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

fn running(job: &Job) -> bool {
    let status = job.status.as_ref();
    let done = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True");
    !done && status.and_then(|s| s.completion_time.as_ref()).is_none()
}

async fn events_of(api: &Api<Event>, uid: &str) -> anyhow::Result<Vec<Event>> {
    Ok(api
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await
        .with_context(|| format!("listing Events of {uid}"))?
        .items)
}

/// The pods of a Job: only those carrying the Job's uid.
pub(crate) async fn pods_of_job(client: &Client, ns: &str, job: &Job) -> anyhow::Result<Vec<Pod>> {
    let Some(uid) = job.metadata.uid.as_deref() else {
        return Ok(vec![]);
    };
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{CONTROLLER_UID_LABEL}={uid}")))
        .await
        .with_context(|| format!("listing pods of Job {ns}/{uid}"))?
        .items;
    // The Job controller also makes itself the pods' controller owner.
    Ok(pods
        .into_iter()
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.controller == Some(true))
        })
        .collect())
}

/// Why `job` is stuck, if it runs and is.
pub(crate) async fn job_stuck(
    client: &Client,
    ns: &str,
    job: &Job,
) -> anyhow::Result<Option<job_failures::Blocked>> {
    let Some(uid) = job.metadata.uid.as_deref().filter(|_| running(job)) else {
        return Ok(None);
    };
    let events = Api::<Event>::namespaced(client.clone(), ns);
    let mut pods = Vec::new();
    for pod in pods_of_job(client, ns, job).await? {
        let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        let pod_events = match pod.metadata.uid.as_deref() {
            Some(pod_uid) if pending => events_of(&events, pod_uid).await?,
            _ => vec![],
        };
        pods.push((pod, pod_events));
    }
    let job_events = if pods.is_empty() {
        events_of(&events, uid).await?
    } else {
        vec![]
    };
    Ok(job_failures::job_blocked(&job_events, &pods))
}

/// The policy's running backup Jobs that are stuck.
pub(crate) async fn stuck_jobs(
    client: &Client,
    ns: &str,
    policy: &str,
) -> anyhow::Result<Vec<BlockedJob>> {
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{POLICY_LABEL}={policy}")))
        .await
        .with_context(|| format!("listing backup Jobs of {ns}/{policy}"))?;
    let mut out = Vec::new();
    for job in jobs.items.iter().filter(|j| running(j)) {
        if let Some(blocked) = job_stuck(client, ns, job).await? {
            out.push(BlockedJob {
                job: job.metadata.name.clone().unwrap_or_default(),
                pvc: crate::desired::pvc_of(&job.metadata).unwrap_or_default(),
                blocked,
            });
        }
    }
    out.sort_by(|a, b| (&a.pvc, &a.job).cmp(&(&b.pvc, &b.job)));
    Ok(out)
}

/// Policies with running Jobs, which the job tick looks at again: a stuck
/// pod changes no Job, so no watch event would bring the policy back.
fn running_policies() -> &'static Mutex<BTreeSet<(String, String)>> {
    static SET: OnceLock<Mutex<BTreeSet<(String, String)>>> = OnceLock::new();
    SET.get_or_init(Default::default)
}

/// Records whether the policy has running Jobs.
pub(crate) fn track(ns: &str, policy: &str, has_running: bool) {
    if let Ok(mut set) = running_policies().lock() {
        let key = (ns.to_string(), policy.to_string());
        if has_running {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }
}

/// Whether the policy had running Jobs at its last reconcile.
pub(crate) fn has_running(ns: &str, policy: &str) -> bool {
    running_policies()
        .lock()
        .map(|set| set.contains(&(ns.to_string(), policy.to_string())))
        .unwrap_or(false)
}
