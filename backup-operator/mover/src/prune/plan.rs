//! What a prune run does, decided from what it read (no I/O here).
//!
//! Packs are deleted in two phases. A run *marks* packs that no snapshot
//! needs (after repacking the needed blobs out of partly used packs); the
//! marked packs stay in the index, and backups no longer deduplicate
//! against them. A *later* run deletes a marked pack once the grace period
//! has passed since the mark, unless a snapshot needs one of its blobs
//! that no unmarked pack holds: then the mark is dropped (recovered).
//!
//! Why this is safe beside a backup that ignores locks: a backup that
//! refers to a blob of a marked pack read the index before the mark, so
//! (as Jobs are shorter than the grace period) it finished before the
//! grace period ended; its snapshot was written before the deleting run
//! listed snapshots, so that run sees the need and recovers the pack.
//! Packs no index lists (a running or killed backup's) are deleted only
//! after the grace period from the first run that saw them. Indexed packs
//! younger than the grace period are neither marked nor repacked: a killed
//! backup's packs are reused by its next run.

use std::collections::{HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use rustic_core::Id;

use crate::error::MResult;
use crate::error::MoverError;
use crate::result::ErrorKind;

/// One blob of a pack, as the index lists it.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub id: Id,
    pub tree: bool,
    pub offset: u32,
    pub length: u32,
    pub uncompressed_length: Option<u32>,
}

/// An indexed pack.
#[derive(Debug, Clone)]
pub struct PackInfo {
    pub id: Id,
    /// When it was written, if the index says (the mover's and rustic's do).
    pub time: Option<Timestamp>,
    pub blobs: Vec<BlobInfo>,
}

impl PackInfo {
    pub fn is_tree(&self) -> bool {
        self.blobs.iter().any(|b| b.tree)
    }
}

/// Everything a plan is made from.
pub struct Inputs<'a> {
    /// Indexed packs, each once.
    pub packs: &'a [PackInfo],
    /// Packs in the backend, with their sizes.
    pub existing: &'a HashMap<Id, u32>,
    /// Blobs the snapshots need.
    pub used: &'a HashSet<Id>,
    pub candidates: &'a HashMap<Id, Timestamp>,
    pub unindexed: &'a HashMap<Id, Timestamp>,
    /// Taken before the snapshots were listed.
    pub now: Timestamp,
    /// Taken after the packs were listed (first sight of unindexed packs).
    pub seen_at: Timestamp,
    pub grace: SignedDuration,
    /// Unused space tolerated in data packs, in percent of the used space.
    pub max_unused_percent: u64,
}

/// Blobs to copy out of a pack before it is marked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repack {
    /// Position in [`Inputs::packs`].
    pub pack: usize,
    /// Positions of the blobs to copy in that pack.
    pub blobs: Vec<usize>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub packs: u64,
    pub used_bytes: u64,
    pub unused_bytes: u64,
    pub marked: u64,
    pub recovered: u64,
    pub deleted: u64,
    pub deleted_bytes: u64,
    pub deleted_unindexed: u64,
    pub repacked: u64,
    pub kept_marked: u64,
    /// Unused (or partly used) packs younger than the grace period.
    pub young: u64,
}

#[derive(Debug, Default)]
pub struct Plan {
    /// Marked packs whose grace period is over: delete now.
    pub delete: Vec<Id>,
    /// Unindexed packs first seen longer than the grace period ago.
    pub delete_unindexed: Vec<Id>,
    pub repack: Vec<Repack>,
    /// Packs to mark now (unused, or repacked by this run).
    pub mark: Vec<Id>,
    /// Marks that stay, with their times (those deleted now included, so a
    /// run that stops half-way is finished by the next).
    pub candidates: HashMap<Id, Timestamp>,
    pub recovered: Vec<Id>,
    pub unindexed: HashMap<Id, Timestamp>,
    /// Indexed packs missing from the backend that nothing needs: dropped
    /// from the index.
    pub missing: Vec<Id>,
    pub stats: Stats,
}

/// A pack's blobs split into those it holds for the snapshots (owned: no
/// pack before it holds them) and the rest.
#[derive(Default)]
struct Usage {
    owned: Vec<usize>,
    owned_bytes: u64,
    unused_bytes: u64,
}

fn usage(p: &PackInfo, used: &HashSet<Id>, owned: &mut HashSet<Id>) -> Usage {
    let mut u = Usage::default();
    for (i, b) in p.blobs.iter().enumerate() {
        if used.contains(&b.id) && owned.insert(b.id) {
            u.owned.push(i);
            u.owned_bytes += u64::from(b.length);
        } else {
            u.unused_bytes += u64::from(b.length);
        }
    }
    u
}

