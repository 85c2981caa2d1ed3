//! The I/O of snapshot backups: discovery, validation, create, delete, read back.

use super::desired::{self, temporary_pvc_name};
use super::due;
use super::observed::{self, SnapshotInfo, SnapshotState};
use super::*;
use crate::api::{BackupMethod, BackupPolicy, POLICY_LABEL, Restore, StoredBackup};
use crate::desired::pvc_of as desired_pvc_of;
use crate::schedule::{Schedule, ScheduleError};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

/// How often pending snapshots are looked at again.
const PENDING_POLL: SignedDuration = SignedDuration::from_secs(5);
const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// Why snapshots of a policy cannot be handled at all. [`SnapshotError::reason`]
/// is the condition reason to show.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The cluster does not serve `snapshot.storage.k8s.io/v1` (no snapshot CRDs).
    #[error(
        "the cluster does not serve {SNAPSHOT_GROUP}/{SNAPSHOT_VERSION} VolumeSnapshots ({0}); install the snapshot CRDs and the snapshot controller, or use method Copy"
    )]
    ApiUnavailable(String),
    /// `spec.snapshot.volumeSnapshotClassName` names no VolumeSnapshotClass.
    #[error("VolumeSnapshotClass {0:?} does not exist")]
    ClassNotFound(String),
    /// The policy's method needs `spec.snapshot`, which is missing.
    #[error("spec.snapshot.volumeSnapshotClassName is required for method {0:?}")]
    NotConfigured(BackupMethod),
    /// The schedule cannot be read.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The named snapshot cannot be restored from.
    #[error("VolumeSnapshot {name:?} cannot be restored from: {reason}")]
    NotRestorable { name: String, reason: String },
    /// A Kubernetes API call failed.
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
}

impl SnapshotError {
    /// The condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ApiUnavailable(_) => REASON_API_UNAVAILABLE,
            Self::ClassNotFound(_) => REASON_CLASS_NOT_FOUND,
            Self::NotConfigured(_) => "SnapshotSettingsMissing",
            Self::Schedule(_) => "InvalidSchedule",
            Self::NotRestorable { .. } => "SnapshotNotRestorable",
            Self::Kube { .. } => "KubernetesAPIError",
        }
    }

    /// True for errors a retry may fix (API calls); false for errors that need
    /// the user or the cluster admin to change something.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Kube { .. })
    }
}

fn kube_err(context: impl Into<String>) -> impl FnOnce(kube::Error) -> SnapshotError {
    let context = context.into();
    move |source| SnapshotError::Kube { context, source }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// A problem with one PVC: no snapshot is attempted for it this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvcProblem {
    /// The PVC.
    pub pvc: String,
    /// Condition/Event reason (`NoCSIDriver`, `SnapshotClassDriverMismatch`,
    /// `SnapshotFailed`, `PVCNotFound`).
    pub reason: &'static str,
    /// Human-readable detail naming the PVC and what to change.
    pub message: String,
}

/// What [`reconcile_snapshots`] did and found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotOutcome {
    /// Snapshots kept after retention, as `status.storedBackups` (per PVC, newest first).
    pub stored_backups: Vec<StoredBackup>,
    /// The next scheduled time (`status.nextRunTime`); `None` when suspended.
    pub next_run_time: Option<Timestamp>,
    /// When to reconcile again: the next scheduled time, or sooner while
    /// snapshots are pending.
    pub requeue_at: Option<Timestamp>,
    /// Time of the newest Ready snapshot (`status.lastBackupTime`).
    pub last_backup_time: Option<Timestamp>,
    /// VolumeSnapshots created in this call.
    pub created: Vec<String>,
    /// VolumeSnapshots deleted by retention in this call.
    pub deleted: Vec<String>,
    /// Per-PVC problems (one entry per PVC and reason).
    pub problems: Vec<PvcProblem>,
}

