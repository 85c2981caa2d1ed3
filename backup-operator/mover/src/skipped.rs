//! Entries of the source the backup walk had to leave out (unreadable
//! directories, files that could not be opened or read). The archive counts
//! them here, so a partial backup is known from the walk itself.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many examples are kept for the result's `warning`.
const EXAMPLES: usize = 3;

#[derive(Default)]
pub struct Skipped {
    count: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Skipped {
    /// Records one entry that is missing from the snapshot, and why.
    pub fn note(&self, why: String) {
        log::warn!("left out of the backup: {why}");
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut v) = self.examples.lock()
            && v.len() < EXAMPLES
        {
            v.push(why);
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn examples(&self) -> Vec<String> {
        self.examples.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_all_keeps_few() {
        let s = Skipped::default();
        assert_eq!(s.count(), 0);
        for i in 0..5 {
            s.note(format!("e{i}"));
        }
        assert_eq!(s.count(), 5);
        assert_eq!(s.examples(), vec!["e0", "e1", "e2"]);
    }
}