pub fn plan(inp: &Inputs<'_>) -> MResult<Plan> {
    let mut plan = Plan::default();
    let expired = |t: &Timestamp| t.saturating_add(inp.grace).is_ok_and(|end| end <= inp.now);
    let exists = |id: &Id| inp.existing.contains_key(id);

    // Unmarked packs own the needed blobs first, then marked packs recover
    // for what no unmarked pack holds.
    let mut owned = HashSet::new();
    let mut usages: Vec<Option<Usage>> = Vec::with_capacity(inp.packs.len());
    for p in inp.packs {
        let keep = exists(&p.id) && !inp.candidates.contains_key(&p.id);
        usages.push(keep.then(|| usage(p, inp.used, &mut owned)));
    }
    for (i, p) in inp.packs.iter().enumerate() {
        let Some(&marked_at) = inp.candidates.get(&p.id) else {
            continue;
        };
        if !exists(&p.id) {
            continue;
        }
        let needed = p
            .blobs
            .iter()
            .any(|b| inp.used.contains(&b.id) && !owned.contains(&b.id));
        if needed {
            usage(p, inp.used, &mut owned);
            plan.recovered.push(p.id);
        } else if expired(&marked_at) {
            plan.delete.push(p.id);
            plan.stats.deleted_bytes += inp.existing.get(&p.id).copied().map_or(0, u64::from);
            plan.candidates.insert(p.id, marked_at);
        } else {
            plan.candidates.insert(p.id, marked_at);
        }
        usages[i] = None;
    }
    if let Some(lost) = inp.used.iter().find(|b| !owned.contains(*b)) {
        let n = inp.used.iter().filter(|b| !owned.contains(*b)).count();
        return Err(MoverError::new(
            ErrorKind::Other,
            format!(
                "{n} blobs the snapshots need are in no pack of the repository (e.g. {}); \
                 nothing pruned, the repository needs repair",
                lost.to_hex().as_str()
            ),
        ));
    }

    // Unused packs are marked; partly used ones are repacked (tree packs
    // always, data packs while the unused space is above the limit).
    let mut partly = Vec::new();
    for (i, u) in usages.into_iter().enumerate() {
        let p = &inp.packs[i];
        let Some(u) = u else {
            if !exists(&p.id) {
                plan.missing.push(p.id);
            }
            continue;
        };
        plan.stats.used_bytes += u.owned_bytes;
        plan.stats.unused_bytes += u.unused_bytes;
        // A young pack may be a running backup's, or a killed one's that
        // the next run reuses: left alone until a grace period old.
        let young = p.time.is_some_and(|t| !expired(&t));
        if young {
            if u.owned.is_empty() || u.unused_bytes > 0 {
                plan.stats.young += 1;
            }
        } else if u.owned.is_empty() {
            plan.mark.push(p.id);
        } else if u.unused_bytes > 0 {
            partly.push((i, u));
        }
    }
    let limit = inp
        .max_unused_percent
        .min(99)
        .saturating_mul(plan.stats.used_bytes)
        / (100 - inp.max_unused_percent.min(99));
    let mut unused_after: u64 = partly
        .iter()
        .filter(|(i, _)| !inp.packs[*i].is_tree())
        .map(|(_, u)| u.unused_bytes)
        .sum();
    // Most unused first (ratio unused / owned).
    partly.sort_by(|(_, a), (_, b)| {
        (u128::from(b.unused_bytes) * u128::from(a.owned_bytes))
            .cmp(&(u128::from(a.unused_bytes) * u128::from(b.owned_bytes)))
    });
    for (i, u) in partly {
        let p = &inp.packs[i];
        let tree = p.is_tree();
        if !tree && unused_after <= limit {
            continue;
        }
        if !tree {
            unused_after -= u.unused_bytes;
        }
        plan.mark.push(p.id);
        plan.repack.push(Repack {
            pack: i,
            blobs: u.owned,
        });
    }
    plan.repack.sort_by_key(|r| r.pack);

    // Unindexed packs: deleted a grace period after first seen. A marked
    // pack that left the index (a run stopped between rewriting the index
    // and deleting) keeps its mark's time.
    let indexed: HashSet<Id> = inp.packs.iter().map(|p| p.id).collect();
    let mut unindexed: Vec<(Id, Timestamp)> = Vec::new();
    for id in inp.existing.keys().filter(|id| !indexed.contains(*id)) {
        let first = [inp.unindexed.get(id), inp.candidates.get(id)]
            .into_iter()
            .flatten()
            .min()
            .copied();
        match first {
            Some(t) if expired(&t) => plan.delete_unindexed.push(*id),
            Some(t) => unindexed.push((*id, t)),
            None => unindexed.push((*id, inp.seen_at)),
        }
    }
    plan.unindexed = unindexed.into_iter().collect();
    plan.delete_unindexed.sort();

    plan.stats.packs = inp.packs.len() as u64;
    plan.stats.marked = plan.mark.len() as u64;
    plan.stats.recovered = plan.recovered.len() as u64;
    plan.stats.deleted = plan.delete.len() as u64;
    plan.stats.deleted_unindexed = plan.delete_unindexed.len() as u64;
    plan.stats.repacked = plan.repack.len() as u64;
    plan.stats.kept_marked = (plan.candidates.len() - plan.delete.len()) as u64;
    Ok(plan)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
