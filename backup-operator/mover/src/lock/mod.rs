//! restic-compatible repository locks (`locks/<id>`), which rustic_core does
//! not do, with restic >= 0.15's fail-closed rules.
//!
//! A lock file is the encrypted JSON `{"time","exclusive","hostname","username",
//! "pid","uid","gid"}`, named by the SHA-256 of its ciphertext, exactly as
//! restic writes it, so restic honours the mover's locks and vice versa.
//! Backups and restores take a shared lock, forget/prune an exclusive one.
//!
//! * Every lock file that cannot be read, decrypted or parsed counts as held
//!   by someone (it might be a valid exclusive lock we failed to GET);
//!   only empty files are ignored (interrupted uploads; restic does the same).
//! * Stale locks (older than 30 minutes) are held too, for shared and
//!   exclusive locks alike, as in restic >= 0.15: only `unlock` removes
//!   them (see `unlock.rs`).
//! * A held lock is refreshed every 5 minutes. If that keeps failing until
//!   the lock would be 22.5 minutes old (restic's margin), or someone removed
//!   our lock file, the operation is cancelled ([`crate::cancel::lock_lost`]).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::cancel;
use crate::crypto::{Crypto, random_u64};
use crate::error::{MResult, MoverError};
use crate::repo::Raw;
use crate::result::ErrorKind;

mod file;
pub mod unlock;

pub use file::{
    Seen, Timing, conflicts, describe, hostname, is_stale, process_alive, read, short, write_lock,
};

/// The other locks that conflict with a lock of kind `exclusive`.
fn conflicting(
    be: &Raw,
    crypto: &Crypto,
    exclusive: bool,
    own: Option<&str>,
) -> MResult<Vec<(String, Seen)>> {
    let mut out = Vec::new();
    for id in be.list("locks")? {
        if Some(id.as_str()) == own {
            continue;
        }
        let seen = read(be, crypto, &id);
        if conflicts(exclusive, &seen) {
            out.push((id, seen));
        }
    }
    Ok(out)
}

