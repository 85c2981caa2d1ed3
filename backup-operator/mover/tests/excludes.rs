//! `--exclude` globs and `lost+found`: what a backup leaves out, with
//! `restic check --read-data` still clean and restic seeing the same tree.

mod common;

use common::result::ErrorKind;
use common::*;

fn write(root: &std::path::Path, rel: &str, data: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, data).expect("write");
}

#[test]
fn excluded_paths_and_lost_found_are_left_out_and_restic_agrees() {
    let t = TempDir::new("excludes");
    let src = t.join("src");
    for (rel, data) in [
        ("keep.txt", "keep"),
        ("a/keep.txt", "keep a"),
        ("a/skip.tmp", "tmp"),
        ("cache/big", "cache"),
        ("sub/cache/y", "nested cache"),
        ("logs/old/1", "old"),
        ("logs/new/2", "new"),
        ("lost+found/#123", "fsck leftovers"),
        ("sub/lost+found/kept", "not the file system's"),
    ] {
        write(&src, rel, data);
    }
    let env = Env::local();
    let repo = t.join("repo");
    let (repo_s, src_s) = (repo.to_str().expect("utf8"), src.to_str().expect("utf8"));
    let mut args = backup_args(repo_s, src_s, "p");
    args.extend([
        "--exclude",
        "*.tmp",
        "--exclude",
        "cache",
        "--exclude",
        "logs/old/**",
    ]);
    let r = ok(&env, &args);
    let id = r.snapshot_id.expect("snapshot id");
    assert_restic_check(&env, repo_s, "after a backup with excludes");

    let out = t.join("out");
    let out_s = out.to_str().expect("utf8");
    ok(
        &env,
        &[
            "restore",
            "--repository",
            repo_s,
            "--snapshot",
            &id,
            "--target",
            out_s,
        ],
    );
    for kept in [
        "keep.txt",
        "a/keep.txt",
        "logs/new/2",
        "sub/lost+found/kept",
    ] {
        assert!(out.join(kept).is_file(), "{kept} restored");
    }
    for gone in [
        "a/skip.tmp",
        "cache",
        "sub/cache",
        "logs/old/1",
        "lost+found",
    ] {
        assert!(!out.join(gone).exists(), "{gone} left out");
    }
    // restic reads the same tree.
    let ls = restic(&env, &["-r", repo_s, "ls", &id]);
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.status.success(),
        "restic ls: {}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert!(listing.contains("/data/logs/new/2"), "{listing}");
    assert!(
        !listing.contains("skip.tmp") && !listing.contains("#123"),
        "{listing}"
    );
}

#[test]
fn a_source_holding_only_lost_found_is_empty() {
    let t = TempDir::new("lost-found");
    let src = t.join("src");
    write(&src, "lost+found/#1", "x");
    let env = Env::local();
    let repo = t.join("repo");
    let (repo_s, src_s) = (repo.to_str().expect("utf8"), src.to_str().expect("utf8"));
    assert_eq!(
        err_kind(&env, &backup_args(repo_s, src_s, "p")),
        ErrorKind::SourceEmpty
    );
    write(&src, "data.txt", "y");
    ok(&env, &backup_args(repo_s, src_s, "p"));
}
