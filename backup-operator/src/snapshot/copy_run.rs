//! The next step of a `SnapshotThenCopy` run for one PVC (pure).
//!
//! A run goes: take the intermediate VolumeSnapshot, wait until it is ready,
//! make a temporary PVC from it, run the copy Job over that PVC, then delete
//! the temporary PVC (and the snapshot unless `keepSnapshot`). The operator
//! drives runs itself, like `Snapshot` policies, because the snapshot must
//! exist before any pod starts: no CronJob.
//!
//! What has happened is read back from the cluster each time, so a restarted
//! operator continues where it stopped:
//! * an *open* run is a copy-source snapshot not yet marked finished;
//! * its copy Job is named after the snapshot;
//! * the last run is the newest scheduled time of any copy-source snapshot or
//!   copy Job of the PVC, which feeds the same due-time rule as `Snapshot`
//!   (one catch-up run after downtime, never a burst).

use super::due;
use crate::schedule::Schedule;
use jiff::Timestamp;

/// A copy-source snapshot of the PVC, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSnapshot {
    /// Its name.
    pub name: String,
    /// The scheduled time it was taken for.
    pub run_for: Timestamp,
    /// Marked finished (kept by `keepSnapshot`, or failed and left for the user).
    pub finished: bool,
}

/// A copy Job of the PVC, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyJob {
    /// The Job's name.
    pub name: String,
    /// The copy-source snapshot it backs up.
    pub snapshot: String,
    /// The scheduled time of its run.
    pub run_for: Timestamp,
    /// Completed or failed for good.
    pub finished: bool,
}

/// What to do next for one PVC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyStep {
    /// Nothing to do until the next scheduled time.
    Idle,
    /// A run is due: take the snapshot for `run_for`.
    Start { run_for: Timestamp },
    /// The run of `snapshot` has no Job yet: wait for the snapshot, then make
    /// the temporary PVC and the Job.
    Advance {
        snapshot: String,
        run_for: Timestamp,
    },
    /// The copy Job of `snapshot` is running.
    WaitForJob { snapshot: String },
    /// The copy Job `job` of `snapshot` finished: remove its pods (a PVC
    /// stays in use until the pods that mounted it are gone), the temporary
    /// PVC and the snapshot (or mark it finished when it is kept).
    Cleanup { snapshot: String, job: String },
}

