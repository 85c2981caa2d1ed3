//! Faults are injected, not assumed away: the mover talks to moto through a
//! proxy that answers with 500 / 503 SlowDown / 429, resets connections and
//! stalls, and is killed with SIGKILL at random points of backups and of
//! forget+prune. After every round `restic check --read-data` (straight to
//! moto) passes and the newest completed snapshot restores byte-identically.
//!
//! `FAULT_ROUNDS` (default 20) sets the number of rounds of each kind.

#[path = "faults/proxy.rs"]
mod proxy;
#[allow(dead_code)]
#[path = "../src/result.rs"]
mod result;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proxy::{FaultProxy, Plan};
use result::MoverResult;
use sha2::{Digest, Sha256};

const PASSWORD: &str = "fault-password";

fn rounds() -> usize {
    std::env::var("FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mover-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("mkdir");
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// moto on 127.0.0.1, stopped by its own PID on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install \"moto[server]\")");
        let m = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while m.put("/probe-bucket").is_none() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        m
    }

    fn put(&self, path: &str) -> Option<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(
            s,
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        resp.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn envs(c: &mut Command) {
    c.env("RESTIC_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1");
}

fn mover_cmd(args: &[&str], result: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_backup-mover"));
    c.args(args)
        .args(["--result-file", result.to_str().expect("utf-8")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    envs(&mut c);
    c
}

/// Runs the mover; with `kill_after`, SIGKILLs it then unless it ended.
/// Returns the result when it ran to the end.
fn run(args: &[&str], dir: &Path, kill_after: Option<Duration>) -> Option<MoverResult> {
    let rf = dir.join("result.json");
    let _ = std::fs::remove_file(&rf);
    let mut child = mover_cmd(args, &rf).spawn().expect("spawn mover");
    if let Some(d) = kill_after {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
    }
    let out = child.wait_with_output().expect("wait mover");
    let text = std::fs::read_to_string(&rf).unwrap_or_else(|_| {
        panic!(
            "no result for {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Some(serde_json::from_str(&text).expect("result parses"))
}

fn restic(repo: &str, args: &[&str]) -> std::process::Output {
    let bin = std::env::var("RESTIC_BIN").unwrap_or_else(|_| "restic".into());
    let mut c = Command::new(bin);
    c.args(["--no-cache", "-r", repo]).args(args);
    envs(&mut c);
    c.output().expect("restic (RESTIC_BIN or PATH)")
}

fn check(repo: &str, round: &str) {
    let out = restic(repo, &["check", "--read-data"]);
    assert!(
        out.status.success(),
        "{round}: restic check --read-data failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// After a kill the dead run's lock stays: the operator's explicit unlock
/// step (it knows no Job runs) removes it.
fn unlock(repo: &str) {
    let out = restic(repo, &["unlock", "--remove-all"]);
    assert!(
        out.status.success(),
        "unlock: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn prng(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes round `n`'s version of the source: most files stay, some change.
fn write_source(src: &Path, n: u64) {
    std::fs::create_dir_all(src).expect("mkdir");
    for i in 0..12u64 {
        let seed = if i % 4 == n % 4 { 1000 * n + i } else { i };
        std::fs::write(src.join(format!("f{i}")), prng(seed, 600 * 1024)).expect("write");
    }
}

fn digest_tree(root: &Path) -> Vec<(String, String)> {
    let mut v: Vec<_> = std::fs::read_dir(root)
        .expect("read_dir")
        .map(|e| {
            let p = e.expect("entry").path();
            let d = format!("{:x}", Sha256::digest(std::fs::read(&p).expect("read")));
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                d,
            )
        })
        .collect();
    v.sort();
    v
}

fn verify_newest(direct: &str, base: &Path, id: &str, want: &[(String, String)], round: &str) {
    let target = base.join(format!("restore-{round}"));
    let r = run(
        &[
            "restore",
            "--repository",
            direct,
            "--snapshot",
            id,
            "--target",
            target.to_str().expect("utf-8"),
        ],
        base,
        None,
    )
    .expect("restore ran");
    assert!(r.ok, "{round}: restore of {id} failed: {:?}", r.error);
    assert_eq!(digest_tree(&target), want, "{round}: restored {id} differs");
    std::fs::remove_dir_all(&target).expect("cleanup");
}

#[test]
fn s3_faults_and_kills_never_lose_data() {
    let moto = Moto::start();
    assert_eq!(moto.put("/faults"), Some(200), "bucket");
    let proxy = FaultProxy::start(moto.port, Plan::new(0x5eed, 0.1));
    let via_proxy = format!("s3:http://127.0.0.1:{}/faults/ns/pvc", proxy.port);
    let direct = format!("s3:http://127.0.0.1:{}/faults/ns/pvc", moto.port);
    let base = tmp("s3");
    let src = base.join("src");
    let mut newest: Option<(String, Vec<(String, String)>)> = None;
    let (mut backups_killed, mut prunes_killed, mut completed) = (0, 0, 0);

    for n in 0..rounds() as u64 {
        let round = format!("round {n}");
        write_source(&src, n);
        let want = digest_tree(&src);
        // Every third round runs to the end; the others die at a random point.
        let kill = (n % 3 != 0).then(|| Duration::from_millis(200 + (n * 397) % 2500));
        let backup = [
            "backup",
            "--repository",
            &via_proxy,
            "--source",
            src.to_str().expect("utf-8"),
            "--namespace",
            "ns",
            "--policy",
            "p",
            "--pvc",
            "pvc",
            "--lock-wait-seconds",
            "120",
        ];
        match run(&backup, &base, kill) {
            Some(r) => {
                assert!(r.ok, "{round}: backup through faults failed: {:?}", r.error);
                completed += 1;
                newest = Some((r.snapshot_id.expect("id"), want));
            }
            None => {
                backups_killed += 1;
                unlock(&direct);
            }
        }
        if n % 2 == 1 {
            let kill = (n % 4 == 1).then(|| Duration::from_millis(100 + (n * 211) % 1500));
            let forget = [
                "forget",
                "--repository",
                &via_proxy,
                "--namespace",
                "ns",
                "--policy",
                "p",
                "--pvc",
                "pvc",
                "--keep-last",
                "2",
                "--prune",
                "--lock-wait-seconds",
                "120",
            ];
            match run(&forget, &base, kill) {
                Some(r) => assert!(
                    r.ok,
                    "{round}: forget+prune through faults failed: {:?}",
                    r.error
                ),
                None => {
                    prunes_killed += 1;
                    unlock(&direct);
                }
            }
        }
        proxy.set_enabled(false);
        check(&direct, &round);
        if let Some((id, want)) = &newest {
            verify_newest(&direct, &base, id, want, &round);
        }
        proxy.set_enabled(true);
    }
    let c = &proxy.counts;
    eprintln!(
        "fault rounds={} completed_backups={completed} killed_backups={backups_killed} killed_prunes={prunes_killed} \
         requests={} injected={} (500={} 503={} 429={} resets={} stalls={})",
        rounds(),
        c.requests.load(std::sync::atomic::Ordering::Relaxed),
        c.injected(),
        c.error500.load(std::sync::atomic::Ordering::Relaxed),
        c.slowdown503.load(std::sync::atomic::Ordering::Relaxed),
        c.throttle429.load(std::sync::atomic::Ordering::Relaxed),
        c.resets.load(std::sync::atomic::Ordering::Relaxed),
        c.stalls.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        c.injected() >= rounds() as u64,
        "about one fault per round injected"
    );
    assert!(
        completed > 0 && backups_killed > 0,
        "both completed and killed backups"
    );
    let _ = std::fs::remove_dir_all(&base);
}
