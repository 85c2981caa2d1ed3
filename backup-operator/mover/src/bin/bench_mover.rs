//! bench-mover: the mover against restic on the same data, same run
//! (`--restic PATH`, or `RESTIC_BIN`; `make bench-mover` builds restic 0.18.1
//! from its Go module).
//!
//! Datasets: 64 random files (1 GiB total), the same with 1% changed, and
//! 20,000 text files of 1-16 KiB; with `--many-files N` also N files of
//! 1-4 KiB in nested directories (backup, unchanged incremental, restore:
//! the scale case, e.g. 1,000,000). Targets: a local repository and moto S3.
//! Both tools run without a local cache (as in a backup Job). Prints one
//! `key=value` line per case with MB/s (10^6 bytes/s), ratio mover/restic and
//! peak RSS (wait4 rusage of the child) of each tool.
//!
//! `make bench-mover` (release build) or
//! `cargo run --release -p backup-mover --bin bench-mover -- [--size-mib N] [--small-files N] [--no-s3]`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, String>;

struct Opts {
    work: PathBuf,
    mover: PathBuf,
    size_mib: u64,
    files: u64,
    small_files: u64,
    s3: bool,
    threads: Option<String>,
    restore_dir: Option<PathBuf>,
    restic: PathBuf,
    many_files: u64,
}

fn parse_opts() -> Res<Opts> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut o = Opts {
        work: std::env::temp_dir().join("bench-mover"),
        mover: exe.with_file_name("backup-mover"),
        size_mib: 1024,
        files: 64,
        small_files: 20_000,
        s3: true,
        threads: None,
        restore_dir: None,
        restic: PathBuf::from(std::env::var("RESTIC_BIN").unwrap_or_else(|_| "restic".into())),
        many_files: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--work-dir" => o.work = PathBuf::from(val("--work-dir")?),
            "--mover" => o.mover = PathBuf::from(val("--mover")?),
            "--size-mib" => o.size_mib = val("--size-mib")?.parse().map_err(|e| format!("{e}"))?,
            "--files" => o.files = val("--files")?.parse().map_err(|e| format!("{e}"))?,
            "--small-files" => {
                o.small_files = val("--small-files")?.parse().map_err(|e| format!("{e}"))?
            }
            "--restore-threads" => o.threads = Some(val("--restore-threads")?),
            "--restore-dir" => o.restore_dir = Some(PathBuf::from(val("--restore-dir")?)),
            "--no-s3" => o.s3 = false,
            "--restic" => o.restic = PathBuf::from(val("--restic")?),
            "--many-files" => {
                o.many_files = val("--many-files")?.parse().map_err(|e| format!("{e}"))?
            }
            "-h" | "--help" => {
                println!(
                    "bench-mover [--work-dir D] [--mover PATH] [--restic PATH] [--size-mib 1024] [--files 64] [--small-files 20000] [--many-files N] [--restore-threads N] [--restore-dir D] [--no-s3]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

struct Xorshift(u64);
impl Xorshift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => n += dir_bytes(&e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

fn gen_big(dir: &Path, total_mib: u64, files: u64) -> Res<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let per = total_mib * 1024 * 1024 / files;
    let mut rng = Xorshift(0x1234_5678_9abc_def1);
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..files {
        let p = dir.join(format!("blob-{i:03}.bin"));
        let mut f = std::fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mut left = per;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n])
                .map_err(|e| format!("{}: {e}", p.display()))?;
            left -= n as u64;
        }
    }
    Ok(())
}

/// Overwrites 1% of every file (one contiguous region in its middle).
fn change_big(dir: &Path) -> Res<u64> {
    use std::os::unix::fs::FileExt;
    let mut rng = Xorshift(0xdead_beef_0bad_cafe);
    let mut changed = 0;
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    for p in names {
        let len = std::fs::metadata(&p).map_err(|e| format!("{e}"))?.len();
        let n = (len / 100) as usize;
        let mut buf = vec![0u8; n];
        rng.fill(&mut buf);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        f.write_all_at(&buf, len / 2 - n as u64 / 2)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        changed += n as u64;
    }
    Ok(changed)
}

