//! Metadata of the backed-up root directory, which rustic does not keep.
//! Stored as JSON in the snapshot description:
//! `{"backupMover":1,"root":{"mode":1528,"uid":1000,"gid":2000,"mtimeSec":..,"mtimeNsec":..}}`,
//! plus, when known, the PVC's spec at backup time (`"pvc":{...}`, from
//! `MOVER_PVC_SPEC`) and what a partial backup left out (`"skipped"`), so
//! both survive in the repository (restic shows the description as is).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{MResult, MoverError, RusticCtx};
use crate::result::ErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootMeta {
    /// Permission bits incl. setuid/setgid/sticky (st_mode & 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Description {
    pub backup_mover: u32,
    pub root: RootMeta,
    /// The PVC as the operator saw it (size, access modes, storage class,
    /// volume mode, labels): the default for a restore that creates its target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<serde_json::Value>,
    /// Set on a partial backup: entries left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<SkippedInfo>,
}

/// What a partial backup left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedInfo {
    pub count: u64,
    pub examples: Vec<String>,
}

/// Environment variable with the PVC spec (a JSON object) to record.
pub const PVC_SPEC_ENV: &str = "MOVER_PVC_SPEC";
/// Larger PVC specs are not recorded (the description is read for every listing).
const PVC_SPEC_MAX: usize = 16 * 1024;

/// The PVC spec from `MOVER_PVC_SPEC`; a missing, oversized or non-object
/// value is not recorded (logged), the backup goes on.
pub fn pvc_spec_from_env() -> Option<serde_json::Value> {
    let raw = std::env::var(PVC_SPEC_ENV).ok()?;
    pvc_spec_from(&raw)
}

fn pvc_spec_from(raw: &str) -> Option<serde_json::Value> {
    if raw.len() > PVC_SPEC_MAX {
        log::warn!("{PVC_SPEC_ENV} is longer than {PVC_SPEC_MAX} bytes; not recorded");
        return None;
    }
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(v) if v.is_object() => Some(v),
        Ok(_) => {
            log::warn!("{PVC_SPEC_ENV} is not a JSON object; not recorded");
            None
        }
        Err(e) => {
            log::warn!("{PVC_SPEC_ENV} is not JSON ({e}); not recorded");
            None
        }
    }
}

pub fn read_root(path: &Path) -> MResult<RootMeta> {
    let m = std::fs::metadata(path).ctx(&format!("reading metadata of {}", path.display()))?;
    Ok(RootMeta {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

pub fn describe(root: RootMeta, pvc: Option<serde_json::Value>) -> String {
    serde_json::to_string(&Description {
        backup_mover: 1,
        root,
        pvc,
        skipped: None,
    })
    .unwrap_or_default()
}

/// The whole description of a snapshot the mover wrote.
pub fn description(desc: Option<&str>) -> Option<Description> {
    serde_json::from_str(desc?).ok()
}

pub fn parse_description(desc: Option<&str>) -> Option<RootMeta> {
    description(desc).map(|d| d.root)
}

/// Records in a description what a partial backup left out.
pub fn mark_skipped(desc: Option<&str>, skipped: SkippedInfo) -> Option<String> {
    let mut d = description(desc)?;
    d.skipped = Some(skipped);
    serde_json::to_string(&d).ok()
}

fn cpath(path: &Path) -> MResult<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| MoverError::new(ErrorKind::Other, "path contains NUL"))
}

/// Applies owner, mode (after chown, which clears setgid) and mtime.
pub fn apply_root(path: &Path, m: RootMeta, ownership: bool) -> MResult<()> {
    let c = cpath(path)?;
    if ownership {
        // SAFETY: valid C string; plain syscall.
        let rc = unsafe { libc::lchown(c.as_ptr(), m.uid, m.gid) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // Unprivileged restores cannot chown; keep going like restic.
            log::warn!("chown {} to {}:{}: {e}", path.display(), m.uid, m.gid);
        }
    }
    // SAFETY: as above.
    let rc = unsafe { libc::chmod(c.as_ptr(), m.mode as libc::mode_t) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // The target is the volume's mount point, owned by whoever
        // provisioned it: a non-root mover may not chmod or touch it; its
        // contents are restored all the same.
        if e.raw_os_error() == Some(libc::EPERM) {
            log::warn!(
                "chmod {}: {e} (not the owner; kept as it is)",
                path.display()
            );
            return Ok(());
        }
        return Err(MoverError::classify(
            &format!("chmod {}", path.display()),
            &e,
        ));
    }
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: m.mtime_sec as _,
            tv_nsec: m.mtime_nsec as _,
        },
    ];
    // SAFETY: valid pointers for the duration of the call.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            log::warn!("setting mtime of {}: {e} (not the owner)", path.display());
            return Ok(());
        }
        return Err(MoverError::classify(
            &format!("setting mtime of {}", path.display()),
            &e,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> RootMeta {
        RootMeta {
            mode: 0o755,
            uid: 1,
            gid: 2,
            mtime_sec: 3,
            mtime_nsec: 4,
        }
    }

    #[test]
    fn the_pvc_spec_and_skipped_entries_survive_in_the_description() {
        let spec = pvc_spec_from(r#"{"size":"2Gi","labels":{"app":"db"}}"#);
        let d = describe(root(), spec.clone());
        let marked = mark_skipped(
            Some(&d),
            SkippedInfo {
                count: 2,
                examples: vec!["/data/x: denied".into()],
            },
        );
        let back = description(marked.as_deref()).expect("description parses");
        assert_eq!(back.pvc, spec);
        assert_eq!(back.skipped.map(|s| s.count), Some(2));
        assert_eq!(parse_description(marked.as_deref()), Some(root()));
        // Older descriptions (root only) still parse.
        let old =
            r#"{"backupMover":1,"root":{"mode":493,"uid":1,"gid":2,"mtimeSec":3,"mtimeNsec":4}}"#;
        assert_eq!(description(Some(old)).and_then(|d| d.pvc), None);
    }

    #[test]
    fn only_small_json_objects_are_recorded() {
        assert!(pvc_spec_from("[1]").is_none());
        assert!(pvc_spec_from("not json").is_none());
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(PVC_SPEC_MAX));
        assert!(pvc_spec_from(&big).is_none());
    }
}
