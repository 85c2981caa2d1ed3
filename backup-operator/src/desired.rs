//! Desired state: the CronJobs, Jobs and PVCs a policy or restore asks for.
//! Pure functions of the spec; the handlers apply what these return.

use crate::api::{
    BackupPolicy, Destination, JobSettings, POLICY_LABEL, PVC_ANNOTATION, PVC_LABEL, RESTORE_LABEL,
};
use crate::naming;
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, NFSVolumeSource,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, ResourceRequirements,
    SecretKeySelector, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// Where the PVC is mounted in mover pods; fixed so snapshot paths are stable.
pub const DATA_MOUNT: &str = "/data";
/// Where a restore target PVC is mounted.
pub const RESTORE_MOUNT: &str = "/restore";
/// Where an NFS destination is mounted.
pub const NFS_MOUNT: &str = "/repo";
/// Label value of `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "backup-operator";

/// Why desired state cannot be computed from a spec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DesiredError {
    /// The policy has no destination but its method needs one.
    #[error("spec.destination is required for method {0}")]
    NoDestination(String),
}

/// Labels on every object made for (policy, pvc). Policy names are at most
/// 63 characters (CEL); a longer PVC name is shortened with a hash and kept
/// whole in [`pvc_annotations`].
pub fn labels(policy: &str, pvc: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (POLICY_LABEL.to_string(), policy.to_string()),
        (PVC_LABEL.to_string(), naming::label_value(pvc)),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGER.to_string(),
        ),
    ])
}

/// Annotations on every object made for a PVC: its full name.
pub fn pvc_annotations(pvc: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(PVC_ANNOTATION.to_string(), pvc.to_string())])
}

/// The PVC an object was made for: the annotation, else (objects made
/// before it existed) the label.
pub fn pvc_of(meta: &ObjectMeta) -> Option<String> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(PVC_ANNOTATION))
        .or_else(|| meta.labels.as_ref().and_then(|l| l.get(PVC_LABEL)))
        .cloned()
}

/// Repository URL for one PVC, as the mover reads it (no credentials inside).
pub fn repository(dest: &Destination, namespace: &str, pvc: &str) -> String {
    let sub = naming::repository_subpath(namespace, pvc);
    if let Some(s3) = &dest.s3 {
        let endpoint = s3.endpoint.trim_end_matches('/');
        let prefix = s3
            .prefix
            .as_deref()
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty());
        match prefix {
            Some(p) => format!("s3:{endpoint}/{}/{p}/{sub}", s3.bucket),
            None => format!("s3:{endpoint}/{}/{sub}", s3.bucket),
        }
    } else {
        format!("{NFS_MOUNT}/{sub}")
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Environment and volumes that give the mover access to the destination.
pub(crate) fn destination_access(
    dest: &Destination,
) -> (Vec<EnvVar>, Vec<Volume>, Vec<VolumeMount>) {
    let pw = &dest.repository_password_secret_ref;
    let mut env = vec![secret_env("RESTIC_PASSWORD", &pw.name, &pw.key)];
    let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
    if let Some(s3) = &dest.s3 {
        let c = &s3.credentials_secret_ref;
        env.push(secret_env(
            "AWS_ACCESS_KEY_ID",
            &c.name,
            &c.access_key_id_key,
        ));
        env.push(secret_env(
            "AWS_SECRET_ACCESS_KEY",
            &c.name,
            &c.secret_access_key_key,
        ));
        env.push(plain_env(
            "AWS_DEFAULT_REGION",
            s3.region.as_deref().unwrap_or("us-east-1"),
        ));
        env.push(plain_env(
            "MOVER_S3_PATH_STYLE",
            if s3.path_style { "true" } else { "false" },
        ));
    }
    if let Some(nfs) = &dest.nfs {
        volumes.push(Volume {
            name: "repository".into(),
            nfs: Some(NFSVolumeSource {
                server: nfs.server.clone(),
                path: nfs.path.clone(),
                read_only: Some(false),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "repository".into(),
            mount_path: NFS_MOUNT.into(),
            ..Default::default()
        });
    }
    (env, volumes, mounts)
}

/// Default mover resources: enough for restic-like memory use, bounded.
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("1Gi".into()),
        )])),
        ..Default::default()
    }
}

