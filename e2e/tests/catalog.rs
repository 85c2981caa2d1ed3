//! The repository is the catalog: every backup is listed as a `Backup`
//! object and in a bounded `status.storedBackups`, also on a new "cluster"
//! (the namespace deleted and made again), restores resolve from it, and
//! partial backups are visible.

mod support;

use anyhow::{Context as _, Result, bail};
use backup_operator::api::{Backup, BackupPolicy, RestorePhase};
use e2e::{TestNamespace, checksum_pvc, manifest_of, wait_for};
use k8s_openapi::api::core::v1::{Event, Namespace, PersistentVolumeClaim};
use kube::Api;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;

const PASSWORD: &str = "e2e-catalog-password";
const NEVER_SOON: &str = "0 0 1 1 *";

async fn setup(prefix: &str) -> Result<(e2e::Cluster, TestNamespace, S3Fixture)> {
    let cluster = e2e::cluster().await?;
    deployed_operator(&cluster).await?;
    let ns = cluster.namespace(prefix).await?;
    let s3 = s3_fixture(&cluster, &ns, PASSWORD).await?;
    Ok((cluster, ns, s3))
}

async fn backups(ns: &TestNamespace, policy: &str) -> Result<Vec<Backup>> {
    let api: Api<Backup> = ns.api();
    Ok(api
        .list(&ListParams::default().labels(&format!("backup.backup.example.com/policy={policy}")))
        .await?
        .items)
}

fn count_of(p: &BackupPolicy, pvc: &str) -> u32 {
    p.status
        .as_ref()
        .and_then(|s| s.backup_counts.iter().find(|c| c.pvc_name == pvc))
        .map_or(0, |c| c.count)
}

/// A labelled PVC of `size` holding `files`.
async fn labelled_pvc(
    cluster: &e2e::Cluster,
    ns: &TestNamespace,
    name: &str,
    size: &str,
    labels: &[(&str, &str)],
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    e2e::create_pvc(ns, name, size, None).await?;
    let api: Api<PersistentVolumeClaim> = ns.api();
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": labels}})),
    )
    .await?;
    e2e::wait_pvc_bound(ns, name, Duration::from_secs(60)).await?;
    e2e::fill_pvc(cluster, ns, name, files).await
}

fn version(pvc: &str, v: u32) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        (
            "version.txt".to_string(),
            format!("{pvc} v{v}\n").into_bytes(),
        ),
        (
            "data/blob.bin".to_string(),
            (0..40_000u32).map(|i| (i * (v + 7)) as u8).collect(),
        ),
        ("same.txt".to_string(), b"unchanged\n".to_vec()),
    ])
}

/// Runs one on-demand backup of every PVC and waits until the catalog lists
/// `n` backups of each of `pvcs`.
async fn backup_round(
    ns: &TestNamespace,
    policy: &str,
    value: &str,
    pvcs: &[&str],
    n: u32,
) -> Result<BackupPolicy> {
    run_now(ns, policy, value).await?;
    wait_policy(
        ns,
        policy,
        &format!("{n} backups of {pvcs:?} listed"),
        Duration::from_secs(240),
        |p| pvcs.iter().all(|pvc| count_of(p, pvc) >= n),
    )
    .await
}

async fn recreate_namespace(cluster: &e2e::Cluster, ns: &TestNamespace) -> Result<()> {
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    api.delete(&ns.name, &Default::default()).await?;
    wait_for("the namespace gone", Duration::from_secs(240), || async {
        Ok(api.get_opt(&ns.name).await?.is_none().then_some(()))
    })
    .await?;
    let fresh = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &fresh).await?;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = ns.api();
    wait_for(
        "default ServiceAccount",
        Duration::from_secs(30),
        || async { Ok(sas.get_opt("default").await?.map(|_| ())) },
    )
    .await
}

async fn restore_ok(ns: &TestNamespace, name: &str, spec: serde_json::Value) -> Result<()> {
    let done = restore_and_wait(ns, name, spec).await?;
    let st = done.status.unwrap_or_default();
    if st.phase != Some(RestorePhase::Succeeded) {
        bail!("restore {name} failed: {:?}", st.conditions);
    }
    Ok(())
}

