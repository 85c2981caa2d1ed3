//! Proves the test cluster itself: storage binds and keeps data between pods,
//! the CronJob/Job controllers run, the garbage collector deletes children,
//! and pods on the pod network reach the S3 server.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{
    checksum_pvc, cluster, create_bucket, create_pvc, fill_pvc, manifest_of, run_pod, sample_files,
    unique_bucket, wait_for, wait_pvc_bound,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};

#[tokio::test]
async fn pvc_binds_and_data_survives_between_pods() {
    let cluster = cluster().await.expect("a cluster for the e2e tests");
    let ns = cluster.namespace("storage").await.expect("namespace");

    // No storageClassName: the default class must take it.
    create_pvc(&ns, "data", "1Gi", None)
        .await
        .expect("create PVC");
    let pvc = wait_pvc_bound(&ns, "data", Duration::from_secs(60))
        .await
        .expect("PVC binds");
    assert_eq!(
        pvc.spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref()),
        Some("standard"),
        "default StorageClass assigned"
    );

    let files = sample_files();
    fill_pvc(&cluster, &ns, "data", &files)
        .await
        .expect("write files");
    let manifest = checksum_pvc(&cluster, &ns, "data")
        .await
        .expect("read files back");
    assert_eq!(
        manifest,
        manifest_of(&files),
        "same bytes read back by a second pod"
    );

    // Deleting the claim releases and deletes its volume (reclaim Delete).
    let pv_name = pvc.spec.and_then(|s| s.volume_name).expect("volume name");
    let pvcs: Api<PersistentVolumeClaim> = ns.api();
    pvcs.delete("data", &DeleteParams::default())
        .await
        .expect("delete PVC");
    let pvs: Api<PersistentVolume> = Api::all(cluster.client.clone());
    wait_for(
        "PV deleted after its claim",
        Duration::from_secs(60),
        || async { Ok(pvs.get_opt(&pv_name).await?.is_none().then_some(())) },
    )
    .await
    .expect("volume reclaimed");
}

#[tokio::test]
async fn every_minute_cronjob_creates_a_job_that_completes() {
    let cluster = cluster().await.expect("a cluster for the e2e tests");
    let ns = cluster.namespace("cronjob").await.expect("namespace");
    let cj: CronJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "tick"},
        "spec": {
            "schedule": "* * * * *",
            "timeZone": "Etc/UTC",
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {"spec": {"backoffLimit": 0, "template": {"spec":
                e2e::busybox_pod_spec(&cluster, "echo tick")}}}
        }
    }))
    .expect("CronJob JSON");
    let cronjobs: Api<CronJob> = ns.api();
    cronjobs
        .create(&PostParams::default(), &cj)
        .await
        .expect("create CronJob");

    let jobs: Api<Job> = ns.api();
    let job = wait_for(
        "a Job of the CronJob to succeed",
        Duration::from_secs(150),
        || async {
            let list = jobs.list(&ListParams::default()).await?;
            Ok(list.into_iter().find(|j| {
                j.owner_references()
                    .iter()
                    .any(|o| o.kind == "CronJob" && o.name == "tick")
                    && j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) >= 1
            }))
        },
    )
    .await
    .expect("the CronJob controller created a Job and the Job controller ran it");
    assert!(job.name_any().starts_with("tick-"));
}

#[tokio::test]
async fn garbage_collector_deletes_owned_objects() {
    let cluster = cluster().await.expect("a cluster for the e2e tests");
    let ns = cluster.namespace("gc").await.expect("namespace");
    let cms: Api<ConfigMap> = ns.api();
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create owner");
    let child = ConfigMap {
        metadata: ObjectMeta {
            name: Some("child".into()),
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: "owner".into(),
                    uid: owner.uid().expect("owner uid"),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &child)
        .await
        .expect("create child");
    cms.delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    wait_for(
        "the child to be collected",
        Duration::from_secs(60),
        || async { Ok(cms.get_opt("child").await?.is_none().then_some(())) },
    )
    .await
    .expect("garbage collector deleted the child");
}

#[tokio::test]
async fn pods_reach_the_s3_server() {
    let cluster = cluster().await.expect("a cluster for the e2e tests");
    let endpoint = cluster.s3_endpoint().expect("S3 endpoint");
    let bucket = unique_bucket("e2e-reach");
    create_bucket(&endpoint, &bucket)
        .await
        .expect("create bucket from the test process");
    let ns = cluster.namespace("s3").await.expect("namespace");
    let pod = e2e::busybox_pod(
        &cluster,
        "list-buckets",
        &format!("wget -q -O- {endpoint}/"),
        None,
    );
    let out = run_pod(&ns, &pod, Duration::from_secs(60))
        .await
        .expect("pod runs");
    assert!(
        out.succeeded,
        "pod could not reach {endpoint}: {}",
        out.output
    );
    assert!(
        out.output.contains(&bucket),
        "bucket listing from the pod names {bucket}: {}",
        out.output
    );
}
