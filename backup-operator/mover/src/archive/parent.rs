//! Trees of the parent snapshot, read straight from their packs: a file
//! whose size, times and inode did not change reuses the parent's content
//! list and is not read again.

use std::cell::RefCell;
use std::collections::HashMap;

use bytes::Bytes;
use rustic_core::repofile::Tree;
use rustic_core::{FileType, Id, TreeId};

use crate::crypto::Crypto;
use crate::repo::Backend;

/// Where a tree blob is stored.
#[derive(Debug, Clone, Copy)]
pub struct TreeLoc {
    pub pack: Id,
    pub offset: u32,
    pub length: u32,
    pub uncompressed_length: Option<u32>,
}

/// Whole tree packs kept in memory; trees of one snapshot sit together,
/// so one read serves many directories (one request per directory would
/// cost a round trip each on S3).
const PACK_CACHE_BYTES: usize = 64 * 1024 * 1024;

pub struct ParentTrees<'a> {
    be: &'a Backend,
    crypto: &'a Crypto,
    locs: &'a HashMap<Id, TreeLoc>,
    packs: RefCell<(usize, HashMap<Id, Bytes>)>,
}

impl<'a> ParentTrees<'a> {
    pub fn new(be: &'a Backend, crypto: &'a Crypto, locs: &'a HashMap<Id, TreeLoc>) -> Self {
        Self {
            be,
            crypto,
            locs,
            packs: RefCell::new((0, HashMap::new())),
        }
    }

    /// The tree of directory `name` in the snapshot tree `root`.
    pub fn root(&self, root: &TreeId, name: &str) -> Option<Tree> {
        let top = self.load(root)?;
        let sub = top.nodes.iter().find(|n| n.name == name)?.subtree?;
        self.load(&sub)
    }

    /// A tree of the parent snapshot; `None` (and a log line) when it cannot
    /// be read, which only means its files are read again.
    pub fn load(&self, id: &TreeId) -> Option<Tree> {
        match self.try_load(id) {
            Ok(t) => Some(t),
            Err(e) => {
                log::warn!("parent tree {id}: {e}; its files are read again");
                None
            }
        }
    }

    /// A tree, verified against its id.
    pub fn try_load(&self, id: &TreeId) -> Result<Tree, String> {
        let loc = self.locs.get(&**id).ok_or("not in the index")?;
        let pack = self.pack(&loc.pack)?;
        let (start, end) = (
            loc.offset as usize,
            loc.offset as usize + loc.length as usize,
        );
        let sealed = pack.get(start..end).ok_or("blob outside its pack")?;
        // Verified by its id like every blob we use: a wrong parent tree
        // would hand wrong content lists to unchanged files.
        let json = crate::verified::open_blob(self.crypto, id, sealed, loc.uncompressed_length)
            .map_err(|why| format!("{why} (corrupt tree)"))?;
        serde_json::from_slice(&json).map_err(|e| format!("tree JSON: {e}"))
    }

    fn pack(&self, id: &Id) -> Result<Bytes, String> {
        if let Some(b) = self.packs.borrow().1.get(id) {
            return Ok(b.clone());
        }
        let data = self
            .be
            .be
            .read_full(FileType::Pack, id)
            .map_err(|e| format!("reading pack {id}: {}", e.display_log()))?;
        let mut cache = self.packs.borrow_mut();
        if cache.0 + data.len() > PACK_CACHE_BYTES {
            cache.1.clear();
            cache.0 = 0;
        }
        cache.0 += data.len();
        cache.1.insert(*id, data.clone());
        Ok(data)
    }
}
