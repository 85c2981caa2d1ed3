//! The subcommands.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rustic_core::repofile::SnapshotFile;
use rustic_core::{OpenStatus, Repository, SnapshotOptions, StringList};

use crate::archive;
use crate::cancel;
use crate::error::{MResult, MoverError, RusticCtx};
use crate::lock;
use crate::lock::unlock;
use crate::meta;
use crate::owner::{self, Me};
use crate::prune::{self, PruneOpts};
use crate::repo::{self, Backend};
use crate::restore;
use crate::result::{ErrorInfo, ErrorKind, MoverResult, SnapshotInfo};
use crate::select::{Selector, choose_parent, tag_value};
use crate::skipped::Skipped;
use backup_retention as retention;

/// Path under which every snapshot stores the PVC contents (restic's
/// `paths`), independent of where the PVC was mounted.
pub const SNAPSHOT_PATH: &str = "/data";

pub struct BackupArgs {
    pub source: PathBuf,
    pub namespace: String,
    pub policy: String,
    pub pvc: String,
    pub retention: retention::Policy,
    pub allow_empty: bool,
    pub lock_wait: Duration,
    /// Snapshot time override (tests of age-based retention).
    pub time: Option<Timestamp>,
    /// File workers (None: the archive's default).
    pub threads: Option<usize>,
    /// Prune's grace period before a marked pack is deleted.
    pub prune_grace: Duration,
    /// Globs of paths not backed up (`lost+found` never is).
    pub excludes: Vec<String>,
    /// Apply retention even in a repository another cluster or namespace
    /// owns (records us as its owner).
    pub adopt: bool,
}

pub(crate) fn info(s: &SnapshotFile) -> SnapshotInfo {
    SnapshotInfo {
        id: s.id.to_string(),
        time: s.time.timestamp().to_string(),
        size: s.summary.as_ref().map_or(0, |x| x.total_bytes_processed),
        pvc: tag_value(s, "pvc").map(str::to_string),
        ..SnapshotInfo::default()
    }
}

/// Matching snapshots, newest first.
pub(crate) fn snapshots_of(
    repo: &Repository<OpenStatus>,
    sel: &Selector<'_>,
) -> MResult<Vec<SnapshotFile>> {
    let mut snaps: Vec<SnapshotFile> = repo
        .get_all_snapshots()
        .ctx("reading snapshots")?
        .into_iter()
        .filter(|s| sel.matches(s))
        .collect();
    snaps.sort_by_key(|s| std::cmp::Reverse(s.time.timestamp()));
    Ok(snaps)
}

fn snapshots_for(repo: &Repository<OpenStatus>, pvc: Option<&str>) -> MResult<Vec<SnapshotFile>> {
    snapshots_of(
        repo,
        &Selector {
            pvc,
            ..Selector::default()
        },
    )
}

/// Empty, or holding nothing but the file system's `lost+found`: a volume
/// that was never written (or not mounted) must not pass for a backup.
fn source_is_empty(path: &Path) -> MResult<bool> {
    let rd = std::fs::read_dir(path).map_err(|e| {
        let mut err = MoverError::classify(&format!("reading source {}", path.display()), &e);
        if err.kind == ErrorKind::NotFound {
            err.kind = ErrorKind::SourceEmpty;
        }
        err
    })?;
    for entry in rd {
        let entry = entry
            .map_err(|e| MoverError::classify(&format!("reading source {}", path.display()), &e))?;
        if entry.file_name() != crate::archive::LOST_FOUND {
            return Ok(false);
        }
    }
    Ok(true)
}

