//! Keeps `status.storedBackups` bounded: the newest few backups per PVC
//! (every one is a `Backup` object; `backupCounts` says how many exist), so
//! a policy over thousands of PVCs stays far below the API server's object
//! size limit (1.5 MB).

use crate::api::{BackupPolicyStatus, PvcBackupCount, StoredBackup};
use std::collections::BTreeMap;

/// Entries per PVC at most.
pub const PER_PVC: usize = 10;
/// Entries in the whole list at most (fewer per PVC when many PVCs).
pub const TOTAL: usize = 1000;

/// The newest `n` entries of each PVC, `n = clamp(TOTAL / PVCs, 1, PER_PVC)`;
/// order: PVCs as they first appear, newest first within a PVC.
pub fn bound(stored: Vec<StoredBackup>) -> Vec<StoredBackup> {
    let mut by_pvc: BTreeMap<String, (usize, Vec<StoredBackup>)> = BTreeMap::new();
    let mut order = 0usize;
    for b in stored {
        let e = by_pvc.entry(b.pvc_name.clone()).or_insert_with(|| {
            order += 1;
            (order, Vec::new())
        });
        e.1.push(b);
    }
    let n = (TOTAL / by_pvc.len().max(1)).clamp(1, PER_PVC);
    let mut groups: Vec<(usize, Vec<StoredBackup>)> = by_pvc.into_values().collect();
    groups.sort_by_key(|(o, _)| *o);
    let mut out = Vec::new();
    for (_, mut g) in groups {
        // Newest first; RFC 3339 UTC times of one format sort as text, and
        // those that do not parse go last.
        g.sort_by(|a, b| {
            let ta = a.timestamp.parse::<jiff::Timestamp>().ok();
            let tb = b.timestamp.parse::<jiff::Timestamp>().ok();
            tb.cmp(&ta)
        });
        g.truncate(n);
        out.extend(g);
    }
    out
}

/// Sets the count of `pvc` (keeps the list sorted by PVC).
pub fn set_count(counts: &mut Vec<PvcBackupCount>, pvc: &str, count: u32) {
    match counts.binary_search_by(|c| c.pvc_name.as_str().cmp(pvc)) {
        Ok(i) => counts[i].count = count,
        Err(i) => counts.insert(
            i,
            PvcBackupCount {
                pvc_name: pvc.to_string(),
                count,
            },
        ),
    }
}

/// Replaces the entries and counts of the PVCs a catalog round listed.
pub fn apply_listing(
    status: &mut BackupPolicyStatus,
    listed: &[String],
    stored: &[StoredBackup],
    counts: &[PvcBackupCount],
) {
    let mut all: Vec<StoredBackup> = std::mem::take(&mut status.stored_backups)
        .into_iter()
        .filter(|b| !listed.contains(&b.pvc_name))
        .collect();
    all.extend(stored.iter().cloned());
    status.stored_backups = bound(all);
    status
        .backup_counts
        .retain(|c| !listed.contains(&c.pvc_name));
    for c in counts {
        set_count(&mut status.backup_counts, &c.pvc_name, c.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupPolicy, BackupPolicyStatus};
    use crate::catalog::plan::plan;
    use crate::catalog::{Listing, Snapshot};

    #[test]
    fn a_thousand_pvcs_with_a_hundred_backups_each_stay_far_below_the_limit() {
        let mut p = BackupPolicy::new(
            "a-policy-with-a-long-name-for-the-test",
            serde_json::from_value(serde_json::json!({
                "targets": {"selector": {"matchLabels": {"backup": "yes"}}}, "schedule": "@hourly",
                "destination": {"s3": {"endpoint": "https://s3.eu-west-1.amazonaws.com", "bucket": "a-rather-long-bucket-name",
                                "credentialsSecretRef": {"name": "c"}}, "repositoryPasswordSecretRef": {"name": "pw"}}
            }))
            .expect("spec"),
        );
        p.metadata.namespace = Some("team-namespace".into());
        p.metadata.uid = Some("uid".into());
        let pvcs: Vec<String> = (0..1000)
            .map(|i| format!("data-volume-of-application-{i:04}"))
            .collect();
        let listings: Vec<Listing> = pvcs
            .iter()
            .map(|pvc| Listing {
                pvc: pvc.clone(),
                location: format!("s3:https://s3.eu-west-1.amazonaws.com/a-rather-long-bucket-name/team-namespace/{pvc}"),
                ok: true,
                exists: true,
                snapshots: (0..100u64)
                    .map(|i| Snapshot {
                        id: format!("{i:08x}"),
                        full_id: Some(format!("{i:08x}{}", "f".repeat(56))),
                        time: format!("2026-01-01T{:02}:{:02}:00.123456789Z", i / 60, i % 60),
                        size: 1 << 40,
                        partial: Some(i == 99),
                        warning: (i == 99).then(|| "partial backup: 3 entries could not be read: ".to_string() + &"/data/x".repeat(60)),
                        ..Default::default()
                    })
                    .collect(),
                error: None,
            })
            .collect();
        let planned = plan(&p, &pvcs, &listings, &[]);
        assert_eq!(planned.creates.len(), 100_000, "every backup is an object");
        let mut status = BackupPolicyStatus::default();
        apply_listing(
            &mut status,
            &planned.listed,
            &planned.stored,
            &planned.counts,
        );
        assert_eq!(status.backup_counts.len(), 1000);
        assert!(status.backup_counts.iter().all(|c| c.count == 100));
        // Every PVC keeps its newest backup.
        assert_eq!(status.stored_backups.len(), 1000);
        assert!(
            status
                .stored_backups
                .iter()
                .all(|b| b.timestamp.starts_with("2026-01-01T01:39"))
        );
        let size = serde_json::to_vec(&status)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        assert!(size < 600 * 1024, "status is {size} bytes");
    }

    #[test]
    fn few_pvcs_keep_ten_newest_each() {
        let entry = |pvc: &str, i: u32| StoredBackup {
            name: format!("{pvc}-{i}"),
            timestamp: format!("2026-01-01T00:{i:02}:00Z"),
            pvc_name: pvc.into(),
            size: 1,
            location: String::new(),
            status: "Completed".into(),
            snapshot_id: None,
            warning: None,
        };
        let all: Vec<StoredBackup> = (0..30)
            .map(|i| entry("a", i))
            .chain((0..3).map(|i| entry("b", i)))
            .collect();
        let b = bound(all);
        assert_eq!(b.len(), PER_PVC + 3);
        assert_eq!(b[0].name, "a-29");
        assert_eq!(b[PER_PVC].name, "b-2");
        let mut counts = Vec::new();
        set_count(&mut counts, "b", 3);
        set_count(&mut counts, "a", 30);
        set_count(&mut counts, "b", 4);
        assert_eq!(
            counts
                .iter()
                .map(|c| (c.pvc_name.as_str(), c.count))
                .collect::<Vec<_>>(),
            [("a", 30), ("b", 4)]
        );
    }
}
