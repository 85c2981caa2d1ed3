//! `check`: is the repository whole, and can a snapshot be restored?
//!
//! Structure (always): every pack the index lists exists with the size its
//! entries imply, every snapshot's trees load and verify by id, and every
//! blob they refer to is indexed in a pack that exists. Data (optional,
//! `--read-data-subset`): the chosen packs are downloaded whole and every
//! blob in them decrypts, decompresses and hashes to its id, as restic's
//! `check --read-data-subset` does. With `--snapshot`, every blob of that
//! snapshot is read and verified without writing anything (a quick restore
//! drill). Problems are collected, not stopped at: the report lists up to
//! [`MAX_LISTED`] of them and counts all.

use std::collections::{BTreeMap, HashMap, HashSet};

use rustic_core::repofile::{NodeType, SnapshotFile};
use rustic_core::{FileType, Id, OpenStatus, Repository, TreeId};

use crate::archive::parent::ParentTrees;
use crate::crypto::Crypto;
use crate::error::{MResult, MoverError, RusticCtx};
use crate::prune::plan::PackInfo;
use crate::prune::used::Inventory;
use crate::repo::Backend;
use crate::result::{CheckReport as Report, ErrorKind};

/// Problems listed in the report (all are counted).
pub const MAX_LISTED: usize = 10;

/// Which packs `--read-data-subset` reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Subset {
    /// Every pack.
    All,
    /// Part `n` of `of` (1-based), by the first byte of the pack id: run
    /// `1/10` ... `10/10` on successive days to read everything once.
    Part { n: u32, of: u32 },
    /// About this share of the packs (0-100), chosen at random.
    Percent(f64),
}

impl std::str::FromStr for Subset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(Subset::All);
        }
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p
                .parse()
                .map_err(|_| format!("read-data-subset {s:?}: not a percentage"))?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(format!("read-data-subset {s:?}: must be in (0, 100]%"));
            }
            return Ok(Subset::Percent(v));
        }
        let (n, of) = s
            .split_once('/')
            .ok_or_else(|| format!("read-data-subset {s:?}: use all, N% or n/m"))?;
        let (n, of): (u32, u32) = (
            n.parse()
                .map_err(|_| format!("read-data-subset {s:?}: bad n"))?,
            of.parse()
                .map_err(|_| format!("read-data-subset {s:?}: bad m"))?,
        );
        if of == 0 || of > 256 || n == 0 || n > of {
            return Err(format!("read-data-subset {s:?}: need 1 <= n <= m <= 256"));
        }
        Ok(Subset::Part { n, of })
    }
}

impl Subset {
    /// Whether the pack `id` is read; `coin` is a uniform draw in [0, 1).
    pub fn selects(&self, id: &Id, coin: f64) -> bool {
        match *self {
            Subset::All => true,
            Subset::Part { n, of } => u32::from(first_byte(id)) % of == n - 1,
            Subset::Percent(p) => coin * 100.0 < p,
        }
    }
}

fn problem(r: &mut Report, msg: String) {
    r.error_count += 1;
    if r.errors.len() < MAX_LISTED {
        r.errors.push(brief(&msg));
    }
}

