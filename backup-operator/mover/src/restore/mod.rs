//! Restore of a snapshot tree into a target directory.
//!
//! The walk goes through the snapshot's trees (each verified by its id) and
//! creates every node below the target through directory descriptors
//! ([`fsat`]): names are single normal components ([`names`]), nothing in the
//! target is followed. Regular files are created at their size and their
//! contents written in batches by [`content`]'s workers; metadata of a batch's
//! files is set once their contents are in place, metadata of directories at
//! the end, deepest first, so that read-only directories do not stop the
//! restore of their children. Memory is bounded by the batch size and the
//! number of directories, not by the number of files.

mod content;
mod fsat;
mod names;
mod trees;

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use rustic_core::repofile::{Metadata, Node, NodeType};
use rustic_core::{IndexedFullStatus, Repository, TreeId, WriteBackend};

use crate::crypto::Crypto;
use crate::error::{MResult, MoverError};
use content::FileJob;
use fsat::{Attrs, Dir, Kind};
pub use names::split_user_path;
pub use trees::{Trees, root_node};

/// Files per content batch, and blobs per batch (memory bound of the walk).
const BATCH_FILES: usize = 8192;
const BATCH_BLOBS: usize = 65_536;

pub struct Options {
    pub threads: usize,
    /// Remove entries of the target that the snapshot does not hold.
    pub delete: bool,
    pub ownership: bool,
    /// Restore only these paths (components below the restored tree); empty: all.
    pub includes: Vec<Vec<Vec<u8>>>,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
}

/// Which part of a directory the include paths select.
#[derive(Clone)]
enum Sel {
    All,
    /// Only children on the way to these remaining paths.
    Some(Vec<Vec<Vec<u8>>>),
}

impl Sel {
    fn child(&self, name: &[u8]) -> Option<Sel> {
        let Sel::Some(paths) = self else {
            return Some(Sel::All);
        };
        let mut rest = Vec::new();
        for p in paths {
            if p.first().is_some_and(|c| c.as_slice() == name) {
                if p.len() == 1 {
                    return Some(Sel::All);
                }
                rest.push(p[1..].to_vec());
            }
        }
        (!rest.is_empty()).then_some(Sel::Some(rest))
    }
}

struct Walk<'a> {
    trees: &'a Trees<'a>,
    root: &'a Dir,
    opts: &'a Options,
    batch: Vec<FileJob>,
    batch_attrs: Vec<Attrs>,
    batch_blobs: usize,
    dirs: Vec<(Vec<u8>, Attrs)>,
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: Stats,
}

/// Restores the directory `node` of a snapshot into `target`.
pub fn restore_tree(
    repo: &Repository<IndexedFullStatus>,
    be: &Arc<dyn WriteBackend>,
    crypto: &Crypto,
    node: &Node,
    target: &Path,
    opts: &Options,
) -> MResult<Stats> {
    let trees = Trees { repo, be, crypto };
    let root = Dir::open_root(target)
        .map_err(|e| MoverError::classify(&format!("opening target {}", target.display()), &e))?;
    let mut walk = Walk {
        trees: &trees,
        root: &root,
        opts,
        batch: Vec::new(),
        batch_attrs: Vec::new(),
        batch_blobs: 0,
        dirs: Vec::new(),
        links: HashMap::new(),
        stats: Stats::default(),
    };
    let sel = if opts.includes.is_empty() {
        Sel::All
    } else {
        Sel::Some(opts.includes.clone())
    };
    if let Some(tree) = node.subtree {
        walk.dir(&root, &[], tree, &sel)?;
    }
    walk.flush()?;
    for (rel, attrs) in walk.dirs.iter().rev() {
        let d = fsat::open_dir_beneath(&root, rel).map_err(|e| io_err("opening", rel, &e))?;
        fsat::set_meta_fd(d.raw(), attrs).map_err(|e| io_err("setting metadata of", rel, &e))?;
    }
    // A real directory node (not a snapshot's root tree) carries metadata.
    if node.meta.mode.is_some() {
        match fsat::set_meta_fd(root.raw(), &attrs_of(&node.meta, opts.ownership, true)) {
            Ok(()) => {}
            // The target's root is the volume's mount point, owned by whoever
            // provisioned it: a non-root mover may not chmod it, and its
            // contents are restored all the same.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                log::warn!("metadata of the restore target's root not restored: {e}");
            }
            Err(e) => return Err(io_err("setting metadata of", b".", &e)),
        }
    }
    Ok(walk.stats)
}