/// Whether the cluster serves VolumeSnapshots and VolumeSnapshotClasses.
pub async fn api_available(client: &Client) -> Result<(), SnapshotError> {
    api_available_in(client, &format!("{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}")).await
}

/// [`api_available`] for another `group/version` serving the same resources
/// (tests use a group no cluster serves).
pub async fn api_available_in(client: &Client, gv: &str) -> Result<(), SnapshotError> {
    match client.list_api_group_resources(gv).await {
        Ok(list) => {
            for plural in ["volumesnapshots", "volumesnapshotclasses"] {
                if !list.resources.iter().any(|r| r.name == plural) {
                    return Err(SnapshotError::ApiUnavailable(format!(
                        "{gv} has no {plural}"
                    )));
                }
            }
            Ok(())
        }
        Err(e) if is_status(&e, 404) => {
            Err(SnapshotError::ApiUnavailable(format!("{gv} is not served")))
        }
        Err(e) => Err(kube_err(format!("discovering {gv}"))(e)),
    }
}

/// The driver of a VolumeSnapshotClass.
async fn class_driver(client: &Client, class: &str) -> Result<String, SnapshotError> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &volume_snapshot_class_resource());
    let obj = api
        .get_opt(class)
        .await
        .map_err(kube_err(format!("reading VolumeSnapshotClass {class}")))?
        .ok_or_else(|| SnapshotError::ClassNotFound(class.to_string()))?;
    Ok(obj
        .data
        .get("driver")
        .and_then(|d| d.as_str())
        .unwrap_or_default()
        .to_string())
}

/// What the snapshot path needs to know about a PVC.
struct PvcFacts {
    pvc: PersistentVolumeClaim,
    storage_class: Option<String>,
}

/// Checks that `pvc` lives on a CSI volume of `driver`. Ok(Err(problem)) for
/// user-fixable problems, Err for API failures.
async fn check_pvc(
    client: &Client,
    ns: &str,
    pvc: &str,
    class: &str,
    driver: &str,
) -> Result<Result<PvcFacts, PvcProblem>, SnapshotError> {
    let problem = |reason, message: String| {
        Ok(Err(PvcProblem {
            pvc: pvc.to_string(),
            reason,
            message,
        }))
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let Some(claim) = pvcs
        .get_opt(pvc)
        .await
        .map_err(kube_err(format!("reading PVC {ns}/{pvc}")))?
    else {
        return problem(REASON_PVC_NOT_FOUND, format!("PVC {pvc} does not exist"));
    };
    let spec = claim.spec.clone().unwrap_or_default();
    let mut storage_class = spec.storage_class_name.clone();
    // A bound claim: its PersistentVolume says which driver holds the data.
    let pv_driver = match spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
        Some(pv_name) => {
            let pvs: Api<PersistentVolume> = Api::all(client.clone());
            match pvs
                .get_opt(pv_name)
                .await
                .map_err(kube_err(format!("reading PersistentVolume {pv_name}")))?
            {
                Some(pv) => {
                    let pv_spec = pv.spec.unwrap_or_default();
                    if storage_class.is_none() {
                        storage_class = pv_spec.storage_class_name.clone();
                    }
                    match pv_spec.csi {
                        Some(csi) => Some(csi.driver),
                        None => {
                            return problem(
                                REASON_NO_CSI_DRIVER,
                                format!(
                                    "PVC {pvc} is bound to PersistentVolume {pv_name}, which is not a CSI volume; VolumeSnapshots need a CSI driver (use method Copy for it)"
                                ),
                            );
                        }
                    }
                }
                None => None,
            }
        }
        None => None,
    };
    let actual = match pv_driver {
        Some(d) => d,
        None => {
            // Not bound yet: the storage class (or the default one) tells.
            let classes: Api<StorageClass> = Api::all(client.clone());
            let sc = match &storage_class {
                Some(name) => classes
                    .get_opt(name)
                    .await
                    .map_err(kube_err(format!("reading StorageClass {name}")))?,
                None => classes
                    .list(&ListParams::default())
                    .await
                    .map_err(kube_err("listing StorageClasses"))?
                    .items
                    .into_iter()
                    .find(|c| {
                        c.annotations()
                            .get(DEFAULT_CLASS_ANNOTATION)
                            .is_some_and(|v| v == "true")
                    }),
            };
            let Some(sc) = sc else {
                return problem(
                    REASON_NO_CSI_DRIVER,
                    format!(
                        "PVC {pvc} has no bound volume and its storage class {:?} does not exist",
                        storage_class.unwrap_or_default()
                    ),
                );
            };
            storage_class = sc.metadata.name.clone();
            let csi_drivers: Api<CSIDriver> = Api::all(client.clone());
            if csi_drivers
                .get_opt(&sc.provisioner)
                .await
                .map_err(kube_err(format!("reading CSIDriver {}", sc.provisioner)))?
                .is_none()
            {
                return problem(
                    REASON_NO_CSI_DRIVER,
                    format!(
                        "PVC {pvc}: provisioner {} of storage class {} is not a CSI driver",
                        sc.provisioner,
                        storage_class.clone().unwrap_or_default()
                    ),
                );
            }
            sc.provisioner
        }
    };
    if actual != driver {
        return problem(
            REASON_DRIVER_MISMATCH,
            format!(
                "PVC {pvc} is on CSI driver {actual}, but VolumeSnapshotClass {class} is for driver {driver}"
            ),
        );
    }
    Ok(Ok(PvcFacts {
        pvc: claim,
        storage_class,
    }))
}

