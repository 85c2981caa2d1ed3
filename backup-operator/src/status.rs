//! The status a policy should show, computed from what was observed.

use crate::api::{BackupPolicy, BackupPolicyStatus, Phase, StoredBackup};
use crate::results::{self, JobOutcome, MoverResult};
use crate::retention;
use crate::schedule::{Schedule, ScheduleError};
use crate::targets::{Resolution, SelectorError};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;

/// Condition types a policy carries.
pub mod condition {
    /// Schedule, selector, Secrets and CronJobs are all in order.
    pub const READY: &str = "Ready";
    /// Every name in `targets.names` exists.
    pub const TARGETS_RESOLVED: &str = "TargetsResolved";
    /// The newest backup of some PVC failed.
    pub const BACKUP_FAILED: &str = "BackupFailed";
}

/// A finished or running backup Job of the policy.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// Job name.
    pub name: String,
    /// PVC it backs up.
    pub pvc: String,
    /// When it was created.
    pub created: Option<Timestamp>,
    /// When it finished.
    pub finished: Option<Timestamp>,
    /// Outcome.
    pub outcome: JobOutcome,
    /// The mover's report, if a pod left one.
    pub result: Option<MoverResult>,
}

/// Everything the reconcile observed.
#[derive(Debug)]
pub struct Observation {
    /// Current time.
    pub now: Timestamp,
    /// The parsed schedule.
    pub schedule: Result<Schedule, ScheduleError>,
    /// Resolved targets.
    pub targets: Result<Resolution, SelectorError>,
    /// Referenced Secrets that do not exist.
    pub missing_secrets: Vec<String>,
    /// Per-PVC errors applying CronJobs.
    pub apply_errors: Vec<(String, String)>,
    /// Backup Jobs of the policy.
    pub jobs: Vec<JobRecord>,
}

/// A condition to upsert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    /// Type.
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human message.
    pub message: String,
}

