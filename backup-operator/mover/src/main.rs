//! backup-mover: moves PVC data into and out of restic-format repositories.
//!
//! See `README.md` in this crate for the CLI contract, tags and result JSON.

mod archive;
mod cancel;
mod catalog;
mod check;
mod crypto;
mod error;
mod fence;
mod init;
mod lock;
mod meta;
mod ops;
mod owner;
mod prune;
mod repo;
mod restore;
mod result;
mod retry;
mod s3;
mod select;
mod skipped;
mod verified;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::{MResult, MoverError};
use crate::result::{ErrorInfo, ErrorKind, MAX_RESULT_BYTES, MoverResult};

#[derive(Parser)]
#[command(
    name = "backup-mover",
    version,
    about = "PVC data mover (restic repository format)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// s3:<http(s)://endpoint>/<bucket>[/<prefix>] or an absolute local path
    #[arg(long)]
    repository: String,
    /// Write the compact JSON result here (e.g. /dev/termination-log)
    #[arg(long)]
    result_file: Option<PathBuf>,
    /// How long to retry while the repository is locked by someone else
    #[arg(long, default_value_t = 300)]
    lock_wait_seconds: u64,
}

/// Retention flags of `backup` and `forget` (see `retention.rs` for how
/// the keep rules and the caps combine).
#[derive(clap::Args)]
struct RetentionArgs {
    /// Keep the newest N (restic's --keep-last)
    #[arg(long)]
    keep_last: Option<u32>,
    /// Keep the newest of each of the last N hours that have snapshots
    #[arg(long)]
    keep_hourly: Option<u32>,
    /// ... days
    #[arg(long)]
    keep_daily: Option<u32>,
    /// ... ISO weeks
    #[arg(long)]
    keep_weekly: Option<u32>,
    /// ... months
    #[arg(long)]
    keep_monthly: Option<u32>,
    /// ... years
    #[arg(long)]
    keep_yearly: Option<u32>,
    /// Keep everything within this span of the newest snapshot (e.g. 7d, 1y6m, 36h)
    #[arg(long)]
    keep_within: Option<backup_retention::Within>,
    /// Cap: keep at most N (maxBackups)
    #[arg(long)]
    max_count: Option<u32>,
    /// Cap: keep nothing older than N days (maxDays)
    #[arg(long, alias = "max-age-days")]
    keep_within_days: Option<u32>,
    /// IANA time zone of the hour/day/week/month/year buckets (default UTC)
    #[arg(long)]
    time_zone: Option<String>,
}

