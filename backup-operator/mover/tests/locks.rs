//! Lock cases, each named: unreadable, empty, stale (exclusive vs shared),
//! unparsable time, dead process, un-GETtable (local and S3), foreign
//! (written by real restic), refresh failure and removal while held.
//! Locks are restic >= 0.15's: whatever cannot be read counts as held, stale
//! locks are held until the explicit `unlock`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy, Rule};
use common::result::{ErrorKind, MoverResult};
use common::*;
use sha2::{Digest, Sha256};

fn hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// A repository with one snapshot; returns (repo, source) paths as strings.
fn repo_with_backup(t: &TempDir, env: &Env) -> (String, String) {
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("a"), "alpha").expect("w");
    let repo = t.join("repo").to_str().expect("utf8").to_string();
    let src = src.to_str().expect("utf8").to_string();
    ok(env, &backup_args(&repo, &src, "data"));
    ok(env, &backup_args(&repo, &src, "data"));
    (repo, src)
}

fn forget_args(repo: &str) -> Vec<&str> {
    vec![
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
        "--lock-wait-seconds",
        "1",
    ]
}

fn backup_waiting(repo: &str, src: &str, secs: &'static str) -> Vec<String> {
    let mut a: Vec<String> = backup_args(repo, src, "data")
        .into_iter()
        .map(String::from)
        .collect();
    a.extend(["--lock-wait-seconds".into(), secs.into()]);
    a
}

fn run(env: &Env, args: &[String]) -> MoverResult {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    mover(env, &a)
}

/// The failure of `args`, which must be `kind`; returns its message.
fn fails(env: &Env, args: &[&str], kind: ErrorKind) -> String {
    let r = mover(env, args);
    assert!(!r.ok, "{args:?} unexpectedly succeeded");
    let e = r.error.expect("error");
    assert_eq!(e.kind, kind, "{args:?}: {}", e.message);
    e.message
}

/// Writes a lock file with `time` through the mover (hidden `lock
/// --time`); `host` becomes its hostname. Returns the lock id.
fn plant(env: &Env, repo: &str, exclusive: bool, time: &str, host: &str) -> String {
    let mut a = vec!["lock", "--repository", repo, "--time", time];
    if exclusive {
        a.push("--exclusive");
    }
    let out = mover_cmd(&env.with("HOSTNAME", host), &a)
        .output()
        .expect("run mover lock");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("planted ")
        .expect("planted <id>")
        .to_string()
}

fn hours_ago(h: i64) -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(h)).to_string()
}

fn lock_names(repo: &str) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(Path::new(repo).join("locks")) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn unlock(env: &Env, repo: &str, all: bool) -> MoverResult {
    let mut a = vec!["unlock", "--repository", repo];
    if all {
        a.push("--remove-all");
    }
    ok(env, &a)
}

#[test]
fn unreadable_lock_counts_as_held_until_unlock_remove_all() {
    let t = TempDir::new("unreadable");
    let env = Env::local();
    let (repo, src) = repo_with_backup(&t, &env);
    // Garbage named by its hash: it does not decrypt.
    let garbage = prng_bytes(7, 300);
    let name = hex(&garbage);
    std::fs::write(Path::new(&repo).join("locks").join(&name), &garbage).expect("w");

    let msg = fails(&env, &forget_args(&repo), ErrorKind::RepositoryLocked);
    assert!(msg.contains("invalid lock file"), "{msg}");
    assert!(msg.contains("unlock --remove-all"), "{msg}");
    // Shared locks are refused too: it might be an exclusive lock.
    let r = run(&env, &backup_waiting(&repo, &src, "1"));
    assert_eq!(r.error.map(|e| e.kind), Some(ErrorKind::RepositoryLocked));
    assert_eq!(
        ok(&env, &["snapshots", "--repository", &repo])
            .snapshots
            .map(|s| s.len()),
        Some(2)
    );

    // Plain unlock keeps it (it is not known to be stale), and says so.
    let u = unlock(&env, &repo, false);
    assert_eq!(u.removed_locks, Some(vec![]));
    assert!(u.warning.is_some_and(|w| w.contains("invalid lock file")));
    // ... as a list the operator puts into its LocksKept Event.
    assert_eq!(u.kept_locks.map(|k| k.len()), Some(1));
    assert_eq!(lock_names(&repo), vec![name.clone()]);
    let u = unlock(&env, &repo, true);
    assert_eq!(u.removed_locks, Some(vec![name[..8].to_string()]));
    let f = ok(&env, &forget_args(&repo));
    assert_eq!(f.forgotten.map(|v| v.len()), Some(1));
    assert!(lock_names(&repo).is_empty());
}