impl ConditionUpdate {
    fn new(type_: &'static str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The computed status (without conditions) and the conditions to upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    /// New status; its `conditions` are the previous ones (the caller upserts).
    pub status: BackupPolicyStatus,
    /// Conditions to upsert.
    pub conditions: Vec<ConditionUpdate>,
}

/// Newest finished Job per PVC.
pub(crate) fn newest_finished(jobs: &[JobRecord]) -> BTreeMap<&str, &JobRecord> {
    let mut out: BTreeMap<&str, &JobRecord> = BTreeMap::new();
    for j in jobs.iter().filter(|j| j.outcome != JobOutcome::Running) {
        let key = j.finished.or(j.created);
        match out.get(j.pvc.as_str()) {
            Some(cur) if cur.finished.or(cur.created) >= key => {}
            _ => {
                out.insert(&j.pvc, j);
            }
        }
    }
    out
}

/// Computes the policy's status from the previous one and the observation.
pub fn compute(policy: &BackupPolicy, prev: &BackupPolicyStatus, obs: &Observation) -> Computed {
    let spec = &policy.spec;
    let mut status = prev.clone();
    status.observed_generation = policy.metadata.generation;
    let mut conds = Vec::new();

    // Policy-wide problems, most fundamental first.
    let mut blocking: Option<(&str, String)> = None;
    if let Err(e) = &obs.schedule {
        let reason = match e {
            ScheduleError::InvalidCron { .. } => "InvalidSchedule",
            ScheduleError::UnknownTimeZone(_) => "InvalidSchedule",
        };
        blocking = Some((reason, e.to_string()));
    } else if let Err(e) = &obs.targets {
        blocking = Some(("InvalidSelector", e.to_string()));
    } else if !obs.missing_secrets.is_empty() {
        blocking = Some((
            "SecretMissing",
            format!("Secret(s) not found: {}", obs.missing_secrets.join(", ")),
        ));
    }

    status.next_run_time = match (&obs.schedule, spec.suspend) {
        (Ok(s), false) => s.next_after(obs.now).map(Time),
        _ => None,
    };
    if let Ok(r) = &obs.targets {
        status.target_pvcs = r.selected.clone();
        if r.missing.is_empty() && r.selected.is_empty() {
            // Not an error (PVCs may come later), but never silence.
            conds.push(ConditionUpdate::new(
                condition::TARGETS_RESOLVED,
                false,
                "NoTargets",
                "no PVC in the namespace matches spec.targets; nothing is backed up",
            ));
        } else if r.missing.is_empty() {
            conds.push(ConditionUpdate::new(
                condition::TARGETS_RESOLVED,
                true,
                "Resolved",
                format!("{} PVC(s) selected", r.selected.len()),
            ));
        } else {
            conds.push(ConditionUpdate::new(
                condition::TARGETS_RESOLVED,
                false,
                "PVCNotFound",
                format!(
                    "PVC(s) in targets.names not found: {}",
                    r.missing.join(", ")
                ),
            ));
        }
    }

    // Results of finished Jobs: the newest successful result per PVC is the
    // repository's own list after retention.
    let mut stored: Vec<StoredBackup> = prev.stored_backups.clone();
    let mut failures = Vec::new();
    for (pvc, job) in newest_finished(&obs.jobs) {
        match &job.outcome {
            JobOutcome::Succeeded => {
                // A catalog listing that started after this Job finished
                // already shows the repository: it wins.
                let newer_than_catalog = prev
                    .last_catalog_time
                    .as_ref()
                    .is_none_or(|c| job.finished.is_some_and(|f| f > c.0));
                if let Some(r) = job.result.as_ref().filter(|r| r.ok && newer_than_catalog) {
                    stored.retain(|b| b.pvc_name != pvc);
                    stored.extend(results::stored_backups(r, pvc));
                    let count = r.snapshot_count.unwrap_or(r.snapshots.len() as u64);
                    crate::catalog::bound::set_count(
                        &mut status.backup_counts,
                        pvc,
                        u32::try_from(count).unwrap_or(u32::MAX),
                    );
                }
            }
            JobOutcome::Failed { reason, message } => failures.push((
                pvc.to_string(),
                reason.clone(),
                message.clone(),
                job.name.clone(),
            )),
            JobOutcome::Running => {}
        }
    }
    let newest_success = obs
        .jobs
        .iter()
        .filter(|j| j.outcome == JobOutcome::Succeeded)
        .filter_map(|j| j.finished)
        .max();
    if let Some(t) = newest_success
        && status
            .last_backup_time
            .as_ref()
            .is_none_or(|prev| prev.0 < t)
    {
        status.last_backup_time = Some(Time(t));
    }
    let (kept, _expired) =
        retention::apply(stored, &spec.retention, spec.time_zone.as_deref(), obs.now);
    status.stored_backups = crate::catalog::bound::bound(kept);

    if failures.is_empty() {
        conds.push(ConditionUpdate::new(
            condition::BACKUP_FAILED,
            false,
            "BackupsSucceeded",
            "the newest backup of every PVC succeeded",
        ));
    } else {
        let reason = failures[0].1.clone();
        let message = failures
            .iter()
            .map(|(pvc, reason, msg, job)| format!("PVC {pvc}: {reason}: {msg} (Job {job})"))
            .collect::<Vec<_>>()
            .join("; ");
        conds.push(ConditionUpdate::new(
            condition::BACKUP_FAILED,
            true,
            &reason,
            message,
        ));
    }

    let apply_failed = !obs.apply_errors.is_empty();
    let (phase, ready) = match &blocking {
        Some((reason, msg)) => (
            Phase::Error,
            ConditionUpdate::new(condition::READY, false, reason, msg.clone()),
        ),
        None if apply_failed => {
            let msg = obs
                .apply_errors
                .iter()
                .map(|(p, e)| format!("PVC {p}: {e}"))
                .collect::<Vec<_>>()
                .join("; ");
            (
                Phase::Error,
                ConditionUpdate::new(condition::READY, false, "CronJobApplyFailed", msg),
            )
        }
        None if spec.suspend => (
            Phase::Suspended,
            ConditionUpdate::new(
                condition::READY,
                true,
                "Suspended",
                "spec.suspend is true; no backups run",
            ),
        ),
        None => {
            let n = status.target_pvcs.len();
            (
                Phase::Active,
                ConditionUpdate::new(
                    condition::READY,
                    true,
                    "Scheduled",
                    format!("{n} PVC(s) scheduled"),
                ),
            )
        }
    };
    status.phase = Some(phase);
    conds.insert(0, ready);
    Computed {
        status,
        conditions: conds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{MoverError, SnapshotSummary};

    fn policy(extra: serde_json::Value) -> BackupPolicy {
        let mut v = serde_json::json!({
            "targets": {"names": ["a", "b"]},
            "schedule": "0 * * * *",
            "retention": {"maxBackups": 2},
            "destination": {"s3": {"endpoint": "http://s3", "bucket": "b", "credentialsSecretRef": {"name": "c"}},
                            "repositoryPasswordSecretRef": {"name": "pw"}}
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, val) in e {
                o.insert(k.clone(), val.clone());
            }
        }
        let mut p = BackupPolicy::new("p", serde_json::from_value(v).expect("spec"));
        p.metadata.namespace = Some("ns".into());
        p.metadata.generation = Some(3);
        p
    }

    fn now() -> Timestamp {
        "2026-01-01T10:30:00Z".parse().expect("ts")
    }

    fn obs(jobs: Vec<JobRecord>) -> Observation {
        Observation {
            now: now(),
            schedule: Schedule::parse("0 * * * *", None),
            targets: Ok(Resolution {
                selected: vec!["a".into(), "b".into()],
                missing: vec![],
            }),
            missing_secrets: vec![],
            apply_errors: vec![],
            jobs,
        }
    }

    fn ok_job(pvc: &str, name: &str, finished: &str, snaps: &[(&str, &str)]) -> JobRecord {
        JobRecord {
            name: name.into(),
            pvc: pvc.into(),
            created: None,
            finished: Some(finished.parse().expect("ts")),
            outcome: JobOutcome::Succeeded,
            result: Some(MoverResult {
                ok: true,
                location: Some("s3:http://s3/b/ns/a".into()),
                snapshots: snaps
                    .iter()
                    .map(|(id, t)| SnapshotSummary {
                        id: id.to_string(),
                        time: t.to_string(),
                        size: 5,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        }
    }

    fn cond<'a>(c: &'a Computed, t: &str) -> &'a ConditionUpdate {
        c.conditions
            .iter()
            .find(|x| x.type_ == t)
            .expect("condition present")
    }

    #[test]
    fn active_policy_records_results_and_next_run() {
        let c = compute(
            &policy(serde_json::json!({})),
            &Default::default(),
            &obs(vec![ok_job(
                "a",
                "j1",
                "2026-01-01T10:00:05Z",
                &[
                    ("s2", "2026-01-01T10:00:00Z"),
                    ("s1", "2026-01-01T09:00:00Z"),
                ],
            )]),
        );
        assert_eq!(c.status.phase, Some(Phase::Active));
        assert_eq!(c.status.observed_generation, Some(3));
        assert_eq!(
            c.status
                .next_run_time
                .as_ref()
                .map(|t| t.0.to_string())
                .as_deref(),
            Some("2026-01-01T11:00:00Z")
        );
        assert_eq!(c.status.stored_backups.len(), 2);
        assert_eq!(
            c.status
                .last_backup_time
                .as_ref()
                .map(|t| t.0.to_string())
                .as_deref(),
            Some("2026-01-01T10:00:05Z")
        );
        assert!(cond(&c, condition::READY).status);
        assert!(!cond(&c, condition::BACKUP_FAILED).status);
    }

    #[test]
    fn invalid_schedule_is_an_error_with_reason() {
        let mut o = obs(vec![]);
        o.schedule = Schedule::parse("61 * * * *", None);
        let c = compute(&policy(serde_json::json!({})), &Default::default(), &o);
        assert_eq!(c.status.phase, Some(Phase::Error));
        let ready = cond(&c, condition::READY);
        assert!(!ready.status);
        assert_eq!(ready.reason, "InvalidSchedule");
        assert!(c.status.next_run_time.is_none());
    }

    #[test]
    fn failed_job_names_pvc_and_reason_and_recovery_clears_it() {
        let failed = JobRecord {
            name: "j-fail".into(),
            pvc: "b".into(),
            created: None,
            finished: Some("2026-01-01T10:00:05Z".parse().expect("ts")),
            outcome: JobOutcome::Failed {
                reason: "WrongPassword".into(),
                message: "wrong repository password".into(),
            },
            result: Some(MoverResult {
                ok: false,
                error: Some(MoverError {
                    kind: "WrongPassword".into(),
                    message: "x".into(),
                }),
                ..Default::default()
            }),
        };
        let c = compute(
            &policy(serde_json::json!({})),
            &Default::default(),
            &obs(vec![failed.clone()]),
        );
        let bf = cond(&c, condition::BACKUP_FAILED);
        assert!(bf.status);
        assert_eq!(bf.reason, "WrongPassword");
        assert!(bf.message.contains("PVC b"), "{}", bf.message);
        let fixed = ok_job(
            "b",
            "j-ok",
            "2026-01-01T10:10:00Z",
            &[("s9", "2026-01-01T10:09:00Z")],
        );
        let c2 = compute(
            &policy(serde_json::json!({})),
            &c.status,
            &obs(vec![failed, fixed]),
        );
        assert!(!cond(&c2, condition::BACKUP_FAILED).status);
        assert_eq!(c2.status.stored_backups.len(), 1);
    }

    #[test]
    fn suspended_and_missing_things() {
        let c = compute(
            &policy(serde_json::json!({"suspend": true})),
            &Default::default(),
            &obs(vec![]),
        );
        assert_eq!(c.status.phase, Some(Phase::Suspended));
        assert!(c.status.next_run_time.is_none());
        let mut o = obs(vec![]);
        o.missing_secrets = vec!["pw".into()];
        o.targets = Ok(Resolution {
            selected: vec!["a".into()],
            missing: vec!["b".into()],
        });
        let c = compute(&policy(serde_json::json!({})), &Default::default(), &o);
        assert_eq!(c.status.phase, Some(Phase::Error));
        assert_eq!(cond(&c, condition::READY).reason, "SecretMissing");
        let t = cond(&c, condition::TARGETS_RESOLVED);
        assert_eq!((t.status, t.reason.as_str()), (false, "PVCNotFound"));
        assert!(t.message.contains('b'));
    }

    #[test]
    fn a_selection_of_no_pvc_is_a_no_targets_warning() {
        let mut o = obs(vec![]);
        o.targets = Ok(Resolution::default());
        let c = compute(&policy(serde_json::json!({})), &Default::default(), &o);
        let t = cond(&c, condition::TARGETS_RESOLVED);
        assert_eq!((t.status, t.reason.as_str()), (false, "NoTargets"));
        // A warning: the policy itself is in order.
        assert_eq!(c.status.phase, Some(Phase::Active));
        assert!(c.status.target_pvcs.is_empty());
    }

    #[test]
    fn retention_trims_status_to_max_backups() {
        let job = ok_job(
            "a",
            "j",
            "2026-01-01T10:00:05Z",
            &[
                ("s3", "2026-01-01T10:00:00Z"),
                ("s2", "2026-01-01T09:00:00Z"),
                ("s1", "2026-01-01T08:00:00Z"),
            ],
        );
        let c = compute(
            &policy(serde_json::json!({})),
            &Default::default(),
            &obs(vec![job]),
        );
        let ids: Vec<_> = c
            .status
            .stored_backups
            .iter()
            .filter_map(|b| b.snapshot_id.clone())
            .collect();
        assert_eq!(ids, ["s3", "s2"]);
    }
}
