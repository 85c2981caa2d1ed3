//! The owner marker: `<repo>/mover-owner`, the JSON
//! `{"version":1,"cluster","namespace","policy","written","adopted"}`
//! encrypted with the repository key (like a lock file). restic ignores
//! unknown files at the top of a repository, so `restic check` stays clean.
//!
//! forget/prune run only on a repository that is ours: its marker names our
//! cluster (`MOVER_CLUSTER_ID`; a marker without a cluster matches any) and
//! our namespace, or it has no marker and only snapshots the mover wrote for
//! this namespace (the marker is then written). Anything else is refused
//! unless `--adopt` is given, which rewrites the marker. Policies are not
//! part of ownership: several policies of one namespace share a PVC's
//! repository, and retention keeps their histories apart by tags.

use rustic_core::repofile::SnapshotFile;
use serde::{Deserialize, Serialize};

use crate::crypto::Crypto;
use crate::error::{MResult, MoverError};
use crate::repo::Raw;
use crate::result::ErrorKind;

pub const MARKER: &str = "mover-owner";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub version: u32,
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub namespace: String,
    /// The policy that wrote the marker (informational).
    #[serde(default)]
    pub policy: String,
    #[serde(default)]
    pub written: String,
    #[serde(default)]
    pub adopted: bool,
}

/// Who we are.
#[derive(Debug, Clone)]
pub struct Me {
    pub cluster: String,
    pub namespace: String,
    pub policy: String,
}

impl Me {
    pub fn new(namespace: &str, policy: &str) -> Self {
        Self {
            cluster: std::env::var("MOVER_CLUSTER_ID")
                .map(|c| c.trim().to_string())
                .unwrap_or_default(),
            namespace: namespace.to_string(),
            policy: policy.to_string(),
        }
    }

    fn marker(&self, adopted: bool) -> Owner {
        Owner {
            version: 1,
            cluster: self.cluster.clone(),
            namespace: self.namespace.clone(),
            policy: self.policy.clone(),
            written: jiff::Timestamp::now().to_string(),
            adopted,
        }
    }
}

/// The marker as found: absent, readable, or not decodable (why).
pub type Found = Option<Result<Owner, String>>;

pub fn read(be: &Raw, crypto: &Crypto) -> MResult<Found> {
    let Some(data) = be.get(MARKER)? else {
        return Ok(None);
    };
    let parsed = crypto
        .decrypt(&data)
        .ok_or_else(|| "it does not decrypt with this repository's key".to_string())
        .and_then(|p| serde_json::from_slice::<Owner>(&p).map_err(|e| format!("parsing: {e}")));
    Ok(Some(parsed))
}

fn encode(crypto: &Crypto, o: &Owner) -> MResult<Vec<u8>> {
    let json = serde_json::to_vec(o)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("encoding owner marker: {e}")))?;
    crypto.encrypt(&json)
}

/// Whether the mover wrote `s` for namespace `ns` (its three tags).
pub fn written_by_us(s: &SnapshotFile, ns: &str) -> bool {
    let has = |k: &str| s.tags.iter().any(|t| t.starts_with(&format!("{k}=")));
    has("policy") && has("pvc") && s.tags.iter().any(|t| *t == format!("ns={ns}"))
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ours,
    /// No marker and nothing foreign: ours, and the marker is to be written.
    Claim,
    Refuse(String),
}

/// Pure ownership rule (see the module comment).
pub fn verdict(found: &Found, me: &Me, foreign_snapshots: usize) -> Verdict {
    match found {
        Some(Err(why)) => Verdict::Refuse(format!("its owner marker is unreadable ({why})")),
        Some(Ok(o)) if !o.cluster.is_empty() && o.cluster != me.cluster => {
            Verdict::Refuse(format!(
                "it belongs to cluster {:?} (ours: {:?})",
                o.cluster, me.cluster
            ))
        }
        Some(Ok(o)) if o.namespace != me.namespace => Verdict::Refuse(format!(
            "it belongs to namespace {:?} (ours: {:?})",
            o.namespace, me.namespace
        )),
        Some(Ok(_)) => Verdict::Ours,
        None if foreign_snapshots > 0 => Verdict::Refuse(format!(
            "it has no owner marker and {foreign_snapshots} snapshot(s) the mover did not \
             write for namespace {:?}",
            me.namespace
        )),
        None => Verdict::Claim,
    }
}

