//! Dynamic hostPath provisioner for the local single-node test cluster (test
//! tooling, run as a host process by `e2e/cluster/cluster-up.sh`).
//!
//! For every Pending PVC of its StorageClass it creates a directory
//! `<dir>/<namespace>-<pvc>-<uid>` and a hostPath PersistentVolume bound to the
//! claim through `claimRef`; the PV controller then binds them. When a PV it
//! provisioned is Released (its claim was deleted) and the reclaim policy is
//! Delete, it removes the directory and the PV.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::{info, warn};

const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

#[derive(Parser, Debug)]
#[command(about = "hostPath volume provisioner for the local test cluster")]
struct Args {
    /// Name of the StorageClass whose claims this provisioner serves.
    #[arg(long, default_value = "standard")]
    class: String,
    /// The `provisioner` field of that StorageClass.
    #[arg(long, default_value = "kube-backup.local/hostpath")]
    provisioner: String,
    /// Directory under which volume directories are created.
    #[arg(long)]
    dir: PathBuf,
    /// Full resync period in seconds (besides watch events).
    #[arg(long, default_value_t = 10)]
    resync_seconds: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    operator_framework::install_crypto_provider();
    let client = Client::try_default()
        .await
        .context("connecting to the cluster")?;
    info!(class = %args.class, dir = %dir.display(), "hostpath-provisioner started");

    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let p = Provisioner {
        client,
        class: args.class,
        provisioner: args.provisioner,
        dir,
    };

    // Any change to a PVC or PV triggers a pass; a pass also runs periodically.
    let pvc_events = watcher(pvcs, watcher::Config::default()).map(|_| ());
    let pv_events = watcher(pvs, watcher::Config::default()).map(|_| ());
    let mut events = futures::stream::select(pvc_events, pv_events).boxed();
    let mut tick = tokio::time::interval(Duration::from_secs(args.resync_seconds.max(1)));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            ev = events.next() => if ev.is_none() { break },
            _ = tick.tick() => {},
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        // Coalesce a burst of events into one pass.
        while let Ok(Some(())) =
            tokio::time::timeout(Duration::from_millis(50), events.next()).await
        {}
        if let Err(e) = p.reconcile().await {
            warn!("pass failed: {e:#}");
        }
    }
    info!("hostpath-provisioner stopped");
    Ok(())
}

struct Provisioner {
    client: Client,
    class: String,
    provisioner: String,
    dir: PathBuf,
}

impl Provisioner {
    async fn reconcile(&self) -> Result<()> {
        let default_class = self.is_default_class().await;
        let pvcs: Api<PersistentVolumeClaim> = Api::all(self.client.clone());
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let existing: BTreeMap<String, PersistentVolume> = pvs
            .list(&ListParams::default())
            .await?
            .into_iter()
            .map(|pv| (pv.name_any(), pv))
            .collect();

        for pvc in pvcs.list(&ListParams::default()).await? {
            if let Err(e) = self.provision(&pvc, &existing, default_class).await {
                warn!(
                    pvc = %format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any()),
                    "provisioning failed: {e:#}"
                );
            }
        }
        for pv in existing.values() {
            if let Err(e) = self.reclaim(pv).await {
                warn!(pv = %pv.name_any(), "deleting failed: {e:#}");
            }
        }
        Ok(())
    }

    async fn is_default_class(&self) -> bool {
        let classes: Api<StorageClass> = Api::all(self.client.clone());
        match classes.get_opt(&self.class).await {
            Ok(Some(sc)) => sc
                .annotations()
                .get("storageclass.kubernetes.io/is-default-class")
                .is_some_and(|v| v == "true"),
            _ => false,
        }
    }

    async fn provision(
        &self,
        pvc: &PersistentVolumeClaim,
        existing: &BTreeMap<String, PersistentVolume>,
        default_class: bool,
    ) -> Result<()> {
        let Some(spec) = pvc.spec.as_ref() else {
            return Ok(());
        };
        let pending = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        let class_matches = match spec.storage_class_name.as_deref() {
            Some(c) => c == self.class,
            None => default_class,
        };
        if !pending
            || !class_matches
            || spec.volume_name.is_some()
            || pvc.metadata.deletion_timestamp.is_some()
        {
            return Ok(());
        }
        let (Some(ns), Some(uid)) = (pvc.namespace(), pvc.uid()) else {
            return Ok(());
        };
        let name = pvc.name_any();
        let pv_name = format!("pvc-{uid}");
        if existing.contains_key(&pv_name) {
            return Ok(());
        }
        let path = self.dir.join(format!("{ns}-{name}-{uid}"));
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        set_mode(&path, 0o777)?;

        let capacity = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage").cloned())
            .unwrap_or_else(|| Quantity("1Gi".into()));
        let pv = PersistentVolume {
            metadata: ObjectMeta {
                name: Some(pv_name.clone()),
                annotations: Some(BTreeMap::from([(
                    ANN_PROVISIONED_BY.to_string(),
                    self.provisioner.clone(),
                )])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some(BTreeMap::from([("storage".to_string(), capacity)])),
                access_modes: spec.access_modes.clone(),
                volume_mode: spec.volume_mode.clone(),
                persistent_volume_reclaim_policy: Some("Delete".into()),
                storage_class_name: Some(
                    spec.storage_class_name
                        .clone()
                        .unwrap_or_else(|| self.class.clone()),
                ),
                host_path: Some(HostPathVolumeSource {
                    path: path.to_string_lossy().into_owned(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                claim_ref: Some(ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("PersistentVolumeClaim".into()),
                    namespace: Some(ns.clone()),
                    name: Some(name.clone()),
                    uid: Some(uid),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        };
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        match pvs.create(&PostParams::default(), &pv).await {
            Ok(_) => {
                info!(pvc = %format!("{ns}/{name}"), pv = %pv_name, path = %path.display(), "provisioned")
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    async fn reclaim(&self, pv: &PersistentVolume) -> Result<()> {
        if pv.annotations().get(ANN_PROVISIONED_BY) != Some(&self.provisioner) {
            return Ok(());
        }
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
        let spec = pv.spec.as_ref();
        let delete_policy = spec
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            .is_none_or(|p| p == "Delete");
        if !matches!(phase, Some("Released") | Some("Failed")) || !delete_policy {
            return Ok(());
        }
        if let Some(path) = spec.and_then(|s| s.host_path.as_ref()).map(|h| &h.path) {
            let path = Path::new(path);
            // Only ever remove directories this provisioner created.
            if path.parent() == Some(self.dir.as_path()) && path.exists() {
                std::fs::remove_dir_all(path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        match pvs.delete(&pv.name_any(), &DeleteParams::default()).await {
            Ok(_) => info!(pv = %pv.name_any(), "deleted released volume"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}
