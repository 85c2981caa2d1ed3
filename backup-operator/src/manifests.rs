//! Generated manifests: the CRD YAML in `crds/` comes from here.

use crate::api::{Backup, BackupPolicy, Restore};
use kube::CustomResourceExt;

/// Every CRD of the operator as (file name, YAML).
pub fn crds() -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for crd in [BackupPolicy::crd(), Restore::crd(), Backup::crd()] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = serde_saphyr::to_string(&crd)?;
        out.push((
            format!(
                "{}_{}.yaml",
                crate::api::GROUP,
                name.split('.').next().unwrap_or(&name)
            ),
            yaml,
        ));
    }
    Ok(out)
}
