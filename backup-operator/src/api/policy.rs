//! `BackupPolicy`: which PVCs to back up, when, where to, and how long to keep it.

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::rules;

/// Desired state of a backup policy.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "backup.backup.example.com",
    version = "v1alpha1",
    kind = "BackupPolicy",
    plural = "backuppolicies",
    shortname = "bp",
    namespaced,
    status = "BackupPolicyStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Last Backup", type_ = "date", json_path = ".status.lastBackupTime"),
    printcolumn(name = "Next Run", type_ = "string", json_path = ".status.nextRunTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.spec.method == 'Snapshot' || has(self.spec.destination)").message("spec.destination is required unless spec.method is Snapshot"),
    validation = Rule::new("self.spec.method == 'Copy' || has(self.spec.snapshot)").message("spec.snapshot (volumeSnapshotClassName) is required for methods Snapshot and SnapshotThenCopy"),
    // The name is a label value on everything made for the policy.
    validation = Rule::new("size(self.metadata.name) <= 63").message("a BackupPolicy name has at most 63 characters (it is used as a label value)")
)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicySpec {
    /// Which PVCs of the policy's namespace to back up.
    pub targets: Targets,
    /// Crontab schedule as a Kubernetes CronJob reads it: 5 fields or `@hourly`,
    /// `@daily`, `@midnight`, `@weekly`, `@monthly`, `@yearly`/`@annually`.
    #[schemars(length(min = 1))]
    pub schedule: String,
    /// IANA time zone the schedule is read in (default: UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Suspend all scheduled backups of this policy.
    #[serde(default)]
    pub suspend: bool,
    /// How the data is captured.
    #[serde(default)]
    pub method: BackupMethod,
    /// How many backups to keep.
    #[serde(default)]
    pub retention: Retention,
    /// Where backups are stored (required for `Copy` and `SnapshotThenCopy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// VolumeSnapshot settings (for `Snapshot` and `SnapshotThenCopy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotSettings>,
    /// Defaults for `Restore` objects that name this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreDefaults>,
    /// Settings of the backup Jobs.
    #[serde(default)]
    pub job: JobSettings,
    /// Paths not backed up, as globs: without `/` a name at any depth
    /// (`*.tmp`, `cache`), with `/` relative to the PVC's root (`var/log/**`).
    /// The volume's `lost+found` is never backed up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub exclude: Vec<String>,
}

/// PVC selection: names and/or a label selector (at least one).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("size(self.names) > 0 || has(self.selector)").message("targets needs names or a selector"))]
#[serde(rename_all = "camelCase")]
pub struct Targets {
    /// PVC names in the policy's namespace.
    #[serde(default)]
    #[schemars(length(max = 1000), inner(length(max = 253)))]
    #[x_kube(validation = rules::dns_names("spec.targets.names"))]
    pub names: Vec<String>,
    /// PVCs whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::label_selector")]
    pub selector: Option<LabelSelector>,
}

/// How a backup captures data.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum BackupMethod {
    /// A mover Job reads the PVC and stores it in a restic repository.
    #[default]
    Copy,
    /// A CSI VolumeSnapshot per PVC per run; no Job runs.
    Snapshot,
    /// Snapshot, back up a temporary PVC made from it, then drop both.
    SnapshotThenCopy,
}

/// Retention per PVC and policy. `keep*` are restic's `forget --keep-*`
/// rules (a backup is kept when any rule keeps it; hour/day/week/month/year
/// buckets are taken in the policy's `timeZone`); `maxBackups` and `maxDays`
/// are caps applied on top: nothing older than `maxDays`, and at most
/// `maxBackups` of what the rules keep. Without any `keep*` rule, the newest
/// `maxBackups` (default 7) are kept. The newest backup is always kept.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// At most this many backups per PVC (default 7 when no `keep*` rule is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_backups: Option<u32>,
    /// Backups older than this many days are removed (unset: no age limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_days: Option<u32>,
    /// Keep the newest N backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the last N hours that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep_hourly: Option<u32>,
    /// Keep the newest backup of each of the last N days that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the last N ISO weeks that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep_monthly: Option<u32>,
    /// Keep the newest backup of each of the last N years that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep_yearly: Option<u32>,
    /// Keep every backup within this span of the newest one, in restic's
    /// syntax: numbers with `y`, `m`, `d`, `h` (e.g. `7d`, `1y6m`, `36h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}[ymdh])+$"), length(max = 32))]
    pub keep_within: Option<String>,
    /// Apply retention also to a repository that another cluster or
    /// namespace wrote (its owner marker names them), e.g. after recovering
    /// onto a new cluster; this cluster is then recorded as the owner. Off,
    /// such a repository gets new backups but nothing is ever deleted from
    /// it, and `RetentionFailed` (reason `ForeignRepository`) says why.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_repository: bool,
}

/// Backups kept when neither `maxBackups` nor a `keep*` rule is set.
pub const DEFAULT_MAX_BACKUPS: u32 = 7;

