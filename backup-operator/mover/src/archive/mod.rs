//! The backup pipeline: walks the source, chunks, deduplicates, compresses,
//! encrypts and packs file contents, builds restic trees and writes the
//! index and the snapshot.
//!
//! Why not rustic_core's archiver: it computes the chunker's polynomial
//! tables for every file and passes every file through several threads;
//! small-file backups spent most of their CPU there. Here the main thread
//! walks and builds trees, `threads` workers each read whole files and fill
//! their own data pack, and uploaders write finished packs. rustic_core
//! still provides the source walk (node metadata exactly as before), the
//! repository config, the file formats' types and the backends.

pub mod chunker;
pub mod pack;
mod parent;

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use jiff::Zoned;
use rustic_core::repofile::{IndexFile, Node, NodeType, SnapshotFile, SnapshotSummary, Tree};
use rustic_core::{
    DataId, Excludes, FileType, Id, LocalSource, LocalSourceFilterOptions, LocalSourceSaveOptions,
    OpenStatus, ReadSource, ReadSourceEntry, ReadSourceOpen, Repository, StringList, TreeId,
};

use self::chunker::Chunker;
use self::pack::{Hash, IndexJson, IndexPackJson, Kind, Pack, PackBuilder, hex, sha256};
use self::parent::{ParentTrees, TreeLoc};
use crate::crypto::{self, Crypto, seal_into};
use crate::error::{MResult, MoverError, RusticCtx};
use crate::repo::Backend;
use crate::result::ErrorKind;

