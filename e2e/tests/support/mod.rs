//! Shared pieces of the backup-operator e2e scenarios: the deployed operator,
//! S3 fixtures, policy builders and waits on policy status.
#![allow(dead_code)]

use anyhow::{Context, Result, bail};
use backup_operator::api::{BackupPolicy, BackupPolicySpec, RUN_NOW_ANNOTATION, StoredBackup};
use e2e::{Cluster, ClusterKind, TestNamespace, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::sync::OnceCell;

pub const OPERATOR_NS: &str = "backup-operator-system";
pub const OPERATOR_DEPLOYMENT: &str = "backup-operator-controller-manager";

/// The repository root (for `make` calls).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `make <args>` in the repository with this cluster's kubeconfig.
pub fn make(cluster: &Cluster, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("make");
    cmd.current_dir(repo_root()).args(args);
    if let Some(kc) = &cluster.kubeconfig {
        cmd.env("KUBECONFIG", kc);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running make {args:?}"))?;
    if !out.status.success() {
        bail!(
            "make {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

static DEPLOYED: OnceCell<()> = OnceCell::const_new();

/// Deploys the operator with `make deploy` (the local cluster uses the
/// `config/local` overlay) once per test binary, and waits until it is available.
pub async fn deployed_operator(cluster: &Cluster) -> Result<()> {
    DEPLOYED
        .get_or_try_init(|| async {
            let img = format!("IMG={}", e2e::operator_image());
            let target = if cluster.kind == ClusterKind::Local {
                "deploy-local"
            } else {
                "deploy"
            };
            make(cluster, &[target, &img])?;
            scale_operator(cluster, 1).await?;
            wait_operator_available(cluster).await
        })
        .await
        .map(|_| ())
}

/// Sets the operator Deployment's replicas.
pub async fn scale_operator(cluster: &Cluster, replicas: i32) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
    api.patch(
        OPERATOR_DEPLOYMENT,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
    )
    .await
    .context("scaling the operator Deployment")?;
    Ok(())
}

/// Waits until the operator Deployment's current spec is rolled out (no old
/// pod left) and a replica is available.
pub async fn wait_operator_available(cluster: &Cluster) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
    wait_for(
        "operator Deployment rolled out and available",
        Duration::from_secs(180),
        || async {
            let d = api.get(OPERATOR_DEPLOYMENT).await?;
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let Some(s) = d.status.as_ref() else {
                return Ok(None);
            };
            let current = s.observed_generation == d.metadata.generation
                && s.updated_replicas.unwrap_or(0) == want
                && s.replicas.unwrap_or(0) == want;
            let available = s.available_replicas.unwrap_or(0) >= 1;
            Ok((current && available).then_some(()))
        },
    )
    .await
}

/// An S3 bucket on moto plus the Secrets a policy needs in `ns`.
pub struct S3Fixture {
    pub endpoint: String,
    pub bucket: String,
}

pub async fn s3_fixture(
    cluster: &Cluster,
    ns: &TestNamespace,
    password: &str,
) -> Result<S3Fixture> {
    let endpoint = cluster.s3_endpoint()?;
    let bucket = e2e::unique_bucket("e2e");
    e2e::create_bucket(&endpoint, &bucket).await?;
    put_secret(
        ns,
        "s3-creds",
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
    )
    .await?;
    put_secret(ns, "repo-password", &[("password", password)]).await?;
    Ok(S3Fixture { endpoint, bucket })
}

/// Creates or replaces a Secret.
pub async fn put_secret(ns: &TestNamespace, name: &str, data: &[(&str, &str)]) -> Result<()> {
    let api: Api<Secret> = ns.api();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    api.patch(
        name,
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(&secret),
    )
    .await
    .with_context(|| format!("applying Secret {name}"))?;
    Ok(())
}

/// A policy spec backing up `targets` to the fixture's bucket.
pub fn s3_spec(
    s3: &S3Fixture,
    targets: serde_json::Value,
    schedule: &str,
    max_backups: u32,
) -> BackupPolicySpec {
    serde_json::from_value(serde_json::json!({
        "targets": targets,
        "schedule": schedule,
        "retention": {"maxBackups": max_backups},
        "destination": {
            "s3": {"endpoint": s3.endpoint, "bucket": s3.bucket, "credentialsSecretRef": {"name": "s3-creds"}},
            "repositoryPasswordSecretRef": {"name": "repo-password"}
        },
        "job": {"backoffLimit": 0, "activeDeadlineSeconds": 600}
    }))
    .expect("a valid policy spec")
}

pub async fn create_policy(
    ns: &TestNamespace,
    name: &str,
    spec: BackupPolicySpec,
) -> Result<BackupPolicy> {
    let api: Api<BackupPolicy> = ns.api();
    api.create(&PostParams::default(), &BackupPolicy::new(name, spec))
        .await
        .with_context(|| format!("creating BackupPolicy {name}"))
}

/// Sets the run-now annotation to `value` (starts one on-demand backup per PVC).
pub async fn run_now(ns: &TestNamespace, policy: &str, value: &str) -> Result<()> {
    let api: Api<BackupPolicy> = ns.api();
    api.patch(
        policy,
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"metadata": {"annotations": {RUN_NOW_ANNOTATION: value}}}),
        ),
    )
    .await
    .context("annotating run-now")?;
    Ok(())
}

