//! When to remove stale locks, and the Job that does it.
//!
//! The mover counts every lock it meets as held, stale ones included (as
//! restic >= 0.15 does), so a backup Job killed by SIGKILL or a lost node
//! leaves a lock that blocks the next prune, and every later one. Removing
//! such a lock is safe only when nobody uses the repository; the operator
//! is the one party that knows when none of its Jobs does, so it runs the
//! mover's `unlock` step then:
//! - the newest finished backup Job of a PVC met a lock (`RepositoryLocked`,
//!   as its error or as its retention error), and
//! - no Job of the operator that may use that repository runs in the
//!   namespace (a backup of the PVC by any policy; any restore or catalog
//!   Job, which this planner does not map to a repository, blocks all).
//!
//! `unlock` removes only stale locks (not refreshed for 30 minutes), so a
//! lock of a process the operator does not know of (another cluster, a
//! user's restic) that is still alive stays; such locks are named in a
//! `LocksKept` Event. One unlock Job per triggering Job: its name derives
//! from the trigger, so a lock that is not stale yet is tried again after
//! the next failing run, not in a loop.

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::Job;

use crate::api::{BackupPolicy, MAINTENANCE_LABEL};
use crate::catalog::conditions::REPOSITORY_LOCKED;
use crate::desired::{self, DesiredError};
use crate::naming;
use crate::results::{JobOutcome, MoverResult};
use crate::status::JobRecord;

/// The `MAINTENANCE_LABEL` value of unlock Jobs.
pub const TASK: &str = "unlock";
/// Annotation naming the Job whose lock conflict started an unlock Job.
pub const TRIGGER_ANNOTATION: &str = "backup.backup.example.com/unlock-trigger";
/// Annotation set once the outcome of an unlock Job was reported.
pub const REPORTED_ANNOTATION: &str = "backup.backup.example.com/reported";

/// Which repositories the operator's running Jobs may be using.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Busy {
    /// A Job runs whose repository is not known here (restore, catalog).
    pub any: bool,
    /// PVCs with a running backup or unlock Job (any policy).
    pub pvcs: BTreeSet<String>,
}

impl Busy {
    fn blocks(&self, pvc: &str) -> bool {
        self.any || self.pvcs.contains(pvc)
    }
}

/// One unlock to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlockRun {
    pub pvc: String,
    /// The Job that met the lock.
    pub trigger: String,
}

fn met_a_lock(r: &MoverResult, outcome: &JobOutcome) -> bool {
    r.failure_kind() == Some(REPOSITORY_LOCKED)
        || matches!(outcome, JobOutcome::Failed { reason, .. } if reason == REPOSITORY_LOCKED)
}

/// The unlocks the policy's backup Jobs call for now.
pub fn plan(jobs: &[JobRecord], busy: &Busy) -> Vec<UnlockRun> {
    let newest = crate::status::newest_finished(jobs);
    let running: BTreeSet<&str> = jobs
        .iter()
        .filter(|j| j.outcome == JobOutcome::Running)
        .map(|j| j.pvc.as_str())
        .collect();
    newest
        .into_iter()
        .filter(|(pvc, _)| !running.contains(pvc) && !busy.blocks(pvc))
        .filter(|(_, j)| j.result.as_ref().is_some_and(|r| met_a_lock(r, &j.outcome)))
        .map(|(pvc, j)| UnlockRun {
            pvc: pvc.to_string(),
            trigger: j.name.clone(),
        })
        .collect()
}

