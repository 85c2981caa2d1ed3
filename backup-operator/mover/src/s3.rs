//! A restic-layout S3 backend for rustic_core on top of opendal (services-s3 only).
//!
//! Object layout is restic's: `config`, `keys/<id>`, `snapshots/<id>`,
//! `index/<id>`, `locks/<id>`, `data/<id[0..2]>/<id>` below the prefix.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opendal::Operator;
use opendal::options::{ListOptions, ReadOptions, WriteOptions};
use rustic_core::{
    BytesList, ErrorKind as RErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult,
    WriteBackend,
};
use tokio::runtime::Runtime;

use crate::cancel;
use crate::error::{MResult, MoverError, RusticCtx};
use crate::repo::Created;
use crate::result::ErrorKind;
use crate::retry::{RetryPolicy, retryable};

/// Requests after a signal still get this long (the lock is removed, the
/// result written), but not the whole retry budget.
const AFTER_CANCEL: Duration = Duration::from_secs(10);
/// Time allowed for one listing (many pages for a large `data/`).
const LIST_TIMEOUT: Duration = Duration::from_secs(300);
/// Assumed size of whole-file reads (index, snapshot, packs) for their timeout.
const FULL_READ_BYTES: u64 = 16 << 20;

/// Connection settings for an S3 repository.
#[derive(Clone)]
pub struct S3Settings {
    pub endpoint: String,
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    pub path_style: bool,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub retry: RetryPolicy,
}

// Never print keys.
impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct S3Backend {
    op: Operator,
    location: String,
    retry: RetryPolicy,
    rt: Arc<Runtime>,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Backend({})", self.location)
    }
}

impl S3Backend {
    pub fn new(s: &S3Settings) -> MResult<Self> {
        // Installs the reqwest HTTP transport (idempotent).
        opendal::install_default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("mover-s3")
            .build()
            .ctx("starting the S3 client runtime")?;
        let mut b = opendal::services::S3::default()
            .bucket(&s.bucket)
            .endpoint(&s.endpoint)
            .region(&s.region)
            .root(&format!("/{}", s.prefix.trim_matches('/')))
            .disable_config_load()
            .disable_ec2_metadata();
        if !s.path_style {
            b = b.enable_virtual_host_style();
        }
        match (&s.access_key, &s.secret_key) {
            (Some(a), Some(k)) => b = b.access_key_id(a).secret_access_key(k),
            _ => b = b.skip_signature(),
        }
        let op = opendal::Operator::new(b).ctx("configuring the S3 client")?;
        let prefix = s.prefix.trim_matches('/');
        let location = if prefix.is_empty() {
            format!("s3:{}/{}", s.endpoint.trim_end_matches('/'), s.bucket)
        } else {
            format!(
                "s3:{}/{}/{}",
                s.endpoint.trim_end_matches('/'),
                s.bucket,
                prefix
            )
        };
        Ok(Self {
            op,
            location,
            retry: s.retry,
            rt: Arc::new(rt),
        })
    }

    /// Runs one request with the retry policy: temporary errors and
    /// timeouts are retried with backoff; `bytes` sizes the timeout.
    fn call<T, F, Fut>(&self, what: &str, path: &str, bytes: u64, f: F) -> opendal::Result<T>
    where
        F: Fn(Operator) -> Fut,
        Fut: Future<Output = opendal::Result<T>>,
    {
        self.call_with(self.retry, what, path, |attempt| {
            (self.retry.timeout(bytes, attempt), f(self.op.clone()))
        })
    }

    fn call_with<T, F, Fut>(
        &self,
        policy: RetryPolicy,
        what: &str,
        path: &str,
        f: F,
    ) -> opendal::Result<T>
    where
        F: Fn(u32) -> (Duration, Fut),
        Fut: Future<Output = opendal::Result<T>>,
    {
        let start = Instant::now();
        let mut retries = 0u32;
        loop {
            let (limit, fut) = f(retries);
            let outcome = self
                .rt
                .block_on(async { tokio::time::timeout(limit, fut).await });
            let err = match outcome {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => opendal::Error::new(
                    opendal::ErrorKind::Unexpected,
                    format!("no response within {}s", limit.as_secs()),
                )
                .set_temporary(),
            };
            let next = RetryPolicy::jittered(policy.delay(retries + 1));
            let mut elapsed = start.elapsed();
            if let Some(since) = cancel::since() {
                // Past a signal, only a short grace remains.
                elapsed = elapsed.max(policy.budget.saturating_sub(AFTER_CANCEL) + since.elapsed());
            }
            if !retryable(&err) || !policy.retry_again(retries, elapsed, next) {
                return Err(err);
            }
            retries += 1;
            log::warn!(
                "S3 {what} {path}: {}: {}; retry {retries} in {}ms",
                err.kind(),
                err.message(),
                next.as_millis()
            );
            std::thread::sleep(next);
        }
    }