fn io_err(what: &str, rel: &[u8], e: &std::io::Error) -> MoverError {
    MoverError::classify(&format!("{what} {}", String::from_utf8_lossy(rel)), e)
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(rel.len() + name.len() + 1);
    if !rel.is_empty() {
        v.extend_from_slice(rel);
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// Go's `os.FileMode` bits (restic's `mode`) to Unix permission bits.
fn unix_perm(go_mode: u32) -> u32 {
    let mut m = go_mode & 0o777;
    if go_mode & (1 << 23) != 0 {
        m |= libc::S_ISUID;
    }
    if go_mode & (1 << 22) != 0 {
        m |= libc::S_ISGID;
    }
    if go_mode & (1 << 20) != 0 {
        m |= libc::S_ISVTX;
    }
    m
}

fn attrs_of(meta: &Metadata, ownership: bool, with_mode: bool) -> Attrs {
    let ts =
        |t: &Option<jiff::Timestamp>| t.map(|t| (t.as_second(), i64::from(t.subsec_nanosecond())));
    Attrs {
        owner: match (ownership, meta.uid, meta.gid) {
            (true, Some(u), Some(g)) => Some((u, g)),
            _ => None,
        },
        mode: if with_mode {
            meta.mode.map(unix_perm)
        } else {
            None
        },
        atime: ts(&meta.atime),
        mtime: ts(&meta.mtime),
    }
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Dir, rel: &[u8], tree: TreeId, sel: &Sel) -> MResult<()> {
        crate::cancel::check()?;
        let tree = self.trees.load(&tree)?;
        let mut keep = HashSet::new();
        for node in tree.nodes {
            let os = node.name();
            let name = names::component(&os)?;
            let Some(csel) = sel.child(name.to_bytes()) else {
                continue;
            };
            let crel = join(rel, name.to_bytes());
            keep.insert(name.clone());
            self.node(dir, &name, crel, node, &csel)?;
        }
        if self.opts.delete && matches!(sel, Sel::All) {
            let present = dir.names().map_err(|e| io_err("listing", rel, &e))?;
            for n in present.into_iter().filter(|n| !keep.contains(n)) {
                dir.remove(&n)
                    .map_err(|e| io_err("removing", &join(rel, n.to_bytes()), &e))?;
            }
        }
        Ok(())
    }

    fn node(
        &mut self,
        dir: &Dir,
        name: &CString,
        rel: Vec<u8>,
        node: Node,
        sel: &Sel,
    ) -> MResult<()> {
        let own = self.opts.ownership;
        let fail = |what: &str, e: std::io::Error| io_err(what, &rel, &e);
        match &node.node_type {
            NodeType::Dir => {
                let sub = dir.ensure_dir(name).map_err(|e| fail("creating", e))?;
                if let Some(t) = node.subtree {
                    self.dir(&sub, &rel, t, sel)?;
                }
                self.dirs.push((rel, attrs_of(&node.meta, own, true)));
            }
            // Only directories lie on the way to an include path.
            _ if matches!(sel, Sel::Some(_)) => {}
            NodeType::File => self.file(dir, name, rel, node)?,
            NodeType::Symlink { .. } => {
                let t = CString::new(node.node_type.to_link().as_os_str().as_bytes()).map_err(
                    |_| {
                        trees::corrupt(format!(
                            "NUL in the link target of {}",
                            String::from_utf8_lossy(&rel)
                        ))
                    },
                )?;
                dir.symlink(name, &t)
                    .map_err(|e| fail("creating symlink", e))?;
                dir.set_meta(name, &attrs_of(&node.meta, own, false), Kind::Other)
                    .map_err(|e| fail("setting metadata of", e))?;
            }
            NodeType::Dev { device } | NodeType::Chardev { device } => {
                let kind = if matches!(node.node_type, NodeType::Dev { .. }) {
                    libc::S_IFBLK
                } else {
                    libc::S_IFCHR
                };
                match dir.mknod(name, kind | 0o600, *device as libc::dev_t) {
                    Ok(()) => dir
                        .set_meta(name, &attrs_of(&node.meta, own, true), Kind::Other)
                        .map_err(|e| fail("setting metadata of", e))?,
                    // Device nodes need CAP_MKNOD, which mover pods do not
                    // get: the node is left out, as restic does unprivileged.
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        log::warn!(
                            "device node {} not restored: {e}",
                            String::from_utf8_lossy(&rel)
                        );
                    }
                    Err(e) => return Err(fail("creating device", e)),
                }
            }
            NodeType::Fifo | NodeType::Socket => {
                let kind = if matches!(node.node_type, NodeType::Fifo) {
                    libc::S_IFIFO
                } else {
                    libc::S_IFSOCK
                };
                dir.mknod(name, kind | 0o600, 0)
                    .map_err(|e| fail("creating", e))?;
                dir.set_meta(name, &attrs_of(&node.meta, own, true), Kind::Other)
                    .map_err(|e| fail("setting metadata of", e))?;
            }
        }
        Ok(())
    }

    fn file(&mut self, dir: &Dir, name: &CString, rel: Vec<u8>, node: Node) -> MResult<()> {
        let m = &node.meta;
        if m.links > 1 && m.inode != 0 {
            let key = (m.device_id, m.inode);
            if let Some(first) = self.links.get(&key) {
                let (pdir, pname) = match first.iter().rposition(|&b| b == b'/') {
                    Some(i) => (&first[..i], &first[i + 1..]),
                    None => (&first[..0], &first[..]),
                };
                let src = fsat::open_dir_beneath(self.root, pdir)
                    .map_err(|e| io_err("opening", pdir, &e))?;
                let pname =
                    CString::new(pname).map_err(|_| trees::corrupt("NUL in a file name".into()))?;
                dir.link_from(name, &src, &pname)
                    .map_err(|e| io_err("linking", &rel, &e))?;
                return Ok(());
            }
            self.links.insert(key, rel.clone());
        }
        dir.create_file(name, m.size)
            .map_err(|e| io_err("creating", &rel, &e))?;
        let content = node.content.unwrap_or_default();
        self.batch_blobs += content.len();
        self.batch_attrs
            .push(attrs_of(&node.meta, self.opts.ownership, true));
        self.batch.push(FileJob { rel, content });
        self.stats.files += 1;
        if self.batch.len() >= BATCH_FILES || self.batch_blobs >= BATCH_BLOBS {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the pending files' contents, then their metadata.
    fn flush(&mut self) -> MResult<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let t = self.trees;
        self.stats.bytes += content::write_contents(
            t.repo,
            t.be,
            t.crypto,
            self.root,
            &self.batch,
            self.opts.threads,
        )?;
        for (job, attrs) in self.batch.iter().zip(&self.batch_attrs) {
            let f = fsat::open_file_beneath(self.root, &job.rel)
                .map_err(|e| io_err("opening", &job.rel, &e))?;
            fsat::set_meta_fd(f.as_raw_fd(), attrs)
                .map_err(|e| io_err("setting metadata of", &job.rel, &e))?;
        }
        self.batch.clear();
        self.batch_attrs.clear();
        self.batch_blobs = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<Vec<u8>> {
        split_user_path(s).expect("path")
    }

    #[test]
    fn include_paths_select_ancestors_and_subtrees() {
        let sel = Sel::Some(vec![p("a/b"), p("c")]);
        assert!(matches!(sel.child(b"c"), Some(Sel::All)));
        assert!(sel.child(b"x").is_none());
        let a = sel.child(b"a").expect("a leads to a/b");
        assert!(matches!(a, Sel::Some(_)));
        assert!(matches!(a.child(b"b"), Some(Sel::All)));
        assert!(a.child(b"bb").is_none());
        assert!(matches!(Sel::All.child(b"anything"), Some(Sel::All)));
    }

    #[test]
    fn go_modes_map_to_unix_bits() {
        assert_eq!(unix_perm(0o644), 0o644);
        assert_eq!(unix_perm((1 << 31) | 0o755), 0o755, "dir bit dropped");
        assert_eq!(unix_perm((1 << 23) | 0o755), 0o4755);
        assert_eq!(unix_perm((1 << 22) | (1 << 20) | 0o770), 0o3770);
    }

    #[test]
    fn relative_paths_join() {
        assert_eq!(join(b"", b"a"), b"a");
        assert_eq!(join(b"a/b", b"c"), b"a/b/c");
    }
}
