//! The backup operator: `BackupPolicy` and `Restore` on `operator-framework`.
//!
//! Layout: `api` holds the custom resources; the pure modules (`schedule`,
//! `naming`, `retention`, `targets`, `desired`, `results`) compute desired state
//! without I/O; `handlers` are the thin framework handlers doing the I/O.

pub mod api;
pub mod catalog;
pub mod desired;
pub mod guardrails;
pub mod handlers;
pub mod job_failures;
pub mod maintenance;
pub mod manifests;
pub mod metrics;
pub mod naming;
pub mod one_shot;
pub mod placement;
pub mod pod_security;
pub mod restore_plan;
pub mod results;
pub mod retention;
pub mod schedule;
pub mod snapshot;
pub mod status;
pub mod targets;

/// Mover image used when neither the operator flag nor the policy names one.
pub const DEFAULT_MOVER_IMAGE: &str = "localhost/backup-operator:dev";
