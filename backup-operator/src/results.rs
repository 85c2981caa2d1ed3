//! What finished Jobs say: the mover's JSON result (read from the pod's
//! termination message) and the Job's own outcome.

use crate::api::StoredBackup;
use k8s_openapi::api::batch::v1::Job;
use serde::{Deserialize, Serialize};

/// The mover's report, as written to `/dev/termination-log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct MoverResult {
    /// Whether the operation succeeded.
    pub ok: bool,
    /// `backup`, `restore`, `forget`, ...
    #[serde(default)]
    pub operation: String,
    /// Snapshot written or restored.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// Snapshot time (RFC 3339).
    #[serde(default)]
    pub time: Option<String>,
    /// PVC the snapshot belongs to.
    #[serde(default)]
    pub pvc: Option<String>,
    /// Bytes read from the source.
    #[serde(default)]
    pub bytes_processed: Option<u64>,
    /// Bytes newly stored.
    #[serde(default)]
    pub bytes_added: Option<u64>,
    /// Bytes written by a restore.
    #[serde(default)]
    pub bytes_restored: Option<u64>,
    /// Files processed.
    #[serde(default)]
    pub files: Option<u64>,
    /// Wall time.
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    /// Repository, without credentials.
    #[serde(default)]
    pub location: Option<String>,
    /// Snapshots of this PVC left after retention, newest first.
    #[serde(default)]
    pub snapshots: Vec<SnapshotSummary>,
    /// Total snapshots before the mover shortened `snapshots` to fit.
    #[serde(default)]
    pub snapshot_count: Option<u64>,
    /// The backup was stored but some entries of the source could not be read.
    #[serde(default)]
    pub partial: Option<bool>,
    /// Non-fatal problem: what a partial backup left out, or a retention
    /// failure after a stored backup.
    #[serde(default)]
    pub warning: Option<String>,
    /// Set when `ok` is false.
    #[serde(default)]
    pub error: Option<MoverError>,
    /// Why retention failed after a stored backup (the kind drives the
    /// operator's reaction: stale locks are removed, a foreign repository
    /// needs `retention.adoptRepository`).
    #[serde(default)]
    pub retention_error: Option<MoverError>,
    /// Locks an `unlock` run removed (short ids).
    #[serde(default)]
    pub removed_locks: Option<Vec<String>>,
    /// Locks an `unlock` run left in place, each with why.
    #[serde(default)]
    pub kept_locks: Option<Vec<String>>,
}

impl MoverResult {
    /// A stored backup that is partial.
    pub fn is_partial(&self) -> bool {
        self.ok && self.partial == Some(true)
    }

    /// The kind of the failure that kept the repository from being
    /// maintained: the error of a failed run, or the retention error after
    /// a stored backup.
    pub fn failure_kind(&self) -> Option<&str> {
        if self.ok {
            self.retention_error.as_ref().map(|e| e.kind.as_str())
        } else {
            self.error.as_ref().map(|e| e.kind.as_str())
        }
    }

    /// Retention (forget/prune) failed after the backup was stored.
    pub fn retention_failed(&self) -> Option<&str> {
        self.warning
            .as_deref()
            .filter(|w| self.ok && !self.is_partial() && w.contains("retention failed"))
    }
}

/// One snapshot in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSummary {
    /// Snapshot id (short or full).
    pub id: String,
    /// When it was taken (RFC 3339).
    pub time: String,
    /// Bytes it holds.
    #[serde(default)]
    pub size: u64,
    /// Partial snapshot (the catalog knows this from the repository).
    #[serde(default)]
    pub partial: Option<bool>,
    /// What a partial snapshot left out.
    #[serde(default)]
    pub warning: Option<String>,
}

/// A classified mover failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MoverError {
    /// WrongPassword, BucketMissing, EndpointUnreachable, PermissionDenied, SourceEmpty, RepositoryLocked, NotFound, Interrupted, Other.
    pub kind: String,
    /// Human-readable detail (never contains secrets).
    pub message: String,
}

