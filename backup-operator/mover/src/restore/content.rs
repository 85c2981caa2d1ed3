//! Bounded-memory restore of file contents.
//!
//! rustic_core's own content restore reads whole packs on a fixed pool of 20
//! threads (about 1 GiB peak for a 1 GiB repository) and panics on backend
//! read errors. Here a small number of workers each fetch coalesced runs of
//! blobs (at most [`MAX_READ`] bytes per request), decrypt, verify and write
//! them with positional writes into files the walk already created. A blob
//! that occurs several times in one read (a repeated chunk: zeros, copies)
//! is decrypted once and written to every place it belongs. All-zero blobs
//! are not written at all: the freshly created file is a hole there, so
//! sparse files come back sparse.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rustic_core::repofile::PackId;
use rustic_core::{DataId, FileType, IndexedFullStatus, Repository, WriteBackend};

use super::fsat::{Dir, open_file_beneath};
use super::trees::corrupt;
use crate::crypto::{Crypto, open_in_place};
use crate::error::{MResult, MoverError, RusticCtx};
use crate::result::ErrorKind;

/// Largest single ranged read from the repository.
const MAX_READ: u32 = 4 * 1024 * 1024;
/// Blobs per work unit for big files (lets several workers share one file).
const BLOBS_PER_UNIT: usize = 64;

/// A regular file the walk created (at its full size, all holes), whose
/// contents are still to be written.
pub struct FileJob {
    /// Path below the target, components joined by `/`.
    pub rel: Vec<u8>,
    pub content: Vec<DataId>,
}

impl FileJob {
    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.rel).into_owned()
    }
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

/// Writes the contents of `jobs` below `root`; returns the bytes restored.
pub fn write_contents(
    repo: &Repository<IndexedFullStatus>,
    be: &Arc<dyn WriteBackend>,
    crypto: &Crypto,
    root: &Dir,
    jobs: &[FileJob],
    threads: usize,
) -> MResult<u64> {
    let units = plan_units(repo, jobs)?;
    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let failure: Mutex<Option<MoverError>> = Mutex::new(None);
    let threads = threads.clamp(1, 64);
    let fail = |e: MoverError| {
        if let Ok(mut f) = failure.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
    };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    // SIGTERM (the Job's deadline) stops the restore between
                    // units; the lock guard is dropped on the way out.
                    if let Err(e) = crate::cancel::check() {
                        return fail(e);
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(unit) = units.get(i) else { return };
                    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        write_unit(be, crypto, root, jobs, unit)
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
                        Err(e) => return fail(e),
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok(bytes.into_inner())
}

fn blob_refs(
    repo: &Repository<IndexedFullStatus>,
    file: usize,
    job: &FileJob,
) -> MResult<Vec<BlobRef>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    for id in &job.content {
        let ie = repo
            .get_index_entry(id)
            .ctx(&format!("blob of {} missing in index", job.shown()))?;
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
        let n = job.content.len();
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
    root: &Dir,
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
        .map(|b| b.offset.saturating_add(b.length))
        .max()
        .unwrap_or(start);
    let what = || jobs[first.file].shown();
    let data = be
        .read_partial(FileType::Pack, &first.pack, false, start, end - start)
        .ctx(&format!("reading pack {} for {}", first.pack, what()))?;
    if data.len() != (end - start) as usize {
        return Err(MoverError::new(
            ErrorKind::Other,
            format!("short read from pack {} for {}", first.pack, what()),
        ));
    }
    // Decrypted where it was read: no second copy of the range. A blob at
    // an offset already opened (the same chunk again) reuses its plaintext;
    // opening it twice would fail authentication on the decrypted bytes.
    let mut data = Vec::from(data);
    let cipher = crypto.cipher();
    let mut opened: HashMap<u32, (usize, usize)> = HashMap::new();
    let mut unpacked = Vec::new();
    let mut unpacked_of: Option<u32> = None;
    let mut zstd_ctx = None;
    let mut open: Option<(usize, File)> = None;
    let mut written = 0u64;
    for b in &unit.blobs {
        let job = &jobs[b.file];
        let a = (b.offset - start) as usize;
        let (pa, pn) = match opened.get(&b.offset) {
            Some(&r) => r,
            None => {
                let sealed = data.get_mut(a..a + b.length as usize).ok_or_else(|| {
                    corrupt(format!(
                        "blob {} of {} lies outside its pack",
                        b.id,
                        job.shown()
                    ))
                })?;
                let n = open_in_place(&cipher, sealed)
                    .ok_or_else(|| {
                        corrupt(format!(
                            "blob {} of {} failed authentication",
                            b.id,
                            job.shown()
                        ))
                    })?
                    .len();
                // The plaintext sits after the 16-byte IV.
                opened.insert(b.offset, (a + 16, n));
                (a + 16, n)
            }
        };
        let plain: &[u8] = &data[pa..pa + pn];
        let plain: &[u8] = match b.uncompressed {
            Some(n) => {
                if unpacked_of != Some(b.offset) {
                    let dec = match &mut zstd_ctx {
                        Some(d) => d,
                        None => zstd_ctx.insert(
                            zstd::bulk::Decompressor::new().ctx("creating a zstd decompressor")?,
                        ),
                    };
                    unpacked.clear();
                    unpacked.reserve(n as usize);
                    dec.decompress_to_buffer(plain, &mut unpacked)
                        .map_err(|e| corrupt(format!("decompressing blob {}: {e}", b.id)))?;
                    unpacked_of = Some(b.offset);
                }
                &unpacked
            }
            None => plain,
        };
        if !crate::verified::names(&b.id, plain) {
            return Err(corrupt(format!(
                "blob {} of {} has a wrong hash",
                b.id,
                job.shown()
            )));
        }
        written += plain.len() as u64;
        if is_zero(plain) {
            continue;
        }
        if open.as_ref().is_none_or(|(f, _)| *f != b.file) {
            let f = open_file_beneath(root, &job.rel)
                .map_err(|e| MoverError::classify(&format!("opening {}", job.shown()), &e))?;
            open = Some((b.file, f));
        }
        if let Some((_, f)) = &open {
            f.write_all_at(plain, b.file_offset)
                .map_err(|e| MoverError::classify(&format!("writing {}", job.shown()), &e))?;
        }
    }
    Ok(written)
}

/// All bytes zero (checked eight at a time).
pub fn is_zero(buf: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to splits correctly.
        unsafe { buf.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0u8; 4099]));
        for i in [0usize, 7, 8, 4000, 4098] {
            let mut v = vec![0u8; 4099];
            v[i] = 1;
            assert!(!is_zero(&v), "byte {i} set");
            assert!(!is_zero(&v[i..]), "unaligned start at {i}");
        }
    }
}
