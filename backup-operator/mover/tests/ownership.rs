//! Retention per policy (two policies on one PVC and one repository keep
//! their own histories) and the owner marker (a repository of another
//! cluster, or with snapshots the mover did not write, is not pruned
//! without `--adopt`).

mod common;

use std::path::Path;

use common::result::MoverResult;
use common::*;

fn backup(env: &Env, repo: &str, src: &str, policy: &str, keep: &str) -> MoverResult {
    let mut a = backup_args(repo, src, "data");
    // backup_args uses policy pol1; replace it.
    let i = a.iter().position(|x| *x == "pol1").expect("policy arg");
    a[i] = policy;
    a.extend(["--keep-last", keep]);
    ok(env, &a)
}

/// restic's count of snapshots per `policy=` tag.
fn restic_policies(env: &Env, repo: &str) -> (usize, usize) {
    let o = restic(env, &["-r", repo, "snapshots", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let count = |p: &str| {
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|s| {
                s["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x == &format!("policy={p}")))
            })
            .count()
    };
    (count("daily"), count("hourly"))
}

fn two_policies(env: &Env, repo: &str) {
    let t = TempDir::new("policies");
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let s = src.to_str().expect("utf8");
    for i in 0..3 {
        std::fs::write(src.join("f"), format!("daily {i}")).expect("w");
        let r = backup(env, repo, s, "daily", "5");
        assert_eq!(r.forgotten, Some(vec![]));
    }
    let mut last = None;
    for i in 0..3 {
        std::fs::write(src.join("f"), format!("hourly {i}")).expect("w");
        let r = backup(env, repo, s, "hourly", "1");
        // The result lists this policy's snapshots only.
        assert_eq!(r.snapshots.as_ref().map(Vec::len), Some(1));
        last = r.snapshot_id;
    }
    assert_eq!(restic_policies(env, repo), (3, 1));
    // forget of one policy leaves the other alone, too.
    let f = ok(
        env,
        &[
            "forget",
            "--repository",
            repo,
            "--namespace",
            "ns1",
            "--policy",
            "daily",
            "--pvc",
            "data",
            "--keep-last",
            "2",
            "--prune",
        ],
    );
    assert_eq!(f.forgotten.map(|v| v.len()), Some(1));
    assert_eq!(restic_policies(env, repo), (2, 1));
    let o = restic(env, &["-r", repo, "check", "--read-data"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(last.is_some());
}

#[test]
fn two_policies_on_one_pvc_keep_their_own_history() {
    let t = TempDir::new("pol-local");
    let env = Env::local();
    two_policies(&env, t.join("repo").to_str().expect("utf8"));
    let moto = Moto::start();
    let b = moto.bucket("policies");
    two_policies(&Env::s3(), &format!("{b}/ns1/data"));
}

fn forget(env: &Env, repo: &str, adopt: bool) -> MoverResult {
    let mut a = vec![
        "forget",
        "--repository",
        repo,
        "--namespace",
        "ns1",
        "--policy",
        "pol1",
        "--pvc",
        "data",
        "--keep-last",
        "1",
        "--prune",
    ];
    if adopt {
        a.push("--adopt");
    }
    mover(env, &a)
}

#[test]
fn repository_of_another_cluster_is_not_pruned_without_adopt() {
    let t = TempDir::new("owner");
    let a_env = Env::local().with("MOVER_CLUSTER_ID", "cluster-a");
    let b_env = Env::local().with("MOVER_CLUSTER_ID", "cluster-b");
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let s = src.to_str().expect("utf8");
    let repo = t.join("repo");
    let repo_s = repo.to_str().expect("utf8");
    for i in 0..3 {
        std::fs::write(src.join("f"), format!("{i}")).expect("w");
        ok(&a_env, &backup_args(repo_s, s, "data"));
    }
    // The first backup wrote the marker; restic does not mind it.
    assert!(repo.join("mover-owner").is_file());
    let o = restic(&a_env, &["-r", repo_s, "check", "--read-data"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Cluster b (same namespace, policy and PVC names) must not prune a's.
    let r = forget(&b_env, repo_s, false);
    let e = r.error.expect("refused");
    assert!(
        e.message.contains("cluster-a") && e.message.contains("--adopt"),
        "{}",
        e.message
    );
    // Its backup is stored, but its retention is refused (a warning).
    let mut a = backup_args(repo_s, s, "data");
    a.extend(["--keep-last", "1"]);
    let r = ok(&b_env, &a);
    assert!(
        r.warning.as_deref().is_some_and(|w| w.contains("refusing")),
        "{r:?}"
    );
    // ... with a kind the operator acts on (guidance to adopt).
    assert_eq!(
        r.retention_error.as_ref().map(|e| e.kind),
        Some(common::result::ErrorKind::ForeignRepository),
        "{r:?}"
    );
    assert_eq!(
        ok(&b_env, &["snapshots", "--repository", repo_s])
            .snapshots
            .map(|v| v.len()),
        Some(4)
    );
    // Unknown cluster identity cannot prove it is cluster a either.
    assert!(!forget(&Env::local(), repo_s, false).ok);

    // Adopting: b becomes the owner, and a is refused from then on.
    let r = forget(&b_env, repo_s, true);
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.snapshots.map(|v| v.len()), Some(1));
    assert!(!forget(&a_env, repo_s, false).ok);
    assert!(forget(&b_env, repo_s, false).ok);
    let o = restic(&b_env, &["-r", repo_s, "check", "--read-data"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A backup with --adopt (what the operator passes for a policy with
    // retention.adoptRepository) takes it over and applies retention.
    let c_env = Env::local().with("MOVER_CLUSTER_ID", "cluster-c");
    std::fs::write(src.join("f"), "c").expect("w");
    let mut a = backup_args(repo_s, s, "data");
    a.extend(["--keep-last", "1"]);
    let refused = ok(&c_env, &a);
    assert!(refused.retention_error.is_some(), "{refused:?}");
    a.push("--adopt");
    let r = ok(&c_env, &a);
    assert!(r.retention_error.is_none() && r.warning.is_none(), "{r:?}");
    // b's one kept snapshot and c's refused run go; only this one stays.
    assert_eq!(r.forgotten.map(|v| v.len()), Some(2));
    assert_eq!(r.snapshots.map(|v| v.len()), Some(1));
    assert!(!forget(&b_env, repo_s, false).ok);
    let o = restic(&c_env, &["-r", repo_s, "check", "--read-data"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn repository_with_foreign_snapshots_and_no_marker_needs_adopt() {
    let t = TempDir::new("foreignsnap");
    let env = Env::local();
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("f"), "restic's").expect("w");
    let s = src.to_str().expect("utf8");
    let repo = t.join("repo");
    let repo_s = repo.to_str().expect("utf8");
    // A repository written by plain restic (e.g. VolSync's mover).
    let o = restic(&env, &["-r", repo_s, "init"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = restic(&env, &["-r", repo_s, "backup", s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Our backups go in; no marker is written over restic's history.
    for i in 0..2 {
        std::fs::write(src.join("f"), format!("{i}")).expect("w");
        let mut a = backup_args(repo_s, s, "data");
        a.extend(["--keep-last", "1"]);
        let r = ok(&env, &a);
        assert!(
            r.warning
                .as_deref()
                .is_some_and(|w| w.contains("did not write")),
            "{r:?}"
        );
    }
    assert!(!Path::new(repo_s).join("mover-owner").exists());
    let r = forget(&env, repo_s, false);
    assert!(r.error.is_some_and(|e| e.message.contains("--adopt")));
    let r = forget(&env, repo_s, true);
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.forgotten.map(|v| v.len()), Some(1));
    assert!(Path::new(repo_s).join("mover-owner").is_file());
    // restic's own snapshot is outside our policy: still there.
    let all = ok(&env, &["snapshots", "--repository", repo_s])
        .snapshots
        .expect("snaps");
    assert_eq!(all.len(), 2);
    let o = restic(&env, &["-r", repo_s, "check", "--read-data"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