fn settings(policy: &BackupPolicy) -> Result<&crate::api::SnapshotSettings, SnapshotError> {
    policy
        .spec
        .snapshot
        .as_ref()
        .ok_or(SnapshotError::NotConfigured(policy.spec.method))
}

fn ready_timeout(policy: &BackupPolicy) -> SignedDuration {
    SignedDuration::from_secs(i64::from(
        policy
            .spec
            .snapshot
            .as_ref()
            .map_or(600, |s| s.ready_timeout_seconds),
    ))
}

async fn create_snapshot(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
) -> Result<bool, SnapshotError> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 409) => Ok(false),
        Err(e) => Err(kube_err(format!("creating VolumeSnapshot {name}"))(e)),
    }
}

async fn delete_ignoring_missing<K>(
    api: &Api<K>,
    what: &str,
    name: &str,
) -> Result<bool, SnapshotError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => Err(kube_err(format!("deleting {what} {name}"))(e)),
    }
}

/// One reconcile of a `Snapshot` policy over the selected `pvcs`: takes the
/// due snapshots, deletes those retention expires, and reports.
///
/// Errors are policy-wide (no snapshot API, unknown class, bad schedule, API
/// failures); per-PVC problems are in [`SnapshotOutcome::problems`] and the
/// other PVCs go on. A suspended policy takes no snapshots but still applies
/// retention and reports.
pub async fn reconcile_snapshots(
    client: &Client,
    policy: &BackupPolicy,
    pvcs: &[String],
    now: Timestamp,
) -> Result<SnapshotOutcome, SnapshotError> {
    let settings = settings(policy)?;
    let schedule = Schedule::parse(&policy.spec.schedule, policy.spec.time_zone.as_deref())?;
    api_available(client).await?;
    let class = settings.volume_snapshot_class_name.as_str();
    let driver = class_driver(client, class).await?;
    let name = policy.name_any();
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &volume_snapshot_resource());
    let timeout = ready_timeout(policy);

    let selector = format!("{POLICY_LABEL}={name},{ROLE_LABEL}={ROLE_BACKUP}");
    let listed = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err(format!(
            "listing VolumeSnapshots of policy {ns}/{name}"
        )))?;
    let mut snaps: Vec<SnapshotInfo> = listed
        .items
        .iter()
        .filter_map(|o| observed::parse(o, timeout, now))
        .collect();

    // The floor for due runs: the policy's creation, or the recorded last backup.
    let created_at = policy
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let recorded = policy
        .status
        .as_ref()
        .and_then(|s| s.last_backup_time.as_ref())
        .map(|t| t.0);
    let not_before = recorded.map_or(created_at, |r| r.max(created_at));

    let mut out = SnapshotOutcome::default();
    let mut next_run = None;
    for pvc in pvcs {
        let last_run = snaps
            .iter()
            .filter(|s| &s.pvc == pvc)
            .filter_map(|s| s.scheduled_for.or(s.taken_at))
            .max();
        let d = due::evaluate(&schedule, not_before, last_run, now);
        next_run = d.next_run;
        // Checked on every reconcile, not only when a run is due, so that the
        // condition stays put between runs instead of flapping.
        match check_pvc(client, &ns, pvc, class, &driver).await? {
            Err(problem) => out.problems.push(problem),
            Ok(_) => {
                let Some(run_for) = d.run_for.filter(|_| !policy.spec.suspend) else {
                    continue;
                };
                let obj = desired::volume_snapshot(policy, pvc, run_for, class);
                let snap_name = obj.metadata.name.clone().unwrap_or_default();
                if create_snapshot(&api, &obj).await? {
                    tracing::info!(policy = %name, namespace = %ns, %pvc, snapshot = %snap_name, run_for = %run_for, "created VolumeSnapshot");
                    out.created.push(snap_name.clone());
                }
                if !snaps.iter().any(|s| s.name == snap_name) {
                    snaps.push(SnapshotInfo {
                        name: snap_name,
                        pvc: pvc.clone(),
                        taken_at: Some(run_for),
                        scheduled_for: Some(run_for),
                        state: SnapshotState::Pending,
                        restore_size: None,
                        restore_size_quantity: None,
                        error: None,
                        deleting: false,
                    });
                }
            }
        }
    }
    if pvcs.is_empty() {
        next_run = schedule.next_after(now);
    }

    let (kept, expired) = observed::retain(
        snaps,
        &policy.spec.retention,
        policy.spec.time_zone.as_deref(),
        now,
    );
    for s in expired.iter().filter(|s| !s.deleting) {
        if delete_ignoring_missing(&api, "VolumeSnapshot", &s.name).await? {
            tracing::info!(policy = %name, namespace = %ns, pvc = %s.pvc, snapshot = %s.name, state = s.state.as_str(), "retention deleted VolumeSnapshot");
            out.deleted.push(s.name.clone());
        }
    }
    let kept: Vec<SnapshotInfo> = kept.into_iter().filter(|s| !s.deleting).collect();
    for s in kept.iter().filter(|s| s.state == SnapshotState::Failed) {
        out.problems.push(PvcProblem {
            pvc: s.pvc.clone(),
            reason: REASON_SNAPSHOT_FAILED,
            message: format!(
                "VolumeSnapshot {} of PVC {} failed: {}",
                s.name,
                s.pvc,
                s.error.as_deref().unwrap_or("unknown error")
            ),
        });
    }
    let pending = kept.iter().any(|s| s.state == SnapshotState::Pending);
    out.last_backup_time = kept
        .iter()
        .filter(|s| s.state == SnapshotState::Ready)
        .filter_map(|s| s.taken_at)
        .max();
    out.stored_backups = kept.iter().map(observed::stored_backup).collect();
    out.next_run_time = if policy.spec.suspend { None } else { next_run };
    out.requeue_at = due::earliest([out.next_run_time, pending.then(|| now + PENDING_POLL)]);
    Ok(out)
}

