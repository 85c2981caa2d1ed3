//! Where mover pods run: the policy's `nodeSelector`, `tolerations`,
//! `affinity` and `priorityClassName`, and, for a ReadWriteOnce PVC that a
//! running pod mounts, that pod's node (the volume can be attached to one
//! node only, so anywhere else the Job would hang in ContainerCreating).
//! Pure functions; the handlers list the pods.

use crate::api::JobSettings;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec,
};

/// Whether a PVC with these access modes can be mounted on one node only.
pub fn single_node(access_modes: &[String]) -> bool {
    access_modes.iter().any(|m| m == "ReadWriteOnce")
        && !access_modes
            .iter()
            .any(|m| m == "ReadWriteMany" || m == "ReadOnlyMany")
}

/// The node of a pod that mounts `pvc` and holds it (scheduled, not
/// finished, not being deleted), if any.
pub fn node_using(pvc: &str, pods: &[Pod]) -> Option<String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .is_some_and(|vs| {
                    vs.iter().any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| c.claim_name == pvc)
                    })
                })
        })
        .find_map(|p| p.spec.as_ref()?.node_name.clone())
}

/// Puts the policy's placement settings on a mover pod.
pub fn place(spec: &mut PodSpec, settings: &JobSettings) {
    spec.node_selector = settings.node_selector.clone();
    spec.tolerations = settings.tolerations.clone();
    spec.affinity = settings.affinity.clone();
    spec.priority_class_name = settings.priority_class_name.clone();
}

/// Requires the pod to run on `node`, on top of whatever node affinity it
/// has (every required term gets the node, so the terms still apply).
pub fn pin(spec: &mut PodSpec, node: &str) {
    let requirement = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![node.to_string()]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let required = node_affinity
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(NodeSelector::default);
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        let fields = term.match_fields.get_or_insert_with(Vec::new);
        fields.retain(|f| f.key != "metadata.name");
        fields.push(requirement.clone());
    }
}

/// [`pin`] on a Job's pod template.
pub fn pin_job(job: &mut Job, node: &str) {
    if let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pin(pod, node);
    }
}

/// [`pin`] on a CronJob's pod template.
pub fn pin_cronjob(cj: &mut CronJob, node: &str) {
    let pod = cj
        .spec
        .as_mut()
        .and_then(|s| s.job_template.spec.as_mut())
        .and_then(|s| s.template.spec.as_mut());
    if let Some(pod) = pod {
        pin(pod, node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, claim: &str, node: Option<&str>, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c"}], "nodeName": node,
                     "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]},
            "status": {"phase": phase},
        }))
        .expect("pod")
    }

    #[test]
    fn the_node_of_a_running_pod_holding_a_rwo_pvc_is_found() {
        let pods = [
            pod("done", "data", Some("n1"), "Succeeded"),
            pod("other", "logs", Some("n2"), "Running"),
            pod("app", "data", Some("n3"), "Running"),
        ];
        assert_eq!(node_using("data", &pods).as_deref(), Some("n3"));
        assert_eq!(node_using("logs", &pods).as_deref(), Some("n2"));
        assert_eq!(node_using("none", &pods), None);
        // Not scheduled yet: no node to follow.
        assert_eq!(node_using("x", &[pod("p", "x", None, "Pending")]), None);
        assert!(single_node(&["ReadWriteOnce".into()]));
        assert!(!single_node(&["ReadWriteMany".into()]));
        assert!(!single_node(&[
            "ReadWriteOnce".into(),
            "ReadOnlyMany".into()
        ]));
        assert!(!single_node(&["ReadWriteOncePod".into()]));
    }

    #[test]
    fn settings_reach_the_pod_and_pinning_keeps_the_users_terms() {
        let settings: JobSettings = serde_json::from_value(json!({
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "backup", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "backup-low",
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}
        }))
        .expect("settings");
        let mut spec = PodSpec::default();
        place(&mut spec, &settings);
        assert_eq!(
            spec.node_selector.as_ref().map(|s| s["disk"].as_str()),
            Some("ssd")
        );
        assert_eq!(spec.priority_class_name.as_deref(), Some("backup-low"));
        assert_eq!(spec.tolerations.as_ref().map(Vec::len), Some(1));
        pin(&mut spec, "node-7");
        pin(&mut spec, "node-8"); // a second pin replaces the first
        let terms = spec
            .affinity
            .and_then(|a| a.node_affinity)
            .and_then(|n| n.required_during_scheduling_ignored_during_execution)
            .expect("required node affinity")
            .node_selector_terms;
        assert_eq!(terms.len(), 2);
        for t in &terms {
            assert_eq!(t.match_expressions.as_ref().map(Vec::len), Some(1));
            let fields = t.match_fields.clone().unwrap_or_default();
            assert_eq!(fields.len(), 1);
            assert_eq!(fields[0].key, "metadata.name");
            assert_eq!(fields[0].values, Some(vec!["node-8".to_string()]));
        }
        let mut bare = PodSpec::default();
        pin(&mut bare, "n");
        let terms = bare
            .affinity
            .and_then(|a| a.node_affinity)
            .and_then(|n| n.required_during_scheduling_ignored_during_execution)
            .expect("required")
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
    }
}
