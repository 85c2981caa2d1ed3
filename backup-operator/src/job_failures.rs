//! Why a running mover Job makes no progress: its pods cannot be created
//! (Pod Security, quota), scheduled, mounted, configured (a missing Secret)
//! or pulled. Read from the Job's Events, its pods' status and their Events,
//! so the policy reports it within a minute instead of at the Job's deadline.
//! Pure functions; the handlers fetch the inputs.

use crate::api::Phase;
use crate::status::{Computed, condition};
use k8s_openapi::api::core::v1::{Event, Pod};

/// Condition reasons a blocked Job is reported with.
pub mod reason {
    /// The Job's pods are rejected at creation (Pod Security, quota, ...).
    pub const POD_FORBIDDEN: &str = "PodForbidden";
    /// The pod is rejected for another reason at creation.
    pub const POD_CREATE_FAILED: &str = "PodCreateFailed";
    /// The volume is attached to (in use on) another node.
    pub const VOLUME_IN_USE: &str = "VolumeInUse";
    /// A volume cannot be mounted.
    pub const MOUNT_FAILED: &str = "MountFailed";
    /// No node fits the pod.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// A Secret (or a key of it) the pod references does not exist.
    pub const SECRET_MISSING: &str = "SecretMissing";
    /// The mover image cannot be pulled.
    pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
}

/// Why one Job is stuck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// One of [`reason`].
    pub reason: &'static str,
    /// What the cluster said.
    pub message: String,
}

/// A stuck Job of a policy, with the PVC it backs up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedJob {
    /// Job name.
    pub job: String,
    /// PVC the Job is for.
    pub pvc: String,
    /// Why it is stuck.
    pub blocked: Blocked,
}

fn blocked(reason: &'static str, message: &str) -> Option<Blocked> {
    Some(Blocked {
        reason,
        message: message.trim().to_string(),
    })
}

/// What keeps one pod from running, from its status and its Events.
pub fn pod_blocked(pod: &Pod, pod_events: &[Event]) -> Option<Blocked> {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    if phase != "Pending" {
        return None;
    }
    for c in status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        if c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
        {
            return blocked(reason::UNSCHEDULABLE, c.message.as_deref().unwrap_or(""));
        }
    }
    let statuses = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .chain(status.and_then(|s| s.init_container_statuses.as_ref()))
        .flatten();
    for cs in statuses {
        let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let msg = w.message.as_deref().unwrap_or("");
        match w.reason.as_deref() {
            Some("CreateContainerConfigError") => {
                let secret = msg.to_ascii_lowercase().contains("secret");
                let reason = if secret {
                    reason::SECRET_MISSING
                } else {
                    reason::POD_CREATE_FAILED
                };
                return blocked(reason, msg);
            }
            Some(
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull",
            ) => return blocked(reason::IMAGE_PULL_FAILED, msg),
            _ => {}
        }
    }
    // Mount problems show only as Events; the newest one counts.
    let newest = pod_events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| {
            matches!(
                e.reason.as_deref(),
                Some("FailedMount" | "FailedAttachVolume")
            )
        })
        .max_by_key(|e| event_time(e))?;
    let msg = newest.message.as_deref().unwrap_or("");
    if msg.contains("Multi-Attach") || msg.contains("already used by") {
        blocked(reason::VOLUME_IN_USE, msg)
    } else {
        blocked(reason::MOUNT_FAILED, msg)
    }
}

fn event_time(e: &Event) -> Option<jiff::Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// What keeps a running Job from making progress: a pod that cannot be
/// created (only while the Job has no pod at all), else the first stuck pod.
pub fn job_blocked(job_events: &[Event], pods: &[(Pod, Vec<Event>)]) -> Option<Blocked> {
    if pods.is_empty() {
        let newest = job_events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
            .max_by_key(|e| event_time(e))?;
        let msg = newest.message.as_deref().unwrap_or("");
        let reason = if msg.contains("forbidden") {
            reason::POD_FORBIDDEN
        } else {
            reason::POD_CREATE_FAILED
        };
        return blocked(reason, msg);
    }
    // A running or finished pod means the Job is moving.
    pods.iter().find_map(|(p, events)| pod_blocked(p, events))
}

