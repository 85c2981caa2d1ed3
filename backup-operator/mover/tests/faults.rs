//! Faults are injected, not assumed away: the mover talks to moto through a
//! proxy that answers with 500 / 503 SlowDown / 429, resets connections and
//! stalls, and is killed with SIGKILL at random points of backups and of
//! forget+prune. After every round `restic check --read-data` (straight to
//! moto) passes and the newest completed snapshot restores byte-identically.
//!
//! `FAULT_ROUNDS` (default 20) sets the number of rounds of each kind.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy};
use common::result::MoverResult;
use common::{Env, Moto, TempDir, mover_cmd, prng_bytes};
use sha2::{Digest, Sha256};

fn rounds() -> usize {
    std::env::var("FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// S3 credentials without the retry cap of `Env::s3`: these runs must ride
/// out the injected faults with the mover's default retries.
fn env() -> Env {
    Env::s3().without("MOVER_S3_RETRIES")
}

/// Runs the mover; with `kill_after`, SIGKILLs it then unless it ended.
/// Returns the result when it ran to the end.
fn run(args: &[&str], dir: &Path, kill_after: Option<Duration>) -> Option<MoverResult> {
    let rf = dir.join("result.json");
    let _ = std::fs::remove_file(&rf);
    let mut all = args.to_vec();
    all.extend(["--result-file", rf.to_str().expect("utf-8")]);
    let mut child = mover_cmd(&env(), &all)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mover");
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
    let mut all = vec!["-r", repo];
    all.extend_from_slice(args);
    common::restic(&env(), &all)
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

/// Writes round `n`'s version of the source: most files stay, some change.
fn write_source(src: &Path, n: u64) {
    std::fs::create_dir_all(src).expect("mkdir");
    for i in 0..12u64 {
        let seed = if i % 4 == n % 4 { 1000 * n + i } else { i };
        std::fs::write(src.join(format!("f{i}")), prng_bytes(seed, 600 * 1024)).expect("write");
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
    let direct = format!("{}/ns/pvc", moto.bucket("faults"));
    let proxy = Proxy::start(moto.port);
    proxy.random_faults(
        0x5eed,
        0.1,
        vec![
            Fault::Status(503, "SlowDown"),
            Fault::Status(500, "InternalError"),
            Fault::Reset,
            Fault::Status(429, "TooManyRequests"),
            Fault::Delay(Duration::from_millis(1500)),
        ],
    );
    let via_proxy = proxy.repo("faults/ns/pvc");
    let tmp = TempDir::new("s3-faults");
    let base = tmp.path();
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
        match run(&backup, base, kill) {
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
            match run(&forget, base, kill) {
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
        proxy.set_random_enabled(false);
        check(&direct, &round);
        if let Some((id, want)) = &newest {
            verify_newest(&direct, base, id, want, &round);
        }
        proxy.set_random_enabled(true);
    }
    eprintln!(
        "fault rounds={} completed_backups={completed} killed_backups={backups_killed} \
         killed_prunes={prunes_killed} requests={} injected={}",
        rounds(),
        proxy.requests(),
        proxy.faults(),
    );
    assert!(
        proxy.faults() >= rounds() as u64,
        "about one fault per round injected"
    );
    assert!(
        completed > 0 && backups_killed > 0,
        "both completed and killed backups"
    );
}
