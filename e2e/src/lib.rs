//! End-to-end test harness: finds a cluster, gives each test its own namespace,
//! and has helpers to put known data into PVCs, read it back as a checksum
//! manifest through a pod, wait for conditions, and use the S3 (moto) server.
//!
//! Cluster selection, in this order:
//! 1. the cluster `KUBECONFIG` (or `~/.kube/config`) points at, if it answers;
//! 2. a kind cluster named `kube-backup` if `docker` and `kind` are installed;
//! 3. the local cluster of `make cluster-up` (`~/.cache/kube-backup/cluster`).
//!
//! When none answers, [`cluster`] fails with a message naming `make cluster-up`:
//! tests never skip silently.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, KeyToPath, Namespace, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, LogParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Name of the kind cluster `make kind-up` creates.
pub const KIND_CLUSTER: &str = "kube-backup";
/// The busybox image `cluster-up` builds and loads into the local node.
pub const LOCAL_BUSYBOX_IMAGE: &str = "localhost/kube-backup/busybox:latest";
/// The operator image tag used on the local cluster (`make image-load`).
pub const LOCAL_OPERATOR_IMAGE: &str = "localhost/backup-operator:dev";

/// How the cluster under test was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    /// The local cluster of `make cluster-up`.
    Local,
    /// A kind cluster (machines with Docker).
    Kind,
    /// Some other cluster `KUBECONFIG` points at.
    External,
}

/// The cluster under test.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub config: Config,
    pub kind: ClusterKind,
    /// Path of a kubeconfig file for this cluster (for `kubectl`/`make` calls).
    pub kubeconfig: Option<PathBuf>,
}

/// The local cluster's state directory (`KB_STATE`, default `~/.cache/kube-backup/cluster`).
pub fn local_state_dir() -> PathBuf {
    if let Some(s) = std::env::var_os("KB_STATE") {
        return PathBuf::from(s);
    }
    let cache = std::env::var_os("KB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/kube-backup"));
    cache.join("cluster")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

async fn try_kubeconfig(path: &Path, context: Option<&str>) -> Result<(Client, Config)> {
    let kc = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let opts = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let mut config = Config::from_custom_kubeconfig(kc, &opts).await?;
    config.connect_timeout = Some(Duration::from_secs(3));
    config.read_timeout = Some(Duration::from_secs(30));
    operator_framework::install_crypto_provider();
    let client = Client::try_from(config.clone())?;
    tokio::time::timeout(Duration::from_secs(5), client.apiserver_version())
        .await
        .map_err(|_| anyhow!("timed out"))??;
    Ok((client, config))
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(cmd).is_file()))
}