fn foreign(snaps: &[SnapshotFile], me: &Me) -> usize {
    snaps
        .iter()
        .filter(|s| !written_by_us(s, &me.namespace))
        .count()
}

/// On backup: writes the marker if there is none and nothing foreign
/// (first backup into a repository). Never overwrites.
pub fn claim_if_unowned(be: &Raw, crypto: &Crypto, me: &Me, snaps: &[SnapshotFile]) -> MResult<()> {
    if read(be, crypto)?.is_none() && foreign(snaps, me) == 0 {
        be.create_new(MARKER, &encode(crypto, &me.marker(false))?)?;
    }
    Ok(())
}

/// Before forget/prune: `Ok` if the repository is ours (claiming it when
/// unowned), or after adopting it with `adopt`; else an error saying why.
pub fn authorize(
    be: &Raw,
    crypto: &Crypto,
    me: &Me,
    snaps: &[SnapshotFile],
    adopt: bool,
) -> MResult<()> {
    let found = read(be, crypto)?;
    match verdict(&found, me, foreign(snaps, me)) {
        Verdict::Ours => Ok(()),
        Verdict::Claim => {
            be.create_new(MARKER, &encode(crypto, &me.marker(false))?)?;
            Ok(())
        }
        Verdict::Refuse(why) if adopt => {
            log::warn!("adopting the repository although {why}");
            be.put(MARKER, &encode(crypto, &me.marker(true))?)
        }
        Verdict::Refuse(why) => Err(MoverError::new(
            ErrorKind::ForeignRepository,
            format!("refusing to forget or prune: {why}; pass --adopt to take the repository over"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(cluster: &str) -> Me {
        Me {
            cluster: cluster.into(),
            namespace: "ns".into(),
            policy: "daily".into(),
        }
    }

    fn owner(cluster: &str, ns: &str) -> Found {
        Some(Ok(Owner {
            version: 1,
            cluster: cluster.into(),
            namespace: ns.into(),
            policy: "hourly".into(),
            written: String::new(),
            adopted: false,
        }))
    }

    #[test]
    fn ownership() {
        assert_eq!(verdict(&None, &me("a"), 0), Verdict::Claim);
        assert!(matches!(verdict(&None, &me("a"), 2), Verdict::Refuse(_)));
        // Another policy of the same namespace and cluster: ours.
        assert_eq!(verdict(&owner("a", "ns"), &me("a"), 5), Verdict::Ours);
        assert!(matches!(
            verdict(&owner("b", "ns"), &me("a"), 0),
            Verdict::Refuse(m) if m.contains("cluster")
        ));
        // We do not know our cluster: cannot prove we are "b".
        assert!(matches!(
            verdict(&owner("b", "ns"), &me(""), 0),
            Verdict::Refuse(_)
        ));
        // A marker without a cluster matches any cluster.
        assert_eq!(verdict(&owner("", "ns"), &me("a"), 0), Verdict::Ours);
        assert!(matches!(
            verdict(&owner("a", "other"), &me("a"), 0),
            Verdict::Refuse(m) if m.contains("namespace")
        ));
        assert!(matches!(
            verdict(&Some(Err("x".into())), &me("a"), 0),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn our_snapshots() {
        let mut s = SnapshotFile::default();
        assert!(!written_by_us(&s, "ns"));
        s.tags = "ns=ns,policy=daily,pvc=data".parse().unwrap_or_default();
        assert!(written_by_us(&s, "ns"));
        assert!(!written_by_us(&s, "other"));
    }
}
