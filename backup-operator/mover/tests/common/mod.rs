//! Helpers shared by the mover's process-level tests: temp dirs, running
//! the mover and restic, checking and restoring repositories, a moto S3
//! server and a fault-injecting proxy in front of it.
#![allow(dead_code)]

#[path = "../../src/result.rs"]
pub mod result;

pub mod proxy;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use result::{ErrorKind, MoverResult};
use sha2::{Digest, Sha256};

pub const PASSWORD: &str = "test-password";
pub const MIB: usize = 1024 * 1024;

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "mover-test-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone)]
pub struct Env {
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn local() -> Self {
        Self {
            vars: vec![("RESTIC_PASSWORD".into(), PASSWORD.into())],
        }
    }
    pub fn s3() -> Self {
        Self {
            vars: vec![
                ("RESTIC_PASSWORD".into(), PASSWORD.into()),
                ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
                ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
                ("MOVER_S3_RETRIES".into(), "1".into()),
            ],
        }
    }
    pub fn without(&self, k: &str) -> Self {
        let mut e = self.clone();
        e.vars.retain(|(a, _)| a != k);
        e
    }
    pub fn with(&self, k: &str, v: &str) -> Self {
        let mut e = self.clone();
        e.vars.retain(|(a, _)| a != k);
        e.vars.push((k.into(), v.into()));
        e
    }
    pub fn apply(&self, c: &mut Command) {
        for k in [
            "RESTIC_PASSWORD",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "MOVER_S3_PATH_STYLE",
            "MOVER_CACHE_DIR",
            "MOVER_INDEX_INTERVAL_SECONDS",
        ] {
            c.env_remove(k);
        }
        c.env("HOME", std::env::temp_dir());
        for (k, v) in &self.vars {
            c.env(k, v);
        }
    }
}

pub fn mover_cmd(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_backup-mover"));
    c.args(args);
    env.apply(&mut c);
    c
}

