//! Long runs on a bad day: SIGTERM during a backup, S3 errors and stalls
//! (through a fault-injecting proxy in front of moto), and a source whose
//! entries cannot all be read.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy, Rule};
use common::result::{ErrorKind, MoverResult};
use common::*;

fn check_read_data(env: &Env, repo: &str) {
    let o = restic(env, &["-r", repo, "check", "--read-data"]);
    assert!(
        o.status.success(),
        "restic check --read-data: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn sigterm_during_backup_reports_interrupted_and_leaves_no_lock() {
    let t = TempDir::new("sigterm");
    let env = Env::local();
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
    // Signal once the first packs are uploaded: the backup is under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    while files_under(&repo.join("data")) < 2 {
        assert!(Instant::now() < deadline, "no pack written");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "backup ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Instant::now();
    // SAFETY: signalling our own child by its pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().expect("wait");
    let stopped = sent.elapsed();
    assert!(!status.success());
    let r: MoverResult =
        serde_json::from_str(&std::fs::read_to_string(&rf).expect("result")).expect("json");
    let e = r.error.expect("error");
    assert_eq!(e.kind, ErrorKind::Interrupted, "{}", e.message);
    assert!(e.message.contains("SIGTERM"), "{}", e.message);
    eprintln!("backup stopped {stopped:?} after SIGTERM");
    assert!(stopped < Duration::from_secs(20));
    assert_eq!(files_under(&repo.join("locks")), 0, "lock removed");
    assert_eq!(files_under(&repo.join("snapshots")), 0, "no snapshot");
    check_read_data(&env, repo_s);
    // The next run completes.
    let mut a = backup_args(repo_s, src.to_str().expect("utf8"), "data");
    a.extend(["--backup-threads", "2"]);
    ok(&env, &a);
    check_read_data(&env, repo_s);
}

fn restore_matches(env: &Env, repo: &str, src: &Path, t: &TempDir) {
    let out = t.join("restored");
    let out_s = out.to_str().expect("utf8");
    ok(env, &["restore", "--repository", repo, "--target", out_s]);
    for e in std::fs::read_dir(src).expect("ls") {
        let e = e.expect("entry");
        let a = std::fs::read(e.path()).expect("read");
        let b = std::fs::read(out.join(e.file_name())).expect("read restored");
        assert!(a == b, "{:?} differs", e.file_name());
    }
    std::fs::remove_dir_all(&out).expect("rm");
}

#[test]
fn s3_errors_resets_and_stalls_are_retried() {
    let moto = Moto::start();
    let direct = moto.bucket("faults");
    let proxy = Proxy::start(moto.port);
    let repo = proxy.repo("faults/ns1/vol");
    let env = Env::s3()
        .with("MOVER_S3_RETRIES", "10")
        .with("MOVER_S3_TIMEOUT_SECONDS", "2");
    let t = TempDir::new("s3faults");
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    for i in 0..3 {
        random_file(&src.join(format!("f{i}")), 10 * MIB);
    }
    let s = src.to_str().expect("utf8");
    let rules = [
        Rule::new(
            Some("PUT"),
            "/data/",
            Fault::Status(503, "SlowDown"),
            Some(3),
        ),
        Rule::new(Some("PUT"), "/data/", Fault::Reset, Some(1)),
        Rule::new(
            Some("PUT"),
            "/snapshots/",
            Fault::Status(500, "InternalError"),
            Some(2),
        ),
        Rule::new(
            Some("PUT"),
            "/locks/",
            Fault::Stall(Duration::from_secs(6)),
            Some(1),
        ),
        Rule::new(
            Some("GET"),
            "/keys/",
            Fault::Status(429, "TooManyRequests"),
            Some(1),
        ),
    ];
    let injected: u64 = rules.iter().map(|r| u64::from(r.times.unwrap_or(0))).sum();
    for r in rules {
        proxy.add(r);
    }
    let start = Instant::now();
    ok(&env, &backup_args(&repo, s, "data"));
    eprintln!(
        "first backup with {injected} faults took {:?}",
        start.elapsed()
    );
    assert_eq!(proxy.faults(), injected, "every fault was served");

    // An incremental run whose index and snapshot reads are reset.
    random_file(&src.join("f1"), 10 * MIB);
    proxy.add(Rule::new(Some("GET"), "/index/", Fault::Reset, Some(2)));
    proxy.add(Rule::new(
        Some("GET"),
        "/snapshots/",
        Fault::Status(503, "SlowDown"),
        Some(2),
    ));
    ok(&env, &backup_args(&repo, s, "data"));
    assert_eq!(proxy.faults(), injected + 4);
    proxy.clear();
    check_read_data(&env, &format!("{direct}/ns1/vol"));
    restore_matches(&env, &repo, &src, &t);

    // Failures that do not end give up within the (here: short) budget,
    // with the lock removed and nothing recorded.
    proxy.add(Rule::new(
        Some("PUT"),
        "/data/",
        Fault::Status(503, "SlowDown"),
        None,
    ));
    random_file(&src.join("f2"), 10 * MIB);
    let start = Instant::now();
    let r = mover(
        &env.with("MOVER_S3_RETRY_SECONDS", "3"),
        &backup_args(&repo, s, "data"),
    );
    let took = start.elapsed();
    assert!(!r.ok);
    eprintln!(
        "permanent 503 with a 3 s budget: gave up after {took:?}: {:?}",
        r.error
    );
    assert!(took < Duration::from_secs(30), "gave up after {took:?}");
    proxy.clear();
    let o = restic(
        &env,
        &[
            "-r",
            &format!("{direct}/ns1/vol"),
            "list",
            "locks",
            "--no-lock",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        0,
        "lock removed"
    );
    let snaps = ok(&env, &["snapshots", "--repository", &repo])
        .snapshots
        .expect("snaps");
    assert_eq!(snaps.len(), 2);
    check_read_data(&env, &format!("{direct}/ns1/vol"));
}

#[test]
fn unreadable_directory_makes_the_backup_partial() {
    // The walk's own count: an unreadable directory and an unreadable file
    // (the mover runs as uid 1000 via setpriv) are left out and counted.
    let t = TempDir::new("partialdir");
    let env = Env::local();
    let src = t.join("src");
    std::fs::create_dir_all(src.join("closed")).expect("mkdir");
    std::fs::write(src.join("closed/inner"), "hidden").expect("w");
    std::fs::write(src.join("open"), "fine").expect("w");
    std::fs::write(src.join("secret"), "no").expect("w");
    let repo = t.join("repo");
    let st = Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(t.path())
        .status()
        .expect("chown");
    assert!(st.success());
    for p in ["closed", "secret"] {
        std::fs::set_permissions(
            src.join(p),
            std::os::unix::fs::PermissionsExt::from_mode(0o000),
        )
        .expect("chmod");
    }
    let rf = t.join("result.json");
    let mut a = backup_args(
        repo.to_str().expect("utf8"),
        src.to_str().expect("utf8"),
        "p",
    );
    let rf_s = rf.to_str().expect("utf8").to_string();
    a.extend(["--result-file", &rf_s]);
    let mut c = Command::new("setpriv");
    c.args(["--reuid=1000", "--regid=1000", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_backup-mover"))
        .args(&a);
    env.apply(&mut c);
    // RUST_LOG=off: detection must not depend on logging.
    c.env("RUST_LOG", "off");
    let out = c.output().expect("setpriv (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: MoverResult =
        serde_json::from_str(&std::fs::read_to_string(&rf).expect("result")).expect("json");
    assert_eq!(r.partial, Some(true), "{r:?}");
    let w = r.warning.expect("warning");
    assert!(w.contains("2 entries"), "{w}");
    assert!(w.contains("closed") && w.contains("secret"), "{w}");
}

/// Restore arguments for `repo` into `target`, one worker, result to `rf`.
fn restore_args<'a>(repo: &'a str, target: &'a Path, rf: &'a Path) -> [&'a str; 9] {
    [
        "restore",
        "--repository",
        repo,
        "--target",
        target.to_str().expect("utf8"),
        "--restore-threads",
        "1",
        "--result-file",
        rf.to_str().expect("utf8"),
    ]
}

/// SIGTERMs `child`, waits for it, and returns how long it took to stop
/// and its (interrupted) error message.
fn stop_with_sigterm(child: &mut std::process::Child, rf: &Path) -> (Duration, String) {
    let sent = Instant::now();
    // SAFETY: signalling our own child by its pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(
        !child.wait().expect("wait").success(),
        "exit code after SIGTERM"
    );
    let stopped = sent.elapsed();
    let r: MoverResult =
        serde_json::from_str(&std::fs::read_to_string(rf).expect("result")).expect("json");
    let e = r.error.expect("error");
    assert_eq!(e.kind, ErrorKind::Interrupted, "{}", e.message);
    (stopped, e.message)
}

#[test]
fn sigterm_during_a_restore_stops_it_between_files_and_removes_the_lock() {
    let t = TempDir::new("sigterm-restore");
    let env = Env::local();
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    for i in 0..6 {
        random_file(&src.join(format!("f{i}")), 48 * MIB);
    }
    let repo = t.join("repo");
    let repo_s = repo.to_str().expect("utf8");
    ok(
        &env,
        &backup_args(repo_s, src.to_str().expect("utf8"), "data"),
    );
    let (target, rf) = (t.join("target"), t.join("result.json"));
    let mut child = mover_cmd(&env, &restore_args(repo_s, &target, &rf))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(120);
    while files_under(&target) < 1 {
        assert!(Instant::now() < deadline, "nothing restored");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "restore ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(files_under(&repo.join("locks")), 1, "restore holds a lock");
    let (stopped, message) = stop_with_sigterm(&mut child, &rf);
    eprintln!("restore stopped {stopped:?} after SIGTERM: {message}");
    // The restore polls for cancellation itself: no watchdog exit.
    assert!(!message.contains("did not stop within"), "{message}");
    assert!(stopped < Duration::from_secs(10));
    assert_eq!(files_under(&repo.join("locks")), 0, "lock removed");
}

#[test]
fn sigterm_while_a_read_hangs_exits_after_the_grace_and_removes_the_lock() {
    // A pack read that never answers does not poll for cancellation; the
    // watchdog gives the operation MOVER_STOP_GRACE_SECONDS, then removes
    // the lock, reports and exits.
    let moto = Moto::start();
    moto.bucket("hang");
    let proxy = Proxy::start(moto.port);
    let repo = proxy.repo("hang/ns/pvc");
    let env = Env::s3();
    let t = TempDir::new("sigterm-hang");
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    random_file(&src.join("f"), 4 * MIB);
    ok(
        &env,
        &backup_args(&repo, src.to_str().expect("utf8"), "pvc"),
    );
    proxy.add(Rule::new(
        Some("GET"),
        "/data/",
        Fault::Stall(Duration::from_secs(120)),
        None,
    ));
    let (target, rf) = (t.join("target"), t.join("result.json"));
    let mut child = mover_cmd(
        &env.with("MOVER_STOP_GRACE_SECONDS", "1"),
        &restore_args(&repo, &target, &rf),
    )
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(120);
    while proxy.faults() < 1 {
        assert!(Instant::now() < deadline, "the restore read no pack");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "restore ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (stopped, message) = stop_with_sigterm(&mut child, &rf);
    eprintln!("restore stopped {stopped:?} after SIGTERM: {message}");
    assert!(message.contains("did not stop within 1s"), "{message}");
    assert!(stopped < Duration::from_secs(10));
    let locks = restic(&env, &["-r", &repo, "list", "locks", "--no-lock"]);
    assert!(locks.status.success());
    assert!(locks.stdout.is_empty(), "lock removed: {locks:?}");
}