/// Reads a termination message; `None` if it is not a mover result (e.g. a crash log).
pub fn parse_result(message: &str) -> Option<MoverResult> {
    let trimmed = message.trim();
    let start = trimmed.find('{')?;
    serde_json::from_str(&trimmed[start..]).ok()
}

/// The stored backups of `pvc` a successful result reports.
/// The newest one is `Partial` when the result says so.
pub fn stored_backups(result: &MoverResult, pvc: &str) -> Vec<StoredBackup> {
    let location = result.location.clone().unwrap_or_default();
    result
        .snapshots
        .iter()
        .map(|s| {
            let short: String = s.id.chars().take(8).collect();
            let this_one = result
                .snapshot_id
                .as_deref()
                .is_some_and(|id| id.starts_with(&short) && !short.is_empty());
            let partial = (this_one && result.is_partial()) || s.partial == Some(true);
            StoredBackup {
                name: status_entry_name(pvc, &short),
                timestamp: s.time.clone(),
                pvc_name: pvc.to_string(),
                size: i64::try_from(s.size).unwrap_or(i64::MAX),
                location: location.clone(),
                status: if partial { "Partial" } else { "Completed" }.into(),
                snapshot_id: Some(s.id.clone()),
                warning: if partial {
                    s.warning.clone().or_else(|| result.warning.clone())
                } else {
                    None
                },
            }
        })
        .collect()
}

/// The `storedBackups[].name` of a snapshot: `<pvc>-<short id>`.
pub fn status_entry_name(pvc: &str, short_id: &str) -> String {
    let short: String = short_id.chars().take(8).collect();
    format!("{pvc}-{short}")
}

/// Where a Job stands.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// Not finished yet.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished unsuccessfully; `reason` is the most specific cause known.
    Failed {
        /// Machine-readable cause (mover error kind or Job condition reason).
        reason: String,
        /// What to tell the user.
        message: String,
    },
}

/// Job conditions meaning success (`SuccessCriteriaMet` comes before
/// `Complete`) and failure (`FailureTarget` before `Failed`).
const SUCCEEDED: [&str; 2] = ["Complete", "SuccessCriteriaMet"];
const FAILED: [&str; 2] = ["Failed", "FailureTarget"];

/// When a Job finished: `completionTime`, else the newest true terminal
/// condition (set before `completionTime`); `None` while it runs.
pub fn job_finished_at(job: &Job) -> Option<jiff::Timestamp> {
    let status = job.status.as_ref()?;
    status.completion_time.as_ref().map(|t| t.0).or_else(|| {
        status
            .conditions
            .iter()
            .flatten()
            .filter(|c| {
                c.status == "True"
                    && (SUCCEEDED.contains(&c.type_.as_str()) || FAILED.contains(&c.type_.as_str()))
            })
            .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
            .max()
    })
}

