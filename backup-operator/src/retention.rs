//! Retention over stored backups: per PVC, the newest `maxBackups`, and none
//! older than `maxDays`.

use crate::api::{Retention, StoredBackup};
use jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;

/// Splits `backups` into (kept, expired). Kept entries are grouped by PVC
/// (alphabetical) and newest first within a PVC. Entries whose timestamp
/// cannot be read are kept: retention never deletes what it cannot date.
pub fn apply(
    backups: Vec<StoredBackup>,
    retention: &Retention,
    now: Timestamp,
) -> (Vec<StoredBackup>, Vec<StoredBackup>) {
    let oldest_allowed = retention
        .max_days
        .map(|d| now - SignedDuration::from_hours(24 * i64::from(d)));
    let mut by_pvc: BTreeMap<String, Vec<(Option<Timestamp>, StoredBackup)>> = BTreeMap::new();
    for b in backups {
        let t = b.timestamp.parse::<Timestamp>().ok();
        by_pvc.entry(b.pvc_name.clone()).or_default().push((t, b));
    }
    let (mut kept, mut expired) = (Vec::new(), Vec::new());
    for (_, mut list) in by_pvc {
        // Newest first; undated entries first so they are never the ones cut.
        list.sort_by(|a, b| match (a.0, b.0) {
            (Some(x), Some(y)) => y.cmp(&x).then_with(|| a.1.name.cmp(&b.1.name)),
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (None, None) => a.1.name.cmp(&b.1.name),
        });
        let mut count = 0u32;
        for (t, b) in list {
            let too_old = matches!((t, oldest_allowed), (Some(t), Some(limit)) if t < limit);
            let counts = b.status != "Failed";
            if counts && (count >= retention.max_backups || too_old) {
                expired.push(b);
            } else {
                if counts {
                    count += 1;
                }
                kept.push(b);
            }
        }
    }
    (kept, expired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(pvc: &str, name: &str, ts: &str) -> StoredBackup {
        StoredBackup {
            name: name.into(),
            timestamp: ts.into(),
            pvc_name: pvc.into(),
            size: 1,
            location: "s3:x".into(),
            status: "Completed".into(),
            snapshot_id: None,
            warning: None,
        }
    }

    fn names(v: &[StoredBackup]) -> Vec<&str> {
        v.iter().map(|b| b.name.as_str()).collect()
    }

    const NOW: &str = "2026-06-10T00:00:00Z";

    #[test]
    fn keeps_newest_max_backups_per_pvc() {
        let all = vec![
            backup("a", "a1", "2026-06-01T00:00:00Z"),
            backup("a", "a3", "2026-06-03T00:00:00Z"),
            backup("a", "a2", "2026-06-02T00:00:00Z"),
            backup("b", "b1", "2026-06-01T00:00:00Z"),
        ];
        let r = Retention {
            max_backups: 2,
            max_days: None,
        };
        let (kept, expired) = apply(all, &r, NOW.parse().expect("ts"));
        assert_eq!(names(&kept), ["a3", "a2", "b1"]);
        assert_eq!(names(&expired), ["a1"]);
    }

    #[test]
    fn drops_backups_older_than_max_days() {
        let all = vec![
            backup("a", "new", "2026-06-09T00:00:00Z"),
            backup("a", "old", "2026-05-01T00:00:00Z"),
        ];
        let r = Retention {
            max_backups: 10,
            max_days: Some(7),
        };
        let (kept, expired) = apply(all, &r, NOW.parse().expect("ts"));
        assert_eq!(names(&kept), ["new"]);
        assert_eq!(names(&expired), ["old"]);
    }

    #[test]
    fn failed_entries_do_not_count_and_undated_are_kept() {
        let mut failed = backup("a", "failed", "2026-06-09T12:00:00Z");
        failed.status = "Failed".into();
        let all = vec![
            failed,
            backup("a", "undated", "not a time"),
            backup("a", "good", "2026-06-09T00:00:00Z"),
            backup("a", "older", "2026-06-08T00:00:00Z"),
        ];
        let r = Retention {
            max_backups: 2,
            max_days: None,
        };
        let (kept, expired) = apply(all, &r, NOW.parse().expect("ts"));
        assert_eq!(names(&kept), ["undated", "failed", "good"]);
        assert_eq!(names(&expired), ["older"]);
    }
}