/// Waits until `check` holds on the policy, returning it.
pub async fn wait_policy<F>(
    ns: &TestNamespace,
    name: &str,
    what: &str,
    timeout: Duration,
    check: F,
) -> Result<BackupPolicy>
where
    F: Fn(&BackupPolicy) -> bool,
{
    let api: Api<BackupPolicy> = ns.api();
    let res = wait_for(what, timeout, || async {
        let p = api.get(name).await?;
        Ok(check(&p).then_some(p))
    })
    .await;
    if res.is_err()
        && let Ok(p) = api.get(name).await
    {
        eprintln!(
            "policy {name} status at timeout: {}",
            serde_json::to_string_pretty(&p.status).unwrap_or_default()
        );
    }
    res
}

pub fn stored(p: &BackupPolicy) -> Vec<StoredBackup> {
    p.status
        .as_ref()
        .map(|s| s.stored_backups.clone())
        .unwrap_or_default()
}

pub fn condition(p: &BackupPolicy, type_: &str) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Lists snapshots in a PVC's repository with the mover binary from the test
/// host (moto is reachable there too), as the repository's own view.
pub fn repository_snapshots(
    s3: &S3Fixture,
    ns: &str,
    pvc: &str,
    password: &str,
) -> Result<Vec<serde_json::Value>> {
    let mover = repo_root().join("target/debug/backup-mover");
    if !mover.is_file() {
        bail!(
            "{} not built: run cargo build -p backup-mover",
            mover.display()
        );
    }
    let repo = format!("s3:{}/{}/{ns}/{pvc}", s3.endpoint, s3.bucket);
    let out = Command::new(&mover)
        .args(["snapshots", "--repository", &repo, "--json"])
        .env("RESTIC_PASSWORD", password)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .context("running backup-mover snapshots")?;
    if !out.status.success() {
        bail!(
            "backup-mover snapshots failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing snapshots JSON")?;
    let list = v
        .get("snapshots")
        .and_then(|s| s.as_array())
        .cloned()
        .or_else(|| v.as_array().cloned())
        .unwrap_or_default();
    Ok(list)
}

/// Creates a 1Gi PVC in the default class, waits until it is bound and fills
/// it with `files`.
pub async fn pvc_with_files(
    cluster: &Cluster,
    ns: &TestNamespace,
    name: &str,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    e2e::create_pvc(ns, name, "1Gi", None).await?;
    e2e::wait_pvc_bound(ns, name, Duration::from_secs(60)).await?;
    e2e::fill_pvc(cluster, ns, name, files).await
}

/// Creates a `Restore` from `spec` and waits until it has Succeeded or Failed.
pub async fn restore_and_wait(
    ns: &TestNamespace,
    name: &str,
    spec: serde_json::Value,
) -> Result<backup_operator::api::Restore> {
    create_restore(ns, name, spec).await?;
    wait_restore_finished(ns, name).await
}

/// Creates a `Restore` named `name` from `spec`.
pub async fn create_restore(ns: &TestNamespace, name: &str, spec: serde_json::Value) -> Result<()> {
    use backup_operator::api::Restore;
    let api: Api<Restore> = ns.api();
    let r: Restore = serde_json::from_value(serde_json::json!({
        "apiVersion": "backup.backup.example.com/v1alpha1", "kind": "Restore",
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    api.create(&PostParams::default(), &r)
        .await
        .with_context(|| format!("creating Restore {name}"))?;
    Ok(())
}

/// Waits until the `Restore` has Succeeded or Failed and returns it.
pub async fn wait_restore_finished(
    ns: &TestNamespace,
    name: &str,
) -> Result<backup_operator::api::Restore> {
    use backup_operator::api::{Restore, RestorePhase};
    let api: Api<Restore> = ns.api();
    wait_for(
        &format!("Restore {name} to finish"),
        Duration::from_secs(180),
        || async {
            let r = api.get(name).await?;
            let phase = r.status.as_ref().and_then(|s| s.phase);
            Ok(matches!(phase, Some(RestorePhase::Succeeded | RestorePhase::Failed)).then_some(r))
        },
    )
    .await
}

/// Starts a busybox pod running `script` with `pvc` at /data and waits until
/// it is Running.
pub async fn start_pod(
    cluster: &Cluster,
    ns: &TestNamespace,
    name: &str,
    script: &str,
    pvc: &str,
) -> Result<()> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = ns.api();
    pods.create(
        &PostParams::default(),
        &e2e::busybox_pod(cluster, name, script, Some(pvc)),
    )
    .await
    .with_context(|| format!("creating pod {name}"))?;
    wait_for(
        &format!("pod {name} running"),
        Duration::from_secs(60),
        || async {
            let p = pods.get(name).await?;
            Ok((p.status.and_then(|s| s.phase).as_deref() == Some("Running")).then_some(()))
        },
    )
    .await
}

/// Whether the cluster serves `snapshot.storage.k8s.io/v1`.
pub async fn snapshot_api_served(cluster: &Cluster) -> Result<bool> {
    match cluster
        .client
        .list_api_group_resources("snapshot.storage.k8s.io/v1")
        .await
    {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == "volumesnapshots")),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e).context("discovering snapshot.storage.k8s.io/v1"),
    }
}

/// The deployed operator's `/metrics` text, where the test host can reach it:
/// on the local cluster the operator pod uses the host network and serves
/// 127.0.0.1:18080 (config/local). `None` on other clusters.
pub async fn operator_metrics(cluster: &Cluster) -> Result<Option<String>> {
    if cluster.kind != ClusterKind::Local {
        return Ok(None);
    }
    let (status, body) = e2e::http_request("GET", "http://127.0.0.1:18080/metrics", b"").await?;
    if status != 200 {
        bail!("operator /metrics answered {status}");
    }
    Ok(Some(body))
}

/// The value of one series (exact name and label set) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
