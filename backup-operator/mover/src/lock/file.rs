//! The lock file format (restic's), reading and verifying lock files, and
//! the pure rules: which locks conflict, which are stale.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::Crypto;
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
