//! Runs the `backup-mover` binary as a process against a local-path
//! repository (the same code path an NFS mount takes: a host directory, as
//! this machine cannot serve NFS to itself) and against moto's S3 server.
//! Needs `restic` (Debian package) and `moto_server` (`pip install "moto[server]"`).

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};

use common::result::{ErrorKind, MoverResult};
use common::*;
use sha2::{Digest, Sha256};

/// Byte counts here are compared with the result's u64 fields.
const MIB: u64 = 1024 * 1024;

// ---------- helpers (shared ones are in common/) ----------

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let c = CString::new(p.as_os_str().as_bytes()).expect("cstring");
    let t = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: valid pointers.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", p.display());
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("lchown (tests run as root)");
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A tree with everything the restore must bring back.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("docs/deep/er")).expect("mkdir");
    std::fs::create_dir_all(root.join("emptydir")).expect("mkdir");
    std::fs::write(
        root.join("random.bin"),
        prng_bytes(1, 3 * MIB as usize + 12345),
    )
    .expect("w");
    std::fs::write(root.join("docs/readme.txt"), "hello restore\n".repeat(500)).expect("w");
    std::fs::write(root.join("docs/deep/er/small.txt"), "x").expect("w");
    std::fs::write(root.join("empty.txt"), "").expect("w");
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").expect("w");
    std::fs::hard_link(root.join("random.bin"), root.join("hardlink.bin")).expect("hardlink");
    // A file of many chunks, and many small files sharing packs.
    std::fs::write(root.join("big.bin"), prng_bytes(2, 12 * MIB as usize + 777)).expect("w");
    std::fs::create_dir_all(root.join("many")).expect("mkdir");
    for i in 0..300u64 {
        let n = 100 + (i as usize * 997) % 9000;
        std::fs::write(root.join(format!("many/f{i:03}")), prng_bytes(1000 + i, n)).expect("w");
    }
    symlink("docs/readme.txt", root.join("link")).expect("symlink");
    symlink("does/not/exist", root.join("dangling")).expect("symlink");
    chmod(&root.join("run.sh"), 0o755);
    chmod(&root.join("docs/readme.txt"), 0o640);
    chmod(&root.join("emptydir"), 0o700);
    chmod(&root.join("docs/deep"), 0o2750);
    chown(&root.join("docs/readme.txt"), 1001, 1002);
    chown(&root.join("emptydir"), 1003, 1004);
    chown(&root.join("link"), 1005, 1006);
    let mut t = 1_600_000_000i64;
    for rel in [
        "random.bin",
        "docs/readme.txt",
        "docs/deep/er/small.txt",
        "empty.txt",
        "run.sh",
        "link",
        "dangling",
        "docs/deep/er",
        "docs/deep",
        "docs",
        "emptydir",
    ] {
        t += 86_400 + 17;
        set_mtime(&root.join(rel), t, 123_456_789);
    }
    // The PVC root: setgid group-shared, not owned by root, old mtime.
    chown(root, 1000, 2000);
    chmod(root, 0o2770);
    set_mtime(root, 1_610_000_000, 987_654_321);
}

#[derive(Debug, PartialEq)]
struct Entry {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<(i64, i64)>,
    content: String,
    nlink: u64,
}

