//! `catalog`: the snapshots of one policy in several PVC repositories, one
//! marked JSON line per PVC on stdout. The operator reads these lines from
//! the pod log (no 4 KiB termination-message limit); see docs/catalog.md.

use serde::{Deserialize, Serialize};

use crate::error::{MResult, MoverError};
use crate::ops;
use crate::repo;
use crate::result::{ErrorInfo, ErrorKind, MoverResult, SnapshotInfo};
use crate::select::{Selector, tag_value};

/// Prefix of every catalog line; nothing else the mover prints starts with it.
pub const MARKER: &str = "backup-catalog/v1 ";

/// What one PVC's repository holds for the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    pub pvc: String,
    /// Repository location without credentials.
    pub location: String,
    /// The listing worked (an absent repository is an empty listing).
    pub ok: bool,
    /// Whether a repository exists there.
    pub exists: bool,
    /// The policy's snapshots of the PVC, newest first.
    pub snapshots: Vec<SnapshotInfo>,
    pub error: Option<ErrorInfo>,
}

/// Splits `<pvc>=<repository>`.
pub fn parse_target(t: &str) -> MResult<(&str, &str)> {
    match t.split_once('=') {
        Some((pvc, repo)) if !pvc.is_empty() && !repo.is_empty() => Ok((pvc, repo)),
        _ => Err(MoverError::new(
            ErrorKind::Other,
            format!("--target {t:?} is not <pvc>=<repository>"),
        )),
    }
}

fn full_info(s: &rustic_core::repofile::SnapshotFile) -> SnapshotInfo {
    let mut i = ops::info(s);
    let desc = crate::meta::description(s.description.as_deref());
    i.full_id = Some(s.id.to_hex().as_str().to_string());
    i.files = s.summary.as_ref().map(|x| x.total_files_processed);
    i.bytes_added = s.summary.as_ref().map(|x| x.data_added);
    let partial = s
        .tags
        .iter()
        .any(|l| l.contains(crate::archive::PARTIAL_TAG));
    if partial {
        i.partial = Some(true);
        let skipped = desc.as_ref().and_then(|d| d.skipped.clone());
        i.warning = Some(match skipped {
            Some(k) => format!(
                "partial backup: {} entries could not be read: {}",
                k.count,
                k.examples.join("; ").replace('\n', " ")
            ),
            None => "partial backup: some entries could not be read".to_string(),
        });
    }
    i.pvc_spec = desc.and_then(|d| d.pvc);
    i
}

fn list_one(policy: &str, pvc: &str, repository: &str, o: &repo::OpenOpts) -> Line {
    let mut line = Line {
        pvc: pvc.to_string(),
        location: String::new(),
        ok: false,
        exists: false,
        snapshots: Vec::new(),
        error: None,
    };
    let res = (|| -> MResult<()> {
        let spec = repo::parse_repo(repository)?;
        line.location = repo::location(&spec);
        let be = repo::Backend::connect(spec)?;
        if !be.config_exists()? {
            return Ok(());
        }
        line.exists = true;
        let repository = repo::open_or_init(&be, o, false)?;
        let sel = Selector {
            policy: Some(policy),
            pvc: Some(pvc),
            ..Selector::default()
        };
        line.snapshots = ops::snapshots_of(&repository, &sel)?
            .iter()
            .filter(|s| tag_value(s, "pvc") == Some(pvc))
            .map(full_info)
            .collect();
        Ok(())
    })();
    match res {
        Ok(()) => line.ok = true,
        Err(e) => {
            line.error = Some(ErrorInfo {
                kind: e.kind,
                message: e.message,
            })
        }
    }
    line
}

/// Lists every target and prints one [`MARKER`] line per PVC.
pub fn run(policy: &str, targets: &[String], r: &mut MoverResult) -> MResult<()> {
    let o = repo::open_opts_from_env()?;
    let mut parsed = Vec::new();
    for t in targets {
        parsed.push(parse_target(t)?);
    }
    let (mut failed, mut total) = (0usize, 0usize);
    for (pvc, repository) in parsed {
        let line = list_one(policy, pvc, repository, &o);
        failed += usize::from(!line.ok);
        total += line.snapshots.len();
        match serde_json::to_string(&line) {
            Ok(json) => println!("{MARKER}{json}"),
            Err(e) => eprintln!("backup-mover: encoding the catalog of {pvc}: {e}"),
        }
    }
    r.snapshot_count = Some(total);
    r.time = Some(jiff::Timestamp::now().to_string());
    if failed > 0 {
        r.warning = Some(format!(
            "{failed} of {} repositories could not be listed",
            targets.len()
        ));
    }
    r.ok = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_need_a_pvc_and_a_repository() {
        assert_eq!(
            parse_target("data=s3:http://h/b/ns/data").ok(),
            Some(("data", "s3:http://h/b/ns/data"))
        );
        assert!(parse_target("data").is_err());
        assert!(parse_target("=repo").is_err());
        assert!(parse_target("data=").is_err());
    }

    #[test]
    fn a_line_is_one_marked_line_of_json() {
        let line = Line {
            pvc: "a".into(),
            location: "s3:http://h/b/ns/a".into(),
            ok: true,
            exists: true,
            snapshots: vec![SnapshotInfo {
                id: "abcd0123".into(),
                warning: Some("x\ny".into()),
                ..Default::default()
            }],
            error: None,
        };
        let json = serde_json::to_string(&line).unwrap_or_default();
        assert!(!json.contains('\n'), "{json}");
        let back: Line = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, line);
    }
}
