//! Names read from a repository are input, not trusted: a tree node's name
//! must be exactly one normal path component before it touches the target.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;

use crate::error::{MResult, MoverError};
use crate::result::ErrorKind;

/// `name` as a C string when it is a single normal component: not empty,
/// not `.` or `..`, without `/` or NUL. Anything else is refused (restic's
/// restorer refuses such names too).
pub fn component(name: &OsStr) -> MResult<CString> {
    let b = name.as_bytes();
    let bad = b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0);
    if bad {
        return Err(MoverError::new(
            ErrorKind::RepositoryCorrupt,
            format!(
                "snapshot holds an unsafe file name {:?}; refusing to restore it",
                name.to_string_lossy()
            ),
        ));
    }
    CString::new(b).map_err(|_| MoverError::new(ErrorKind::RepositoryCorrupt, "NUL in file name"))
}

/// Splits a user-given path inside a snapshot (`/a/b`, `a/b/`) into normal
/// components; `..` is refused, `.` and empty parts are dropped.
pub fn split_user_path(path: &str) -> MResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(MoverError::new(
                    ErrorKind::NotFound,
                    format!("path {path:?} must not contain '..'"),
                ));
            }
            p => out.push(p.as_bytes().to_vec()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn only_single_normal_components_pass() {
        for ok in ["a", "file.txt", "..a", "a..", " ", "new\nline", "ünï"] {
            assert!(component(OsStr::new(ok)).is_ok(), "{ok:?} is a normal name");
        }
        let non_utf8 = OsString::from_vec(vec![0xff, 0xfe, b'x']);
        assert!(component(&non_utf8).is_ok(), "non-UTF-8 names are fine");
        for bad in ["", ".", "..", "a/b", "/", "/etc", "../x", "x/..", "a\0b"] {
            let e = component(OsStr::new(bad)).expect_err(bad);
            assert_eq!(e.kind, ErrorKind::RepositoryCorrupt, "{bad:?}");
        }
    }

    #[test]
    fn user_paths_split_into_components() {
        let s = |p| split_user_path(p).expect(p);
        assert_eq!(s("/a/b/"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(s("./a//b"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(s("/").is_empty());
        assert!(split_user_path("a/../../etc").is_err());
    }
}