/// One line of at most 240 bytes: rustic's errors span many lines, with
/// the useful part after `Message:` (kept after what we said first).
fn brief(msg: &str) -> String {
    let mut out = match msg.split_once("Message:") {
        Some((ours, theirs)) => format!(
            "{} {}",
            ours.lines().next().unwrap_or("").trim_end(),
            theirs.trim_start().lines().next().unwrap_or("")
        ),
        None => msg.lines().next().unwrap_or("").to_string(),
    };
    if out.len() > 240 {
        let mut cut = 240;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// What to check.
pub struct Opts {
    pub subset: Option<Subset>,
    /// Only this snapshot's blobs are read and verified (drill mode).
    pub snapshot: Option<SnapshotFile>,
}

/// Checks `repo` (the caller holds a non-exclusive lock).
pub fn run(
    be: &Backend,
    repo: &Repository<OpenStatus>,
    crypto: &Crypto,
    o: &Opts,
) -> MResult<Report> {
    let mut r = Report::default();
    let inv = Inventory::read(repo)?;
    let existing: HashMap<Id, u32> = be
        .be
        .list_with_size(FileType::Pack)
        .ctx("listing packs")?
        .into_iter()
        .collect();
    r.packs = inv.packs.len();
    let indexed: HashSet<Id> = inv.packs.iter().map(|p| p.id).collect();
    r.unindexed_packs = existing.keys().filter(|id| !indexed.contains(id)).count();
    for p in &inv.packs {
        match existing.get(&p.id) {
            None => problem(
                &mut r,
                format!("pack {} is listed in the index but missing", hex(&p.id)),
            ),
            Some(&size) if u64::from(size) != expected_size(p) => problem(
                &mut r,
                format!(
                    "pack {}: {} bytes, the index implies {}",
                    hex(&p.id),
                    size,
                    expected_size(p)
                ),
            ),
            Some(_) => {}
        }
    }
    let snaps: Vec<SnapshotFile> = match &o.snapshot {
        Some(s) => vec![s.clone()],
        None => repo.get_all_snapshots().ctx("reading snapshots")?,
    };
    r.snapshots = snaps.len();
    // Where each blob is: pack position in `inv.packs` and blob position.
    let mut at: HashMap<Id, (usize, usize)> = HashMap::new();
    for (pi, p) in inv.packs.iter().enumerate() {
        if existing.contains_key(&p.id) {
            for (bi, b) in p.blobs.iter().enumerate() {
                at.entry(b.id).or_insert((pi, bi));
            }
        }
    }
    let used = walk(be, crypto, &inv, &existing, &snaps, &at, &mut r);
    let read: Vec<usize> = match (&o.snapshot, o.subset) {
        (Some(_), _) => packs_of(&used, &at),
        (None, Some(subset)) => {
            let mut rng = Coin::seeded();
            (0..inv.packs.len())
                .filter(|&i| existing.contains_key(&inv.packs[i].id))
                .filter(|&i| subset.selects(&inv.packs[i].id, rng.next()))
                .collect()
        }
        (None, None) => Vec::new(),
    };
    let only = o.snapshot.as_ref().map(|_| &used);
    for i in read {
        crate::cancel::check()?;
        read_pack(be, crypto, &inv.packs[i], only, &mut r)?;
    }
    Ok(r)
}

/// Pack size from its index entries: the blobs, then the encrypted header
/// (37 bytes per entry, 41 when compressed, plus IV and MAC) and its length.
fn expected_size(p: &PackInfo) -> u64 {
    let blobs: u64 = p.blobs.iter().map(|b| u64::from(b.length)).sum();
    let header: u64 = p
        .blobs
        .iter()
        .map(|b| {
            if b.uncompressed_length.is_some() {
                41
            } else {
                37
            }
        })
        .sum();
    blobs + header + 32 + 4
}

/// Walks every tree of `snaps`; returns every blob id they refer to.
fn walk(
    be: &Backend,
    crypto: &Crypto,
    inv: &Inventory,
    existing: &HashMap<Id, u32>,
    snaps: &[SnapshotFile],
    at: &HashMap<Id, (usize, usize)>,
    r: &mut Report,
) -> HashSet<Id> {
    let locs = inv.tree_locations(existing);
    let trees = ParentTrees::new(be, crypto, &locs);
    let mut used: HashSet<Id> = HashSet::new();
    let mut todo: Vec<(TreeId, String)> = Vec::new();
    for s in snaps {
        if used.insert(*s.tree) {
            todo.push((s.tree, format!("snapshot {}", s.id)));
        }
    }
    while let Some((id, path)) = todo.pop() {
        let tree = match trees.try_load(&id) {
            Ok(t) => t,
            Err(e) => {
                problem(r, format!("tree {} ({path}): {e}", hex(&id)));
                continue;
            }
        };
        r.trees += 1;
        for node in tree.nodes {
            let child = format!("{path}/{}", node.name().to_string_lossy());
            match node.node_type {
                NodeType::File => {
                    for c in node.content.iter().flatten() {
                        if !at.contains_key(&**c) {
                            problem(r, format!("blob {} of {child} is in no pack", hex(c)));
                        }
                        used.insert(**c);
                    }
                }
                NodeType::Dir => match node.subtree {
                    Some(sub) if used.insert(*sub) => todo.push((sub, child)),
                    Some(_) => {}
                    None => problem(r, format!("directory {child} has no subtree")),
                },
                _ => {}
            }
        }
    }
    used
}

/// The packs (positions) holding `blobs`, in index order.
fn packs_of(blobs: &HashSet<Id>, at: &HashMap<Id, (usize, usize)>) -> Vec<usize> {
    let set: std::collections::BTreeSet<usize> = blobs
        .iter()
        .filter_map(|b| at.get(b).map(|x| x.0))
        .collect();
    set.into_iter().collect()
}

/// Downloads a pack whole and verifies it (its name) and its blobs (all,
/// or those in `only`).
fn read_pack(
    be: &Backend,
    crypto: &Crypto,
    p: &PackInfo,
    only: Option<&HashSet<Id>>,
    r: &mut Report,
) -> MResult<()> {
    let bytes = match be.be.read_full(FileType::Pack, &p.id) {
        Ok(b) => b,
        Err(e) => {
            let e = e.to_string();
            let why = e
                .split_once("Message:")
                .map_or(e.as_str(), |(_, m)| m.trim_start());
            problem(r, format!("pack {}: {why}", hex(&p.id)));
            return Ok(());
        }
    };
    r.packs_read += 1;
    r.bytes_read += bytes.len() as u64;
    if !crate::verified::names(&p.id, &bytes) {
        problem(r, format!("pack {} does not match its name", hex(&p.id)));
    }
    let mut bad: BTreeMap<String, &'static str> = BTreeMap::new();
    for b in p
        .blobs
        .iter()
        .filter(|b| only.is_none_or(|o| o.contains(&b.id)))
    {
        let (start, end) = (b.offset as usize, b.offset as usize + b.length as usize);
        let verdict = match bytes.get(start..end) {
            None => Err("lies outside the pack"),
            Some(sealed) => {
                crate::verified::open_blob(crypto, &b.id, sealed, b.uncompressed_length).map(drop)
            }
        };
        match verdict {
            Ok(()) => r.blobs_verified += 1,
            Err(why) => {
                bad.insert(hex(&b.id), why);
            }
        }
    }
    for (id, why) in bad {
        problem(r, format!("blob {id} in pack {} {why}", hex(&p.id)));
    }
    Ok(())
}

fn first_byte(id: &Id) -> u8 {
    u8::from_str_radix(&id.to_hex().as_str()[..2], 16).unwrap_or(0)
}

fn hex(id: &Id) -> String {
    id.to_hex().as_str().to_string()
}

/// A small xorshift draw for `N%` subsets, seeded from the clock (each run
/// reads a different share).
struct Coin(u64);

impl Coin {
    fn seeded() -> Self {
        let t = jiff::Timestamp::now().as_nanosecond() as u64;
        Coin(t | 1)
    }
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The `check` command: runs under a shared lock (prune cannot delete what
/// is being read) and reports into `r`; a damaged repository is an error.
pub fn command(
    be: &Backend,
    o: &crate::repo::OpenOpts,
    subset: Option<Subset>,
    snapshot: Option<&str>,
    pvc: Option<&str>,
    lock_wait: std::time::Duration,
    r: &mut crate::result::MoverResult,
) -> MResult<()> {
    let started = std::time::Instant::now();
    let repo = crate::repo::open(be, o)?;
    let crypto = crate::repo::crypto(&repo)?;
    let guard = crate::lock::acquire(be.raw.clone(), crypto.clone(), false, lock_wait)?;
    let snapshot = snapshot
        .map(|s| crate::ops::find_snapshot(&repo, s, pvc, None))
        .transpose()?;
    r.snapshot_id = snapshot.as_ref().map(|s| s.id.to_string());
    let report = run(be, &repo, &crypto, &Opts { subset, snapshot })?;
    guard.release();
    r.duration_seconds = Some(started.elapsed().as_secs_f64());
    let result = if report.error_count > 0 {
        Err(damaged(&report))
    } else {
        r.ok = true;
        Ok(())
    };
    r.check = Some(report);
    result
}

/// The error a damaged repository ends `check` with.
pub fn damaged(r: &Report) -> MoverError {
    MoverError::new(
        ErrorKind::RepositoryCorrupt,
        format!(
            "the repository is damaged: {} problem(s), first: {}",
            r.error_count,
            r.errors.first().map(String::as_str).unwrap_or("?")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse_and_partition_the_packs() {
        assert_eq!("all".parse::<Subset>(), Ok(Subset::All));
        assert_eq!("5%".parse::<Subset>(), Ok(Subset::Percent(5.0)));
        assert_eq!("2/10".parse::<Subset>(), Ok(Subset::Part { n: 2, of: 10 }));
        for bad in ["0/3", "4/3", "1/0", "0%", "101%", "x", "1/300"] {
            assert!(bad.parse::<Subset>().is_err(), "{bad}");
        }
        // Every pack is in exactly one part of 1/3 .. 3/3.
        for first in 0u8..=255 {
            let mut bytes = [0u8; 32];
            bytes[0] = first;
            let id = Id::new(bytes);
            let parts = (1..=3)
                .filter(|&n| Subset::Part { n, of: 3 }.selects(&id, 0.5))
                .count();
            assert_eq!(parts, 1);
        }
        assert!(Subset::Percent(10.0).selects(&Id::new([0; 32]), 0.05));
        assert!(!Subset::Percent(10.0).selects(&Id::new([0; 32]), 0.5));
    }

    #[test]
    fn problems_are_one_short_line() {
        let rustic =
            "`rustic_core` experienced an error.\n\nMessage:\nPack file 7448 does not match\nmore";
        assert_eq!(
            brief(&format!("pack 7448: {rustic}")),
            "pack 7448: `rustic_core` experienced an error. Pack file 7448 does not match"
        );
        let long = "x".repeat(1000);
        assert!(brief(&long).len() <= 240 + '…'.len_utf8());
        let mut r = Report::default();
        for i in 0..25 {
            problem(&mut r, format!("problem {i}"));
        }
        assert_eq!((r.error_count, r.errors.len()), (25, MAX_LISTED));
    }
}
