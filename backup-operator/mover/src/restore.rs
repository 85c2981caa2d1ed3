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

use crate::crypto::{Crypto, open_in_place};
use crate::error::{MResult, MoverError, RusticCtx};
use crate::result::ErrorKind;

/// Largest single ranged read from the repository.
const MAX_READ: u32 = 4 * 1024 * 1024;
/// Blobs per work unit for big files (lets several workers share one file).
const BLOBS_PER_UNIT: usize = 64;

struct FileJob {
    path: PathBuf,
    size: u64,
    node: Node,
}

/// One blob to place into one file.
struct BlobRef {
    file: usize,
    file_offset: u64,
    id: DataId,
    pack: PackId,
    offset: u32,
    length: u32,
    uncompressed: Option<u32>,
}

/// A unit of work: blobs of one pack read with one ranged request (possibly
/// spanning blobs of other files), written to their files.
struct Unit {
    blobs: Vec<BlobRef>,
}

/// Files with at most this many blobs are grouped by pack position
/// (many small files per request, like restic); bigger files are cut into
/// runs of consecutive blobs.
const LOOSE_MAX_BLOBS: usize = 4;
/// Largest gap of unneeded bytes read through to join two blobs.
const MAX_GAP: u32 = 256 * 1024;

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
    for job in &jobs {
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
    }
    let units = plan_units(repo, &jobs)?;
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
                        write_unit(be, crypto, &jobs, unit)
                    }))
                    .unwrap_or_else(|_| {
                        Err(MoverError::new(
                            ErrorKind::Other,
                            "restoring file contents panicked",
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

fn blob_refs(
    repo: &Repository<IndexedFullStatus>,
    file: usize,
    job: &FileJob,
) -> MResult<Vec<BlobRef>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    for id in job.node.content.iter().flatten() {
        let ie = repo
            .get_index_entry(id)
            .ctx(&format!("blob of {} missing in index", job.path.display()))?;
        out.push(BlobRef {
            file,
            file_offset: pos,
            id: *id,
            pack: ie.pack,
            offset: ie.location.offset,
            length: ie.location.length,
            uncompressed: ie.location.uncompressed_length.map(|n| n.get()),
        });
        pos += u64::from(ie.location.data_length());
    }
    Ok(out)
}

/// Splits blobs (sorted by pack and offset) into units of one ranged read.
fn group(blobs: Vec<BlobRef>, units: &mut Vec<Unit>, allow_gaps: bool) {
    let mut cur: Vec<BlobRef> = Vec::new();
    let (mut start, mut end) = (0u32, 0u32);
    for b in blobs {
        let joins = cur.last().is_some_and(|l| {
            l.pack == b.pack
                && b.offset >= start
                && (b.offset <= end || (allow_gaps && b.offset - end <= MAX_GAP))
                && b.offset.saturating_add(b.length).max(end) - start <= MAX_READ
        });
        if !joins && !cur.is_empty() {
            units.push(Unit {
                blobs: std::mem::take(&mut cur),
            });
        }
        if cur.is_empty() {
            start = b.offset;
            end = b.offset;
        }
        end = end.max(b.offset + b.length);
        cur.push(b);
    }
    if !cur.is_empty() {
        units.push(Unit { blobs: cur });
    }
}

fn plan_units(repo: &Repository<IndexedFullStatus>, jobs: &[FileJob]) -> MResult<Vec<Unit>> {
    let mut units = Vec::new();
    let mut loose = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let n = job.node.content.as_ref().map_or(0, Vec::len);
        if n == 0 {
            continue;
        }
        let refs = blob_refs(repo, i, job)?;
        if n <= LOOSE_MAX_BLOBS {
            loose.extend(refs);
        } else {
            // Consecutive blobs of a big file, at most BLOBS_PER_UNIT per unit.
            let mut it = refs.into_iter().peekable();
            while it.peek().is_some() {
                let chunk: Vec<BlobRef> = it.by_ref().take(BLOBS_PER_UNIT).collect();
                group(chunk, &mut units, false);
            }
        }
    }
    loose.sort_by_key(|b| (b.pack, b.offset));
    group(loose, &mut units, true);
    Ok(units)
}

fn write_unit(
    be: &Arc<dyn WriteBackend>,
    crypto: &Crypto,
    jobs: &[FileJob],
    unit: &Unit,
) -> MResult<u64> {
    let Some(first) = unit.blobs.first() else {
        return Ok(0);
    };
    let start = unit
        .blobs
        .iter()
        .map(|b| b.offset)
        .min()
        .unwrap_or(first.offset);
    let end = unit
        .blobs
        .iter()
        .map(|b| b.offset + b.length)
        .max()
        .unwrap_or(start);
    let what = || jobs[first.file].path.display().to_string();
    let data = be
        .read_partial(FileType::Pack, &first.pack, false, start, end - start)
        .ctx(&format!("reading pack {} for {}", first.pack, what()))?;
    if data.len() != (end - start) as usize {
        return Err(MoverError::new(
            ErrorKind::Other,
            format!("short read from pack {} for {}", first.pack, what()),
        ));
    }
    // Decrypted where it was read: no second copy of the range.
    let mut data = Vec::from(data);
    let cipher = crypto.cipher();
    let mut unpacked = Vec::new();
    let mut zstd_ctx = None;
    let mut open: Option<(usize, File)> = None;
    let mut written = 0u64;
    for b in &unit.blobs {
        let path = &jobs[b.file].path;
        let a = (b.offset - start) as usize;
        let sealed = data.get_mut(a..a + b.length as usize).ok_or_else(|| {
            MoverError::new(
                ErrorKind::Other,
                format!("blob {} of {} lies outside its pack", b.id, path.display()),
            )
        })?;
        let plain = open_in_place(&cipher, sealed).ok_or_else(|| {
            MoverError::new(
                ErrorKind::Other,
                format!("blob {} of {} failed authentication", b.id, path.display()),
            )
        })?;
        let plain: &[u8] = match b.uncompressed {
            Some(n) => {
                let dec = match &mut zstd_ctx {
                    Some(d) => d,
                    None => zstd_ctx.insert(
                        zstd::bulk::Decompressor::new().ctx("creating a zstd decompressor")?,
                    ),
                };
                unpacked.clear();
                unpacked.reserve(n as usize);
                dec.decompress_to_buffer(plain, &mut unpacked)
                    .ctx(&format!("decompressing blob {}", b.id))?;
                &unpacked
            }
            None => plain,
        };
        let hash: [u8; 32] = Sha256::digest(plain).into();
        if rustic_core::Id::new(hash) != b.id.into_inner() {
            return Err(MoverError::new(
                ErrorKind::Other,
                format!("blob {} of {} has a wrong hash", b.id, path.display()),
            ));
        }
        if open.as_ref().is_none_or(|(f, _)| *f != b.file) {
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .ctx(&format!("opening {}", path.display()))?;
            open = Some((b.file, f));
        }
        if let Some((_, f)) = &open {
            f.write_all_at(plain, b.file_offset)
                .ctx(&format!("writing {}", path.display()))?;
        }
        written += plain.len() as u64;
    }
    Ok(written)
}
