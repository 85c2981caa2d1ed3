//! Which snapshots an operation is about, by the mover's tags
//! (`ns=<namespace>`, `policy=<policy>`, `pvc=<pvc>`).

use rustic_core::repofile::SnapshotFile;

pub fn tag_value<'a>(s: &'a SnapshotFile, key: &str) -> Option<&'a str> {
    s.tags
        .iter()
        .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Which snapshots an operation is about; `None` matches anything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selector<'a> {
    pub namespace: Option<&'a str>,
    pub policy: Option<&'a str>,
    pub pvc: Option<&'a str>,
}

impl<'a> Selector<'a> {
    /// One policy's snapshots of one PVC: what retention works on.
    pub fn policy(namespace: &'a str, policy: &'a str, pvc: &'a str) -> Self {
        Self {
            namespace: Some(namespace),
            policy: Some(policy),
            pvc: Some(pvc),
        }
    }

    pub fn matches(&self, s: &SnapshotFile) -> bool {
        [
            ("ns", self.namespace),
            ("policy", self.policy),
            ("pvc", self.pvc),
        ]
        .iter()
        .all(|(k, want)| want.is_none_or(|w| tag_value(s, k) == Some(w)))
    }
}

/// The parent of a new backup: the newest snapshot of the same policy and
/// PVC, else the newest of the PVC (`all` is newest first).
pub fn choose_parent<'s>(all: &'s [SnapshotFile], sel: &Selector<'_>) -> Option<&'s SnapshotFile> {
    let pvc_only = Selector {
        pvc: sel.pvc,
        ..Selector::default()
    };
    all.iter()
        .find(|s| sel.matches(s))
        .or_else(|| all.iter().find(|s| pvc_only.matches(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(tags: &str, secs: i64) -> SnapshotFile {
        SnapshotFile {
            tags: tags.parse().unwrap_or_default(),
            time: jiff::Timestamp::from_second(secs)
                .unwrap_or_default()
                .to_zoned(jiff::tz::TimeZone::UTC),
            ..SnapshotFile::default()
        }
    }

    #[test]
    fn tags_select_policy_and_pvc() {
        let daily = snap("ns=a,policy=daily,pvc=data", 3);
        let hourly = snap("ns=a,policy=hourly,pvc=data", 2);
        let other_ns = snap("ns=b,policy=daily,pvc=data", 1);
        let foreign = snap("", 0);
        let sel = Selector::policy("a", "daily", "data");
        assert!(sel.matches(&daily));
        assert!(!sel.matches(&hourly));
        assert!(!sel.matches(&other_ns));
        assert!(!sel.matches(&foreign));
        // A prefix of a value is not the value.
        assert!(!Selector::policy("a", "dail", "data").matches(&daily));
        let pvc = Selector {
            pvc: Some("data"),
            ..Selector::default()
        };
        assert!(pvc.matches(&hourly) && pvc.matches(&other_ns) && !pvc.matches(&foreign));
        assert!(Selector::default().matches(&foreign));
    }

    #[test]
    fn parent_prefers_the_same_policy() {
        let all = vec![
            snap("ns=a,policy=hourly,pvc=data", 3),
            snap("ns=a,policy=daily,pvc=data", 2),
        ];
        let p = choose_parent(&all, &Selector::policy("a", "daily", "data"));
        assert_eq!(p.map(|s| s.time.timestamp().as_second()), Some(2));
        let p = choose_parent(&all, &Selector::policy("a", "weekly", "data"));
        assert_eq!(p.map(|s| s.time.timestamp().as_second()), Some(3));
        assert!(choose_parent(&all, &Selector::policy("a", "daily", "other")).is_none());
    }
}
