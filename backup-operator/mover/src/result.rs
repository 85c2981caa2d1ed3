//! The JSON result every subcommand writes to `--result-file` (the pod's
//! termination message). The operator parses this; field names are stable
//! (camelCase) and the encoded document is kept under [`MAX_RESULT_BYTES`].

use serde::{Deserialize, Serialize};

/// Kubernetes truncates termination messages at 4096 bytes.
pub const MAX_RESULT_BYTES: usize = 4096;

/// What went wrong, as a stable machine-readable kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The repository password (RESTIC_PASSWORD) does not open any key.
    WrongPassword,
    /// The S3 bucket does not exist.
    BucketMissing,
    /// The endpoint cannot be reached (DNS, connection refused, timeout).
    EndpointUnreachable,
    /// Credentials rejected or no permission on the bucket / path.
    PermissionDenied,
    /// The source directory does not exist or holds nothing to back up.
    SourceEmpty,
    /// Another process holds a conflicting lock for longer than we retried.
    RepositoryLocked,
    /// The repository holds data that fails verification (a blob, tree or
    /// file whose hash or MAC does not match, an unsafe name in a tree).
    RepositoryCorrupt,
    /// The repository, snapshot or path asked for does not exist.
    NotFound,
    /// forget/prune refused: the repository belongs to another cluster or
    /// namespace (its owner marker), or holds snapshots the mover did not
    /// write; `--adopt` takes it over.
    ForeignRepository,
    /// SIGTERM/SIGINT stopped the operation (e.g. the Job's deadline); its
    /// lock was removed and nothing partial was recorded as a snapshot.
    Interrupted,
    /// Anything else.
    Other,
}

/// Error part of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub kind: ErrorKind,
    pub message: String,
}

/// One snapshot as reported in results (newest first). The fields after
/// `pvc` are filled by the `catalog` listing only (results stay small).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    /// Short (8 hex chars) snapshot id; restic and the mover accept it as an id.
    pub id: String,
    /// RFC 3339 time of the snapshot.
    pub time: String,
    /// Total bytes of file data in the snapshot (from its summary; 0 if unknown).
    pub size: u64,
    /// PVC name (from the `pvc=` tag), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    /// Full snapshot id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_id: Option<String>,
    /// Files in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Bytes the backup added to the repository (before compression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_added: Option<u64>,
    /// Some entries of the source could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<bool>,
    /// What a partial backup left out (count and the first paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The PVC spec recorded at backup time (see `meta.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_spec: Option<serde_json::Value>,
}

/// The result document. Fields not relevant to an operation are omitted
/// (absent), except `ok`, `operation` and `error`, which are always present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct MoverResult {
    pub ok: bool,
    /// "backup" | "restore" | "snapshots" | "forget" | "init" | "unlock"
    pub operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// RFC 3339: snapshot time (backup, restore) or time of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_processed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_added: Option<u64>,
    /// Bytes added to the repository after compression (what storage grew by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_stored: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_restored: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Repository location without credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Snapshots remaining (for the PVC when known), newest first, possibly truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<SnapshotInfo>>,
    /// Total number of snapshots before truncation of `snapshots`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<usize>,
    /// Snapshot ids (short) removed by retention in this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgotten: Option<Vec<String>>,
    /// Locks removed by `unlock` (short ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_locks: Option<Vec<String>>,
    /// Locks `unlock` left in place, each with why (fresh, unreadable...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_locks: Option<Vec<String>>,
    /// Why retention failed after a stored backup (also in `warning`), so
    /// the operator can act on the kind (e.g. remove stale locks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_error: Option<ErrorInfo>,
    /// Backup stored, but some entries of the source could not be read
    /// (listed in `warning`); retention was not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<bool>,
    /// Non-fatal problem (e.g. retention failed after a successful backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// What `check` found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckReport>,
    pub error: Option<ErrorInfo>,
}