pub fn backup(
    be: &Backend,
    o: &repo::OpenOpts,
    a: &BackupArgs,
    r: &mut MoverResult,
) -> MResult<()> {
    let started = Instant::now();
    r.pvc = Some(a.pvc.clone());
    if !a.source.is_dir() {
        return Err(MoverError::new(
            ErrorKind::SourceEmpty,
            format!("source {} is not a directory", a.source.display()),
        ));
    }
    if !a.allow_empty && source_is_empty(&a.source)? {
        return Err(MoverError::new(
            ErrorKind::SourceEmpty,
            format!("source {} is empty; nothing to back up", a.source.display()),
        ));
    }
    let root = meta::read_root(&a.source)?;
    let repo = repo::open_or_init(be, o, true)?;
    let crypto = repo::crypto(&repo)?;
    let guard = lock::acquire(be.raw.clone(), crypto.clone(), false, a.lock_wait)?;
    let tags = format!("ns={},policy={},pvc={}", a.namespace, a.policy, a.pvc);
    let tags = StringList::from_str(&tags)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("snapshot tags: {e}")))?;
    let mut snap_opts = SnapshotOptions::default()
        .host(a.pvc.clone())
        .tags(vec![tags])
        .description(meta::describe(root, meta::pvc_spec_from_env()));
    if let Some(t) = a.time {
        snap_opts = snap_opts.time(t.to_zoned(jiff::tz::TimeZone::UTC));
    }
    let snap = snap_opts.to_snapshot().ctx("preparing snapshot")?;
    let sel = Selector::policy(&a.namespace, &a.policy, &a.pvc);
    let all = snapshots_of(&repo, &Selector::default())?;
    let me = Me::new(&a.namespace, &a.policy);
    if let Err(e) = owner::claim_if_unowned(&be.raw, &crypto, &me, &all) {
        log::warn!("writing the owner marker: {e}");
    }
    // Unchanged files (against the parent) are not read again.
    let skipped = Skipped::default();
    let settings = archive::Settings {
        source: &a.source,
        as_path: SNAPSHOT_PATH,
        parent: choose_parent(&all, &sel),
        threads: a.threads,
        cancel: Some(cancel::flag()),
        skipped: &skipped,
        excludes: &a.excludes,
    };
    let snap = archive::backup(&repo, be, &crypto, &settings, snap)
        .map_err(|e| e.context(&format!("backing up {}", a.source.display())))?;
    guard.release();

    r.snapshot_id = Some(snap.id.to_string());
    r.time = Some(snap.time.timestamp().to_string());
    if let Some(s) = &snap.summary {
        r.bytes_processed = Some(s.total_bytes_processed);
        r.bytes_added = Some(s.data_added);
        r.bytes_stored = Some(s.data_added_packed);
        r.files = Some(s.total_files_processed);
    }
    r.ok = true;

    if skipped.count() > 0 {
        // A partial snapshot is kept, but never used to delete older ones.
        r.partial = Some(true);
        r.warning = Some(format!(
            "partial backup: {} entries could not be read (retention skipped): {}",
            skipped.count(),
            skipped.examples().join("; ").replace('\n', " ")
        ));
    } else if a.retention.is_set() {
        let prune = PruneOpts::new(a.prune_grace);
        let scope = Scope {
            sel,
            me: &me,
            adopt: a.adopt,
            dry_run: false,
        };
        match apply_retention(be, &repo, &scope, &a.retention, Some(&prune), a.lock_wait) {
            Ok(forgotten) => r.forgotten = Some(forgotten),
            Err(e) => {
                r.warning = Some(format!("backup stored but retention failed: {e}"));
                r.retention_error = Some(ErrorInfo {
                    kind: e.kind,
                    message: e.message,
                });
            }
        }
    }
    match snapshots_of(&repo, &sel) {
        Ok(s) => r.snapshots = Some(s.iter().map(info).collect()),
        Err(e) => r.warning = Some(format!("listing snapshots after backup: {e}")),
    }
    r.duration_seconds = Some(started.elapsed().as_secs_f64());
    Ok(())
}

/// Which snapshots of `snaps` (newest first) to delete. The newest is always kept.
pub fn select_forget(
    snaps: &[SnapshotFile],
    ret: &retention::Policy,
    now: Timestamp,
) -> Vec<usize> {
    let times: Vec<Timestamp> = snaps.iter().map(|s| s.time.timestamp()).collect();
    retention::keep(&times, ret, now)
        .iter()
        .enumerate()
        .filter(|(_, k)| !**k)
        .map(|(i, _)| i)
        .collect()
}

/// What retention may touch: one policy's snapshots of one PVC, in a
/// repository that is ours (see `owner.rs`).
pub struct Scope<'a> {
    pub sel: Selector<'a>,
    pub me: &'a Me,
    /// Take over a repository that is not ours (rewrites the owner marker).
    pub adopt: bool,
    /// Only report what would be forgotten.
    pub dry_run: bool,
}