/// Everything observable about a tree; `with_root` includes the root itself.
fn snapshot_tree(root: &Path, with_root: bool) -> BTreeMap<String, Entry> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        for p in names {
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let rel = p.strip_prefix(base).expect("prefix").display().to_string();
            let ft = m.file_type();
            let (kind, content) = if ft.is_symlink() {
                (
                    'l',
                    std::fs::read_link(&p)
                        .expect("readlink")
                        .display()
                        .to_string(),
                )
            } else if ft.is_dir() {
                ('d', String::new())
            } else {
                let data = std::fs::read(&p).expect("read");
                ('f', format!("{:x}", Sha256::digest(&data)))
            };
            out.insert(
                rel,
                Entry {
                    kind,
                    mode: if kind == 'l' { 0 } else { m.mode() & 0o7777 },
                    uid: m.uid(),
                    gid: m.gid(),
                    // symlink times are not portable across tools; compare others
                    mtime: (kind != 'l').then(|| (m.mtime(), m.mtime_nsec())),
                    content,
                    nlink: if kind == 'f' { m.nlink() } else { 0 },
                },
            );
            if kind == 'd' {
                walk(base, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    if with_root {
        let m = std::fs::metadata(root).expect("stat root");
        out.insert(
            ".".into(),
            Entry {
                kind: 'd',
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: Some((m.mtime(), m.mtime_nsec())),
                content: String::new(),
                nlink: 0,
            },
        );
    }
    walk(root, root, &mut out);
    out
}

fn assert_same_tree(a: &Path, b: &Path, with_root: bool) {
    let ta = snapshot_tree(a, with_root);
    let tb = snapshot_tree(b, with_root);
    assert_eq!(
        ta.keys().collect::<Vec<_>>(),
        tb.keys().collect::<Vec<_>>(),
        "same names"
    );
    for (k, ea) in &ta {
        assert_eq!(Some(ea), tb.get(k), "entry {k} differs");
    }
}

// ---------- scenarios, run for both repository kinds ----------

fn roundtrip_and_restic(env: &Env, repo: &str) {
    let t = TempDir::new("roundtrip");
    let src = t.join("src");
    make_tree(&src);
    let src_s = src.to_str().expect("utf8");
    let b = ok(env, &backup_args(repo, src_s, "data-pvc"));
    let id = b.snapshot_id.clone().expect("snapshot id");
    assert_eq!(b.pvc.as_deref(), Some("data-pvc"));
    assert!(b.bytes_processed.unwrap_or(0) >= 6 * MIB, "{b:?}");
    assert!(b.files.unwrap_or(0) >= 6, "{b:?}");
    assert!(
        b.location
            .as_deref()
            .is_some_and(|l| !l.contains("testing"))
    );
    assert_eq!(b.snapshots.as_ref().map(Vec::len), Some(1));

    let s = ok(
        env,
        &["snapshots", "--repository", repo, "--pvc", "data-pvc"],
    );
    let snaps = s.snapshots.expect("snapshots");
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].id, id);
    assert_eq!(snaps[0].pvc.as_deref(), Some("data-pvc"));

    // By id.
    let out = t.join("restored");
    let out_s = out.to_str().expect("utf8");
    let r = ok(
        env,
        &[
            "restore",
            "--repository",
            repo,
            "--snapshot",
            &id,
            "--target",
            out_s,
        ],
    );
    assert_eq!(r.snapshot_id.as_deref(), Some(id.as_str()));
    assert!(r.bytes_restored.unwrap_or(0) >= 3 * MIB);
    assert_same_tree(&src, &out, true);
    // By latest-for-pvc into an existing directory with other metadata.
    let out2 = t.join("restored2");
    std::fs::create_dir_all(&out2).expect("mkdir");
    let out2_s = out2.to_str().expect("utf8");
    ok(
        env,
        &[
            "restore",
            "--repository",
            repo,
            "--snapshot",
            "latest",
            "--pvc",
            "data-pvc",
            "--target",
            out2_s,
        ],
    );
    assert_same_tree(&src, &out2, true);

    // restic reads what the mover wrote.
    let o = restic(env, &["-r", repo, "snapshots", "--json"]);
    assert!(
        o.status.success(),
        "restic snapshots: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("restic json");
    let arr = v.as_array().expect("array");
    assert_eq!(arr.len(), 1);
    assert_eq!(arr[0]["hostname"], "data-pvc");
    assert_eq!(arr[0]["paths"][0], "/data");
    let tags: Vec<&str> = arr[0]["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(tags, ["ns=ns1", "policy=pol1", "pvc=data-pvc"]);
    let o = restic(env, &["-r", repo, "check", "--read-data"]);
    assert!(
        o.status.success(),
        "restic check: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rt = t.join("restic-restore");
    let o = restic(
        env,
        &[
            "-r",
            repo,
            "restore",
            &id,
            "--target",
            rt.to_str().expect("utf8"),
        ],
    );
    assert!(
        o.status.success(),
        "restic restore: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // restic does not know the root metadata; everything below it matches.
    assert_same_tree(&src, &rt.join("data"), false);

    // The mover reads what restic wrote.
    let rsrc = t.join("restic-src");
    std::fs::create_dir_all(rsrc.join("a/b")).expect("mkdir");
    std::fs::write(rsrc.join("a/b/file"), prng_bytes(9, 200_000)).expect("w");
    let o = restic(
        env,
        &[
            "-r",
            repo,
            "backup",
            "--host",
            "other",
            rsrc.to_str().expect("utf8"),
        ],
    );
    assert!(
        o.status.success(),
        "restic backup: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s = ok(env, &["snapshots", "--repository", repo]);
    assert_eq!(s.snapshots.as_ref().map(Vec::len), Some(2));
    let restic_id = s
        .snapshots
        .expect("snaps")
        .into_iter()
        .find(|x| x.pvc.is_none())
        .expect("restic snapshot")
        .id;
    let out3 = t.join("from-restic");
    ok(
        env,
        &[
            "restore",
            "--repository",
            repo,
            "--snapshot",
            &restic_id,
            "--target",
            out3.to_str().expect("utf8"),
        ],
    );
    assert_same_tree(&rsrc, &out3, false);
}

fn incremental(env: &Env, repo: &str) {
    let t = TempDir::new("incr");
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    for i in 0..8u64 {
        std::fs::write(
            src.join(format!("f{i}")),
            prng_bytes(100 + i, 2 * MIB as usize),
        )
        .expect("w");
    }
    let s = src.to_str().expect("utf8");
    let first = ok(env, &backup_args(repo, s, "incr"));
    assert!(first.bytes_added.unwrap_or(0) >= 16 * MIB);
    // Change 1% (164 KiB) in the middle of one file.
    let changed = 16 * MIB / 100;
    let p = src.join("f3");
    let mut data = std::fs::read(&p).expect("read");
    let start = MIB as usize - 5000;
    data[start..start + changed as usize].copy_from_slice(&prng_bytes(999, changed as usize));
    std::fs::write(&p, data).expect("write");
    let second = ok(env, &backup_args(repo, s, "incr"));
    let added = second.bytes_added.unwrap_or(u64::MAX);
    eprintln!("incremental: changed {changed} bytes, added {added} bytes");
    assert_eq!(second.bytes_processed, Some(16 * MIB));
    assert!(added >= changed, "added {added} < changed {changed}");
    // Content-defined chunks average 1 MiB: only the chunks around the change.
    assert!(
        added <= changed + 3 * MIB,
        "added {added} for {changed} changed"
    );
    // Nothing changed since: the files and trees of the parent are reused.
    let third = ok(env, &backup_args(repo, s, "incr"));
    assert_eq!(third.bytes_processed, Some(16 * MIB));
    assert_eq!(
        third.bytes_added,
        Some(0),
        "unchanged source stored new data"
    );
    assert_ne!(third.snapshot_id, second.snapshot_id);
}

fn retention(env: &Env, repo: &str) {
    let t = TempDir::new("ret");
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("a"), "1").expect("w");
    let s = src.to_str().expect("utf8");
    let now = jiff::Timestamp::now();
    let ago = |days: i64| (now - jiff::SignedDuration::from_hours(24 * days)).to_string();
    let other = ok(env, &backup_args(repo, s, "other-pvc"))
        .snapshot_id
        .expect("id");
    let mut ids = Vec::new();
    for d in [10, 6, 3, 1] {
        std::fs::write(src.join("a"), format!("{d}")).expect("w");
        let mut a = backup_args(repo, s, "ret-pvc");
        let time = ago(d);
        a.extend(["--time", &time]);
        ids.push(ok(env, &a).snapshot_id.expect("id"));
    }
    // A failed run (empty source) must not delete anything.
    let empty = t.join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let mut a = backup_args(repo, empty.to_str().expect("utf8"), "ret-pvc");
    a.extend(["--keep-last", "1"]);
    assert_eq!(err_kind(env, &a), ErrorKind::SourceEmpty);
    let count = |pvc: &str| {
        ok(env, &["snapshots", "--repository", repo, "--pvc", pvc])
            .snapshots
            .expect("snaps")
            .len()
    };
    assert_eq!(count("ret-pvc"), 4);

    // Backup with keep-last 3 and keep-within-days 7: keeps newest, 1d, 3d.
    let mut a = backup_args(repo, s, "ret-pvc");
    a.extend(["--keep-last", "3", "--keep-within-days", "7"]);
    let b = ok(env, &a);
    let newest = b.snapshot_id.clone().expect("id");
    let kept: Vec<String> = b
        .snapshots
        .expect("snaps")
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(kept, vec![newest.clone(), ids[3].clone(), ids[2].clone()]);
    let mut forgotten = b.forgotten.expect("forgotten");
    forgotten.sort();
    let mut expect = vec![ids[0].clone(), ids[1].clone()];
    expect.sort();
    assert_eq!(forgotten, expect);

    // forget by age only.
    let f = ok(
        env,
        &[
            "forget",
            "--repository",
            repo,
            "--namespace",
            "ns1",
            "--policy",
            "pol1",
            "--pvc",
            "ret-pvc",
            "--keep-within-days",
            "2",
            "--prune",
        ],
    );
    let kept: Vec<String> = f
        .snapshots
        .expect("snaps")
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(kept, vec![newest.clone(), ids[3].clone()]);
    // forget by count only.
    let f = ok(
        env,
        &[
            "forget",
            "--repository",
            repo,
            "--namespace",
            "ns1",
            "--policy",
            "pol1",
            "--pvc",
            "ret-pvc",
            "--keep-last",
            "1",
            "--prune",
        ],
    );
    let kept: Vec<String> = f
        .snapshots
        .expect("snaps")
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(kept, vec![newest.clone()]);
    // keep-last 0 still keeps the newest (the last good backup).
    let f = ok(
        env,
        &[
            "forget",
            "--repository",
            repo,
            "--namespace",
            "ns1",
            "--policy",
            "pol1",
            "--pvc",
            "ret-pvc",
            "--keep-last",
            "0",
        ],
    );
    assert_eq!(f.snapshots.map(|v| v.len()), Some(1));

    // Other PVCs are untouched; restic agrees and the repository is sound.
    let all = ok(env, &["snapshots", "--repository", repo])
        .snapshots
        .expect("snaps");
    let mut all_ids: Vec<String> = all.into_iter().map(|x| x.id).collect();
    all_ids.sort();
    let mut want = vec![newest, other];
    want.sort();
    assert_eq!(all_ids, want);
    let o = restic(env, &["-r", repo, "snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    let o = restic(env, &["-r", repo, "check"]);
    assert!(
        o.status.success(),
        "restic check after prune: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn concurrent(env: &Env, repo: &str) {
    // Two backups race on a repository that does not exist yet.
    let t = TempDir::new("conc");
    let mut children = Vec::new();
    let mut rfs = Vec::new();
    for i in 0..2u64 {
        let src = t.join(&format!("src{i}"));
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::write(src.join("data"), prng_bytes(50 + i, 4 * MIB as usize)).expect("w");
        let rf = t.join(&format!("r{i}.json"));
        let pvc = format!("pvc-{i}");
        let mut a = backup_args(repo, src.to_str().expect("utf8"), &pvc);
        let rf_s = rf.to_str().expect("utf8").to_string();
        a.extend(["--result-file", &rf_s]);
        children.push(
            mover_cmd(env, &a)
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn"),
        );
        rfs.push(rf);
    }
    for (mut c, rf) in children.into_iter().zip(rfs) {
        let st = c.wait().expect("wait");
        let text = std::fs::read_to_string(&rf).expect("result");
        assert!(st.success(), "concurrent backup failed: {text}");
    }
    let s = ok(env, &["snapshots", "--repository", repo]);
    assert_eq!(s.snapshots.map(|v| v.len()), Some(2));
    let o = restic(env, &["-r", repo, "check"]);
    assert!(
        o.status.success(),
        "restic check: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = restic(env, &["-r", repo, "list", "keys"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        1,
        "exactly one initialiser"
    );
}

fn locked_and_password(env: &Env, repo: &str) {
    let t = TempDir::new("lock");
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("a"), "a").expect("w");
    let s = src.to_str().expect("utf8");
    ok(env, &backup_args(repo, s, "lockpvc"));

    let bad = env.with("RESTIC_PASSWORD", "wrong");
    assert_eq!(
        err_kind(&bad, &backup_args(repo, s, "lockpvc")),
        ErrorKind::WrongPassword
    );
    assert_eq!(
        err_kind(&bad, &["snapshots", "--repository", repo]),
        ErrorKind::WrongPassword
    );

    // Hold an exclusive lock in another process.
    let mut holder = mover_cmd(
        env,
        &[
            "lock",
            "--repository",
            repo,
            "--exclusive",
            "--seconds",
            "8",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn lock holder");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "locked");
    // restic sees the mover's lock.
    let o = restic(env, &["-r", repo, "list", "locks", "--no-lock"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        1,
        "restic sees one lock"
    );
    let mut a = backup_args(repo, s, "lockpvc");
    a.extend(["--lock-wait-seconds", "2"]);
    assert_eq!(err_kind(env, &a), ErrorKind::RepositoryLocked);
    assert_eq!(
        err_kind(
            env,
            &[
                "forget",
                "--repository",
                repo,
                "--namespace",
                "ns1",
                "--policy",
                "pol1",
                "--pvc",
                "lockpvc",
                "--keep-last",
                "1",
                "--prune",
                "--lock-wait-seconds",
                "1"
            ]
        ),
        ErrorKind::RepositoryLocked
    );
    // With enough patience the backup waits for the lock to go away.
    let mut a = backup_args(repo, s, "lockpvc");
    a.extend(["--lock-wait-seconds", "60"]);
    ok(env, &a);
    let _ = holder.wait();
    let o = restic(env, &["-r", repo, "list", "locks", "--no-lock"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        0,
        "locks removed"
    );
}

/// Identical contents, within one run and in files the workers handle at
/// the same time, are stored once; the repository stays valid for restic.
fn duplicates(env: &Env, repo: &str) {
    let t = TempDir::new("dups");
    let src = t.join("src");
    let content = prng_bytes(4242, 3 * MIB as usize);
    for d in 0..4 {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..6 {
            std::fs::write(dir.join(format!("copy{f}")), &content).expect("w");
        }
    }
    let r = ok(env, &backup_args(repo, src.to_str().expect("utf8"), "dups"));
    assert_eq!(r.bytes_processed, Some(24 * 3 * MIB));
    let added = r.bytes_added.unwrap_or(u64::MAX);
    // One copy of the data plus a few small trees.
    assert!(
        (3 * MIB..3 * MIB + 64 * 1024).contains(&added),
        "added {added} bytes for 24 copies of 3 MiB"
    );
    let o = restic(env, &["-r", repo, "check", "--read-data"]);
    assert!(
        o.status.success(),
        "restic check: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

// ---------- tests ----------

#[test]
fn local_repository() {
    // A host directory: the same code path as an NFS export mounted into the Job.
    let t = TempDir::new("localrepo");
    let env = Env::local();
    let base = t.path().to_str().expect("utf8").to_string();
    roundtrip_and_restic(&env, &format!("{base}/ns1/roundtrip"));
    incremental(&env, &format!("{base}/ns1/incr"));
    duplicates(&env, &format!("{base}/ns1/dups"));
    retention(&env, &format!("{base}/ns1/ret"));
    concurrent(&env, &format!("{base}/ns1/conc"));
    locked_and_password(&env, &format!("{base}/ns1/lock"));
}

#[test]
fn s3_repository() {
    let moto = Moto::start();
    let env = Env::s3();
    let b = moto.bucket("backups");
    roundtrip_and_restic(&env, &format!("{b}/ns1/roundtrip"));
    incremental(&env, &format!("{b}/ns1/incr"));
    retention(&env, &format!("{b}/ns1/ret"));
    concurrent(&env, &format!("{b}/ns1/conc"));
    locked_and_password(&env, &format!("{b}/ns1/lock"));

    // S3-specific errors.
    let t = TempDir::new("s3err");
    std::fs::write(t.join("f"), "x").expect("w");
    let s = t.path().to_str().expect("utf8");
    let missing = format!("s3:http://127.0.0.1:{}/no-such-bucket/x", moto.port);
    assert_eq!(
        err_kind(&env, &backup_args(&missing, s, "p")),
        ErrorKind::BucketMissing
    );
    let dead = format!("s3:http://127.0.0.1:{}/backups/x", free_port());
    assert_eq!(
        err_kind(&env, &backup_args(&dead, s, "p")),
        ErrorKind::EndpointUnreachable
    );
    assert_eq!(
        err_kind(
            &env,
            &["snapshots", "--repository", &format!("{b}/never-created")]
        ),
        ErrorKind::NotFound
    );
}

#[test]
fn source_and_snapshot_errors() {
    let t = TempDir::new("errs");
    let env = Env::local();
    let repo = t.join("repo");
    let repo_s = repo.to_str().expect("utf8");
    let empty = t.join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let e = empty.to_str().expect("utf8");
    assert_eq!(
        err_kind(&env, &backup_args(repo_s, e, "p")),
        ErrorKind::SourceEmpty
    );
    let missing = t.join("missing");
    assert_eq!(
        err_kind(
            &env,
            &backup_args(repo_s, missing.to_str().expect("utf8"), "p")
        ),
        ErrorKind::SourceEmpty
    );
    let out = t.join("out");
    let out_s = out.to_str().expect("utf8");
    assert_eq!(
        err_kind(
            &env,
            &["restore", "--repository", repo_s, "--target", out_s]
        ),
        ErrorKind::NotFound
    );
    std::fs::write(empty.join("f"), "x").expect("w");
    ok(&env, &backup_args(repo_s, e, "p"));
    // A snapshot that does not exist, by id, by PVC and by time.
    for selector in [
        &["--snapshot", "deadbeef"][..],
        &["--snapshot", "latest", "--pvc", "nope"],
        &["--before", "2000-01-01T00:00:00Z"],
    ] {
        let mut args = vec!["restore", "--repository", repo_s];
        args.extend_from_slice(selector);
        args.extend_from_slice(&["--target", out_s]);
        assert_eq!(err_kind(&env, &args), ErrorKind::NotFound, "{selector:?}");
    }
    let no_pw = Env { vars: Vec::new() };
    assert_eq!(
        err_kind(&no_pw, &["snapshots", "--repository", repo_s]),
        ErrorKind::WrongPassword
    );
}

#[test]
fn partial_backup_never_deletes_history() {
    // An unreadable file (run the mover as uid 1000 via setpriv) makes the
    // backup partial: the snapshot is stored but retention is not applied.
    let t = TempDir::new("partial");
    let env = Env::local();
    let src = t.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("ok"), "fine").expect("w");
    let repo = t.join("repo");
    let repo_s = repo.to_str().expect("utf8");
    let s = src.to_str().expect("utf8");
    ok(&env, &backup_args(repo_s, s, "p"));
    ok(&env, &backup_args(repo_s, s, "p"));
    std::fs::write(src.join("secret"), "no").expect("w");
    chmod(&src.join("secret"), 0o000);
    let st = Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(t.path())
        .status()
        .expect("chown");
    assert!(st.success());
    let rf = t.join("result.json");
    let mut a = backup_args(repo_s, s, "p");
    let rf_s = rf.to_str().expect("utf8").to_string();
    a.extend(["--keep-last", "1", "--result-file", &rf_s]);
    let mut c = Command::new("setpriv");
    c.args(["--reuid=1000", "--regid=1000", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_backup-mover"))
        .args(&a);
    env.apply(&mut c);
    let out = c.output().expect("setpriv (util-linux) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: MoverResult =
        serde_json::from_str(&std::fs::read_to_string(&rf).expect("result")).expect("json");
    assert!(r.ok);
    assert_eq!(r.partial, Some(true), "{r:?}");
    assert!(r.warning.as_deref().is_some_and(|w| w.contains("secret")));
    assert_eq!(r.snapshots.map(|v| v.len()), Some(3), "nothing deleted");
}
