//! Bounded-memory restore of file contents.
//!
//! rustic_core's own content restore reads whole packs on a fixed pool of 20
//! threads (about 1 GiB peak for a 1 GiB repository) and panics on backend
//! read errors. Here a small number of workers (`--restore-threads`) each
//! fetch coalesced runs of blobs (at most [`MAX_READ`] bytes per request),
//! decrypt, verify and write them with positional writes. Afterwards
//! rustic's restore is run for the same tree: it finds every regular file
//! already present with the right size and mtime and only creates symlinks,
//! hardlinks and special files and sets ownership, modes and times.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rustic_core::repofile::{Node, NodeType, PackId};
use rustic_core::{DataId, FileType, IndexedFullStatus, Repository, WriteBackend};
use sha2::{Digest, Sha256};

use crate::error::{MResult, MoverError, RusticCtx};
use crate::lock::Crypto;
use crate::result::ErrorKind;

/// Largest single ranged read from the repository.
const MAX_READ: u32 = 8 * 1024 * 1024;
/// Blobs per work unit for big files (lets several workers share one file).
const BLOBS_PER_UNIT: usize = 32;

struct FileJob {
    path: PathBuf,
    size: u64,
    node: Node,
}

struct Unit {
    file: usize,
    first_blob: usize,
    end_blob: usize,
    offset: u64,
}

#[derive(Debug, Default)]
pub struct ContentStats {
    pub files: u64,
    pub bytes: u64,
}

