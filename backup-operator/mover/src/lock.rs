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
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cancel;
use crate::crypto::{Crypto, random_u64};
use crate::error::{MResult, MoverError};
use crate::repo::Raw;
use crate::result::ErrorKind;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockFile {
    pub time: String,
    pub exclusive: bool,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub pid: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Lock timing: restic's 30 minutes stale, refresh every 5 minutes, give up
/// 1.5 refresh intervals before staleness. `MOVER_LOCK_STALE_SECONDS`
/// scales all three (tests only).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub stale: Duration,
    pub refresh: Duration,
    pub refreshable: Duration,
}

impl Timing {
    pub fn from_env() -> Self {
        let stale = std::env::var("MOVER_LOCK_STALE_SECONDS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|s| *s >= 6)
            .unwrap_or(30 * 60);
        let stale = Duration::from_secs(stale);
        let refresh = stale / 6;
        Self {
            stale,
            refresh,
            refreshable: stale - refresh * 3 / 2,
        }
    }
}

pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "backup-mover".to_string())
}

/// What one entry of `locks/` turned out to be.
#[derive(Debug, Clone)]
pub enum Seen {
    /// Removed between listing and reading.
    Gone,
    /// Zero bytes: an interrupted upload, ignored.
    Empty,
    Valid(LockFile),
    /// Could not be read, verified, decrypted or parsed: counts as held.
    Invalid(String),
}

/// Whether `seen` keeps us from taking a lock of kind `exclusive`.
/// Staleness does not matter here (restic >= 0.15): stale locks are held
/// until `unlock` removes them.
pub fn conflicts(exclusive: bool, seen: &Seen) -> bool {
    match seen {
        Seen::Gone | Seen::Empty => false,
        Seen::Invalid(_) => true,
        Seen::Valid(l) => exclusive || l.exclusive,
    }
}

fn decode(crypto: &Crypto, data: &[u8]) -> Result<LockFile, String> {
    let plain = crypto
        .decrypt(data)
        .ok_or("it does not decrypt with this repository's key")?;
    let json = match plain.first() {
        Some(b'{') => plain,
        // restic repository v2: version byte 2 + zstd frame
        Some(2) => zstd::decode_all(&plain[1..]).map_err(|e| format!("decompressing: {e}"))?,
        _ => return Err("unknown encoding".to_string()),
    };
    serde_json::from_slice(&json).map_err(|e| format!("parsing: {e}"))
}

