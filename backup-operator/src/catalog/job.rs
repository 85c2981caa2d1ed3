//! The catalog Job of a policy, when one is due, and the PVC spec the
//! backup Jobs hand to the mover to record.

use crate::api::{BackupPolicy, BackupPolicyStatus, CATALOG_LABEL, RecordedPvc};
use crate::desired::{self, DesiredError};
use crate::naming;
use crate::status::JobRecord;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    EnvVar, PersistentVolumeClaim, Pod, PodSpec, PodTemplateSpec, VolumeMount,
};

/// Environment variable the mover records the PVC spec from.
pub const PVC_SPEC_ENV: &str = "MOVER_PVC_SPEC";

/// Why a catalog round should start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The policy was never cataloged (new policy, new cluster).
    First,
    /// A backup Job finished after the last listing.
    AfterBackup,
    /// The periodic listing is due.
    Periodic,
}

/// Whether a catalog round is due.
pub fn due(
    status: &BackupPolicyStatus,
    jobs: &[JobRecord],
    now: jiff::Timestamp,
    interval: std::time::Duration,
) -> Option<Due> {
    let Some(last) = status.last_catalog_time.as_ref().map(|t| t.0) else {
        return Some(Due::First);
    };
    if jobs.iter().filter_map(|j| j.finished).any(|f| f >= last) {
        return Some(Due::AfterBackup);
    }
    let age = now.duration_since(last);
    (age.as_secs() >= i64::try_from(interval.as_secs()).unwrap_or(i64::MAX))
        .then_some(Due::Periodic)
}

/// The PVCs a round lists: the selected ones, the names in `targets.names`
/// (a new cluster may not have the PVCs yet) and those with Backup objects.
pub fn pvcs_to_list(
    policy: &BackupPolicy,
    selected: &[String],
    with_backups: &[String],
) -> Vec<String> {
    let mut all: Vec<String> = selected
        .iter()
        .chain(&policy.spec.targets.names)
        .chain(with_backups)
        .cloned()
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The catalog Job: lists `pvcs`' repositories; no PVC is mounted.
pub fn catalog_job(
    policy: &BackupPolicy,
    pvcs: &[String],
    image: &str,
    now: jiff::Timestamp,
) -> Result<Job, DesiredError> {
    let repos = desired::policy_repos(policy, image)?;
    let (name, ns) = (&repos.name, &repos.ns);
    let mut args: Vec<String> = vec!["catalog".into(), "--policy".into(), name.clone()];
    for pvc in pvcs {
        args.push("--target".into());
        args.push(format!(
            "{pvc}={}",
            desired::repository(repos.dest, ns, pvc)
        ));
    }
    args.extend(["--result-file".into(), "/dev/termination-log".into()]);
    let mut labels = desired::labels(name, "");
    labels.remove(crate::api::PVC_LABEL);
    labels.insert(CATALOG_LABEL.to_string(), "true".to_string());
    let job_name = naming::catalog_job_name(name, now.as_second());
    Ok(crate::one_shot::job(
        policy, &repos, job_name, args, labels, None,
    ))
}

/// What the backup Jobs record about a PVC.
pub fn recorded(pvc: &PersistentVolumeClaim) -> RecordedPvc {
    let spec = pvc.spec.clone().unwrap_or_default();
    RecordedPvc {
        size: spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").map(|q| q.0.clone())),
        access_modes: spec.access_modes.unwrap_or_default(),
        storage_class_name: spec.storage_class_name,
        volume_mode: spec.volume_mode,
        labels: pvc.metadata.labels.clone().unwrap_or_default(),
    }
}

/// Adds `MOVER_PVC_SPEC` to the mover container of a backup pod template.
pub fn record_pvc_spec(template: &mut PodTemplateSpec, pvc: &RecordedPvc) {
    if let Ok(json) = serde_json::to_string(pvc) {
        desired::set_mover_env(template, PVC_SPEC_ENV, &json);
    }
}

/// What a container runs: image, command, args, env, mounts.
type Program = (
    Option<String>,
    Option<Vec<String>>,
    Option<Vec<String>>,
    Option<Vec<EnvVar>>,
    Option<Vec<VolumeMount>>,
);

fn pod_program(spec: Option<&PodSpec>) -> Option<Vec<Program>> {
    let spec = spec?;
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return None;
    }
    Some(
        spec.containers
            .iter()
            .map(|c| {
                (
                    c.image.clone(),
                    c.command.clone(),
                    c.args.clone(),
                    c.env.clone(),
                    c.volume_mounts.clone(),
                )
            })
            .collect(),
    )
}

