//! `bench-framework`: how fast the framework handles many new objects.
//!
//! Creates N ConfigMaps (default 1000) in a fresh namespace, runs an operator
//! with one trivial create handler on them, and prints `key=value` lines:
//!
//! * `objects`
//! * `seconds_to_all_handled`: from the first create request until every
//!   object carries the framework's last-handled annotation
//! * `handled_per_second`
//! * `operator_peak_rss_mib`: peak RSS (VmHWM) of this process, which runs
//!   the operator (and the small object-creating client)
//! * `api_requests_per_object`: HTTP requests of the operator's client
//!   (lists, watches, patches, events) divided by N
//! * `writes_on_noop_resync`: write requests of the operator's client during
//!   a full resync of the handled, unchanged objects (must be 0: otherwise
//!   the benchmark exits with status 1 and says so, after printing the lines)
//!
//! Usage: `cargo run --release -p operator-framework --example bench-framework -- [N]`
//! (or env `BENCH_OBJECTS`). Uses `KUBECONFIG`, else
//! `~/.cache/kube-backup/cluster/kubeconfig`, else the default kubeconfig.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::client::{Body, ClientBuilder};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};
use operator_framework::{Context, Controller, Handler, Operator, OperatorConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PREFIX: &str = "bench.operator-framework.dev";

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    writes: AtomicU64,
}

async fn config() -> anyhow::Result<Config> {
    let path = std::env::var("KUBECONFIG")
        .ok()
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let home = std::env::var("HOME").ok()?;
            let p = std::path::Path::new(&home).join(".cache/kube-backup/cluster/kubeconfig");
            p.exists().then_some(p)
        });
    Ok(match path {
        Some(p) => {
            Config::from_custom_kubeconfig(
                Kubeconfig::read_from(&p)?,
                &KubeConfigOptions::default(),
            )
            .await?
        }
        None => Config::infer().await?,
    })
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var("RUST_LOG").is_ok() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let n: usize = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("BENCH_OBJECTS").ok())
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    let resync = Duration::from_secs(
        std::env::var("BENCH_RESYNC_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let cfg = config().await?;
    operator_framework::install_crypto_provider();
    let plain = Client::try_from(cfg.clone())?;
    plain.apiserver_version().await.map_err(|e| {
        anyhow::anyhow!("Kubernetes API server not reachable ({e}); start the local cluster")
    })?;

    // The operator's client counts its requests.
    let counts = Arc::new(Counts::default());
    let c2 = counts.clone();
    let counting = tower::util::MapRequestLayer::new(move |req: http::Request<Body>| {
        c2.requests.fetch_add(1, Ordering::Relaxed);
        if req.method() != http::Method::GET {
            c2.writes.fetch_add(1, Ordering::Relaxed);
        }
        req
    });
    let op_client = ClientBuilder::try_from(cfg)?.with_layer(&counting).build();

    let sfx = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos()
        % 0xfffff;
    let ns = format!("bench-framework-{sfx:x}");
    let nss: Api<Namespace> = Api::all(plain.clone());
    nss.create(
        &PostParams::default(),
        &Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    let result = run(n, resync, &ns, plain.clone(), op_client, counts).await;
    nss.delete(&ns, &DeleteParams::background()).await?;
    result
}

async fn run(
    n: usize,
    resync: Duration,
    ns: &str,
    plain: Client,
    op_client: Client,
    counts: Arc<Counts>,
) -> anyhow::Result<()> {
    let handler = Handler::on_create("bench", |_ctx: Context<ConfigMap>| async { Ok(()) });
    let op = Operator::new(op_client.clone(), PREFIX)
        .config(OperatorConfig {
            resync,
            ..Default::default()
        })
        .controller(
            Controller::new(
                Api::<ConfigMap>::namespaced(op_client, ns),
                watcher::Config::default().labels("bench=framework"),
            )
            .handler(handler),
        );
    let metrics = op.metrics();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(op.run_until(async move {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let api: Api<ConfigMap> = Api::namespaced(plain, ns);
    let t0 = Instant::now();
    let creates = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(format!("obj-{i:05}")),
                        labels: Some(BTreeMap::from([("bench".into(), "framework".into())])),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([("i".into(), i.to_string())])),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &cm).await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(e)) = creates.into_iter().find(|r| r.is_err()) {
        anyhow::bail!("creating objects failed: {e}");
    }
    let key = format!("{PREFIX}/last-handled-configuration");
    let deadline = Instant::now() + Duration::from_secs(600);
    let seconds = loop {
        if metrics.handler_runs("bench") as usize >= n {
            let list = api
                .list(&ListParams::default().labels("bench=framework"))
                .await?;
            let done = list
                .items
                .iter()
                .filter(|o| o.annotations().contains_key(&key))
                .count();
            if done >= n {
                break t0.elapsed().as_secs_f64();
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not all objects handled within 600s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let requests = counts.requests.load(Ordering::Relaxed);

    // A full resync of handled, unchanged objects must not write.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes_before = counts.writes.load(Ordering::Relaxed);
    let cycles_before = metrics.cycles();
    let deadline = Instant::now() + resync * 3 + Duration::from_secs(30);
    while metrics.cycles() < cycles_before + n as u64 {
        anyhow::ensure!(Instant::now() < deadline, "no full resync observed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let noop_writes = counts.writes.load(Ordering::Relaxed) - writes_before;

    let _ = stop_tx.send(());
    let _ = running.await;
    println!("objects={n}");
    println!("seconds_to_all_handled={seconds:.2}");
    println!("handled_per_second={:.1}", n as f64 / seconds);
    println!("operator_peak_rss_mib={:.1}", peak_rss_mib());
    println!("api_requests_per_object={:.2}", requests as f64 / n as f64);
    println!("writes_on_noop_resync={noop_writes}");
    // A regression, not just a slow number: fail the run (exit code 1).
    anyhow::ensure!(
        noop_writes == 0,
        "FAILED: writes_on_noop_resync={noop_writes}, expected 0: a resync of handled, unchanged objects must not write"
    );
    Ok(())
}
