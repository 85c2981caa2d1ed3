//! The archiver against a local repository, in process: a cancelled
//! backup indexes what it uploaded and the next run reuses it.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustic_core::repofile::SnapshotFile;
use rustic_core::{
    ConfigOptions, Credentials, KeyOptions, OpenStatus, Repository, RepositoryBackends,
    RepositoryOptions, SnapshotOptions,
};

use super::{INTERRUPTED, Settings, backup};
use crate::repo::{Backend, RepoSpec};

fn files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
            out.insert(n.to_string());
        }
    }
    out
}

fn walk_sizes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        n += if p.is_dir() {
            walk_sizes(&p)
        } else {
            p.metadata().map_or(0, |m| m.len())
        };
    }
    n
}

fn init(be: &Backend) -> Repository<OpenStatus> {
    let backends = RepositoryBackends::new(be.be.clone(), None);
    Repository::new(&RepositoryOptions::default().no_cache(true), &backends)
        .expect("repository")
        .init(
            &Credentials::password("pw"),
            &KeyOptions::default(),
            &ConfigOptions::default(),
        )
        .expect("init")
}

/// Pack ids listed by the repository's index files.
fn indexed_packs(repo: &Repository<OpenStatus>) -> BTreeSet<String> {
    repo.stream_files::<rustic_core::repofile::IndexFile>()
        .expect("index")
        .flat_map(|f| f.expect("index file").1.packs)
        .map(|p| p.id.to_hex().as_str().to_string())
        .collect()
}

#[test]
fn cancelled_backup_indexes_its_packs_and_the_next_run_reuses_them() {
    let dir = std::env::temp_dir().join(format!("mover-cancel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (repo_dir, src) = (dir.join("repo"), dir.join("src"));
    std::fs::create_dir_all(&src).expect("mkdir");
    // 24 files of 4 MiB of distinct noise (xorshift).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..24 {
        let mut v = Vec::with_capacity(4 << 20);
        while v.len() < 4 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(src.join(format!("f{i:02}")), v).expect("write");
    }
    let be = Backend::connect(RepoSpec::Local(repo_dir.clone())).expect("backend");
    let repo = init(&be);
    let crypto = crate::repo::crypto(&repo).expect("key");
    let snap = || -> SnapshotFile { SnapshotOptions::default().to_snapshot().expect("snap") };

    let cancel = AtomicBool::new(false);
    let data = repo_dir.join("data");
    let run = std::thread::scope(|s| {
        s.spawn(|| {
            // Cancel once three packs are uploaded.
            let end = Instant::now() + Duration::from_secs(120);
            while files(&data).len() < 3 && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            cancel.store(true, Ordering::SeqCst);
        });
        let settings = Settings {
            source: &src,
            as_path: "/data",
            parent: None,
            threads: Some(2),
            cancel: Some(&cancel),
            skipped: &crate::skipped::Skipped::default(),
            excludes: &[],
        };
        backup(&repo, &be, &crypto, &settings, snap())
    });
    let err = run.expect_err("a cancelled backup fails");
    assert!(err.message.starts_with(INTERRUPTED), "{}", err.message);
    assert!(files(&repo_dir.join("snapshots")).is_empty(), "no snapshot");
    let uploaded = files(&data);
    assert!(uploaded.len() >= 3, "{uploaded:?}");
    let stored: u64 = walk_sizes(&data);
    assert!(
        stored < 80 << 20,
        "stopped reading early: {stored} of 96 MiB stored"
    );
    // Every pack it uploaded, partly filled ones included, is indexed.
    assert_eq!(indexed_packs(&repo), uploaded);

    let settings = Settings {
        source: &src,
        as_path: "/data",
        parent: None,
        threads: Some(2),
        cancel: None,
        skipped: &crate::skipped::Skipped::default(),
        excludes: &[],
    };
    let done = backup(&repo, &be, &crypto, &settings, snap()).expect("second backup");
    let sum = done.summary.expect("summary");
    assert_eq!(sum.total_bytes_processed, 24 << 22);
    assert!(
        sum.data_added_files + (3 << 22) <= 24 << 22,
        "the second run stored {} bytes again",
        sum.data_added_files
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exclude_patterns_become_walk_ignores_anchored_at_the_source() {
    let globs = super::exclude_globs(
        std::path::Path::new("/data/"),
        &[
            "*.tmp".into(),
            " cache/ ".into(),
            "/var/log/**".into(),
            "".into(),
        ],
    );
    assert_eq!(
        globs,
        ["!/data/lost+found", "!*.tmp", "!cache", "!/data/var/log/**"]
    );
}
