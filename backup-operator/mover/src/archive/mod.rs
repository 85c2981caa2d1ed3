//! The backup pipeline: walks the source, chunks, deduplicates, compresses,
//! encrypts and packs file contents, builds restic trees and writes the
//! index (as it goes) and the snapshot.
//!
//! Why not rustic_core's archiver: it computes the chunker's polynomial
//! tables for every file and passes every file through several threads;
//! small-file backups spent most of their CPU there. Here the main thread
//! walks and builds trees, `threads` workers each read whole files and fill
//! their own data pack, and uploaders write finished packs and index them.
//! rustic_core still provides the source walk (node metadata exactly as
//! before), the repository config, the file formats' types and the backends.

pub mod chunker;
pub mod index;
mod known;
pub mod pack;
pub mod parent;
mod store;
mod walk;

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use jiff::Zoned;
use rustic_core::repofile::{SnapshotFile, SnapshotSummary};
use rustic_core::{
    DataId, Excludes, FileType, Id, LocalSource, LocalSourceFilterOptions, LocalSourceSaveOptions,
    OpenStatus, ReadSource, ReadSourceOpen, Repository, StringList, TreeId,
};

use self::chunker::Chunker;
use self::index::{FileSaver, INDEX_MAX_AGE, PendingIndex};
use self::known::KnownBlobs;
use self::pack::{Kind, Pack, sha256};
use self::parent::ParentTrees;
use self::store::{Shared, Stats, Store, upload_packs};
use self::walk::{INTERRUPTED, ParentDir, Summary, Walk};
use crate::crypto::Crypto;
use crate::error::{MResult, MoverError, RusticCtx};
use crate::repo::Backend;
use crate::result::ErrorKind;

/// Data and tree packs are cut at this size (restic's default).
pub const PACK_SIZE: usize = 16 * 1024 * 1024;
/// Default cap on file workers: each may hold a pack (16 MiB), a chunk and
/// its compression (up to 8 MiB each), and a large node must not multiply
/// that past the Job's memory limit.
pub const MAX_DEFAULT_THREADS: usize = 4;
/// Concurrent pack uploads.
const UPLOADERS: usize = 2;

/// What the backup needs besides the repository.
pub struct Settings<'a> {
    pub source: &'a Path,
    /// Path the contents are stored under (`/data`).
    pub as_path: &'a str,
    pub parent: Option<&'a SnapshotFile>,
    /// File workers; defaults to the CPUs available, at most [`MAX_DEFAULT_THREADS`].
    pub threads: Option<usize>,
    /// When set (e.g. on SIGTERM) the backup stops reading files, uploads
    /// and indexes the packs it has filled, and fails with "backup interrupted".
    pub cancel: Option<&'a AtomicBool>,
    /// Counts the entries left out (the backup is then partial).
    pub skipped: &'a crate::skipped::Skipped,
    /// Globs of paths left out (see [`exclude_globs`]).
    pub excludes: &'a [String],
}

/// The source's `lost+found`: made by mkfs, never data of the application.
pub const LOST_FOUND: &str = "lost+found";

/// The walk's ignore globs for the user's exclude patterns, gitignore style:
/// a pattern without `/` matches a name at any depth (`*.tmp`, `cache`), one
/// with `/` is relative to the source (`var/cache/**`). The source's
/// top-level `lost+found` is always left out.
pub fn exclude_globs(source: &Path, patterns: &[String]) -> Vec<String> {
    let root = source.to_string_lossy();
    let root = root.trim_end_matches('/');
    let mut globs = vec![format!("!{root}/{LOST_FOUND}")];
    for p in patterns.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let p = p.trim_end_matches('/');
        if p.contains('/') {
            globs.push(format!("!{root}/{}", p.trim_start_matches('/')));
        } else {
            globs.push(format!("!{p}"));
        }
    }
    globs
}

