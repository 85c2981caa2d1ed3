//! Metadata of the backed-up root directory, which rustic does not keep.
//! Stored as JSON in the snapshot description:
//! `{"backupMover":1,"root":{"mode":1528,"uid":1000,"gid":2000,"mtimeSec":..,"mtimeNsec":..}}`.

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

pub fn describe(root: RootMeta) -> String {
    serde_json::to_string(&Description {
        backup_mover: 1,
        root,
    })
    .unwrap_or_default()
}

pub fn parse_description(desc: Option<&str>) -> Option<RootMeta> {
    let d: Description = serde_json::from_str(desc?).ok()?;
    Some(d.root)
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
        return Err(MoverError::classify(
            &format!("chmod {}", path.display()),
            &std::io::Error::last_os_error(),
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
        return Err(MoverError::classify(
            &format!("setting mtime of {}", path.display()),
            &std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