pub fn hex_sha256(data: &[u8]) -> String {
    let hash: [u8; 32] = Sha256::digest(data).into();
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and verifies `locks/<id>`; never fails: an error is a [`Seen::Invalid`].
pub fn read(be: &Raw, crypto: &Crypto, id: &str) -> Seen {
    let data = match be.get(&format!("locks/{id}")) {
        Ok(None) => return Seen::Gone,
        Ok(Some(d)) => d,
        Err(e) => return Seen::Invalid(format!("it cannot be read: {}", e.message)),
    };
    if data.is_empty() {
        return Seen::Empty;
    }
    if hex_sha256(&data) != id {
        return Seen::Invalid("its content does not match its name".to_string());
    }
    match decode(crypto, &data) {
        Ok(l) => Seen::Valid(l),
        Err(e) => Seen::Invalid(e),
    }
}

/// Whether a valid lock is stale: older than `stale`, or written on this
/// host by a process that no longer exists (restic's rule). A time that
/// does not parse is never stale.
pub fn is_stale(
    l: &LockFile,
    now: Timestamp,
    stale: Duration,
    alive: impl Fn(i64) -> bool,
) -> bool {
    let Ok(t) = l.time.parse::<Timestamp>() else {
        return false;
    };
    let age = now.duration_since(t).as_secs();
    if age > i64::try_from(stale.as_secs()).unwrap_or(i64::MAX) {
        return true;
    }
    l.hostname == hostname() && !alive(l.pid)
}

/// Whether process `pid` exists on this host.
pub fn process_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The first 8 characters of a lock name, as restic prints ids.
pub fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

pub fn describe(id: &str, seen: &Seen, timing: &Timing) -> String {
    let short = short(id);
    match seen {
        Seen::Valid(l) => {
            let stale = if is_stale(l, Timestamp::now(), timing.stale, |_| true) {
                " (stale: `backup-mover unlock` removes it once no process uses the repository)"
            } else if l.time.parse::<Timestamp>().is_err() {
                " (its time does not parse; `backup-mover unlock --remove-all` removes it)"
            } else {
                ""
            };
            format!(
                "{} lock {short} by {} pid {} since {}{stale}",
                if l.exclusive { "exclusive" } else { "shared" },
                l.hostname,
                l.pid,
                l.time
            )
        }
        Seen::Invalid(why) => format!(
            "invalid lock file {short} ({why}; it counts as held: if no process uses the \
             repository, `backup-mover unlock --remove-all` removes it)"
        ),
        Seen::Gone | Seen::Empty => format!("no lock {short}"),
    }
}

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

/// Writes a lock file with `time`; returns its id.
pub fn write_lock(be: &Raw, crypto: &Crypto, exclusive: bool, time: &str) -> MResult<String> {
    let lock = LockFile {
        time: time.to_string(),
        exclusive,
        hostname: hostname(),
        username: std::env::var("USER").unwrap_or_default(),
        pid: i64::from(std::process::id()),
        // SAFETY: getuid/getgid cannot fail.
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
    };
    let json = serde_json::to_vec(&lock)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("encoding lock: {e}")))?;
    let data = crypto.encrypt(&json)?;
    let id = hex_sha256(&data);
    be.put(&format!("locks/{id}"), &data)?;
    Ok(id)
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
        Ok(h) => Ok(LockGuard {
            be,
            id,
            stop: Some(tx),
            refresher: Some(h),
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(exclusive: bool, time: &str, host: &str, pid: i64) -> LockFile {
        LockFile {
            time: time.into(),
            exclusive,
            hostname: host.into(),
            username: String::new(),
            pid,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn conflict_rules() {
        let now = Timestamp::now().to_string();
        let old = "2000-01-01T00:00:00Z";
        let shared = Seen::Valid(lock(false, &now, "h", 1));
        let excl = Seen::Valid(lock(true, &now, "h", 1));
        let stale_excl = Seen::Valid(lock(true, old, "h", 1));
        let stale_shared = Seen::Valid(lock(false, old, "h", 1));
        let bad_time = Seen::Valid(lock(false, "yesterday", "h", 1));
        let invalid = Seen::Invalid("x".into());
        // Shared locks coexist; an exclusive one excludes everything.
        assert!(!conflicts(false, &shared));
        assert!(conflicts(true, &shared));
        assert!(conflicts(false, &excl));
        assert!(conflicts(true, &excl));
        // Stale locks are held for both kinds (restic >= 0.15).
        assert!(conflicts(false, &stale_excl));
        assert!(conflicts(true, &stale_shared));
        assert!(!conflicts(false, &stale_shared));
        // Unreadable locks and unparsable times are held.
        assert!(conflicts(false, &invalid));
        assert!(conflicts(true, &invalid));
        assert!(conflicts(true, &bad_time));
        // Empty and vanished files are not locks.
        assert!(!conflicts(true, &Seen::Empty));
        assert!(!conflicts(true, &Seen::Gone));
    }

    #[test]
    fn staleness() {
        let now = Timestamp::now();
        let stale = Duration::from_secs(1800);
        let t = |secs: i64| (now - jiff::SignedDuration::from_secs(secs)).to_string();
        let alive = |_| true;
        assert!(!is_stale(
            &lock(true, &t(60), "other", 1),
            now,
            stale,
            alive
        ));
        assert!(is_stale(
            &lock(true, &t(1801), "other", 1),
            now,
            stale,
            alive
        ));
        assert!(!is_stale(
            &lock(true, "garbage", "other", 1),
            now,
            stale,
            alive
        ));
        // Same host, dead process: stale at once; other hosts are never probed.
        let me = hostname();
        assert!(is_stale(&lock(true, &t(60), &me, 1), now, stale, |_| false));
        assert!(!is_stale(
            &lock(true, &t(60), "other", 1),
            now,
            stale,
            |_| false
        ));
        assert!(process_alive(i64::from(std::process::id())));
    }

    #[test]
    fn timing() {
        let t = Timing::from_env();
        if std::env::var("MOVER_LOCK_STALE_SECONDS").is_err() {
            assert_eq!(t.stale, Duration::from_secs(1800));
            assert_eq!(t.refresh, Duration::from_secs(300));
            assert_eq!(t.refreshable, Duration::from_secs(1350));
        }
        assert!(t.refreshable < t.stale && t.refresh < t.refreshable);
    }
}