/// Puts stuck Jobs on the policy's conditions: `BackupFailed=True` with the
/// stuck reason (naming each PVC) and `Ready=False`, since nothing can run.
pub fn apply(computed: &mut Computed, stuck: &[BlockedJob]) -> bool {
    let Some(first) = stuck.first() else {
        return false;
    };
    let message = stuck
        .iter()
        .map(|b| {
            format!(
                "PVC {}: {}: {} (Job {})",
                b.pvc, b.blocked.reason, b.blocked.message, b.job
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    computed.status.phase = Some(Phase::Error);
    for c in computed.conditions.iter_mut() {
        if c.type_ == condition::BACKUP_FAILED {
            c.status = true;
            c.reason = first.blocked.reason.to_string();
            c.message = message.clone();
        } else if c.type_ == condition::READY && c.status {
            c.status = false;
            c.reason = first.blocked.reason.to_string();
            c.message = format!("backup Jobs cannot run: {message}");
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ConditionUpdate;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).expect("pod")
    }

    fn event(reason: &str, message: &str, at: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": "e"}, "involvedObject": {}, "type": "Warning",
            "reason": reason, "message": message, "lastTimestamp": at,
        }))
        .expect("event")
    }

    #[test]
    fn a_job_without_pods_and_a_forbidden_create_is_pod_forbidden() {
        let ev = event(
            "FailedCreate",
            "Error creating: pods \"j-x\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true",
            "2026-01-01T10:00:00Z",
        );
        let b = job_blocked(std::slice::from_ref(&ev), &[]).expect("blocked");
        assert_eq!(b.reason, reason::POD_FORBIDDEN);
        assert!(b.message.contains("PodSecurity"));
        // Once a pod exists, an old FailedCreate does not count.
        let running = pod(json!({"phase": "Running"}));
        assert_eq!(job_blocked(&[ev], &[(running, vec![])]), None);
        assert_eq!(job_blocked(&[], &[]), None);
    }

    #[test]
    fn stuck_pods_are_classified() {
        let unsched = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}]}),
        );
        assert_eq!(
            pod_blocked(&unsched, &[]).map(|b| b.reason),
            Some(reason::UNSCHEDULABLE)
        );
        let waiting = |reason: &str, message: &str| {
            pod(
                json!({"phase": "Pending", "containerStatuses": [{"name": "mover", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}]}),
            )
        };
        let secret = waiting("CreateContainerConfigError", "secret \"repo-pw\" not found");
        let b = pod_blocked(&secret, &[]).expect("blocked");
        assert_eq!(b.reason, reason::SECRET_MISSING);
        assert!(b.message.contains("repo-pw"));
        for r in ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"] {
            assert_eq!(
                pod_blocked(&waiting(r, "x"), &[]).map(|b| b.reason),
                Some(reason::IMAGE_PULL_FAILED)
            );
        }
        // ContainerCreating alone is normal start-up.
        let creating = waiting("ContainerCreating", "");
        assert_eq!(pod_blocked(&creating, &[]), None);
        let mount = [
            event(
                "FailedMount",
                "MountVolume.SetUp failed for volume \"data\"",
                "2026-01-01T10:00:00Z",
            ),
            event(
                "FailedAttachVolume",
                "Multi-Attach error for volume \"pvc-1\" Volume is already used by pod(s) app",
                "2026-01-01T10:00:05Z",
            ),
        ];
        assert_eq!(
            pod_blocked(&creating, &mount).map(|b| b.reason),
            Some(reason::VOLUME_IN_USE)
        );
        assert_eq!(
            pod_blocked(&creating, &mount[..1]).map(|b| b.reason),
            Some(reason::MOUNT_FAILED)
        );
        // A running pod is not stuck, whatever old Events say.
        assert_eq!(pod_blocked(&pod(json!({"phase": "Running"})), &mount), None);
    }

    #[test]
    fn stuck_jobs_turn_the_policy_not_ready_naming_the_pvc() {
        let conditions = vec![
            ConditionUpdate {
                type_: condition::READY,
                status: true,
                reason: "Scheduled".into(),
                message: "1 PVC(s) scheduled".into(),
            },
            ConditionUpdate {
                type_: condition::BACKUP_FAILED,
                status: false,
                reason: "BackupsSucceeded".into(),
                message: String::new(),
            },
        ];
        let mut c = Computed {
            status: Default::default(),
            conditions,
        };
        assert!(!apply(&mut c, &[]));
        assert!(c.conditions[0].status && !c.conditions[1].status);
        let stuck = BlockedJob {
            job: "j1".into(),
            pvc: "data".into(),
            blocked: Blocked {
                reason: reason::POD_FORBIDDEN,
                message: "violates PodSecurity".into(),
            },
        };
        assert!(apply(&mut c, &[stuck]));
        let conds = &c.conditions;
        assert_eq!(
            (conds[0].status, conds[0].reason.as_str()),
            (false, "PodForbidden")
        );
        assert_eq!(
            (conds[1].status, conds[1].reason.as_str()),
            (true, "PodForbidden")
        );
        assert!(
            conds[1].message.contains("PVC data"),
            "{}",
            conds[1].message
        );
        assert_eq!(c.status.phase, Some(Phase::Error));
    }
}
