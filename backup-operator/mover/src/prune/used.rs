//! What prune reads: the index (every pack and which file lists it) and
//! the blobs the snapshots need.

use std::collections::{HashMap, HashSet};

use rustic_core::repofile::{BlobType, IndexFile, NodeType, SnapshotFile};
use rustic_core::{Id, OpenStatus, Repository, TreeId};

use super::plan::{BlobInfo, PackInfo};
use crate::archive::parent::{ParentTrees, TreeLoc};
use crate::crypto::Crypto;
use crate::error::{MResult, MoverError, RusticCtx};
use crate::repo::Backend;
use crate::result::ErrorKind;

/// The index as read: packs (each once) and the index files listing them.
pub struct Inventory {
    pub packs: Vec<PackInfo>,
    /// Index file id and the positions (in `packs`) of the packs it lists.
    pub files: Vec<(Id, Vec<usize>)>,
    /// Blobs in each index file (small files are merged).
    pub file_blobs: Vec<usize>,
}

impl Inventory {
    /// Reads every index file. rustic's `packs_to_delete` entries (not
    /// readable by restic or the mover's backups) are taken as packs.
    pub fn read(repo: &Repository<OpenStatus>) -> MResult<Self> {
        let mut packs = Vec::new();
        let mut at: HashMap<Id, usize> = HashMap::new();
        let mut files = Vec::new();
        let mut file_blobs = Vec::new();
        for item in repo.stream_files::<IndexFile>().ctx("reading the index")? {
            let (file_id, file) = item.ctx("reading an index file")?;
            let mut listed = Vec::new();
            let mut blobs = 0;
            for p in file.packs.into_iter().chain(file.packs_to_delete) {
                blobs += p.blobs.len();
                let pos = *at.entry(*p.id).or_insert_with(|| {
                    packs.push(PackInfo {
                        id: *p.id,
                        time: p.time,
                        blobs: p
                            .blobs
                            .iter()
                            .map(|b| BlobInfo {
                                id: *b.id,
                                tree: b.tpe == BlobType::Tree,
                                offset: b.location.offset,
                                length: b.location.length,
                                uncompressed_length: b
                                    .location
                                    .uncompressed_length
                                    .map(|n| n.get()),
                            })
                            .collect(),
                    });
                    packs.len() - 1
                });
                listed.push(pos);
            }
            files.push((*file_id, listed));
            file_blobs.push(blobs);
        }
        Ok(Self {
            packs,
            files,
            file_blobs,
        })
    }

    /// Where each tree blob is, in packs that exist.
    pub fn tree_locations(&self, existing: &HashMap<Id, u32>) -> HashMap<Id, TreeLoc> {
        let mut locs = HashMap::new();
        for p in self.packs.iter().filter(|p| existing.contains_key(&p.id)) {
            for b in p.blobs.iter().filter(|b| b.tree) {
                locs.insert(
                    b.id,
                    TreeLoc {
                        pack: p.id,
                        offset: b.offset,
                        length: b.length,
                        uncompressed_length: b.uncompressed_length,
                    },
                );
            }
        }
        locs
    }
}

/// Every blob the snapshots refer to (trees and data). A tree that cannot
/// be read stops the prune: deciding on a partial picture deletes data.
pub fn used_blobs(
    be: &Backend,
    crypto: &Crypto,
    snaps: &[SnapshotFile],
    locs: &HashMap<Id, TreeLoc>,
) -> MResult<HashSet<Id>> {
    let trees = ParentTrees::new(be, crypto, locs);
    let mut used = HashSet::new();
    let mut todo: Vec<TreeId> = Vec::new();
    for s in snaps {
        if used.insert(*s.tree) {
            todo.push(s.tree);
        }
    }
    while let Some(id) = todo.pop() {
        let tree = trees.try_load(&id).map_err(|e| {
            MoverError::new(
                ErrorKind::Other,
                format!("reading tree {}: {e}; nothing pruned", id.to_hex().as_str()),
            )
        })?;
        for node in tree.nodes {
            match node.node_type {
                NodeType::File => used.extend(node.content.iter().flatten().map(|c| **c)),
                NodeType::Dir => {
                    let sub = node.subtree.ok_or_else(|| {
                        MoverError::new(
                            ErrorKind::Other,
                            format!(
                                "directory {:?} without a subtree; nothing pruned",
                                node.name
                            ),
                        )
                    })?;
                    if used.insert(*sub) {
                        todo.push(sub);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(used)
}