/// Data and tree packs are cut at this size (restic's default).
pub const PACK_SIZE: usize = 16 * 1024 * 1024;
/// Packs per index file.
const PACKS_PER_INDEX: usize = 5_000;
/// Walk-ahead limit: entries waiting for their file contents.
const MAX_PENDING: usize = 20_000;
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
}

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
    let index = KnownBlobs::read(repo)?;
    let parents = ParentTrees::new(be, crypto, &index.trees);
    // The snapshot tree holds one directory, named after `as_path`.
    let top_dir = s.as_path.trim_start_matches('/');
    let parent_root = s
        .parent
        .and_then(|p| parents.root(&p.tree, top_dir))
        .map(ParentDir::from);

    let source = LocalSource::new(
        LocalSourceSaveOptions::default(),
        &Excludes::default(),
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
        index: Mutex::new(Vec::new()),
        stats: Stats::default(),
        level,
        cipher: crypto.cipher(),
    };

    let (jobs_tx, jobs_rx) = bounded::<Job>(threads * 32);
    let (results_tx, results_rx) = unbounded::<(u64, FileResult)>();
    // Rendezvous: a finished pack waits in its worker, not in a queue (memory).
    let (packs_tx, packs_rx) = bounded::<Pack>(0);

    let (root_id, summary) = std::thread::scope(|scope| -> MResult<(TreeId, Summary)> {
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
            let mut walk = Walk {
                root: s.source,
                jobs: Some(jobs_tx),
                results: results_rx,
                parents: &parents,
                dirs: vec![(PathBuf::new(), parent_root)],
                events: VecDeque::new(),
                done: HashMap::new(),
                next_seq: 0,
                frames: vec![Frame::default()],
                summary: Summary::default(),
            };
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
    })?;
    if let Some(e) = shared.take_error() {
        return Err(e);
    }

    // The index must be complete before a snapshot refers to its blobs.
    let packs = std::mem::take(&mut *lock(&shared.index));
    let mut packs = packs.into_iter().peekable();
    while packs.peek().is_some() {
        let part = IndexJson {
            packs: packs.by_ref().take(PACKS_PER_INDEX).collect(),
        };
        let json = serde_json::to_vec(&part)
            .map_err(|e| MoverError::new(ErrorKind::Other, format!("index JSON: {e}")))?;
        save_file(be, &shared, FileType::Index, &json)?;
    }

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
    let json = serde_json::to_vec(&snap)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("snapshot JSON: {e}")))?;
    let id = save_file(be, &shared, FileType::Snapshot, &json)?;
    snap.id = Id::new(id).into();
    Ok(snap)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Blob ids already in the repository (packs marked for deletion do not
/// count) and where its trees are. Data and trees are kept apart: a file
/// whose content equals a tree's JSON is still a data blob of its own.
pub struct KnownBlobs {
    data: HashSet<Id>,
    trees: HashMap<Id, TreeLoc>,
}

impl KnownBlobs {
    fn read(repo: &Repository<OpenStatus>) -> MResult<Self> {
        let mut data = HashSet::new();
        let mut trees = HashMap::new();
        for item in repo.stream_files::<IndexFile>().ctx("reading the index")? {
            let (_, file) = item.ctx("reading an index file")?;
            for p in file.packs {
                for b in p.blobs {
                    let id: Id = *b.id;
                    if b.tpe == rustic_core::repofile::BlobType::Data {
                        data.insert(id);
                    } else {
                        trees.insert(
                            id,
                            TreeLoc {
                                pack: *p.id,
                                offset: b.location.offset,
                                length: b.location.length,
                                uncompressed_length: b
                                    .location
                                    .uncompressed_length
                                    .map(|n| n.get()),
                            },
                        );
                    }
                }
            }
        }
        Ok(Self { data, trees })
    }

    fn has(&self, kind: Kind, id: &Id) -> bool {
        match kind {
            Kind::Data => self.data.contains(id),
            Kind::Tree => self.trees.contains_key(id),
        }
    }
}

/// Compresses (when the repository does) and seals a repository file
/// (index, snapshot), then writes it under the hash of what is stored.
fn save_file(be: &Backend, shared: &Shared<'_>, tpe: FileType, json: &[u8]) -> MResult<Hash> {
    let plain = match shared.level {
        Some(level) => {
            // Version byte 2: zstd-compressed JSON follows.
            let mut v = vec![2u8];
            v.extend(
                zstd::bulk::compress(json, level)
                    .map_err(|e| MoverError::new(ErrorKind::Other, format!("compressing: {e}")))?,
            );
            v
        }
        None => json.to_vec(),
    };
    let mut sealed = Vec::with_capacity(plain.len() + crypto::OVERHEAD);
    seal_into(&shared.cipher, &plain, &mut sealed)?;
    let id = sha256(&sealed);
    be.be
        .write_bytes(tpe, &Id::new(id), true, sealed.into())
        .ctx(&format!("writing {tpe:?} file {}", hex(&id)))?;
    Ok(id)
}

#[derive(Default)]
struct Stats {
    data_blobs: AtomicU64,
    tree_blobs: AtomicU64,
    data_plain: AtomicU64,
    data_packed: AtomicU64,
    tree_plain: AtomicU64,
    tree_packed: AtomicU64,
}

/// State every thread shares.
struct Shared<'a> {
    known: &'a KnownBlobs,
    /// Blobs stored by this run (so two files with the same chunk store it once).
    claimed: Mutex<HashSet<(bool, Hash)>>,
    failed: AtomicBool,
    error: Mutex<Option<MoverError>>,
    index: Mutex<Vec<IndexPackJson>>,
    stats: Stats,
    level: Option<i32>,
    cipher: Aes256CtrPoly1305Aes,
}

impl Shared<'_> {
    /// Records the first fatal error; everyone stops soon after.
    fn fail(&self, e: MoverError) {
        let mut slot = lock(&self.error);
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn take_error(&self) -> Option<MoverError> {
        lock(&self.error).take()
    }
}

/// Deduplicates, compresses, encrypts and packs blobs of one kind.
struct Store<'a> {
    shared: &'a Shared<'a>,
    kind: Kind,
    packer: PackBuilder,
    zbuf: Vec<u8>,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    packs: Sender<Pack>,
}

impl<'a> Store<'a> {
    fn new(shared: &'a Shared<'a>, kind: Kind, packs: Sender<Pack>) -> Self {
        let compressor = shared
            .level
            .and_then(|l| zstd::bulk::Compressor::new(l).ok());
        Self {
            shared,
            kind,
            // Blobs plus a header of up to 1/16 of the pack.
            packer: PackBuilder::new(PACK_SIZE + PACK_SIZE / 16),
            zbuf: Vec::new(),
            compressor,
            packs,
        }
    }

