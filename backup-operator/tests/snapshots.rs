//! `snapshot::*` against a real cluster with the CSI stack (`make cluster-up
//! csi-up`): snapshots on schedule, retention, restore with the same bytes,
//! the `SnapshotThenCopy` copy source, and the named problems.
//!
//! Without a reachable cluster these tests FAIL with a message saying what to
//! start, unless `SKIP_CLUSTER_TESTS=1`. The cluster is the one `KUBECONFIG`
//! names, else `~/.cache/kube-backup/cluster/kubeconfig`.

use std::collections::BTreeMap;
use std::time::Duration;

use backup_operator::api::{BackupPolicy, Restore};
use backup_operator::snapshot::{
    self, CopySourceState, REASON_API_UNAVAILABLE, REASON_CLASS_NOT_FOUND, REASON_DRIVER_MISMATCH,
    REASON_NO_CSI_DRIVER, SnapshotError, SnapshotOutcome,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{
    Container, Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

const CSI_CLASS: &str = "csi-hostpath";
const SNAP_CLASS: &str = "csi-hostpath-snapclass";

fn busybox() -> String {
    std::env::var("E2E_BUSYBOX_IMAGE")
        .unwrap_or_else(|_| "localhost/kube-backup/busybox:latest".into())
}

fn kubeconfig_path() -> std::path::PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/kube-backup/cluster/kubeconfig")
        })
}

/// A client for the test cluster, or `None` when `SKIP_CLUSTER_TESTS=1`.
async fn client(test: &str) -> Option<Client> {
    if std::env::var("SKIP_CLUSTER_TESTS").as_deref() == Ok("1") {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED cluster test `{test}` (SKIP_CLUSTER_TESTS=1)"
        );
        return None;
    }
    // `cargo test --workspace` also builds the mover, whose S3 stack enables
    // rustls' aws-lc-rs provider next to kube's ring: choose one explicitly.
    operator_framework::install_crypto_provider();
    let path = kubeconfig_path();
    let kc = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "no kubeconfig at {} ({e}): start the local cluster with `make cluster-up csi-up`, \
             point KUBECONFIG at a cluster with CSI snapshots, or set SKIP_CLUSTER_TESTS=1",
            path.display()
        )
    });
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("bad kubeconfig {}: {e}", path.display()));
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).unwrap_or_else(|e| panic!("cannot build a client: {e}"));
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => Some(client),
        Ok(Err(e)) => panic!(
            "Kubernetes API server {url} not reachable: {e}. Run `make cluster-up csi-up` or set SKIP_CLUSTER_TESTS=1"
        ),
        Err(_) => panic!(
            "Kubernetes API server {url} did not answer in 10s. Run `make cluster-up csi-up` or set SKIP_CLUSTER_TESTS=1"
        ),
    }
}

/// Fails clearly when the cluster has no snapshot API or no CSI hostpath classes.
async fn require_csi(client: &Client) {
    if let Err(e) = snapshot::api_available(client).await {
        panic!("{e}: run `make csi-up` on the local cluster (or `make kind-csi` on kind)");
    }
    let classes: Api<DynamicObject> =
        Api::all_with(client.clone(), &snapshot::volume_snapshot_class_resource());
    let class = classes
        .get_opt(SNAP_CLASS)
        .await
        .unwrap_or_else(|e| panic!("reading {SNAP_CLASS}: {e}"));
    assert!(
        class.is_some(),
        "VolumeSnapshotClass {SNAP_CLASS} missing: run `make csi-up`"
    );
}

/// A namespace deleted (with everything in it) when dropped.
struct TestNs {
    name: String,
}