/// State of the copy source of one `SnapshotThenCopy` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySourceState {
    /// The snapshot is not ready yet; call again shortly.
    Pending { snapshot: String },
    /// The temporary PVC exists (made from the ready snapshot): run the copy
    /// Job over `pvc` and afterwards call [`cleanup_copy_source`].
    Ready { snapshot: String, pvc: String },
    /// The snapshot failed or was not ready in time; call [`cleanup_copy_source`].
    Failed { snapshot: String, message: String },
    /// The PVC cannot be snapshotted (no snapshot was attempted).
    Problem(PvcProblem),
}

/// What every `SnapshotThenCopy` step of one policy needs from the cluster:
/// looked up once per round, not once per PVC.
#[derive(Debug, Clone)]
pub struct CopySetup {
    class: String,
    driver: String,
}

/// Checks that the snapshot API is served and finds the policy's
/// VolumeSnapshotClass and its driver.
pub async fn copy_setup(
    client: &Client,
    policy: &BackupPolicy,
) -> Result<CopySetup, SnapshotError> {
    let settings = settings(policy)?;
    api_available(client).await?;
    let class = settings.volume_snapshot_class_name.clone();
    let driver = class_driver(client, &class).await?;
    Ok(CopySetup { class, driver })
}

/// For a `SnapshotThenCopy` run of `pvc` scheduled at `run_for`: makes sure
/// the intermediate snapshot exists and, once it is ready, the temporary PVC
/// made from it. Idempotent; call it until it returns `Ready` or `Failed`.
pub async fn ensure_copy_source(
    client: &Client,
    policy: &BackupPolicy,
    setup: &CopySetup,
    pvc: &str,
    run_for: Timestamp,
    now: Timestamp,
) -> Result<CopySourceState, SnapshotError> {
    let class = setup.class.as_str();
    let ns = policy.namespace().unwrap_or_default();
    let facts = match check_pvc(client, &ns, pvc, class, &setup.driver).await? {
        Ok(f) => f,
        Err(p) => return Ok(CopySourceState::Problem(p)),
    };
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &volume_snapshot_resource());
    let obj = desired::copy_source_snapshot(policy, pvc, run_for, class);
    let snapshot = obj.metadata.name.clone().unwrap_or_default();
    create_snapshot(&api, &obj).await?;
    let current = api
        .get_opt(&snapshot)
        .await
        .map_err(kube_err(format!("reading VolumeSnapshot {snapshot}")))?;
    let info = current
        .as_ref()
        .and_then(|o| observed::parse(o, ready_timeout(policy), now));
    match info.as_ref().map(|i| i.state) {
        Some(SnapshotState::Ready) => {}
        Some(SnapshotState::Failed) => {
            let message = info
                .and_then(|i| i.error)
                .unwrap_or_else(|| "unknown error".into());
            return Ok(CopySourceState::Failed { snapshot, message });
        }
        _ => return Ok(CopySourceState::Pending { snapshot }),
    }
    let size = info
        .and_then(|i| i.restore_size_quantity)
        .map(Quantity)
        .or_else(|| {
            facts
                .pvc
                .spec
                .as_ref()?
                .resources
                .as_ref()?
                .requests
                .as_ref()?
                .get("storage")
                .cloned()
        })
        .unwrap_or_else(|| Quantity("1Gi".into()));
    let tmp = desired::temporary_pvc(policy, pvc, &snapshot, size, facts.storage_class);
    let tmp_name = tmp.metadata.name.clone().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    match pvcs.create(&PostParams::default(), &tmp).await {
        Ok(_) => {
            tracing::info!(namespace = %ns, %pvc, snapshot = %snapshot, temporary_pvc = %tmp_name, "created temporary PVC from snapshot")
        }
        Err(e) if is_status(&e, 409) => {}
        Err(e) => {
            return Err(kube_err(format!("creating temporary PVC {ns}/{tmp_name}"))(
                e,
            ));
        }
    }
    Ok(CopySourceState::Ready {
        snapshot,
        pvc: tmp_name,
    })
}

