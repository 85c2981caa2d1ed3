//! Malformed BackupPolicy and Restore specs are rejected by the real API
//! server (CEL rules of the CRDs), with a message naming the field; valid
//! ones are accepted. Needs no operator: objects are created with
//! server-side dry run, so nothing reacts to them.

use anyhow::{Context, Result, bail};
use backup_operator::api::{BackupPolicy, Restore};
use e2e::{TestNamespace, wait_for};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, ResourceExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::OnceCell;

static CRDS: OnceCell<()> = OnceCell::const_new();

/// Applies the CRDs generated from the Rust types (what `make install`
/// applies) and waits until they are established.
async fn crds_installed(cluster: &e2e::Cluster) -> Result<()> {
    CRDS.get_or_try_init(|| async {
        let api: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
        for crd in [BackupPolicy::crd(), Restore::crd()] {
            let name = crd.name_any();
            api.patch(
                &name,
                &PatchParams::apply("e2e-admission").force(),
                &Patch::Apply(&crd),
            )
            .await
            .with_context(|| format!("applying CRD {name}"))?;
            wait_for(
                &format!("CRD {name} established"),
                Duration::from_secs(30),
                || async {
                    let c = api.get(&name).await?;
                    let established = c
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    Ok(established.then_some(()))
                },
            )
            .await?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .map(|_| ())
}

async fn setup() -> Result<TestNamespace> {
    let cluster = e2e::cluster().await?;
    crds_installed(&cluster).await?;
    cluster.namespace("admission").await
}

fn valid_policy() -> Value {
    json!({
        "targets": {"names": ["data"], "selector": {"matchLabels": {"app": "db-1.x_y"}}},
        "schedule": "0 0 1 1 *",
        "destination": {
            "s3": {"endpoint": "http://127.0.0.1:9000", "bucket": "backups", "prefix": "team/a/",
                   "credentialsSecretRef": {"name": "s3-creds"}},
            "repositoryPasswordSecretRef": {"name": "repo-password"}
        },
        "restore": {"size": "10Gi"},
        "job": {"moverImage": "registry.example.com:5000/team/mover:1.2"}
    })
}

fn valid_restore() -> Value {
    json!({
        "policyName": "nightly",
        "latestOf": "data",
        "target": {"pvcName": "data-restored", "size": "2Gi"}
    })
}

/// A bad spec: what it is, the changes to a valid one, the field the
/// rejection must name.
type Case = (&'static str, Vec<(&'static str, Value)>, &'static str);

/// `base` with the value at each JSON pointer replaced.
fn with(mut base: Value, changes: &[(&str, Value)]) -> Value {
    for (pointer, value) in changes {
        let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
        if let Some(obj) = base.pointer_mut(parent).and_then(Value::as_object_mut) {
            obj.insert(key.to_string(), value.clone());
        }
    }
    base
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

async fn create_policy(ns: &TestNamespace, name: &str, spec: Value) -> Result<(), kube::Error> {
    let api: Api<BackupPolicy> = ns.api();
    let obj: BackupPolicy = serde_json::from_value(json!({
        "apiVersion": "backup.backup.example.com/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": name}, "spec": spec,
    }))
    .map_err(kube::Error::SerdeError)?;
    api.create(&dry_run(), &obj).await.map(|_| ())
}

async fn create_restore(ns: &TestNamespace, name: &str, spec: Value) -> Result<(), kube::Error> {
    let api: Api<Restore> = ns.api();
    let obj: Restore = serde_json::from_value(json!({
        "apiVersion": "backup.backup.example.com/v1alpha1", "kind": "Restore",
        "metadata": {"name": name}, "spec": spec,
    }))
    .map_err(kube::Error::SerdeError)?;
    api.create(&dry_run(), &obj).await.map(|_| ())
}

/// The create failed as invalid (422), and the message names `field`.
fn assert_rejected(what: &str, result: Result<(), kube::Error>, field: &str) -> Result<()> {
    match result {
        Ok(()) => bail!("{what}: accepted, expected a rejection naming {field}"),
        Err(kube::Error::Api(s)) if s.code == 422 => {
            if !s.message.contains(field) {
                bail!(
                    "{what}: rejected, but the message does not name {field}: {}",
                    s.message
                );
            }
            Ok(())
        }
        Err(e) => bail!("{what}: unexpected error {e}"),
    }
}

#[tokio::test]
async fn valid_policy_and_restore_are_accepted() -> Result<()> {
    let ns = setup().await?;
    create_policy(&ns, "valid", valid_policy()).await?;
    let nfs = with(
        valid_policy(),
        &[(
            "/destination",
            json!({"nfs": {"server": "10.0.0.7", "path": "/exports/backups"},
                   "repositoryPasswordSecretRef": {"name": "repo-password"}}),
        )],
    );
    create_policy(&ns, "valid-nfs-ip", nfs.clone()).await?;
    let nfs_host = with(
        nfs,
        &[(
            "/destination/nfs/server",
            json!("nfs-1.storage.example.com"),
        )],
    );
    create_policy(&ns, "valid-nfs-host", nfs_host).await?;
    let digest = format!("localhost/backup-operator@sha256:{}", "a".repeat(64));
    let other = with(
        valid_policy(),
        &[
            (
                "/destination/s3/endpoint",
                json!("https://s3.eu-west-1.amazonaws.com"),
            ),
            ("/job/moverImage", json!(digest)),
            (
                "/targets/selector",
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                            {"key": "app.kubernetes.io/name", "operator": "Exists"}]}),
            ),
        ],
    );
    create_policy(&ns, "valid-other", other).await?;
    create_restore(&ns, "valid", valid_restore()).await?;
    Ok(())
}