/// The Job that runs `mover unlock` on the PVC's repository.
pub fn unlock_job(
    policy: &BackupPolicy,
    run: &UnlockRun,
    image: &str,
) -> Result<Job, DesiredError> {
    let repos = desired::policy_repos(policy, image)?;
    let args: Vec<String> = [
        "unlock",
        "--repository",
        &desired::repository(repos.dest, &repos.ns, &run.pvc),
        "--result-file",
        "/dev/termination-log",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut labels = desired::labels(&repos.name, &run.pvc);
    labels.insert(MAINTENANCE_LABEL.to_string(), TASK.to_string());
    let mut annotations = desired::pvc_annotations(&run.pvc);
    annotations.insert(TRIGGER_ANNOTATION.to_string(), run.trigger.clone());
    let job_name = naming::unlock_job_name(&repos.name, &run.pvc, &run.trigger);
    Ok(crate::one_shot::job(
        policy,
        &repos,
        job_name,
        args,
        labels,
        Some(annotations),
    ))
}

/// What to tell the user about a finished unlock Job: (warning, reason,
/// message).
pub fn report(
    pvc: &str,
    outcome: &JobOutcome,
    result: Option<&MoverResult>,
) -> (bool, &'static str, String) {
    let Some(r) = result.filter(|r| r.ok) else {
        let why = match (result.and_then(|r| r.error.as_ref()), outcome) {
            (Some(e), _) => format!("{}: {}", e.kind, e.message),
            (None, JobOutcome::Failed { message, .. }) => message.clone(),
            _ => "the unlock Job left no result".into(),
        };
        return (
            true,
            "UnlockFailed",
            format!("removing stale locks of PVC {pvc}'s repository failed: {why}"),
        );
    };
    let removed = r.removed_locks.clone().unwrap_or_default();
    let kept = r.kept_locks.clone().unwrap_or_default();
    if !kept.is_empty() {
        let mut msg = format!(
            "PVC {pvc}'s repository: {} lock(s) kept (not stale: refreshed within 30 minutes, \
             unreadable, or of a live process): {}",
            kept.len(),
            kept.join("; ")
        );
        if !removed.is_empty() {
            msg.push_str(&format!("; removed stale: {}", removed.join(", ")));
        }
        return (true, "LocksKept", crate::catalog::shorten(&msg, 1024));
    }
    if removed.is_empty() {
        return (
            false,
            "NoStaleLocks",
            format!("PVC {pvc}'s repository holds no lock now"),
        );
    }
    (
        false,
        "StaleLocksRemoved",
        format!(
            "removed {} stale lock(s) of PVC {pvc}'s repository, left by a Job that ended \
             without releasing them: {}",
            removed.len(),
            removed.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::MoverError;

    fn rec(name: &str, pvc: &str, finished: &str, result: Option<MoverResult>) -> JobRecord {
        let outcome = match &result {
            Some(r) if !r.ok => JobOutcome::Failed {
                reason: r.error.as_ref().map(|e| e.kind.clone()).unwrap_or_default(),
                message: String::new(),
            },
            _ => JobOutcome::Succeeded,
        };
        JobRecord {
            name: name.into(),
            pvc: pvc.into(),
            created: None,
            finished: Some(finished.parse().expect("ts")),
            outcome,
            result,
        }
    }

    fn locked_retention() -> MoverResult {
        MoverResult {
            ok: true,
            warning: Some("backup stored but retention failed: locked".into()),
            retention_error: Some(MoverError {
                kind: "RepositoryLocked".into(),
                message: "locked by pid 7 on host old-pod".into(),
            }),
            ..Default::default()
        }
    }

    fn locked_backup() -> MoverResult {
        MoverResult {
            ok: false,
            error: Some(MoverError {
                kind: "RepositoryLocked".into(),
                message: "exclusive lock".into(),
            }),
            ..Default::default()
        }
    }

    const T1: &str = "2026-01-01T00:00:00Z";
    const T2: &str = "2026-01-01T01:00:00Z";

    #[test]
    fn a_lock_met_by_the_newest_job_calls_for_one_unlock_per_pvc() {
        let jobs = [
            rec("a1", "a", T1, Some(locked_retention())),
            rec("b1", "b", T1, Some(locked_backup())),
            rec(
                "c1",
                "c",
                T1,
                Some(MoverResult {
                    ok: true,
                    ..Default::default()
                }),
            ),
        ];
        let runs = plan(&jobs, &Busy::default());
        assert_eq!(
            runs,
            [
                UnlockRun {
                    pvc: "a".into(),
                    trigger: "a1".into()
                },
                UnlockRun {
                    pvc: "b".into(),
                    trigger: "b1".into()
                },
            ]
        );
    }

    #[test]
    fn a_later_good_run_or_a_running_job_means_no_unlock() {
        let ok = MoverResult {
            ok: true,
            ..Default::default()
        };
        let jobs = [
            rec("a1", "a", T1, Some(locked_retention())),
            rec("a2", "a", T2, Some(ok)),
        ];
        assert!(plan(&jobs, &Busy::default()).is_empty());
        let mut running = rec("b2", "b", T2, None);
        running.outcome = JobOutcome::Running;
        running.finished = None;
        let jobs = [rec("b1", "b", T1, Some(locked_backup())), running];
        assert!(plan(&jobs, &Busy::default()).is_empty());
    }

    #[test]
    fn any_job_that_may_use_the_repository_postpones_the_unlock() {
        let jobs = [rec("a1", "a", T1, Some(locked_retention()))];
        let other_policy = Busy {
            any: false,
            pvcs: BTreeSet::from(["a".to_string()]),
        };
        assert!(plan(&jobs, &other_policy).is_empty());
        let restore = Busy {
            any: true,
            pvcs: BTreeSet::new(),
        };
        assert!(plan(&jobs, &restore).is_empty());
        let elsewhere = Busy {
            any: false,
            pvcs: BTreeSet::from(["z".to_string()]),
        };
        assert_eq!(plan(&jobs, &elsewhere).len(), 1);
    }

    #[test]
    fn other_failures_do_not_unlock() {
        let mut wrong = locked_backup();
        if let Some(e) = wrong.error.as_mut() {
            e.kind = "WrongPassword".into();
        }
        let mut foreign = locked_retention();
        if let Some(e) = foreign.retention_error.as_mut() {
            e.kind = "ForeignRepository".into();
        }
        let jobs = [
            rec("a1", "a", T1, Some(wrong)),
            rec("b1", "b", T1, Some(foreign)),
            rec("c1", "c", T1, None),
        ];
        assert!(plan(&jobs, &Busy::default()).is_empty());
    }

    #[test]
    fn the_job_runs_unlock_on_the_pvc_repository_with_a_name_per_trigger() {
        let p = crate::desired::tests::policy();
        let run = UnlockRun {
            pvc: "data".into(),
            trigger: "j1".into(),
        };
        let job = unlock_job(&p, &run, "img").expect("job");
        let c = &job
            .spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .as_ref()
            .expect("pod")
            .containers[0];
        let args = c.args.clone().unwrap_or_default();
        assert_eq!(args[0], "unlock");
        assert!(
            !args.iter().any(|a| a == "--remove-all"),
            "only stale locks go"
        );
        assert!(args.iter().any(|a| a.ends_with("/apps/data")), "{args:?}");
        let labels = job.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(MAINTENANCE_LABEL).map(String::as_str),
            Some(TASK)
        );
        let other = unlock_job(
            &p,
            &UnlockRun {
                trigger: "j2".into(),
                ..run.clone()
            },
            "img",
        )
        .expect("job");
        assert_ne!(job.metadata.name, other.metadata.name);
        assert_eq!(
            job.metadata.name,
            unlock_job(&p, &run, "img").expect("job").metadata.name
        );
    }

    #[test]
    fn reports_name_what_was_removed_and_what_stays() {
        let ok = |removed: &[&str], kept: &[&str]| MoverResult {
            ok: true,
            removed_locks: Some(removed.iter().map(|s| s.to_string()).collect()),
            kept_locks: (!kept.is_empty()).then(|| kept.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        let s = JobOutcome::Succeeded;
        let (warn, reason, msg) = report("a", &s, Some(&ok(&["1234abcd"], &[])));
        assert!(!warn && reason == "StaleLocksRemoved" && msg.contains("1234abcd"));
        let (warn, reason, msg) = report("a", &s, Some(&ok(&[], &["lock 9 (fresh)"])));
        assert!(warn && reason == "LocksKept" && msg.contains("fresh"));
        assert_eq!(report("a", &s, Some(&ok(&[], &[]))).1, "NoStaleLocks");
        let failed = JobOutcome::Failed {
            reason: "DeadlineExceeded".into(),
            message: "deadline".into(),
        };
        let (warn, reason, msg) = report("a", &failed, None);
        assert!(warn && reason == "UnlockFailed" && msg.contains("deadline"));
    }
}
