//! The operator run as a local process (what `make run` does), against the
//! same cluster: an on-demand backup lands in the policy status. The deployed
//! operator, if any, is scaled to 0 meanwhile so only one acts.

mod support;

use anyhow::{Context, Result, bail};
use e2e::sample_files;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

/// The child operator; killed (exactly this PID) when dropped, also on panic.
struct LocalOperator(Child);

impl Drop for LocalOperator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_local_operator(cluster: &e2e::Cluster) -> Result<LocalOperator> {
    let status = Command::new(env!("CARGO"))
        .current_dir(repo_root())
        .args([
            "build",
            "-q",
            "-p",
            "backup-operator",
            "--bin",
            "backup-operator",
        ])
        .status()
        .context("building backup-operator")?;
    if !status.success() {
        bail!("cargo build -p backup-operator failed");
    }
    let log = std::fs::File::create(std::env::temp_dir().join("e2e-local-operator.log"))?;
    let mut cmd = Command::new(repo_root().join("target/debug/backup-operator"));
    cmd.args([
        "run",
        "--metrics-addr",
        "127.0.0.1:18095",
        "--mover-image",
        &e2e::operator_image(),
    ])
    .stdout(Stdio::null())
    .stderr(log);
    if let Some(kc) = &cluster.kubeconfig {
        cmd.env("KUBECONFIG", kc);
    }
    Ok(LocalOperator(
        cmd.spawn().context("starting the local operator")?,
    ))
}

#[tokio::test]
async fn local_process_operator_records_an_on_demand_backup() -> Result<()> {
    let cluster = e2e::cluster().await?;
    make(&cluster, &["install"])?;
    let deploy: Api<Deployment> = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
    let had_deployment = deploy.get_opt(OPERATOR_DEPLOYMENT).await?.is_some();
    if had_deployment {
        scale_operator(&cluster, 0).await?;
        e2e::wait_for(
            "deployed operator pods gone",
            Duration::from_secs(60),
            || async {
                let d = deploy.get(OPERATOR_DEPLOYMENT).await?;
                Ok((d.status.and_then(|s| s.replicas).unwrap_or(0) == 0).then_some(()))
            },
        )
        .await?;
    }
    let result = async {
        let _op = start_local_operator(&cluster)?;
        let ns = cluster.namespace("local-op").await?;
        let s3 = s3_fixture(&cluster, &ns, "local-pw").await?;
        pvc_with_files(&cluster, &ns, "data", &sample_files()).await?;
        create_policy(
            &ns,
            "local",
            s3_spec(&s3, serde_json::json!({"names": ["data"]}), "0 0 1 1 *", 3),
        )
        .await?;
        run_now(&ns, "local", "go").await?;
        let p = wait_policy(
            &ns,
            "local",
            "backup recorded by the local operator",
            Duration::from_secs(180),
            |p| !stored(p).is_empty(),
        )
        .await?;
        assert!(stored(&p)[0].size > 0);
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if had_deployment {
        scale_operator(&cluster, 1).await?;
    }
    result
}
