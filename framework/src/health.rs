//! Watch health, reported by `/healthz`: a watch that has not synced, or
//! has been failing, for longer than a threshold makes the operator
//! unhealthy (so that a liveness probe restarts a stuck replica).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// While a watch fails, kube's watcher retries at least this often (its
/// default backoff is capped at 30 s): an error older than this, with no
/// event since, means the watch came back (a quiet watch sends nothing).
const RETRY_EVIDENCE: Duration = Duration::from_secs(60);

struct WatchState {
    started: Instant,
    synced: bool,
    failing_since: Option<Instant>,
    last_error: Option<(Instant, String)>,
}

/// The watches of the running controllers.
pub(crate) struct Health {
    watches: Mutex<BTreeMap<String, WatchState>>,
    threshold: Mutex<Duration>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            watches: Mutex::new(BTreeMap::new()),
            threshold: Mutex::new(Duration::from_secs(120)),
        }
    }
}

impl Health {
    pub(crate) fn set_threshold(&self, d: Duration) {
        if let Ok(mut t) = self.threshold.lock() {
            *t = d;
        }
    }

    fn with(&self, name: &str, f: impl FnOnce(&mut WatchState)) {
        if let Ok(mut w) = self.watches.lock()
            && let Some(s) = w.get_mut(name)
        {
            f(s);
        }
    }

    /// A watch starts; `synced`: it has no initial list to wait for.
    pub(crate) fn started(&self, name: &str, synced: bool) {
        if let Ok(mut w) = self.watches.lock() {
            w.insert(
                name.to_string(),
                WatchState {
                    started: Instant::now(),
                    synced,
                    failing_since: None,
                    last_error: None,
                },
            );
        }
    }

    /// The watch stopped (its controller ended).
    pub(crate) fn stopped(&self, name: &str) {
        if let Ok(mut w) = self.watches.lock() {
            w.remove(name);
        }
    }

    /// The watch delivered an event: it works.
    pub(crate) fn ok(&self, name: &str) {
        self.with(name, |s| s.failing_since = None);
    }

    /// The watch applied its complete initial list.
    pub(crate) fn synced(&self, name: &str) {
        self.with(name, |s| {
            s.synced = true;
            s.failing_since = None;
        });
    }

    /// The watch failed (it is retried with backoff).
    pub(crate) fn failed(&self, name: &str, error: &str) {
        let now = Instant::now();
        self.with(name, |s| {
            s.failing_since.get_or_insert(now);
            s.last_error = Some((now, error.to_string()));
        });
    }

    /// Why the operator is unhealthy at `now` (empty: healthy).
    pub(crate) fn problems(&self, now: Instant) -> Vec<String> {
        let threshold = self.threshold.lock().map(|t| *t).unwrap_or_default();
        let Ok(w) = self.watches.lock() else {
            return vec!["health state unavailable".into()];
        };
        w.iter()
            .filter_map(|(name, s)| problem(name, s, now, threshold))
            .collect()
    }
}

fn problem(name: &str, s: &WatchState, now: Instant, threshold: Duration) -> Option<String> {
    let last = s.last_error.as_ref();
    let error = last.map(|(_, e)| format!(": {e}")).unwrap_or_default();
    if !s.synced && now.saturating_duration_since(s.started) > threshold {
        return Some(format!(
            "watch {name} has not synced after {threshold:?}{error}"
        ));
    }
    let since = s.failing_since?;
    let recent = last.is_some_and(|(at, _)| now.saturating_duration_since(*at) < RETRY_EVIDENCE);
    (recent && now.saturating_duration_since(since) > threshold)
        .then(|| format!("watch {name} failing for more than {threshold:?}{error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(started: Instant) -> WatchState {
        WatchState {
            started,
            synced: false,
            failing_since: None,
            last_error: None,
        }
    }

    #[test]
    fn unsynced_and_failing_watches_are_problems_after_the_threshold() {
        let t0 = Instant::now();
        let th = Duration::from_secs(120);
        let s = |n: u64| Duration::from_secs(n);
        let mut w = state(t0);
        assert_eq!(problem("A", &w, t0 + s(60), th), None, "still starting");
        let p = problem("A", &w, t0 + s(121), th).expect("not synced");
        assert!(p.contains("watch A has not synced"), "{p}");
        w.synced = true;
        assert_eq!(problem("A", &w, t0 + s(121), th), None);
        // Failing continuously (errors at least every 30 s).
        w.failing_since = Some(t0 + s(200));
        w.last_error = Some((t0 + s(310), "403 Forbidden".into()));
        assert_eq!(
            problem("A", &w, t0 + s(315), th),
            None,
            "not yet long enough"
        );
        w.last_error = Some((t0 + s(330), "403 Forbidden".into()));
        let p = problem("A", &w, t0 + s(335), th).expect("failing");
        assert!(
            p.contains("failing for more than") && p.contains("403 Forbidden"),
            "{p}"
        );
        // No error for a minute: the watch came back, even without events.
        assert_eq!(problem("A", &w, t0 + s(400), th), None);
    }

    #[test]
    fn events_clear_failures_and_stopped_watches_are_forgotten() {
        let h = Health::default();
        h.set_threshold(Duration::ZERO);
        h.started("A", true);
        h.failed("A", "boom");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(h.problems(Instant::now()).len(), 1);
        h.ok("A");
        assert!(h.problems(Instant::now()).is_empty());
        h.started("B", false);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(h.problems(Instant::now()).len(), 1, "B has not synced");
        h.synced("B");
        h.failed("A", "boom");
        h.stopped("A");
        assert!(h.problems(Instant::now()).is_empty());
    }
}
