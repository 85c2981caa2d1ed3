//! `check` finds what restic's `check` finds: a clean repository (written
//! by the mover or by restic) passes with every blob verified; a flipped
//! byte in a pack, a missing pack and a missing tree are each reported
//! (`RepositoryCorrupt`, the problem named), and restic agrees. Subsets
//! `n/m` partition the packs; `--snapshot` reads only that snapshot's packs.
//!
//! `RESTIC_BIN` selects restic (`make test-integration` sets 0.18.1).

mod common;

use std::path::{Path, PathBuf};

use common::result::{ErrorKind, MoverResult};
use common::*;

fn check(repo: &str, extra: &[&str]) -> MoverResult {
    let mut args = vec!["check", "--repository", repo];
    args.extend(extra);
    mover(&Env::local(), &args)
}

/// A source with repeated chunks, zeros and small files.
fn source(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    let block = prng_bytes(7, 3 * MIB);
    let mut repeated = Vec::new();
    for _ in 0..4 {
        repeated.extend_from_slice(&block);
    }
    std::fs::write(dir.join("repeated"), &repeated).expect("write");
    std::fs::write(dir.join("zeros"), vec![0u8; 6 * MIB]).expect("write");
    for i in 0..50 {
        std::fs::write(dir.join("sub").join(format!("f{i}")), prng_bytes(i, 3000)).expect("write");
    }
}

fn pack_path(repo: &Path, name: &str) -> PathBuf {
    repo.join("data").join(&name[..2]).join(name)
}

fn restic_check_fails(repo: &str) {
    let o = restic(&Env::local(), &["-r", repo, "check", "--read-data"]);
    assert!(
        !o.status.success(),
        "restic check --read-data passed a damaged repository"
    );
}

#[test]
fn clean_repositories_pass_with_every_blob_verified() {
    let t = TempDir::new("check-clean");
    let src = t.join("src");
    source(&src);
    let repo = t.join("repo");
    let repo_s = repo.to_str().expect("utf8");
    ok(
        &Env::local(),
        &backup_args(repo_s, src.to_str().expect("utf8"), "data"),
    );
    let r = check(repo_s, &["--read-data-subset", "all"]);
    assert!(r.ok, "{:?}", r.error);
    let c = r.check.expect("report");
    assert_eq!(c.error_count, 0, "{:?}", c.errors);
    assert_eq!(c.packs_read, c.packs);
    assert!(c.blobs_verified > 50, "{c:?}");
    assert_eq!(c.snapshots, 1);

    // n/m parts partition the packs.
    let read: usize = (1..=3)
        .map(|n| {
            let part = format!("{n}/3");
            check(repo_s, &["--read-data-subset", &part])
                .check
                .expect("report")
                .packs_read
        })
        .sum();
    assert_eq!(read, c.packs);

    // A repository restic wrote.
    let rrepo = t.join("restic-repo");
    let rrepo_s = rrepo.to_str().expect("utf8");
    let env = Env::local();
    assert!(restic(&env, &["-r", rrepo_s, "init"]).status.success());
    let o = restic(
        &env,
        &["-r", rrepo_s, "backup", src.to_str().expect("utf8")],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = check(rrepo_s, &["--read-data-subset", "all"]);
    assert!(r.ok, "restic's repository: {:?}", r.error);
    assert!(r.check.expect("report").blobs_verified > 50);
}

#[test]
fn damage_is_found_and_named() {
    let t = TempDir::new("check-damage");
    let src = t.join("src");
    source(&src);
    let repo = t.join("repo");
    let repo_s = repo.to_str().expect("utf8");
    let id = ok(
        &Env::local(),
        &backup_args(repo_s, src.to_str().expect("utf8"), "data"),
    )
    .snapshot_id
    .expect("id");
    // Quick drill: every blob of the snapshot, nothing else.
    let r = check(repo_s, &["--snapshot", &id]);
    assert!(r.ok, "{:?}", r.error);
    assert!(r.check.expect("report").blobs_verified > 50);

    let mut packs: Vec<String> = packs(&repo).into_iter().collect();
    assert!(packs.len() >= 2, "{packs:?}");
    // Largest first: a data pack (tree packs are read by the structure check).
    packs.sort_by_key(|p| {
        std::cmp::Reverse(std::fs::metadata(pack_path(&repo, p)).map_or(0, |m| m.len()))
    });
    // A flipped byte inside a data pack: structure still fine, data not.
    let victim = pack_path(&repo, &packs[0]);
    let mut bytes = std::fs::read(&victim).expect("read pack");
    bytes[10] ^= 0x40;
    std::fs::write(&victim, &bytes).expect("write pack");
    assert!(
        check(repo_s, &[]).ok,
        "structure alone cannot see a flipped byte"
    );
    let r = check(repo_s, &["--read-data-subset", "all"]);
    assert!(!r.ok);
    assert_eq!(r.error.expect("error").kind, ErrorKind::RepositoryCorrupt);
    let c = r.check.expect("report");
    assert!(
        c.errors
            .iter()
            .any(|e| e.contains(&packs[0]) && e.contains("does not match its name")),
        "{:?}",
        c.errors
    );
    restic_check_fails(repo_s);
    bytes[10] ^= 0x40;
    std::fs::write(&victim, &bytes).expect("restore pack");
    assert!(check(repo_s, &["--read-data-subset", "all"]).ok);

    // A missing pack: found by the structure check alone.
    let gone = pack_path(&repo, &packs[1]);
    let saved = std::fs::read(&gone).expect("read");
    std::fs::remove_file(&gone).expect("remove");
    let r = check(repo_s, &[]);
    assert!(!r.ok);
    let c = r.check.expect("report");
    assert!(
        c.errors
            .iter()
            .any(|e| e.contains(&packs[1]) && e.contains("missing")),
        "{:?}",
        c.errors
    );
    assert!(
        c.error_count >= 2,
        "the pack and what lived in it: {:?}",
        c.errors
    );
    restic_check_fails(repo_s);
    std::fs::write(&gone, saved).expect("put back");
    assert!(check(repo_s, &[]).ok);
    assert_restic_check(&Env::local(), repo_s, "after putting everything back");
}
