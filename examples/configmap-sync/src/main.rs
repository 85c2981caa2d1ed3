//! `configmap-sync [run|crd]`: run the operator (default), or print its CRD.
//!
//! Environment: `METRICS_ADDR` (e.g. `0.0.0.0:8080`), `WATCH_NAMESPACE`
//! (default: all), `POD_NAME` + `LEASE_NAMESPACE` (enable leader election),
//! `WEBHOOK_LISTEN` + `WEBHOOK_URL` (serve the validating webhook, e.g.
//! `127.0.0.1:9443` and `https://127.0.0.1:9443`), `RUST_LOG`.

use configmap_sync::{ConfigMapSync, crd_yaml, operator};
use kube::{Api, Client};
use operator_framework::{LeaderElection, OperatorConfig, WebhookConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cmd = std::env::args().nth(1).unwrap_or_else(|| "run".into());
    match cmd.as_str() {
        "crd" => {
            print!("{}", crd_yaml()?);
            Ok(())
        }
        "run" => run().await,
        other => {
            eprintln!("usage: configmap-sync [run|crd] (unknown command `{other}`)");
            std::process::exit(2);
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    operator_framework::install_crypto_provider();
    let client = Client::try_default().await?;
    let api: Api<ConfigMapSync> = match std::env::var("WATCH_NAMESPACE") {
        Ok(ns) if !ns.is_empty() => Api::namespaced(client.clone(), &ns),
        _ => Api::all(client.clone()),
    };
    let metrics_addr = match std::env::var("METRICS_ADDR") {
        Ok(a) if !a.is_empty() => Some(a.parse()?),
        _ => None,
    };
    let leader_election = match (std::env::var("POD_NAME"), std::env::var("LEASE_NAMESPACE")) {
        (Ok(id), Ok(ns)) => Some(LeaderElection::new("configmap-sync", ns, id)),
        _ => None,
    };
    let webhooks = match (
        std::env::var("WEBHOOK_LISTEN"),
        std::env::var("WEBHOOK_URL"),
    ) {
        (Ok(listen), Ok(url)) => Some(WebhookConfig::new(listen.parse()?, url)),
        _ => None,
    };
    operator(
        client,
        api,
        OperatorConfig {
            metrics_addr,
            leader_election,
            webhooks,
            ..Default::default()
        },
    )
    .run()
    .await?;
    Ok(())
}
