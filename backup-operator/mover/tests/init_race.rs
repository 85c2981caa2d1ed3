//! Two movers initialising one empty repository at once: both succeed and
//! the repository has exactly one key and one config; with conditional
//! writes (local hard link, S3 If-None-Match) and with the claim protocol
//! (a proxy that drops If-None-Match, as servers without support do).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy, Rule};
use common::*;

/// Races two `init`s; returns their log (`RUST_LOG=info`).
fn race(env: &Env, repo: &str) -> String {
    let env = env.with("RUST_LOG", "info");
    let children: Vec<_> = (0..2)
        .map(|_| {
            mover_cmd(&env, &["init", "--repository", repo])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn init")
        })
        .collect();
    let mut log = String::new();
    for c in children {
        let out = c.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "init failed: {err}");
        log.push_str(&err);
    }
    let o = restic(&env, &["-r", repo, "list", "keys"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        1,
        "exactly one key in {repo}"
    );
    let o = restic(&env, &["-r", repo, "cat", "config"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Both processes now open the same repository.
    ok(&env, &["snapshots", "--repository", repo]);
    log
}

/// Whether a loser of a conditional create opened the winner's repository.
fn had_loser(log: &str) -> bool {
    log.contains("another process initialised")
}

#[test]
fn init_race_local() {
    let t = TempDir::new("race");
    let env = Env::local();
    let mut lost = 0;
    for i in 0..10 {
        let repo = t.join(&format!("r{i}"));
        lost += usize::from(had_loser(&race(&env, repo.to_str().expect("utf8"))));
    }
    eprintln!("local init race: {lost}/10 rounds had a loser");
    assert!(lost > 0, "no round raced");
}

#[test]
fn init_race_s3() {
    let moto = Moto::start();
    let b = moto.bucket("race");
    let env = Env::s3();
    let mut lost = 0;
    for i in 0..10 {
        lost += usize::from(had_loser(&race(&env, &format!("{b}/r{i}"))));
    }
    eprintln!("S3 init race (If-None-Match): {lost}/10 rounds had a loser");
    assert!(lost > 0, "no round raced");
}

#[test]
fn init_race_s3_without_conditional_writes() {
    let moto = Moto::start();
    moto.bucket("claims");
    let proxy = Proxy::start(moto.port);
    proxy.add(Rule::new(
        None,
        "/",
        Fault::StripHeader("If-None-Match"),
        None,
    ));
    let env = Env::s3();
    for i in 0..3 {
        let log = race(&env, &proxy.repo(&format!("claims/r{i}")));
        assert!(log.contains("no conditional writes"), "{log}");
    }

    // A claim of an initialiser that died a moment ago does not block for
    // long: the claim is given up after 30 s without a config.
    let millis = jiff::Timestamp::now().as_millisecond() - 1000;
    let st = moto
        .http(
            "PUT",
            &format!("/claims/dead/mover-init/{millis:015}-0000000000000000"),
            b"dead",
        )
        .expect("put claim");
    assert_eq!(st, 200);
    let start = Instant::now();
    let r = ok(&env, &["init", "--repository", &proxy.repo("claims/dead")]);
    assert!(r.ok);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(60), "init took {took:?}");
    eprintln!("init past a dead claim took {took:?}");
}