    /// Cheap connectivity / bucket check with specific error kinds.
    pub fn preflight(&self) -> MResult<()> {
        // A wrong endpoint is reported within a minute, not after the budget.
        let policy = self.retry.capped(Duration::from_secs(60));
        let listed = self.call_with(policy, "list", "keys/", |attempt| {
            let op = self.op.clone();
            let opts = ListOptions {
                limit: Some(1),
                ..Default::default()
            };
            (policy.timeout(0, attempt), async move {
                op.list_options("keys/", opts).await
            })
        });
        match listed {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut err =
                    MoverError::classify(&format!("accessing S3 repository {}", self.location), &e);
                // A bare 404 on listing means the bucket is missing.
                if err.kind == ErrorKind::NotFound {
                    err.kind = ErrorKind::BucketMissing;
                }
                Err(err)
            }
        }
    }

    fn path(tpe: FileType, id: &Id) -> String {
        let hex = id.to_hex();
        match tpe {
            FileType::Config => "config".to_string(),
            FileType::Pack => format!("data/{}/{}", &hex[0..2], &*hex),
            _ => format!("{}/{}", tpe.dirname(), &*hex),
        }
    }

    // ---- raw access used for the race-free init protocol ----

    pub fn put_raw(&self, name: &str, data: Vec<u8>) -> MResult<()> {
        let data = Bytes::from(data);
        self.call("write", name, data.len() as u64, |op| {
            let data = data.clone();
            async move { op.write(name, data).await.map(|_| ()) }
        })
        .ctx(&format!("writing {name}"))
    }

    /// `If-None-Match: *`: creates `name` only if it does not exist.
    pub fn put_if_absent(&self, name: &str, data: Vec<u8>) -> MResult<Created> {
        let data = Bytes::from(data);
        let written = self.call("conditional write", name, data.len() as u64, |op| {
            let data = data.clone();
            let opts = WriteOptions {
                if_not_exists: true,
                ..Default::default()
            };
            async move { op.write_options(name, data, opts).await.map(|_| ()) }
        });
        match written {
            Ok(()) => Ok(Created::Written),
            Err(e) if e.kind() == opendal::ErrorKind::ConditionNotMatch => Ok(Created::Exists),
            Err(e)
                if e.kind() == opendal::ErrorKind::Unsupported
                    || e.message().contains("NotImplemented") =>
            {
                Ok(Created::Unsupported)
            }
            Err(e) => Err(e).ctx(&format!("writing {name}")),
        }
    }

    pub fn get_raw(&self, name: &str) -> MResult<Option<Vec<u8>>> {
        match self.call("read", name, FULL_READ_BYTES, |op| async move {
            op.read(name).await
        }) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx(&format!("reading {name}")),
        }
    }

    pub fn delete_raw(&self, name: &str) -> MResult<()> {
        self.call("delete", name, 0, |op| async move { op.delete(name).await })
            .ctx(&format!("deleting {name}"))
    }

    fn list_files(&self, dir: &str) -> opendal::Result<Vec<opendal::Entry>> {
        let entries = self.call_with(self.retry, "list", dir, |_| {
            let op = self.op.clone();
            let opts = ListOptions {
                recursive: true,
                ..Default::default()
            };
            (
                LIST_TIMEOUT,
                async move { op.list_options(dir, opts).await },
            )
        })?;
        Ok(entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .collect())
    }

    pub fn list_raw(&self, dir: &str) -> MResult<Vec<String>> {
        let dir = format!("{}/", dir.trim_end_matches('/'));
        Ok(self
            .list_files(&dir)
            .ctx(&format!("listing {dir}"))?
            .into_iter()
            .map(|e| e.name().to_string())
            .collect())
    }
}

fn be_err(what: &str, path: &str, err: opendal::Error) -> Box<RusticError> {
    RusticError::with_source(RErrorKind::Backend, "S3 {what} `{path}` failed", err)
        .attach_context("what", what.to_string())
        .attach_context("path", path.to_string())
}

impl ReadBackend for S3Backend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        if tpe == FileType::Config {
            let stat = self.call(
                "stat",
                "config",
                0,
                |op| async move { op.stat("config").await },
            );
            return match stat {
                Ok(m) => Ok(vec![(
                    Id::default(),
                    u32::try_from(m.content_length()).unwrap_or(u32::MAX),
                )]),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(be_err("stat", "config", e)),
            };
        }
        let dir = format!("{}/", tpe.dirname());
        let entries = self.list_files(&dir).map_err(|e| be_err("list", &dir, e))?;
        Ok(entries
            .into_iter()
            .filter_map(|e| {
                let id = Id::parse_some(e.name(), tpe)?;
                let len = u32::try_from(e.metadata().content_length()).ok()?;
                Some((id, len))
            })
            .collect())
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let path = Self::path(tpe, id);
        self.call("read", &path, FULL_READ_BYTES, |op| {
            let path = &path;
            async move { op.read(path).await }
        })
        .map(|b| b.to_bytes())
        .map_err(|e| be_err("read", &path, e))
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        let path = Self::path(tpe, id);
        let start = u64::from(offset);
        self.call("ranged read", &path, u64::from(length), |op| {
            let path = &path;
            let opts = ReadOptions {
                range: (start..start + u64::from(length)).into(),
                ..Default::default()
            };
            async move { op.read_options(path, opts).await }
        })
        .map(|b| b.to_bytes())
        .map_err(|e| be_err("ranged read", &path, e))
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        Self::path(tpe, id)
    }
}

impl WriteBackend for S3Backend {
    fn create(&self) -> RusticResult<()> {
        // S3 has no directories; restic creates none either.
        Ok(())
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        buf: BytesList,
    ) -> RusticResult<()> {
        let path = Self::path(tpe, id);
        let parts = buf.into_vec();
        let len = parts.iter().map(|b| b.len() as u64).sum();
        self.call("write", &path, len, |op| {
            let (path, parts) = (&path, parts.clone());
            async move { op.write(path, parts).await.map(|_| ()) }
        })
        .map_err(|e| be_err("write", &path, e))
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        let path = Self::path(tpe, id);
        self.call("delete", &path, 0, |op| {
            let path = &path;
            async move { op.delete(path).await }
        })
        .map_err(|e| be_err("delete", &path, e))
    }
}
