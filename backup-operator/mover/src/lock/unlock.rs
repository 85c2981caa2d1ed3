//! The explicit, logged removal of locks (`unlock`), and planting locks for
//! tests and maintenance (hidden `lock` subcommand).
//!
//! `unlock` removes stale locks only (older than 30 minutes, or left by a
//! dead process on this host), as `restic unlock` does; unreadable locks
//! and locks whose time does not parse stay. `--remove-all` removes every
//! lock: only for when no process uses the repository (the operator knows
//! when no Job of the repository runs).

use std::time::Duration;

use jiff::Timestamp;

use super::{self as lock, Seen, Timing};
use crate::crypto::Crypto;
use crate::error::MResult;
use crate::repo::Raw;

/// What `unlock` did: ids removed, and locks kept with why.
pub struct Unlocked {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

pub fn unlock(be: &Raw, crypto: &Crypto, remove_all: bool) -> MResult<Unlocked> {
    let timing = Timing::from_env();
    let now = Timestamp::now();
    let mut out = Unlocked {
        removed: Vec::new(),
        kept: Vec::new(),
    };
    for id in be.list("locks")? {
        let seen = lock::read(be, crypto, &id);
        let remove = remove_all
            || match &seen {
                Seen::Valid(l) => lock::is_stale(l, now, timing.stale, lock::process_alive),
                Seen::Empty => true,
                Seen::Gone | Seen::Invalid(_) => false,
            };
        let what = lock::describe(&id, &seen, &timing);
        if matches!(seen, Seen::Gone) {
            continue;
        }
        if remove {
            be.delete(&format!("locks/{id}"))?;
            log::warn!("unlock: removed {what}");
            out.removed.push(lock::short(&id));
        } else {
            log::warn!("unlock: kept {what}");
            out.kept.push(what);
        }
    }
    Ok(out)
}

/// Holds a lock for `seconds`, or (with `time`) writes a lock file with
/// that time, without checking for others, and leaves it in place.
pub fn hold(
    be: Raw,
    crypto: Crypto,
    exclusive: bool,
    seconds: u64,
    time: Option<&str>,
) -> MResult<()> {
    if let Some(t) = time {
        let id = lock::write_lock(&be, &crypto, exclusive, t)?;
        println!("planted {id}");
        return Ok(());
    }
    let guard = lock::acquire(be, crypto, exclusive, Duration::from_secs(5))?;
    println!("locked");
    // Polls the guard so that a lost lock or a signal ends the hold early.
    let end = std::time::Instant::now() + Duration::from_secs(seconds);
    while std::time::Instant::now() < end {
        guard.check()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    guard.release();
    Ok(())
}
