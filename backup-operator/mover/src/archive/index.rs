//! Index files (restic format) and the other small repository files.
//!
//! A backup writes its index as it goes: finished packs wait in a
//! [`PendingIndex`] that is written out once it holds restic's
//! `indexMaxBlobs` (50,000 blobs, about 8 MiB of JSON) or is a few minutes
//! old. Memory stays bounded, and the packs of a run that is killed are
//! indexed, so the next run deduplicates against them and prune sees them.

use std::time::{Duration, Instant};

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use jiff::Timestamp;
use rustic_core::{FileType, Id};
use serde::Serialize;

use super::pack::{Entry, Hash, Kind, hex, sha256};
use crate::crypto::{self, seal_into};
use crate::error::{MResult, MoverError, RusticCtx};
use crate::repo::Backend;
use crate::result::ErrorKind;

/// restic's `indexMaxBlobs`: an index file is cut at this many blobs.
pub const INDEX_MAX_BLOBS: usize = 50_000;
/// And at this much JSON, whichever comes first (restic's files of 50,000
/// blobs are about this size).
pub const INDEX_MAX_JSON: usize = 8 * 1024 * 1024;
/// A pending index older than this is written even when small, so that a
/// killed run loses at most this much indexing.
pub const INDEX_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// One pack's index entry.
pub struct PackEntry {
    pub id: Hash,
    pub blobs: Vec<Entry>,
    /// When the pack was written (rustic's `time`; restic ignores it):
    /// prune leaves young unused packs alone, a killed run's next run
    /// reuses them.
    pub time: Option<Timestamp>,
}

impl PackEntry {
    /// A pack written now.
    pub fn new(id: Hash, blobs: Vec<Entry>) -> Self {
        Self {
            id,
            blobs,
            time: Some(Timestamp::now()),
        }
    }

    fn json(&self) -> IndexPackJson {
        IndexPackJson::of(&self.id, &self.blobs, self.time)
    }

    /// The exact length of this pack's entry in the index JSON (with the
    /// comma that separates it from the next).
    fn json_len(&self) -> usize {
        pack_json_len(&self.blobs) + self.time.map_or(0, |t| 10 + t.to_string().len())
    }
}

/// Seals (and compresses, where the repository does) repository files:
/// index, snapshot.
pub struct FileSaver<'a> {
    be: &'a Backend,
    cipher: Aes256CtrPoly1305Aes,
    level: Option<i32>,
}

impl<'a> FileSaver<'a> {
    pub fn new(be: &'a Backend, cipher: Aes256CtrPoly1305Aes, level: Option<i32>) -> Self {
        Self { be, cipher, level }
    }

    /// Writes `json` as a file of type `tpe` under the hash of what is stored.
    pub fn save(&self, tpe: FileType, json: &[u8]) -> MResult<Hash> {
        let plain =
            match self.level {
                Some(level) => {
                    // Version byte 2: zstd-compressed JSON follows.
                    let mut v = vec![2u8];
                    v.extend(zstd::bulk::compress(json, level).map_err(|e| {
                        MoverError::new(ErrorKind::Other, format!("compressing: {e}"))
                    })?);
                    v
                }
                None => json.to_vec(),
            };
        let mut sealed = Vec::with_capacity(plain.len() + crypto::OVERHEAD);
        seal_into(&self.cipher, &plain, &mut sealed)?;
        let id = sha256(&sealed);
        self.be
            .be
            .write_bytes(tpe, &Id::new(id), true, sealed.into())
            .ctx(&format!("writing {tpe:?} file {}", hex(&id)))?;
        Ok(id)
    }

    /// Writes `packs` as index files, each within restic's limits. Returns
    /// the files written.
    pub fn save_index(&self, packs: &[PackEntry]) -> MResult<Vec<Hash>> {
        let mut out = Vec::new();
        for part in split_index(packs) {
            let json = serde_json::to_vec(&IndexJson {
                packs: part.iter().map(PackEntry::json).collect(),
            })
            .map_err(|e| MoverError::new(ErrorKind::Other, format!("index JSON: {e}")))?;
            out.push(self.save(FileType::Index, &json)?);
        }
        Ok(out)
    }
}

/// `packs` cut into runs that each stay within [`INDEX_MAX_BLOBS`] and
/// [`INDEX_MAX_JSON`] (a single pack larger than that gets a file of its own).
pub fn split_index(packs: &[PackEntry]) -> Vec<&[PackEntry]> {
    let mut parts = Vec::new();
    let (mut start, mut blobs, mut bytes) = (0, 0, 0);
    for (i, p) in packs.iter().enumerate() {
        let (n, b) = (p.blobs.len(), p.json_len());
        if i > start && (blobs + n > INDEX_MAX_BLOBS || bytes + b > INDEX_MAX_JSON) {
            parts.push(&packs[start..i]);
            (start, blobs, bytes) = (i, 0, 0);
        }
        blobs += n;
        bytes += b;
    }
    if start < packs.len() {
        parts.push(&packs[start..]);
    }
    parts
}

/// Finished packs not yet written to an index file.
pub struct PendingIndex {
    packs: Vec<PackEntry>,
    blobs: usize,
    json: usize,
    since: Instant,
    max_age: Duration,
}

impl PendingIndex {
    pub fn new(max_age: Duration) -> Self {
        Self {
            packs: Vec::new(),
            blobs: 0,
            json: 0,
            since: Instant::now(),
            max_age,
        }
    }

    /// Adds an uploaded pack; returns the packs to write now, if the
    /// pending part has grown full or old.
    pub fn push(&mut self, p: PackEntry) -> Option<Vec<PackEntry>> {
        self.blobs += p.blobs.len();
        self.json += p.json_len();
        self.packs.push(p);
        let full = self.blobs >= INDEX_MAX_BLOBS
            || self.json >= INDEX_MAX_JSON
            || self.since.elapsed() >= self.max_age;
        full.then(|| self.take())
    }