fn gen_small(dir: &Path, count: u64) -> Res<()> {
    const WORDS: &[&str] = &[
        "backup",
        "restore",
        "volume",
        "cluster",
        "namespace",
        "policy",
        "snapshot",
        "repository",
        "kubernetes",
        "operator",
        "retention",
        "schedule",
        "storage",
        "encrypted",
        "deduplicated",
        "the",
        "a",
        "of",
        "and",
        "to",
        "in",
        "is",
        "for",
        "with",
        "data",
        "file",
        "node",
        "pod",
    ];
    let mut rng = Xorshift(0x0ddc_0ffe_e0dd_f00d);
    for i in 0..count {
        let sub = dir.join(format!("d{:03}/e{:02}", i % 200, (i / 200) % 10));
        if i < 2000 {
            std::fs::create_dir_all(&sub).map_err(|e| format!("{}: {e}", sub.display()))?;
        }
        let size = 1024 + (rng.next() % (15 * 1024)) as usize;
        let mut s = String::with_capacity(size + 16);
        while s.len() < size {
            s.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
            s.push(if rng.next().is_multiple_of(12) {
                '\n'
            } else {
                ' '
            });
            if rng.next().is_multiple_of(5) {
                s.push_str(&(rng.next() % 100_000).to_string());
                s.push(' ');
            }
        }
        s.truncate(size);
        let p = sub.join(format!("f{i:05}.txt"));
        std::fs::write(&p, s).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// `count` files of 1-4 KiB of random bytes, 100 per directory, directories
/// nested three deep (d123/e45/f67): the shape of a volume with millions of
/// small files.
fn gen_many(dir: &Path, count: u64) -> Res<()> {
    let mut rng = Xorshift(0x6d61_6e79_6669_6c65);
    let mut buf = vec![0u8; 4096];
    for i in 0..count {
        let d = i / 100;
        let sub = dir.join(format!(
            "d{:03}/e{:02}/f{:02}",
            d / 10_000,
            (d / 100) % 100,
            d % 100
        ));
        if i % 100 == 0 {
            std::fs::create_dir_all(&sub).map_err(|e| format!("{}: {e}", sub.display()))?;
        }
        let n = 1024 + (rng.next() % 3073) as usize;
        rng.fill(&mut buf[..n]);
        let p = sub.join(format!("{i:07}"));
        std::fs::write(&p, &buf[..n]).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

struct Run {
    secs: f64,
    rss_kib: i64,
}

/// Runs a command, returns wall time and the child's peak RSS (wait4).
fn run(mut c: Command, what: &str) -> Res<Run> {
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    // No run pays for the previous run's dirty pages being written back.
    let _ = Command::new("sync").status();
    let start = Instant::now();
    let mut child = c.spawn().map_err(|e| format!("{what}: spawn: {e}"))?;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value for the out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; pointers are valid.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let secs = start.elapsed().as_secs_f64();
    if rc != pid {
        return Err(format!("{what}: wait4 failed"));
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let tail: String = stderr
            .chars()
            .rev()
            .take(1500)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!("{what}: failed (status {status}): {tail}"));
    }
    Ok(Run {
        secs,
        rss_kib: ru.ru_maxrss,
    })
}

struct Target {
    name: &'static str,
    mover_repo: String,
    restic_repo: String,
}

fn env_cmd(program: &Path) -> Command {
    let mut c = Command::new(program);
    c.env("RESTIC_PASSWORD", "bench-password")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("MOVER_CACHE_DIR");
    c
}

/// One figure per line, keys prefixed with the case (`local.backup.small_20k.ratio=1.85`).
fn report(case: &str, bytes: u64, m: &Run, r: &Run, extra: &[(&str, String)]) {
    let mb = bytes as f64 / 1e6;
    let mm = mb / m.secs;
    let rm = mb / r.secs;
    let mut lines = vec![
        ("bytes", bytes.to_string()),
        ("mover_mbps", format!("{mm:.1}")),
        ("restic_mbps", format!("{rm:.1}")),
        ("ratio", format!("{:.2}", mm / rm)),
        ("mover_seconds", format!("{:.2}", m.secs)),
        ("restic_seconds", format!("{:.2}", r.secs)),
        (
            "mover_peak_rss_mib",
            format!("{:.0}", m.rss_kib as f64 / 1024.0),
        ),
        (
            "restic_peak_rss_mib",
            format!("{:.0}", r.rss_kib as f64 / 1024.0),
        ),
    ];
    lines.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    for (k, v) in lines {
        println!("{case}.{k}={v}");
    }
    let _ = std::io::stdout().flush();
}

fn mover_backup(o: &Opts, t: &Target, src: &Path, pvc: &str) -> Res<Run> {
    let mut c = env_cmd(&o.mover);
    c.args([
        "backup",
        "--repository",
        &t.mover_repo,
        "--namespace",
        "bench",
        "--policy",
        "bench",
    ])
    .args(["--pvc", pvc, "--source"])
    .arg(src);
    run(c, &format!("mover backup {pvc} ({})", t.name))
}

fn restic_backup(o: &Opts, t: &Target, src: &Path, host: &str) -> Res<Run> {
    let mut c = env_cmd(&o.restic);
    c.args(["-r", &t.restic_repo, "--no-cache", "backup", "--host", host])
        .arg(src);
    run(c, &format!("restic backup {host} ({})", t.name))
}

fn mover_restore(o: &Opts, t: &Target, pvc: &str, target: &Path) -> Res<Run> {
    let mut c = env_cmd(&o.mover);
    c.args([
        "restore",
        "--repository",
        &t.mover_repo,
        "--snapshot",
        "latest",
        "--pvc",
        pvc,
    ])
    .arg("--target")
    .arg(target);
    if let Some(th) = &o.threads {
        c.args(["--restore-threads", th]);
    }
    run(c, &format!("mover restore {pvc} ({})", t.name))
}

fn restic_restore(o: &Opts, t: &Target, host: &str, target: &Path) -> Res<Run> {
    let mut c = env_cmd(&o.restic);
    c.args([
        "-r",
        &t.restic_repo,
        "--no-cache",
        "restore",
        "latest",
        "--host",
        host,
    ])
    .arg("--target")
    .arg(target);
    run(c, &format!("restic restore {host} ({})", t.name))
}

/// Where restores write. On ext4, creating many files within minutes of
/// deleting many others is slowed by the inode allocator skipping recently
/// freed inodes (seconds of kernel time per 20,000 files, for either tool,
/// depending on what ran before), so by default restores go to a tmpfs
/// (`/dev/shm`) when one with room exists: what is compared is the tools'
/// restore work, not the file system's history.
fn restore_root(o: &Opts) -> (PathBuf, &'static str) {
    if let Some(d) = &o.restore_dir {
        return (d.clone(), "given");
    }
    let shm = Path::new("/dev/shm");
    // SAFETY: zeroed statfs is a valid out-parameter; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::statfs(c"/dev/shm".as_ptr(), &mut st) } == 0;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let free = (st.f_bavail as u64).saturating_mul(st.f_bsize as u64);
    if ok && st.f_type as i64 == TMPFS_MAGIC && free >= 4 << 30 {
        (
            shm.join(format!("bench-mover-{}", std::process::id())),
            "tmpfs",
        )
    } else {
        (o.work.join("restore"), "work-dir")
    }
}

/// `restore_root`: where restores write (see [`restore_root`]).
fn run_target(
    o: &Opts,
    t: &Target,
    big: &Path,
    small: &Path,
    many: Option<&Path>,
    restore_root: &Path,
) -> Res<()> {
    let out = restore_root.join(t.name);
    let init = {
        let mut c = env_cmd(&o.restic);
        c.args(["-r", &t.restic_repo, "init"]);
        c
    };
    run(init, "restic init")?;
    let mut init = env_cmd(&o.mover);
    init.args(["init", "--repository", &t.mover_repo]);
    run(init, "mover init")?;
    let big_bytes = dir_bytes(big);
    let small_bytes = dir_bytes(small);
    let n = t.name;

    let m = mover_backup(o, t, big, "big")?;
    let r = restic_backup(o, t, big, "big")?;
    report(&format!("{n}.backup.random_1g"), big_bytes, &m, &r, &[]);

    let changed = change_big(big)?;
    let m = mover_backup(o, t, big, "big")?;
    let r = restic_backup(o, t, big, "big")?;
    report(
        &format!("{n}.backup.random_1g_1pct_changed"),
        big_bytes,
        &m,
        &r,
        &[("changed_bytes", changed.to_string())],
    );

    let m = mover_backup(o, t, small, "small")?;
    let r = restic_backup(o, t, small, "small")?;
    report(&format!("{n}.backup.small_20k"), small_bytes, &m, &r, &[]);

    // Every restore gets its own new directory, all removed at the very end: on
    // ext4, creating files within seconds of deleting many others is slowed
    // by the inode allocator (it skips recently freed inodes), which would
    // measure the previous run's cleanup instead of the restore.
    let m = mover_restore(o, t, "big", &out.join("mover-big"))?;
    let r = restic_restore(o, t, "big", &out.join("restic-big"))?;
    report(&format!("{n}.restore.random_1g"), big_bytes, &m, &r, &[]);

    let m = mover_restore(o, t, "small", &out.join("mover-small"))?;
    let r = restic_restore(o, t, "small", &out.join("restic-small"))?;
    report(&format!("{n}.restore.small_20k"), small_bytes, &m, &r, &[]);

    if let Some(many) = many {
        let bytes = dir_bytes(many);
        let case = format!("{n}.many_{}", o.many_files);
        let m = mover_backup(o, t, many, "many")?;
        let r = restic_backup(o, t, many, "many")?;
        report(&format!("{case}.backup"), bytes, &m, &r, &[]);
        let m = mover_backup(o, t, many, "many")?;
        let r = restic_backup(o, t, many, "many")?;
        report(&format!("{case}.backup_unchanged"), bytes, &m, &r, &[]);
        let m = mover_restore(o, t, "many", &out.join("mover-many"))?;
        let r = restic_restore(o, t, "many", &out.join("restic-many"))?;
        report(&format!("{case}.restore"), bytes, &m, &r, &[]);
    }
    let _ = std::fs::remove_dir_all(restore_root);
    Ok(())
}

struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_whitespace().nth(1)?.parse().ok()
}

fn start_moto() -> Res<Moto> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))?;
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("moto_server not runnable ({e}); pip install \"moto[server]\""))?;
    let m = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(port, "GET", "/").is_none() {
        if Instant::now() > deadline {
            return Err("moto_server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for b in ["mover", "restic"] {
        if http(port, "PUT", &format!("/{b}")) != Some(200) {
            return Err(format!("creating bucket {b} failed"));
        }
    }
    Ok(m)
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("bench-mover: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Res<()> {
    let o = parse_opts()?;
    if !o.mover.exists() {
        return Err(format!(
            "mover binary {} not found (build it: cargo build --release -p backup-mover)",
            o.mover.display()
        ));
    }
    let ver = Command::new(&o.restic)
        .arg("version")
        .output()
        .map_err(|e| {
            format!(
                "restic ({}) not runnable ({e}); make bench-mover builds it",
                o.restic.display()
            )
        })?;
    let (restore_dir, restore_fs) = restore_root(&o);
    println!(
        "restic_version=\"{}\"",
        String::from_utf8_lossy(&ver.stdout).trim()
    );
    println!(
        "cpus={}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("restore_dir={}", restore_dir.display());
    println!("restore_fs={restore_fs}");
    let _ = std::fs::remove_dir_all(&o.work);
    std::fs::create_dir_all(&o.work).map_err(|e| format!("{}: {e}", o.work.display()))?;
    let mut targets = vec!["local"];
    if o.s3 {
        targets.push("s3");
    }
    for name in targets {
        // Fresh datasets per target so the 1% change applies to the same base
        // (nothing is deleted before the end, see run_target).
        let big = o.work.join(format!("data-{name}/big"));
        let small = o.work.join(format!("data-{name}/small"));
        gen_big(&big, o.size_mib, o.files)?;
        gen_small(&small, o.small_files)?;
        let many = o.work.join(format!("data-{name}/many"));
        if o.many_files > 0 {
            gen_many(&many, o.many_files)?;
        }
        let moto;
        let t = if name == "local" {
            Target {
                name: "local",
                mover_repo: o.work.join("repo-mover").display().to_string(),
                restic_repo: o.work.join("repo-restic").display().to_string(),
            }
        } else {
            moto = start_moto()?;
            Target {
                name: "s3",
                mover_repo: format!("s3:http://127.0.0.1:{}/mover/bench", moto.port),
                restic_repo: format!("s3:http://127.0.0.1:{}/restic/bench", moto.port),
            }
        };
        let many = (o.many_files > 0).then_some(many.as_path());
        run_target(&o, &t, &big, &small, many, &restore_dir)?;
    }
    let _ = std::fs::remove_dir_all(&o.work);
    Ok(())
}
