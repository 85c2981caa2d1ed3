//! The source walk and the trees built from it: entries come in walk
//! order, files wait for their contents, and each directory's tree is
//! stored once all its entries are done.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, Sender};
use rustic_core::repofile::{Node, NodeType, Tree};
use rustic_core::{Id, LocalSource, ReadSource, ReadSourceEntry, TreeId};

use super::known::KnownBlobs;
use super::pack::{Kind, sha256};
use super::parent::ParentTrees;
use super::store::Store;
use super::{FileResult, Job, SourceFile};
use crate::error::{MResult, MoverError};
use crate::result::ErrorKind;
use crate::skipped::Skipped;

/// Walk-ahead limit: entries waiting for their file contents.
const MAX_PENDING: usize = 20_000;

/// Message of the error a cancelled backup returns.
pub const INTERRUPTED: &str = "backup interrupted";

#[derive(Default)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs_new: u64,
    pub dirs_changed: u64,
    pub dirs_unmodified: u64,
    pub bytes: u64,
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
pub struct ParentDir(HashMap<String, Node>);

impl From<Tree> for ParentDir {
    fn from(t: Tree) -> Self {
        Self(t.nodes.into_iter().map(|n| (n.name.clone(), n)).collect())
    }
}

pub struct Walk<'w, 'p> {
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
    /// Counts the entries left out (the backup is then partial).
    skipped: &'w Skipped,
}

impl<'w, 'p> Walk<'w, 'p> {
    /// A walk of `root`, whose trees in the parent snapshot start at `parent_root`.
    pub fn new(
        root: &'w Path,
        jobs: Sender<Job>,
        results: Receiver<(u64, FileResult)>,
        parents: &'w ParentTrees<'p>,
        parent_root: Option<ParentDir>,
        skipped: &'w Skipped,
    ) -> Self {
        Self {
            root,
            jobs: Some(jobs),
            results,
            parents,
            dirs: vec![(PathBuf::new(), parent_root)],
            events: VecDeque::new(),
            done: HashMap::new(),
            next_seq: 0,
            frames: vec![Frame::default()],
            summary: Summary::default(),
            skipped,
        }
    }

    /// Walks the source; stops early (with [`INTERRUPTED`]) when cancelled.
    pub fn run(
        &mut self,
        source: &LocalSource,
        trees: &mut Store<'_>,
        index: &KnownBlobs,
        top_dir: &str,
    ) -> MResult<(TreeId, Summary)> {
        for item in source.entries() {
            if trees.shared.stopping() {
                break;
            }
            match item {
                Err(e) => self.skipped.note(e.display_log()),
                Ok(entry) => self.entry(entry, index)?,
            }
            while let Ok((seq, r)) = self.results.try_recv() {
                self.done.insert(seq, r);
            }
            self.build(trees)?;
            while self.events.len() > MAX_PENDING && !trees.shared.stopping() {
                self.wait_one()?;
                self.build(trees)?;
            }
        }
        if trees.shared.cancelled() && !trees.shared.failed() {
            // Workers skip what is queued; the uploaded packs get indexed.
            self.jobs = None;
            return Err(MoverError::new(ErrorKind::Other, INTERRUPTED));
        }
        while self.dirs.len() > 1 {
            self.leave_dir();
        }
        // No more files: workers finish what is queued, then stop.
        self.jobs = None;
        loop {
            self.build(trees)?;
            if self.events.is_empty() || trees.shared.stopping() {
                break;
            }
            self.wait_one()?;
        }
        if let Some(e) = trees.shared.take_error() {
            return Err(e);
        }
        if trees.shared.cancelled() {
            // Files may have been skipped: never a snapshot of part of them.
            return Err(MoverError::new(ErrorKind::Other, INTERRUPTED));
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
                                self.skipped.note(msg);
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