/// Runs the mover with `--result-file`; returns the parsed result.
pub fn mover(env: &Env, args: &[&str]) -> MoverResult {
    let dir = TempDir::new("result");
    let rf = dir.join("result.json");
    let mut all: Vec<&str> = args.to_vec();
    let rf_s = rf.to_str().expect("utf8");
    all.extend(["--result-file", rf_s]);
    let out = mover_cmd(env, &all).output().expect("run backup-mover");
    let text = std::fs::read_to_string(&rf).unwrap_or_else(|_| {
        panic!(
            "no result file for {args:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(text.len() <= 4096, "result over 4096 bytes");
    let r: MoverResult = serde_json::from_str(&text).expect("result parses as MoverResult");
    assert_eq!(
        out.status.success(),
        r.ok,
        "exit status must match ok for {args:?}: {text}"
    );
    r
}

pub fn ok(env: &Env, args: &[&str]) -> MoverResult {
    let r = mover(env, args);
    assert!(r.ok, "{args:?} failed: {:?}", r.error);
    r
}

pub fn err_kind(env: &Env, args: &[&str]) -> ErrorKind {
    let r = mover(env, args);
    assert!(!r.ok, "{args:?} unexpectedly succeeded");
    let e = r.error.expect("error present");
    assert!(!e.message.contains(PASSWORD), "password leaked");
    assert!(!e.message.contains("testing-secret"), "secret leaked");
    e.kind
}

/// The restic the differential and fault tests compare against:
/// `RESTIC_BIN` (restic 0.18.1 in `make test-integration`), else `restic`
/// on PATH.
pub fn restic_bin() -> String {
    std::env::var("RESTIC_BIN").unwrap_or_else(|_| "restic".into())
}

/// Runs [`restic_bin`] with `--no-cache` and `env`.
pub fn restic(env: &Env, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(restic_bin());
    c.arg("--no-cache").args(args);
    env.apply(&mut c);
    c.output()
        .expect("restic must be installed (RESTIC_BIN or PATH)")
}

pub fn backup_args<'a>(repo: &'a str, src: &'a str, pvc: &'a str) -> Vec<&'a str> {
    vec![
        "backup",
        "--repository",
        repo,
        "--source",
        src,
        "--namespace",
        "ns1",
        "--policy",
        "pol1",
        "--pvc",
        pvc,
    ]
}

/// Deterministic pseudo-random bytes.
pub fn prng_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A moto S3 server owned by this test; killed (by PID, via the Child) on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "moto_server not runnable ({e}); install it with: pip install \"moto[server]\""
                )
            });
        let mut m = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if m.http("GET", "/", b"").is_some() {
                break;
            }
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("moto_server exited early ({status}); pip install \"moto[server]\"");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not start in 60s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        m
    }

    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> Option<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .ok()?;
        s.write_all(body).ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        resp.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn bucket(&self, name: &str) -> String {
        let st = self
            .http("PUT", &format!("/{name}"), b"")
            .expect("create bucket");
        assert_eq!(st, 200, "create bucket {name}");
        format!("s3:http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The result JSON the mover prints last on stderr.
pub fn parse_result(args: &[&str], out: &std::process::Output) -> MoverResult {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no result for {args:?}; stderr: {stderr}"));
    let r: MoverResult = serde_json::from_str(line).expect("result parses");
    assert_eq!(
        out.status.success(),
        r.ok,
        "exit status vs ok for {args:?}: {line}"
    );
    r
}

/// `restic check --read-data` passes (orphaned packs are not errors).
pub fn assert_restic_check(env: &Env, repo: &str, when: &str) {
    let o = restic(env, &["-r", repo, "check", "--read-data"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && text.contains("no errors were found"),
        "restic check --read-data {when}:\n{text}"
    );
}

/// Relative path to (kind, mode, content hash) of everything below `root`.
pub fn tree_of(root: &Path) -> BTreeMap<String, (char, u32, String)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (char, u32, String)>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        for p in names {
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let rel = p.strip_prefix(base).expect("prefix").display().to_string();
            if m.is_dir() {
                out.insert(rel, ('d', m.mode() & 0o7777, String::new()));
                walk(base, &p, out);
            } else {
                let data = std::fs::read(&p).expect("read");
                let h = format!("{:x}", Sha256::digest(&data));
                out.insert(rel, ('f', m.mode() & 0o7777, h));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Restores `snapshot` with the mover and compares it with `src`.
pub fn assert_restores(env: &Env, repo: &str, snapshot: &str, src: &Path, when: &str) {
    let t = TempDir::new("restore");
    let target = t.join("out");
    let target_s = target.to_str().expect("utf8");
    ok(
        env,
        &[
            "restore",
            "--repository",
            repo,
            "--snapshot",
            snapshot,
            "--target",
            target_s,
        ],
    );
    let (a, b) = (tree_of(src), tree_of(&target));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "restored names {when}"
    );
    for (k, v) in &a {
        assert_eq!(Some(v), b.get(k), "{k} differs after restore {when}");
    }
}

/// File names (pack ids) under `<repo>/data`.
pub fn packs(repo: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(rd) = std::fs::read_dir(repo.join("data")) else {
        return out;
    };
    for sub in rd {
        let sub = sub.expect("entry").path();
        for f in std::fs::read_dir(&sub).expect("read_dir") {
            let name = f.expect("entry").file_name().to_string_lossy().to_string();
            if !name.contains(".tmp") {
                out.insert(name);
            }
        }
    }
    out
}

/// Names of files directly in `<repo>/<dir>`.
pub fn files_in(repo: &Path, dir: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(repo.join(dir)) else {
        return Vec::new();
    };
    rd.map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect()
}

/// Regular files below `dir`, recursively.
pub fn files_under(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path();
            if p.is_dir() { files_under(&p) } else { 1 }
        })
        .sum()
}

/// `len` random bytes (from /dev/urandom) at `path`.
pub fn random_file(path: &Path, len: usize) {
    let mut data = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .expect("urandom");
    std::fs::write(path, data).expect("write");
}
