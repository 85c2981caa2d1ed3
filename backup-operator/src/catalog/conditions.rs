//! Conditions that make partial backups, failed retention and catalog
//! problems visible (each with the PVC it is about).

use super::plan::PARTIAL;
use crate::api::StoredBackup;
use crate::status::{ConditionUpdate, JobRecord};
use std::collections::BTreeMap;

/// The newest backup of some PVC is partial (True is bad).
pub const BACKUP_PARTIAL: &str = "BackupPartial";
/// Retention failed after a stored backup (True is bad).
pub const RETENTION_FAILED: &str = "RetentionFailed";
/// The repositories were listed (False is bad).
pub const CATALOGED: &str = "Cataloged";

/// Condition types that are a problem when True.
pub const BAD_WHEN_TRUE: [&str; 3] = [
    crate::status::condition::BACKUP_FAILED,
    BACKUP_PARTIAL,
    RETENTION_FAILED,
];

fn update(type_: &'static str, status: bool, reason: &str, message: String) -> ConditionUpdate {
    ConditionUpdate {
        type_,
        status,
        reason: reason.into(),
        message,
    }
}

/// `BackupPartial` from the newest entry of each PVC.
pub fn partial(stored: &[StoredBackup]) -> ConditionUpdate {
    let mut newest: BTreeMap<&str, &StoredBackup> = BTreeMap::new();
    for b in stored {
        let t = b.timestamp.parse::<jiff::Timestamp>().ok();
        match newest.get(b.pvc_name.as_str()) {
            Some(cur) if cur.timestamp.parse::<jiff::Timestamp>().ok() >= t => {}
            _ => {
                newest.insert(&b.pvc_name, b);
            }
        }
    }
    let partial: Vec<String> = newest
        .values()
        .filter(|b| b.status == PARTIAL)
        .map(|b| {
            format!(
                "PVC {}: backup {}: {}",
                b.pvc_name,
                b.name,
                b.warning
                    .as_deref()
                    .unwrap_or("some entries could not be read")
            )
        })
        .collect();
    if partial.is_empty() {
        update(
            BACKUP_PARTIAL,
            false,
            "Complete",
            "the newest backup of every PVC is complete".into(),
        )
    } else {
        update(
            BACKUP_PARTIAL,
            true,
            "PartialBackup",
            super::shorten(&partial.join("; "), 2048),
        )
    }
}

