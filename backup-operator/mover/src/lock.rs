//! restic-compatible repository locks (`locks/<id>`), which rustic_core does not do.
//!
//! A lock file is the encrypted JSON `{"time","exclusive","hostname","username",
//! "pid","uid","gid"}`, named by the SHA-256 of its ciphertext, exactly as
//! restic writes it, so restic honours the mover's locks and vice versa.
//! Backups take a shared lock, forget/prune an exclusive one. Locks older than
//! 30 minutes are stale (restic's rule) and ignored; held locks are refreshed
//! every 5 minutes.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{Crypto, random_u64};
use crate::error::{MResult, MoverError};
use crate::repo::Raw;
use crate::result::ErrorKind;

const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

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

fn parse_lock(crypto: &Crypto, data: &[u8]) -> Option<LockFile> {
    let plain = crypto.decrypt(data)?;
    let json = match plain.first() {
        Some(b'{') => plain,
        // restic repository v2: version byte 2 + zstd frame
        Some(2) => zstd::decode_all(&plain[1..]).ok()?,
        _ => return None,
    };
    serde_json::from_slice(&json).ok()
}

fn is_stale(l: &LockFile, now: Timestamp) -> bool {
    match l.time.parse::<Timestamp>() {
        Ok(t) => {
            let age = now.duration_since(t);
            age.as_secs() > i64::try_from(STALE_AFTER.as_secs()).unwrap_or(i64::MAX)
        }
        Err(_) => true,
    }
}

/// Lists the other, non-stale locks that conflict with a lock of kind `exclusive`.
fn conflicting(
    be: &Raw,
    crypto: &Crypto,
    exclusive: bool,
    own: Option<&str>,
) -> MResult<Vec<LockFile>> {
    let ids = be.list("locks")?;
    let now = Timestamp::now();
    let mut out = Vec::new();
    for id in ids {
        if Some(id.as_str()) == own {
            continue;
        }
        // A lock removed between listing and reading is simply gone.
        let Ok(Some(data)) = be.get(&format!("locks/{id}")) else {
            continue;
        };
        let Some(lock) = parse_lock(crypto, &data) else {
            log::warn!("ignoring unreadable lock file {id}");
            continue;
        };
        if is_stale(&lock, now) {
            continue;
        }
        if exclusive || lock.exclusive {
            out.push(lock);
        }
    }
    Ok(out)
}

fn write_lock(be: &Raw, crypto: &Crypto, exclusive: bool) -> MResult<String> {
    let lock = LockFile {
        time: Timestamp::now().to_string(),
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
    let hash: [u8; 32] = Sha256::digest(&data).into();
    let id: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    be.put(&format!("locks/{id}"), &data)?;
    Ok(id)
}

/// A held lock; removed on drop.
pub struct LockGuard {
    be: Raw,
    id: Arc<Mutex<String>>,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl LockGuard {
    pub fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        if let Some(stop) = self.stop.take() {
            drop(stop);
        }
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

fn describe(locks: &[LockFile]) -> String {
    locks
        .iter()
        .take(3)
        .map(|l| {
            format!(
                "{} lock by {} pid {} since {}",
                if l.exclusive { "exclusive" } else { "shared" },
                l.hostname,
                l.pid,
                l.time
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Takes a lock, retrying with jittered exponential backoff for up to `wait`.
pub fn acquire(be: Raw, crypto: Crypto, exclusive: bool, wait: Duration) -> MResult<LockGuard> {
    let deadline = Instant::now() + wait;
    let mut delay = Duration::from_millis(500);
    loop {
        let mut others = conflicting(&be, &crypto, exclusive, None)?;
        if others.is_empty() {
            let id = write_lock(&be, &crypto, exclusive)?;
            // Give a concurrent writer time to become visible, then re-check.
            std::thread::sleep(Duration::from_millis(200));
            others = conflicting(&be, &crypto, exclusive, Some(&id))?;
            if others.is_empty() {
                return Ok(start_guard(be, crypto, exclusive, id));
            }
            let _ = be.delete(&format!("locks/{id}"));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(MoverError::new(
                ErrorKind::RepositoryLocked,
                format!(
                    "repository is locked ({}); gave up after {}s",
                    describe(&others),
                    wait.as_secs()
                ),
            ));
        }
        let jitter = Duration::from_millis(random_u64() % (delay.as_millis() as u64 + 1));
        let sleep = (delay + jitter).min(deadline - now);
        log::info!("repository locked, retrying in {sleep:?}");
        std::thread::sleep(sleep);
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

fn start_guard(be: Raw, crypto: Crypto, exclusive: bool, id: String) -> LockGuard {
    let id = Arc::new(Mutex::new(id));
    let (tx, rx) = mpsc::channel::<()>();
    let be2 = be.clone();
    let id2 = id.clone();
    let refresher = std::thread::Builder::new()
        .name("lock-refresh".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(REFRESH_EVERY) {
                match write_lock(&be2, &crypto, exclusive) {
                    Ok(new_id) => {
                        let old = match id2.lock() {
                            Ok(mut g) => std::mem::replace(&mut *g, new_id),
                            Err(_) => break,
                        };
                        let _ = be2.delete(&format!("locks/{old}"));
                    }
                    Err(e) => log::warn!("refreshing lock: {e}"),
                }
            }
        })
        .ok();
    LockGuard {
        be,
        id,
        stop: Some(tx),
        refresher,
    }
}

/// Holds a lock for `seconds` (hidden `lock` subcommand, for tests and ops).
pub fn hold(be: Raw, crypto: Crypto, exclusive: bool, seconds: u64) -> MResult<()> {
    let guard = acquire(be, crypto, exclusive, Duration::from_secs(5))?;
    println!("locked");
    std::thread::sleep(Duration::from_secs(seconds));
    guard.release();
    Ok(())
}