#[tokio::test]
async fn malformed_policy_values_are_rejected_naming_the_field() -> Result<()> {
    let ns = setup().await?;
    let nfs = |server: &str| {
        json!({"nfs": {"server": server, "path": "/exports"},
               "repositoryPasswordSecretRef": {"name": "repo-password"}})
    };
    let cases: Vec<Case> = vec![
        (
            "endpoint not a url",
            vec![("/destination/s3/endpoint", json!("not a url"))],
            "spec.destination.s3.endpoint",
        ),
        (
            "endpoint ftp",
            vec![("/destination/s3/endpoint", json!("ftp://x"))],
            "spec.destination.s3.endpoint",
        ),
        (
            "bucket",
            vec![("/destination/s3/bucket", json!("Bad_Bucket!"))],
            "spec.destination.s3.bucket",
        ),
        (
            "prefix ..",
            vec![("/destination/s3/prefix", json!("../../.."))],
            "spec.destination.s3.prefix",
        ),
        (
            "prefix /",
            vec![("/destination/s3/prefix", json!("/abs"))],
            "spec.destination.s3.prefix",
        ),
        (
            "mover image",
            vec![("/job/moverImage", json!("UPPER:::bad"))],
            "spec.job.moverImage",
        ),
        (
            "restore size",
            vec![("/restore/size", json!("abc"))],
            "spec.restore.size",
        ),
        (
            "negative restore size",
            vec![("/restore/size", json!("-1Gi"))],
            "spec.restore.size",
        ),
        (
            "label value",
            vec![("/targets/selector", json!({"matchLabels": {"app": "a b"}}))],
            "spec.targets.selector.matchLabels",
        ),
        (
            "expression value",
            vec![(
                "/targets/selector",
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a b"]}]}),
            )],
            "spec.targets.selector.matchExpressions[0].values[0]",
        ),
        (
            "nfs server",
            vec![("/destination", nfs("h;rm -rf /"))],
            "spec.destination.nfs.server",
        ),
        (
            "pvc name",
            vec![("/targets/names", json!(["Invalid_Name"]))],
            "spec.targets.names",
        ),
        (
            "secret name",
            vec![(
                "/destination/s3/credentialsSecretRef/name",
                json!("Bad Secret"),
            )],
            "spec.destination.s3.credentialsSecretRef.name",
        ),
        // Any other key of a Secret would be sent to the endpoint.
        (
            "access key name",
            vec![(
                "/destination/s3/credentialsSecretRef/accessKeyIdKey",
                json!("password"),
            )],
            "spec.destination.s3.credentialsSecretRef.accessKeyIdKey",
        ),
        (
            "secret key name",
            vec![(
                "/destination/s3/credentialsSecretRef/secretAccessKeyKey",
                json!("token"),
            )],
            "spec.destination.s3.credentialsSecretRef.secretAccessKeyKey",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, changes, field)) in cases.into_iter().enumerate() {
        let spec = with(valid_policy(), &changes);
        let result = create_policy(&ns, &format!("bad-{i}"), spec).await;
        if let Err(e) = assert_rejected(what, result, field) {
            failures.push(format!("{e:#}"));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

#[tokio::test]
async fn malformed_restore_values_are_rejected_naming_the_field() -> Result<()> {
    let ns = setup().await?;
    let cases: Vec<Case> = vec![
        (
            "negative size",
            vec![("/target/size", json!("-1Gi"))],
            "spec.target.size",
        ),
        (
            "size abc",
            vec![("/target/size", json!("abc"))],
            "spec.target.size",
        ),
        (
            "target name",
            vec![("/target/pvcName", json!("Invalid_Name"))],
            "spec.target.pvcName",
        ),
        (
            "latestOf name",
            vec![("/latestOf", json!("UPPER"))],
            "spec.latestOf",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, changes, field)) in cases.into_iter().enumerate() {
        let spec = with(valid_restore(), &changes);
        let result = create_restore(&ns, &format!("bad-{i}"), spec).await;
        if let Err(e) = assert_rejected(what, result, field) {
            failures.push(format!("{e:#}"));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}