/// forget (one policy of one PVC) + two-phase prune (`prune/`), under an
/// exclusive lock.
pub fn apply_retention(
    be: &Backend,
    repo: &Repository<OpenStatus>,
    scope: &Scope<'_>,
    ret: &retention::Policy,
    prune: Option<&PruneOpts>,
    lock_wait: Duration,
) -> MResult<Vec<String>> {
    let crypto = repo::crypto(repo)?;
    let guard = lock::acquire(be.raw.clone(), crypto.clone(), true, lock_wait)?;
    let all = snapshots_of(repo, &Selector::default())?;
    owner::authorize(&be.raw, &crypto, scope.me, &all, scope.adopt)?;
    let snaps: Vec<SnapshotFile> = all.into_iter().filter(|s| scope.sel.matches(s)).collect();
    let del = select_forget(&snaps, ret, Timestamp::now());
    let ids: Vec<_> = del.iter().map(|&i| snaps[i].id).collect();
    if scope.dry_run {
        guard.release();
        return Ok(ids.iter().map(ToString::to_string).collect());
    }
    guard.check()?;
    if !ids.is_empty() {
        repo.delete_snapshots(&ids).ctx("deleting snapshots")?;
    }
    if let Some(o) = prune {
        guard.check()?;
        prune::after_forget(be, repo, o, !ids.is_empty())?;
    }
    guard.release();
    Ok(ids.iter().map(ToString::to_string).collect())
}

pub fn forget(
    be: &Backend,
    o: &repo::OpenOpts,
    scope: &Scope<'_>,
    ret: &retention::Policy,
    prune: Option<&PruneOpts>,
    lock_wait: Duration,
    r: &mut MoverResult,
) -> MResult<()> {
    let started = Instant::now();
    r.pvc = scope.sel.pvc.map(str::to_string);
    let repo = repo::open_or_init(be, o, false)?;
    let forgotten = if ret.is_set() {
        apply_retention(be, &repo, scope, ret, prune, lock_wait)?
    } else if let Some(o) = prune {
        let crypto = repo::crypto(&repo)?;
        let guard = lock::acquire(be.raw.clone(), crypto.clone(), true, lock_wait)?;
        let all = snapshots_of(&repo, &Selector::default())?;
        owner::authorize(&be.raw, &crypto, scope.me, &all, scope.adopt)?;
        guard.check()?;
        prune::run(be, &repo, o)?;
        guard.release();
        Vec::new()
    } else {
        Vec::new()
    };
    r.forgotten = Some(forgotten);
    r.snapshots = Some(snapshots_of(&repo, &scope.sel)?.iter().map(info).collect());
    r.time = Some(Timestamp::now().to_string());
    r.duration_seconds = Some(started.elapsed().as_secs_f64());
    r.ok = true;
    Ok(())
}

/// Removes stale locks (all with `remove_all`); every removal is logged.
pub fn unlock(
    be: &Backend,
    o: &repo::OpenOpts,
    remove_all: bool,
    r: &mut MoverResult,
) -> MResult<()> {
    let repo = repo::open_or_init(be, o, false)?;
    let crypto = repo::crypto(&repo)?;
    let done = unlock::unlock(&be.raw, &crypto, remove_all)?;
    if !done.kept.is_empty() {
        r.warning = Some(format!(
            "{} lock(s) kept: {}",
            done.kept.len(),
            done.kept.join("; ")
        ));
        r.kept_locks = Some(done.kept);
    }
    r.removed_locks = Some(done.removed);
    r.time = Some(Timestamp::now().to_string());
    r.ok = true;
    Ok(())
}

pub fn snapshots(
    be: &Backend,
    o: &repo::OpenOpts,
    pvc: Option<&str>,
    r: &mut MoverResult,
) -> MResult<Vec<SnapshotFile>> {
    r.pvc = pvc.map(str::to_string);
    let repo = repo::open_or_init(be, o, false)?;
    let snaps = snapshots_for(&repo, pvc)?;
    r.snapshots = Some(snaps.iter().map(info).collect());
    r.time = Some(Timestamp::now().to_string());
    r.ok = true;
    Ok(snaps)
}

pub struct RestoreArgs {
    pub snapshot: String,
    /// Restore only these paths of the backup (empty: everything).
    pub paths: Vec<String>,
    pub pvc: Option<String>,
    pub before: Option<Timestamp>,
    pub target: PathBuf,
    pub threads: usize,
    pub delete: bool,
    pub no_ownership: bool,
    pub lock_wait: Duration,
}

fn select_snapshot(repo: &Repository<OpenStatus>, a: &RestoreArgs) -> MResult<SnapshotFile> {
    find_snapshot(repo, &a.snapshot, a.pvc.as_deref(), a.before)
}

