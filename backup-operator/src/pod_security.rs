//! Who mover pods run as. By default a non-root user with every capability
//! dropped, which passes Pod Security `restricted`; root (with only the
//! capabilities the operation needs) only in namespaces the cluster admin
//! opened for it: Namespaces are cluster-scoped, so their annotations are the
//! admin's, not the namespace users'.

use crate::api::MoverIdentity;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext,
};
use std::collections::BTreeMap;

/// Namespace annotation by which an admin allows root movers there.
pub const PRIVILEGED_MOVERS_ANNOTATION: &str = "backup.backup.example.com/privileged-movers";
/// User (and group) of non-root movers unless the policy names one.
pub const DEFAULT_UID: i64 = 65532;
/// The per-namespace ServiceAccount of mover pods (no token, no permissions).
pub const MOVER_SERVICE_ACCOUNT: &str = "backup-mover";

/// Whether the namespace's annotations allow root movers.
pub fn privileged_allowed(namespace_annotations: &BTreeMap<String, String>) -> bool {
    namespace_annotations
        .get(PRIVILEGED_MOVERS_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// Whether a mover with this identity runs as root where that is allowed:
/// unless it names a non-root user.
pub fn wants_root(identity: &MoverIdentity) -> bool {
    identity.run_as_user.is_none_or(|u| u == 0)
}

/// The capabilities a root mover needs: a backup reads any owner's files
/// (`DAC_READ_SEARCH`), a restore creates them with their owners and modes
/// (`CHOWN`, `FOWNER`, `DAC_OVERRIDE`, `FSETID`); the others only talk to
/// the repository.
pub fn root_capabilities(operation: &str) -> Vec<String> {
    let caps: &[&str] = match operation {
        "backup" => &["DAC_READ_SEARCH"],
        "restore" => &["CHOWN", "FOWNER", "DAC_OVERRIDE", "FSETID"],
        _ => &[],
    };
    caps.iter().map(|c| c.to_string()).collect()
}

fn seccomp() -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    })
}

fn container(add: Vec<String>) -> SecurityContext {
    SecurityContext {
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: (!add.is_empty()).then_some(add),
        }),
        ..Default::default()
    }
}

/// Security contexts of a non-root mover (pod, container). A restore gets
/// `fsGroup` (default: its group) so it can write a freshly provisioned
/// volume; a backup only when asked, since kubelet would change the group of
/// every file of a writable source volume.
pub fn non_root(
    operation: &str,
    identity: &MoverIdentity,
) -> (PodSecurityContext, SecurityContext) {
    let uid = identity.run_as_user.unwrap_or(DEFAULT_UID);
    let gid = identity.run_as_group.unwrap_or(uid);
    let fs_group = match operation {
        "restore" => Some(identity.fs_group.unwrap_or(gid)),
        _ => identity.fs_group,
    };
    let pod = PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(gid),
        fs_group,
        seccomp_profile: seccomp(),
        ..Default::default()
    };
    (pod, container(vec![]))
}

/// Security contexts of a root mover: uid 0, every capability dropped except
/// what the operation needs.
pub fn root(operation: &str, identity: &MoverIdentity) -> (PodSecurityContext, SecurityContext) {
    let pod = PodSecurityContext {
        run_as_user: Some(0),
        run_as_group: Some(identity.run_as_group.unwrap_or(0)),
        fs_group: identity.fs_group,
        seccomp_profile: seccomp(),
        ..Default::default()
    };
    (pod, container(root_capabilities(operation)))
}

/// Makes the mover pod a root mover (for a namespace that allows it).
pub fn elevate_pod(spec: &mut PodSpec, identity: &MoverIdentity) {
    let Some(mover) = spec.containers.iter_mut().find(|c| c.name == "mover") else {
        return;
    };
    let operation = mover
        .args
        .as_ref()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_default();
    let (pod, c) = root(&operation, identity);
    mover.security_context = Some(c);
    spec.security_context = Some(pod);
}

/// [`elevate_pod`] on a Job's pod template.
pub fn elevate_job(job: &mut Job, identity: &MoverIdentity) {
    if let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        elevate_pod(pod, identity);
    }
}

/// [`elevate_pod`] on a CronJob's pod template.
pub fn elevate_cronjob(cj: &mut CronJob, identity: &MoverIdentity) {
    let pod = cj
        .spec
        .as_mut()
        .and_then(|s| s.job_template.spec.as_mut())
        .and_then(|s| s.template.spec.as_mut());
    if let Some(pod) = pod {
        elevate_pod(pod, identity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(uid: Option<i64>, gid: Option<i64>, fs: Option<i64>) -> MoverIdentity {
        MoverIdentity {
            run_as_user: uid,
            run_as_group: gid,
            fs_group: fs,
        }
    }

    #[test]
    fn non_root_movers_pass_restricted_and_default_to_65532() {
        let (pod, c) = non_root("backup", &MoverIdentity::default());
        assert_eq!(pod.run_as_non_root, Some(true));
        assert_eq!(
            (pod.run_as_user, pod.run_as_group),
            (Some(65532), Some(65532))
        );
        assert_eq!(
            pod.fs_group, None,
            "a backup leaves the source's groups alone"
        );
        assert_eq!(
            pod.seccomp_profile.map(|p| p.type_).as_deref(),
            Some("RuntimeDefault")
        );
        assert_eq!(c.allow_privilege_escalation, Some(false));
        let caps = c.capabilities.expect("capabilities");
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(caps.add, None);
        let (pod, _) = non_root("restore", &identity(Some(1000), None, None));
        assert_eq!(
            (pod.run_as_user, pod.run_as_group, pod.fs_group),
            (Some(1000), Some(1000), Some(1000))
        );
        let (pod, _) = non_root("backup", &identity(Some(1000), Some(2000), Some(3000)));
        assert_eq!(
            (pod.run_as_user, pod.run_as_group, pod.fs_group),
            (Some(1000), Some(2000), Some(3000))
        );
    }

    #[test]
    fn root_movers_only_where_the_namespace_allows_with_exact_capabilities() {
        let mut ann = BTreeMap::new();
        assert!(!privileged_allowed(&ann));
        ann.insert(PRIVILEGED_MOVERS_ANNOTATION.to_string(), "yes".to_string());
        assert!(!privileged_allowed(&ann));
        ann.insert(PRIVILEGED_MOVERS_ANNOTATION.to_string(), "true".to_string());
        assert!(privileged_allowed(&ann));
        assert!(wants_root(&MoverIdentity::default()));
        assert!(wants_root(&identity(Some(0), None, None)));
        assert!(!wants_root(&identity(Some(1000), None, None)));
        let (pod, c) = root("backup", &MoverIdentity::default());
        assert_eq!(pod.run_as_user, Some(0));
        assert_eq!(pod.run_as_non_root, None);
        let caps = c.capabilities.expect("capabilities");
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(caps.add, Some(vec!["DAC_READ_SEARCH".to_string()]));
        assert_eq!(
            root_capabilities("restore"),
            ["CHOWN", "FOWNER", "DAC_OVERRIDE", "FSETID"]
        );
        assert!(root_capabilities("snapshots").is_empty());
        assert!(root_capabilities("forget").is_empty());
    }
}
