//! Prune beside backups: two phases with a grace period, unindexed packs
//! kept, a killed backup's packs reused, and prune racing a running backup
//! whose lock is gone. Local-path repositories; needs `restic`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

fn write(p: &Path, data: &[u8]) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(p, data).expect("write");
}

fn forget(env: &Env, repo: &str, extra: &[&str]) {
    prune_counts(env, repo, extra);
}

/// Runs forget + prune; returns the counts prune logs ("marked 3", ...).
fn prune_counts(env: &Env, repo: &str, extra: &[&str]) -> HashMap<String, u64> {
    let mut a = vec![
        "forget",
        "--repository",
        repo,
        "--namespace",
        "ns1",
        "--policy",
        "pol1",
        "--pvc",
        "p",
        "--prune",
    ];
    a.extend_from_slice(extra);
    let out = mover_cmd(&env.with("RUST_LOG", "info"), &a)
        .output()
        .expect("run forget");
    let r = parse_result(&a, &out);
    assert!(r.ok, "{a:?} failed: {:?}", r.error);
    let log = String::from_utf8_lossy(&out.stderr);
    let mut counts = HashMap::new();
    if let Some(line) = log.lines().find(|l| l.contains("prune: ")) {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        for w in words.windows(2) {
            if let Ok(n) = w[1].parse::<u64>() {
                counts.insert(w[0].to_string(), n);
            }
        }
    }
    counts
}

