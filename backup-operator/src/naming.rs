//! Deterministic names for the objects the operator creates.
//!
//! Every name ends in a hash of what it stands for, so two different
//! (policy, PVC) pairs can never produce the same name even when their
//! readable parts look alike (`a-b`/`c` and `a`/`b-c`) or are cut short.

use sha2::{Digest, Sha256};

/// CronJob names are limited to 52 characters (the controller appends 11 to Job names).
pub const CRONJOB_NAME_MAX: usize = 52;
/// Object names that become labels (Jobs, PVCs) stay within 63 characters.
pub const NAME_MAX: usize = 63;

/// First 8 hex characters of sha256 over the parts, separated by NUL.
pub fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `<readable>-<hash>` within `max` characters, a valid DNS-1123 label.
fn hashed_name(readable: &str, hash: &str, max: usize) -> String {
    let room = max - hash.len() - 1;
    let mut head: String = readable
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(room)
        .collect();
    while head.ends_with('-') {
        head.pop();
    }
    if head.is_empty() {
        hash.to_string()
    } else {
        format!("{head}-{hash}")
    }
}

/// `name` as a label value: itself when it fits in 63 characters, else a
/// readable prefix and a hash of the whole (the full name goes into an
/// annotation next to it).
pub fn label_value(name: &str) -> String {
    if name.len() <= NAME_MAX {
        return name.to_string();
    }
    hashed_name(name, &short_hash(&[name]), NAME_MAX)
}

/// Name of the CronJob that backs up `pvc` for `policy`.
pub fn cronjob_name(policy: &str, pvc: &str) -> String {
    hashed_name(
        &format!("{policy}-{pvc}"),
        &short_hash(&[policy, pvc]),
        CRONJOB_NAME_MAX,
    )
}

/// Name of the on-demand Job started for a `run-now` annotation value.
pub fn manual_job_name(policy: &str, pvc: &str, run_now: &str) -> String {
    let cron = cronjob_name(policy, pvc);
    format!("{cron}-m{}", &short_hash(&[run_now])[..6])
}

/// Name of the Job that performs a restore.
pub fn restore_job_name(restore: &str) -> String {
    hashed_name(
        &format!("restore-{restore}"),
        &short_hash(&[restore]),
        NAME_MAX,
    )
}

/// Name of a VolumeSnapshot taken for `pvc` at `unix_minutes`.
pub fn snapshot_name(policy: &str, pvc: &str, unix_minutes: i64) -> String {
    let hash = short_hash(&[policy, pvc]);
    let suffix = format!("{hash}-{unix_minutes}");
    hashed_name(&format!("{policy}-{pvc}"), &suffix, NAME_MAX)
}

/// Name of a policy's catalog Job started at `unix_seconds`.
pub fn catalog_job_name(policy: &str, unix_seconds: i64) -> String {
    let suffix = format!("{}-{unix_seconds}", &short_hash(&[policy])[..6]);
    hashed_name(&format!("{policy}-catalog"), &suffix, NAME_MAX)
}

/// The Job that removes stale locks of a PVC's repository after the Job
/// `trigger` met them: one per triggering Job, so a retry of the same
/// reconcile finds it instead of starting another.
pub fn unlock_job_name(policy: &str, pvc: &str, trigger: &str) -> String {
    hashed_name(
        &format!("{policy}-{pvc}-unlock"),
        &short_hash(&[policy, pvc, trigger]),
        NAME_MAX,
    )
}

/// Repository path of one PVC below the destination: one repository per PVC
/// keeps backups of different PVCs from contending for repository locks.
pub fn repository_subpath(namespace: &str, pvc: &str) -> String {
    format!("{namespace}/{pvc}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn short_names_stay_readable() {
        let n = cronjob_name("nightly", "data");
        assert!(n.starts_with("nightly-data-"), "{n}");
        assert_eq!(n.len(), "nightly-data-".len() + 8);
        assert_eq!(n, cronjob_name("nightly", "data"), "deterministic");
    }

    #[test]
    fn long_names_fit_the_cronjob_limit() {
        let long = "p".repeat(200);
        let n = cronjob_name(&long, &"v".repeat(250));
        assert!(n.len() <= CRONJOB_NAME_MAX, "{} > 52", n.len());
        assert!(is_dns_label(&n), "{n}");
    }

    #[test]
    fn label_values_keep_short_names_and_hash_long_ones() {
        assert_eq!(label_value("data"), "data");
        let exact = "d".repeat(63);
        assert_eq!(label_value(&exact), exact);
        let a = format!("{}.part-a", "v".repeat(70));
        let b = format!("{}.part-b", "v".repeat(70));
        let (la, lb) = (label_value(&a), label_value(&b));
        assert!(la.len() <= 63 && is_dns_label(&la), "{la}");
        assert_ne!(la, lb, "names differing after the cut stay apart");
        assert_eq!(la, label_value(&a), "deterministic");
    }

    #[test]
    fn lookalike_pairs_do_not_collide() {
        assert_ne!(cronjob_name("a-b", "c"), cronjob_name("a", "b-c"));
        let base = "x".repeat(60);
        assert_ne!(cronjob_name(&base, "one"), cronjob_name(&base, "two"));
    }

    #[test]
    fn dots_and_uppercase_become_label_safe() {
        let n = cronjob_name("my.policy", "Data.Vol");
        assert!(is_dns_label(&n), "{n}");
    }

    #[test]
    fn manual_and_restore_names_are_labels() {
        let m = manual_job_name(&"p".repeat(100), "pvc", "2026-01-01");
        assert!(is_dns_label(&m) && m.len() <= NAME_MAX, "{m}");
        assert_ne!(
            manual_job_name("p", "v", "1"),
            manual_job_name("p", "v", "2")
        );
        let r = restore_job_name(&"r".repeat(253));
        assert!(is_dns_label(&r), "{r}");
        let s = snapshot_name(&"p".repeat(100), "v", 29_000_000);
        assert!(is_dns_label(&s) && s.ends_with("-29000000"), "{s}");
    }
}