    /// Stores `plain` under `id` unless the repository or this run has it.
    fn add(&mut self, id: Hash, plain: &[u8]) -> MResult<()> {
        if self.shared.known.has(self.kind, &Id::new(id))
            || !lock(&self.shared.claimed).insert((self.kind == Kind::Tree, id))
        {
            return Ok(());
        }
        let mut compressed = false;
        if let Some(c) = &mut self.compressor {
            self.zbuf.clear();
            self.zbuf
                .reserve(zstd::zstd_safe::compress_bound(plain.len()));
            // Incompressible blobs are stored as they are (saves the
            // decompression on restore).
            compressed = c.compress_to_buffer(plain, &mut self.zbuf).is_ok()
                && self.zbuf.len() < plain.len();
        }
        let stored_len = if compressed {
            self.zbuf.len()
        } else {
            plain.len()
        };
        // Cut before the pack would outgrow its buffer.
        if !self.packer.is_empty() && self.packer.len() + stored_len + crypto::OVERHEAD > PACK_SIZE
        {
            self.send_pack()?;
        }
        let (stored, uncompressed) = if compressed {
            let n = u32::try_from(plain.len())
                .map_err(|_| MoverError::new(ErrorKind::Other, "blob larger than 4 GiB"))?;
            (&self.zbuf[..], Some(n))
        } else {
            (plain, None)
        };
        let len = self
            .packer
            .add(&self.shared.cipher, self.kind, id, stored, uncompressed)?;
        let st = &self.shared.stats;
        let (blobs, plain_n, packed) = match self.kind {
            Kind::Data => (&st.data_blobs, &st.data_plain, &st.data_packed),
            Kind::Tree => (&st.tree_blobs, &st.tree_plain, &st.tree_packed),
        };
        blobs.fetch_add(1, Ordering::Relaxed);
        plain_n.fetch_add(plain.len() as u64, Ordering::Relaxed);
        packed.fetch_add(u64::from(len), Ordering::Relaxed);
        Ok(())
    }

    fn send_pack(&mut self) -> MResult<()> {
        let p = self.packer.finish(&self.shared.cipher)?;
        self.packs
            .send(p)
            .map_err(|_| MoverError::new(ErrorKind::Other, "pack uploads stopped"))
    }

    /// Sends the last, partly filled pack.
    fn flush(&mut self) {
        if !self.packer.is_empty()
            && !self.shared.failed()
            && let Err(e) = self.send_pack()
        {
            self.shared.fail(e);
        }
    }
}

fn upload_packs(be: &Backend, shared: &Shared<'_>, rx: Receiver<Pack>) {
    for p in rx {
        if shared.failed() {
            continue; // drain so senders never block
        }
        let tree = p.entries.first().is_some_and(|e| e.kind == Kind::Tree);
        let entry = IndexPackJson::of(&p.id, &p.entries);
        match be
            .be
            .write_bytes(FileType::Pack, &Id::new(p.id), tree, p.data.into())
            .ctx(&format!("writing pack {}", hex(&p.id)))
        {
            Ok(()) => lock(&shared.index).push(entry),
            Err(e) => shared.fail(e),
        }
    }
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
    }
    impl From<std::io::Error> for Fail {
        fn from(e: std::io::Error) -> Self {
            Fail::Read(e)
        }
    }
    for job in jobs {
        if store.shared.failed() {
            let _ = results.send((job.seq, Err("backup aborted".to_string())));
            continue;
        }
        let outcome = match job.open.open() {
            Err(e) => Err(format!("{}: {}", job.path.display(), e.display_log())),
            Ok(reader) => {
                let mut ids = Vec::new();
                let mut read = 0u64;
                let r = chunker.for_each_chunk(reader, job.size, |chunk: &[u8]| {
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
                }
            }
        };
        if results.send((job.seq, outcome)).is_err() {
            return;
        }
    }
}

#[derive(Default)]
struct Summary {
    files_new: u64,
    files_changed: u64,
    files_unmodified: u64,
    dirs_new: u64,
    dirs_changed: u64,
    dirs_unmodified: u64,
    bytes: u64,
}

/// Tree-building steps, in walk order.
enum Event {
    /// A directory starts; its node and its subtree in the parent snapshot.
    Enter(Node, Option<TreeId>),
    /// An entry of the current directory; files wait for their contents.
    Entry(Node, Option<u64>),
    Leave,
}