/// Decides the next step for one PVC at `now`. Open runs come first (oldest
/// first), so a run is always finished before the next one starts.
pub fn next_step(
    schedule: &Schedule,
    not_before: Timestamp,
    suspended: bool,
    snapshots: &[SourceSnapshot],
    jobs: &[CopyJob],
    now: Timestamp,
) -> CopyStep {
    let mut open: Vec<&SourceSnapshot> = snapshots.iter().filter(|s| !s.finished).collect();
    open.sort_by_key(|s| s.run_for);
    if let Some(s) = open.first() {
        return match jobs.iter().find(|j| j.snapshot == s.name) {
            Some(j) if j.finished => CopyStep::Cleanup {
                snapshot: s.name.clone(),
                job: j.name.clone(),
            },
            Some(_) => CopyStep::WaitForJob {
                snapshot: s.name.clone(),
            },
            None => CopyStep::Advance {
                snapshot: s.name.clone(),
                run_for: s.run_for,
            },
        };
    }
    if suspended {
        return CopyStep::Idle;
    }
    let last_run = snapshots
        .iter()
        .map(|s| s.run_for)
        .chain(jobs.iter().map(|j| j.run_for))
        .max();
    match due::evaluate(schedule, not_before, last_run, now).run_for {
        Some(run_for) => CopyStep::Start { run_for },
        None => CopyStep::Idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::snapshot::test_support::{hourly, ts};

    /// The step of an hourly, unsuspended policy created at [`CREATED`].
    fn step_at(snaps: &[SourceSnapshot], jobs: &[CopyJob], at: &str) -> CopyStep {
        next_step(&hourly(), ts(CREATED), false, snaps, jobs, ts(at))
    }

    fn snap(name: &str, run_for: &str, finished: bool) -> SourceSnapshot {
        SourceSnapshot {
            name: name.into(),
            run_for: ts(run_for),
            finished,
        }
    }

    fn job(snapshot: &str, run_for: &str, finished: bool) -> CopyJob {
        CopyJob {
            name: format!("job-{snapshot}"),
            snapshot: snapshot.into(),
            run_for: ts(run_for),
            finished,
        }
    }

    const CREATED: &str = "2026-01-01T09:30:00Z";

    #[test]
    fn nothing_before_the_first_scheduled_time() {
        let step = step_at(&[], &[], "2026-01-01T09:59:00Z");
        assert_eq!(step, CopyStep::Idle);
    }

    #[test]
    fn one_catch_up_run_for_the_newest_missed_time() {
        let step = step_at(&[], &[], "2026-01-01T13:20:00Z");
        assert_eq!(
            step,
            CopyStep::Start {
                run_for: ts("2026-01-01T13:00:00Z")
            }
        );
    }

    #[test]
    fn an_open_snapshot_without_job_advances() {
        let s = [snap("s10", "2026-01-01T10:00:00Z", false)];
        let step = step_at(&s, &[], "2026-01-01T10:00:30Z");
        assert_eq!(
            step,
            CopyStep::Advance {
                snapshot: "s10".into(),
                run_for: ts("2026-01-01T10:00:00Z")
            }
        );
    }

    #[test]
    fn a_running_job_is_waited_for_even_when_the_next_run_is_due() {
        let s = [snap("s10", "2026-01-01T10:00:00Z", false)];
        let j = [job("s10", "2026-01-01T10:00:00Z", false)];
        let step = step_at(&s, &j, "2026-01-01T11:05:00Z");
        assert_eq!(
            step,
            CopyStep::WaitForJob {
                snapshot: "s10".into()
            }
        );
    }

    #[test]
    fn a_finished_job_cleans_up_its_snapshot() {
        let s = [snap("s10", "2026-01-01T10:00:00Z", false)];
        let j = [job("s10", "2026-01-01T10:00:00Z", true)];
        let step = step_at(&s, &j, "2026-01-01T10:03:00Z");
        assert_eq!(
            step,
            CopyStep::Cleanup {
                snapshot: "s10".into(),
                job: "job-s10".into()
            }
        );
    }

    #[test]
    fn after_cleanup_the_job_alone_marks_the_run_done() {
        // The snapshot was deleted; the Job's time keeps the run from repeating.
        let j = [job("s10", "2026-01-01T10:00:00Z", true)];
        assert_eq!(step_at(&[], &j, "2026-01-01T10:40:00Z"), CopyStep::Idle);
        assert_eq!(
            step_at(&[], &j, "2026-01-01T11:00:10Z"),
            CopyStep::Start {
                run_for: ts("2026-01-01T11:00:00Z")
            }
        );
    }

    #[test]
    fn a_failed_snapshot_marked_finished_is_not_retried_before_the_next_time() {
        let s = [snap("s10", "2026-01-01T10:00:00Z", true)];
        let step = step_at(&s, &[], "2026-01-01T10:30:00Z");
        assert_eq!(step, CopyStep::Idle);
    }

    #[test]
    fn suspended_policies_start_nothing_but_finish_open_runs() {
        let now = ts("2026-01-01T13:20:00Z");
        assert_eq!(
            next_step(&hourly(), ts(CREATED), true, &[], &[], now),
            CopyStep::Idle
        );
        let s = [snap("s13", "2026-01-01T13:00:00Z", false)];
        let j = [job("s13", "2026-01-01T13:00:00Z", true)];
        assert_eq!(
            next_step(&hourly(), ts(CREATED), true, &s, &j, now),
            CopyStep::Cleanup {
                snapshot: "s13".into(),
                job: "job-s13".into()
            }
        );
    }

    #[test]
    fn the_oldest_open_run_goes_first() {
        let s = [
            snap("s11", "2026-01-01T11:00:00Z", false),
            snap("s10", "2026-01-01T10:00:00Z", false),
        ];
        let step = step_at(&s, &[], "2026-01-01T11:01:00Z");
        assert_eq!(
            step,
            CopyStep::Advance {
                snapshot: "s10".into(),
                run_for: ts("2026-01-01T10:00:00Z")
            }
        );
    }
}
