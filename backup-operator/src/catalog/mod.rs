//! The catalog: what the repositories really hold, per policy and PVC.
//!
//! A light catalog Job per policy runs `backup-mover catalog`, which prints
//! one marked JSON line per PVC; the operator reads them from that pod's log
//! (see `docs/catalog.md` for why and how that is safe), then [`plan`]
//! turns the listing and the existing `Backup` objects into creates,
//! deletes and the policy's bounded `status.storedBackups`.

pub mod bound;
pub mod conditions;
pub mod job;
pub mod plan;

use serde::{Deserialize, Serialize};

/// Prefix of a catalog line in the mover's output (the mover's
/// `catalog::MARKER`).
pub const MARKER: &str = "backup-catalog/v1 ";

/// Catalog log text read at most (about 100,000 snapshots).
pub const MAX_LOG_BYTES: i64 = 64 * 1024 * 1024;

/// One PVC's repository listing, as the mover prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    /// The PVC.
    pub pvc: String,
    /// Repository location (no credentials).
    #[serde(default)]
    pub location: String,
    /// The listing worked (an absent repository lists as empty).
    pub ok: bool,
    /// A repository exists there.
    #[serde(default)]
    pub exists: bool,
    /// The policy's snapshots of the PVC, newest first.
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
    /// Why the listing failed.
    #[serde(default)]
    pub error: Option<crate::results::MoverError>,
}

/// One snapshot in a listing. Repository content is input: [`Snapshot::valid`]
/// is checked before anything is made from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Short id (8 hex characters).
    pub id: String,
    /// Full id (64 hex characters).
    #[serde(default)]
    pub full_id: Option<String>,
    /// RFC 3339 time.
    pub time: String,
    /// Bytes of file data.
    #[serde(default)]
    pub size: u64,
    /// Files.
    #[serde(default)]
    pub files: Option<u64>,
    /// Bytes added by this backup.
    #[serde(default)]
    pub bytes_added: Option<u64>,
    /// Some entries could not be read.
    #[serde(default)]
    pub partial: Option<bool>,
    /// What a partial backup left out.
    #[serde(default)]
    pub warning: Option<String>,
    /// The PVC spec recorded at backup time.
    #[serde(default)]
    pub pvc_spec: Option<serde_json::Value>,
}

fn is_hex(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Snapshot {
    /// Ids are hex of the right length, the full id extends the short one,
    /// the time parses.
    pub fn valid(&self) -> bool {
        is_hex(&self.id, 8, 8)
            && self
                .full_id
                .as_deref()
                .is_none_or(|f| is_hex(f, 64, 64) && f.starts_with(&self.id))
            && self.time.parse::<jiff::Timestamp>().is_ok()
    }

    /// The full id when known, else the short one.
    pub fn best_id(&self) -> &str {
        self.full_id.as_deref().unwrap_or(&self.id)
    }

    /// The recorded PVC spec, if it has the expected shape.
    pub fn recorded_pvc(&self) -> Option<crate::api::RecordedPvc> {
        serde_json::from_value(self.pvc_spec.clone()?).ok()
    }

    /// Warnings are shown in status and Events: one line, bounded.
    pub fn warning_text(&self) -> Option<String> {
        self.warning.as_deref().map(|w| shorten(w, 512))
    }
}

/// One line, at most `max` bytes (cut at a character boundary).
pub fn shorten(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r'], " ");
    if one_line.len() <= max {
        return one_line;
    }
    let mut cut = max;
    while !one_line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &one_line[..cut])
}

/// The listings in a catalog pod's log: lines that start with [`MARKER`]
/// and parse; anything else (mover logs, the result JSON) is ignored. A PVC
/// listed twice keeps its first line.
pub fn parse_log(text: &str) -> Vec<Listing> {
    let mut out: Vec<Listing> = Vec::new();
    for line in text.lines() {
        let Some(json) = line.strip_prefix(MARKER) else {
            continue;
        };
        match serde_json::from_str::<Listing>(json) {
            Ok(l) if !out.iter().any(|o| o.pvc == l.pvc) => out.push(l),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring a catalog line that does not parse"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_marked_lines_count_and_the_first_per_pvc_wins() {
        let log = format!(
            "[WARN] mover: something\n{MARKER}{}\n{MARKER}{{broken\n{MARKER}{}\n{{\"ok\":true}}\n",
            r#"{"pvc":"a","location":"s3:x/a","ok":true,"exists":true,"snapshots":[{"id":"0123abcd","time":"2026-01-01T00:00:00Z","size":3}],"error":null}"#,
            r#"{"pvc":"a","location":"s3:x/a","ok":true,"exists":true,"snapshots":[],"error":null}"#,
        );
        let l = parse_log(&log);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].snapshots.len(), 1);
        assert!(l[0].snapshots[0].valid());
    }

    #[test]
    fn repository_content_is_validated() {
        let good = Snapshot {
            id: "0123abcd".into(),
            full_id: Some(format!("0123abcd{}", "0".repeat(56))),
            time: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        };
        assert!(good.valid());
        for bad in [
            Snapshot {
                id: "../../x".into(),
                ..good.clone()
            },
            Snapshot {
                full_id: Some(format!("ffffffff{}", "0".repeat(56))),
                ..good.clone()
            },
            Snapshot {
                time: "yesterday".into(),
                ..good.clone()
            },
        ] {
            assert!(!bad.valid(), "{bad:?}");
        }
        assert_eq!(shorten("a\nb", 10), "a b");
        assert_eq!(shorten("ééé", 3), "é…");
    }
}