impl RetentionArgs {
    fn policy(&self) -> MResult<backup_retention::Policy> {
        Ok(backup_retention::Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within,
            max_count: self.max_count,
            max_age_days: self.keep_within_days,
            zone: self
                .time_zone
                .as_deref()
                .map(backup_retention::zone)
                .transpose()
                .map_err(|e| MoverError::new(ErrorKind::Other, e))?,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Back up a directory (the PVC mount) as one snapshot, then apply retention
    Backup {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "/data")]
        source: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        policy: String,
        #[arg(long)]
        pvc: String,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Do not fail with SourceEmpty on an empty directory
        #[arg(long)]
        allow_empty: bool,
        /// Leave out paths matching this glob (repeatable): without `/` a
        /// name at any depth (`*.tmp`), with `/` relative to the source
        /// (`cache/**`); the source's `lost+found` is always left out
        #[arg(long = "exclude", value_name = "GLOB")]
        excludes: Vec<String>,
        /// Files read, chunked, compressed and encrypted at once (each may
        /// hold about 34 MiB); default: the CPUs available, at most 4
        #[arg(long)]
        backup_threads: Option<usize>,
        /// Record this RFC 3339 time as the snapshot time (testing)
        #[arg(long, hide = true)]
        time: Option<String>,
        /// Prune deletes a pack only this long after marking it unused (longer than any backup)
        #[arg(long, default_value = prune::DEFAULT_GRACE, value_parser = prune::parse_duration)]
        prune_grace: Duration,
        /// Apply retention even in a repository another cluster or
        /// namespace owns (e.g. after recovery onto a new cluster); records
        /// us as its owner
        #[arg(long)]
        adopt: bool,
    },
    /// Restore a snapshot into a directory
    Restore {
        #[command(flatten)]
        common: Common,
        /// Snapshot id (or unique prefix) or "latest"
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// With "latest": only snapshots of this PVC
        #[arg(long)]
        pvc: Option<String>,
        /// With "latest": newest snapshot at or before this RFC 3339 time
        #[arg(long)]
        before: Option<String>,
        #[arg(long, default_value = "/restore")]
        target: PathBuf,
        /// Parallel readers/writers (bounds memory: about 2 x 8 MiB each)
        #[arg(long, default_value_t = 4)]
        restore_threads: usize,
        /// Remove files in the target that are not in the snapshot
        #[arg(long)]
        delete: bool,
        /// Do not restore owners (uid/gid)
        #[arg(long)]
        no_ownership: bool,
        /// Restore only this path of the backup (a file or directory; repeatable)
        #[arg(long = "path")]
        paths: Vec<String>,
    },
    /// List snapshots, newest first
    Snapshots {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        pvc: Option<String>,
        /// Print the result JSON (untruncated) instead of a table
        #[arg(long)]
        json: bool,
    },
    /// The operator's catalog: one policy's snapshots in each PVC's
    /// repository, one line `backup-catalog/v1 <json>` per PVC on stdout
    Catalog {
        /// Only snapshots tagged policy=<policy>
        #[arg(long)]
        policy: String,
        /// <pvc>=<repository>, once per PVC
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Write the compact JSON result here (e.g. /dev/termination-log)
        #[arg(long)]
        result_file: Option<PathBuf>,
    },
    /// Apply retention to one policy's snapshots of one PVC (and prune: unused packs are marked, and deleted by a later prune after --prune-grace)
    Forget {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        policy: String,
        #[arg(long)]
        pvc: String,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Report what retention would forget, change nothing (no prune)
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        prune: bool,
        /// Prune deletes a pack only this long after marking it unused (longer than any backup)
        #[arg(long, default_value = prune::DEFAULT_GRACE, value_parser = prune::parse_duration)]
        prune_grace: Duration,
        /// Forget/prune even in a repository another cluster or namespace
        /// owns, or one with snapshots not written by the mover; records us
        /// as its owner
        #[arg(long)]
        adopt: bool,
    },
    /// Verify the repository: structure always; with --read-data-subset the
    /// data of those packs; with --snapshot every blob of that snapshot
    Check {
        #[command(flatten)]
        common: Common,
        /// all, N% (random) or n/m (part n of m, by pack id)
        #[arg(long)]
        read_data_subset: Option<check::Subset>,
        /// Read and verify every blob of this snapshot (an id or "latest")
        #[arg(long)]
        snapshot: Option<String>,
        /// With --snapshot latest: the newest of this PVC
        #[arg(long)]
        pvc: Option<String>,
    },
    /// Create the repository if it does not exist (backup does this itself)
    Init {
        #[command(flatten)]
        common: Common,
        /// Recorded in the owner marker (with MOVER_CLUSTER_ID)
        #[arg(long, requires = "policy")]
        namespace: Option<String>,
        #[arg(long, requires = "namespace")]
        policy: Option<String>,
    },
    /// Remove stale locks (older than 30 minutes, or of dead processes on
    /// this host); every removal is logged. Run only when no Job of the
    /// repository runs.
    Unlock {
        #[command(flatten)]
        common: Common,
        /// Remove every lock, also fresh and unreadable ones
        #[arg(long)]
        remove_all: bool,
    },
    /// Hold a restic-compatible lock for some seconds (tests, maintenance)
    #[command(hide = true)]
    Lock {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        exclusive: bool,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only write a lock file with this time (any string) and leave it
        #[arg(long)]
        time: Option<String>,
    },
}

fn connect(common: &Common) -> MResult<(repo::Backend, repo::OpenOpts)> {
    let opts = repo::open_opts_from_env()?;
    let spec = repo::parse_repo(&common.repository)?;
    let be = repo::Backend::connect(spec)?;
    Ok((be, opts))
}

fn location_of(common: &Common) -> Option<String> {
    repo::parse_repo(&common.repository)
        .ok()
        .map(|s| repo::location(&s))
}

