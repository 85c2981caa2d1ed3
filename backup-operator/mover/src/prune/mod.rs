//! Prune in two phases, safe beside backups even when locks are wrong
//! (see `plan.rs` for the rule, `state.rs` for what is kept between runs).
//!
//! Why not rustic_core's prune without instant delete: it moves marked
//! packs to the index's `packs_to_delete`, which neither restic nor
//! rustic's readers look at. A backup that started before the mark and
//! deduplicated against such a pack then writes a snapshot that
//! `restic check` reports as referring to missing blobs and that neither
//! restic nor the mover can restore until a later prune recovers the pack.
//! Here marked packs stay in the index (readers see every blob at all
//! times); only the mover's backups skip them.
//!
//! A run: read the state, the snapshots, then the index (in this order, so
//! every listed snapshot's blobs are in the index read), list the packs,
//! find the needed blobs, plan; then write repacked packs, write the new
//! index files, write the state (unless another prune wrote it meanwhile),
//! delete the replaced index files, and only then delete packs.

pub mod plan;
mod repack;
pub mod state;
pub mod used;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rustic_core::{FileType, Id, OpenStatus, Repository};

use self::plan::{Inputs, PackInfo};
use self::used::Inventory;
use crate::archive::index::{FileSaver, PackEntry};
use crate::archive::pack::{Entry, Kind};
use crate::error::{MResult, MoverError, RusticCtx};
use crate::repo::{self, Backend};
use crate::result::ErrorKind;

/// Default grace period: longer than the longest backup Job.
pub const DEFAULT_GRACE: &str = "24h";
/// Index files with fewer blobs are merged when there are several.
const SMALL_INDEX_BLOBS: usize = 10_000;

pub struct PruneOpts {
    /// A marked pack is deleted only this long after it was marked (and an
    /// unindexed one this long after it was first seen). Must exceed the
    /// longest backup.
    pub grace: Duration,
    /// Unused space tolerated in data packs, percent of the used space.
    pub max_unused_percent: u64,
}

impl PruneOpts {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            max_unused_percent: 5,
        }
    }
}

/// `90s`, `30m`, `24h`, `7d`, combinations (`1h30m`) or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 24h, 90m, 1h30m or 0s");
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let (mut total, mut num) = (0u64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() || s.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

fn grace_of(o: &PruneOpts) -> MResult<SignedDuration> {
    SignedDuration::try_from(o.grace)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("grace period: {e}")))
}

/// Prunes if something was forgotten or a mark's grace period is over
/// (otherwise a run could only mark packs that are marked already).
pub fn after_forget(
    be: &Backend,
    repo: &Repository<OpenStatus>,
    o: &PruneOpts,
    forgot: bool,
) -> MResult<Option<plan::Stats>> {
    if !forgot {
        let crypto = repo::crypto(repo)?;
        let st = state::load(be, &crypto)?.state;
        let grace = grace_of(o)?;
        let now = Timestamp::now();
        let due = st
            .candidates
            .values()
            .chain(st.unindexed.values())
            .any(|t| t.saturating_add(grace).is_ok_and(|end| end <= now));
        if !due {
            return Ok(None);
        }
    }
    run(be, repo, o).map(Some)
}

