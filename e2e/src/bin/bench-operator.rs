//! `make bench-operator`: how fast and how lean the backup operator is on a
//! real API server. Prints `key=value` lines:
//! `pvcs`, `seconds_policy_to_all_cronjobs`, `writes_on_noop_resync`,
//! `policies`, `policies_pvcs`, `seconds_policies_to_all_active`, `operator_peak_rss_mib`.
//!
//! Runs the operator binary as a child process (the deployed one, if any, is
//! scaled to 0 meanwhile and scaled back afterwards). PVCs use a storage class
//! nobody provisions, so they stay Pending: the operator does not need them bound.

use anyhow::{Context, Result, bail};
use backup_operator::api::{BackupPolicy, BackupPolicySpec, Phase};
use clap::Parser;
use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// PVCs selected by the single policy of the first phase.
    #[arg(long, default_value_t = 100)]
    pvcs: usize,
    /// Policies of the second phase.
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// PVCs of the second phase (spread over 10 namespaces).
    #[arg(long, default_value_t = 10_000)]
    policies_pvcs: usize,
    /// The operator binary.
    #[arg(long, default_value = "target/release/backup-operator")]
    operator: PathBuf,
    /// Resync period given to the operator (the no-op resync is measured over two).
    #[arg(long, default_value_t = 10)]
    resync_seconds: u64,
}

const SPACES: usize = 10;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cluster = e2e::cluster().await?;
    let client = cluster.client.clone();
    let deploy: Api<Deployment> = Api::namespaced(client.clone(), "backup-operator-system");
    let deployed = deploy
        .get_opt("backup-operator-controller-manager")
        .await
        .ok()
        .flatten();
    let prior_replicas = deployed
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas);
    if deployed.is_some() {
        scale(&deploy, 0).await?;
    }
    let mut child = start_operator(&args, &cluster)?;
    let result = run(&args, &client, child.id()).await;
    // Stop exactly the child we started.
    let _ = child.kill();
    let _ = child.wait();
    if let Some(r) = prior_replicas {
        scale(&deploy, r).await?;
    }
    cleanup(&client).await;
    result
}

async fn scale(api: &Api<Deployment>, replicas: i32) -> Result<()> {
    api.patch(
        "backup-operator-controller-manager",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
    )
    .await
    .context("scaling the deployed operator")?;
    Ok(())
}