impl TestNs {
    async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!(
            "{prefix}-{}",
            Timestamp::now().as_millisecond() % 100_000_000
        );
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        Self { name }
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if std::env::var("KEEP_TEST_NAMESPACES").as_deref() == Ok("1") {
            return;
        }
        let name = self.name.clone();
        // Best effort, on a fresh client: the test's client is bound to the
        // test's runtime, which is blocked here. The namespace's PVCs and
        // VolumeSnapshots go with it.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(kc) = Kubeconfig::read_from(kubeconfig_path()) else {
                    return;
                };
                let Ok(config) =
                    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await
                else {
                    return;
                };
                let Ok(client) = Client::try_from(config) else {
                    return;
                };
                let api: Api<Namespace> = Api::all(client);
                let dp = DeleteParams::background();
                let _ = tokio::time::timeout(Duration::from_secs(10), api.delete(&name, &dp)).await;
            });
        })
        .join();
    }
}

fn pvc(name: &str, class: &str, size: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some(class.into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.into()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// Runs `script` in a busybox pod with `claim` at /data; returns the pod's
/// termination message (what the script wrote to /dev/termination-log).
async fn run_pod(client: &Client, ns: &str, name: &str, claim: &str, script: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            containers: vec![Container {
                name: "c".into(),
                image: Some(busybox()),
                image_pull_policy: Some("IfNotPresent".into()),
                command: Some(vec!["sh".into(), "-c".into(), script.into()]),
                volume_mounts: Some(vec![VolumeMount {
                    name: "d".into(),
                    mount_path: "/data".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "d".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.into(),
                    read_only: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {ns}/{name}: {e}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let p = pods
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading pod {ns}/{name}: {e}"));
        let status = p.status.clone().unwrap_or_default();
        let message = status
            .container_statuses
            .as_ref()
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.message.clone())
            .unwrap_or_default();
        match status.phase.as_deref() {
            Some("Succeeded") => return message,
            Some("Failed") => panic!("pod {ns}/{name} failed: {message} ({status:?})"),
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {ns}/{name} did not finish in 120s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

const WRITE: &str = "head -c 300000 /dev/urandom > /data/blob && echo v1 > /data/version && sync && \
                     sha256sum /data/blob /data/version | cut -d' ' -f1 > /dev/termination-log";
const READ: &str = "sha256sum /data/blob /data/version | cut -d' ' -f1 > /dev/termination-log";

fn policy(
    ns: &str,
    name: &str,
    pvcs: &[&str],
    class: &str,
    max_backups: u32,
    created: Timestamp,
) -> BackupPolicy {
    let mut p = BackupPolicy::new(
        name,
        serde_json::from_value(json!({
            "targets": {"names": pvcs},
            "schedule": "* * * * *",
            "method": "Snapshot",
            "retention": {"maxBackups": max_backups},
            "snapshot": {"volumeSnapshotClassName": class, "readyTimeoutSeconds": 120}
        }))
        .expect("policy spec"),
    );
    p.metadata.namespace = Some(ns.into());
    p.metadata.uid = Some(format!("uid-{name}"));
    p.metadata.creation_timestamp = Some(Time(created));
    p
}

/// Reconciles at `now` until no snapshot is Pending; returns the last outcome.
async fn settle(
    client: &Client,
    p: &BackupPolicy,
    pvcs: &[String],
    now: Timestamp,
) -> SnapshotOutcome {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = snapshot::reconcile_snapshots(client, p, pvcs, now)
            .await
            .expect("reconcile_snapshots");
        assert!(
            out.created.is_empty(),
            "nothing is due at the same time twice: {out:?}"
        );
        if out.stored_backups.iter().all(|b| b.status != "Pending") {
            return out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "snapshots not ready in 60s: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn minute_floor(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second() - t.as_second().rem_euclid(60)).expect("timestamp")
}

#[tokio::test]
async fn snapshots_on_schedule_retention_restore_and_copy_source() {
    let Some(client) = client("snapshots_on_schedule_retention_restore_and_copy_source").await
    else {
        return;
    };
    require_csi(&client).await;
    let ns = TestNs::new(&client, "snap-it").await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    pvcs.create(&PostParams::default(), &pvc("data", CSI_CLASS, "16Mi"))
        .await
        .expect("create PVC");
    let written = run_pod(&client, &ns.name, "writer", "data", WRITE).await;
    assert_eq!(written.lines().count(), 2, "writer output: {written:?}");

    // "Every minute", created 10 minutes before `base`: one run due at base.
    // The runs are simulated in the recent past (so that the ready deadline,
    // measured from creationTimestamp, is never exceeded by a simulated clock).
    let base = minute_floor(Timestamp::now()) - SignedDuration::from_mins(20);
    let p = policy(
        &ns.name,
        "every-minute",
        &["data"],
        SNAP_CLASS,
        2,
        base - SignedDuration::from_mins(10),
    );
    let targets = vec!["data".to_string()];

    let t0 = std::time::Instant::now();
    let first = snapshot::reconcile_snapshots(&client, &p, &targets, base)
        .await
        .expect("first reconcile");
    assert_eq!(
        first.created.len(),
        1,
        "one snapshot for one due run (catch-up, not a burst): {first:?}"
    );
    assert_eq!(
        first.next_run_time,
        Some(base + SignedDuration::from_mins(1))
    );
    assert!(
        first
            .requeue_at
            .is_some_and(|t| t < base + SignedDuration::from_mins(1)),
        "polls while pending: {first:?}"
    );
    let out = settle(&client, &p, &targets, base).await;
    eprintln!(
        "first snapshot ready {:.2}s after create",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(out.stored_backups.len(), 1);
    let b = &out.stored_backups[0];
    assert_eq!((b.status.as_str(), b.pvc_name.as_str()), ("Ready", "data"));
    assert_eq!(b.size, 16 << 20, "size is the restoreSize");
    assert_eq!(b.location, format!("VolumeSnapshot/{}", first.created[0]));
    assert_eq!(out.last_backup_time, Some(base));
    let oldest = first.created[0].clone();

    // Two more runs: 3 ready with maxBackups 2 -> the oldest is deleted.
    let mut names = vec![oldest.clone()];
    for k in 1..=2 {
        let now = base + SignedDuration::from_mins(k);
        let out = snapshot::reconcile_snapshots(&client, &p, &targets, now)
            .await
            .expect("reconcile");
        assert_eq!(out.created.len(), 1, "run {k}: {out:?}");
        names.push(out.created[0].clone());
        settle(&client, &p, &targets, now).await;
    }
    let now = base + SignedDuration::from_mins(2);
    let out = snapshot::reconcile_snapshots(&client, &p, &targets, now)
        .await
        .expect("reconcile");
    let kept: Vec<&str> = out.stored_backups.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        kept,
        [names[2].as_str(), names[1].as_str()],
        "newest two kept, newest first"
    );
    let snaps: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &snapshot::volume_snapshot_resource(),
    );
    let gone_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while snaps
        .get_opt(&oldest)
        .await
        .expect("get snapshot")
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < gone_deadline,
            "retention did not delete {oldest}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Operator "down" for ~18 minutes (until the real now): exactly one catch-up snapshot.
    let later = Timestamp::now();
    let out = snapshot::reconcile_snapshots(&client, &p, &targets, later)
        .await
        .expect("reconcile");
    assert_eq!(
        out.created.len(),
        1,
        "one catch-up run, not a burst: {out:?}"
    );
    let catch_up = settle(&client, &p, &targets, later).await;
    assert_eq!(
        catch_up.stored_backups.len(),
        2,
        "retention keeps two: {catch_up:?}"
    );
    // No burst and no leftovers (a deleted snapshot may linger on its finalizers briefly).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = snaps
            .list(&ListParams::default())
            .await
            .expect("list snapshots");
        if listed.items.len() == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} snapshots left, want 2",
            listed.items.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Restore from the newest snapshot: the same bytes.
    let newest = catch_up.stored_backups[0].name.clone();
    let restore: Restore = serde_json::from_value(json!({
        "apiVersion": "backup.backup.example.com/v1alpha1", "kind": "Restore",
        "metadata": {"name": "from-snap", "namespace": ns.name},
        "spec": {"policyName": "every-minute", "backupName": newest, "target": {"pvcName": "restored"}}
    }))
    .expect("restore");
    let target = snapshot::restore_from_snapshot(&client, &restore, &p, &newest)
        .await
        .expect("restore PVC");
    let ds = target
        .spec
        .as_ref()
        .and_then(|s| s.data_source.clone())
        .expect("dataSource");
    assert_eq!(
        (ds.api_group.as_deref(), ds.kind.as_str(), ds.name.as_str()),
        (
            Some("snapshot.storage.k8s.io"),
            "VolumeSnapshot",
            newest.as_str()
        )
    );
    // Idempotent: a second call returns the same PVC.
    snapshot::restore_from_snapshot(&client, &restore, &p, &newest)
        .await
        .expect("restore again");
    let restored = run_pod(&client, &ns.name, "reader", "restored", READ).await;
    assert_eq!(restored, written, "restored bytes differ");

    // SnapshotThenCopy: a copy source of the live PVC while a pod writes to it.
    run_pod(
        &client,
        &ns.name,
        "writer2",
        "data",
        "echo v2 > /data/version && sync && echo ok > /dev/termination-log",
    )
    .await;
    let mut copy = p.clone();
    copy.spec.method = backup_operator::api::BackupMethod::SnapshotThenCopy;
    // The policy is not an API object here: no uid, so the temporary PVC gets
    // no ownerReference (the garbage collector would delete it at once).
    copy.metadata.uid = None;
    let run_for = base + SignedDuration::from_mins(30);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let setup = snapshot::copy_setup(&client, &copy)
        .await
        .expect("snapshot API and class");
    let (snap, tmp) = loop {
        match snapshot::ensure_copy_source(
            &client,
            &copy,
            &setup,
            "data",
            run_for,
            Timestamp::now(),
        )
        .await
        .expect("copy source")
        {
            CopySourceState::Ready { snapshot, pvc } => break (snapshot, pvc),
            CopySourceState::Pending { .. } => {}
            other => panic!("copy source: {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "copy source not ready in 60s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let copied = run_pod(&client, &ns.name, "copier", &tmp, READ).await;
    let mut lines = copied.lines();
    assert_eq!(
        lines.next(),
        written.lines().next(),
        "blob in the copy source"
    );
    assert_ne!(
        lines.next(),
        written.lines().nth(1),
        "version file is the new one (v2)"
    );
    // The copy-source snapshot is no stored backup.
    let out = snapshot::reconcile_snapshots(&client, &p, &targets, later)
        .await
        .expect("reconcile");
    assert!(
        out.stored_backups.iter().all(|b| b.name != snap),
        "copy source listed as a backup: {out:?}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.delete("copier", &DeleteParams::default())
        .await
        .expect("delete copier pod");
    snapshot::cleanup_copy_source(&client, &copy, &snap, "no-such-job")
        .await
        .expect("cleanup");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pvc_left = pvcs.get_opt(&tmp).await.expect("get tmp pvc").is_some();
        let snap_left = snaps.get_opt(&snap).await.expect("get snapshot").is_some();
        if !pvc_left && !snap_left {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cleanup left pvc={pvc_left} snapshot={snap_left}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn bad_input_gives_named_reasons_and_no_snapshots() {
    let Some(client) = client("bad_input_gives_named_reasons_and_no_snapshots").await else {
        return;
    };
    require_csi(&client).await;
    let ns = TestNs::new(&client, "snap-bad").await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    pvcs.create(&PostParams::default(), &pvc("csi", CSI_CLASS, "8Mi"))
        .await
        .expect("create PVC");
    // The cluster's default class (`standard`, or kind's local-path): no CSI driver.
    let default_class = {
        let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
        let list = classes
            .list(&ListParams::default())
            .await
            .expect("list storage classes");
        list.items
            .into_iter()
            .find(|c| {
                c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
                    .is_some_and(|v| v == "true")
            })
            .and_then(|c| c.metadata.name)
            .expect("a default StorageClass")
    };
    pvcs.create(&PostParams::default(), &pvc("plain", &default_class, "8Mi"))
        .await
        .expect("create PVC");
    let now = minute_floor(Timestamp::now());
    let created = now - SignedDuration::from_mins(5);
    let targets = vec!["csi".to_string(), "plain".to_string()];
    let snaps: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &snapshot::volume_snapshot_resource(),
    );

    // Unknown class: a policy-wide named error.
    let p = policy(
        &ns.name,
        "unknown-class",
        &["csi"],
        "no-such-class",
        3,
        created,
    );
    let err = snapshot::reconcile_snapshots(&client, &p, &targets, now)
        .await
        .expect_err("unknown class");
    assert!(matches!(err, SnapshotError::ClassNotFound(_)), "{err}");
    assert_eq!(err.reason(), REASON_CLASS_NOT_FOUND);

    // A PVC without a CSI driver: NoCSIDriver for it, the CSI PVC goes on.
    let p = policy(&ns.name, "mixed", &["csi", "plain"], SNAP_CLASS, 3, created);
    let out = snapshot::reconcile_snapshots(&client, &p, &targets, now)
        .await
        .expect("reconcile");
    assert_eq!(out.created.len(), 1, "only the CSI PVC: {out:?}");
    let problem = out
        .problems
        .iter()
        .find(|p| p.pvc == "plain")
        .expect("a problem for plain");
    assert_eq!(problem.reason, REASON_NO_CSI_DRIVER, "{problem:?}");
    // Reconciling again at the same time: no retry loop, the same problem.
    let again = snapshot::reconcile_snapshots(&client, &p, &targets, now)
        .await
        .expect("reconcile");
    assert!(again.created.is_empty(), "{again:?}");
    assert!(
        again
            .problems
            .iter()
            .any(|p| p.pvc == "plain" && p.reason == REASON_NO_CSI_DRIVER),
        "the problem stays reported between runs: {again:?}"
    );

    // A class of another driver: SnapshotClassDriverMismatch, nothing created.
    let class_name = format!("{}-other-driver", ns.name);
    let classes: Api<DynamicObject> =
        Api::all_with(client.clone(), &snapshot::volume_snapshot_class_resource());
    let class: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
        "metadata": {"name": class_name}, "driver": "other.csi.example.com", "deletionPolicy": "Delete"
    }))
    .expect("class");
    classes
        .create(&PostParams::default(), &class)
        .await
        .expect("create class");
    let p = policy(&ns.name, "mismatch", &["csi"], &class_name, 3, created);
    let out = snapshot::reconcile_snapshots(&client, &p, &["csi".to_string()], now).await;
    let _ = classes.delete(&class_name, &DeleteParams::default()).await;
    let out = out.expect("reconcile");
    assert!(out.created.is_empty(), "{out:?}");
    assert_eq!(out.problems.len(), 1, "{out:?}");
    assert_eq!(out.problems[0].reason, REASON_DRIVER_MISMATCH, "{out:?}");
    let mismatch: Vec<_> = snaps
        .list(&ListParams::default().labels("backup.backup.example.com/policy=mismatch"))
        .await
        .expect("list")
        .items;
    assert!(mismatch.is_empty(), "no snapshot for a mismatched class");
}

#[tokio::test]
async fn missing_snapshot_api_is_reported_as_unavailable() {
    let Some(client) = client("missing_snapshot_api_is_reported_as_unavailable").await else {
        return;
    };
    // A group no cluster serves stands in for a cluster without the CRDs.
    let err = snapshot::api_available_in(&client, "snapshot.fake.example.com/v1")
        .await
        .expect_err("fake group");
    assert!(matches!(err, SnapshotError::ApiUnavailable(_)), "{err}");
    assert_eq!(err.reason(), REASON_API_UNAVAILABLE);
    assert!(!err.is_transient());
    // On this cluster: either the real API is served, or reconcile says why not.
    if let Err(e) = snapshot::api_available(&client).await {
        assert_eq!(e.reason(), REASON_API_UNAVAILABLE, "{e}");
        let p = policy("default", "no-api", &["x"], SNAP_CLASS, 1, Timestamp::now());
        let err = snapshot::reconcile_snapshots(&client, &p, &["x".to_string()], Timestamp::now())
            .await
            .expect_err("no snapshot API");
        assert_eq!(err.reason(), REASON_API_UNAVAILABLE, "{err}");
    }
}
