//! Process-wide cancellation: SIGTERM/SIGINT (the Job's deadline, a pod
//! deletion) or a repository lock that could not be kept.
//!
//! Long loops (the archiver, lock waits, retention) poll [`requested`] and
//! stop with [`check`]'s error; the lock guard is then dropped, which removes
//! the lock. After a lost lock the repository backend also refuses writes
//! (see `fence.rs`), so nothing is written without a lock even where a
//! loop does not poll.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::error::{MResult, MoverError};
use crate::result::ErrorKind;

const NONE: u8 = 0;
const SIGNAL: u8 = 1;
const LOCK_LOST: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(NONE);
/// Set together with `STATE`, for code that polls an `AtomicBool` (the archiver).
static REQUESTED: AtomicBool = AtomicBool::new(false);
static SIGNAL_NO: AtomicI32 = AtomicI32::new(0);
static LOCK_MESSAGE: Mutex<Option<String>> = Mutex::new(None);
static SINCE: Mutex<Option<Instant>> = Mutex::new(None);
static FINISHING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only atomics here: async-signal-safe.
    SIGNAL_NO.store(sig, Ordering::SeqCst);
    let _ = STATE.compare_exchange(NONE, SIGNAL, Ordering::SeqCst, Ordering::SeqCst);
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Routes SIGTERM and SIGINT to the cancellation flag.
pub fn install_signal_handlers() -> MResult<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction with a handler that only stores atomics;
        // SA_RESTART keeps blocking calls in libraries from seeing EINTR.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(MoverError::new(
                ErrorKind::Other,
                format!(
                    "installing the handler for signal {sig}: {}",
                    std::io::Error::last_os_error()
                ),
            ));
        }
    }
    Ok(())
}

/// Whether the running operation must stop.
pub fn requested() -> bool {
    STATE.load(Ordering::Relaxed) != NONE
}

/// Whether a signal (not a lost lock) asked us to stop.
pub fn interrupted() -> bool {
    STATE.load(Ordering::Relaxed) == SIGNAL
}

/// Records that the repository lock could not be kept; the operation stops.
pub fn lock_lost(message: String) {
    log::error!("{message}");
    if let Ok(mut m) = LOCK_MESSAGE.lock()
        && m.is_none()
    {
        *m = Some(message);
    }
    let _ = STATE.compare_exchange(NONE, LOCK_LOST, Ordering::SeqCst, Ordering::SeqCst);
    REQUESTED.store(true, Ordering::SeqCst);
}

/// The flag the archiver polls (`archive::Settings::cancel`).
pub fn flag() -> &'static AtomicBool {
    &REQUESTED
}

/// Whether the lock was lost (writes must stop).
pub fn lock_is_lost() -> bool {
    STATE.load(Ordering::Relaxed) == LOCK_LOST
}

/// When cancellation was first seen by [`check`] or [`since`] (for bounded
/// clean-up work after a signal).
pub fn since() -> Option<Instant> {
    if !requested() {
        return None;
    }
    let mut s = SINCE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Some(*s.get_or_insert_with(Instant::now))
}

/// The error to stop with.
pub fn error() -> MoverError {
    match STATE.load(Ordering::SeqCst) {
        LOCK_LOST => {
            let msg = LOCK_MESSAGE
                .lock()
                .ok()
                .and_then(|m| m.clone())
                .unwrap_or_else(|| "the repository lock was lost".to_string());
            MoverError::new(ErrorKind::Other, msg)
        }
        _ => {
            let name = match SIGNAL_NO.load(Ordering::SeqCst) {
                libc::SIGINT => "SIGINT",
                _ => "SIGTERM",
            };
            MoverError::new(ErrorKind::Interrupted, format!("interrupted by {name}"))
        }
    }
}

/// `Ok` unless the operation must stop.
pub fn check() -> MResult<()> {
    if requested() {
        let _ = since();
        Err(error())
    } else {
        Ok(())
    }
}

/// Sleeps up to `d`, waking early (with the error) when cancelled.
pub fn sleep(d: Duration) -> MResult<()> {
    let end = Instant::now() + d;
    loop {
        check()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

/// Whether the caller is the one to write the result and exit (the main
/// thread or the watchdog, whichever comes first).
pub fn claim_finish() -> bool {
    !FINISHING.swap(true, Ordering::SeqCst)
}

/// After a signal, gives the operation `grace` to stop by itself (most
/// loops poll within a second, but e.g. rustic's prune does not); then
/// runs `force` (remove locks, write the result, exit).
pub fn spawn_watchdog(grace: Duration, force: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("stop-watchdog".into())
        .spawn(move || {
            while !interrupted() {
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(grace);
            if claim_finish() {
                force();
            }
        });
    if let Err(e) = spawned {
        log::warn!("no stop watchdog (a signal then waits for the operation): {e}");
    }
}
