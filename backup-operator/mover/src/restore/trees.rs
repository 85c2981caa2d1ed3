//! Snapshot trees read and verified by their id (SHA-256 of the plaintext),
//! as restic does: rustic_core decrypts tree blobs but does not compare
//! their hash, so a wrong tree would be restored silently.

use std::sync::Arc;

use rustic_core::repofile::{Node, Tree};
use rustic_core::{FileType, IndexedFullStatus, Repository, TreeId, WriteBackend};

use crate::crypto::Crypto;
use crate::error::{MResult, MoverError, RusticCtx};
use crate::result::ErrorKind;

pub struct Trees<'a> {
    pub repo: &'a Repository<IndexedFullStatus>,
    pub be: &'a Arc<dyn WriteBackend>,
    pub crypto: &'a Crypto,
}

pub fn corrupt(msg: String) -> MoverError {
    MoverError::new(ErrorKind::RepositoryCorrupt, msg)
}

impl Trees<'_> {
    /// The tree `id`, verified.
    pub fn load(&self, id: &TreeId) -> MResult<Tree> {
        let ie = self
            .repo
            .get_index_entry(id)
            .ctx(&format!("tree {id} missing in index"))?;
        let sealed = self
            .be
            .read_partial(
                FileType::Pack,
                &ie.pack,
                true,
                ie.location.offset,
                ie.location.length,
            )
            .ctx(&format!("reading tree {id} from pack {}", ie.pack))?;
        let uncompressed = ie.location.uncompressed_length.map(|n| n.get());
        let json = crate::verified::open_blob(self.crypto, id, &sealed, uncompressed)
            .map_err(|why| corrupt(format!("tree {id} {why} (the repository is damaged)")))?;
        serde_json::from_slice(&json).map_err(|e| corrupt(format!("tree {id} is not valid: {e}")))
    }

    /// The directory node at `path` (normal components) below the root tree
    /// `root`; `None` when some component is missing or not a directory.
    pub fn find_dir(&self, root: &TreeId, path: &[Vec<u8>]) -> MResult<Option<Node>> {
        let mut node = root_node(*root);
        for part in path {
            let Some(sub) = node.subtree else {
                return Ok(None);
            };
            let tree = self.load(&sub)?;
            let found = tree
                .nodes
                .into_iter()
                .find(|n| n.name().as_encoded_bytes() == part.as_slice());
            match found {
                Some(n) if n.is_dir() => node = n,
                _ => return Ok(None),
            }
        }
        Ok(Some(node))
    }
}

/// A directory node standing for a snapshot's root tree (no metadata).
pub fn root_node(tree: TreeId) -> Node {
    let mut n = Node::new_node(
        std::ffi::OsStr::new(""),
        rustic_core::repofile::NodeType::Dir,
        rustic_core::repofile::Metadata::default(),
    );
    n.subtree = Some(tree);
    n
}
