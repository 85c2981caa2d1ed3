use super::*;

fn id(n: u32) -> Id {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_be_bytes());
    Id::new(b)
}

fn blob(n: u32, tree: bool) -> BlobInfo {
    BlobInfo {
        id: id(n),
        tree,
        offset: 0,
        length: 1000,
        uncompressed_length: None,
    }
}

/// Pack `p` with data blobs `blobs` (and tree blobs `trees`).
fn pack(p: u32, blobs: &[u32], trees: &[u32]) -> PackInfo {
    PackInfo {
        id: id(p),
        time: Some(t(0)),
        blobs: blobs
            .iter()
            .map(|&b| blob(b, false))
            .chain(trees.iter().map(|&b| blob(b, true)))
            .collect(),
    }
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).expect("time")
}

const HOUR: i64 = 3600;

struct Case {
    packs: Vec<PackInfo>,
    existing: HashMap<Id, u32>,
    used: HashSet<Id>,
    candidates: HashMap<Id, Timestamp>,
    unindexed: HashMap<Id, Timestamp>,
    now: Timestamp,
    grace: SignedDuration,
    max_unused: u64,
}

impl Case {
    fn new(packs: Vec<PackInfo>, used: &[u32]) -> Self {
        let existing = packs.iter().map(|p| (p.id, 4096)).collect();
        Self {
            packs,
            existing,
            used: used.iter().map(|&b| id(b)).collect(),
            candidates: HashMap::new(),
            unindexed: HashMap::new(),
            now: t(100 * HOUR),
            grace: SignedDuration::from_hours(24),
            max_unused: 5,
        }
    }
    fn marked(mut self, p: u32, at: Timestamp) -> Self {
        self.candidates.insert(id(p), at);
        self
    }
    fn plan(&self) -> MResult<Plan> {
        plan(&Inputs {
            packs: &self.packs,
            existing: &self.existing,
            used: &self.used,
            candidates: &self.candidates,
            unindexed: &self.unindexed,
            now: self.now,
            seen_at: self
                .now
                .saturating_add(SignedDuration::from_secs(5))
                .expect("t"),
            grace: self.grace,
            max_unused_percent: self.max_unused,
        })
    }
}

#[test]
fn unused_pack_is_only_marked_by_the_first_run_even_without_grace() {
    let mut c = Case::new(vec![pack(1, &[10], &[]), pack(2, &[20], &[])], &[10]);
    c.grace = SignedDuration::ZERO;
    let p = c.plan().expect("plan");
    assert_eq!(p.mark, vec![id(2)]);
    assert!(p.delete.is_empty() && p.delete_unindexed.is_empty());
    assert!(
        p.repack.is_empty() && p.missing.is_empty(),
        "marking alone touches no pack or index"
    );
}

#[test]
fn marked_pack_is_deleted_only_after_the_grace_period() {
    let young = Case::new(vec![pack(1, &[10], &[]), pack(2, &[20], &[])], &[10])
        .marked(2, t(100 * HOUR - 24 * HOUR + 1));
    let p = young.plan().expect("plan");
    assert!(p.delete.is_empty(), "one second short of the grace period");
    assert_eq!(p.candidates.get(&id(2)), Some(&t(76 * HOUR + 1)));
    assert!(p.mark.is_empty(), "an existing mark keeps its time");
    assert_eq!(p.stats.kept_marked, 1);

    let old =
        Case::new(vec![pack(1, &[10], &[]), pack(2, &[20], &[])], &[10]).marked(2, t(76 * HOUR));
    let p = old.plan().expect("plan");
    assert_eq!(p.delete, vec![id(2)]);
    assert_eq!(p.stats.deleted_bytes, 4096);
}

#[test]
fn marked_pack_a_snapshot_needs_again_is_recovered() {
    // A backup that read the index before the mark used blob 20.
    let c = Case::new(
        vec![pack(1, &[10], &[]), pack(2, &[20, 21], &[])],
        &[10, 20],
    )
    .marked(2, t(0));
    let p = c.plan().expect("plan");
    assert_eq!(p.recovered, vec![id(2)]);
    assert!(p.delete.is_empty());
    assert!(!p.candidates.contains_key(&id(2)), "the mark is dropped");
    assert!(p.mark.is_empty(), "not marked again in the same run");
}

#[test]
fn marked_pack_whose_needed_blobs_live_elsewhere_is_deleted() {
    // Blob 20 was written again by a backup that did not see pack 2.
    let c = Case::new(
        vec![pack(1, &[10, 20], &[]), pack(2, &[20, 21], &[])],
        &[10, 20],
    )
    .marked(2, t(0));
    let p = c.plan().expect("plan");
    assert!(p.recovered.is_empty());
    assert_eq!(p.delete, vec![id(2)]);
}

#[test]
fn a_needed_blob_in_no_pack_stops_the_run() {
    let c = Case::new(vec![pack(1, &[10], &[])], &[10, 99]);
    let e = c.plan().expect_err("missing blob");
    assert!(e.message.contains("needs repair"), "{}", e.message);

    // Also when its only pack is gone from the backend.
    let mut c = Case::new(vec![pack(1, &[10], &[]), pack(2, &[20], &[])], &[10, 20]);
    c.existing.remove(&id(2));
    assert!(c.plan().is_err());
}

#[test]
fn missing_pack_nothing_needs_is_dropped_from_the_index() {
    let mut c = Case::new(vec![pack(1, &[10], &[]), pack(2, &[20], &[])], &[10]);
    c.existing.remove(&id(2));
    let p = c.plan().expect("plan");
    assert_eq!(p.missing, vec![id(2)]);
    assert!(p.mark.is_empty());
}

