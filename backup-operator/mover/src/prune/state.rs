//! Prune's memory between runs: `mover-prune/state`, encrypted JSON with
//! the repository key, outside the directories restic reads.
//!
//! * `candidates`: indexed packs no snapshot needed at some prune, with the
//!   time they were marked. They stay in the index, so restic and the
//!   mover read them as before; the mover's backups do not deduplicate
//!   against them. A later prune deletes them once the grace period has
//!   passed, or drops the mark when a snapshot needs them again.
//! * `unindexed`: packs in the backend that no index lists (a backup that
//!   runs, or was killed before indexing them), with the time a prune first
//!   saw them; deleted only after the grace period from then.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use rustic_core::Id;
use serde::{Deserialize, Serialize};

use crate::crypto::Crypto;
use crate::error::{MResult, MoverError};
use crate::repo::Backend;
use crate::result::ErrorKind;

pub const STATE_FILE: &str = "mover-prune/state";
const VERSION: u32 = 1;

/// Pack id (hex) to a time.
pub type PackTimes = BTreeMap<String, Timestamp>;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    #[serde(default)]
    pub candidates: PackTimes,
    #[serde(default)]
    pub unindexed: PackTimes,
}

/// The state and the bytes it was read from (to detect a concurrent writer).
pub struct Loaded {
    pub state: State,
    pub raw: Option<Vec<u8>>,
}

/// Parses pack ids of `times`; an id that is not hex means a damaged state.
pub fn ids(times: &PackTimes) -> MResult<Vec<(Id, Timestamp)>> {
    times
        .iter()
        .map(|(k, t)| {
            k.parse::<Id>().map(|id| (id, *t)).map_err(|_| {
                MoverError::new(ErrorKind::Other, format!("{STATE_FILE}: bad pack id {k:?}"))
            })
        })
        .collect()
}

/// Reads the state; absent means empty. Unreadable is an error: a backup
/// that cannot see the marks could use a pack that is about to go.
pub fn load(be: &Backend, crypto: &Crypto) -> MResult<Loaded> {
    let Some(raw) = be
        .raw
        .get(STATE_FILE)
        .map_err(|e| e.context(&format!("reading {STATE_FILE}")))?
    else {
        return Ok(Loaded {
            state: State::default(),
            raw: None,
        });
    };
    let state = decode(crypto, &raw)?;
    Ok(Loaded {
        state,
        raw: Some(raw),
    })
}

fn decode(crypto: &Crypto, raw: &[u8]) -> MResult<State> {
    let bad = |why: &str| {
        MoverError::new(
            ErrorKind::Other,
            format!(
                "{STATE_FILE} {why}; refusing to go on (remove it only if no prune or backup runs)"
            ),
        )
    };
    let plain = crypto
        .decrypt(raw)
        .ok_or_else(|| bad("does not decrypt with the repository key"))?;
    let state: State =
        serde_json::from_slice(&plain).map_err(|e| bad(&format!("is not valid ({e})")))?;
    if state.version != VERSION {
        return Err(bad(&format!("has unknown version {}", state.version)));
    }
    Ok(state)
}

/// Writes the state (replacing the file as a whole).
pub fn save(be: &Backend, crypto: &Crypto, state: &State) -> MResult<()> {
    let mut state = state.clone();
    state.version = VERSION;
    let json = serde_json::to_vec(&state)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("{STATE_FILE} JSON: {e}")))?;
    let sealed = crypto.encrypt(&json)?;
    be.raw
        .put(STATE_FILE, &sealed)
        .map_err(|e| e.context(&format!("writing {STATE_FILE}")))
}

/// Whether the file still holds what `loaded` read (no other prune wrote
/// in between; every write has a fresh IV, so equal bytes mean no write).
pub fn unchanged(be: &Backend, loaded: &Loaded) -> MResult<bool> {
    let now = be
        .raw
        .get(STATE_FILE)
        .map_err(|e| e.context(&format!("reading {STATE_FILE}")))?;
    Ok(now == loaded.raw)
}

/// The packs a backup must not deduplicate against.
pub fn candidate_packs(be: &Backend, crypto: &Crypto) -> MResult<HashSet<Id>> {
    let loaded = load(be, crypto)?;
    Ok(ids(&loaded.state.candidates)?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_foreign_bytes() {
        let key = Crypto::from_raw([3u8; 64]);
        let mut s = State {
            version: VERSION,
            ..State::default()
        };
        s.candidates.insert("ab".repeat(32), Timestamp::UNIX_EPOCH);
        let sealed = key
            .encrypt(&serde_json::to_vec(&s).expect("json"))
            .expect("seal");
        assert_eq!(decode(&key, &sealed).expect("decodes"), s);
        let other = Crypto::from_raw([4u8; 64]);
        assert!(decode(&other, &sealed).is_err(), "another key's state");
        let future = key
            .encrypt(br#"{"version":9,"candidates":{}}"#)
            .expect("seal");
        assert!(decode(&key, &future).is_err(), "unknown version");
        assert_eq!(ids(&s.candidates).expect("ids").len(), 1);
        s.candidates.insert("zz".into(), Timestamp::UNIX_EPOCH);
        assert!(ids(&s.candidates).is_err());
    }
}
