//! Filesystem operations relative to directory descriptors that never follow
//! a symlink inside the restore target.
//!
//! A user who can write into the target volume may swap any directory for a
//! symlink while a restore runs. So nothing here resolves a path string from
//! the target root: directories are opened one component at a time with
//! `O_NOFOLLOW`, files are created with `O_EXCL | O_NOFOLLOW`, re-opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, and metadata is set on
//! the opened node itself (`fchown`/`fchmod`/`futimens`) or with
//! `AT_SYMLINK_NOFOLLOW`.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `fd` was just returned by a successful open call and is ours.
    cvt(fd).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a name in a directory currently is (not following symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    Dir,
    File,
    Other,
}

/// An open directory of the target.
pub struct Dir {
    fd: OwnedFd,
}

impl Dir {
    /// Opens the restore target itself (a path the operator chose, e.g. the
    /// PVC's mount point); everything below it goes through descriptors.
    pub fn open_root(path: &Path) -> io::Result<Self> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in target path"))?;
        // SAFETY: valid C string.
        let fd = owned(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(Self { fd })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn kind_of(&self, name: &CStr) -> io::Result<Kind> {
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, C string and out pointer.
        let rc = unsafe {
            libc::fstatat(
                self.raw(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::NotFound {
                Ok(Kind::Missing)
            } else {
                Err(e)
            };
        }
        Ok(match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            _ => Kind::Other,
        })
    }

    /// Opens child directory `name`; fails (ELOOP/ENOTDIR) on a symlink.
    pub fn open_dir(&self, name: &CStr) -> io::Result<Dir> {
        // SAFETY: valid fd and C string.
        let fd = owned(unsafe {
            libc::openat(
                self.raw(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        Ok(Dir { fd })
    }

    /// The child directory `name`, created if missing; whatever else sits at
    /// that name (file, symlink, device) is removed first.
    pub fn ensure_dir(&self, name: &CStr) -> io::Result<Dir> {
        match self.kind_of(name)? {
            Kind::Dir => {}
            Kind::Missing => self.mkdir(name)?,
            Kind::File | Kind::Other => {
                self.remove(name)?;
                self.mkdir(name)?;
            }
        }
        self.open_dir(name)
    }

    fn mkdir(&self, name: &CStr) -> io::Result<()> {
        // SAFETY: valid fd and C string.
        cvt(unsafe { libc::mkdirat(self.raw(), name.as_ptr(), 0o700) }).map(drop)
    }

    /// Removes whatever is at `name` (a directory recursively, through
    /// descriptors, never following symlinks). Missing is fine.
    pub fn remove(&self, name: &CStr) -> io::Result<()> {
        match self.kind_of(name)? {
            Kind::Missing => Ok(()),
            Kind::Dir => {
                let sub = self.open_dir(name)?;
                for child in sub.names()? {
                    sub.remove(&child)?;
                }
                // SAFETY: valid fd and C string.
                cvt(unsafe { libc::unlinkat(self.raw(), name.as_ptr(), libc::AT_REMOVEDIR) })
                    .map(drop)
            }
            Kind::File | Kind::Other => {
                // SAFETY: valid fd and C string.
                cvt(unsafe { libc::unlinkat(self.raw(), name.as_ptr(), 0) }).map(drop)
            }
        }
    }

    /// Names in this directory (without `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<CString>> {
        // Read through a duplicate: the listing closes the descriptor it owns.
        // SAFETY: valid fd.
        let dup = owned(unsafe { libc::fcntl(self.raw(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: `dup` is an open directory descriptor; fdopendir takes it over.
        let dirp = unsafe { libc::fdopendir(dup.as_raw_fd()) };
        if dirp.is_null() {
            return Err(io::Error::last_os_error());
        }
        std::mem::forget(dup);
        // SAFETY: dirp is valid until closedir below.
        unsafe { libc::rewinddir(dirp) };
        let mut out = Vec::new();
        loop {
            // SAFETY: dirp is valid; readdir returns null at the end.
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                break;
            }
            // SAFETY: d_name of a returned entry is a NUL-terminated string.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
            let b = name.to_bytes();
            if b != b"." && b != b".." {
                out.push(name.to_owned());
            }
        }
        // SAFETY: dirp came from fdopendir.
        unsafe { libc::closedir(dirp) };
        Ok(out)
    }

    /// Creates a new, empty regular file `name` of `size` bytes (a hole),
    /// replacing whatever was there: an existing file is unlinked rather
    /// than truncated, so a hard link planted into the target is not
    /// written through.
    pub fn create_file(&self, name: &CStr, size: u64) -> io::Result<()> {
        if self.kind_of(name)? != Kind::Missing {
            self.remove(name)?;
        }
        // SAFETY: valid fd and C string.
        let fd = owned(unsafe {
            libc::openat(
                self.raw(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        })?;
        File::from(fd).set_len(size)
    }

    pub fn symlink(&self, name: &CStr, target: &CStr) -> io::Result<()> {
        if self.kind_of(name)? != Kind::Missing {
            self.remove(name)?;
        }
        // SAFETY: valid C strings and fd.
        cvt(unsafe { libc::symlinkat(target.as_ptr(), self.raw(), name.as_ptr()) }).map(drop)
    }

    /// A FIFO, socket or device node (`mode` includes the file type bits).
    pub fn mknod(&self, name: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
        if self.kind_of(name)? != Kind::Missing {
            self.remove(name)?;
        }
        // SAFETY: valid C string and fd.
        cvt(unsafe { libc::mknodat(self.raw(), name.as_ptr(), mode, dev) }).map(drop)
    }

    /// Hard link `name` to `existing` (a file this restore created earlier,
    /// given as its directory and name, neither resolved through symlinks).
    pub fn link_from(&self, name: &CStr, src_dir: &Dir, src_name: &CStr) -> io::Result<()> {
        if self.kind_of(name)? != Kind::Missing {
            self.remove(name)?;
        }
        // SAFETY: valid fds and C strings; flags 0 = do not follow a symlink source.
        cvt(unsafe {
            libc::linkat(
                src_dir.raw(),
                src_name.as_ptr(),
                self.raw(),
                name.as_ptr(),
                0,
            )
        })
        .map(drop)
    }

    /// Sets owner, mode and times of the child `name` without following a
    /// symlink at that name. Regular files and directories are opened and
    /// changed through their descriptor (the inode the restore created);
    /// other kinds are changed by name with `AT_SYMLINK_NOFOLLOW` (a swapped
    /// symlink then gets the attributes, never its target).
    pub fn set_meta(&self, name: &CStr, m: &Attrs, kind: Kind) -> io::Result<()> {
        match kind {
            Kind::File | Kind::Dir => {
                let flags = if kind == Kind::Dir {
                    libc::O_RDONLY | libc::O_DIRECTORY
                } else {
                    libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY
                };
                // SAFETY: valid fd and C string.
                let fd = owned(unsafe {
                    libc::openat(
                        self.raw(),
                        name.as_ptr(),
                        flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                })?;
                set_meta_fd(fd.as_raw_fd(), m)
            }
            Kind::Other | Kind::Missing => self.set_meta_nofollow(name, m),
        }
    }

    fn set_meta_nofollow(&self, name: &CStr, m: &Attrs) -> io::Result<()> {
        if let Some((uid, gid)) = m.owner {
            // SAFETY: valid fd and C string.
            let rc = unsafe {
                libc::fchownat(
                    self.raw(),
                    name.as_ptr(),
                    uid,
                    gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            chown_result(rc)?;
        }
        if let Some(mode) = m.mode {
            // fchmodat2 honours AT_SYMLINK_NOFOLLOW (Linux 6.6); on a symlink
            // it fails with EOPNOTSUPP, which is what we want.
            // SAFETY: valid fd and C string.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_fchmodat2,
                    self.raw(),
                    name.as_ptr(),
                    mode as libc::c_uint,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                // Older kernels: leave the creation mode rather than follow.
                if !matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EOPNOTSUPP)) {
                    return Err(e);
                }
            }
        }
        if let Some(times) = m.times() {
            // SAFETY: valid fd, C string and a two-element array.
            cvt(unsafe {
                libc::utimensat(
                    self.raw(),
                    name.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        Ok(())
    }
}

/// Attributes to apply to a restored node.
#[derive(Debug, Clone, Default)]
pub struct Attrs {
    pub owner: Option<(u32, u32)>,
    /// Permission bits incl. setuid/setgid/sticky.
    pub mode: Option<u32>,
    pub atime: Option<(i64, i64)>,
    pub mtime: Option<(i64, i64)>,
}

impl Attrs {
    fn times(&self) -> Option<[libc::timespec; 2]> {
        if self.atime.is_none() && self.mtime.is_none() {
            return None;
        }
        let ts = |t: Option<(i64, i64)>| match t {
            Some((s, ns)) => libc::timespec {
                tv_sec: s as _,
                tv_nsec: ns as _,
            },
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        };
        // restic restores atime too; without one, keep mtime for both.
        Some([ts(self.atime.or(self.mtime)), ts(self.mtime)])
    }
}

/// An unprivileged restore cannot give files away; like restic it goes on.
fn chown_result(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            log::debug!("chown not permitted: {e}");
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// chown before chmod (chown clears setuid/setgid), times last.
pub fn set_meta_fd(fd: RawFd, m: &Attrs) -> io::Result<()> {
    if let Some((uid, gid)) = m.owner {
        // SAFETY: valid fd.
        chown_result(unsafe { libc::fchown(fd, uid, gid) })?;
    }
    if let Some(mode) = m.mode {
        // SAFETY: valid fd.
        cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) })?;
    }
    if let Some(times) = m.times() {
        // SAFETY: valid fd and a two-element array.
        cvt(unsafe { libc::futimens(fd, times.as_ptr()) })?;
    }
    Ok(())
}

/// Opens the regular file at `rel` (components below `root`) for writing,
/// refusing any symlink on the way and any escape from `root`.
pub fn open_file_beneath(root: &Dir, rel: &[u8]) -> io::Result<File> {
    let c = CString::new(rel)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid fd, C string and open_how of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.raw(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if rc >= 0 {
        return owned(rc as libc::c_int).map(File::from);
    }
    let e = io::Error::last_os_error();
    // No openat2 (old kernel, seccomp) or a path longer than PATH_MAX: walk
    // the components with O_NOFOLLOW instead.
    if !matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::ENAMETOOLONG)
    ) {
        return Err(e);
    }
    let mut parts = rel
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty())
        .peekable();
    let mut dir: Option<Dir> = None;
    while let Some(part) = parts.next() {
        let name = CString::new(part)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        let here = dir.as_ref().unwrap_or(root);
        if parts.peek().is_none() {
            // SAFETY: valid fd and C string.
            let fd = owned(unsafe {
                libc::openat(
                    here.raw(),
                    name.as_ptr(),
                    libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            })?;
            return Ok(File::from(fd));
        }
        dir = Some(here.open_dir(&name)?);
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"))
}

/// Opens the directory at `rel` below `root` without following symlinks.
pub fn open_dir_beneath(root: &Dir, rel: &[u8]) -> io::Result<Dir> {
    let mut dir: Option<Dir> = None;
    for part in rel.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        let name = CString::new(part)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        let next = dir.as_ref().unwrap_or(root).open_dir(&name)?;
        dir = Some(next);
    }
    match dir {
        Some(d) => Ok(d),
        // SAFETY: valid fd.
        None => {
            owned(unsafe { libc::fcntl(root.raw(), libc::F_DUPFD_CLOEXEC, 0) }).map(|fd| Dir { fd })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    fn tmp(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("fsat-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    fn c(s: &str) -> CString {
        CString::new(s).expect("cstring")
    }

    #[test]
    fn symlinks_in_the_target_are_never_followed() {
        let base = tmp("follow");
        let (target, outside) = (base.join("t"), base.join("outside"));
        std::fs::create_dir_all(&target).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("keep"), b"outside").expect("write");
        symlink(&outside, target.join("x")).expect("symlink");
        symlink(outside.join("keep"), target.join("f")).expect("symlink");
        let root = Dir::open_root(&target).expect("open");

        // Opening through a symlinked directory fails, by either path.
        assert!(open_file_beneath(&root, b"x/keep").is_err());
        assert!(open_dir_beneath(&root, b"x").is_err());
        assert!(root.open_dir(&c("x")).is_err());
        // ensure_dir replaces the symlink by a real directory.
        let x = root.ensure_dir(&c("x")).expect("ensure_dir");
        x.create_file(&c("keep"), 3).expect("create");
        assert_eq!(
            std::fs::read(outside.join("keep")).expect("read"),
            b"outside"
        );
        assert!(target.join("x").symlink_metadata().expect("lstat").is_dir());
        // Metadata on a symlink name changes the link, never its target.
        let before = std::fs::metadata(outside.join("keep"))
            .expect("stat")
            .mode();
        let attrs = Attrs {
            mode: Some(0o777),
            mtime: Some((1, 0)),
            ..Attrs::default()
        };
        root.set_meta(&c("f"), &attrs, Kind::Other)
            .expect("set_meta");
        let after = std::fs::metadata(outside.join("keep")).expect("stat");
        assert_eq!(after.mode(), before, "target's mode unchanged");
        assert_ne!(after.mtime(), 1, "target's mtime unchanged");
        // A regular file swapped for a symlink is refused when opened as one.
        assert!(root.set_meta(&c("f"), &attrs, Kind::File).is_err());
        // Removing a symlinked directory removes the link only.
        symlink(&outside, target.join("y")).expect("symlink");
        root.remove(&c("y")).expect("remove");
        assert!(outside.join("keep").exists());
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn create_file_unlinks_a_planted_hard_link() {
        let base = tmp("hardlink");
        std::fs::write(base.join("victim"), b"precious").expect("write");
        std::fs::hard_link(base.join("victim"), base.join("planted")).expect("link");
        let root = Dir::open_root(&base).expect("open");
        root.create_file(&c("planted"), 5).expect("create");
        let f = open_file_beneath(&root, b"planted").expect("reopen");
        std::os::unix::fs::FileExt::write_all_at(&f, b"new!!", 0).expect("write");
        assert_eq!(
            std::fs::read(base.join("victim")).expect("read"),
            b"precious"
        );
        assert_eq!(std::fs::read(base.join("planted")).expect("read"), b"new!!");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn remove_is_recursive_without_following() {
        let base = tmp("remove");
        let outside = base.join("outside");
        std::fs::create_dir_all(base.join("t/a/b")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("keep"), b"k").expect("write");
        std::fs::write(base.join("t/a/b/f"), b"f").expect("write");
        symlink(&outside, base.join("t/a/link")).expect("symlink");
        let root = Dir::open_root(&base.join("t")).expect("open");
        root.remove(&c("a")).expect("remove");
        assert!(!base.join("t/a").exists());
        assert!(outside.join("keep").exists());
        assert_eq!(root.names().expect("names"), Vec::<CString>::new());
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