impl Retention {
    /// Whether any of restic's `keep*` rules is set.
    pub fn has_keep_rules(&self) -> bool {
        [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ]
        .iter()
        .any(Option::is_some)
            || self.keep_within.is_some()
    }

    /// The count cap in effect: `maxBackups`, else 7 unless `keep*` rules
    /// decide alone.
    pub fn max_count(&self) -> Option<u32> {
        self.max_backups
            .or((!self.has_keep_rules()).then_some(DEFAULT_MAX_BACKUPS))
    }

    /// The mover's retention flags for this retention in `time_zone`.
    pub fn mover_args(&self, time_zone: Option<&str>) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                args.extend([flag.to_string(), v]);
            }
        };
        push("--max-count", self.max_count().map(|n| n.to_string()));
        push("--keep-within-days", self.max_days.map(|n| n.to_string()));
        push("--keep-last", self.keep_last.map(|n| n.to_string()));
        push("--keep-hourly", self.keep_hourly.map(|n| n.to_string()));
        push("--keep-daily", self.keep_daily.map(|n| n.to_string()));
        push("--keep-weekly", self.keep_weekly.map(|n| n.to_string()));
        push("--keep-monthly", self.keep_monthly.map(|n| n.to_string()));
        push("--keep-yearly", self.keep_yearly.map(|n| n.to_string()));
        push("--keep-within", self.keep_within.clone());
        if self.has_keep_rules() {
            push("--time-zone", time_zone.map(str::to_string));
        }
        if self.adopt_repository {
            args.push("--adopt".to_string());
        }
        args
    }
}

/// A backup repository location: exactly one of `s3` or `nfs`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.s3) != has(self.nfs)").message("destination needs exactly one of s3 or nfs"))]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// An NFS export, mounted into the backup Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs: Option<NfsDestination>,
    /// Secret key holding the repository encryption password.
    pub repository_password_secret_ref: SecretKeyRef,
}

/// S3 destination.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// Endpoint URL, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://minio:9000`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = rules::http_url("spec.destination.s3.endpoint"))]
    pub endpoint: String,
    /// Bucket name.
    #[schemars(length(min = 3, max = 63))]
    #[x_kube(validation = rules::bucket("spec.destination.s3.bucket"))]
    pub bucket: String,
    /// Key prefix inside the bucket (relative, no `.` or `..` segments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = rules::key_prefix("spec.destination.s3.prefix"))]
    pub prefix: Option<String>,
    /// Region (default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style addressing (MinIO, moto, Ceph). Default true.
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// Secret with the access keys.
    pub credentials_secret_ref: S3CredentialsRef,
}

fn default_true() -> bool {
    true
}

/// Names the Secret and keys that hold S3 credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsRef {
    /// Secret name in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rules::dns_name("spec.destination.s3.credentialsSecretRef.name"))]
    pub name: String,
    /// Key of the access key id: `AWS_ACCESS_KEY_ID`, `accessKeyId` or
    /// `access-key-id` (the value is sent to the endpoint; fixed names keep a
    /// policy from sending any other key of a Secret there).
    #[serde(default = "default_access_key_key")]
    #[x_kube(validation = rules::one_of("spec.destination.s3.credentialsSecretRef.accessKeyIdKey", &["AWS_ACCESS_KEY_ID", "accessKeyId", "access-key-id"]))]
    pub access_key_id_key: String,
    /// Key of the secret access key: `AWS_SECRET_ACCESS_KEY`,
    /// `secretAccessKey` or `secret-access-key`.
    #[serde(default = "default_secret_key_key")]
    #[x_kube(validation = rules::one_of("spec.destination.s3.credentialsSecretRef.secretAccessKeyKey", &["AWS_SECRET_ACCESS_KEY", "secretAccessKey", "secret-access-key"]))]
    pub secret_access_key_key: String,
}

fn default_access_key_key() -> String {
    "AWS_ACCESS_KEY_ID".into()
}
fn default_secret_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

/// One key of one Secret in the policy's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rules::dns_name("spec.destination.repositoryPasswordSecretRef.name"))]
    pub name: String,
    /// Key inside the Secret.
    #[serde(default = "default_password_key")]
    pub key: String,
}

fn default_password_key() -> String {
    "password".into()
}

/// NFS destination.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NfsDestination {
    /// NFS server host name or address.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rules::host("spec.destination.nfs.server"))]
    pub server: String,
    /// Exported path (absolute).
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = rules::absolute_path("spec.destination.nfs.path"))]
    pub path: String,
}

/// VolumeSnapshot settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSettings {
    /// VolumeSnapshotClass to use.
    #[schemars(length(min = 1))]
    pub volume_snapshot_class_name: String,
    /// Seconds a snapshot may take to become ready before it is reported failed.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_seconds: u32,
    /// Keep the intermediate snapshot of `SnapshotThenCopy`.
    #[serde(default)]
    pub keep_snapshot: bool,
}

