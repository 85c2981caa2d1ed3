//! From a catalog listing and the existing `Backup` objects to what must
//! change: pure, so the whole mapping is unit-tested.

use super::{Listing, Snapshot};
use crate::api::{
    Backup, BackupPolicy, BackupSpec, BackupStatus, POLICY_LABEL, PVC_ANNOTATION, PVC_LABEL,
    PvcBackupCount, StoredBackup,
};
use crate::naming;
use crate::results::status_entry_name;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use std::collections::{BTreeMap, BTreeSet};

/// `Completed` or `Partial`.
pub const COMPLETED: &str = "Completed";
/// A backup some entries of the PVC are missing from.
pub const PARTIAL: &str = "Partial";

/// What the catalog handler does with one listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Backup objects to create (their status is written after).
    pub creates: Vec<Backup>,
    /// Names of Backup objects whose snapshot is gone from the repository.
    pub deletes: Vec<String>,
    /// Every stored backup of the PVCs listed successfully, newest first per PVC.
    pub stored: Vec<StoredBackup>,
    /// Backups per PVC listed successfully.
    pub counts: Vec<PvcBackupCount>,
    /// PVCs listed successfully (their status entries are replaced).
    pub listed: Vec<String>,
    /// PVCs whose repository could not be listed, with why (their objects stay).
    pub failures: Vec<(String, String)>,
}

/// The Backup object name: `<policy>-<pvc>-<short id>` when that is a
/// valid name, else shortened with a hash (deterministic, at most 63).
pub fn backup_name(policy: &str, pvc: &str, short_id: &str) -> String {
    let readable = format!("{policy}-{pvc}-{short_id}");
    let dns_label = readable
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if readable.len() <= naming::NAME_MAX && dns_label {
        return readable;
    }
    let hash = naming::short_hash(&[policy, pvc]);
    let suffix = format!("{}-{short_id}", &hash[..6]);
    let room = naming::NAME_MAX - suffix.len() - 1;
    let mut head: String = format!("{policy}-{pvc}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(room)
        .collect();
    while head.ends_with('-') {
        head.pop();
    }
    if head.is_empty() {
        suffix
    } else {
        format!("{head}-{suffix}")
    }
}

fn owner(policy: &BackupPolicy) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: BackupPolicy::api_version(&()).into_owned(),
        kind: BackupPolicy::kind(&()).into_owned(),
        name: policy.metadata.name.clone()?,
        uid: policy.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(false),
    })
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The Backup object for one snapshot.
pub fn backup_object(policy: &BackupPolicy, location: &str, pvc: &str, s: &Snapshot) -> Backup {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let mut b = Backup::new(
        &backup_name(&name, pvc, &s.id),
        BackupSpec {
            policy: name.clone(),
            pvc: pvc.to_string(),
            snapshot_id: s.best_id().to_string(),
            short_id: s.id.clone(),
            time: s.time.clone(),
            size: to_i64(s.size),
            files: s.files.map(to_i64),
            bytes_added: s.bytes_added.map(to_i64),
            location: location.to_string(),
            source: s.recorded_pvc(),
        },
    );
    b.metadata = ObjectMeta {
        name: b.metadata.name.take(),
        namespace: policy.metadata.namespace.clone(),
        labels: Some(BTreeMap::from([
            (POLICY_LABEL.to_string(), name.clone()),
            (PVC_LABEL.to_string(), naming::label_value(pvc)),
            (
                "app.kubernetes.io/managed-by".to_string(),
                crate::desired::MANAGER.to_string(),
            ),
        ])),
        annotations: Some(BTreeMap::from([(
            PVC_ANNOTATION.to_string(),
            pvc.to_string(),
        )])),
        owner_references: owner(policy).map(|o| vec![o]),
        ..Default::default()
    };
    let partial = s.partial == Some(true);
    b.status = Some(BackupStatus {
        phase: Some(if partial { PARTIAL } else { COMPLETED }.into()),
        partial,
        warning: if partial { s.warning_text() } else { None },
    });
    b
}