/// Finds the cluster to test against (see the module docs for the order).
pub async fn cluster() -> Result<Cluster> {
    let local_kc = local_state_dir().join("kubeconfig");
    let mut tried = Vec::new();

    // 1. KUBECONFIG / ~/.kube/config
    let env_kc = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).next())
        .or_else(|| Some(home().join(".kube/config")).filter(|p| p.is_file()));
    if let Some(path) = env_kc {
        match try_kubeconfig(&path, None).await {
            Ok((client, config)) => {
                let local = path == local_kc
                    || config.cluster_url.to_string().contains(&format!(
                        "127.0.0.1:{}",
                        std::env::var("KB_APISERVER_PORT").unwrap_or_else(|_| "16443".into())
                    ));
                let kind = if local {
                    ClusterKind::Local
                } else if config
                    .cluster_url
                    .host()
                    .is_some_and(|h| h == "127.0.0.1" || h == "localhost")
                    && kind_clusters().iter().any(|c| c == KIND_CLUSTER)
                {
                    ClusterKind::Kind
                } else {
                    ClusterKind::External
                };
                return Ok(Cluster {
                    client,
                    config,
                    kind,
                    kubeconfig: Some(path),
                });
            }
            Err(e) => tried.push(format!("KUBECONFIG {}: {e:#}", path.display())),
        }
    }

    // 2. kind
    if on_path("docker") && on_path("kind") {
        if kind_clusters().iter().any(|c| c == KIND_CLUSTER) {
            let out = std::process::Command::new("kind")
                .args(["get", "kubeconfig", "--name", KIND_CLUSTER])
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    let path = std::env::temp_dir().join("kube-backup-kind.kubeconfig");
                    std::fs::write(&path, &o.stdout)?;
                    match try_kubeconfig(&path, None).await {
                        Ok((client, config)) => {
                            return Ok(Cluster {
                                client,
                                config,
                                kind: ClusterKind::Kind,
                                kubeconfig: Some(path),
                            });
                        }
                        Err(e) => tried.push(format!("kind cluster {KIND_CLUSTER}: {e:#}")),
                    }
                }
                _ => tried.push(format!("kind cluster {KIND_CLUSTER}: no kubeconfig")),
            }
        } else {
            tried.push(format!(
                "kind: no cluster named {KIND_CLUSTER} (make kind-up)"
            ));
        }
    }

    // 3. the local cluster
    if local_kc.is_file() {
        match try_kubeconfig(&local_kc, None).await {
            Ok((client, config)) => {
                return Ok(Cluster {
                    client,
                    config,
                    kind: ClusterKind::Local,
                    kubeconfig: Some(local_kc),
                });
            }
            Err(e) => tried.push(format!("local cluster {}: {e:#}", local_kc.display())),
        }
    } else {
        tried.push(format!("local cluster: no {}", local_kc.display()));
    }
    bail!(
        "no Kubernetes cluster is reachable for the e2e tests; start the local one with \
         `make cluster-up` (or `make kind-up` on a machine with Docker, or point KUBECONFIG \
         at a cluster). Tried:\n  - {}",
        tried.join("\n  - ")
    )
}

fn kind_clusters() -> Vec<String> {
    std::process::Command::new("kind")
        .args(["get", "clusters"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl Cluster {
    /// A busybox image the node can run (loaded by `cluster-up` on the local
    /// cluster; pulled from Docker Hub elsewhere). `E2E_BUSYBOX_IMAGE` overrides.
    pub fn busybox_image(&self) -> String {
        if let Ok(img) = std::env::var("E2E_BUSYBOX_IMAGE") {
            return img;
        }
        match self.kind {
            ClusterKind::Local => LOCAL_BUSYBOX_IMAGE.to_string(),
            _ => "busybox:1.36".to_string(),
        }
    }

    /// The S3 endpoint reachable from pods: `E2E_S3_ENDPOINT`, else the moto
    /// server of the local cluster (`<state>/s3-endpoint`).
    pub fn s3_endpoint(&self) -> Result<String> {
        if let Ok(ep) = std::env::var("E2E_S3_ENDPOINT") {
            return Ok(ep.trim_end_matches('/').to_string());
        }
        let file = local_state_dir().join("s3-endpoint");
        let ep = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "no S3 endpoint: set E2E_S3_ENDPOINT or start moto with `make moto-up` ({} missing)",
                file.display()
            )
        })?;
        Ok(ep.trim().trim_end_matches('/').to_string())
    }

    /// Creates a namespace for one test; it is deleted when the fixture drops.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        TestNamespace::create(self, prefix).await
    }
}

/// A namespace of one test, deleted (without waiting) when dropped, also when
/// the test panics. Set `E2E_KEEP_NAMESPACES=1` to keep them for debugging.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
    config: Config,
}

impl TestNamespace {
    async fn create(cluster: &Cluster, prefix: &str) -> Result<Self> {
        let prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let name = format!("e2e-{}-{}", prefix.trim_matches('-'), random_suffix());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    "e2e.kube-backup/test".to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<Namespace> = Api::all(cluster.client.clone());
        api.create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        // Pods need the namespace's default ServiceAccount (made by a controller).
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(cluster.client.clone(), &name);
        wait_for(
            "default ServiceAccount",
            Duration::from_secs(30),
            || async { Ok(sas.get_opt("default").await?.map(|_| ())) },
        )
        .await?;
        Ok(Self {
            name,
            client: cluster.client.clone(),
            config: cluster.config.clone(),
        })
    }