/// Takes a lock, retrying with jittered exponential backoff for up to
/// `wait`; a signal ends the wait early.
pub fn acquire(be: Raw, crypto: Crypto, exclusive: bool, wait: Duration) -> MResult<LockGuard> {
    let timing = Timing::from_env();
    let deadline = Instant::now() + wait;
    let mut delay = Duration::from_millis(500);
    loop {
        cancel::check()?;
        let mut others = conflicting(&be, &crypto, exclusive, None)?;
        if others.is_empty() {
            let id = write_lock(&be, &crypto, exclusive, &Timestamp::now().to_string())?;
            // Give a concurrent writer time to become visible, then re-check.
            std::thread::sleep(Duration::from_millis(200));
            others = match conflicting(&be, &crypto, exclusive, Some(&id)) {
                Ok(o) => o,
                Err(e) => {
                    let _ = be.delete(&format!("locks/{id}"));
                    return Err(e);
                }
            };
            if others.is_empty() {
                return start_guard(be, crypto, exclusive, id, timing);
            }
            let _ = be.delete(&format!("locks/{id}"));
        }
        let now = Instant::now();
        if now >= deadline {
            let list: Vec<String> = others
                .iter()
                .take(3)
                .map(|(id, s)| describe(id, s, &timing))
                .collect();
            return Err(MoverError::new(
                ErrorKind::RepositoryLocked,
                format!(
                    "repository is locked: {}; gave up after {}s",
                    list.join("; "),
                    wait.as_secs()
                ),
            ));
        }
        let jitter = Duration::from_millis(random_u64() % (delay.as_millis() as u64 + 1));
        let sleep = (delay + jitter).min(deadline - now);
        log::info!("repository locked, retrying in {sleep:?}");
        cancel::sleep(sleep)?;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Locks this process holds, for [`remove_held`] when it is forced to exit.
static HELD: Mutex<Vec<(Raw, Arc<Mutex<String>>)>> = Mutex::new(Vec::new());

fn held() -> std::sync::MutexGuard<'static, Vec<(Raw, Arc<Mutex<String>>)>> {
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes every lock this process holds (before a forced exit).
pub fn remove_held() {
    for (be, id) in held().drain(..) {
        let id = id.lock().map(|g| g.clone()).unwrap_or_default();
        match be.delete(&format!("locks/{id}")) {
            Ok(()) => log::warn!("removed our lock {} before exiting", short(&id)),
            Err(e) => log::warn!("removing our lock {}: {e}", short(&id)),
        }
    }
}

/// A held lock; removed on drop. While it is held, a refresher thread
/// renews it; if that fails for too long the operation is cancelled.
pub struct LockGuard {
    be: Raw,
    id: Arc<Mutex<String>>,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl LockGuard {
    /// `Ok` while the lock is held and no signal asked us to stop; loops
    /// that write to the repository call this.
    pub fn check(&self) -> MResult<()> {
        cancel::check()
    }

    pub fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        held().retain(|(_, h)| !Arc::ptr_eq(h, &self.id));
        let id = match self.id.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        if let Err(e) = self.be.delete(&format!("locks/{id}")) {
            log::warn!("removing lock {id}: {e}");
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.release_inner();
        }
    }
}

fn start_guard(
    be: Raw,
    crypto: Crypto,
    exclusive: bool,
    id: String,
    timing: Timing,
) -> MResult<LockGuard> {
    let id = Arc::new(Mutex::new(id));
    let (tx, rx) = mpsc::channel::<()>();
    let (be2, id2) = (be.clone(), id.clone());
    let spawned = std::thread::Builder::new()
        .name("lock-refresh".into())
        .spawn(move || refresh_loop(&be2, &crypto, exclusive, &id2, &rx, timing));
    match spawned {
        Ok(h) => {
            held().push((be.clone(), id.clone()));
            Ok(LockGuard {
                be,
                id,
                stop: Some(tx),
                refresher: Some(h),
            })
        }
        Err(e) => {
            // Without a refresher the lock would silently go stale.
            let id = id.lock().map(|g| g.clone()).unwrap_or_default();
            let _ = be.delete(&format!("locks/{id}"));
            Err(MoverError::new(
                ErrorKind::Other,
                format!("starting the lock refresher: {e}"),
            ))
        }
    }
}

enum RefreshError {
    /// Our lock file is gone: someone ran `unlock --remove-all`.
    Removed(String),
    Failed(String),
}

fn refresh_once(
    be: &Raw,
    crypto: &Crypto,
    exclusive: bool,
    id: &Mutex<String>,
) -> Result<(), RefreshError> {
    let old = id.lock().map(|g| g.clone()).unwrap_or_default();
    match be.get(&format!("locks/{old}")) {
        Ok(Some(_)) => {}
        Ok(None) => return Err(RefreshError::Removed(old)),
        Err(e) => return Err(RefreshError::Failed(e.message)),
    }
    let new = write_lock(be, crypto, exclusive, &Timestamp::now().to_string())
        .map_err(|e| RefreshError::Failed(e.message))?;
    if let Ok(mut g) = id.lock() {
        *g = new;
    }
    if let Err(e) = be.delete(&format!("locks/{old}")) {
        log::warn!("removing the previous lock {old}: {e}");
    }
    Ok(())
}

fn refresh_loop(
    be: &Raw,
    crypto: &Crypto,
    exclusive: bool,
    id: &Mutex<String>,
    stop: &mpsc::Receiver<()>,
    t: Timing,
) {
    let mut last_ok = Instant::now();
    let mut wait = t.refresh;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(wait) {
        let err = match refresh_once(be, crypto, exclusive, id) {
            Ok(()) => {
                last_ok = Instant::now();
                wait = t.refresh;
                continue;
            }
            Err(RefreshError::Removed(old)) => {
                cancel::lock_lost(format!(
                    "our lock {} was removed by someone else (unlock --remove-all?); \
                     stopped, as a prune may now run",
                    short(&old)
                ));
                return;
            }
            Err(RefreshError::Failed(e)) => e,
        };
        let since = last_ok.elapsed();
        if since >= t.refreshable {
            cancel::lock_lost(format!(
                "the repository lock could not be refreshed for {}s (last error: {err}); \
                 stopped before it turns stale and a prune could delete data this run uses",
                since.as_secs()
            ));
            return;
        }
        log::warn!("refreshing the repository lock failed, retrying: {err}");
        wait = (t.refresh / 10)
            .max(Duration::from_secs(1))
            .min(t.refreshable - since);
    }
}