/// The status entry of one snapshot (the seed's shape).
pub fn stored_entry(location: &str, pvc: &str, s: &Snapshot) -> StoredBackup {
    let partial = s.partial == Some(true);
    StoredBackup {
        name: status_entry_name(pvc, &s.id),
        timestamp: s.time.clone(),
        pvc_name: pvc.to_string(),
        size: to_i64(s.size),
        location: location.to_string(),
        status: if partial { PARTIAL } else { COMPLETED }.into(),
        // Short ids and warnings keep the status small (the Backup object
        // has the full id and warning).
        snapshot_id: Some(s.id.clone()),
        warning: if partial {
            s.warning.as_deref().map(|w| super::shorten(w, 160))
        } else {
            None
        },
    }
}

/// Plans one catalog round of `policy`: `requested` PVCs were asked for
/// (lines about other PVCs are ignored), `existing` are its Backup objects.
pub fn plan(
    policy: &BackupPolicy,
    requested: &[String],
    listings: &[Listing],
    existing: &[Backup],
) -> Plan {
    let mut p = Plan::default();
    let requested: BTreeSet<&str> = requested.iter().map(String::as_str).collect();
    let mut answered = BTreeSet::new();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut listed_ok: BTreeSet<&str> = BTreeSet::new();
    let have: BTreeSet<&str> = existing
        .iter()
        .filter_map(|b| b.metadata.name.as_deref())
        .collect();
    for l in listings
        .iter()
        .filter(|l| requested.contains(l.pvc.as_str()))
    {
        answered.insert(l.pvc.as_str());
        if !l.ok {
            let why = l
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.kind, super::shorten(&e.message, 300)))
                .unwrap_or_else(|| "listing failed".into());
            p.failures.push((l.pvc.clone(), why));
            continue;
        }
        listed_ok.insert(l.pvc.as_str());
        p.listed.push(l.pvc.clone());
        let mut snaps: Vec<&Snapshot> = l.snapshots.iter().filter(|s| s.valid()).collect();
        snaps.sort_by(|a, b| b.time.cmp(&a.time));
        p.counts.push(PvcBackupCount {
            pvc_name: l.pvc.clone(),
            count: u32::try_from(snaps.len()).unwrap_or(u32::MAX),
        });
        for s in snaps {
            let obj = backup_object(policy, &l.location, &l.pvc, s);
            let name = obj.metadata.name.clone().unwrap_or_default();
            if wanted.insert(name.clone()) && !have.contains(name.as_str()) {
                p.creates.push(obj);
            }
            p.stored.push(stored_entry(&l.location, &l.pvc, s));
        }
    }
    for pvc in requested.difference(&answered) {
        p.failures
            .push((pvc.to_string(), "the catalog pod printed no listing".into()));
    }
    // Only objects of PVCs whose listing worked are deleted.
    for b in existing {
        let name = b.metadata.name.clone().unwrap_or_default();
        if listed_ok.contains(b.spec.pvc.as_str()) && !wanted.contains(&name) {
            p.deletes.push(name);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackupPolicy {
        let mut p = BackupPolicy::new(
            "nightly",
            serde_json::from_value(serde_json::json!({
                "targets": {"names": ["a", "b"]}, "schedule": "@daily",
                "destination": {"nfs": {"server": "n", "path": "/e"}, "repositoryPasswordSecretRef": {"name": "pw"}}
            }))
            .expect("spec"),
        );
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some("uid-1".into());
        p
    }

    fn snap(id: &str, time: &str) -> Snapshot {
        Snapshot {
            id: id.into(),
            full_id: Some(format!("{id}{}", "0".repeat(56))),
            time: time.into(),
            size: 10,
            files: Some(2),
            bytes_added: Some(5),
            ..Default::default()
        }
    }

    fn listing(pvc: &str, snaps: Vec<Snapshot>) -> Listing {
        Listing {
            pvc: pvc.into(),
            location: format!("/repo/ns/{pvc}"),
            ok: true,
            exists: true,
            snapshots: snaps,
            error: None,
        }
    }

    #[test]
    fn new_snapshots_become_objects_and_gone_ones_are_deleted() {
        let p = policy();
        let old = backup_object(
            &p,
            "/repo/ns/a",
            "a",
            &snap("aaaaaaaa", "2026-01-01T00:00:00Z"),
        );
        let keep = backup_object(
            &p,
            "/repo/ns/a",
            "a",
            &snap("bbbbbbbb", "2026-01-02T00:00:00Z"),
        );
        let other = backup_object(
            &p,
            "/repo/ns/b",
            "b",
            &snap("cccccccc", "2026-01-02T00:00:00Z"),
        );
        let mut partial = snap("dddddddd", "2026-01-03T00:00:00Z");
        partial.partial = Some(true);
        partial.warning = Some("partial backup: 1 entries could not be read: /data/x".into());
        partial.pvc_spec = Some(
            serde_json::json!({"size": "2Gi", "accessModes": ["ReadWriteOnce"], "labels": {"app": "db"}}),
        );
        let failed_b = Listing {
            ok: false,
            error: Some(crate::results::MoverError {
                kind: "WrongPassword".into(),
                message: "wrong repository password".into(),
            }),
            ..listing("b", vec![])
        };
        let plan = plan(
            &p,
            &["a".into(), "b".into()],
            &[
                listing("a", vec![snap("bbbbbbbb", "2026-01-02T00:00:00Z"), partial]),
                failed_b,
            ],
            &[old, keep, other],
        );
        assert_eq!(plan.deletes, ["nightly-a-aaaaaaaa"]);
        assert_eq!(plan.creates.len(), 1);
        let c = &plan.creates[0];
        assert_eq!(c.metadata.name.as_deref(), Some("nightly-a-dddddddd"));
        assert_eq!(
            c.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some(PARTIAL)
        );
        let src = c.spec.source.clone().expect("recorded PVC spec");
        assert_eq!(src.size.as_deref(), Some("2Gi"));
        assert_eq!(src.labels.get("app").map(String::as_str), Some("db"));
        assert_eq!(
            c.metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].uid.as_str()),
            Some("uid-1")
        );
        assert_eq!(
            c.metadata.labels.as_ref().map(|l| l[POLICY_LABEL].as_str()),
            Some("nightly")
        );
        // Newest first, partial visible in the status entry.
        assert_eq!(plan.stored[0].name, "a-dddddddd");
        assert_eq!(plan.stored[0].status, PARTIAL);
        assert!(
            plan.stored[0]
                .warning
                .as_deref()
                .is_some_and(|w| w.contains("/data/x"))
        );
        assert_eq!(plan.listed, ["a"]);
        assert_eq!(
            plan.counts,
            [PvcBackupCount {
                pvc_name: "a".into(),
                count: 2
            }]
        );
        // b could not be listed: its object stays, the failure is reported.
        assert_eq!(plan.failures.len(), 1);
        assert!(plan.failures[0].1.contains("WrongPassword"));
    }

    #[test]
    fn lines_about_other_pvcs_and_invalid_snapshots_are_ignored() {
        let p = policy();
        let mut bad = snap("zzzzzzzz", "2026-01-01T00:00:00Z");
        bad.full_id = None;
        let plan = plan(
            &p,
            &["a".into()],
            &[
                listing("a", vec![bad]),
                listing("x", vec![snap("aaaaaaaa", "2026-01-01T00:00:00Z")]),
            ],
            &[],
        );
        assert!(plan.creates.is_empty());
        assert_eq!(plan.counts[0].count, 0);
        let missing = super::plan(&p, &["a".into(), "b".into()], &[], &[]);
        assert_eq!(missing.failures.len(), 2);
        assert!(missing.listed.is_empty());
    }

    #[test]
    fn names_are_deterministic_dns_labels() {
        assert_eq!(backup_name("p", "data", "0123abcd"), "p-data-0123abcd");
        let long = backup_name(
            &"p".repeat(63),
            &format!("{}.x", "d".repeat(200)),
            "0123abcd",
        );
        assert!(long.len() <= 63, "{long}");
        assert!(long.ends_with("-0123abcd"));
        assert!(
            long.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
        assert_eq!(
            long,
            backup_name(
                &"p".repeat(63),
                &format!("{}.x", "d".repeat(200)),
                "0123abcd"
            )
        );
        assert_ne!(
            backup_name("p", "a.b", "0123abcd"),
            backup_name("p", "a-b", "0123abcd")
        );
    }
}