/// `latest` (of `pvc`, at or before `before`) or a snapshot by (short) id.
pub fn find_snapshot(
    repo: &Repository<OpenStatus>,
    snapshot: &str,
    pvc: Option<&str>,
    before: Option<Timestamp>,
) -> MResult<SnapshotFile> {
    if snapshot == "latest" {
        let snaps = snapshots_for(repo, pvc)?;
        return snaps
            .into_iter()
            .find(|s| before.is_none_or(|b| s.time.timestamp() <= b))
            .ok_or_else(|| {
                MoverError::new(
                    ErrorKind::NotFound,
                    format!(
                        "no snapshot{}{}",
                        pvc.map(|p| format!(" for pvc {p}")).unwrap_or_default(),
                        before.map(|b| format!(" before {b}")).unwrap_or_default()
                    ),
                )
            });
    }
    if snapshot.len() < 4 || !snapshot.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(MoverError::new(
            ErrorKind::Other,
            format!("snapshot {:?} is neither 'latest' nor a hex id", snapshot),
        ));
    }
    repo.get_snapshot_from_str(snapshot, |_| true).map_err(|e| {
        let mut err = MoverError::rustic(&format!("finding snapshot {}", snapshot), &e);
        if err.kind == ErrorKind::Other {
            err.kind = ErrorKind::NotFound;
        }
        err
    })
}

/// The directory of `snap` to restore: `/data` for the mover's snapshots;
/// for a snapshot of one path, that path when the tree holds it (`restic
/// backup /abs/dir`) or else the root tree itself (`restic backup .` stores
/// the directory's contents at the root while `paths` names it); the root
/// tree for several paths, as `restic restore` does.
fn restore_root(
    repo: &Repository<rustic_core::IndexedFullStatus>,
    be: &Backend,
    crypto: &crate::crypto::Crypto,
    snap: &SnapshotFile,
) -> MResult<rustic_core::repofile::Node> {
    let trees = restore::Trees {
        repo,
        be: &be.be,
        crypto,
    };
    let paths: Vec<&String> = snap.paths.iter().collect();
    let wanted = if paths.iter().any(|p| *p == SNAPSHOT_PATH) {
        Some(SNAPSHOT_PATH)
    } else if paths.len() == 1 {
        Some(paths[0].as_str())
    } else {
        None
    };
    if let Some(path) = wanted
        && let Some(node) = trees.find_dir(&snap.tree, &restore::split_user_path(path)?)?
    {
        return Ok(node);
    }
    Ok(restore::root_node(snap.tree))
}

pub fn restore(
    be: &Backend,
    o: &repo::OpenOpts,
    a: &RestoreArgs,
    r: &mut MoverResult,
) -> MResult<()> {
    let started = Instant::now();
    let repo = repo::open_or_init(be, o, false)?;
    let crypto = repo::crypto(&repo)?;
    // Shared lock, as restic restore takes: keeps prune from deleting packs we read.
    let guard = lock::acquire(be.raw.clone(), crypto.clone(), false, a.lock_wait)?;
    let snap = select_snapshot(&repo, a)?;
    r.snapshot_id = Some(snap.id.to_string());
    r.time = Some(snap.time.timestamp().to_string());
    r.pvc = tag_value(&snap, "pvc")
        .map(str::to_string)
        .or_else(|| a.pvc.clone());
    let repo = repo.to_indexed().ctx("reading repository index")?;
    let node = restore_root(&repo, be, &crypto, &snap)?;

    std::fs::create_dir_all(&a.target).ctx(&format!("creating target {}", a.target.display()))?;
    let opts = restore::Options {
        threads: a.threads,
        delete: a.delete,
        ownership: !a.no_ownership,
        includes: a
            .paths
            .iter()
            .map(|p| restore::split_user_path(p))
            .collect::<MResult<_>>()?,
    };
    let stats = restore::restore_tree(&repo, &be.be, &crypto, &node, &a.target, &opts)?;

    guard.release();
    if let Some(m) = meta::parse_description(snap.description.as_deref()) {
        meta::apply_root(&a.target, m, !a.no_ownership)?;
    }
    r.bytes_restored = Some(stats.bytes);
    r.files = Some(stats.files);
    r.duration_seconds = Some(started.elapsed().as_secs_f64());
    r.ok = true;
    Ok(())
}