fn spawn_backup(env: &Env, repo: &str, src: &str) -> Child {
    let mut a = backup_args(repo, src, "p");
    a.extend(["--backup-threads", "1"]);
    mover_cmd(env, &a)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backup")
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (c) A forgotten snapshot's packs survive prunes within the grace period
/// and go with the first prune after it; a pack no index lists is kept a
/// grace period from when a prune first saw it; a backup does not reuse
/// marked packs.
#[test]
fn prune_deletes_only_after_the_grace_period() {
    let t = TempDir::new("grace");
    let (repo_p, src) = (t.join("repo"), t.join("src"));
    let repo = repo_p.to_str().expect("utf8");
    let s = src.to_str().expect("utf8");
    let env = Env::local();

    write(&src.join("a.bin"), &prng_bytes(1, 6 * MIB));
    let s1 = ok(&env, &backup_args(repo, s, "p"))
        .snapshot_id
        .expect("id");
    let packs_a = packs(&repo_p);
    std::fs::remove_file(src.join("a.bin")).expect("rm");
    write(&src.join("b.bin"), &prng_bytes(2, 6 * MIB));
    let s2 = ok(&env, &backup_args(repo, s, "p"))
        .snapshot_id
        .expect("id");
    let packs_ab = packs(&repo_p);

    // Phase 1: S1 is forgotten, its packs are only marked (they are older
    // than the grace period: younger unused packs are not even marked).
    std::thread::sleep(Duration::from_millis(2500));
    forget(&env, repo, &["--keep-last", "1", "--prune-grace", "2s"]);
    let snaps = ok(&env, &["snapshots", "--repository", repo])
        .snapshots
        .expect("list");
    assert_eq!(
        snaps.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
        vec![s2.clone()]
    );
    assert_eq!(
        packs(&repo_p),
        packs_ab,
        "nothing deleted within the grace period"
    );
    assert!(repo_p.join("mover-prune/state").is_file(), "marks recorded");
    assert_restic_check(&env, repo, "after marking");
    // Prunes within the grace period of the marks delete nothing.
    forget(&env, repo, &["--prune-grace", "1h"]);
    forget(&env, repo, &[]);
    assert_eq!(packs(&repo_p), packs_ab);

    // A pack no index lists (a backup's upload): named by its hash.
    let stray = prng_bytes(3, 4000);
    let stray_id = format!("{:x}", Sha256::digest(&stray));
    write(
        &repo_p.join(format!("data/{}/{stray_id}", &stray_id[..2])),
        &stray,
    );

    // A backup of S1's content after the mark stores it again.
    write(&src.join("a.bin"), &prng_bytes(1, 6 * MIB));
    let b3 = ok(&env, &backup_args(repo, s, "p"));
    assert!(
        b3.bytes_added.expect("added") >= 6 * MIB as u64,
        "marked packs are not deduplicated against: {:?}",
        b3.bytes_added
    );
    let s3 = b3.snapshot_id.expect("id");

    // Phase 2 (grace over): S1's packs go; the stray pack was first seen
    // now, so it stays until the next prune.
    forget(&env, repo, &["--prune-grace", "0s"]);
    let now = packs(&repo_p);
    for p in &packs_a {
        assert!(
            !now.contains(p),
            "pack {p} of the forgotten snapshot deleted"
        );
    }
    for p in packs_ab.difference(&packs_a) {
        assert!(now.contains(p), "pack {p} of a kept snapshot must stay");
    }
    assert!(
        now.contains(&stray_id),
        "unindexed pack kept on first sight"
    );
    forget(&env, repo, &["--prune-grace", "0s"]);
    assert!(
        !packs(&repo_p).contains(&stray_id),
        "deleted by the next prune"
    );

    assert_restic_check(&env, repo, "after deleting");
    assert_restores(&env, repo, &s3, &src, "of the newest snapshot");
    std::fs::remove_file(src.join("a.bin")).expect("rm");
    assert_restores(&env, repo, &s2, &src, "of the older kept snapshot");
    let _ = s1;
}

/// (b) kill -9 in the middle of a backup: the next backup reuses what the
/// killed one uploaded and indexed; prune keeps the killed run's packs.
#[test]
fn killed_backup_is_reused_by_the_next() {
    let t = TempDir::new("kill");
    let (repo_p, src) = (t.join("repo"), t.join("src"));
    let repo = repo_p.to_str().expect("utf8");
    let s = src.to_str().expect("utf8");
    let env = Env::local();
    ok(&env, &["init", "--repository", repo]);
    let n = 24;
    for i in 0..n {
        write(
            &src.join(format!("f{i:02}.bin")),
            &prng_bytes(100 + i, 4 * MIB),
        );
    }
    let total = n * 4 * MIB as u64;

    // Index written after every pack, so the kill leaves indexed packs.
    let fast = env.with("MOVER_INDEX_INTERVAL_SECONDS", "0");
    let mut child = spawn_backup(&fast, repo, s);
    wait_until(
        "three index files of the running backup",
        Duration::from_secs(120),
        || files_in(&repo_p, "index").len() >= 3,
    );
    child.kill().expect("kill -9");
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the backup was killed before it finished"
    );
    assert!(
        files_in(&repo_p, "snapshots").is_empty(),
        "no snapshot from the killed run"
    );
    let killed_packs = packs(&repo_p);

    // The killed run's lock is left behind; an operator's unlock removes it.
    for l in files_in(&repo_p, "locks") {
        std::fs::remove_file(repo_p.join("locks").join(l)).expect("unlock");
    }
    // A prune in between (default grace) keeps every pack of the killed run.
    forget(&env, repo, &[]);
    let kept = packs(&repo_p);
    assert!(
        killed_packs.is_subset(&kept),
        "prune kept the killed run's packs"
    );

    let b = ok(&env, &backup_args(repo, s, "p"));
    let added = b.bytes_added.expect("added");
    assert!(
        added + 3 * 4 * MIB as u64 <= total,
        "second backup added {added} of {total} bytes: the killed run's indexed packs must be reused"
    );
    assert!(
        packs(&repo_p).is_superset(&killed_packs),
        "the reused packs are still there"
    );
    assert_restic_check(&env, repo, "after the killed and the second backup");
    assert_restores(&env, repo, "latest", &src, "after a killed backup");
}

