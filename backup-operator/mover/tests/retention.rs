//! The mover's `forget` with restic's keep rules forgets exactly what
//! restic 0.18.1's `forget --keep-*` forgets on the same repository
//! (snapshots written by restic in Europe/Berlin, buckets in that zone),
//! and the repository stays clean (`restic check --read-data`).
//!
//! `RESTIC_BIN` selects restic (`make test-integration` sets 0.18.1).

mod common;

use std::collections::BTreeSet;

use common::result::MoverResult;
use common::{Env, TempDir, assert_restic_check, mover, restic};

const TAGS: [&str; 6] = ["--tag", "ns=ns", "--tag", "policy=p", "--tag", "pvc=data"];

fn restic_ok(env: &Env, args: &[&str]) -> String {
    let out = restic(env, args);
    assert!(
        out.status.success(),
        "restic {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Short ids (what the mover reports) of restic's `forget --dry-run --json`
/// groups under `key`.
fn ids(json: &str, key: &str) -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_str(json).expect("restic json");
    v.as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g[key].as_array().cloned().unwrap_or_default())
        .map(|s| s["short_id"].as_str().expect("short_id").to_string())
        .collect()
}

/// `restic forget --dry-run --json` of the tagged snapshots with `flags`.
fn restic_forget(env: &Env, repo: &str, flags: &[&str]) -> String {
    let mut args = vec!["-r", repo, "forget", "--dry-run", "--json"];
    args.extend(TAGS);
    args.extend(flags);
    restic_ok(env, &args)
}

/// The mover's `forget` of the same snapshots with `flags` and `mode`
/// (`--dry-run` or `--prune`), buckets in Europe/Berlin.
fn mover_forget(env: &Env, repo: &str, flags: &[&str], mode: &str) -> MoverResult {
    let mut args = vec![
        "forget",
        "--repository",
        repo,
        "--namespace",
        "ns",
        "--policy",
        "p",
        "--pvc",
        "data",
        "--time-zone",
        "Europe/Berlin",
        "--adopt",
        mode,
    ];
    args.extend(flags);
    mover(env, &args)
}

#[test]
fn forget_with_keep_rules_matches_restic() {
    let t = TempDir::new("retention");
    let env = Env::local();
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("f"), b"retention").expect("write");
    let repo = t.join("repo");
    let repo_s = repo.to_str().expect("utf8");
    restic_ok(&env, &["-r", repo_s, "init"]);
    // Around the end of DST in Berlin, a week boundary and a month boundary.
    let times = [
        "2024-10-26 23:30:00",
        "2024-10-27 01:30:00",
        "2024-10-27 02:30:00",
        "2024-10-27 03:30:00",
        "2024-10-28 00:10:00",
        "2024-10-28 23:50:00",
        "2024-10-31 23:59:00",
        "2024-11-01 00:01:00",
        "2024-11-03 12:00:00",
        "2024-11-04 12:00:00",
        "2024-11-15 12:00:00",
        "2024-12-30 12:00:00",
        "2025-01-01 12:00:00",
        "2025-01-02 12:00:00",
    ];
    for time in times {
        let mut args = vec!["-r", repo_s, "backup", "-q", "--host", "h", "--time", time];
        args.extend(TAGS);
        args.push(src.to_str().expect("utf8"));
        restic_ok(&env.with("TZ", "Europe/Berlin"), &args);
    }
    let rules: [&[&str]; 3] = [
        &["--keep-daily", "4", "--keep-weekly", "2"],
        &[
            "--keep-hourly",
            "3",
            "--keep-monthly",
            "2",
            "--keep-yearly",
            "1",
        ],
        &["--keep-within", "2m3d", "--keep-last", "2"],
    ];
    for flags in rules {
        let want = ids(&restic_forget(&env, repo_s, flags), "remove");
        let r = mover_forget(&env, repo_s, flags, "--dry-run");
        assert!(r.ok, "mover forget {flags:?}: {:?}", r.error);
        let got: BTreeSet<String> = r
            .forgotten
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        assert!(!want.is_empty(), "{flags:?}: restic forgets something");
        assert_eq!(
            got, want,
            "{flags:?}: forgotten snapshots differ from restic's"
        );
    }
    // For real: what is left is what restic keeps, and the repository is clean.
    let flags = rules[0];
    let keep = ids(&restic_forget(&env, repo_s, flags), "keep");
    let r = mover_forget(&env, repo_s, flags, "--prune");
    assert!(r.ok, "mover forget: {:?}", r.error);
    let left = restic_ok(&env, &["-r", repo_s, "snapshots", "--json"]);
    let left: BTreeSet<String> = serde_json::from_str::<serde_json::Value>(&left)
        .expect("json")
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["short_id"].as_str().expect("short_id").to_string())
        .collect();
    assert_eq!(left, keep);
    assert_restic_check(&env, repo_s, "after forget --prune with keep rules");
}
