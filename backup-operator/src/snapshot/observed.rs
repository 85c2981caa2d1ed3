//! VolumeSnapshots as the operator sees them: state, time, size; the
//! `storedBackups` entries they become; retention over them.

use super::{SCHEDULED_TIME_ANNOTATION, VOLUME_SNAPSHOT_KIND};
use crate::api::{Retention, StoredBackup};
use jiff::{SignedDuration, Timestamp};
use kube::api::DynamicObject;
use std::collections::BTreeMap;

/// Ready state of one VolumeSnapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    /// `status.readyToUse` is true: a usable backup.
    Ready,
    /// Not ready yet, within the ready deadline.
    Pending,
    /// `status.error` is set, or it was not ready within the deadline.
    Failed,
}

impl SnapshotState {
    /// The `storedBackups[].status` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Pending => "Pending",
            Self::Failed => "Failed",
        }
    }
}

/// One VolumeSnapshot of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// VolumeSnapshot name.
    pub name: String,
    /// The PVC it was taken of (label, else `spec.source.persistentVolumeClaimName`).
    pub pvc: String,
    /// The scheduled time it was taken for (annotation), else its creation time.
    pub taken_at: Option<Timestamp>,
    /// The scheduled time from the annotation alone (what `due` reads).
    pub scheduled_for: Option<Timestamp>,
    /// Ready, Pending or Failed.
    pub state: SnapshotState,
    /// `status.restoreSize` in bytes, when known.
    pub restore_size: Option<i64>,
    /// `status.restoreSize` as written (a Quantity), for PVCs made from it.
    pub restore_size_quantity: Option<String>,
    /// `status.error.message`, or the deadline message.
    pub error: Option<String>,
    /// Being deleted.
    pub deleting: bool,
}

/// Reads a VolumeSnapshot. `ready_timeout` is how long it may stay not ready.
pub fn parse(
    obj: &DynamicObject,
    ready_timeout: SignedDuration,
    now: Timestamp,
) -> Option<SnapshotInfo> {
    let name = obj.metadata.name.clone()?;
    let pvc = crate::desired::pvc_of(&obj.metadata).or_else(|| {
        obj.data
            .pointer("/spec/source/persistentVolumeClaimName")
            .and_then(|v| v.as_str())
            .map(str::to_string)
    })?;
    let scheduled_for = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SCHEDULED_TIME_ANNOTATION))
        .and_then(|s| s.parse::<Timestamp>().ok());
    let created = obj.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let status = obj.data.get("status");
    let ready = status
        .and_then(|s| s.get("readyToUse"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let error = status
        .and_then(|s| s.get("error"))
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_string);
    let restore_size_quantity = status
        .and_then(|s| s.get("restoreSize"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let restore_size = restore_size_quantity.as_deref().and_then(quantity_bytes);
    let age_start = created.or(scheduled_for);
    let overdue = age_start.is_some_and(|t| now.duration_since(t) > ready_timeout);
    let (state, error) = if ready {
        (SnapshotState::Ready, None)
    } else if let Some(e) = error {
        (SnapshotState::Failed, Some(e))
    } else if overdue {
        (
            SnapshotState::Failed,
            Some(format!(
                "not ready within {}s (snapshot.readyTimeoutSeconds)",
                ready_timeout.as_secs()
            )),
        )
    } else {
        (SnapshotState::Pending, None)
    };
    Some(SnapshotInfo {
        name,
        pvc,
        taken_at: scheduled_for.or(created),
        scheduled_for,
        state,
        restore_size,
        restore_size_quantity,
        error,
        deleting: obj.metadata.deletion_timestamp.is_some(),
    })
}

/// Bytes of a Kubernetes quantity such as `1Gi`, `500M`, `1073741824` (whole bytes only).
pub fn quantity_bytes(q: &str) -> Option<i64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    let bytes = (n * mult).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < i64::MAX as f64).then_some(bytes as i64)
}

/// The `storedBackups` entry of a snapshot.
pub fn stored_backup(s: &SnapshotInfo) -> StoredBackup {
    StoredBackup {
        name: s.name.clone(),
        timestamp: s.taken_at.map(|t| t.to_string()).unwrap_or_default(),
        pvc_name: s.pvc.clone(),
        size: s.restore_size.unwrap_or(0),
        location: format!("{VOLUME_SNAPSHOT_KIND}/{}", s.name),
        status: s.state.as_str().to_string(),
        snapshot_id: Some(s.name.clone()),
        warning: None,
    }
}

/// The VolumeSnapshot name of a `storedBackups` entry that is a snapshot.
pub fn snapshot_of(backup: &StoredBackup) -> Option<&str> {
    backup
        .location
        .strip_prefix(VOLUME_SNAPSHOT_KIND)?
        .strip_prefix('/')
}