fn run(cmd: Cmd, r: &mut MoverResult) -> MResult<()> {
    match cmd {
        Cmd::Backup {
            common,
            source,
            namespace,
            policy,
            pvc,
            retention,
            allow_empty,
            excludes,
            backup_threads,
            time,
            prune_grace,
            adopt,
        } => {
            r.pvc = Some(pvc.clone());
            let time = parse_time("--time", time)?;
            let (be, o) = connect(&common)?;
            let args = ops::BackupArgs {
                source,
                namespace,
                policy,
                pvc,
                retention: retention.policy()?,
                allow_empty,
                lock_wait: Duration::from_secs(common.lock_wait_seconds),
                time,
                threads: backup_threads,
                prune_grace,
                excludes,
                adopt,
            };
            ops::backup(&be, &o, &args, r)
        }
        Cmd::Restore {
            common,
            snapshot,
            pvc,
            before,
            target,
            restore_threads,
            delete,
            no_ownership,
            paths,
        } => {
            let before = parse_time("--before", before)?;
            let (be, o) = connect(&common)?;
            let args = ops::RestoreArgs {
                snapshot,
                paths,
                pvc,
                before,
                target,
                threads: restore_threads,
                delete,
                no_ownership,
                lock_wait: Duration::from_secs(common.lock_wait_seconds),
            };
            ops::restore(&be, &o, &args, r)
        }
        Cmd::Check {
            common,
            read_data_subset,
            snapshot,
            pvc,
        } => {
            let (be, o) = connect(&common)?;
            check::command(
                &be,
                &o,
                read_data_subset,
                snapshot.as_deref(),
                pvc.as_deref(),
                Duration::from_secs(common.lock_wait_seconds),
                r,
            )
        }
        Cmd::Snapshots { common, pvc, json } => {
            let (be, o) = connect(&common)?;
            let snaps = ops::snapshots(&be, &o, pvc.as_deref(), r)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r.snapshots).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<10} {:<27} {:<20} {:>14}  tags",
                    "ID", "TIME", "HOST", "SIZE"
                );
                for s in &snaps {
                    println!(
                        "{:<10} {:<27} {:<20} {:>14}  {}",
                        s.id.to_string(),
                        s.time.timestamp().to_string(),
                        s.hostname,
                        s.summary.as_ref().map_or(0, |x| x.total_bytes_processed),
                        s.tags.iter().cloned().collect::<Vec<_>>().join(",")
                    );
                }
            }
            Ok(())
        }
        Cmd::Catalog {
            policy, targets, ..
        } => catalog::run(&policy, &targets, r),
        Cmd::Forget {
            common,
            namespace,
            policy,
            pvc,
            retention,
            dry_run,
            prune,
            prune_grace,
            adopt,
        } => {
            let (be, o) = connect(&common)?;
            let ret = retention.policy()?;
            let prune = (prune && !dry_run).then(|| prune::PruneOpts::new(prune_grace));
            let me = owner::Me::new(&namespace, &policy);
            let scope = ops::Scope {
                sel: select::Selector::policy(&namespace, &policy, &pvc),
                me: &me,
                adopt,
                dry_run,
            };
            ops::forget(
                &be,
                &o,
                &scope,
                &ret,
                prune.as_ref(),
                Duration::from_secs(common.lock_wait_seconds),
                r,
            )
        }
        Cmd::Init {
            common,
            namespace,
            policy,
        } => {
            let (be, o) = connect(&common)?;
            let repo = repo::open_or_init(&be, &o, true)?;
            if let (Some(ns), Some(p)) = (namespace, policy) {
                let crypto = repo::crypto(&repo)?;
                let snaps = repo
                    .get_all_snapshots()
                    .map_err(|e| MoverError::rustic("reading snapshots", &e))?;
                owner::claim_if_unowned(&be.raw, &crypto, &owner::Me::new(&ns, &p), &snaps)?;
            }
            r.time = Some(jiff::Timestamp::now().to_string());
            r.ok = true;
            Ok(())
        }
        Cmd::Unlock { common, remove_all } => {
            let (be, o) = connect(&common)?;
            ops::unlock(&be, &o, remove_all, r)
        }
        Cmd::Lock {
            common,
            exclusive,
            seconds,
            time,
        } => {
            let (be, o) = connect(&common)?;
            let repo = repo::open_or_init(&be, &o, true)?;
            let crypto = repo::crypto(&repo)?;
            lock::unlock::hold(be.raw.clone(), crypto, exclusive, seconds, time.as_deref())?;
            r.ok = true;
            Ok(())
        }
    }
}

fn parse_time(flag: &str, v: Option<String>) -> MResult<Option<jiff::Timestamp>> {
    v.map(|b| {
        b.parse::<jiff::Timestamp>()
            .map_err(|e| MoverError::new(ErrorKind::Other, format!("{flag} {b:?}: {e}")))
    })
    .transpose()
}