/// How old the pending index may grow before it is written:
/// `MOVER_INDEX_INTERVAL_SECONDS` (tests, tuning), default 5 minutes.
fn index_interval() -> Duration {
    std::env::var("MOVER_INDEX_INTERVAL_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(INDEX_MAX_AGE, Duration::from_secs_f64)
}

/// Tag of a snapshot some entries of the source are missing from.
pub const PARTIAL_TAG: &str = "partial";

/// Backs up `s.source` and writes `snap` (with tree, paths and summary
/// filled in). Returns the stored snapshot, its id set.
pub fn backup(
    repo: &Repository<OpenStatus>,
    be: &Backend,
    crypto: &Crypto,
    s: &Settings<'_>,
    mut snap: SnapshotFile,
) -> MResult<SnapshotFile> {
    let start = Zoned::now();
    let config = repo.config();
    let level = config.zstd().ctx("reading the compression setting")?;
    let chunker = Chunker::new(
        config.poly().ctx("reading the chunker polynomial")?,
        config.chunk_size(),
        config.chunk_min_size(),
        config.chunk_max_size(),
    )
    .map_err(|e| MoverError::new(ErrorKind::Other, e))?;
    // Candidates for deletion first: a pack marked after this read may
    // still be used, as this run counts as started before the mark.
    let candidates = crate::prune::state::candidate_packs(be, crypto)?;
    let index = KnownBlobs::read(repo, &candidates)?;
    drop(candidates);
    let parents = ParentTrees::new(be, crypto, &index.trees);
    // The snapshot tree holds one directory, named after `as_path`.
    let top_dir = s.as_path.trim_start_matches('/');
    let parent_root = s
        .parent
        .and_then(|p| parents.root(&p.tree, top_dir))
        .map(ParentDir::from);

    let mut excludes = Excludes::default();
    excludes.globs = exclude_globs(s.source, s.excludes);
    let source = LocalSource::new(
        LocalSourceSaveOptions::default(),
        &excludes,
        &LocalSourceFilterOptions::default(),
        &[s.source],
    )
    .ctx("preparing the source walk")?;

    let threads = s
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(2, NonZeroUsize::get)
                .min(MAX_DEFAULT_THREADS)
        })
        .clamp(1, 64);
    let shared = Shared {
        known: &index,
        claimed: Mutex::new(HashSet::new()),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        index: Mutex::new(PendingIndex::new(index_interval())),
        saver: FileSaver::new(be, crypto.cipher(), level),
        stats: Stats::default(),
        level,
        cipher: crypto.cipher(),
        cancel: s.cancel,
    };

    let (jobs_tx, jobs_rx) = bounded::<Job>(threads * 32);
    let (results_tx, results_rx) = unbounded::<(u64, FileResult)>();
    // Rendezvous: a finished pack waits in its worker, not in a queue (memory).
    let (packs_tx, packs_rx) = bounded::<Pack>(0);

    let built = std::thread::scope(|scope| -> MResult<(TreeId, Summary)> {
        let mut uploaders = Vec::new();
        for _ in 0..UPLOADERS {
            let rx = packs_rx.clone();
            let shared = &shared;
            uploaders.push(scope.spawn(move || upload_packs(be, shared, rx)));
        }
        drop(packs_rx);
        let mut workers = Vec::new();
        for _ in 0..threads {
            let rx = jobs_rx.clone();
            let tx = results_tx.clone();
            let packs = packs_tx.clone();
            let shared = &shared;
            let chunker = &chunker;
            workers.push(scope.spawn(move || {
                let mut store = Store::new(shared, Kind::Data, packs);
                file_worker(&mut store, chunker, rx, tx);
                store.flush();
            }));
        }
        drop(jobs_rx);
        drop(results_tx);

        let mut trees = Store::new(&shared, Kind::Tree, packs_tx);
        let built = {
            let mut walk = Walk::new(
                s.source,
                jobs_tx,
                results_rx,
                &parents,
                parent_root,
                s.skipped,
            );
            walk.run(&source, &mut trees, &index, top_dir)
        };
        // Workers stop once `jobs` is dropped (inside `walk`); then the
        // last partial packs are flushed and the uploaders drain.
        for w in workers {
            if w.join().is_err() {
                shared.fail(MoverError::new(ErrorKind::Other, "a file worker panicked"));
            }
        }
        trees.flush();
        drop(trees);
        for u in uploaders {
            if u.join().is_err() {
                shared.fail(MoverError::new(
                    ErrorKind::Other,
                    "a pack uploader panicked",
                ));
            }
        }
        built
    });
    // Every uploaded pack gets indexed, also after a failure or an
    // interruption: the next run deduplicates against it and prune sees it.
    // The index is complete before a snapshot refers to its blobs.
    let error = shared.take_error();
    let indexed = shared.flush_index();
    let (root_id, summary) = match (error, built) {
        (None, Ok(done)) => {
            indexed?;
            done
        }
        (Some(e), _) | (None, Err(e)) => {
            if let Err(ie) = &indexed {
                log::warn!("indexing the uploaded packs after a failed backup: {ie}");
            }
            if e.message == INTERRUPTED && indexed.is_ok() {
                let n = shared.stats.packs_indexed.load(Ordering::Relaxed);
                return Err(MoverError::new(
                    e.kind,
                    format!(
                        "{INTERRUPTED}: {n} uploaded packs are indexed and reused by the next run"
                    ),
                ));
            }
            return Err(e);
        }
    };

    let st = &shared.stats;
    let mut sum = SnapshotSummary::default();
    sum.files_new = summary.files_new;
    sum.files_changed = summary.files_changed;
    sum.files_unmodified = summary.files_unmodified;
    sum.total_files_processed =
        summary.files_new + summary.files_changed + summary.files_unmodified;
    sum.total_bytes_processed = summary.bytes;
    sum.dirs_new = summary.dirs_new;
    sum.dirs_changed = summary.dirs_changed;
    sum.dirs_unmodified = summary.dirs_unmodified;
    sum.total_dirs_processed = summary.dirs_new + summary.dirs_changed + summary.dirs_unmodified;
    sum.data_blobs = st.data_blobs.load(Ordering::Relaxed);
    sum.tree_blobs = st.tree_blobs.load(Ordering::Relaxed);
    sum.data_added_files = st.data_plain.load(Ordering::Relaxed);
    sum.data_added_files_packed = st.data_packed.load(Ordering::Relaxed);
    sum.data_added_trees = st.tree_plain.load(Ordering::Relaxed);
    sum.data_added_trees_packed = st.tree_packed.load(Ordering::Relaxed);
    sum.data_added = sum.data_added_files + sum.data_added_trees;
    sum.data_added_packed = sum.data_added_files_packed + sum.data_added_trees_packed;
    sum.command = "backup-mover backup".to_string();
    let end = Zoned::now();
    let secs = (end.timestamp().as_millisecond() - start.timestamp().as_millisecond()) as f64 / 1e3;
    sum.backup_start = start;
    sum.backup_end = end;
    sum.backup_duration = secs;
    sum.total_duration = secs;

    snap.tree = root_id;
    snap.paths = StringList::from_str(s.as_path)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("snapshot paths: {e}")))?;
    snap.summary = Some(sum);
    if s.skipped.count() > 0 {
        // The repository itself says the snapshot is partial (a new
        // cluster's catalog reads it from there).
        snap.add_tags(vec![StringList::from_str(PARTIAL_TAG).map_err(|e| {
            MoverError::new(ErrorKind::Other, format!("snapshot tags: {e}"))
        })?]);
        let info = crate::meta::SkippedInfo {
            count: s.skipped.count(),
            examples: s.skipped.examples(),
        };
        if let Some(d) = crate::meta::mark_skipped(snap.description.as_deref(), info) {
            snap.description = Some(d);
        }
    }
    let json = serde_json::to_vec(&snap)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("snapshot JSON: {e}")))?;
    let id = shared.saver.save(FileType::Snapshot, &json)?;
    snap.id = Id::new(id).into();
    Ok(snap)
}