/// One prune run (the caller holds the exclusive lock).
pub fn run(be: &Backend, repo: &Repository<OpenStatus>, o: &PruneOpts) -> MResult<plan::Stats> {
    let crypto = repo::crypto(repo)?;
    let grace = grace_of(o)?;
    let now = Timestamp::now();
    let loaded = state::load(be, &crypto)?;
    let snaps = repo.get_all_snapshots().ctx("reading snapshots")?;
    let inv = Inventory::read(repo)?;
    let existing: HashMap<Id, u32> = be
        .be
        .list_with_size(FileType::Pack)
        .ctx("listing packs")?
        .into_iter()
        .collect();
    let seen_at = Timestamp::now();
    let used = used::used_blobs(be, &crypto, &snaps, &inv.tree_locations(&existing))?;
    let candidates: HashMap<Id, Timestamp> =
        state::ids(&loaded.state.candidates)?.into_iter().collect();
    let unindexed: HashMap<Id, Timestamp> =
        state::ids(&loaded.state.unindexed)?.into_iter().collect();
    let plan = plan::plan(&Inputs {
        packs: &inv.packs,
        existing: &existing,
        used: &used,
        candidates: &candidates,
        unindexed: &unindexed,
        now,
        seen_at,
        grace,
        max_unused_percent: o.max_unused_percent,
    })?;
    drop(used);

    // New packs and index files first: nothing is removed yet.
    let repacked = repack::repack(be, &crypto, &inv.packs, &plan.repack)?;
    let gone: HashSet<Id> = plan.delete.iter().chain(&plan.missing).copied().collect();
    let rewrite = files_to_rewrite(&inv, &gone);
    let mut entries = repacked;
    entries.extend(kept_entries(&inv, &rewrite, &gone)?);
    if !entries.is_empty() {
        let level = repo
            .config()
            .zstd()
            .ctx("reading the compression setting")?;
        FileSaver::new(be, crypto.cipher(), level).save_index(&entries)?;
    }

    // Another prune that wrote the state since we read it decided on a
    // different picture: stop before deleting anything.
    if !state::unchanged(be, &loaded)? {
        return Err(MoverError::new(
            ErrorKind::Other,
            format!(
                "{} changed while pruning (another prune ran at the same time); nothing deleted",
                state::STATE_FILE
            ),
        ));
    }
    let marked_at = Timestamp::now();
    let mut next = state::State::default();
    for (id, t) in plan
        .candidates
        .iter()
        .map(|(id, t)| (id, *t))
        .chain(plan.mark.iter().map(|id| (id, marked_at)))
    {
        next.candidates.insert(id.to_hex().to_string(), t);
    }
    for (id, t) in &plan.unindexed {
        next.unindexed.insert(id.to_hex().to_string(), *t);
    }
    next.version = loaded.state.version;
    if next != loaded.state {
        state::save(be, &crypto, &next)?;
    }

    // Index files before packs: no index ever lists a pack that is gone.
    for &f in &rewrite {
        let id = inv.files[f].0;
        be.be
            .remove(FileType::Index, &id, true)
            .ctx(&format!("removing index file {}", id.to_hex().as_str()))?;
    }
    let tree_packs: HashSet<Id> = inv
        .packs
        .iter()
        .filter(|p| p.is_tree())
        .map(|p| p.id)
        .collect();
    for id in plan.delete.iter().chain(&plan.delete_unindexed) {
        be.be
            .remove(FileType::Pack, id, tree_packs.contains(id))
            .ctx(&format!("removing pack {}", id.to_hex().as_str()))?;
    }
    let s = &plan.stats;
    log::info!(
        "prune: {} packs, {} used / {} unused bytes; marked {}, kept marked {}, recovered {}, \
         repacked {}, deleted {} ({} bytes) and {} unindexed",
        s.packs,
        s.used_bytes,
        s.unused_bytes,
        s.marked,
        s.kept_marked,
        s.recovered,
        s.repacked,
        s.deleted,
        s.deleted_bytes,
        s.deleted_unindexed
    );
    Ok(plan.stats)
}

/// Index files that list a pack that goes, and small files when there are
/// several of them (a backup writes one every few minutes).
fn files_to_rewrite(inv: &Inventory, gone: &HashSet<Id>) -> Vec<usize> {
    let small: Vec<usize> = (0..inv.files.len())
        .filter(|&f| inv.file_blobs[f] < SMALL_INDEX_BLOBS)
        .collect();
    (0..inv.files.len())
        .filter(|&f| {
            (small.len() > 1 && small.contains(&f))
                || inv.files[f]
                    .1
                    .iter()
                    .any(|&p| gone.contains(&inv.packs[p].id))
        })
        .collect()
}

/// The packs of the rewritten files that stay and no other file lists.
fn kept_entries(inv: &Inventory, rewrite: &[usize], gone: &HashSet<Id>) -> MResult<Vec<PackEntry>> {
    let rewritten: HashSet<usize> = rewrite.iter().copied().collect();
    let elsewhere: HashSet<usize> = (0..inv.files.len())
        .filter(|f| !rewritten.contains(f))
        .flat_map(|f| inv.files[f].1.iter().copied())
        .collect();
    let mut done = HashSet::new();
    let mut out = Vec::new();
    for &f in rewrite {
        for &p in &inv.files[f].1 {
            let pack = &inv.packs[p];
            if gone.contains(&pack.id) || elsewhere.contains(&p) || !done.insert(p) {
                continue;
            }
            out.push(entry_of(pack)?);
        }
    }
    Ok(out)
}

fn entry_of(p: &PackInfo) -> MResult<PackEntry> {
    let blobs = p
        .blobs
        .iter()
        .map(|b| {
            Ok(Entry {
                kind: if b.tree { Kind::Tree } else { Kind::Data },
                id: repack::id_bytes(&b.id)?,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            })
        })
        .collect::<MResult<Vec<_>>>()?;
    Ok(PackEntry {
        id: repack::id_bytes(&p.id)?,
        blobs,
        time: p.time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let d = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(d("24h"), Ok(86_400));
        assert_eq!(d("0s"), Ok(0));
        assert_eq!(d("1h30m"), Ok(5400));
        assert_eq!(d("2d"), Ok(172_800));
        assert_eq!(d("45"), Ok(45));
        for bad in ["", "h", "5x", "10m5", "-1h", "1.5h"] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
    }
}