#[test]
fn duplicate_copies_leave_one_owner() {
    // Both packs hold 10; the second is then wholly redundant.
    let c = Case::new(
        vec![pack(1, &[10, 11], &[]), pack(2, &[10], &[])],
        &[10, 11],
    );
    let p = c.plan().expect("plan");
    assert_eq!(p.mark, vec![id(2)]);
    assert!(p.repack.is_empty());
}

#[test]
fn unindexed_packs_wait_a_grace_period_from_first_sight() {
    let mut c = Case::new(vec![pack(1, &[10], &[])], &[10]);
    for (n, first) in [(50, None), (51, Some(t(99 * HOUR))), (52, Some(t(0)))] {
        c.existing.insert(id(n), 100);
        if let Some(f) = first {
            c.unindexed.insert(id(n), f);
        }
    }
    // An entry for a pack that got indexed since is forgotten.
    c.unindexed.insert(id(1), t(0));
    c.grace = SignedDuration::ZERO;
    c.now = t(0)
        .saturating_add(SignedDuration::from_hours(50))
        .expect("t");
    let p = c.plan().expect("plan");
    assert_eq!(p.delete_unindexed, vec![id(52)]);
    assert_eq!(
        p.unindexed.get(&id(50)),
        Some(
            &c.now
                .saturating_add(SignedDuration::from_secs(5))
                .expect("t")
        ),
        "first seen now: not deleted by this run even without grace"
    );
    assert_eq!(p.unindexed.get(&id(51)), Some(&t(99 * HOUR)), "younger");
    assert!(!p.unindexed.contains_key(&id(1)));
    assert_eq!(p.unindexed.len(), 2);
}

#[test]
fn marked_pack_that_left_the_index_keeps_its_time() {
    let mut c = Case::new(vec![pack(1, &[10], &[])], &[10]).marked(7, t(0));
    c.existing.insert(id(7), 100);
    let p = c.plan().expect("plan");
    assert_eq!(p.delete_unindexed, vec![id(7)]);
    c.candidates.insert(id(7), t(90 * HOUR));
    let p = c.plan().expect("plan");
    assert_eq!(p.unindexed.get(&id(7)), Some(&t(90 * HOUR)));
    assert!(p.delete_unindexed.is_empty());
}

#[test]
fn partly_used_tree_packs_are_always_repacked() {
    let c = Case::new(
        vec![pack(1, &[10], &[]), pack(2, &[], &[30, 31, 32])],
        &[10, 30, 32],
    );
    let p = c.plan().expect("plan");
    assert_eq!(
        p.repack,
        vec![Repack {
            pack: 1,
            blobs: vec![0, 2]
        }]
    );
    assert_eq!(
        p.mark,
        vec![id(2)],
        "a repacked pack is marked, not deleted"
    );
}

#[test]
fn data_packs_are_repacked_only_above_the_unused_limit() {
    // 20 fully used packs (20,000 bytes used); pack 100 has 1 of 2 used.
    let mut packs: Vec<_> = (0..20).map(|i| pack(i, &[1000 + i], &[])).collect();
    packs.push(pack(100, &[500, 501], &[]));
    let mut used: Vec<u32> = (0..20).map(|i| 1000 + i).collect();
    used.push(500);
    // 1,000 unused of 21,000 used: under 5 %.
    let p = Case::new(packs.clone(), &used).plan().expect("plan");
    assert!(p.repack.is_empty(), "{:?}", p.repack);
    assert_eq!(p.stats.unused_bytes, 1000);

    // Two more partly used packs: 4,000 unused > 5 % of 23,000 (1,210).
    // The most unused (102: 2 of 3) goes first, then 100 (ties keep the
    // index order); the 1,000 left are under the limit.
    packs.push(pack(101, &[600, 601], &[]));
    packs.push(pack(102, &[700, 701, 702], &[]));
    used.extend([600, 700]);
    let p = Case::new(packs, &used).plan().expect("plan");
    let repacked: Vec<usize> = p.repack.iter().map(|r| r.pack).collect();
    assert_eq!(repacked, vec![20, 22]);
    assert!(!p.mark.contains(&id(101)));
    assert!(p.mark.contains(&id(102)));
    let r102 = p.repack.iter().find(|r| r.pack == 22).expect("102");
    assert_eq!(r102.blobs, vec![0]);
}

#[test]
fn young_unused_packs_are_left_for_the_next_backup() {
    // Packs of a killed backup, written an hour ago (grace: 24 h).
    let mut packs = vec![
        pack(1, &[10], &[]),
        pack(2, &[20], &[]),
        pack(3, &[], &[30, 31]),
    ];
    packs[1].time = Some(t(99 * HOUR));
    packs[2].time = Some(t(99 * HOUR));
    let c = Case::new(packs.clone(), &[10, 30]);
    let p = c.plan().expect("plan");
    assert!(
        p.mark.is_empty() && p.repack.is_empty(),
        "{:?} {:?}",
        p.mark,
        p.repack
    );
    assert_eq!(p.stats.young, 2);

    // Without a time (restic's index) a pack counts as old.
    packs[1].time = None;
    let p = Case::new(packs.clone(), &[10, 30]).plan().expect("plan");
    assert_eq!(p.mark, vec![id(2)]);

    // A grace period later they are marked / repacked.
    let mut c = Case::new(packs, &[10, 30]);
    c.now = t(123 * HOUR);
    let p = c.plan().expect("plan");
    assert_eq!(p.mark, vec![id(2), id(3)]);
    assert_eq!(p.repack.len(), 1);
}
