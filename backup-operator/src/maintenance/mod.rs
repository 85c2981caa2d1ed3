//! Keeping repositories maintainable: who owns a repository (the cluster
//! identity every backup records) and the explicit removal of stale locks
//! that killed Jobs leave behind.
//!
//! Both are the operator's half of the mover's fail-closed rules: the
//! mover never prunes a repository another cluster owns and never lets a
//! stale lock through; the operator supplies the identity and decides when
//! removing stale locks is safe (no Job of the repository runs).

pub mod owner;
pub mod unlock;