#[test]
fn empty_and_misnamed_lock_files() {
    let t = TempDir::new("empty");
    let env = Env::local();
    let (repo, src) = repo_with_backup(&t, &env);
    let locks = Path::new(&repo).join("locks");
    // Empty: an interrupted upload, ignored (as restic does).
    std::fs::write(locks.join(hex(b"")), b"").expect("w");
    ok(&env, &backup_args(&repo, &src, "data"));
    // A valid lock under a name that is not its hash: held.
    let id = plant(
        &env,
        &repo,
        false,
        &jiff::Timestamp::now().to_string(),
        "elsewhere",
    );
    let wrong = "0".repeat(64);
    std::fs::rename(locks.join(&id), locks.join(&wrong)).expect("mv");
    let msg = fails(&env, &forget_args(&repo), ErrorKind::RepositoryLocked);
    assert!(msg.contains("does not match its name"), "{msg}");
    // unlock removes the empty file only.
    let u = unlock(&env, &repo, false);
    assert_eq!(u.removed_locks.map(|v| v.len()), Some(1));
    assert_eq!(lock_names(&repo), vec![wrong]);
}

#[test]
fn stale_locks_block_exclusive_locks_until_unlock() {
    let t = TempDir::new("stale");
    let env = Env::local();
    let (repo, src) = repo_with_backup(&t, &env);

    // A stale exclusive lock (a prune killed two hours ago) blocks everyone.
    plant(&env, &repo, true, &hours_ago(2), "elsewhere");
    let msg = fails(&env, &forget_args(&repo), ErrorKind::RepositoryLocked);
    assert!(msg.contains("stale"), "{msg}");
    let r = run(&env, &backup_waiting(&repo, &src, "1"));
    assert_eq!(r.error.map(|e| e.kind), Some(ErrorKind::RepositoryLocked));
    let u = unlock(&env, &repo, false);
    assert_eq!(u.removed_locks.map(|v| v.len()), Some(1));

    // A stale shared lock (a backup killed long ago): other backups go on,
    // but prune's exclusive lock is never let through.
    plant(&env, &repo, false, &hours_ago(2), "elsewhere");
    ok(&env, &backup_args(&repo, &src, "data"));
    let msg = fails(&env, &forget_args(&repo), ErrorKind::RepositoryLocked);
    assert!(msg.contains("shared lock"), "{msg}");
    // A fresh lock of another host is kept by unlock; the stale one goes.
    let fresh = plant(
        &env,
        &repo,
        false,
        &jiff::Timestamp::now().to_string(),
        "elsewhere",
    );
    let u = unlock(&env, &repo, false);
    assert_eq!(u.removed_locks.map(|v| v.len()), Some(1));
    assert_eq!(lock_names(&repo), vec![fresh]);
    unlock(&env, &repo, true);
    ok(&env, &forget_args(&repo));
    let o = restic(&env, &["-r", &repo, "check", "--read-data"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn unparsable_lock_time_is_held() {
    let t = TempDir::new("badtime");
    let env = Env::local();
    let (repo, _src) = repo_with_backup(&t, &env);
    let id = plant(&env, &repo, false, "not a time", "elsewhere");
    let msg = fails(&env, &forget_args(&repo), ErrorKind::RepositoryLocked);
    assert!(msg.contains("does not parse"), "{msg}");
    // Never stale, so only --remove-all removes it.
    unlock(&env, &repo, false);
    assert_eq!(lock_names(&repo), vec![id]);
    unlock(&env, &repo, true);
    ok(&env, &forget_args(&repo));
}

#[test]
fn lock_of_a_dead_process_on_this_host_is_stale_for_unlock() {
    let t = TempDir::new("deadpid");
    let env = Env::local();
    let (repo, _src) = repo_with_backup(&t, &env);
    // The planting process has exited: its fresh lock is held for forget...
    let host = "this-test-host";
    plant(&env, &repo, true, &jiff::Timestamp::now().to_string(), host);
    fails(&env, &forget_args(&repo), ErrorKind::RepositoryLocked);
    // ...until unlock on the same host sees that the process is gone.
    let u = ok(
        &env.with("HOSTNAME", host),
        &["unlock", "--repository", &repo],
    );
    assert_eq!(u.removed_locks.map(|v| v.len()), Some(1));
    ok(&env, &forget_args(&repo));
}

#[test]
fn ungettable_local_lock_is_held() {
    // Running as root, a mode-000 file is still readable; a directory under
    // a lock's name fails the read (EISDIR) just as a failed GET does.
    let t = TempDir::new("ungettable");
    let env = Env::local();
    let (repo, src) = repo_with_backup(&t, &env);
    let name = hex(b"a lock we cannot read");
    std::fs::create_dir_all(Path::new(&repo).join("locks").join(&name)).expect("mkdir");
    let r = run(&env, &backup_waiting(&repo, &src, "1"));
    let e = r.error.expect("backup must fail");
    assert_eq!(e.kind, ErrorKind::RepositoryLocked);
    assert!(e.message.contains("cannot be read"), "{}", e.message);
    std::fs::remove_dir(Path::new(&repo).join("locks").join(&name)).expect("rmdir");
    ok(&env, &backup_args(&repo, &src, "data"));
}

#[test]
fn ungettable_s3_lock_is_held() {
    let moto = Moto::start();
    moto.bucket("locks");
    let proxy = Proxy::start(moto.port);
    let env = Env::s3().with("MOVER_S3_RETRIES", "1");
    let t = TempDir::new("s3lock");
    std::fs::write(t.join("f"), "x").expect("w");
    let src = t.path().to_str().expect("utf8");
    let repo = proxy.repo("locks/ns1/data");
    ok(&env, &backup_args(&repo, src, "data"));
    // A valid shared lock of someone else: backups may run beside it...
    let id = plant(
        &env,
        &repo,
        false,
        &jiff::Timestamp::now().to_string(),
        "elsewhere",
    );
    ok(&env, &backup_args(&repo, src, "data"));
    // ...but not when its GET fails: it might be an exclusive lock.
    proxy.add(Rule::new(
        Some("GET"),
        &format!("/locks/{id}"),
        Fault::Status(500, "InternalError"),
        None,
    ));
    let r = run(&env, &backup_waiting(&repo, src, "2"));
    let e = r.error.expect("backup must fail");
    assert_eq!(e.kind, ErrorKind::RepositoryLocked, "{}", e.message);
    assert!(e.message.contains("cannot be read"), "{}", e.message);
    assert!(proxy.faults() >= 2, "the lock GET was tried, and retried");
    proxy.clear();
    ok(&env, &backup_args(&repo, src, "data"));
}

#[test]
fn restic_lock_is_honoured() {
    let t = TempDir::new("foreign");
    let env = Env::local();
    let (repo, src) = repo_with_backup(&t, &env);
    // restic holds a shared lock while it reads stdin.
    let mut restic_backup = Command::new(common::restic_bin());
    restic_backup
        .args([
            "--no-cache",
            "-r",
            &repo,
            "backup",
            "--stdin",
            "--stdin-filename",
            "s",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    env.apply(&mut restic_backup);
    let mut child = restic_backup.spawn().expect("restic");
    let deadline = Instant::now() + Duration::from_secs(30);
    while lock_names(&repo).is_empty() {
        assert!(Instant::now() < deadline, "restic took no lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    let msg = fails(&env, &forget_args(&repo), ErrorKind::RepositoryLocked);
    assert!(msg.contains("shared lock"), "{msg}");
    // Backups share restic's lock.
    ok(&env, &backup_args(&repo, &src, "data"));
    // A patient forget waits for restic to finish, then runs.
    let mut a = forget_args(&repo);
    a.pop();
    a.push("60");
    let rf = t.join("forget.json");
    let rf_s = rf.to_str().expect("utf8");
    a.extend(["--result-file", rf_s]);
    let mut forget = mover_cmd(&env, &a)
        .stderr(Stdio::null())
        .spawn()
        .expect("forget");
    std::thread::sleep(Duration::from_secs(2));
    assert!(forget.try_wait().expect("wait").is_none(), "forget waits");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"from restic\n").expect("write");
    drop(stdin);
    assert!(child.wait().expect("restic").success());
    assert!(forget.wait().expect("forget").success());
    let r: MoverResult =
        serde_json::from_str(&std::fs::read_to_string(&rf).expect("result")).expect("json");
    assert_eq!(r.snapshots.map(|s| s.len()), Some(1));
    assert!(lock_names(&repo).is_empty());
}

/// Holds a lock in a child process; returns it once it printed "locked".
fn holder(env: &Env, repo: &str, exclusive: bool, seconds: &str) -> std::process::Child {
    let mut a = vec!["lock", "--repository", repo, "--seconds", seconds];
    if exclusive {
        a.push("--exclusive");
    }
    let mut c = mover_cmd(env, &a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lock holder");
    let mut line = String::new();
    BufReader::new(c.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "locked");
    c
}

fn stderr_of(c: std::process::Child) -> (bool, String, Duration) {
    let start = Instant::now();
    let out = c.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn failing_refresh_stops_the_holder_before_the_lock_turns_stale() {
    let t = TempDir::new("refresh");
    // Stale after 6 s: refresh every 1 s, give up after 4.5 s without one.
    let env = Env::local().with("MOVER_LOCK_STALE_SECONDS", "6");
    let (repo, _src) = repo_with_backup(&t, &env);
    let c = holder(&env, &repo, true, "60");
    // Break the locks directory: refreshes fail from now on.
    let locks = Path::new(&repo).join("locks");
    let moved = Path::new(&repo).join("locks.moved");
    std::fs::rename(&locks, &moved).expect("mv");
    std::fs::write(&locks, "not a directory").expect("w");
    let (ok_exit, stderr, took) = stderr_of(c);
    assert!(!ok_exit, "holder must fail");
    assert!(stderr.contains("could not be refreshed"), "{stderr}");
    eprintln!("holder stopped {took:?} after its refreshes began to fail");
    assert!(took < Duration::from_secs(20), "stopped in {took:?}");
    std::fs::remove_file(&locks).expect("rm");
    std::fs::rename(&moved, &locks).expect("mv back");
}

#[test]
fn removing_a_held_lock_stops_the_holder() {
    let t = TempDir::new("removed");
    let env = Env::local().with("MOVER_LOCK_STALE_SECONDS", "6");
    let (repo, _src) = repo_with_backup(&t, &env);
    let c = holder(&env, &repo, false, "60");
    unlock(&env, &repo, true);
    let (ok_exit, stderr, took) = stderr_of(c);
    assert!(!ok_exit, "holder must fail");
    assert!(stderr.contains("was removed by someone else"), "{stderr}");
    eprintln!("holder stopped {took:?} after its lock was removed");
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
}

#[test]
fn backup_whose_lock_is_removed_stops_without_a_snapshot() {
    // `unlock --remove-all` while a backup runs (what an operator must not
    // do, but a prune may then run): the backup notices at its next
    // refresh, stops, and writes neither index nor snapshot.
    let t = TempDir::new("lostbackup");
    let env = Env::local().with("MOVER_LOCK_STALE_SECONDS", "6");
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    for i in 0..6 {
        random_file(&src.join(format!("f{i}")), 48 * MIB);
    }
    let repo = t.join("repo");
    let repo_s = repo.to_str().expect("utf8");
    let rf = t.join("result.json");
    let mut a = backup_args(repo_s, src.to_str().expect("utf8"), "data");
    let rf_s = rf.to_str().expect("utf8");
    a.extend(["--result-file", rf_s, "--backup-threads", "1"]);
    let mut child = mover_cmd(&env, &a)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(120);
    while files_under(&repo.join("data")) < 1 {
        assert!(Instant::now() < deadline, "no pack written");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "backup ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unlock(&env, repo_s, true);
    assert!(!child.wait().expect("wait").success());
    let r: MoverResult =
        serde_json::from_str(&std::fs::read_to_string(&rf).expect("result")).expect("json");
    let e = r.error.expect("error");
    assert!(
        e.message.contains("was removed by someone else"),
        "{}",
        e.message
    );
    assert_eq!(files_under(&repo.join("snapshots")), 0, "no snapshot");
    assert_eq!(files_under(&repo.join("index")), 0, "no index");
    assert!(lock_names(repo_s).is_empty());
}

/// restic as selected by `RESTIC_BIN` (default: `restic` on PATH), and its
/// (major, minor) version.
fn restic_version() -> (String, (u32, u32)) {
    let bin = common::restic_bin();
    let out = Command::new(&bin).arg("version").output().expect("restic");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: Vec<u32> = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("0.0")
        .split('.')
        .filter_map(|x| x.parse().ok())
        .collect();
    (
        bin,
        (
            v.first().copied().unwrap_or(0),
            v.get(1).copied().unwrap_or(0),
        ),
    )
}

#[test]
fn restic_applies_the_same_rules_to_the_movers_locks() {
    let (bin, version) = restic_version();
    let t = TempDir::new("resticrules");
    let env = Env::local();
    let (repo, src) = repo_with_backup(&t, &env);
    let restic_backup = || {
        let mut c = Command::new(&bin);
        c.args(["--no-cache", "-r", &repo, "backup", &src]);
        env.apply(&mut c);
        c.output().expect("restic")
    };
    // A stale exclusive lock written by the mover stops restic too.
    plant(&env, &repo, true, &hours_ago(2), "elsewhere");
    let o = restic_backup();
    assert!(!o.status.success(), "restic must refuse");
    assert!(String::from_utf8_lossy(&o.stderr).contains("locked"));
    unlock(&env, &repo, true);
    // An undecryptable lock: restic >= 0.15 refuses as the mover does.
    let garbage = prng_bytes(9, 200);
    std::fs::write(Path::new(&repo).join("locks").join(hex(&garbage)), &garbage).expect("w");
    let o = restic_backup();
    if version >= (0, 15) {
        // (0.18.1: "unable to create lock in backend: ciphertext
        // verification failed", after retrying for about 35 s.)
        assert!(!o.status.success(), "restic {version:?} must refuse");
        assert!(String::from_utf8_lossy(&o.stderr).contains("lock"));
    } else {
        // restic 0.14 still ignored such files (what the mover used to do).
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    unlock(&env, &repo, true);
    // The owner marker and everything else pass restic's full check.
    assert!(Path::new(&repo).join("mover-owner").is_file());
    let mut c = Command::new(&bin);
    c.args(["--no-cache", "-r", &repo, "check", "--read-data"]);
    env.apply(&mut c);
    let o = c.output().expect("restic");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("restic {version:?} applies the mover's lock rules");
}