async fn assert_restored_pvc(
    cluster: &e2e::Cluster,
    ns: &TestNamespace,
    pvc: &str,
    files: &BTreeMap<String, Vec<u8>>,
    size: &str,
    labels: &[(&str, &str)],
) -> Result<()> {
    assert_eq!(
        checksum_pvc(cluster, ns, pvc).await?,
        manifest_of(files),
        "data of {pvc}"
    );
    let api: Api<PersistentVolumeClaim> = ns.api();
    let p = api.get(pvc).await?;
    let req = p
        .spec
        .and_then(|s| s.resources)
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned())
        .map(|q| q.0);
    assert_eq!(req.as_deref(), Some(size), "size of {pvc}");
    let have = p.metadata.labels.unwrap_or_default();
    for (k, v) in labels {
        assert_eq!(
            have.get(*k).map(String::as_str),
            Some(*v),
            "label {k} of {pvc}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn disaster_recovery_lists_every_backup_again_and_restores_each_way() -> Result<()> {
    let (cluster, ns, s3) = setup("catalog-dr").await?;
    let db_labels = [("app", "db"), ("tier", "storage")];
    let web_labels = [("app", "web")];
    labelled_pvc(&cluster, &ns, "db", "2Gi", &db_labels, &version("db", 1)).await?;
    labelled_pvc(&cluster, &ns, "web", "1Gi", &web_labels, &version("web", 1)).await?;
    let spec = s3_spec(
        &s3,
        serde_json::json!({"names": ["db", "web"]}),
        NEVER_SOON,
        10,
    );
    create_policy(&ns, "dr", spec.clone()).await?;
    backup_round(&ns, "dr", "1", &["db", "web"], 1).await?;
    for v in 2..=3 {
        e2e::fill_pvc(&cluster, &ns, "db", &version("db", v)).await?;
        e2e::fill_pvc(&cluster, &ns, "web", &version("web", v)).await?;
        backup_round(&ns, "dr", &v.to_string(), &["db", "web"], v).await?;
    }
    let before = wait_for("six Backup objects", Duration::from_secs(120), || async {
        let b = backups(&ns, "dr").await?;
        Ok((b.len() == 6).then_some(b))
    })
    .await?;
    let mut by_pvc: BTreeMap<String, Vec<Backup>> = BTreeMap::new();
    for b in before {
        by_pvc.entry(b.spec.pvc.clone()).or_default().push(b);
    }
    for list in by_pvc.values_mut() {
        list.sort_by(|a, b| a.spec.time.cmp(&b.spec.time));
    }
    let db = &by_pvc["db"];
    let web = &by_pvc["web"];
    assert_eq!(
        db[0].spec.source.as_ref().and_then(|s| s.size.as_deref()),
        Some("2Gi")
    );
    assert_eq!(
        db[0]
            .spec
            .source
            .as_ref()
            .and_then(|s| s.labels.get("app").cloned())
            .as_deref(),
        Some("db")
    );

    // A new cluster: nothing of the namespace is left but the repository.
    recreate_namespace(&cluster, &ns).await?;
    put_secret(
        &ns,
        "s3-creds",
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
    )
    .await?;
    put_secret(&ns, "repo-password", &[("password", PASSWORD)]).await?;
    let mut suspended = spec;
    suspended.suspend = true;
    let started = std::time::Instant::now();
    create_policy(&ns, "dr", suspended).await?;
    let p = wait_policy(
        &ns,
        "dr",
        "every backup listed again",
        Duration::from_secs(120),
        |p| count_of(p, "db") == 3 && count_of(p, "web") == 3 && stored(p).len() == 6,
    )
    .await?;
    let after = wait_for(
        "six Backup objects again",
        Duration::from_secs(120).saturating_sub(started.elapsed()),
        || async {
            let b = backups(&ns, "dr").await?;
            Ok((b.len() == 6).then_some(b))
        },
    )
    .await?;
    let names = |l: &[Backup]| {
        let mut v: Vec<(String, String)> = l
            .iter()
            .map(|b| {
                (
                    b.metadata.name.clone().unwrap_or_default(),
                    b.spec.snapshot_id.clone(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let mut old: Vec<Backup> = by_pvc.values().flatten().cloned().collect();
    old.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    assert_eq!(
        names(&after),
        names(&old),
        "the same backups, by name and snapshot id"
    );
    assert!(stored(&p).iter().all(|b| b.status == "Completed"));

    // By the Backup object's name: db v1.
    restore_ok(
        &ns,
        "by-name",
        serde_json::json!({"policyName": "dr",
        "backupName": db[0].metadata.name, "target": {"pvcName": "db-v1"}}),
    )
    .await?;
    assert_restored_pvc(&cluster, &ns, "db-v1", &version("db", 1), "2Gi", &db_labels).await?;
    // latestOf + before: web as of its second backup.
    restore_ok(
        &ns,
        "by-latest",
        serde_json::json!({"policyName": "dr",
        "latestOf": "web", "before": web[1].spec.time, "target": {"pvcName": "web-v2"}}),
    )
    .await?;
    assert_restored_pvc(
        &cluster,
        &ns,
        "web-v2",
        &version("web", 2),
        "1Gi",
        &web_labels,
    )
    .await?;
    // By snapshot id (short, no sourcePvc): db v2.
    restore_ok(
        &ns,
        "by-id",
        serde_json::json!({"policyName": "dr",
        "snapshotId": db[1].spec.short_id, "target": {"pvcName": "db-v2"}}),
    )
    .await?;
    assert_restored_pvc(&cluster, &ns, "db-v2", &version("db", 2), "2Gi", &db_labels).await?;
    // By the status entry's name: web v3.
    let entry = stored(&p)
        .into_iter()
        .find(|b| b.snapshot_id.as_deref() == Some(web[2].spec.short_id.as_str()))
        .context("web v3 in status")?;
    restore_ok(
        &ns,
        "by-entry",
        serde_json::json!({"policyName": "dr",
        "backupName": entry.name, "target": {"pvcName": "web-v3"}}),
    )
    .await?;
    assert_restored_pvc(
        &cluster,
        &ns,
        "web-v3",
        &version("web", 3),
        "1Gi",
        &web_labels,
    )
    .await?;
    Ok(())
}

/// The mover binary next to the tests (for writing snapshots with `--time`).
fn host_mover() -> Result<std::path::PathBuf> {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    let m = dir.join("debug/backup-mover");
    if !m.is_file() {
        bail!("{} not built: run cargo build -p backup-mover", m.display());
    }
    Ok(m)
}

#[tokio::test]
async fn sixty_backups_of_one_pvc_are_all_objects_and_the_status_stays_bounded() -> Result<()> {
    let (cluster, ns, s3) = setup("catalog-many").await?;
    pvc_with_files(&cluster, &ns, "data", &version("data", 1)).await?;
    create_policy(
        &ns,
        "many",
        s3_spec(
            &s3,
            serde_json::json!({"names": ["data"]}),
            NEVER_SOON,
            1000,
        ),
    )
    .await?;
    backup_round(&ns, "many", "first", &["data"], 1).await?;
    // 60 older backups written straight into the repository by the mover
    // (its `--time` flag), as another cluster of the same policy would have.
    let mover = host_mover()?;
    let src = std::env::temp_dir().join(format!("catalog-many-{}", std::process::id()));
    std::fs::create_dir_all(&src)?;
    let repo = format!("s3:{}/{}/{}/data", s3.endpoint, s3.bucket, ns.name);
    for i in 0..60u32 {
        std::fs::write(src.join("n.txt"), format!("{i}\n"))?;
        let out = std::process::Command::new(&mover)
            .args([
                "backup",
                "--repository",
                &repo,
                "--namespace",
                &ns.name,
                "--policy",
                "many",
                "--pvc",
                "data",
            ])
            .arg("--source")
            .arg(&src)
            .args([
                "--time",
                &format!("2026-01-01T{:02}:{:02}:00Z", i / 60, i % 60),
            ])
            .env("RESTIC_PASSWORD", PASSWORD)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("MOVER_S3_PATH_STYLE", "true")
            .output()
            .context("running backup-mover backup")?;
        if !out.status.success() {
            bail!(
                "host backup {i} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&src);
    let p = backup_round(&ns, "many", "second", &["data"], 62).await?;
    assert_eq!(count_of(&p, "data"), 62);
    let entries = stored(&p);
    assert_eq!(entries.len(), 10, "the newest 10 in status");
    assert!(entries[0].timestamp > entries[9].timestamp, "newest first");
    let objs = wait_for("62 Backup objects", Duration::from_secs(60), || async {
        let b = backups(&ns, "many").await?;
        Ok((b.len() == 62).then_some(b))
    })
    .await?;
    assert!(objs.iter().all(|b| {
        b.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("many-data-") && n.len() <= 63)
    }));
    assert!(objs.iter().all(|b| {
        b.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "BackupPolicy")
    }));
    Ok(())
}

#[tokio::test]
async fn a_partial_backup_is_visible_everywhere() -> Result<()> {
    let (cluster, ns, s3) = setup("catalog-partial").await?;
    pvc_with_files(&cluster, &ns, "busy", &version("busy", 1)).await?;
    // Files renamed all the time: the backup lists some that are gone when
    // it opens them, and leaves them out.
    start_pod(
        &cluster,
        &ns,
        "churn",
        "mkdir -p /data/churn && cd /data/churn && i=0; while [ $i -lt 400 ]; do echo $i > f$i; i=$((i+1)); done; \
         while true; do i=0; while [ $i -lt 400 ]; do mv f$i g$i; i=$((i+1)); done; \
         i=0; while [ $i -lt 400 ]; do mv g$i f$i; i=$((i+1)); done; done",
        "busy",
    )
    .await?;
    create_policy(
        &ns,
        "part",
        s3_spec(&s3, serde_json::json!({"names": ["busy"]}), NEVER_SOON, 50),
    )
    .await?;
    let mut partial = None;
    for attempt in 1..=4u32 {
        let p = backup_round(&ns, "part", &attempt.to_string(), &["busy"], attempt).await?;
        if condition(&p, "BackupPartial").is_some_and(|c| c.0 == "True") {
            partial = Some(p);
            break;
        }
    }
    let p = partial.context("no partial backup in 4 runs")?;
    let (_, reason, message) = condition(&p, "BackupPartial").context("condition")?;
    assert_eq!(reason, "PartialBackup");
    assert!(
        message.contains("PVC busy") && message.contains("churn"),
        "{message}"
    );
    let newest = &stored(&p)[0];
    assert_eq!(newest.status, "Partial");
    let objs = backups(&ns, "part").await?;
    let obj = objs
        .iter()
        .find(|b| {
            newest
                .snapshot_id
                .as_deref()
                .is_some_and(|id| b.spec.snapshot_id.starts_with(id))
        })
        .context("the partial backup's object")?;
    let st = obj.status.clone().unwrap_or_default();
    assert_eq!(st.phase.as_deref(), Some("Partial"));
    assert!(st.partial && st.warning.is_some_and(|w| w.contains("churn")));
    let events: Api<Event> = ns.api();
    let warned = wait_for(
        "a BackupPartial Warning Event",
        Duration::from_secs(60),
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("PartialBackup")
                })
                .then_some(()))
        },
    )
    .await;
    assert!(warned.is_ok(), "no Warning Event with reason PartialBackup");
    if let Some(text) = operator_metrics(&cluster).await? {
        let l = format!("namespace=\"{}\",policy=\"part\",pvc=\"busy\"", ns.name);
        let n = metric_value(
            &text,
            &format!("backup_operator_backups_total{{{l},result=\"partial\"}}"),
        );
        assert!(n.is_some_and(|v| v >= 1.0), "partial counter {n:?}");
    }
    Ok(())
}