/// A directory whose tree is being built from events.
#[derive(Default)]
struct Frame {
    /// Its node (`None` for the source root).
    node: Option<Node>,
    /// Its tree in the parent snapshot (change statistics).
    parent: Option<TreeId>,
    entries: Vec<Node>,
}

/// A directory's entries in the parent snapshot, by name.
struct ParentDir(HashMap<String, Node>);

impl From<Tree> for ParentDir {
    fn from(t: Tree) -> Self {
        Self(t.nodes.into_iter().map(|n| (n.name.clone(), n)).collect())
    }
}

struct Walk<'w, 'p> {
    root: &'w Path,
    /// Dropped once the walk is done, which lets the workers finish.
    jobs: Option<Sender<Job>>,
    results: Receiver<(u64, FileResult)>,
    parents: &'w ParentTrees<'p>,
    /// Directories being walked: relative path and parent-snapshot entries.
    dirs: Vec<(PathBuf, Option<ParentDir>)>,
    events: VecDeque<Event>,
    done: HashMap<u64, FileResult>,
    next_seq: u64,
    /// Trees being built (they trail the walk until their files are done).
    frames: Vec<Frame>,
    summary: Summary,
}

impl Walk<'_, '_> {
    fn run(
        &mut self,
        source: &LocalSource,
        trees: &mut Store<'_>,
        index: &KnownBlobs,
        top_dir: &str,
    ) -> MResult<(TreeId, Summary)> {
        for item in source.entries() {
            if trees.shared.failed() {
                break;
            }
            match item {
                Err(e) => crate::ops::note_skipped(e.display_log()),
                Ok(entry) => self.entry(entry, index)?,
            }
            while let Ok((seq, r)) = self.results.try_recv() {
                self.done.insert(seq, r);
            }
            self.build(trees)?;
            while self.events.len() > MAX_PENDING && !trees.shared.failed() {
                self.wait_one()?;
                self.build(trees)?;
            }
        }
        while self.dirs.len() > 1 {
            self.leave_dir();
        }
        // No more files: workers finish what is queued, then stop.
        self.jobs = None;
        loop {
            self.build(trees)?;
            if self.events.is_empty() || trees.shared.failed() {
                break;
            }
            self.wait_one()?;
        }
        if let Some(e) = trees.shared.take_error() {
            return Err(e);
        }
        // The root frame holds the source's entries: they become the tree
        // of the `as_path` directory, which alone makes up the snapshot tree.
        let root = self.frames.pop().unwrap_or_default();
        let inner = store_tree(trees, root.entries)?;
        let mut dir = Node::new_node(
            std::ffi::OsStr::new(top_dir),
            NodeType::Dir,
            rustic_core::repofile::Metadata::default(),
        );
        dir.subtree = Some(inner);
        let root = store_tree(trees, vec![dir])?;
        Ok((root, std::mem::take(&mut self.summary)))
    }

    fn wait_one(&mut self) -> MResult<()> {
        let (seq, r) = self
            .results
            .recv()
            .map_err(|_| MoverError::new(ErrorKind::Other, "file workers stopped unexpectedly"))?;
        self.done.insert(seq, r);
        Ok(())
    }

    fn leave_dir(&mut self) {
        self.dirs.pop();
        self.events.push_back(Event::Leave);
    }

