//! Folding a snapshot reconcile into the policy's computed status (pure).

use super::{PvcProblem, SnapshotError, SnapshotOutcome, VOLUME_SNAPSHOT_KIND};
use crate::api::{BackupPolicy, Phase};
use crate::status::{Computed, ConditionUpdate, condition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn cond(
    type_: &'static str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
) -> ConditionUpdate {
    ConditionUpdate {
        type_,
        status,
        reason: reason.to_string(),
        message: message.into(),
    }
}

fn replace(conds: &mut Vec<ConditionUpdate>, c: ConditionUpdate) {
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(slot) => *slot = c,
        None => conds.push(c),
    }
}

/// Puts the result of [`super::reconcile_snapshots`] into the status that
/// `status::compute` made for a `Snapshot` policy (which has no Jobs):
/// * `Ok`: `storedBackups`, `nextRunTime`, `lastBackupTime` from the snapshots;
///   `BackupFailed` True with the first problem's reason (`NoCSIDriver`,
///   `SnapshotClassDriverMismatch`, `SnapshotFailed`, `PVCNotFound`) and every
///   problem in the message, else False `SnapshotsReady`.
/// * `Err` (not transient): `Ready` False with the error's reason
///   (`SnapshotAPIUnavailable`, `VolumeSnapshotClassNotFound`, ...), phase
///   Error; stored backups stay as they were.
///
/// Transient errors (API calls) are left to the caller: retry the handler.
/// A policy-wide problem `compute` already found (bad schedule or selector)
/// keeps its own Ready condition.
pub fn apply_outcome(computed: &mut Computed, result: &Result<SnapshotOutcome, SnapshotError>) {
    match result {
        Ok(out) => {
            let status = &mut computed.status;
            status.stored_backups = out.stored_backups.clone();
            status.next_run_time = out.next_run_time.map(Time);
            if let Some(t) = out.last_backup_time
                && status
                    .last_backup_time
                    .as_ref()
                    .is_none_or(|prev| prev.0 < t)
            {
                status.last_backup_time = Some(Time(t));
            }
            let failed = if out.problems.is_empty() {
                let n = out
                    .stored_backups
                    .iter()
                    .filter(|b| b.status == "Ready")
                    .count();
                cond(
                    condition::BACKUP_FAILED,
                    false,
                    "SnapshotsReady",
                    format!("{n} ready VolumeSnapshot(s)"),
                )
            } else {
                let message = out
                    .problems
                    .iter()
                    .map(|p| p.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                cond(
                    condition::BACKUP_FAILED,
                    true,
                    out.problems[0].reason,
                    message,
                )
            };
            replace(&mut computed.conditions, failed);
        }
        Err(e) => apply_policy_error(computed, e),
    }
}

/// A policy-wide snapshot error: `Ready` False with its reason, phase Error,
/// unless `compute` already blocked the policy for its own reason. Transient
/// errors are the caller's to retry and change nothing.
fn apply_policy_error(computed: &mut Computed, e: &SnapshotError) {
    if e.is_transient() {
        return;
    }
    let blocked_already = computed
        .conditions
        .iter()
        .any(|c| c.type_ == condition::READY && !c.status);
    if !blocked_already {
        computed.status.phase = Some(Phase::Error);
        replace(
            &mut computed.conditions,
            cond(condition::READY, false, e.reason(), e.to_string()),
        );
    }
}

/// Puts the result of one round of `SnapshotThenCopy` runs into the status
/// `status::compute` made from the copy Jobs: per-PVC problems (snapshot
/// failed, no CSI driver, ...) set `BackupFailed` with the first problem's
/// reason; a policy-wide error sets `Ready` False as for `Snapshot`. Without
/// problems the Jobs' verdict stands.
pub fn apply_copy_round(computed: &mut Computed, result: &Result<Vec<PvcProblem>, SnapshotError>) {
    match result {
        Ok(problems) if problems.is_empty() => {}
        Ok(problems) => {
            let message = problems
                .iter()
                .map(|p| p.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            replace(
                &mut computed.conditions,
                cond(condition::BACKUP_FAILED, true, problems[0].reason, message),
            );
        }
        Err(e) => apply_policy_error(computed, e),
    }
}

/// For a `Restore` of `source_pvc` naming `snapshot` (a `storedBackups`
/// snapshot id, or `latest` optionally taken `before` a time): the
/// VolumeSnapshot to restore from, when the policy's stored backup is one.
/// `None` means a repository backup (restic): restore with the Job.
pub fn restore_source(
    policy: &BackupPolicy,
    source_pvc: &str,
    snapshot: &str,
    before: Option<&str>,
) -> Option<String> {
    let stored = policy
        .status
        .as_ref()
        .map(|s| s.stored_backups.as_slice())
        .unwrap_or_default();
    let is_snapshot =
        |b: &&crate::api::StoredBackup| b.location.starts_with(&format!("{VOLUME_SNAPSHOT_KIND}/"));
    if snapshot == "latest" {
        let before = before.and_then(|b| b.parse::<jiff::Timestamp>().ok());
        return stored
            .iter()
            .filter(is_snapshot)
            .filter(|b| b.pvc_name == source_pvc && b.status == "Ready")
            .filter_map(|b| Some((b.timestamp.parse::<jiff::Timestamp>().ok()?, b)))
            .filter(|(t, _)| before.is_none_or(|limit| *t < limit))
            .max_by_key(|(t, _)| *t)
            .and_then(|(_, b)| super::observed::snapshot_of(b).map(str::to_string));
    }
    stored
        .iter()
        .filter(is_snapshot)
        .find(|b| b.snapshot_id.as_deref() == Some(snapshot) || b.name == snapshot)
        .and_then(|b| super::observed::snapshot_of(b).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupPolicyStatus, StoredBackup};
    use crate::snapshot::{PvcProblem, REASON_API_UNAVAILABLE, REASON_NO_CSI_DRIVER};
    use serde_json::json;

    fn computed() -> Computed {
        Computed {
            status: BackupPolicyStatus {
                phase: Some(Phase::Active),
                ..Default::default()
            },
            conditions: vec![
                cond(condition::READY, true, "Scheduled", "1 PVC(s) scheduled"),
                cond(condition::BACKUP_FAILED, false, "BackupsSucceeded", "x"),
            ],
        }
    }

    fn backup(name: &str, pvc: &str, ts: &str, status: &str) -> StoredBackup {
        StoredBackup {
            name: name.into(),
            timestamp: ts.into(),
            pvc_name: pvc.into(),
            size: 1,
            location: format!("VolumeSnapshot/{name}"),
            status: status.into(),
            snapshot_id: Some(name.into()),
            warning: None,
        }
    }

    #[test]
    fn outcome_fills_status_and_problems_become_backup_failed() {
        let mut c = computed();
        let out = SnapshotOutcome {
            stored_backups: vec![backup("s1", "data", "2026-01-01T10:00:00Z", "Ready")],
            next_run_time: Some("2026-01-01T11:00:00Z".parse().expect("ts")),
            last_backup_time: Some("2026-01-01T10:00:00Z".parse().expect("ts")),
            problems: vec![PvcProblem {
                pvc: "plain".into(),
                reason: REASON_NO_CSI_DRIVER,
                message: "PVC plain ...".into(),
            }],
            ..Default::default()
        };
        apply_outcome(&mut c, &Ok(out));
        assert_eq!(c.status.stored_backups.len(), 1);
        assert_eq!(
            c.status
                .next_run_time
                .as_ref()
                .map(|t| t.0.to_string())
                .as_deref(),
            Some("2026-01-01T11:00:00Z")
        );
        assert_eq!(
            c.status
                .last_backup_time
                .as_ref()
                .map(|t| t.0.to_string())
                .as_deref(),
            Some("2026-01-01T10:00:00Z")
        );
        let failed = c
            .conditions
            .iter()
            .find(|x| x.type_ == condition::BACKUP_FAILED)
            .expect("cond");
        assert!(failed.status);
        assert_eq!(failed.reason, REASON_NO_CSI_DRIVER);
        assert_eq!(c.status.phase, Some(Phase::Active));
    }

    #[test]
    fn api_unavailable_blocks_with_its_reason() {
        let mut c = computed();
        apply_outcome(
            &mut c,
            &Err(SnapshotError::ApiUnavailable("not served".into())),
        );
        let ready = c
            .conditions
            .iter()
            .find(|x| x.type_ == condition::READY)
            .expect("ready");
        assert!(!ready.status);
        assert_eq!(ready.reason, REASON_API_UNAVAILABLE);
        assert_eq!(c.status.phase, Some(Phase::Error));
        assert_eq!(c.conditions.len(), 2, "replaced, not added");
    }

    #[test]
    fn restore_source_finds_snapshot_backups_only() {
        let mut p = BackupPolicy::new(
            "p",
            serde_json::from_value(
                json!({"targets": {"names": ["data"]}, "schedule": "@hourly", "method": "Snapshot",
                "snapshot": {"volumeSnapshotClassName": "c"}}),
            )
            .expect("spec"),
        );
        let mut restic = backup("data-abc", "data", "2026-01-01T12:00:00Z", "Completed");
        restic.location = "s3:http://s3/b/ns/data".into();
        restic.snapshot_id = Some("abc123".into());
        p.status = Some(BackupPolicyStatus {
            stored_backups: vec![
                backup("s2", "data", "2026-01-01T11:00:00Z", "Ready"),
                backup("s1", "data", "2026-01-01T10:00:00Z", "Ready"),
                backup("s3", "data", "2026-01-01T11:30:00Z", "Failed"),
                restic,
            ],
            ..Default::default()
        });
        assert_eq!(
            restore_source(&p, "data", "s1", None).as_deref(),
            Some("s1")
        );
        assert_eq!(
            restore_source(&p, "data", "latest", None).as_deref(),
            Some("s2")
        );
        assert_eq!(
            restore_source(&p, "data", "latest", Some("2026-01-01T10:30:00Z")).as_deref(),
            Some("s1")
        );
        assert_eq!(
            restore_source(&p, "data", "abc123", None),
            None,
            "restic backups restore with a Job"
        );
        assert_eq!(restore_source(&p, "other", "latest", None), None);
    }
}