/// The pod spec runs exactly the expected containers (image, command,
/// args, env, mounts) and no init container: whatever it prints is what
/// the mover prints for this policy.
pub fn same_pod_program(expected: Option<&PodSpec>, actual: Option<&PodSpec>) -> bool {
    let (Some(e), Some(a)) = (pod_program(expected), pod_program(actual)) else {
        return false;
    };
    let volumes = |s: Option<&PodSpec>| {
        s.and_then(|s| s.volumes.as_ref())
            .map(|v| v.iter().map(|v| v.name.clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    e == a && volumes(expected) == volumes(actual)
}

fn template_spec(job: &Job) -> Option<&PodSpec> {
    job.spec.as_ref()?.template.spec.as_ref()
}

/// `actual` is a catalog Job with the program `expected` has.
pub fn same_program(expected: &Job, actual: &Job) -> bool {
    same_pod_program(template_spec(expected), template_spec(actual))
}

/// The pod was made by the Job controller for `job`: the controller-uid
/// label and a controller ownerReference name the Job's uid (both can be
/// forged by a namespace user, so the pod must also run the Job's program).
pub fn pod_of_job(pod: &Pod, job: &Job) -> bool {
    let Some(uid) = job.metadata.uid.as_deref() else {
        return false;
    };
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("batch.kubernetes.io/controller-uid"))
        .is_some_and(|v| v == uid);
    let owned = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.kind == "Job" && o.controller == Some(true));
    let done = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
    labelled && owned && done && same_pod_program(template_spec(job), pod.spec.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use std::time::Duration;

    fn policy() -> BackupPolicy {
        let mut p = BackupPolicy::new(
            "nightly",
            serde_json::from_value(serde_json::json!({
                "targets": {"names": ["a", "gone"]}, "schedule": "@daily",
                "destination": {"s3": {"endpoint": "http://s3:9000", "bucket": "b", "credentialsSecretRef": {"name": "c"}},
                                "repositoryPasswordSecretRef": {"name": "pw"}}
            }))
            .expect("spec"),
        );
        p.metadata.namespace = Some("ns".into());
        p
    }

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().expect("ts")
    }

    #[test]
    fn a_round_is_due_first_after_a_backup_and_periodically() {
        let mut st = BackupPolicyStatus::default();
        let every = Duration::from_secs(600);
        let now = ts("2026-01-01T10:00:00Z");
        assert_eq!(due(&st, &[], now, every), Some(Due::First));
        st.last_catalog_time = Some(Time(ts("2026-01-01T09:55:00Z")));
        assert_eq!(due(&st, &[], now, every), None);
        let job = JobRecord {
            name: "j".into(),
            pvc: "a".into(),
            created: None,
            finished: Some(ts("2026-01-01T09:56:00Z")),
            outcome: crate::results::JobOutcome::Succeeded,
            result: None,
        };
        assert_eq!(
            due(&st, std::slice::from_ref(&job), now, every),
            Some(Due::AfterBackup)
        );
        let old = JobRecord {
            finished: Some(ts("2026-01-01T09:00:00Z")),
            ..job
        };
        assert_eq!(due(&st, &[old], now, every), None);
        assert_eq!(
            due(&st, &[], ts("2026-01-01T10:05:00Z"), every),
            Some(Due::Periodic)
        );
    }

    #[test]
    fn the_catalog_job_lists_every_pvc_and_mounts_none() {
        let p = policy();
        let pvcs = pvcs_to_list(&p, &["a".into()], &["old".into()]);
        assert_eq!(pvcs, ["a", "gone", "old"]);
        let job = catalog_job(&p, &pvcs, "img", ts("2026-01-01T10:00:00Z")).expect("job");
        let labels = job.metadata.labels.clone().expect("labels");
        assert_eq!(labels[CATALOG_LABEL], "true");
        assert!(job.metadata.name.as_deref().is_some_and(|n| n.len() <= 63));
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod");
        let args = pod.containers[0].args.clone().expect("args");
        assert_eq!(&args[..3], ["catalog", "--policy", "nightly"]);
        assert!(args.contains(&"gone=s3:http://s3:9000/b/ns/gone".to_string()));
        assert!(
            pod.volumes
                .unwrap_or_default()
                .iter()
                .all(|v| v.persistent_volume_claim.is_none())
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        let env = pod.containers[0].env.clone().unwrap_or_default();
        assert!(
            env.iter()
                .all(|e| e.name != "RESTIC_PASSWORD" || e.value.is_none())
        );
    }

    #[test]
    fn only_the_jobs_own_pod_running_its_program_is_read() {
        let mut job =
            catalog_job(&policy(), &["a".into()], "img", ts("2026-01-01T10:00:00Z")).expect("job");
        job.metadata.uid = Some("job-uid".into());
        let pod = |uid: &str, args_extra: Option<&str>| {
            let mut spec = job
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.clone())
                .expect("spec");
            if let Some(a) = args_extra {
                spec.containers[0]
                    .args
                    .get_or_insert_with(Vec::new)
                    .push(a.into());
            }
            Pod {
                metadata: ObjectMeta {
                    labels: Some(
                        [(
                            "batch.kubernetes.io/controller-uid".to_string(),
                            uid.to_string(),
                        )]
                        .into(),
                    ),
                    owner_references: Some(vec![
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                            kind: "Job".into(),
                            uid: uid.into(),
                            controller: Some(true),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                },
                spec: Some(spec),
                status: Some(k8s_openapi::api::core::v1::PodStatus {
                    phase: Some("Succeeded".into()),
                    ..Default::default()
                }),
            }
        };
        assert!(pod_of_job(&pod("job-uid", None), &job));
        assert!(
            !pod_of_job(&pod("other-uid", None), &job),
            "another Job's pod"
        );
        assert!(
            !pod_of_job(&pod("job-uid", Some("--target=x=/evil")), &job),
            "another program"
        );
        let mut forged = pod("job-uid", None);
        forged.metadata.owner_references = None;
        assert!(!pod_of_job(&forged, &job), "no ownerReference");
        let mut init = pod("job-uid", None);
        if let Some(s) = init.spec.as_mut() {
            s.init_containers = Some(vec![Default::default()]);
        }
        assert!(
            !pod_of_job(&init, &job),
            "an init container could prepare /tmp"
        );
        let other =
            catalog_job(&policy(), &["b".into()], "img", ts("2026-01-01T10:00:00Z")).expect("job");
        assert!(!same_program(&other, &job));
    }

    #[test]
    fn the_pvc_spec_goes_into_the_mover_env() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "labels": {"app": "db"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeMode": "Filesystem",
                     "resources": {"requests": {"storage": "3Gi"}}}
        }))
        .expect("pvc");
        let r = recorded(&pvc);
        assert_eq!(r.size.as_deref(), Some("3Gi"));
        let mut cj = desired::cronjob(&policy(), "a", "img").expect("cronjob");
        let tpl = &mut cj
            .spec
            .as_mut()
            .and_then(|s| s.job_template.spec.as_mut())
            .expect("job")
            .template;
        record_pvc_spec(tpl, &r);
        record_pvc_spec(tpl, &r);
        let env = tpl
            .spec
            .as_ref()
            .map(|p| p.containers[0].env.clone().unwrap_or_default())
            .unwrap_or_default();
        let recorded: Vec<_> = env.iter().filter(|e| e.name == PVC_SPEC_ENV).collect();
        assert_eq!(recorded.len(), 1);
        let back: RecordedPvc =
            serde_json::from_str(recorded[0].value.as_deref().unwrap_or("")).expect("json");
        assert_eq!(back, r);
    }
}
