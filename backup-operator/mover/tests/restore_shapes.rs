//! Every shape of data restores, in both directions: trees written by the
//! mover and by restic (`backup /abs/dir`, `backup .`, several paths) are
//! restored by the mover and by restic, and compared entry by entry (content,
//! type, mode, owner, mtime, link target, hard links) with the source.
//! Restores stay inside their target whatever the target holds.
//!
//! `RESTIC_BIN` selects the restic binary (default `restic` on PATH).
//! `MOVER_TEST_BIG=1` adds a 4 GiB file to the shapes.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use common::result::MoverResult;
use common::{Env, MIB, TempDir, backup_args, mover, ok, prng_bytes, restic_bin};
use sha2::{Digest, Sha256};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 test path")
}

fn mover_ok(args: &[&str]) -> MoverResult {
    ok(&Env::local(), args)
}

/// A mover backup of `src` into `repo`; the snapshot id.
fn mover_backup(repo: &Path, src: &Path, pvc: &str) -> String {
    mover_ok(&backup_args(s(repo), s(src), pvc))
        .snapshot_id
        .expect("snapshot id")
}

fn restic_cmd(cwd: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(restic_bin());
    c.arg("--no-cache").args(args);
    Env::local().apply(&mut c);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.output()
        .expect("restic must be installed (RESTIC_BIN or PATH)")
}