/// The capabilities a root mover operation needs (see
/// [`crate::pod_security::root_capabilities`]).
pub fn mover_capabilities(operation: &str) -> Vec<String> {
    crate::pod_security::root_capabilities(operation)
}

/// A mover pod: a non-root user with every capability dropped (root only
/// through [`crate::pod_security::elevate_pod`] where the admin allows it),
/// the runtime's default seccomp profile, no privilege escalation, the
/// namespace's mover ServiceAccount without a token, no service links;
/// read-only root filesystem, `/tmp` as an emptyDir, result in the
/// termination message.
pub(crate) fn mover_pod(
    image: &str,
    args: Vec<String>,
    env: Vec<EnvVar>,
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
    settings: &JobSettings,
    labels: BTreeMap<String, String>,
) -> PodTemplateSpec {
    let operation = args.first().map_or("", String::as_str).to_string();
    let operation = operation.as_str();
    let mut volumes = volumes;
    let mut mounts = mounts;
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    });
    let mut env = env;
    env.push(plain_env("TMPDIR", "/tmp"));
    let (pod_security, container_security) =
        crate::pod_security::non_root(operation, &settings.identity);
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            service_account_name: Some(crate::pod_security::MOVER_SERVICE_ACCOUNT.into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(pod_security),
            containers: vec![Container {
                name: "mover".into(),
                image: Some(image.into()),
                image_pull_policy: Some("IfNotPresent".into()),
                command: Some(vec!["/backup-mover".into()]),
                args: Some(args),
                env: Some(env),
                volume_mounts: Some(mounts),
                resources: Some(settings.resources.clone().unwrap_or_else(default_resources)),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                security_context: Some(container_security),
                ..Default::default()
            }],
            volumes: Some(volumes),
            ..Default::default()
        }),
    };
    if let Some(spec) = template.spec.as_mut() {
        crate::placement::place(spec, settings);
    }
    template
}

/// Sets `name=value` on the mover container of a pod template, replacing
/// an earlier value (what the operator adds to a computed template).
pub fn set_mover_env(template: &mut PodTemplateSpec, name: &str, value: &str) {
    let Some(pod) = template.spec.as_mut() else {
        return;
    };
    for c in pod.containers.iter_mut().filter(|c| c.name == "mover") {
        let env = c.env.get_or_insert_with(Vec::new);
        env.retain(|e| e.name != name);
        env.push(plain_env(name, value));
    }
}

/// What every Job on a policy's repositories starts from.
pub struct PolicyRepos<'a> {
    /// The policy's name.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its destination.
    pub dest: &'a Destination,
    /// The policy's mover image, else the operator's.
    pub image: &'a str,
}

/// [`PolicyRepos`] of `policy`; an error when it has no destination.
pub fn policy_repos<'a>(
    policy: &'a BackupPolicy,
    image: &'a str,
) -> Result<PolicyRepos<'a>, DesiredError> {
    let spec = &policy.spec;
    let dest = spec
        .destination
        .as_ref()
        .ok_or_else(|| DesiredError::NoDestination(format!("{:?}", spec.method)))?;
    Ok(PolicyRepos {
        name: policy.metadata.name.clone().unwrap_or_default(),
        ns: policy.metadata.namespace.clone().unwrap_or_default(),
        dest,
        image: spec.job.mover_image.as_deref().unwrap_or(image),
    })
}

