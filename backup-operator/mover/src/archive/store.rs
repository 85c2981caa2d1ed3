//! Deduplicating, compressing, encrypting and packing blobs; uploading
//! packs and indexing them as they are uploaded.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use crossbeam_channel::{Receiver, Sender};
use rustic_core::{FileType, Id};

use super::PACK_SIZE;
use super::index::{FileSaver, PackEntry, PendingIndex};
use super::known::KnownBlobs;
use super::pack::{Hash, Kind, Pack, PackBuilder, hex};
use crate::crypto;
use crate::error::{MResult, MoverError, RusticCtx};
use crate::repo::Backend;
use crate::result::ErrorKind;

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
pub struct Stats {
    pub data_blobs: AtomicU64,
    pub tree_blobs: AtomicU64,
    pub data_plain: AtomicU64,
    pub data_packed: AtomicU64,
    pub tree_plain: AtomicU64,
    pub tree_packed: AtomicU64,
    /// Packs uploaded and written to an index file.
    pub packs_indexed: AtomicU64,
}

/// State every thread shares.
pub struct Shared<'a> {
    pub known: &'a KnownBlobs,
    /// Blobs stored by this run (so two files with the same chunk store it once).
    pub claimed: Mutex<HashSet<(bool, Hash)>>,
    pub failed: AtomicBool,
    pub error: Mutex<Option<MoverError>>,
    /// Uploaded packs not yet in an index file.
    pub index: Mutex<PendingIndex>,
    pub saver: FileSaver<'a>,
    pub stats: Stats,
    pub level: Option<i32>,
    pub cipher: Aes256CtrPoly1305Aes,
    /// Set from outside (SIGTERM): stop reading, keep what is uploaded.
    pub cancel: Option<&'a AtomicBool>,
}

impl Shared<'_> {
    /// Records the first fatal error; everyone stops soon after.
    pub fn fail(&self, e: MoverError) {
        let mut slot = lock(&self.error);
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Stop taking new work: a failure, or a cancellation.
    pub fn stopping(&self) -> bool {
        self.failed() || self.cancelled()
    }

    pub fn take_error(&self) -> Option<MoverError> {
        lock(&self.error).take()
    }

    /// Writes `packs` to index files (they are uploaded already).
    fn write_index(&self, packs: &[PackEntry]) -> MResult<()> {
        self.saver.save_index(packs)?;
        self.stats
            .packs_indexed
            .fetch_add(packs.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes what is still pending: at the end of a run, and after a
    /// failure or cancellation so the next run reuses the uploaded packs.
    pub fn flush_index(&self) -> MResult<()> {
        let packs = lock(&self.index).take();
        self.write_index(&packs)
    }
}

/// Deduplicates, compresses, encrypts and packs blobs of one kind.
pub struct Store<'a> {
    pub shared: &'a Shared<'a>,
    kind: Kind,
    packer: PackBuilder,
    zbuf: Vec<u8>,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    packs: Sender<Pack>,
}

impl<'a> Store<'a> {
    pub fn new(shared: &'a Shared<'a>, kind: Kind, packs: Sender<Pack>) -> Self {
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
    pub fn add(&mut self, id: Hash, plain: &[u8]) -> MResult<()> {
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

    /// Sends the last, partly filled pack (also when cancelled: its blobs
    /// are then indexed for the next run).
    pub fn flush(&mut self) {
        if !self.packer.is_empty()
            && !self.shared.failed()
            && let Err(e) = self.send_pack()
        {
            self.shared.fail(e);
        }
    }
}

/// Uploads packs; each is indexed once uploaded, and the pending index is
/// written whenever it is full or old.
pub fn upload_packs(be: &Backend, shared: &Shared<'_>, rx: Receiver<Pack>) {
    for p in rx {
        if shared.failed() {
            continue; // drain so senders never block
        }
        let tree = p.entries.first().is_some_and(|e| e.kind == Kind::Tree);
        let uploaded = be
            .be
            .write_bytes(FileType::Pack, &Id::new(p.id), tree, p.data.into())
            .ctx(&format!("writing pack {}", hex(&p.id)));
        if let Err(e) = uploaded {
            shared.fail(e);
            continue;
        }
        // Taken out under the lock, written outside it.
        let full = lock(&shared.index).push(PackEntry::new(p.id, p.entries));
        if let Some(packs) = full
            && let Err(e) = shared.write_index(&packs)
        {
            shared.fail(e);
        }
    }
}