    /// A typed API for namespaced objects in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var("E2E_KEEP_NAMESPACES").is_ok_and(|v| v == "1") {
            eprintln!("keeping namespace {} (E2E_KEEP_NAMESPACES=1)", self.name);
            return;
        }
        // Drop cannot await, and the test's runtime may be single-threaded:
        // delete from a thread with its own runtime and client.
        let name = self.name.clone();
        let config = self.config.clone();
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(client) = Client::try_from(config) else {
                    return;
                };
                let api: Api<Namespace> = Api::all(client);
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    api.delete(&name, &DeleteParams::background()),
                )
                .await;
            });
        });
        let _ = handle.join();
    }
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("{:08x}", h.finish() as u32)
}

/// Polls `check` every 250 ms until it returns `Ok(Some(value))`, and fails
/// after `timeout` naming `what` and the last error seen.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates a PVC (default StorageClass unless `storage_class` is given).
pub async fn create_pvc(
    ns: &TestNamespace,
    name: &str,
    size: &str,
    storage_class: Option<&str>,
) -> Result<PersistentVolumeClaim> {
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage_class.map(str::to_string),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.to_string()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    };
    let api: Api<PersistentVolumeClaim> = ns.api();
    api.create(&PostParams::default(), &pvc)
        .await
        .with_context(|| format!("creating PVC {}/{name}", ns.name))
}

/// Waits until a PVC is Bound and returns it.
pub async fn wait_pvc_bound(
    ns: &TestNamespace,
    name: &str,
    timeout: Duration,
) -> Result<PersistentVolumeClaim> {
    let api: Api<PersistentVolumeClaim> = ns.api();
    wait_for(
        &format!("PVC {}/{name} Bound", ns.name),
        timeout,
        || async {
            let pvc = api.get(name).await?;
            let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            Ok(bound.then_some(pvc))
        },
    )
    .await
}

/// What a finished pod left behind.
#[derive(Debug, Clone)]
pub struct PodOutcome {
    pub succeeded: bool,
    pub exit_code: Option<i32>,
    /// The container's output: its logs, or its termination message when logs
    /// cannot be read.
    pub output: String,
}

/// Creates `pod` and waits until it has Succeeded or Failed.
pub async fn run_pod(ns: &TestNamespace, pod: &Pod, timeout: Duration) -> Result<PodOutcome> {
    let api: Api<Pod> = ns.api();
    let name = pod
        .metadata
        .name
        .clone()
        .ok_or_else(|| anyhow!("pod needs a name"))?;
    api.create(&PostParams::default(), pod)
        .await
        .with_context(|| format!("creating pod {}/{name}", ns.name))?;
    let done = wait_for(
        &format!("pod {}/{name} to finish", ns.name),
        timeout,
        || async {
            let p = api.get(&name).await?;
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(p))
        },
    )
    .await?;
    let succeeded = done.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
    let terminated = done
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone());
    let exit_code = terminated.as_ref().map(|t| t.exit_code);
    let output = match api.logs(&name, &LogParams::default()).await {
        Ok(logs) => logs,
        Err(_) => terminated.and_then(|t| t.message).unwrap_or_default(),
    };
    Ok(PodOutcome {
        succeeded,
        exit_code,
        output,
    })
}

/// A busybox pod (never restarted) running `script` with `sh -c`, the PVC
/// `pvc` mounted at `/data` when given.
pub fn busybox_pod(cluster: &Cluster, name: &str, script: &str, pvc: Option<&str>) -> Pod {
    let mut spec = busybox_pod_spec(cluster, script);
    spec.termination_grace_period_seconds = Some(1);
    if let Some(pvc) = pvc {
        spec.volumes = Some(vec![Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.to_string(),
                read_only: None,
            }),
            ..Default::default()
        }]);
        if let Some(c) = spec.containers.first_mut() {
            c.volume_mounts = Some(vec![VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                ..Default::default()
            }]);
        }
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "e2e.kube-backup/helper".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The script that prints `sha256  ./path` for every file under /data, sorted;
/// also written to the termination message (which holds 4 KiB).
const CHECKSUM_SCRIPT: &str = "cd /data && find . -type f | sort | while read -r f; do sha256sum \"$f\"; done > /tmp/manifest && cat /tmp/manifest && head -c 4000 /tmp/manifest > /dev/termination-log";