/// The Job template that backs up `pvc` for `policy`.
pub fn backup_job_template(
    policy: &BackupPolicy,
    pvc: &str,
    image: &str,
) -> Result<JobTemplateSpec, DesiredError> {
    let PolicyRepos {
        name,
        ns,
        dest,
        image,
    } = policy_repos(policy, image)?;
    let spec = &policy.spec;
    let mut args: Vec<String> = [
        "backup",
        "--source",
        DATA_MOUNT,
        "--repository",
        &repository(dest, &ns, pvc),
        "--namespace",
        &ns,
        "--policy",
        &name,
        "--pvc",
        pvc,
        "--result-file",
        "/dev/termination-log",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(spec.retention.mover_args(spec.time_zone.as_deref()));
    args.extend([
        "--prune-grace".to_string(),
        prune_grace(spec.job.active_deadline_seconds),
    ]);
    for glob in &spec.exclude {
        args.extend(["--exclude".to_string(), glob.clone()]);
    }
    let (env, mut volumes, mut mounts) = destination_access(dest);
    volumes.push(Volume {
        name: "data".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: pvc.into(),
            read_only: Some(true),
        }),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: "data".into(),
        mount_path: DATA_MOUNT.into(),
        read_only: Some(true),
        ..Default::default()
    });
    let labels = labels(&name, pvc);
    Ok(JobTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: Some(pvc_annotations(pvc)),
            ..Default::default()
        }),
        spec: Some(JobSpec {
            backoff_limit: Some(spec.job.backoff_limit),
            active_deadline_seconds: Some(spec.job.active_deadline_seconds),
            template: mover_pod(image, args, env, volumes, mounts, &spec.job, labels),
            ..Default::default()
        }),
    })
}

/// The CronJob that backs up `pvc` on the policy's schedule.
pub fn cronjob(policy: &BackupPolicy, pvc: &str, image: &str) -> Result<CronJob, DesiredError> {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let spec = &policy.spec;
    Ok(CronJob {
        metadata: ObjectMeta {
            name: Some(naming::cronjob_name(&name, pvc)),
            namespace: policy.metadata.namespace.clone(),
            labels: Some(labels(&name, pvc)),
            annotations: Some(pvc_annotations(pvc)),
            ..Default::default()
        },
        spec: Some(CronJobSpec {
            schedule: crate::schedule::for_cronjob(&spec.schedule),
            time_zone: spec.time_zone.clone().filter(|tz| !tz.is_empty()),
            suspend: Some(spec.suspend),
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(spec.job.starting_deadline_seconds),
            successful_jobs_history_limit: Some(spec.job.successful_jobs_history_limit),
            failed_jobs_history_limit: Some(spec.job.failed_jobs_history_limit),
            job_template: backup_job_template(policy, pvc, image)?,
        }),
        status: None,
    })
}

/// An on-demand Job for one `run-now` value, from the CronJob's template.
pub fn manual_job(
    policy: &BackupPolicy,
    pvc: &str,
    image: &str,
    run_now: &str,
) -> Result<Job, DesiredError> {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let template = backup_job_template(policy, pvc, image)?;
    let mut labels = labels(&name, pvc);
    labels.insert("backup.backup.example.com/trigger".into(), "manual".into());
    let mut annotations = pvc_annotations(pvc);
    annotations.insert(
        crate::api::RUN_NOW_ANNOTATION.to_string(),
        run_now.to_string(),
    );
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(naming::manual_job_name(&name, pvc, run_now)),
            namespace: policy.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    })
}

/// Everything a restore Job needs to know.
#[derive(Debug, Clone)]
pub struct RestoreJobInput<'a> {
    /// The Restore's name and namespace.
    pub restore: &'a str,
    /// Namespace of the Restore (and the policy).
    pub namespace: &'a str,
    /// The policy supplying destination and credentials.
    pub policy: &'a BackupPolicy,
    /// Source PVC name (the repository is per PVC).
    pub source_pvc: &'a str,
    /// Snapshot id or `latest`.
    pub snapshot: &'a str,
    /// Only snapshots before this time (with `latest`).
    pub before: Option<&'a str>,
    /// PVC written into.
    pub target_pvc: &'a str,
    /// Mover image.
    pub image: &'a str,
    /// Who the mover runs as, if the Restore says (else the policy's).
    pub identity: Option<&'a crate::api::MoverIdentity>,
}