/// Writes all regular files below `root` into `target`.
pub fn restore_contents(
    repo: &Repository<IndexedFullStatus>,
    be: &Arc<dyn WriteBackend>,
    crypto: &Crypto,
    root: &Node,
    target: &Path,
    threads: usize,
) -> MResult<ContentStats> {
    let ls = repo
        .ls(root, &rustic_core::LsOptions::default())
        .ctx("listing snapshot tree")?;
    let mut jobs = Vec::new();
    let mut seen_links = HashSet::new();
    for item in ls {
        let (path, node) = item.ctx("reading snapshot tree")?;
        let dest = target.join(&path);
        match node.node_type {
            NodeType::Dir => {
                std::fs::create_dir_all(&dest).ctx(&format!("creating {}", dest.display()))?;
            }
            NodeType::File => {
                // Hardlinks: rustic creates the extra names from the first one.
                if node.meta.links > 1
                    && node.meta.inode != 0
                    && node.meta.device_id != 0
                    && !seen_links.insert((node.meta.device_id, node.meta.inode))
                {
                    continue;
                }
                jobs.push(FileJob {
                    path: dest,
                    size: node.meta.size,
                    node,
                });
            }
            _ => {}
        }
    }

    // Create/size all files first so units can be written in any order.
    let mut units = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        if let Some(parent) = job.path.parent() {
            std::fs::create_dir_all(parent).ctx(&format!("creating {}", parent.display()))?;
        }
        // An existing symlink or dir at this name must not be followed.
        if let Ok(m) = std::fs::symlink_metadata(&job.path)
            && !m.is_file()
        {
            if m.is_dir() {
                std::fs::remove_dir_all(&job.path)
            } else {
                std::fs::remove_file(&job.path)
            }
            .ctx(&format!("replacing {}", job.path.display()))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&job.path)
            .ctx(&format!("creating {}", job.path.display()))?;
        f.set_len(job.size)
            .ctx(&format!("sizing {}", job.path.display()))?;
        let blobs = job.node.content.as_ref().map_or(0, Vec::len);
        let mut first = 0;
        while first < blobs {
            let end = (first + BLOBS_PER_UNIT).min(blobs);
            units.push(Unit {
                file: i,
                first_blob: first,
                end_blob: end,
                offset: 0,
            });
            first = end;
        }
    }
    // File offsets of each unit need blob lengths from the index.
    let mut lens: Vec<Vec<u32>> = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let mut v = Vec::new();
        for id in job.node.content.iter().flatten() {
            let ie = repo
                .get_index_entry(id)
                .ctx(&format!("blob of {} missing in index", job.path.display()))?;
            v.push(ie.location.data_length());
        }
        lens.push(v);
    }
    for u in &mut units {
        u.offset = lens[u.file][..u.first_blob]
            .iter()
            .map(|l| u64::from(*l))
            .sum();
    }

    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let failure: Mutex<Option<MoverError>> = Mutex::new(None);
    let threads = threads.clamp(1, 64);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(unit) = units.get(i) else { return };
                    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        write_unit(repo, be, crypto, &jobs[unit.file], unit)
                    }))
                    .unwrap_or_else(|_| {
                        Err(MoverError::new(
                            ErrorKind::Other,
                            format!("restoring {} panicked", jobs[unit.file].path.display()),
                        ))
                    });
                    match res {
                        Ok(n) => {
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock()
                                && f.is_none()
                            {
                                *f = Some(e);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    // mtime as in the snapshot so rustic's pass treats the file as restored.
    for job in &jobs {
        if let Some(mtime) = job.node.meta.mtime {
            let f = File::options()
                .write(true)
                .open(&job.path)
                .ctx(&format!("opening {}", job.path.display()))?;
            f.set_modified(mtime.into())
                .ctx(&format!("setting mtime of {}", job.path.display()))?;
        }
    }
    Ok(ContentStats {
        files: jobs.len() as u64,
        bytes: bytes.into_inner(),
    })
}

struct Loc {
    id: DataId,
    pack: PackId,
    offset: u32,
    length: u32,
    uncompressed: Option<u32>,
}

fn write_unit(
    repo: &Repository<IndexedFullStatus>,
    be: &Arc<dyn WriteBackend>,
    crypto: &Crypto,
    job: &FileJob,
    unit: &Unit,
) -> MResult<u64> {
    let ids = job
        .node
        .content
        .as_ref()
        .map(|c| &c[unit.first_blob..unit.end_blob])
        .unwrap_or(&[]);
    let mut locs = Vec::with_capacity(ids.len());
    for id in ids {
        let ie = repo
            .get_index_entry(id)
            .ctx(&format!("blob of {} missing in index", job.path.display()))?;
        locs.push(Loc {
            id: *id,
            pack: ie.pack,
            offset: ie.location.offset,
            length: ie.location.length,
            uncompressed: ie.location.uncompressed_length.map(|n| n.get()),
        });
    }
    let file = OpenOptions::new()
        .write(true)
        .open(&job.path)
        .ctx(&format!("opening {}", job.path.display()))?;
    let mut pos = unit.offset;
    let mut written = 0u64;
    let mut i = 0;
    while i < locs.len() {
        // Coalesce blobs stored back to back in the same pack.
        let start = locs[i].offset;
        let mut end = start + locs[i].length;
        let mut j = i + 1;
        while j < locs.len()
            && locs[j].pack == locs[i].pack
            && locs[j].offset == end
            && end - start + locs[j].length <= MAX_READ
        {
            end += locs[j].length;
            j += 1;
        }
        let data = be
            .read_partial(FileType::Pack, &locs[i].pack, false, start, end - start)
            .ctx(&format!(
                "reading pack {} for {}",
                locs[i].pack,
                job.path.display()
            ))?;
        if data.len() != (end - start) as usize {
            return Err(MoverError::new(
                ErrorKind::Other,
                format!("short read from pack {}", locs[i].pack),
            ));
        }
        for l in &locs[i..j] {
            let a = (l.offset - start) as usize;
            let b = a + l.length as usize;
            let plain = crypto.decrypt(&data[a..b]).ok_or_else(|| {
                MoverError::new(
                    ErrorKind::Other,
                    format!(
                        "blob {} of {} failed authentication",
                        l.id,
                        job.path.display()
                    ),
                )
            })?;
            let plain = match l.uncompressed {
                Some(n) => {
                    let mut out = Vec::with_capacity(n as usize);
                    zstd::stream::copy_decode(&plain[..], &mut out)
                        .ctx(&format!("decompressing blob {}", l.id))?;
                    out
                }
                None => plain,
            };
            let hash: [u8; 32] = Sha256::digest(&plain).into();
            if rustic_core::Id::new(hash) != l.id.into_inner() {
                return Err(MoverError::new(
                    ErrorKind::Other,
                    format!("blob {} of {} has a wrong hash", l.id, job.path.display()),
                ));
            }
            file.write_all_at(&plain, pos)
                .ctx(&format!("writing {}", job.path.display()))?;
            pos += plain.len() as u64;
            written += plain.len() as u64;
        }
        i = j;
    }
    Ok(written)
}