/// Writes `files` (relative path -> content) into the PVC through a pod.
/// Content goes through a ConfigMap, so the total must stay under ~900 KiB;
/// use [`fill_pvc_random`] for bulk data.
pub async fn fill_pvc(
    cluster: &Cluster,
    ns: &TestNamespace,
    pvc: &str,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    let cm_name = format!("{pvc}-fill-{}", random_suffix());
    let mut data = BTreeMap::new();
    let mut items = Vec::new();
    for (i, (path, content)) in files.iter().enumerate() {
        let key = format!("f{i}");
        data.insert(key.clone(), ByteString(content.clone()));
        items.push(KeyToPath {
            key,
            path: path.trim_start_matches('/').to_string(),
            mode: None,
        });
    }
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(cm_name.clone()),
            ..Default::default()
        },
        binary_data: Some(data),
        ..Default::default()
    };
    let cms: Api<ConfigMap> = ns.api();
    cms.create(&PostParams::default(), &cm).await?;
    // Copy every file from the ConfigMap volume (following its symlinks).
    let script = "cd /src && find -L . -type f | grep -v '^\\./\\.\\.' | while read -r f; do \
                  mkdir -p \"/data/$(dirname \"$f\")\" && cat \"$f\" > \"/data/$f\" || exit 1; done && sync";
    let mut pod = busybox_pod(cluster, &format!("{pvc}-fill"), script, Some(pvc));
    if let Some(spec) = pod.spec.as_mut() {
        if let Some(vols) = spec.volumes.as_mut() {
            vols.push(Volume {
                name: "src".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: cm_name.clone(),
                    items: Some(items),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        if let Some(c) = spec.containers.first_mut() {
            let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
            mounts.push(VolumeMount {
                name: "src".into(),
                mount_path: "/src".into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    let out = run_pod(ns, &pod, Duration::from_secs(120)).await?;
    let _ = cms.delete(&cm_name, &DeleteParams::default()).await;
    let pods: Api<Pod> = ns.api();
    let _ = pods
        .delete(&format!("{pvc}-fill"), &DeleteParams::background())
        .await;
    if !out.succeeded {
        bail!("filling PVC {pvc} failed: {}", out.output);
    }
    Ok(())
}

/// Writes `count` files of `size` random bytes (`/data/random/file-N`) into the PVC.
pub async fn fill_pvc_random(
    cluster: &Cluster,
    ns: &TestNamespace,
    pvc: &str,
    count: usize,
    size: usize,
) -> Result<()> {
    let script = format!(
        "mkdir -p /data/random && i=0; while [ $i -lt {count} ]; do \
         head -c {size} /dev/urandom > /data/random/file-$i || exit 1; i=$((i+1)); done && sync"
    );
    let name = format!("{pvc}-rnd-{}", random_suffix());
    let out = run_pod(
        ns,
        &busybox_pod(cluster, &name, &script, Some(pvc)),
        Duration::from_secs(300),
    )
    .await?;
    let pods: Api<Pod> = ns.api();
    let _ = pods.delete(&name, &DeleteParams::background()).await;
    if !out.succeeded {
        bail!("writing random data into PVC {pvc} failed: {}", out.output);
    }
    Ok(())
}

/// A checksum manifest: relative path (`./a/b`) -> sha256 hex.
pub type Manifest = BTreeMap<String, String>;

/// Reads every file of the PVC through a pod and returns their sha256 sums.
pub async fn checksum_pvc(cluster: &Cluster, ns: &TestNamespace, pvc: &str) -> Result<Manifest> {
    let name = format!("{pvc}-sum-{}", random_suffix());
    let out = run_pod(
        ns,
        &busybox_pod(cluster, &name, CHECKSUM_SCRIPT, Some(pvc)),
        Duration::from_secs(300),
    )
    .await?;
    let pods: Api<Pod> = ns.api();
    let _ = pods.delete(&name, &DeleteParams::background()).await;
    if !out.succeeded {
        bail!("checksumming PVC {pvc} failed: {}", out.output);
    }
    parse_manifest(&out.output)
}

/// Parses `sha256sum` output lines (`<hex>  <path>`).
pub fn parse_manifest(text: &str) -> Result<Manifest> {
    let mut m = Manifest::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, path) = line
            .split_once("  ")
            .ok_or_else(|| anyhow!("not a sha256sum line: {line:?}"))?;
        if sum.len() != 64 {
            bail!("not a sha256 sum: {line:?}");
        }
        m.insert(path.to_string(), sum.to_string());
    }
    Ok(m)
}

/// The manifest [`checksum_pvc`] will report for a PVC holding exactly `files`.
pub fn manifest_of(files: &BTreeMap<String, Vec<u8>>) -> Manifest {
    use sha2::{Digest, Sha256};
    files
        .iter()
        .map(|(path, content)| {
            let digest = Sha256::digest(content);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            (format!("./{}", path.trim_start_matches('/')), hex)
        })
        .collect()
}

/// A small set of known files (text, binary, nested, empty) for round-trip tests.
pub fn sample_files() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert("hello.txt".to_string(), b"hello, backup\n".to_vec());
    files.insert(
        "nested/dir/binary.bin".to_string(),
        (0..=255u8).cycle().take(70_000).collect(),
    );
    files.insert("nested/empty".to_string(), Vec::new());
    files.insert(
        "unicode-ñame.txt".to_string(),
        "zeit: 12:00 Europe/Berlin\n".as_bytes().to_vec(),
    );
    files
}

/// A minimal HTTP/1.1 request (no TLS) for talking to moto; returns status and body.
pub async fn http_request(method: &str, url: &str, body: &[u8]) -> Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("only http:// URLs are supported: {url}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(hostport),
    )
    .await
    .map_err(|_| anyhow!("connecting to {hostport} timed out"))?
    .with_context(|| format!("connecting to {hostport}"))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut resp))
        .await
        .map_err(|_| anyhow!("reading the response of {method} {url} timed out"))??;
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP response from {url}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Creates a bucket on the S3 endpoint (moto accepts unsigned requests).
pub async fn create_bucket(endpoint: &str, bucket: &str) -> Result<()> {
    let (status, body) = http_request("PUT", &format!("{endpoint}/{bucket}"), b"").await?;
    if !(200..300).contains(&status) {
        bail!("creating bucket {bucket} at {endpoint}: HTTP {status}: {body}");
    }
    Ok(())
}

/// A unique, valid bucket name with the given prefix.
pub fn unique_bucket(prefix: &str) -> String {
    format!("{}-{}", prefix.to_ascii_lowercase(), random_suffix())
}

/// Image of the operator for this cluster: `E2E_OPERATOR_IMAGE`, else `IMG`,
/// else the local default.
pub fn operator_image() -> String {
    std::env::var("E2E_OPERATOR_IMAGE")
        .or_else(|_| std::env::var("IMG"))
        .unwrap_or_else(|_| LOCAL_OPERATOR_IMAGE.to_string())
}

/// A busybox container running `script` with `sh -c`.
pub fn busybox_container(cluster: &Cluster, name: &str, script: &str) -> Container {
    Container {
        name: name.to_string(),
        image: Some(cluster.busybox_image()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["sh".into(), "-c".into(), script.to_string()]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// Shorthand for a pod spec with one busybox container.
pub fn busybox_pod_spec(cluster: &Cluster, script: &str) -> PodSpec {
    PodSpec {
        restart_policy: Some("Never".into()),
        containers: vec![busybox_container(cluster, "main", script)],
        ..Default::default()
    }
}

/// The repository root (for `make` and `cargo` calls).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs `make TARGET VAR=VALUE...` in the repository root against `cluster`
/// (its kubeconfig exported), failing with make's output.
pub async fn make(cluster: &Cluster, target: &str, vars: &[(&str, &str)]) -> Result<String> {
    let mut cmd = tokio::process::Command::new("make");
    cmd.arg("-s").arg(target).current_dir(repo_root());
    for (k, v) in vars {
        cmd.arg(format!("{k}={v}"));
    }
    if let Some(kc) = &cluster.kubeconfig {
        cmd.env("KUBECONFIG", kc);
    }
    let out = cmd
        .output()
        .await
        .with_context(|| format!("running make {target}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("make {target} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// Builds a binary of the workspace (debug) and returns its path.
pub async fn cargo_bin(package: &str, bin: &str) -> Result<PathBuf> {
    let out =
        tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "-q",
                "-p",
                package,
                "--bin",
                bin,
                "--message-format",
                "json",
            ])
            .current_dir(repo_root())
            .output()
            .await
            .with_context(|| format!("cargo build -p {package} --bin {bin}"))?;
    if !out.status.success() {
        bail!(
            "cargo build -p {package} --bin {bin} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == bin)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| anyhow!("cargo built no executable {bin}"))
}

/// A process of the test (e.g. the operator run locally, as `make run` does),
/// killed when dropped. Its output goes to `log`.
pub struct LocalProcess {
    child: tokio::process::Child,
    pub log: PathBuf,
}

impl LocalProcess {
    /// Starts `program args` with `envs` (plus `KUBECONFIG` of the cluster).
    pub fn spawn(
        cluster: &Cluster,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        log_name: &str,
    ) -> Result<Self> {
        let log = std::env::temp_dir().join(format!("e2e-{log_name}-{}.log", random_suffix()));
        let file = std::fs::File::create(&log)?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .envs(envs.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        if let Some(kc) = &cluster.kubeconfig {
            cmd.env("KUBECONFIG", kc);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self { child, log })
    }

    /// The OS process id (None once it has exited and been reaped).
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it has exited (and with which status).
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Kills it (SIGKILL) and waits for it.
    pub async fn kill(&mut self) -> Result<()> {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        Ok(())
    }

    /// The output it wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trip_matches_sha256sum_format() {
        let files = BTreeMap::from([
            ("a.txt".to_string(), b"abc".to_vec()),
            ("d/empty".to_string(), Vec::new()),
        ]);
        let m = manifest_of(&files);
        // sha256("abc") and sha256("") as sha256sum prints them.
        let text = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  ./a.txt\n\
                    e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  ./d/empty\n";
        assert_eq!(parse_manifest(text).expect("parses"), m);
    }

    #[test]
    fn parse_manifest_rejects_garbage() {
        assert!(parse_manifest("not a checksum line").is_err());
        assert!(parse_manifest("abc  ./short-sum").is_err());
        assert!(parse_manifest("\n\n").expect("empty is fine").is_empty());
    }

    #[tokio::test]
    async fn wait_for_returns_value_or_times_out_naming_what() {
        let mut n = 0;
        let v = wait_for("third try", Duration::from_secs(5), || {
            n += 1;
            let n = n;
            async move { Ok((n >= 3).then_some(n)) }
        })
        .await
        .expect("succeeds on the third try");
        assert_eq!(v, 3);
        let err = wait_for::<(), _, _>("never", Duration::from_millis(300), || async {
            Err(anyhow!("still broken"))
        })
        .await
        .expect_err("times out");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("never") && msg.contains("still broken"),
            "{msg}"
        );
    }

    #[test]
    fn bucket_names_are_unique_and_lowercase() {
        let a = unique_bucket("E2E-Test");
        let b = unique_bucket("E2E-Test");
        assert!(a.starts_with("e2e-test-"));
        assert_ne!(a, b);
    }
}