/// After the copy Job of a `SnapshotThenCopy` run finished: deletes the
/// temporary PVC and, unless `spec.snapshot.keepSnapshot`, the snapshot (a
/// kept one is marked finished so the run counts as over). Missing objects
/// are fine.
pub async fn cleanup_copy_source(
    client: &Client,
    policy: &BackupPolicy,
    snapshot: &str,
    job: &str,
) -> Result<(), SnapshotError> {
    let ns = policy.namespace().unwrap_or_default();
    // The PVC protection controller counts a PVC in use until the pods that
    // mounted it are deleted, finished or not; the Job itself stays as the
    // record of the run.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .map_err(kube_err(format!("listing pods of Job {ns}/{job}")))?;
    for pod in list.items {
        delete_ignoring_missing(&pods, "copy pod", &pod.name_any()).await?;
    }
    let keep = policy
        .spec
        .snapshot
        .as_ref()
        .is_some_and(|s| s.keep_snapshot);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    delete_ignoring_missing(&pvcs, "temporary PVC", &temporary_pvc_name(snapshot)).await?;
    // The API was seen by `copy_runs` this round: that is how the run was found.
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &volume_snapshot_resource());
    if keep {
        mark_copy_source_finished(&api, snapshot, "kept").await
    } else {
        delete_ignoring_missing(&api, "VolumeSnapshot", snapshot)
            .await
            .map(|_| ())
    }
}