impl MoverResult {
    pub fn new(operation: &str) -> Self {
        Self {
            operation: operation.to_string(),
            ..Self::default()
        }
    }

    /// Compact JSON no longer than `limit` bytes: lists are cut from the end
    /// (oldest snapshots first), long strings shortened.
    pub fn to_json_limited(&self, limit: usize) -> String {
        let mut r = self.clone();
        if let Some(snaps) = &r.snapshots
            && r.snapshot_count.is_none()
        {
            r.snapshot_count = Some(snaps.len());
        }
        loop {
            let s = serde_json::to_string(&r).unwrap_or_else(|_| {
                r#"{"ok":false,"operation":"unknown","error":{"kind":"Other","message":"result encoding failed"}}"#
                    .to_string()
            });
            if s.len() <= limit {
                return s;
            }
            if let Some(f) = r.forgotten.as_mut()
                && !f.is_empty()
            {
                f.truncate(f.len() / 2);
                continue;
            }
            if let Some(f) = r.removed_locks.as_mut()
                && !f.is_empty()
            {
                f.truncate(f.len() / 2);
                continue;
            }
            if let Some(c) = r.check.as_mut()
                && !c.errors.is_empty()
            {
                c.errors.truncate(c.errors.len() / 2);
                continue;
            }
            if let Some(sn) = r.snapshots.as_mut()
                && !sn.is_empty()
            {
                let keep = sn.len() * 3 / 4;
                sn.truncate(keep);
                continue;
            }
            let mut shortened = false;
            for text in [
                r.error.as_mut().map(|e| &mut e.message),
                r.warning.as_mut(),
                r.location.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if text.len() > 256 {
                    let mut cut = 256;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push('…');
                    shortened = true;
                }
            }
            if !shortened {
                // Nothing left to shorten: give up on details.
                r.snapshots = None;
                r.forgotten = None;
                r.removed_locks = None;
                r.warning = None;
                if let Some(c) = r.check.as_mut() {
                    c.errors.clear();
                }
                if let Some(e) = r.error.as_mut() {
                    e.message.truncate(64);
                }
                return serde_json::to_string(&r).unwrap_or_default();
            }
        }
    }
}

/// What `check` found.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub snapshots: usize,
    pub packs: usize,
    pub trees: usize,
    pub packs_read: usize,
    pub bytes_read: u64,
    pub blobs_verified: u64,
    /// Packs present but in no index (e.g. from an interrupted backup; not
    /// an error: prune removes them after its grace period).
    pub unindexed_packs: usize,
    pub error_count: usize,
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_size() {
        let mut r = MoverResult::new("backup");
        r.ok = true;
        r.snapshots = Some(
            (0..500)
                .map(|i| SnapshotInfo {
                    id: format!("{i:08x}"),
                    time: "2026-01-01T00:00:00Z".into(),
                    size: 1 << 40,
                    pvc: Some("a-rather-long-pvc-name-for-testing".into()),
                    ..Default::default()
                })
                .collect(),
        );
        let s = r.to_json_limited(MAX_RESULT_BYTES);
        assert!(s.len() <= MAX_RESULT_BYTES);
        let back: MoverResult = serde_json::from_str(&s).unwrap_or_default();
        assert_eq!(back.snapshot_count, Some(500));
        assert!(
            back.snapshots
                .is_some_and(|v| !v.is_empty() && v[0].id == "00000000")
        );
    }

    #[test]
    fn error_shape() {
        let mut r = MoverResult::new("restore");
        r.error = Some(ErrorInfo {
            kind: ErrorKind::WrongPassword,
            message: "x".repeat(10_000),
        });
        let s = r.to_json_limited(MAX_RESULT_BYTES);
        assert!(s.len() <= MAX_RESULT_BYTES);
        assert!(s.contains(r#""kind":"WrongPassword""#));
        assert!(s.contains(r#""ok":false"#));
    }
}
