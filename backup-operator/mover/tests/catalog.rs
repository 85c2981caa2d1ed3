//! `catalog`: one marked JSON line per repository, with what the operator
//! needs to rebuild its objects on a new cluster (full id, partial, the
//! recorded PVC spec), and listing errors per repository.

mod common;

use std::process::Command;

use common::*;

const MARKER: &str = "backup-catalog/v1 ";

fn lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(MARKER))
        .map(|j| serde_json::from_str(j).expect("a catalog line is JSON"))
        .collect()
}

#[test]
fn catalog_lists_each_repository_with_partial_and_the_recorded_pvc_spec() {
    let t = TempDir::new("catalog");
    let env = Env::local();
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("open"), "fine").expect("w");
    let repo = t.join("repo");
    let repo_s = repo.to_str().expect("utf8").to_string();
    let src_s = src.to_str().expect("utf8").to_string();
    let spec = r#"{"size":"2Gi","accessModes":["ReadWriteOnce"],"labels":{"app":"db"}}"#;
    let good = ok(
        &env.with("MOVER_PVC_SPEC", spec),
        &backup_args(&repo_s, &src_s, "vol"),
    );
    // A second backup the mover (as uid 1000) cannot read completely.
    std::fs::write(src.join("secret"), "no").expect("w");
    let st = Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(t.path())
        .status()
        .expect("chown");
    assert!(st.success());
    std::fs::set_permissions(
        src.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .expect("chmod");
    let mut c = Command::new("setpriv");
    c.args(["--reuid=1000", "--regid=1000", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_backup-mover"))
        .args(backup_args(&repo_s, &src_s, "vol"));
    env.apply(&mut c);
    let out = c.output().expect("setpriv (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let missing = t.join("none");
    let out = mover_cmd(
        &env,
        &[
            "catalog",
            "--policy",
            "pol1",
            "--target",
            &format!("vol={repo_s}"),
            "--target",
            &format!("other={}", missing.to_str().expect("utf8")),
        ],
    )
    .output()
    .expect("run catalog");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l = lines(&out.stdout);
    assert_eq!(l.len(), 2, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        (
            l[1]["pvc"].as_str(),
            l[1]["ok"].as_bool(),
            l[1]["exists"].as_bool()
        ),
        (Some("other"), Some(true), Some(false))
    );
    let snaps = l[0]["snapshots"].as_array().expect("snapshots");
    assert_eq!(snaps.len(), 2);
    // Newest first: the partial one, its skipped path kept in the repository.
    assert_eq!(snaps[0]["partial"].as_bool(), Some(true));
    assert!(
        snaps[0]["warning"]
            .as_str()
            .is_some_and(|w| w.contains("secret")),
        "{:?}",
        snaps[0]
    );
    let first = &snaps[1];
    assert_eq!(first["id"].as_str(), good.snapshot_id.as_deref());
    assert!(
        first["fullId"]
            .as_str()
            .is_some_and(|f| f.len() == 64 && f.starts_with(first["id"].as_str().unwrap_or("-")))
    );
    assert_eq!(first["pvcSpec"]["size"].as_str(), Some("2Gi"));
    assert_eq!(first["pvcSpec"]["labels"]["app"].as_str(), Some("db"));
    assert!(first.get("partial").is_none());
    assert!(first["files"].as_u64().is_some_and(|f| f >= 1));

    // Another policy's snapshots are not listed; a wrong password is an
    // error of that repository only.
    let out = mover_cmd(
        &env,
        &[
            "catalog",
            "--policy",
            "other",
            "--target",
            &format!("vol={repo_s}"),
        ],
    )
    .output()
    .expect("run catalog");
    assert_eq!(
        lines(&out.stdout)[0]["snapshots"].as_array().map(Vec::len),
        Some(0)
    );
    let out = mover_cmd(
        &env.with("RESTIC_PASSWORD", "wrong"),
        &[
            "catalog",
            "--policy",
            "pol1",
            "--target",
            &format!("vol={repo_s}"),
        ],
    )
    .output()
    .expect("run catalog");
    let l = lines(&out.stdout);
    assert_eq!(l[0]["ok"].as_bool(), Some(false));
    assert_eq!(l[0]["error"]["kind"].as_str(), Some("WrongPassword"));
}