fn restic(cwd: Option<&Path>, args: &[&str]) -> String {
    let out = restic_cmd(cwd, args);
    assert!(
        out.status.success(),
        "restic {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check_read_data(repo: &Path) {
    restic(None, &["-r", s(repo), "check", "--read-data"]);
}

/// The id of the only (or newest) snapshot restic lists.
fn newest_restic_snapshot(repo: &Path) -> String {
    let out = restic(None, &["-r", s(repo), "snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("snapshots json");
    let arr = v.as_array().expect("array");
    let mut snaps: Vec<(&str, &str)> = arr
        .iter()
        .map(|x| {
            (
                x["time"].as_str().expect("time"),
                x["id"].as_str().expect("id"),
            )
        })
        .collect();
    snaps.sort();
    snaps.last().expect("one snapshot").1.to_string()
}

fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("lchown");
}

/// Writes every shape the restore must handle below `root`.
fn make_shapes(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, data).expect("write");
    };
    w("zeros.bin", &vec![0u8; 20 * MIB]);
    let block = prng_bytes(1, 3 * MIB);
    w("repeated.bin", &block.repeat(8));
    let shared = prng_bytes(2, 2 * MIB);
    w("copies/a.bin", &shared);
    w("copies/b.bin", &shared);
    let mut mid = prng_bytes(3, MIB);
    mid.extend_from_slice(&shared);
    mid.extend_from_slice(&prng_bytes(4, MIB));
    w("copies/inside.bin", &mid);
    w("empty", b"");
    std::fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    // Sparse: 64 MiB with 4 KiB of data in the middle.
    let f = std::fs::File::create(root.join("sparse.img")).expect("create");
    f.set_len(64 * MIB as u64).expect("set_len");
    std::os::unix::fs::FileExt::write_all_at(&f, &prng_bytes(5, 4096), 32 * MIB as u64)
        .expect("write");
    w("links/one", b"hard linked");
    std::fs::hard_link(root.join("links/one"), root.join("links/two")).expect("link");
    symlink("one", root.join("links/rel-link")).expect("symlink");
    symlink("/nowhere/at/all", root.join("links/dangling")).expect("symlink");
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).expect("c");
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0, "mkfifo");
    w("names/new\nline", b"newline");
    w(&format!("names/{}", "L".repeat(255)), b"long");
    let odd = root
        .join("names")
        .join(OsString::from_vec(vec![0xff, 0xfe, b'x']));
    std::fs::write(&odd, b"not utf-8").expect("write");
    w("names/space and ünïcode", b"u");
    let mut deep = root.join("deep");
    for i in 0..60 {
        deep = deep.join(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).expect("deep");
    std::fs::write(deep.join("leaf"), b"leaf").expect("write");
    w("modes/ro", b"ro");
    std::fs::set_permissions(root.join("modes/ro"), PermissionsExt::from_mode(0o444))
        .expect("chmod");
    w("modes/exec", b"#!/bin/sh\n");
    std::fs::set_permissions(root.join("modes/exec"), PermissionsExt::from_mode(0o755))
        .expect("chmod");
    if is_root() {
        w("modes/suid", b"s");
        w("owners/a", b"a");
        w("owners/b", b"b");
        w("owners/c", b"c");
        chown(&root.join("owners/a"), 1001, 1001);
        chown(&root.join("owners/b"), 2002, 3003);
        chown(&root.join("owners/c"), 65534, 0);
        chown(&root.join("links/rel-link"), 4004, 4004);
        std::fs::set_permissions(root.join("modes/suid"), PermissionsExt::from_mode(0o6755))
            .expect("chmod");
    }
    std::fs::create_dir_all(root.join("modes/sticky")).expect("mkdir");
    std::fs::set_permissions(root.join("modes/sticky"), PermissionsExt::from_mode(0o1777))
        .expect("chmod");
    if std::env::var("MOVER_TEST_BIG").is_ok_and(|v| v == "1") {
        let f = std::fs::File::create(root.join("big.bin")).expect("create");
        let chunk = prng_bytes(6, 64 * MIB);
        for i in 0..64u64 {
            std::os::unix::fs::FileExt::write_all_at(&f, &chunk, i * 64 * MIB as u64)
                .expect("write");
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<(i64, i64)>,
    content: String,
    nlink: u64,
}

/// Everything observable below `root`, keyed by the escaped relative name.
fn observe(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let rel = format!("{:?}", p.strip_prefix(base).expect("prefix"));
            let ft = m.file_type();
            let (kind, content) = if ft.is_symlink() {
                let t = std::fs::read_link(&p).expect("readlink");
                ('l', format!("{:?}", t.as_os_str()))
            } else if ft.is_dir() {
                ('d', String::new())
            } else if ft.is_file() {
                let data = std::fs::read(&p).expect("read");
                ('f', format!("{:x}", Sha256::digest(&data)))
            } else {
                ('s', format!("{:o}", m.mode() & libc::S_IFMT))
            };
            out.insert(
                rel,
                Entry {
                    kind,
                    mode: if kind == 'l' { 0 } else { m.mode() & 0o7777 },
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: (kind != 'l' && kind != 'd').then(|| (m.mtime(), m.mtime_nsec())),
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
    walk(root, root, &mut out);
    out
}

fn assert_same(src: &Path, restored: &Path, who: &str) {
    let (a, b) = (observe(src), observe(restored));
    let (ka, kb): (Vec<_>, Vec<_>) = (a.keys().collect(), b.keys().collect());
    assert_eq!(ka, kb, "{who}: same names");
    for (k, ea) in &a {
        assert_eq!(Some(ea), b.get(k), "{who}: entry {k} differs");
    }
}

fn assert_sparse(p: &Path, who: &str) {
    let m = std::fs::metadata(p).expect("stat sparse");
    assert!(
        m.blocks() * 512 < 8 * MIB as u64,
        "{who}: {} holds {} bytes on disk for 4 KiB of data: not sparse",
        p.display(),
        m.blocks() * 512
    );
}

fn mover_restore(repo: &Path, snapshot: &str, target: &Path, extra: &[&str]) -> MoverResult {
    let mut args = vec![
        "restore",
        "--repository",
        s(repo),
        "--snapshot",
        snapshot,
        "--target",
        s(target),
    ];
    args.extend_from_slice(extra);
    mover_ok(&args)
}

#[test]
fn mover_backups_of_every_shape_restore_with_mover_and_restic() {
    let t = TempDir::new("m2x");
    let (src, repo) = (t.join("src"), t.join("repo"));
    make_shapes(&src);
    let id = mover_backup(&repo, &src, "shapes");
    check_read_data(&repo);

    let by_mover = t.join("by-mover");
    let rr = mover_restore(&repo, &id, &by_mover, &[]);
    assert_same(&src, &by_mover, "mover restore of a mover backup");
    assert_sparse(&by_mover.join("sparse.img"), "mover");
    assert!(rr.files.unwrap_or(0) > 10, "files counted: {rr:?}");

    // Restoring again over the first restore changes nothing.
    mover_restore(&repo, &id, &by_mover, &[]);
    assert_same(&src, &by_mover, "second mover restore over the first");

    let by_restic = t.join("by-restic");
    restic(
        None,
        &["-r", s(&repo), "restore", &id, "--target", s(&by_restic)],
    );
    assert_same(
        &src,
        &by_restic.join("data"),
        "restic restore of a mover backup",
    );
}

#[test]
fn restic_backups_of_every_shape_restore_with_the_mover() {
    let t = TempDir::new("r2m");
    let (src, repo) = (t.join("src"), t.join("repo"));
    make_shapes(&src);
    restic(None, &["-r", s(&repo), "init"]);

    // restic backup /abs/dir: the tree holds the absolute path.
    restic(None, &["-r", s(&repo), "backup", s(&src)]);
    let abs = newest_restic_snapshot(&repo);
    let out = t.join("abs");
    mover_restore(&repo, &abs, &out, &[]);
    assert_same(&src, &out, "mover restore of `restic backup /abs/dir`");
    assert_sparse(&out.join("sparse.img"), "mover from restic");

    // restic backup . (VolSync's way): the root tree holds the contents.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    restic(Some(&src), &["-r", s(&repo), "backup", "."]);
    let dot = newest_restic_snapshot(&repo);
    assert_ne!(dot, abs);
    let out = t.join("dot");
    mover_restore(&repo, &dot, &out, &[]);
    assert_same(&src, &out, "mover restore of `restic backup .`");

    // Several paths at once: the mover restores what restic restores.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    restic(
        None,
        &[
            "-r",
            s(&repo),
            "backup",
            s(&src.join("copies")),
            s(&src.join("links")),
        ],
    );
    let multi = newest_restic_snapshot(&repo);
    let (by_mover, by_restic) = (t.join("multi-mover"), t.join("multi-restic"));
    mover_restore(&repo, &multi, &by_mover, &[]);
    restic(
        None,
        &["-r", s(&repo), "restore", &multi, "--target", s(&by_restic)],
    );
    assert_same(&by_restic, &by_mover, "several paths: mover vs restic");
    check_read_data(&repo);
}

#[test]
fn restore_never_writes_outside_its_target() {
    let t = TempDir::new("escape");
    let (src, repo, target, outside) = (
        t.join("src"),
        t.join("repo"),
        t.join("target"),
        t.join("outside"),
    );
    std::fs::create_dir_all(src.join("x")).expect("mkdir");
    std::fs::write(src.join("x/victim"), b"from the backup").expect("write");
    std::fs::write(src.join("plain"), b"plain file").expect("write");
    std::fs::write(src.join("hl"), b"restored over a link").expect("write");
    let id = mover_backup(&repo, &src, "esc");

    // The target's user planted: a symlinked directory, a symlinked file,
    // a hard link to a file outside, and (for --delete) a symlink to remove.
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("victim"), b"outside, untouched").expect("write");
    std::fs::write(outside.join("secret"), b"secret").expect("write");
    std::fs::create_dir_all(&target).expect("mkdir");
    symlink(&outside, target.join("x")).expect("symlink");
    symlink(outside.join("secret"), target.join("plain")).expect("symlink");
    symlink(&outside, target.join("extra")).expect("symlink");
    std::fs::write(outside.join("linked"), b"linked original").expect("write");
    std::fs::hard_link(outside.join("linked"), target.join("hl")).expect("hard link");

    mover_restore(&repo, &id, &target, &["--delete"]);
    assert_eq!(
        std::fs::read(outside.join("victim")).expect("r"),
        b"outside, untouched"
    );
    assert_eq!(std::fs::read(outside.join("secret")).expect("r"), b"secret");
    assert_eq!(
        std::fs::read(outside.join("linked")).expect("r"),
        b"linked original"
    );
    let left = std::fs::read_dir(&outside).expect("ls").count();
    assert_eq!(left, 3, "nothing added to or removed from outside");
    assert_eq!(
        std::fs::read(target.join("hl")).expect("r"),
        b"restored over a link"
    );
    assert!(target.join("x").symlink_metadata().expect("lstat").is_dir());
    assert_eq!(
        std::fs::read(target.join("x/victim")).expect("r"),
        b"from the backup"
    );
    assert_eq!(
        std::fs::read(target.join("plain")).expect("r"),
        b"plain file"
    );
    assert!(!target.join("extra").exists() && target.join("extra").symlink_metadata().is_err());
    assert_same(&src, &target, "restore over a hostile target");
}

#[test]
fn partial_restore_brings_back_only_the_paths_asked_for() {
    let t = TempDir::new("paths");
    let (src, repo, target) = (t.join("src"), t.join("repo"), t.join("target"));
    for f in ["a/one", "a/deeper/two", "b/three", "top"] {
        let p = src.join(f);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, f.as_bytes()).expect("write");
    }
    let id = mover_backup(&repo, &src, "paths");
    mover_restore(
        &repo,
        &id,
        &target,
        &["--path", "/a/deeper", "--path", "top"],
    );
    let got: Vec<String> = observe(&target).into_keys().collect();
    let want: Vec<String> = ["\"a\"", "\"a/deeper\"", "\"a/deeper/two\"", "\"top\""]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        std::fs::read(target.join("a/deeper/two")).expect("r"),
        b"a/deeper/two"
    );
    let bad = mover(
        &Env::local(),
        &[
            "restore",
            "--repository",
            s(&repo),
            "--snapshot",
            &id,
            "--target",
            s(&target),
            "--path",
            "../etc",
        ],
    );
    assert!(!bad.ok, "a path with .. is refused");
}
