//! The blobs a backup deduplicates against.

use std::collections::{HashMap, HashSet};

use rustic_core::repofile::{BlobType, IndexFile};
use rustic_core::{Id, OpenStatus, Repository};

use super::pack::Kind;
use super::parent::TreeLoc;
use crate::error::{MResult, RusticCtx};

/// Blob ids already in the repository and where its trees are. Data and
/// trees are kept apart: a file whose content equals a tree's JSON is
/// still a data blob of its own.
///
/// Packs that prune has marked as deletion candidates do not count (nor
/// rustic's `packs_to_delete`): a backup that started after the mark never
/// refers to them, so they can be deleted once the grace period is over.
pub struct KnownBlobs {
    data: HashSet<Id>,
    pub(super) trees: HashMap<Id, TreeLoc>,
}

impl KnownBlobs {
    pub fn read(repo: &Repository<OpenStatus>, candidates: &HashSet<Id>) -> MResult<Self> {
        let mut data = HashSet::new();
        let mut trees = HashMap::new();
        for item in repo.stream_files::<IndexFile>().ctx("reading the index")? {
            let (_, file) = item.ctx("reading an index file")?;
            for p in file.packs {
                if candidates.contains(&*p.id) {
                    continue;
                }
                for b in p.blobs {
                    let id: Id = *b.id;
                    if b.tpe == BlobType::Data {
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

    pub fn has(&self, kind: Kind, id: &Id) -> bool {
        match kind {
            Kind::Data => self.data.contains(id),
            Kind::Tree => self.trees.contains_key(id),
        }
    }
}