/// How the walk hands out a file for reading.
type SourceFile = <LocalSource as ReadSource>::Open;

/// A file whose contents a worker stores.
struct Job {
    seq: u64,
    open: SourceFile,
    size: u64,
    path: PathBuf,
}

/// A file's content ids and the bytes read, or why it could not be read
/// (it is then left out).
type FileResult = Result<(Vec<DataId>, u64), String>;

fn file_worker(
    store: &mut Store<'_>,
    chunker: &Chunker,
    jobs: Receiver<Job>,
    results: Sender<(u64, FileResult)>,
) {
    enum Fail {
        Read(std::io::Error),
        Store(MoverError),
        Cancelled,
    }
    impl From<std::io::Error> for Fail {
        fn from(e: std::io::Error) -> Self {
            Fail::Read(e)
        }
    }
    for job in jobs {
        if store.shared.stopping() {
            let _ = results.send((job.seq, Err("backup aborted".to_string())));
            continue;
        }
        let outcome = match job.open.open() {
            Err(e) => Err(format!("{}: {}", job.path.display(), e.display_log())),
            Ok(reader) => {
                let mut ids = Vec::new();
                let mut read = 0u64;
                let r = chunker.for_each_chunk(reader, job.size, |chunk: &[u8]| {
                    // A large file stops between chunks; its stored chunks stay indexed.
                    if store.shared.cancelled() {
                        return Err(Fail::Cancelled);
                    }
                    read += chunk.len() as u64;
                    let id = sha256(chunk);
                    store.add(id, chunk).map_err(Fail::Store)?;
                    ids.push(DataId::from(Id::new(id)));
                    Ok::<(), Fail>(())
                });
                match r {
                    Ok(()) => Ok((ids, read)),
                    Err(Fail::Read(e)) => Err(format!("{}: {e}", job.path.display())),
                    Err(Fail::Store(e)) => {
                        store.shared.fail(e);
                        Err("backup aborted".to_string())
                    }
                    Err(Fail::Cancelled) => Err(INTERRUPTED.to_string()),
                }
            }
        };
        if results.send((job.seq, outcome)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