/// The Job that restores one snapshot into the target PVC.
pub fn restore_job(input: &RestoreJobInput<'_>) -> Result<Job, DesiredError> {
    let spec = &input.policy.spec;
    let dest = spec
        .destination
        .as_ref()
        .ok_or_else(|| DesiredError::NoDestination("Restore".into()))?;
    let mut args: Vec<String> = vec![
        "restore".into(),
        "--repository".into(),
        repository(dest, input.namespace, input.source_pvc),
        "--snapshot".into(),
        input.snapshot.into(),
        "--pvc".into(),
        input.source_pvc.into(),
        "--target".into(),
        RESTORE_MOUNT.into(),
        "--result-file".into(),
        "/dev/termination-log".into(),
    ];
    if let Some(before) = input.before {
        args.extend(["--before".to_string(), before.to_string()]);
    }
    let (env, mut volumes, mut mounts) = destination_access(dest);
    volumes.push(Volume {
        name: "target".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: input.target_pvc.into(),
            read_only: Some(false),
        }),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: "target".into(),
        mount_path: RESTORE_MOUNT.into(),
        ..Default::default()
    });
    let labels = BTreeMap::from([
        (RESTORE_LABEL.to_string(), input.restore.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGER.to_string(),
        ),
    ]);
    let image = spec.job.mover_image.as_deref().unwrap_or(input.image);
    let mut settings = spec.job.clone();
    if let Some(identity) = input.identity {
        settings.identity = identity.clone();
    }
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(naming::restore_job_name(input.restore)),
            namespace: Some(input.namespace.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(spec.job.backoff_limit),
            active_deadline_seconds: Some(spec.job.active_deadline_seconds),
            template: mover_pod(image, args, env, volumes, mounts, &settings, labels),
            ..Default::default()
        }),
        status: None,
    })
}