/// (a) A backup that loses its lock while forget + prune runs: 20 rounds.
/// Each round's source repeats the content of the snapshot being
/// forgotten (the backup deduplicates against packs prune is marking) and
/// adds fresh data (garbage for later rounds to delete).
#[test]
fn prune_beside_a_backup_whose_lock_is_gone() {
    let t = TempDir::new("race");
    let (repo_p, src) = (t.join("repo"), t.join("src"));
    let repo = repo_p.to_str().expect("utf8");
    let s = src.to_str().expect("utf8");
    let env = Env::local();
    // Longer than any backup of this test (checked below).
    let grace = Duration::from_secs(30);
    let grace_arg = format!("{}s", grace.as_secs());
    for i in 0..20 {
        write(
            &src.join(format!("base/f{i}")),
            format!("base {i}\n").as_bytes(),
        );
    }
    ok(&env, &backup_args(repo, s, "p"));
    let fast = env.with("MOVER_INDEX_INTERVAL_SECONDS", "0.3");
    let (mut overlapped, mut deleted, mut recovered, mut marked) = (0, 0, 0, 0);
    for round in 0..20u64 {
        // Unused packs are marked only once older than the grace period:
        // let both toggle contents' packs (rounds 0 and 1) age past it, so
        // that later prunes mark the one a running backup is reusing (on an
        // idle machine the rounds would otherwise end before that).
        if round == 2 {
            std::thread::sleep(grace);
        }
        write(&src.join("toggle.bin"), &prng_bytes(7 + round % 2, 3 * MIB));
        write(&src.join("round.txt"), format!("{round}\n").as_bytes());
        let _ = std::fs::remove_file(src.join(format!("fresh{}.bin", round.wrapping_sub(1))));
        write(
            &src.join(format!("fresh{round}.bin")),
            &prng_bytes(1000 + round, 40 * MIB),
        );

        let before = packs(&repo_p);
        let started = Instant::now();
        let child = spawn_backup(&fast, repo, s);
        // In the middle: the backup holds its lock and has uploaded a pack.
        wait_until(
            "the backup's lock and first pack",
            Duration::from_secs(60),
            || !files_in(&repo_p, "locks").is_empty() && packs(&repo_p).len() > before.len(),
        );
        for l in files_in(&repo_p, "locks") {
            let _ = std::fs::remove_file(repo_p.join("locks").join(l));
        }
        let counts = prune_counts(
            &env,
            repo,
            &["--keep-last", "1", "--prune-grace", &grace_arg],
        );
        marked += counts.get("marked").copied().unwrap_or(0);
        recovered += counts.get("recovered").copied().unwrap_or(0);
        let mut child = child;
        if child.try_wait().expect("poll backup").is_none() {
            overlapped += 1;
        }
        let out = child.wait_with_output().expect("backup");
        let r = parse_result(&["backup"], &out);
        assert!(r.ok, "round {round}: backup failed: {:?}", r.error);
        let took = started.elapsed();
        assert!(
            took < grace,
            "round {round}: the backup took {took:?}; the test needs it shorter than the grace period"
        );
        deleted += before.difference(&packs(&repo_p)).count();

        assert_restic_check(&env, repo, &format!("in round {round}"));
        assert_restores(&env, repo, "latest", &src, &format!("in round {round}"));
    }
    // An unused pack is marked only once it is older than the grace period
    // and deleted a grace period after that: on an idle machine the rounds
    // end before both have passed, so wait and prune once more.
    if deleted == 0 {
        std::thread::sleep(grace);
        write(&src.join("round.txt"), b"after the rounds\n");
        ok(&env, &backup_args(repo, s, "p"));
        let before = packs(&repo_p);
        prune_counts(
            &env,
            repo,
            &["--keep-last", "1", "--prune-grace", &grace_arg],
        );
        deleted += before.difference(&packs(&repo_p)).count();
        assert_restic_check(&env, repo, "after the rounds");
        assert_restores(&env, repo, "latest", &src, "after the rounds");
    }
    eprintln!(
        "20 rounds: prune overlapped the backup in {overlapped}, marked {marked}, \
         recovered {recovered}, deleted {deleted} packs"
    );
    assert!(
        deleted > 0,
        "prune deleted packs over the rounds (grace passed)"
    );
    // The case a one-phase prune (or rustic's marks, which readers do not
    // see) gets wrong: a backup used packs the prune beside it marked.
    assert!(
        recovered > 0,
        "marked packs recovered for a snapshot that uses them"
    );
    assert!(
        overlapped >= 10,
        "prune ran while the backup did in {overlapped} of 20 rounds"
    );
}