    fn entry(&mut self, e: ReadSourceEntry<SourceFile>, index: &KnownBlobs) -> MResult<()> {
        let ReadSourceEntry { path, node, open } = e;
        let rel = path.strip_prefix(self.root).unwrap_or(&path).to_path_buf();
        let parent_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        while self.dirs.len() > 1 && self.dirs.last().map(|d| &d.0) != Some(&parent_rel) {
            self.leave_dir();
        }
        let in_parent = self
            .dirs
            .last()
            .and_then(|d| d.1.as_ref())
            .and_then(|p| p.0.get(&node.name));
        if node.is_dir() {
            let parent_subtree = in_parent.filter(|p| p.is_dir()).and_then(|p| p.subtree);
            let parent_dir = parent_subtree
                .and_then(|id| self.parents.load(&id))
                .map(ParentDir::from);
            self.dirs.push((rel, parent_dir));
            self.events.push_back(Event::Enter(node, parent_subtree));
            return Ok(());
        }
        if node.node_type != NodeType::File {
            self.events.push_back(Event::Entry(node, None));
            return Ok(());
        }
        if let Some(p) = in_parent {
            if unchanged(p, &node)
                && p.content
                    .as_ref()
                    .is_some_and(|c| c.iter().all(|id| index.has(Kind::Data, id)))
            {
                self.summary.files_unmodified += 1;
                self.summary.bytes += node.meta.size;
                let mut node = node;
                node.content = p.content.clone();
                self.events.push_back(Event::Entry(node, None));
                return Ok(());
            }
            self.summary.files_changed += 1;
        } else {
            self.summary.files_new += 1;
        }
        let Some(open) = open else {
            return Err(MoverError::new(
                ErrorKind::Other,
                format!("{}: file without a way to open it", path.display()),
            ));
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let size = node.meta.size;
        self.events.push_back(Event::Entry(node, Some(seq)));
        let job = Job {
            seq,
            open,
            size,
            path,
        };
        match &self.jobs {
            Some(jobs) if jobs.send(job).is_ok() => Ok(()),
            _ => Err(MoverError::new(
                ErrorKind::Other,
                "file workers stopped unexpectedly",
            )),
        }
    }

    /// Consumes events from the front while their files are done.
    fn build(&mut self, trees: &mut Store<'_>) -> MResult<()> {
        while let Some(ev) = self.events.front() {
            if let Event::Entry(_, Some(seq)) = ev
                && !self.done.contains_key(seq)
            {
                return Ok(());
            }
            let Some(ev) = self.events.pop_front() else {
                break;
            };
            match ev {
                Event::Enter(node, parent) => self.frames.push(Frame {
                    node: Some(node),
                    parent,
                    entries: Vec::new(),
                }),
                Event::Entry(mut node, pending) => {
                    if let Some(seq) = pending {
                        match self.done.remove(&seq) {
                            Some(Ok((ids, read))) => {
                                // A file that changed size while being read is
                                // recorded with what was read, so the size and
                                // the content always agree.
                                node.meta.size = read;
                                self.summary.bytes += read;
                                node.content = Some(ids);
                            }
                            Some(Err(msg)) => {
                                crate::ops::note_skipped(msg);
                                continue;
                            }
                            None => continue,
                        }
                    }
                    if let Some(f) = self.frames.last_mut() {
                        f.entries.push(node);
                    }
                }
                Event::Leave => {
                    let Some(Frame {
                        node: Some(mut node),
                        parent,
                        entries,
                    }) = self.frames.pop()
                    else {
                        return Err(MoverError::new(
                            ErrorKind::Other,
                            "unbalanced directory walk",
                        ));
                    };
                    let id = store_tree(trees, entries)?;
                    match parent {
                        None => self.summary.dirs_new += 1,
                        Some(p) if p == id => self.summary.dirs_unmodified += 1,
                        Some(_) => self.summary.dirs_changed += 1,
                    }
                    node.subtree = Some(id);
                    if let Some(f) = self.frames.last_mut() {
                        f.entries.push(node);
                    }
                }
            }
        }
        Ok(())
    }
}

/// restic's tree JSON (with its trailing newline), stored as a tree blob.
fn store_tree(trees: &mut Store<'_>, nodes: Vec<Node>) -> MResult<TreeId> {
    let mut json = serde_json::to_vec(&Tree { nodes })
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("tree JSON: {e}")))?;
    json.push(b'\n');
    let id = sha256(&json);
    trees.add(id, &json)?;
    Ok(TreeId::from(Id::new(id)))
}

/// restic's change detection: same type, size, mtime, ctime and inode.
fn unchanged(p: &Node, n: &Node) -> bool {
    let (pm, m) = (&p.meta, &n.meta);
    p.node_type == n.node_type
        && pm.size == m.size
        && pm.mtime == m.mtime
        && pm.ctime.zip(m.ctime).is_none_or(|(a, b)| a == b)
        && (pm.inode == 0 || m.inode == 0 || pm.inode == m.inode)
}