/// Ends a `SnapshotThenCopy` run whose snapshot failed or was never ready:
/// removes a temporary PVC if one exists and marks the snapshot finished,
/// leaving it for the user to inspect. Its scheduled time still counts as a
/// run, so the next try is the next scheduled time, not a loop.
pub async fn fail_copy_source(
    client: &Client,
    policy: &BackupPolicy,
    snapshot: &str,
) -> Result<(), SnapshotError> {
    let ns = policy.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    delete_ignoring_missing(&pvcs, "temporary PVC", &temporary_pvc_name(snapshot)).await?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &volume_snapshot_resource());
    mark_copy_source_finished(&api, snapshot, "failed").await
}

async fn mark_copy_source_finished(
    api: &Api<DynamicObject>,
    snapshot: &str,
    how: &str,
) -> Result<(), SnapshotError> {
    let patch = serde_json::json!({
        "metadata": {"annotations": {desired::COPY_FINISHED_ANNOTATION: how}}
    });
    match api
        .patch(snapshot, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(kube_err(format!("marking VolumeSnapshot {snapshot} {how}"))(e)),
    }
}

/// The `SnapshotThenCopy` runs of `policy` as the cluster shows them: its
/// copy-source snapshots and copy Jobs, each with the PVC it belongs to.
pub async fn copy_runs(
    client: &Client,
    policy: &BackupPolicy,
) -> Result<Vec<(String, CopyRunItem)>, SnapshotError> {
    api_available(client).await?;
    let ns = policy.namespace().unwrap_or_default();
    let selector = format!(
        "{POLICY_LABEL}={},{ROLE_LABEL}={ROLE_COPY_SOURCE}",
        policy.name_any()
    );
    let lp = ListParams::default().labels(&selector);
    let mut out = Vec::new();
    let snapshots: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &volume_snapshot_resource());
    let list = snapshots.list(&lp).await.map_err(kube_err(format!(
        "listing copy-source VolumeSnapshots in {ns}"
    )))?;
    for obj in list.items {
        let ann = obj.annotations();
        let (Some(pvc), Some(run_for)) = (desired_pvc_of(&obj.metadata), scheduled_time(ann))
        else {
            continue;
        };
        let finished = ann.contains_key(desired::COPY_FINISHED_ANNOTATION);
        out.push((
            pvc,
            CopyRunItem::Snapshot(copy_run::SourceSnapshot {
                name: obj.name_any(),
                run_for,
                finished,
            }),
        ));
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let list = jobs
        .list(&lp)
        .await
        .map_err(kube_err(format!("listing copy Jobs in {ns}")))?;
    for job in list.items {
        let ann = job.annotations();
        let (Some(pvc), Some(snapshot), Some(run_for)) = (
            desired_pvc_of(&job.metadata),
            ann.get(desired::COPY_SOURCE_ANNOTATION).cloned(),
            scheduled_time(ann),
        ) else {
            continue;
        };
        let finished =
            crate::results::job_outcome(&job, None) != crate::results::JobOutcome::Running;
        out.push((
            pvc,
            CopyRunItem::Job(copy_run::CopyJob {
                name: job.name_any(),
                snapshot,
                run_for,
                finished,
            }),
        ));
    }
    Ok(out)
}