/// `RetentionFailed` from the newest finished Job of each PVC.
pub fn retention(jobs: &[JobRecord]) -> ConditionUpdate {
    let failed: Vec<(Option<&str>, String)> = crate::status::newest_finished(jobs)
        .values()
        .filter_map(|j| {
            let r = j.result.as_ref()?;
            let w = r.retention_failed()?;
            Some((
                r.failure_kind(),
                format!("PVC {}: {} (Job {})", j.pvc, w, j.name),
            ))
        })
        .collect();
    if failed.is_empty() {
        return update(
            RETENTION_FAILED,
            false,
            "RetentionApplied",
            "retention ran after the newest backup of every PVC".into(),
        );
    }
    let has = |kind: &str| failed.iter().any(|(k, _)| *k == Some(kind));
    // The reason names what to do; the message keeps every PVC's detail.
    let (reason, guidance) = if has(FOREIGN_REPOSITORY) {
        (
            FOREIGN_REPOSITORY,
            "; nothing is deleted from a repository another cluster or namespace wrote: \
             set spec.retention.adoptRepository: true to apply retention to it \
             (this cluster becomes its owner)",
        )
    } else if has(REPOSITORY_LOCKED) {
        (
            REPOSITORY_LOCKED,
            "; the operator removes stale locks (not refreshed for 30 minutes) once no \
             Job of the repository runs (Events StaleLocksRemoved / LocksKept)",
        )
    } else {
        ("RetentionFailed", "")
    };
    let joined = failed
        .iter()
        .map(|(_, m)| m.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    update(
        RETENTION_FAILED,
        true,
        reason,
        format!(
            "{}{guidance}",
            super::shorten(&joined, 2048 - guidance.len())
        ),
    )
}

/// The mover's kind for a repository it may not maintain.
pub const FOREIGN_REPOSITORY: &str = "ForeignRepository";
/// The mover's kind for a lock it could not get.
pub const REPOSITORY_LOCKED: &str = "RepositoryLocked";

/// `Cataloged` after a catalog round.
pub fn cataloged(listed: usize, backups: usize, failures: &[(String, String)]) -> ConditionUpdate {
    if failures.is_empty() {
        update(
            CATALOGED,
            true,
            "Listed",
            format!("{backups} backup(s) of {listed} PVC(s) listed from the repositories"),
        )
    } else {
        let msg = failures
            .iter()
            .map(|(pvc, why)| format!("PVC {pvc}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        update(
            CATALOGED,
            false,
            "CatalogFailed",
            super::shorten(&msg, 2048),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{JobOutcome, MoverResult};

    fn entry(pvc: &str, ts: &str, status: &str) -> StoredBackup {
        StoredBackup {
            name: format!("{pvc}-{ts}"),
            timestamp: ts.into(),
            pvc_name: pvc.into(),
            size: 1,
            location: String::new(),
            status: status.into(),
            snapshot_id: None,
            warning: (status == PARTIAL)
                .then(|| "partial backup: 1 entries could not be read: /data/secret".into()),
        }
    }

    #[test]
    fn only_a_partial_newest_backup_raises_the_condition() {
        let c = partial(&[
            entry("a", "2026-01-02T00:00:00Z", "Completed"),
            entry("a", "2026-01-01T00:00:00Z", PARTIAL),
        ]);
        assert!(!c.status);
        let c = partial(&[
            entry("a", "2026-01-02T00:00:00Z", PARTIAL),
            entry("b", "2026-01-01T00:00:00Z", "Completed"),
        ]);
        assert!(c.status);
        assert!(
            c.message.contains("PVC a") && c.message.contains("/data/secret"),
            "{}",
            c.message
        );
        assert!(!c.message.contains("PVC b"));
    }

    #[test]
    fn retention_failure_of_the_newest_job_names_the_pvc() {
        let job = |name: &str, finished: &str, warning: Option<&str>| JobRecord {
            name: name.into(),
            pvc: "a".into(),
            created: None,
            finished: Some(finished.parse().expect("ts")),
            outcome: JobOutcome::Succeeded,
            result: Some(MoverResult {
                ok: true,
                warning: warning.map(Into::into),
                ..Default::default()
            }),
        };
        let failed = job(
            "j1",
            "2026-01-01T00:00:00Z",
            Some("backup stored but retention failed: locked"),
        );
        let c = retention(std::slice::from_ref(&failed));
        assert!(c.status);
        assert!(c.message.contains("PVC a") && c.message.contains("j1"));
        assert_eq!(
            c.reason, "RetentionFailed",
            "no kind known: the generic reason"
        );
        let c = retention(&[failed, job("j2", "2026-01-02T00:00:00Z", None)]);
        assert!(!c.status, "a later good run clears it");
        assert_eq!(c.reason, "RetentionApplied");
        let mut foreign = job(
            "j3",
            "2026-01-03T00:00:00Z",
            Some("backup stored but retention failed: refusing"),
        );
        if let Some(r) = foreign.result.as_mut() {
            r.retention_error = Some(crate::results::MoverError {
                kind: FOREIGN_REPOSITORY.into(),
                message: "refusing".into(),
            });
        }
        let c = retention(&[foreign]);
        assert!(c.status && c.reason == FOREIGN_REPOSITORY, "{c:?}");
        assert!(c.message.contains("adoptRepository"), "{}", c.message);
        let c = cataloged(1, 3, &[("b".into(), "WrongPassword: x".into())]);
        assert!(!c.status && c.message.contains("PVC b"));
    }
}
