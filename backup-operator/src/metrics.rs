//! Backup metrics per policy and PVC, rendered on the framework's `/metrics`.
//!
//! Series (labels `namespace`, `policy`, and `pvc` where it applies):
//! * `backup_operator_backups_total{result="success|partial|failure"}`: finished
//!   backup Jobs and VolumeSnapshots that became ready or failed, counted
//!   once each (by name) while this replica runs.
//! * `backup_operator_last_success_timestamp_seconds`: finish time of the
//!   newest successful backup.
//! * `backup_operator_backup_duration_seconds`: histogram of the mover's
//!   reported duration (or the Job's run time when it reported none).
//! * `backup_operator_stored_backups`: entries in `status.storedBackups`.
//! * `backup_operator_schedule_interval_seconds` (per policy): the gap
//!   between the next two scheduled runs, for "no success within twice the
//!   interval" alerts (`config/prometheus/`).

use crate::api::StoredBackup;
use crate::results::JobOutcome;
use crate::status::JobRecord;
use operator_framework::{Histogram, escape_label_value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Mutex;

static DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// (namespace, policy)
type PolicyKey = (String, String);

#[derive(Debug, Clone)]
struct PvcStats {
    successes: u64,
    /// Stored, but some entries of the PVC could not be read.
    partials: u64,
    failures: u64,
    last_success: Option<f64>,
    durations: Histogram,
    stored: usize,
}

impl Default for PvcStats {
    fn default() -> Self {
        Self {
            successes: 0,
            partials: 0,
            failures: 0,
            last_success: None,
            durations: Histogram::new(&DURATION_BUCKETS),
            stored: 0,
        }
    }
}

#[derive(Debug, Default)]
struct PolicyStats {
    pvcs: BTreeMap<String, PvcStats>,
    /// Finished Jobs already counted; replaced by the Jobs that still exist
    /// on every observation, so it stays as small as the Job history.
    counted: BTreeSet<String>,
    /// VolumeSnapshot backups already counted (they have no Job).
    counted_snapshots: BTreeSet<String>,
    interval: Option<f64>,
}

/// All backup metrics of this replica.
#[derive(Debug, Default)]
pub struct BackupMetrics {
    policies: Mutex<BTreeMap<PolicyKey, PolicyStats>>,
}

impl BackupMetrics {
    /// Records what one reconcile of a policy saw: its Jobs (finished ones not
    /// seen before are counted), its stored backups and its schedule interval.
    pub fn observe(
        &self,
        namespace: &str,
        policy: &str,
        jobs: &[JobRecord],
        stored: &[StoredBackup],
        interval_seconds: Option<f64>,
    ) {
        let Ok(mut all) = self.policies.lock() else {
            return;
        };
        let p = all
            .entry((namespace.to_string(), policy.to_string()))
            .or_default();
        p.interval = interval_seconds;
        let mut still_there = BTreeSet::new();
        for job in jobs {
            if job.outcome == JobOutcome::Running {
                continue;
            }
            still_there.insert(job.name.clone());
            if p.counted.contains(&job.name) {
                continue;
            }
            let s = p.pvcs.entry(job.pvc.clone()).or_default();
            let partial = job.result.as_ref().is_some_and(|r| r.is_partial());
            match job.outcome {
                JobOutcome::Succeeded if partial => s.partials += 1,
                JobOutcome::Succeeded => {
                    s.successes += 1;
                    let finished = job.finished.map(|t| t.as_millisecond() as f64 / 1000.0);
                    if let Some(f) = finished
                        && s.last_success.is_none_or(|l| l < f)
                    {
                        s.last_success = Some(f);
                    }
                    let secs = job
                        .result
                        .as_ref()
                        .and_then(|r| r.duration_seconds)
                        .or_else(|| {
                            let (c, f) = (job.created?, job.finished?);
                            Some((f - c).get_seconds() as f64)
                        });
                    if let Some(secs) = secs {
                        s.durations.observe(secs);
                    }
                }
                _ => s.failures += 1,
            }
        }
        p.counted = still_there;
        for s in p.pvcs.values_mut() {
            s.stored = 0;
        }
        // Snapshot backups count once each when they reach a final state.
        let mut snapshots_seen = BTreeSet::new();
        for b in stored
            .iter()
            .filter(|b| b.location.starts_with("VolumeSnapshot/"))
        {
            let result = match b.status.as_str() {
                "Ready" => true,
                "Failed" => false,
                _ => continue,
            };
            snapshots_seen.insert(b.name.clone());
            if p.counted_snapshots.contains(&b.name) {
                continue;
            }
            let s = p.pvcs.entry(b.pvc_name.clone()).or_default();
            if result {
                s.successes += 1;
            } else {
                s.failures += 1;
            }
        }
        p.counted_snapshots = snapshots_seen;
        for b in stored {
            let s = p.pvcs.entry(b.pvc_name.clone()).or_default();
            s.stored += 1;
            // Snapshot backups have no Job: their newest ready entry is the
            // last success.
            let good = b.status == "Completed" || b.status == "Ready";
            if let (true, Ok(t)) = (good, b.timestamp.parse::<jiff::Timestamp>()) {
                let t = t.as_millisecond() as f64 / 1000.0;
                if s.last_success.is_none_or(|l| l < t) {
                    s.last_success = Some(t);
                }
            }
        }
    }

    /// Drops the series of a deleted policy.
    pub fn forget(&self, namespace: &str, policy: &str) {
        if let Ok(mut all) = self.policies.lock() {
            all.remove(&(namespace.to_string(), policy.to_string()));
        }
    }

    /// Appends the series in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let Ok(all) = self.policies.lock() else {
            return;
        };
        // Label lists without braces, as Histogram::write takes them.
        let pvc_rows = || {
            all.iter().flat_map(|((ns, policy), p)| {
                p.pvcs.iter().map(move |(pvc, s)| {
                    (
                        format!(
                            "namespace=\"{}\",policy=\"{}\",pvc=\"{}\"",
                            escape_label_value(ns),
                            escape_label_value(policy),
                            escape_label_value(pvc)
                        ),
                        s,
                    )
                })
            })
        };
        let _ = writeln!(
            out,
            "# HELP backup_operator_backups_total Finished backup Jobs by result.\n# TYPE backup_operator_backups_total counter"
        );
        for (l, s) in pvc_rows() {
            let _ = writeln!(
                out,
                "backup_operator_backups_total{{{l},result=\"success\"}} {}",
                s.successes
            );
            let _ = writeln!(
                out,
                "backup_operator_backups_total{{{l},result=\"partial\"}} {}",
                s.partials
            );
            let _ = writeln!(
                out,
                "backup_operator_backups_total{{{l},result=\"failure\"}} {}",
                s.failures
            );
        }
        let _ = writeln!(
            out,
            "# HELP backup_operator_last_success_timestamp_seconds When the newest successful backup finished.\n# TYPE backup_operator_last_success_timestamp_seconds gauge"
        );
        for (l, s) in pvc_rows() {
            if let Some(t) = s.last_success {
                let _ = writeln!(
                    out,
                    "backup_operator_last_success_timestamp_seconds{{{l}}} {t}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP backup_operator_backup_duration_seconds Duration of successful backups.\n# TYPE backup_operator_backup_duration_seconds histogram"
        );
        for (l, s) in pvc_rows() {
            s.durations
                .write(out, "backup_operator_backup_duration_seconds", &l);
        }
        let _ = writeln!(
            out,
            "# HELP backup_operator_stored_backups Entries in status.storedBackups.\n# TYPE backup_operator_stored_backups gauge"
        );
        for (l, s) in pvc_rows() {
            let _ = writeln!(out, "backup_operator_stored_backups{{{l}}} {}", s.stored);
        }
        let _ = writeln!(
            out,
            "# HELP backup_operator_schedule_interval_seconds Seconds between the next two scheduled runs.\n# TYPE backup_operator_schedule_interval_seconds gauge"
        );
        for ((ns, policy), p) in all.iter() {
            if let Some(i) = p.interval {
                let _ = writeln!(
                    out,
                    "backup_operator_schedule_interval_seconds{{namespace=\"{}\",policy=\"{}\"}} {i}",
                    escape_label_value(ns),
                    escape_label_value(policy)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::MoverResult;
    use jiff::Timestamp;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    fn job(name: &str, pvc: &str, outcome: JobOutcome, duration: Option<f64>) -> JobRecord {
        JobRecord {
            name: name.into(),
            pvc: pvc.into(),
            created: Some(ts("2026-01-01T10:00:00Z")),
            finished: Some(ts("2026-01-01T10:00:40Z")),
            outcome,
            result: duration.map(|d| MoverResult {
                duration_seconds: Some(d),
                ..Default::default()
            }),
        }
    }

    fn stored(pvc: &str) -> StoredBackup {
        StoredBackup {
            name: format!("{pvc}-x"),
            timestamp: "2026-01-01T10:00:40Z".into(),
            pvc_name: pvc.into(),
            size: 1,
            location: "s3:http://s3/b/ns/data".into(),
            status: "Completed".into(),
            snapshot_id: None,
            warning: None,
        }
    }

    fn failed() -> JobOutcome {
        JobOutcome::Failed {
            reason: "WrongPassword".into(),
            message: String::new(),
        }
    }

    #[test]
    fn each_finished_job_counts_once_and_running_ones_not_at_all() {
        let m = BackupMetrics::default();
        let jobs = vec![
            job("a", "data", JobOutcome::Succeeded, Some(12.5)),
            job("b", "data", failed(), None),
            job("c", "data", JobOutcome::Running, None),
        ];
        m.observe("ns", "p", &jobs, &[stored("data")], Some(3600.0));
        m.observe(
            "ns",
            "p",
            &jobs,
            &[stored("data"), stored("data")],
            Some(3600.0),
        );
        let mut out = String::new();
        m.render(&mut out);
        let l = "namespace=\"ns\",policy=\"p\",pvc=\"data\"";
        assert!(
            out.contains(&format!(
                "backup_operator_backups_total{{{l},result=\"success\"}} 1"
            )),
            "{out}"
        );
        assert!(out.contains(&format!(
            "backup_operator_backups_total{{{l},result=\"failure\"}} 1"
        )));
        assert!(out.contains(&format!(
            "backup_operator_last_success_timestamp_seconds{{{l}}} 1767261640"
        )));
        assert!(out.contains(&format!(
            "backup_operator_backup_duration_seconds_bucket{{{l},le=\"15\"}} 1"
        )));
        assert!(out.contains(&format!(
            "backup_operator_backup_duration_seconds_bucket{{{l},le=\"5\"}} 0"
        )));
        assert!(out.contains(&format!(
            "backup_operator_backup_duration_seconds_sum{{{l}}} 12.5"
        )));
        assert!(out.contains(&format!("backup_operator_stored_backups{{{l}}} 2")));
        assert!(out.contains(
            "backup_operator_schedule_interval_seconds{namespace=\"ns\",policy=\"p\"} 3600"
        ));
    }

    #[test]
    fn a_partial_backup_counts_as_partial_not_as_success() {
        let m = BackupMetrics::default();
        let mut j = job("a", "data", JobOutcome::Succeeded, Some(1.0));
        j.result = Some(MoverResult {
            ok: true,
            partial: Some(true),
            ..Default::default()
        });
        m.observe("ns", "p", &[j], &[], None);
        let mut out = String::new();
        m.render(&mut out);
        let l = "namespace=\"ns\",policy=\"p\",pvc=\"data\"";
        assert!(
            out.contains(&format!(
                "backup_operator_backups_total{{{l},result=\"partial\"}} 1"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "backup_operator_backups_total{{{l},result=\"success\"}} 0"
            )),
            "{out}"
        );
    }

    #[test]
    fn ready_snapshot_entries_count_as_last_success() {
        let m = BackupMetrics::default();
        let snapshot = |name: &str, status: &str, at: &str| StoredBackup {
            name: name.into(),
            timestamp: at.into(),
            location: format!("VolumeSnapshot/{name}"),
            status: status.into(),
            ..stored("vol")
        };
        let snap = snapshot("s1", "Ready", "2026-01-02T00:00:00Z");
        let failed = snapshot("s2", "Failed", "2026-01-03T00:00:00Z");
        let pending = snapshot("s3", "Pending", "2026-01-04T00:00:00Z");
        let all = [snap, failed, pending];
        m.observe("ns", "snaps", &[], &all, Some(86_400.0));
        m.observe("ns", "snaps", &[], &all, Some(86_400.0));
        let mut out = String::new();
        m.render(&mut out);
        let l = "namespace=\"ns\",policy=\"snaps\",pvc=\"vol\"";
        assert!(
            out.contains(&format!(
                "backup_operator_backups_total{{{l},result=\"success\"}} 1"
            )),
            "{out}"
        );
        assert!(out.contains(&format!(
            "backup_operator_backups_total{{{l},result=\"failure\"}} 1"
        )));
        assert!(out.contains("backup_operator_last_success_timestamp_seconds{namespace=\"ns\",policy=\"snaps\",pvc=\"vol\"} 1767312000"), "{out}");
        assert!(out.contains(
            "backup_operator_stored_backups{namespace=\"ns\",policy=\"snaps\",pvc=\"vol\"} 3"
        ));
    }

    #[test]
    fn a_job_without_a_report_takes_its_run_time_and_forget_drops_the_policy() {
        let m = BackupMetrics::default();
        m.observe(
            "ns",
            "p",
            &[job("a", "data", JobOutcome::Succeeded, None)],
            &[],
            None,
        );
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("backup_operator_backup_duration_seconds_sum{namespace=\"ns\",policy=\"p\",pvc=\"data\"} 40"), "{out}");
        m.forget("ns", "p");
        let mut out = String::new();
        m.render(&mut out);
        assert!(!out.contains("policy=\"p\""));
    }

    #[test]
    fn a_job_that_left_and_came_back_is_not_recounted_while_it_stays() {
        let m = BackupMetrics::default();
        let a = job("a", "data", JobOutcome::Succeeded, Some(1.0));
        m.observe("ns", "p", std::slice::from_ref(&a), &[], None);
        m.observe(
            "ns",
            "p",
            &[
                a.clone(),
                job("b", "data", JobOutcome::Succeeded, Some(1.0)),
            ],
            &[],
            None,
        );
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("backup_operator_backups_total{namespace=\"ns\",policy=\"p\",pvc=\"data\",result=\"success\"} 2"), "{out}");
    }
}