fn default_ready_timeout() -> u32 {
    600
}

/// Defaults applied to `Restore` objects naming this policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RestoreDefaults {
    /// Storage class of PVCs created by restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = rules::dns_name("spec.restore.storageClassName"))]
    pub storage_class_name: Option<String>,
    /// Size of PVCs created by restores (default: the source PVC's request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = rules::positive_quantity("spec.restore.size"))]
    pub size: Option<String>,
}

/// Settings of the Jobs that run the mover.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobSettings {
    /// Mover image (default: the operator's `--mover-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = rules::image("spec.job.moverImage"))]
    pub mover_image: Option<String>,
    /// Resources of the mover container (default: 100m/128Mi requests, 1Gi limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Pod retries of one backup Job.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: i32,
    /// A backup Job running longer than this is stopped.
    #[serde(default = "default_active_deadline")]
    #[schemars(range(min = 60))]
    pub active_deadline_seconds: i64,
    /// Seconds after a missed schedule time within which a run still starts.
    #[serde(default = "default_starting_deadline")]
    #[schemars(range(min = 10))]
    pub starting_deadline_seconds: i64,
    /// Finished successful Jobs kept per PVC.
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 20))]
    pub successful_jobs_history_limit: i32,
    /// Finished failed Jobs kept per PVC.
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 20))]
    pub failed_jobs_history_limit: i32,
    /// Who the mover runs as.
    #[serde(flatten)]
    pub identity: MoverIdentity,
    /// Node labels mover pods must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of mover pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of mover pods. For a ReadWriteOnce PVC that a running pod
    /// mounts, the operator adds that pod's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// PriorityClass of mover pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = rules::dns_name("spec.job.priorityClassName"))]
    pub priority_class_name: Option<String>,
}

/// The user and groups of mover pods. Movers run as a non-root user unless
/// the cluster admin allows root movers in the namespace (annotation
/// `backup.backup.example.com/privileged-movers: "true"` on the Namespace);
/// there they run as root with only the capabilities they need, unless
/// `runAsUser` names another user.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MoverIdentity {
    /// User id of the mover (default 65532; 0 only where root movers are allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_user: Option<i64>,
    /// Group id of the mover (default: the user id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_group: Option<i64>,
    /// Supplementary group owning the mounted volumes (restores default to the
    /// group id so the mover can write a new volume; backups leave the source
    /// volume's ownership alone unless this is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub fs_group: Option<i64>,
}

fn default_backoff_limit() -> i32 {
    1
}
fn default_active_deadline() -> i64 {
    3600
}
fn default_starting_deadline() -> i64 {
    300
}
fn default_history() -> i32 {
    3
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            mover_image: None,
            resources: None,
            backoff_limit: default_backoff_limit(),
            active_deadline_seconds: default_active_deadline(),
            starting_deadline_seconds: default_starting_deadline(),
            successful_jobs_history_limit: default_history(),
            failed_jobs_history_limit: default_history(),
            identity: MoverIdentity::default(),
            node_selector: None,
            tolerations: None,
            affinity: None,
            priority_class_name: None,
        }
    }
}

/// Observed state of a backup policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicyStatus {
    /// Active, Error or Suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Completion time of the newest successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<Time>,
    /// When the schedule fires next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<Time>,
    /// Backups stored in the destination, newest first per PVC.
    #[serde(default)]
    pub stored_backups: Vec<StoredBackup>,
    /// Standard conditions (`Ready`, `BackupFailed`, ...).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last `run-now` annotation value that was acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_now: Option<String>,
    /// PVCs currently selected by the policy.
    #[serde(default)]
    pub target_pvcs: Vec<String>,
    /// Backups per PVC in the repository (`storedBackups` shows only the
    /// newest few of each; every one is a `Backup` object).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backup_counts: Vec<PvcBackupCount>,
    /// When the newest catalog listing of the repositories started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_catalog_time: Option<Time>,
}

/// How many backups of one PVC the repository holds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PvcBackupCount {
    /// The PVC.
    pub pvc_name: String,
    /// Backups stored.
    pub count: u32,
}

/// Summary phase of a policy.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Backups are scheduled.
    Active,
    /// The policy cannot be acted on; see conditions.
    Error,
    /// `spec.suspend` is set.
    Suspended,
}

/// One backup that exists in the destination.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StoredBackup {
    /// Stable name (`<pvc>-<short snapshot id>`), usable in `Restore.spec.backupName`.
    pub name: String,
    /// When the backup was taken (RFC 3339).
    pub timestamp: String,
    /// The PVC it holds.
    pub pvc_name: String,
    /// Size in bytes (data processed, or the snapshot's restoreSize).
    pub size: i64,
    /// Repository or VolumeSnapshot holding it (never with credentials).
    pub location: String,
    /// Completed, Partial, Ready or Pending.
    pub status: String,
    /// restic snapshot id, or VolumeSnapshot name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Why a `Partial` backup is partial (the first paths left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}