/// Retention over the snapshots of a policy, per PVC:
/// * Ready snapshots are decided by the policy's retention rules
///   (`crate::retention`, the same rules as the mover's `forget`, buckets in
///   `time_zone`); the newest Ready one is always kept.
/// * Pending ones are kept and do not count.
/// * Failed ones do not count; the newest failure of a PVC is kept (it is
///   what the user should see) unless older than `maxDays` or older than the
///   newest Ready one; other failures are removed, so failures never pile up.
/// * Undated snapshots are kept: retention never deletes what it cannot date.
///
/// Returns (kept, expired); kept is grouped by PVC (alphabetical), newest first.
pub fn retain(
    snaps: Vec<SnapshotInfo>,
    retention: &Retention,
    time_zone: Option<&str>,
    now: Timestamp,
) -> (Vec<SnapshotInfo>, Vec<SnapshotInfo>) {
    let rules = crate::retention::policy(retention, time_zone);
    let oldest_allowed = retention
        .max_days
        .map(|d| now - SignedDuration::from_hours(24 * i64::from(d)));
    let mut by_pvc: BTreeMap<String, Vec<SnapshotInfo>> = BTreeMap::new();
    for s in snaps {
        by_pvc.entry(s.pvc.clone()).or_default().push(s);
    }
    let (mut kept, mut expired) = (Vec::new(), Vec::new());
    for (_, mut list) in by_pvc {
        // Newest first; undated first (never cut), ties by name.
        list.sort_by(|a, b| match (a.taken_at, b.taken_at) {
            (Some(x), Some(y)) => y.cmp(&x).then_with(|| b.name.cmp(&a.name)),
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (None, None) => a.name.cmp(&b.name),
        });
        let ready_times: Vec<Timestamp> = list
            .iter()
            .filter(|s| s.state == SnapshotState::Ready)
            .filter_map(|s| s.taken_at)
            .collect();
        let mut ready = backup_retention::keep(&ready_times, &rules, now).into_iter();
        let (mut seen_ready, mut kept_failure) = (false, false);
        for s in list {
            let too_old =
                matches!((s.taken_at, oldest_allowed), (Some(t), Some(limit)) if t < limit);
            let keep = match (s.state, s.taken_at) {
                (_, None) => true,
                (SnapshotState::Pending, _) => true,
                (SnapshotState::Ready, _) => {
                    seen_ready = true;
                    ready.next().unwrap_or(true)
                }
                (SnapshotState::Failed, _) => {
                    let k = !kept_failure && !seen_ready && !too_old;
                    kept_failure |= k;
                    k
                }
            };
            if keep { kept.push(s) } else { expired.push(s) }
        }
    }
    (kept, expired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    fn obj(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).expect("dynamic object")
    }

    const NOW: &str = "2026-06-10T00:00:00Z";

    fn vs(status: serde_json::Value, created: &str) -> DynamicObject {
        obj(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {
                "name": "p-data-1", "namespace": "ns", "creationTimestamp": created,
                "labels": {"backup.backup.example.com/policy": "p", "backup.backup.example.com/pvc": "data"},
                "annotations": {"backup.backup.example.com/scheduled-time": "2026-06-09T23:00:00Z"}
            },
            "spec": {"source": {"persistentVolumeClaimName": "data"}, "volumeSnapshotClassName": "c"},
            "status": status
        }))
    }

    #[test]
    fn parses_ready_snapshot_into_a_stored_backup() {
        let o = vs(
            json!({"readyToUse": true, "restoreSize": "1Gi"}),
            "2026-06-09T23:00:02Z",
        );
        let s = parse(&o, SignedDuration::from_secs(600), ts(NOW)).expect("parsed");
        assert_eq!(s.state, SnapshotState::Ready);
        assert_eq!(s.pvc, "data");
        assert_eq!(s.taken_at, Some(ts("2026-06-09T23:00:00Z")));
        let b = stored_backup(&s);
        assert_eq!(b.size, 1 << 30);
        assert_eq!(b.location, "VolumeSnapshot/p-data-1");
        assert_eq!(b.status, "Ready");
        assert_eq!(b.snapshot_id.as_deref(), Some("p-data-1"));
        assert_eq!(b.timestamp, "2026-06-09T23:00:00Z");
        assert_eq!(snapshot_of(&b), Some("p-data-1"));
    }

    #[test]
    fn pending_then_failed_after_the_deadline() {
        let o = vs(json!({"readyToUse": false}), "2026-06-09T23:55:00Z");
        let s = parse(&o, SignedDuration::from_secs(600), ts(NOW)).expect("parsed");
        assert_eq!(s.state, SnapshotState::Pending);
        let s = parse(&o, SignedDuration::from_secs(60), ts(NOW)).expect("parsed");
        assert_eq!(s.state, SnapshotState::Failed);
        assert!(
            s.error.as_deref().is_some_and(|e| e.contains("60s")),
            "{:?}",
            s.error
        );
        let no_status = obj(
            json!({"metadata": {"name": "x", "creationTimestamp": "2026-06-09T23:59:00Z",
            "labels": {"backup.backup.example.com/pvc": "data"}}}),
        );
        assert_eq!(
            parse(&no_status, SignedDuration::from_secs(600), ts(NOW)).map(|s| s.state),
            Some(SnapshotState::Pending)
        );
    }

    #[test]
    fn error_means_failed() {
        let o = vs(
            json!({"readyToUse": false, "error": {"message": "driver said no"}}),
            "2026-06-09T23:59:00Z",
        );
        let s = parse(&o, SignedDuration::from_secs(600), ts(NOW)).expect("parsed");
        assert_eq!(s.state, SnapshotState::Failed);
        assert_eq!(s.error.as_deref(), Some("driver said no"));
        assert_eq!(stored_backup(&s).status, "Failed");
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("10Mi"), Some(10 << 20));
        assert_eq!(quantity_bytes("1k"), Some(1000));
        assert_eq!(quantity_bytes("12345"), Some(12345));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("1Xi"), None);
        assert_eq!(quantity_bytes(""), None);
    }

    fn snap(pvc: &str, name: &str, at: &str, state: SnapshotState) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            pvc: pvc.into(),
            taken_at: at.parse().ok(),
            scheduled_for: at.parse().ok(),
            state,
            restore_size: Some(1),
            restore_size_quantity: Some("1".into()),
            error: None,
            deleting: false,
        }
    }

    fn names(v: &[SnapshotInfo]) -> Vec<&str> {
        v.iter().map(|s| s.name.as_str()).collect()
    }

    use SnapshotState::{Failed, Pending, Ready};

    #[test]
    fn ready_ones_count_and_the_oldest_go() {
        let all = vec![
            snap("a", "a1", "2026-06-01T00:00:00Z", Ready),
            snap("a", "a3", "2026-06-03T00:00:00Z", Ready),
            snap("a", "a2", "2026-06-02T00:00:00Z", Ready),
            snap("b", "b1", "2026-06-01T00:00:00Z", Ready),
        ];
        let (kept, expired) = retain(
            all,
            &Retention {
                max_backups: Some(2),
                max_days: None,
                ..Retention::default()
            },
            None,
            ts(NOW),
        );
        assert_eq!(names(&kept), ["a3", "a2", "b1"]);
        assert_eq!(names(&expired), ["a1"]);
    }

    #[test]
    fn pending_and_failed_do_not_count() {
        let all = vec![
            snap("a", "pending", "2026-06-09T23:00:00Z", Pending),
            snap("a", "failed", "2026-06-09T22:00:00Z", Failed),
            snap("a", "r2", "2026-06-09T21:00:00Z", Ready),
            snap("a", "r1", "2026-06-09T20:00:00Z", Ready),
            snap("a", "r0", "2026-06-09T19:00:00Z", Ready),
        ];
        let (kept, expired) = retain(
            all,
            &Retention {
                max_backups: Some(2),
                max_days: None,
                ..Retention::default()
            },
            None,
            ts(NOW),
        );
        assert_eq!(names(&kept), ["pending", "failed", "r2", "r1"]);
        assert_eq!(names(&expired), ["r0"]);
    }

    #[test]
    fn failures_never_pile_up() {
        let all = vec![
            snap("a", "f3", "2026-06-09T23:00:00Z", Failed),
            snap("a", "f2", "2026-06-09T22:00:00Z", Failed),
            snap("a", "r1", "2026-06-09T21:00:00Z", Ready),
            snap("a", "f1", "2026-06-09T20:00:00Z", Failed),
        ];
        let (kept, expired) = retain(
            all,
            &Retention {
                max_backups: Some(5),
                max_days: None,
                ..Retention::default()
            },
            None,
            ts(NOW),
        );
        assert_eq!(names(&kept), ["f3", "r1"]);
        assert_eq!(names(&expired), ["f2", "f1"]);
    }

    #[test]
    fn max_days_removes_old_ones_and_undated_stay() {
        let all = vec![
            snap("a", "new", "2026-06-09T00:00:00Z", Ready),
            snap("a", "old", "2026-05-01T00:00:00Z", Ready),
            snap("a", "oldfail", "2026-05-01T00:00:00Z", Failed),
            snap("a", "undated", "?", Ready),
        ];
        let (kept, expired) = retain(
            all,
            &Retention {
                max_backups: Some(10),
                max_days: Some(7),
                ..Retention::default()
            },
            None,
            ts(NOW),
        );
        assert_eq!(names(&kept), ["undated", "new"]);
        let mut gone = names(&expired);
        gone.sort();
        assert_eq!(gone, ["old", "oldfail"]);
    }
}