fn start_operator(args: &Args, cluster: &e2e::Cluster) -> Result<Child> {
    if !args.operator.is_file() {
        bail!(
            "{} not found: build it with cargo build --release -p backup-operator",
            args.operator.display()
        );
    }
    let log = std::fs::File::create(std::env::temp_dir().join("bench-operator.log"))?;
    let mut cmd = Command::new(&args.operator);
    cmd.args([
        "run",
        "--metrics-addr",
        "127.0.0.1:18090",
        "--resync-seconds",
        &args.resync_seconds.to_string(),
    ])
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(log);
    if let Some(kc) = &cluster.kubeconfig {
        cmd.env("KUBECONFIG", kc);
    }
    cmd.spawn().context("starting the operator")
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn labels(pairs: &[(&str, String)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

async fn namespace(client: &kube::Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: labels(&[("bench.kube-backup/operator", "true".into())]),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), name);
    let pw = Secret {
        metadata: ObjectMeta {
            name: Some("pw".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([(
            "password".to_string(),
            "bench".to_string(),
        )])),
        ..Default::default()
    };
    // The default ServiceAccount is not needed: no pod runs.
    for _ in 0..50 {
        match secrets.create(&PostParams::default(), &pw).await {
            Ok(_) => return Ok(()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    bail!("creating Secret in {name}")
}

async fn create_pvcs(client: &kube::Client, ns: &str, names: Vec<(String, String)>) -> Result<()> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let results: Vec<Result<()>> = stream::iter(names)
        .map(|(name, group)| {
            let api = api.clone();
            async move {
                let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "labels": {"app": "bench", "group": group}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "bench-unprovisioned",
                             "resources": {"requests": {"storage": "1Gi"}}}
                }))?;
                api.create(&PostParams::default(), &pvc).await.with_context(|| format!("creating PVC {name}"))?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect()
}

fn spec(selector: serde_json::Value) -> Result<BackupPolicySpec> {
    Ok(serde_json::from_value(serde_json::json!({
        "targets": {"selector": {"matchLabels": selector}},
        "schedule": "0 3 * * *",
        "destination": {"nfs": {"server": "nfs.invalid", "path": "/backups"}, "repositoryPasswordSecretRef": {"name": "pw"}}
    }))?)
}

async fn versions(client: &kube::Client, ns: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let p: Api<BackupPolicy> = Api::namespaced(client.clone(), ns);
    for o in p.list(&ListParams::default()).await?.items {
        out.insert(
            format!("bp/{}", o.metadata.name.unwrap_or_default()),
            o.metadata.resource_version.unwrap_or_default(),
        );
    }
    let c: Api<CronJob> = Api::namespaced(client.clone(), ns);
    for o in c.list(&ListParams::default()).await?.items {
        out.insert(
            format!("cj/{}", o.metadata.name.unwrap_or_default()),
            o.metadata.resource_version.unwrap_or_default(),
        );
    }
    Ok(out)
}

async fn run(args: &Args, client: &kube::Client, pid: u32) -> Result<()> {
    // Phase 1: one policy over N PVCs.
    let ns = "bench-op-single";
    namespace(client, ns).await?;
    create_pvcs(
        client,
        ns,
        (0..args.pvcs)
            .map(|i| (format!("pvc-{i}"), "all".to_string()))
            .collect(),
    )
    .await?;
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), ns);
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    policies
        .create(
            &PostParams::default(),
            &BackupPolicy::new("all", spec(serde_json::json!({"app": "bench"}))?),
        )
        .await?;
    loop {
        if cronjobs
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len()
            >= args.pvcs
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("CronJobs did not appear within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("pvcs={}", args.pvcs);
    println!(
        "seconds_policy_to_all_cronjobs={:.2}",
        start.elapsed().as_secs_f64()
    );

    // Let status settle, then count writes across two resync periods.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = versions(client, ns).await?;
    tokio::time::sleep(Duration::from_secs(args.resync_seconds * 2 + 3)).await;
    let after = versions(client, ns).await?;
    let writes = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .count();
    println!("writes_on_noop_resync={writes}");

    // Phase 2: many policies over many PVCs in 10 namespaces.
    let per_ns_pvcs = args.policies_pvcs / SPACES;
    let per_ns_policies = (args.policies / SPACES).max(1);
    for s in 0..SPACES {
        let ns = format!("bench-op-many-{s}");
        namespace(client, &ns).await?;
        let names = (0..per_ns_pvcs)
            .map(|i| (format!("pvc-{i}"), format!("g{}", i % per_ns_policies)))
            .collect();
        create_pvcs(client, &ns, names).await?;
    }
    let start = Instant::now();
    for s in 0..SPACES {
        let api: Api<BackupPolicy> = Api::namespaced(client.clone(), &format!("bench-op-many-{s}"));
        let results: Vec<Result<()>> = stream::iter(0..per_ns_policies)
            .map(|g| {
                let api = api.clone();
                async move {
                    let p = BackupPolicy::new(
                        &format!("p-{g}"),
                        spec(serde_json::json!({"group": format!("g{g}")}))?,
                    );
                    api.create(&PostParams::default(), &p).await?;
                    Ok(())
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        results.into_iter().collect::<Result<()>>()?;
    }
    let all: Api<BackupPolicy> = Api::all(client.clone());
    let total = per_ns_policies * SPACES;
    loop {
        let list = all.list(&ListParams::default().labels("")).await?;
        let active = list
            .items
            .iter()
            .filter(|p| {
                p.metadata
                    .namespace
                    .as_deref()
                    .is_some_and(|n| n.starts_with("bench-op-many-"))
            })
            .filter(|p| p.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active))
            .count();
        if active >= total {
            break;
        }
        if start.elapsed() > Duration::from_secs(1800) {
            bail!("only {active}/{total} policies Active after 1800 s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("policies={total}");
    println!("policies_pvcs={}", per_ns_pvcs * SPACES);
    println!(
        "seconds_policies_to_all_active={:.2}",
        start.elapsed().as_secs_f64()
    );
    println!("operator_peak_rss_mib={:.1}", peak_rss_mib(pid));
    Ok(())
}

async fn cleanup(client: &kube::Client) {
    let api: Api<Namespace> = Api::all(client.clone());
    if let Ok(list) = api
        .list(&ListParams::default().labels("bench.kube-backup/operator=true"))
        .await
    {
        for ns in list.items {
            if let Some(n) = ns.metadata.name {
                let _ = api.delete(&n, &DeleteParams::background()).await;
            }
        }
    }
}
