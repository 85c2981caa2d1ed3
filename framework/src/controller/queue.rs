//! The per-controller work queue: when each object is due, coalescing of
//! repeated requests, and exclusivity (an object being processed is not
//! started again; a request meanwhile is remembered and served after).

use super::cache::Key;
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio::time::Instant;

#[derive(Default)]
pub(crate) struct Queue {
    /// Due keys by (time, insertion order).
    due: BTreeMap<(Instant, u64), Key>,
    due_of: HashMap<Key, (Instant, u64)>,
    /// Keys being processed.
    running: HashSet<Key>,
    /// Requests for running keys: the earliest wanted time.
    dirty: HashMap<Key, Instant>,
    seq: u64,
}

impl Queue {
    /// Requests processing of `key` at `at`; requests coalesce to the
    /// earliest time.
    pub(crate) fn schedule(&mut self, key: Key, at: Instant) {
        if self.running.contains(&key) {
            let e = self.dirty.entry(key).or_insert(at);
            if at < *e {
                *e = at;
            }
            return;
        }
        if let Some(old) = self.due_of.get(&key).copied() {
            if old.0 <= at {
                return;
            }
            self.due.remove(&old);
        }
        self.seq += 1;
        self.due.insert((at, self.seq), key.clone());
        self.due_of.insert(key, (at, self.seq));
    }

    /// The keys due at `now`, earliest first, now marked running.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Key> {
        let mut out = Vec::new();
        while let Some((&(t, s), _)) = self.due.first_key_value() {
            if t > now {
                break;
            }
            let Some(key) = self.due.remove(&(t, s)) else {
                break;
            };
            self.due_of.remove(&key);
            self.running.insert(key.clone());
            out.push(key);
        }
        out
    }

    /// The processing of `key` ended; `next`: when it asked to run again.
    /// Requests made meanwhile are served too (the earliest wins).
    pub(crate) fn finished(&mut self, key: &Key, next: Option<Instant>) {
        self.running.remove(key);
        if let Some(at) = self.dirty.remove(key) {
            self.schedule(key.clone(), at);
        }
        if let Some(at) = next {
            self.schedule(key.clone(), at);
        }
    }

    /// When the next key is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.first_key_value().map(|((t, _), _)| *t)
    }

    /// How many keys are due at `now` (waiting to be started).
    pub(crate) fn due_count(&self, now: Instant) -> usize {
        self.due.range(..(now, u64::MAX)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn k(n: &str) -> Key {
        Key {
            namespace: None,
            name: n.into(),
        }
    }

    #[test]
    fn requests_coalesce_to_the_earliest_time() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut q = Queue::default();
        q.schedule(k("a"), t0 + 5 * s);
        q.schedule(k("a"), t0 + 2 * s);
        q.schedule(k("a"), t0 + 9 * s);
        assert_eq!(q.next_due(), Some(t0 + 2 * s));
        assert!(q.take_due(t0 + s).is_empty(), "not due yet");
        assert_eq!(q.due_count(t0 + 3 * s), 1);
        assert_eq!(q.take_due(t0 + 3 * s), vec![k("a")]);
        assert_eq!(q.next_due(), None, "one run for three requests");
    }

    #[test]
    fn due_keys_come_in_time_then_request_order() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.schedule(k("late"), t0 + Duration::from_secs(2));
        q.schedule(k("b"), t0);
        q.schedule(k("a"), t0);
        assert_eq!(
            q.take_due(t0 + Duration::from_secs(5)),
            vec![k("b"), k("a"), k("late")]
        );
    }

    #[test]
    fn a_running_key_is_not_started_twice_and_requests_meanwhile_follow() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut q = Queue::default();
        q.schedule(k("a"), t0);
        assert_eq!(q.take_due(t0), vec![k("a")]);
        // Requests while it runs are remembered, not started.
        q.schedule(k("a"), t0 + 3 * s);
        q.schedule(k("a"), t0 + s);
        assert!(q.take_due(t0 + 10 * s).is_empty(), "exclusive");
        assert_eq!(q.next_due(), None);
        // Finished, asking to run again later: the earlier request wins.
        q.finished(&k("a"), Some(t0 + 8 * s));
        assert_eq!(q.next_due(), Some(t0 + s));
        assert_eq!(q.take_due(t0 + 2 * s), vec![k("a")]);
        q.finished(&k("a"), None);
        assert_eq!(q.next_due(), None, "nothing more asked for");
        // Its own retry time alone.
        q.schedule(k("b"), t0);
        q.take_due(t0);
        q.finished(&k("b"), Some(t0 + 4 * s));
        assert_eq!(q.next_due(), Some(t0 + 4 * s));
    }
}