/// glibc raises its mmap threshold after large frees, after which the 8-16
/// MiB pack and read buffers come from arenas that are not given back: peak
/// RSS grew to about twice what is live. A fixed threshold keeps every
/// buffer of 4 MiB and more in its own mapping, returned when freed. (musl,
/// used by the image, always maps large allocations.) Setting it also fixes
/// the trim threshold at 128 KiB, which made the heap shrink and grow all
/// the time with small files; 64 MiB keeps that rare.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    init_logging();
    let cli = Cli::parse();
    let (op, common) = match &cli.cmd {
        Cmd::Backup { common, .. } => ("backup", common.clone()),
        Cmd::Restore { common, .. } => ("restore", common.clone()),
        Cmd::Snapshots { common, .. } => ("snapshots", common.clone()),
        Cmd::Check { common, .. } => ("check", common.clone()),
        Cmd::Catalog { result_file, .. } => (
            "catalog",
            Common {
                repository: String::new(),
                result_file: result_file.clone(),
                lock_wait_seconds: 0,
            },
        ),
        Cmd::Forget { common, .. } => ("forget", common.clone()),
        Cmd::Init { common, .. } => ("init", common.clone()),
        Cmd::Unlock { common, .. } => ("unlock", common.clone()),
        Cmd::Lock { common, .. } => ("lock", common.clone()),
    };
    let mut r = MoverResult::new(op);
    r.location = location_of(&common);
    {
        let mut forced = MoverResult::new(op);
        forced.location = r.location.clone();
        let path = common.result_file.clone();
        cancel::spawn_watchdog(stop_grace(), move || {
            lock::remove_held();
            let c = cancel::error();
            forced.error = Some(ErrorInfo {
                kind: c.kind,
                message: format!(
                    "{}; the operation did not stop within {}s, so the mover exited after removing its lock",
                    c.message,
                    stop_grace().as_secs()
                ),
            });
            emit(&forced, path.as_deref());
            std::process::exit(1);
        });
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cancel::install_signal_handlers()?;
        run(cli.cmd, &mut r)
    }))
    .unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".to_string());
        Err(MoverError::new(
            ErrorKind::Other,
            format!("internal error: {msg}"),
        ))
    });
    if let Err(mut e) = outcome {
        // Whatever failed after a signal failed because of it.
        let c = cancel::error();
        if cancel::requested()
            && e.kind != ErrorKind::Interrupted
            && !e.message.contains(&c.message)
        {
            e = MoverError::new(c.kind, format!("{} ({})", c.message, e.message));
        }
        r.ok = false;
        r.error = Some(ErrorInfo {
            kind: e.kind,
            message: e.message,
        });
    }
    if !cancel::claim_finish() {
        // The watchdog is writing the result and exits the process.
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    emit(&r, common.result_file.as_deref());
    if r.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// How long an operation may take to stop after SIGTERM before the mover
/// exits anyway (Kubernetes kills 30 s after SIGTERM by default).
fn stop_grace() -> Duration {
    let secs = std::env::var("MOVER_STOP_GRACE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    Duration::from_secs(secs)
}

/// Writes the result to `path` (if any) and stderr.
fn emit(r: &MoverResult, path: Option<&std::path::Path>) {
    let json = r.to_json_limited(MAX_RESULT_BYTES);
    if let Some(path) = path
        && let Err(e) = std::fs::write(path, &json)
    {
        eprintln!("backup-mover: writing result to {}: {e}", path.display());
    }
    eprintln!("{json}");
}

/// Minimal stderr logger for the `log` facade (RUST_LOG=debug|info|warn, default warn).
fn init_logging() {
    struct L(log::LevelFilter);
    impl log::Log for L {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= self.0
        }
        fn log(&self, rec: &log::Record<'_>) {
            if self.enabled(rec.metadata()) {
                eprintln!("[{}] {}: {}", rec.level(), rec.target(), rec.args());
            }
        }
        fn flush(&self) {}
    }
    let level = match std::env::var("RUST_LOG").as_deref() {
        Ok("trace") => log::LevelFilter::Trace,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("info") => log::LevelFilter::Info,
        Ok("error") => log::LevelFilter::Error,
        Ok("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Warn,
    };
    if log::set_boxed_logger(Box::new(L(level))).is_ok() {
        log::set_max_level(level);
    }
}