/// Classifies a Job, using the mover's result when there is one.
pub fn job_outcome(job: &Job, result: Option<&MoverResult>) -> JobOutcome {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let is = |t: &str| {
        conditions
            .iter()
            .any(|c| c.type_ == t && c.status == "True")
    };
    if SUCCEEDED.iter().any(|t| is(t)) {
        return JobOutcome::Succeeded;
    }
    if FAILED.iter().any(|t| is(t)) {
        if let Some(err) = result.and_then(|r| r.error.clone()) {
            return JobOutcome::Failed {
                reason: err.kind,
                message: err.message,
            };
        }
        let cond = conditions
            .iter()
            .find(|c| FAILED.contains(&c.type_.as_str()) && c.status == "True");
        return JobOutcome::Failed {
            reason: cond
                .and_then(|c| c.reason.clone())
                .unwrap_or_else(|| "JobFailed".into()),
            message: cond
                .and_then(|c| c.message.clone())
                .unwrap_or_else(|| "the backup Job failed".into()),
        };
    }
    JobOutcome::Running
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

    fn job(cond: &str, reason: Option<&str>) -> Job {
        Job {
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: cond.into(),
                    status: "True".into(),
                    reason: reason.map(Into::into),
                    message: Some("Job has reached the specified backoff limit".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn finish_time_is_completion_time_else_the_newest_terminal_condition() {
        let at = |s: &str| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(s.parse().expect("time"))
        };
        let mut j = job("SuccessCriteriaMet", None);
        assert_eq!(job_finished_at(&j), None, "no transition time recorded");
        let st = j.status.as_mut().expect("status");
        let conds = st.conditions.as_mut().expect("conditions");
        conds[0].last_transition_time = Some(at("2026-01-01T10:00:05Z"));
        conds.push(JobCondition {
            type_: "Suspended".into(),
            status: "True".into(),
            last_transition_time: Some(at("2026-01-01T11:00:00Z")),
            ..Default::default()
        });
        assert_eq!(
            job_finished_at(&j).map(|t| t.to_string()).as_deref(),
            Some("2026-01-01T10:00:05Z"),
            "only terminal conditions count"
        );
        j.status.as_mut().expect("status").completion_time = Some(at("2026-01-01T10:00:09Z"));
        assert_eq!(
            job_finished_at(&j).map(|t| t.to_string()).as_deref(),
            Some("2026-01-01T10:00:09Z")
        );
        assert_eq!(job_finished_at(&Job::default()), None);
    }

    #[test]
    fn parses_a_success_and_maps_snapshots() {
        let msg = r#"{"ok":true,"operation":"backup","snapshotId":"abcdef0123456789","time":"2026-01-01T00:00:00Z","pvc":"data","bytesProcessed":10,"bytesAdded":10,"location":"s3:http://x/b/ns/data","snapshots":[{"id":"abcdef0123456789","time":"2026-01-01T00:00:00Z","size":10}],"error":null}"#;
        let r = parse_result(msg).expect("parsed");
        let sb = stored_backups(&r, "data");
        assert_eq!(sb.len(), 1);
        assert_eq!(sb[0].name, "data-abcdef01");
        assert_eq!(sb[0].size, 10);
        assert_eq!(sb[0].location, "s3:http://x/b/ns/data");
        assert_eq!(
            job_outcome(&job("Complete", None), Some(&r)),
            JobOutcome::Succeeded
        );
    }

    #[test]
    fn a_partial_result_marks_its_snapshot_partial() {
        let msg = r#"{"ok":true,"operation":"backup","snapshotId":"bbbbbbbb","partial":true,"warning":"partial backup: 1 entries could not be read (retention skipped): /data/secret: Permission denied","snapshots":[{"id":"bbbbbbbb","time":"2026-01-02T00:00:00Z","size":1},{"id":"aaaaaaaa","time":"2026-01-01T00:00:00Z","size":1}],"snapshotCount":2,"error":null}"#;
        let r = parse_result(msg).expect("parsed");
        assert!(r.is_partial());
        assert_eq!(r.retention_failed(), None);
        assert_eq!(r.snapshot_count, Some(2));
        let sb = stored_backups(&r, "data");
        assert_eq!(sb[0].status, "Partial");
        assert!(
            sb[0]
                .warning
                .as_deref()
                .is_some_and(|w| w.contains("/data/secret"))
        );
        assert_eq!(sb[1].status, "Completed");
        assert_eq!(sb[1].warning, None);
        let r = parse_result(
            r#"{"ok":true,"warning":"backup stored but retention failed: locked","error":null}"#,
        )
        .expect("parsed");
        assert!(r.retention_failed().is_some_and(|w| w.contains("locked")));
    }

    #[test]
    fn failure_prefers_the_mover_error_kind() {
        let r = parse_result(r#"{"ok":false,"error":{"kind":"WrongPassword","message":"wrong repository password"}}"#).expect("parsed");
        assert_eq!(
            job_outcome(&job("Failed", Some("BackoffLimitExceeded")), Some(&r)),
            JobOutcome::Failed {
                reason: "WrongPassword".into(),
                message: "wrong repository password".into()
            }
        );
        match job_outcome(&job("Failed", Some("DeadlineExceeded")), None) {
            JobOutcome::Failed { reason, .. } => assert_eq!(reason, "DeadlineExceeded"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn logs_are_not_results() {
        assert!(parse_result("panic: something").is_none());
        assert_eq!(job_outcome(&Job::default(), None), JobOutcome::Running);
    }
}
