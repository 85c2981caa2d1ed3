//! Retention over stored backups, per PVC: the policy's `keep*` rules and
//! its `maxBackups`/`maxDays` caps, decided by the same code as the mover's
//! `forget` (`backup-retention`), so the status and the repository agree.

use crate::api::{Retention, StoredBackup};
use backup_retention as rules;
use jiff::Timestamp;
use std::collections::BTreeMap;

/// The decision rules of `retention` with buckets in `time_zone` (an
/// unknown zone falls back to UTC here; the mover reports it as an error).
pub fn policy(retention: &Retention, time_zone: Option<&str>) -> rules::Policy {
    rules::Policy {
        last: retention.keep_last,
        hourly: retention.keep_hourly,
        daily: retention.keep_daily,
        weekly: retention.keep_weekly,
        monthly: retention.keep_monthly,
        yearly: retention.keep_yearly,
        within: retention
            .keep_within
            .as_deref()
            .and_then(|w| w.parse().ok()),
        max_count: retention.max_count(),
        max_age_days: retention.max_days,
        zone: time_zone.and_then(|z| rules::zone(z).ok()),
    }
}

/// Splits `backups` into (kept, expired). Kept entries are grouped by PVC
/// (alphabetical) and newest first within a PVC. Failed entries do not
/// count and are kept; entries whose timestamp cannot be read are kept:
/// retention never deletes what it cannot date.
pub fn apply(
    backups: Vec<StoredBackup>,
    retention: &Retention,
    time_zone: Option<&str>,
    now: Timestamp,
) -> (Vec<StoredBackup>, Vec<StoredBackup>) {
    let rules = policy(retention, time_zone);
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
        let counted: Vec<Timestamp> = list
            .iter()
            .filter(|(_, b)| b.status != "Failed")
            .filter_map(|(t, _)| *t)
            .collect();
        // Undated entries are kept, and take their place under the count cap.
        let undated = list
            .iter()
            .filter(|(t, b)| t.is_none() && b.status != "Failed")
            .count() as u32;
        let mut for_pvc = rules.clone();
        for_pvc.max_count = rules.max_count.map(|m| m.saturating_sub(undated));
        let mut decisions = rules::keep(&counted, &for_pvc, now).into_iter();
        for (t, b) in list {
            let keep = if t.is_none() || b.status == "Failed" {
                true
            } else {
                decisions.next().unwrap_or(true)
            };
            if keep { kept.push(b) } else { expired.push(b) }
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
            max_backups: Some(2),
            ..Retention::default()
        };
        let (kept, expired) = apply(all, &r, None, NOW.parse().expect("ts"));
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
            max_backups: Some(10),
            max_days: Some(7),
            ..Retention::default()
        };
        let (kept, expired) = apply(all, &r, None, NOW.parse().expect("ts"));
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
            max_backups: Some(2),
            ..Retention::default()
        };
        let (kept, expired) = apply(all, &r, None, NOW.parse().expect("ts"));
        assert_eq!(names(&kept), ["undated", "failed", "good"]);
        assert_eq!(names(&expired), ["older"]);
    }

    #[test]
    fn keep_rules_decide_with_caps_on_top_in_the_policy_zone() {
        // One backup a day at 23:30 UTC for 20 days: daily buckets in UTC.
        let all: Vec<StoredBackup> = (1..=20)
            .map(|d| {
                backup(
                    "a",
                    &format!("d{d:02}"),
                    &format!("2026-06-{d:02}T23:30:00Z"),
                )
            })
            .collect();
        let daily = Retention {
            keep_daily: Some(5),
            keep_monthly: Some(3),
            ..Retention::default()
        };
        // No default cap of 7 once keep rules are set.
        assert_eq!(daily.max_count(), None);
        let (kept, _) = apply(all.clone(), &daily, None, NOW.parse().expect("ts"));
        // Days 20..16, plus the oldest (monthly, the bucket with count left).
        assert_eq!(names(&kept), ["d20", "d19", "d18", "d17", "d16", "d01"]);
        let capped = Retention {
            max_backups: Some(3),
            ..daily
        };
        let (kept, _) = apply(all, &capped, None, NOW.parse().expect("ts"));
        assert_eq!(names(&kept), ["d20", "d19", "d18"]);
        assert_eq!(
            capped.mover_args(Some("Europe/Berlin")),
            [
                "--max-count",
                "3",
                "--keep-daily",
                "5",
                "--keep-monthly",
                "3",
                "--time-zone",
                "Europe/Berlin"
            ]
        );
        assert_eq!(Retention::default().mover_args(None), ["--max-count", "7"]);
    }
}