    /// Everything pending (the index restarts empty).
    pub fn take(&mut self) -> Vec<PackEntry> {
        self.blobs = 0;
        self.json = 0;
        self.since = Instant::now();
        std::mem::take(&mut self.packs)
    }

    #[cfg(test)]
    pub fn blobs(&self) -> usize {
        self.blobs
    }
}

/// Length of the decimal form of `n`.
fn digits(n: u32) -> usize {
    n.checked_ilog10().map_or(1, |l| l as usize + 1)
}

/// The length of one pack's entry without `time` in the index JSON (with
/// the comma that separates it from the next).
fn pack_json_len(entries: &[Entry]) -> usize {
    // {"id":"<64 hex>","blobs":[...]},
    let mut n = 7 + 64 + 11 + 3;
    for e in entries {
        // {"id":"<64>","type":"data","offset":N,"length":N[,"uncompressed_length":N]},
        n += 7 + 64 + 10 + 4 + 11 + digits(e.offset) + 10 + digits(e.length) + 2;
        if let Some(u) = e.uncompressed_length {
            n += 23 + digits(u);
        }
    }
    // The last blob has no comma after it.
    n - usize::from(!entries.is_empty())
}

/// An index file's JSON (restic format).
#[derive(Serialize, Default)]
pub struct IndexJson {
    pub packs: Vec<IndexPackJson>,
}

#[derive(Serialize)]
pub struct IndexPackJson {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    pub blobs: Vec<IndexBlobJson>,
}

#[derive(Serialize)]
pub struct IndexBlobJson {
    pub id: String,
    #[serde(rename = "type")]
    pub tpe: &'static str,
    pub offset: u32,
    pub length: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncompressed_length: Option<u32>,
}

impl IndexPackJson {
    pub fn of(pack_id: &Hash, entries: &[Entry], time: Option<Timestamp>) -> Self {
        Self {
            id: hex(pack_id),
            time: time.map(|t| t.to_string()),
            blobs: entries
                .iter()
                .map(|e| IndexBlobJson {
                    id: hex(&e.id),
                    tpe: match e.kind {
                        Kind::Data => "data",
                        Kind::Tree => "tree",
                    },
                    offset: e.offset,
                    length: e.length,
                    uncompressed_length: e.uncompressed_length,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u32, compressed: bool) -> Entry {
        Entry {
            kind: if i.is_multiple_of(3) {
                Kind::Tree
            } else {
                Kind::Data
            },
            id: sha256(&i.to_le_bytes()),
            offset: i * 977,
            length: 40 + i * 13,
            uncompressed_length: compressed.then_some(i * 31 + 7),
        }
    }

    fn pack(seed: u32, blobs: u32) -> PackEntry {
        PackEntry::new(
            sha256(&seed.to_be_bytes()),
            (0..blobs).map(|i| entry(seed + i, i % 2 == 0)).collect(),
        )
    }

    #[test]
    fn json_length_estimate_is_exact() {
        for (seed, blobs) in [(0, 1), (5, 7), (1_000_000, 300), (9, 0)] {
            let mut p = pack(seed, blobs);
            for time in [p.time, None] {
                p.time = time;
                let one = serde_json::to_vec(&IndexJson {
                    packs: vec![p.json()],
                })
                .expect("json");
                // `{"packs":[` + entry without its trailing comma + `]}`
                assert_eq!(
                    one.len(),
                    10 + p.json_len() - 1 + 2,
                    "{}",
                    String::from_utf8_lossy(&one)
                );
            }
        }
    }

    #[test]
    fn index_files_are_cut_at_restics_limits() {
        // 120 packs of 1,000 blobs: 50 packs (50,000 blobs) per file.
        let packs: Vec<_> = (0..120).map(|i| pack(i * 10_000, 1000)).collect();
        let parts = split_index(&packs);
        let sizes: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        assert_eq!(sizes, vec![50, 50, 20]);
        for (i, part) in parts.iter().enumerate() {
            let json = serde_json::to_vec(&IndexJson {
                packs: part.iter().map(PackEntry::json).collect(),
            })
            .expect("json");
            assert!(json.len() <= INDEX_MAX_JSON, "{} bytes", json.len());
            if i < 2 {
                // 50,000 blobs of restic's entry size: about 7.5 MiB.
                assert!(json.len() > INDEX_MAX_JSON * 4 / 5, "{} bytes", json.len());
            }
        }
        // One pack beyond the limits still gets written (alone).
        let big = vec![pack(1, 60_000), pack(2, 10)];
        let sizes: Vec<usize> = split_index(&big).iter().map(|p| p.len()).collect();
        assert_eq!(sizes, vec![1, 1]);
        assert!(split_index(&[]).is_empty());
    }

    #[test]
    fn pending_index_hands_out_full_batches() {
        let mut p = PendingIndex::new(Duration::from_secs(3600));
        let mut batches = Vec::new();
        for i in 0..130 {
            if let Some(b) = p.push(pack(i * 10_000, 1000)) {
                batches.push(b.len());
            }
        }
        assert_eq!(batches, vec![50, 50]);
        assert_eq!(p.blobs(), 30_000);
        assert_eq!(p.take().len(), 30);
        assert_eq!(p.blobs(), 0);

        // An old pending index is written at the next pack, however small.
        let mut p = PendingIndex::new(Duration::ZERO);
        assert_eq!(p.push(pack(1, 2)).map(|b| b.len()), Some(1));
    }
}
