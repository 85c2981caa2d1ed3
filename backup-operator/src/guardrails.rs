//! What the cluster admin, through the operator's configuration, allows
//! namespaced policies to ask for: mover images and NFS exports. A policy
//! asking for anything else runs nothing and says why.

use crate::api::BackupPolicySpec;

/// The admin's limits (operator flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guardrails {
    /// Images a policy may name in `spec.job.moverImage` besides the
    /// operator's own (empty: none).
    pub allowed_mover_images: Vec<String>,
    /// NFS exports (`server:/path`) policies may use, each with everything
    /// below its path (empty: any export).
    pub nfs_exports: Vec<String>,
}

impl Guardrails {
    /// Parses the comma-separated flag values.
    pub fn from_flags(images: &str, nfs_exports: &str) -> Self {
        let list = |s: &str| {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        };
        Self {
            allowed_mover_images: list(images),
            nfs_exports: list(nfs_exports),
        }
    }
}

fn export_allows(export: &str, server: &str, path: &str) -> bool {
    let Some((s, p)) = export.split_once(':') else {
        return false;
    };
    let p = p.trim_end_matches('/');
    let path = path.trim_end_matches('/');
    s == server
        && (path == p
            || path
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('/')))
}

/// Why the policy may not run, one message per problem (empty: it may).
pub fn violations(spec: &BackupPolicySpec, operator_image: &str, g: &Guardrails) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(image) = spec.job.mover_image.as_deref()
        && image != operator_image
        && !g.allowed_mover_images.iter().any(|a| a == image)
    {
        out.push(format!(
            "spec.job.moverImage {image} is not one of the mover images the operator allows"
        ));
    }
    if let Some(nfs) = spec.destination.as_ref().and_then(|d| d.nfs.as_ref())
        && !g.nfs_exports.is_empty()
        && !g
            .nfs_exports
            .iter()
            .any(|e| export_allows(e, &nfs.server, &nfs.path))
    {
        out.push(format!(
            "spec.destination.nfs {}:{} is not an NFS export the operator allows",
            nfs.server, nfs.path
        ));
    }
    out
}

/// Puts the violations on the policy: `Ready=False/NotAllowed`, phase Error.
pub fn apply(computed: &mut crate::status::Computed, violations: &[String]) {
    computed.status.phase = Some(crate::api::Phase::Error);
    for c in computed.conditions.iter_mut() {
        if c.type_ == crate::status::condition::READY {
            c.status = false;
            c.reason = "NotAllowed".into();
            c.message = format!("nothing runs: {}", violations.join("; "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(job: serde_json::Value, nfs: Option<(&str, &str)>) -> BackupPolicySpec {
        let destination = match nfs {
            Some((server, path)) => json!({"nfs": {"server": server, "path": path},
                                           "repositoryPasswordSecretRef": {"name": "pw"}}),
            None => json!({"s3": {"endpoint": "http://s3", "bucket": "bkt",
                                  "credentialsSecretRef": {"name": "c"}},
                           "repositoryPasswordSecretRef": {"name": "pw"}}),
        };
        serde_json::from_value(json!({
            "targets": {"names": ["a"]}, "schedule": "@daily",
            "destination": destination, "job": job,
        }))
        .expect("spec")
    }

    #[test]
    fn mover_images_come_from_the_operator_or_its_allow_list() {
        let g = Guardrails::from_flags(" registry.example.com/mover:2 ,", "");
        assert_eq!(g.allowed_mover_images, ["registry.example.com/mover:2"]);
        assert!(violations(&spec(json!({}), None), "op:1", &g).is_empty());
        let own = spec(json!({"moverImage": "op:1"}), None);
        assert!(violations(&own, "op:1", &g).is_empty());
        let listed = spec(json!({"moverImage": "registry.example.com/mover:2"}), None);
        assert!(violations(&listed, "op:1", &g).is_empty());
        let foreign = spec(json!({"moverImage": "evil.example.com/x:1"}), None);
        let v = violations(&foreign, "op:1", &g);
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("spec.job.moverImage"), "{v:?}");
        // No allow-list: only the operator's image.
        assert_eq!(
            violations(&foreign, "op:1", &Guardrails::default()).len(),
            1
        );
    }

    #[test]
    fn nfs_exports_only_from_the_admins_list_when_it_is_set() {
        let any = Guardrails::default();
        assert!(violations(&spec(json!({}), Some(("nfs1", "/x"))), "op", &any).is_empty());
        let g = Guardrails::from_flags("", "nfs1:/exports/backups,10.0.0.5:/b");
        assert_eq!(g.nfs_exports.len(), 2);
        for (server, path) in [
            ("nfs1", "/exports/backups"),
            ("nfs1", "/exports/backups/team-a/"),
            ("10.0.0.5", "/b"),
        ] {
            assert!(
                violations(&spec(json!({}), Some((server, path))), "op", &g).is_empty(),
                "{server}:{path}"
            );
        }
        for (server, path) in [
            ("nfs1", "/exports/backups-other"),
            ("nfs1", "/exports"),
            ("nfs2", "/exports/backups"),
            ("10.0.0.5", "/"),
        ] {
            let v = violations(&spec(json!({}), Some((server, path))), "op", &g);
            assert!(
                v.len() == 1 && v[0].contains("spec.destination.nfs"),
                "{server}:{path}: {v:?}"
            );
        }
    }
}