/// One observed piece of a `SnapshotThenCopy` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyRunItem {
    /// A copy-source VolumeSnapshot.
    Snapshot(copy_run::SourceSnapshot),
    /// A copy Job.
    Job(copy_run::CopyJob),
}

fn scheduled_time(ann: &std::collections::BTreeMap<String, String>) -> Option<Timestamp> {
    ann.get(SCHEDULED_TIME_ANNOTATION)?.parse().ok()
}

/// Creates the target PVC of `restore` from the VolumeSnapshot `snapshot`
/// (`dataSource` pointing at it) and returns it. The snapshot must exist and
/// be ready; an existing target PVC made from the same snapshot is returned
/// as is (idempotent), one made otherwise is an error.
pub async fn restore_from_snapshot(
    client: &Client,
    restore: &Restore,
    policy: &BackupPolicy,
    snapshot: &str,
) -> Result<PersistentVolumeClaim, SnapshotError> {
    api_available(client).await?;
    let ns = restore.namespace().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &volume_snapshot_resource());
    let not_restorable = |reason: String| SnapshotError::NotRestorable {
        name: snapshot.to_string(),
        reason,
    };
    let obj = api
        .get_opt(snapshot)
        .await
        .map_err(kube_err(format!("reading VolumeSnapshot {ns}/{snapshot}")))?
        .ok_or_else(|| not_restorable("it does not exist".into()))?;
    let info = observed::parse(&obj, SignedDuration::MAX, Timestamp::now())
        .ok_or_else(|| not_restorable("it names no source PVC".into()))?;
    if info.state != SnapshotState::Ready {
        return Err(not_restorable(format!("it is {}", info.state.as_str())));
    }
    // The source PVC's class is the default for the target (same CSI driver).
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let source_class = pvcs
        .get_opt(&info.pvc)
        .await
        .map_err(kube_err(format!("reading PVC {ns}/{}", info.pvc)))?
        .and_then(|p| p.spec?.storage_class_name);
    let target = desired::restore_pvc(
        restore,
        policy,
        snapshot,
        info.restore_size_quantity.map(Quantity),
        source_class,
    );
    let target_name = target.metadata.name.clone().unwrap_or_default();
    match pvcs.create(&PostParams::default(), &target).await {
        Ok(created) => {
            tracing::info!(namespace = %ns, pvc = %target_name, snapshot = %snapshot, "created PVC from VolumeSnapshot");
            Ok(created)
        }
        Err(e) if is_status(&e, 409) => {
            let existing = pvcs
                .get(&target_name)
                .await
                .map_err(kube_err(format!("reading PVC {ns}/{target_name}")))?;
            let same = existing
                .spec
                .as_ref()
                .and_then(|s| s.data_source.as_ref())
                .is_some_and(|d| d.kind == VOLUME_SNAPSHOT_KIND && d.name == snapshot);
            if same {
                Ok(existing)
            } else {
                Err(not_restorable(format!(
                    "target PVC {target_name} already exists and was not made from it"
                )))
            }
        }
        Err(e) => Err(kube_err(format!("creating PVC {ns}/{target_name}"))(e)),
    }
}

/// The snapshot name a `SnapshotThenCopy` run of `pvc` at `run_for` uses.
pub fn copy_source_name(policy: &BackupPolicy, pvc: &str, run_for: Timestamp) -> String {
    desired::copy_source_snapshot_name(&policy.name_any(), pvc, run_for)
}
