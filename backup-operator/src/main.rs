//! `backup-operator`: runs the operator, or prints/writes its CRDs.

use anyhow::Context as _;
use backup_operator::api::{BackupPolicy, POLICY_LABEL, RESTORE_LABEL, Restore};
use backup_operator::handlers::{self, Settings};
use backup_operator::metrics::BackupMetrics;
use clap::{Parser, Subcommand};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use operator_framework::{Controller, LeaderElection, Operator, OperatorConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "Backs up Kubernetes PVCs on a schedule to S3, NFS or CSI snapshots"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (the default).
    Run(RunArgs),
    /// Print the CRDs as YAML (`crd` works too).
    #[command(alias = "crd")]
    Crds,
    /// Write the CRDs into directories (e.g. `crds/` and `config/crd/bases/`).
    Manifests {
        /// Output directories.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

#[derive(Parser)]
struct RunArgs {
    /// Image holding `/backup-mover`, used by backup and restore Jobs.
    #[arg(long, env = "BACKUP_MOVER_IMAGE", default_value = backup_operator::DEFAULT_MOVER_IMAGE)]
    mover_image: String,
    /// Other mover images policies may name in `spec.job.moverImage`
    /// (comma-separated; empty: only `--mover-image`).
    #[arg(long, env = "ALLOWED_MOVER_IMAGES", default_value = "")]
    allowed_mover_images: String,
    /// NFS exports policies may use, `server:/path` (comma-separated, each
    /// with its subdirectories; empty: any).
    #[arg(long, env = "NFS_EXPORTS", default_value = "")]
    nfs_exports: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader on a Lease so several replicas can run.
    #[arg(long, env = "LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "backup-operator-system")]
    lease_namespace: String,
    /// Objects handled at once.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 16)]
    max_in_flight: usize,
    /// Seconds between periodic re-checks of every object.
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// Seconds between catalog listings of every policy's repositories.
    #[arg(long, env = "CATALOG_INTERVAL_SECONDS", default_value_t = 600)]
    catalog_interval_seconds: u64,
    /// This cluster's identity in the repositories' owner markers (forget
    /// and prune run only in repositories this cluster owns); default: the
    /// uid of the kube-system Namespace.
    #[arg(long, env = "CLUSTER_ID", default_value = "")]
    cluster_id: String,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crds) => {
            for (_, yaml) in backup_operator::manifests::crds()? {
                println!("---\n{yaml}");
            }
            Ok(())
        }
        Some(Command::Manifests { dirs }) => {
            for dir in dirs {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                for (name, yaml) in backup_operator::manifests::crds()? {
                    let path = dir.join(name);
                    std::fs::write(&path, yaml)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
            }
            Ok(())
        }
        Some(Command::Run(args)) => run(args).await,
        None => run(RunArgs::parse_from(["run"])).await,
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    // Colour codes only on a terminal: pod logs and CI logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    // The workspace also builds the mover, whose S3 stack enables rustls'
    // aws-lc-rs provider next to kube's ring: choose one explicitly.
    operator_framework::install_crypto_provider();
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (is KUBECONFIG set?)")?;
    let settings = Arc::new(Settings {
        mover_image: args.mover_image.clone(),
        catalog_interval: Duration::from_secs(args.catalog_interval_seconds.max(30)),
        guardrails: backup_operator::guardrails::Guardrails::from_flags(
            &args.allowed_mover_images,
            &args.nfs_exports,
        ),
        cluster_id: backup_operator::maintenance::owner::resolve(&client, &args.cluster_id).await?,
    });
    let backup_metrics = Arc::new(BackupMetrics::default());
    handlers::start_pvc_cache(client.clone());
    let leader_election = args.leader_elect.then(|| LeaderElection {
        lease_name: "backup-operator-leader".into(),
        lease_namespace: args.lease_namespace.clone(),
        identity: std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("backup-operator-{}", std::process::id())),
    });
    let config = OperatorConfig {
        max_in_flight: args.max_in_flight,
        metrics_addr: Some(args.metrics_addr),
        leader_election,
        resync: Duration::from_secs(args.resync_seconds),
        ..Default::default()
    };

    let policies = Controller::new(
        Api::<BackupPolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .index(handlers::POLICIES_BY_NAMESPACE, handlers::policy_namespace)
    .handler(handlers::policy::reconcile())
    .handler(handlers::policy::schedule_changed())
    .handler(handlers::policy::snapshot_tick())
    .handler(handlers::policy::catalog_tick())
    .handler(handlers::policy::job_tick());
    let by_namespace = policies
        .index_reader::<String, String>(handlers::POLICIES_BY_NAMESPACE)
        .context("the policies index")?;
    let policies = policies
        .owns::<CronJob>(Api::all(client.clone()))
        .watches::<Job, _>(Api::all(client.clone()), |job: &Job| {
            let ns = job.namespace().unwrap_or_default();
            job.labels()
                .get(POLICY_LABEL)
                .map(|p| ObjectRef::new(p).within(&ns))
                .into_iter()
                .collect()
        })
        // PVCs matter by name and labels only: a metadata watch.
        .watches_metadata::<PersistentVolumeClaim, _>(
            Api::all(client.clone()),
            move |pvc: &PartialObjectMeta<PersistentVolumeClaim>| {
                let ns = pvc.namespace().unwrap_or_default();
                by_namespace
                    .get(&ns)
                    .into_iter()
                    .map(|p| ObjectRef::new(&p).within(&ns))
                    .collect()
            },
        );
    let restores = Controller::new(
        Api::<Restore>::all(client.clone()),
        watcher::Config::default(),
    )
    .handler(handlers::restore::reconcile())
    .handler(handlers::restore::restore_tick())
    .watches::<Job, _>(Api::all(client.clone()), |job: &Job| {
        let ns = job.namespace().unwrap_or_default();
        job.labels()
            .get(RESTORE_LABEL)
            .map(|r| ObjectRef::new(r).within(&ns))
            .into_iter()
            .collect()
    });

    tracing::info!(mover_image = %args.mover_image, cluster_id = %settings.cluster_id, metrics = %args.metrics_addr, "starting backup-operator");
    let operator = Operator::new(client, "backup.backup.example.com")
        .config(config)
        .data(settings)
        .data(backup_metrics.clone())
        .controller(policies)
        .controller(restores);
    operator
        .metrics()
        .add_collector(move |out| backup_metrics.render(out));
    operator.run().await?;
    Ok(())
}