/// Prune deletes a pack only this long after it marked it unused; it must
/// exceed the longest run of a backup that may still refer to the pack
/// (the Job's deadline): the mover's 24 h, or twice the deadline.
fn prune_grace(active_deadline_seconds: i64) -> String {
    format!("{}s", active_deadline_seconds.saturating_mul(2).max(86_400))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::{BackupPolicySpec, SecretKeyRef};

    pub(crate) fn policy() -> BackupPolicy {
        let spec: BackupPolicySpec = serde_json::from_value(serde_json::json!({
            "targets": {"names": ["data"]},
            "schedule": "*/5 * * * *",
            "timeZone": "Europe/Berlin",
            "retention": {"maxBackups": 3, "maxDays": 30},
            "destination": {
                "s3": {"endpoint": "http://10.0.0.1:9000/", "bucket": "backups", "prefix": "/team/",
                        "credentialsSecretRef": {"name": "s3-creds"}},
                "repositoryPasswordSecretRef": {"name": "repo-pw"}
            }
        }))
        .expect("valid spec");
        let mut p = BackupPolicy::new("nightly", spec);
        p.metadata.namespace = Some("apps".into());
        p
    }

    #[test]
    fn repository_is_per_pvc_and_credential_free() {
        let p = policy();
        let dest = p.spec.destination.as_ref().expect("dest");
        assert_eq!(
            repository(dest, "apps", "data"),
            "s3:http://10.0.0.1:9000/backups/team/apps/data"
        );
        let nfs = Destination {
            s3: None,
            nfs: Some(crate::api::NfsDestination {
                server: "nfs".into(),
                path: "/export".into(),
            }),
            repository_password_secret_ref: SecretKeyRef {
                name: "pw".into(),
                key: "password".into(),
            },
        };
        assert_eq!(repository(&nfs, "apps", "data"), "/repo/apps/data");
    }

    #[test]
    fn cronjob_carries_schedule_policy_and_readonly_pvc() {
        let cj = cronjob(&policy(), "data", "img:1").expect("cronjob");
        let spec = cj.spec.expect("spec");
        assert_eq!(spec.schedule, "*/5 * * * *");
        assert_eq!(spec.time_zone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!(spec.suspend, Some(false));
        assert!(cj.metadata.name.expect("name").len() <= naming::CRONJOB_NAME_MAX);
        let pod = spec
            .job_template
            .spec
            .expect("job")
            .template
            .spec
            .expect("pod");
        let c = &pod.containers[0];
        let args = c.args.clone().expect("args");
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--max-count" && w[1] == "3")
        );
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--prune-grace" && w[1] == "86400s")
        );
        assert_eq!(prune_grace(100_000), "200000s");
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--keep-within-days" && w[1] == "30")
        );
        let env = c.env.clone().expect("env");
        let pw = env
            .iter()
            .find(|e| e.name == "RESTIC_PASSWORD")
            .expect("password env");
        assert!(pw.value.is_none(), "secrets only by reference");
        let data = pod
            .volumes
            .expect("volumes")
            .into_iter()
            .find(|v| v.name == "data")
            .expect("data volume");
        assert_eq!(
            data.persistent_volume_claim.expect("pvc").read_only,
            Some(true)
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    }

    #[test]
    fn mover_pods_drop_every_capability_but_what_the_operation_needs() {
        let mut job = manual_job(&policy(), "data", "img", "1").expect("job");
        let pod = job
            .spec
            .clone()
            .and_then(|s| s.template.spec)
            .expect("pod spec");
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.enable_service_links, Some(false));
        assert_eq!(pod.service_account_name.as_deref(), Some("backup-mover"));
        let psc = pod.security_context.expect("pod security context");
        assert_eq!(
            psc.seccomp_profile.map(|p| p.type_).as_deref(),
            Some("RuntimeDefault")
        );
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(crate::pod_security::DEFAULT_UID));
        let sc = pod.containers[0]
            .security_context
            .clone()
            .expect("container security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.expect("capabilities");
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(caps.add, None, "a non-root mover adds nothing");
        // Where root movers are allowed: root, plus exactly DAC_READ_SEARCH.
        crate::pod_security::elevate_job(&mut job, &Default::default());
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod spec");
        assert_eq!(pod.security_context.and_then(|p| p.run_as_user), Some(0));
        let caps = pod.containers[0]
            .security_context
            .clone()
            .and_then(|s| s.capabilities)
            .expect("capabilities");
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(caps.add, Some(vec!["DAC_READ_SEARCH".to_string()]));
        assert_eq!(
            mover_capabilities("restore"),
            ["CHOWN", "FOWNER", "DAC_OVERRIDE", "FSETID"]
        );
        assert!(mover_capabilities("snapshots").is_empty());
        assert!(mover_capabilities("forget").is_empty());
    }

    #[test]
    fn excludes_reach_the_mover() {
        let mut p = policy();
        p.spec.exclude = vec!["*.tmp".into(), "cache/**".into()];
        let job = manual_job(&p, "data", "img", "1").expect("job");
        let args = job
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers[0].args.clone())
            .expect("args");
        let excludes: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "--exclude")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(excludes, ["*.tmp", "cache/**"]);
    }

    #[test]
    fn manual_job_differs_per_value() {
        let a = manual_job(&policy(), "data", "img", "1").expect("job");
        let b = manual_job(&policy(), "data", "img", "2").expect("job");
        assert_ne!(a.metadata.name, b.metadata.name);
    }

    #[test]
    fn a_pvc_name_too_long_for_a_label_is_hashed_in_labels_and_whole_in_annotations() {
        let long = format!("data-{}", "d".repeat(80));
        let cj = cronjob(&policy(), &long, "img").expect("cronjob");
        let label = &cj.metadata.labels.as_ref().expect("labels")[PVC_LABEL];
        assert!(label.len() <= 63 && label.starts_with("data-"), "{label}");
        assert_eq!(pvc_of(&cj.metadata).as_deref(), Some(long.as_str()));
        let job_meta = cj
            .spec
            .and_then(|s| s.job_template.metadata)
            .expect("job template metadata");
        assert_eq!(pvc_of(&job_meta).as_deref(), Some(long.as_str()));
        let job = manual_job(&policy(), &long, "img", "1").expect("job");
        assert_eq!(pvc_of(&job.metadata).as_deref(), Some(long.as_str()));
        let short = cronjob(&policy(), "data", "img").expect("cronjob");
        assert_eq!(short.metadata.labels.expect("labels")[PVC_LABEL], "data");
        // Objects from before the annotation existed: the label.
        let old = ObjectMeta {
            labels: Some(labels("p", "vol")),
            ..Default::default()
        };
        assert_eq!(pvc_of(&old).as_deref(), Some("vol"));
    }

    #[test]
    fn snapshot_only_policy_has_no_copy_job() {
        let mut p = policy();
        p.spec.destination = None;
        assert!(matches!(
            cronjob(&p, "data", "img"),
            Err(DesiredError::NoDestination(_))
        ));
    }
}
