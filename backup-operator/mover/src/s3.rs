//! A restic-layout S3 backend for rustic_core on top of opendal (services-s3 only).
//!
//! Object layout is restic's: `config`, `keys/<id>`, `snapshots/<id>`,
//! `index/<id>`, `locks/<id>`, `data/<id[0..2]>/<id>` below the prefix.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opendal::blocking::Operator;
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::options::{ListOptions, ReadOptions};
use rustic_core::{
    BytesList, ErrorKind as RErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult,
    WriteBackend,
};
use tokio::runtime::Runtime;

use crate::error::{MResult, MoverError, RusticCtx};
use crate::result::ErrorKind;

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
    pub retries: usize,
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
    // Keeps the runtime the blocking operator runs on alive.
    _rt: Arc<Runtime>,
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
        let op = opendal::Operator::new(b)
            .ctx("configuring the S3 client")?
            .layer(
                TimeoutLayer::new()
                    .with_timeout(Duration::from_secs(120))
                    .with_io_timeout(Duration::from_secs(60)),
            )
            .layer(
                RetryLayer::new()
                    .with_max_times(s.retries)
                    .with_min_delay(Duration::from_millis(500))
                    .with_max_delay(Duration::from_secs(10))
                    .with_jitter(),
            );
        let _guard = rt.enter();
        let op = Operator::new(op).ctx("creating the blocking S3 client")?;
        drop(_guard);
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
            _rt: Arc::new(rt),
        })
    }

    /// Cheap connectivity / bucket check with specific error kinds.
    pub fn preflight(&self) -> MResult<()> {
        let opts = ListOptions {
            limit: Some(1),
            ..Default::default()
        };
        match self.op.list_options("keys/", opts) {
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
        self.op
            .write(name, data)
            .map(|_| ())
            .ctx(&format!("writing {name}"))
    }

    pub fn get_raw(&self, name: &str) -> MResult<Option<Vec<u8>>> {
        match self.op.read(name) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx(&format!("reading {name}")),
        }
    }

    pub fn delete_raw(&self, name: &str) -> MResult<()> {
        self.op.delete(name).ctx(&format!("deleting {name}"))
    }

    pub fn list_raw(&self, dir: &str) -> MResult<Vec<String>> {
        let entries = self
            .op
            .list_options(
                &format!("{}/", dir.trim_end_matches('/')),
                ListOptions {
                    recursive: true,
                    ..Default::default()
                },
            )
            .ctx(&format!("listing {dir}"))?;
        Ok(entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
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
            return match self.op.stat("config") {
                Ok(m) => Ok(vec![(
                    Id::default(),
                    u32::try_from(m.content_length()).unwrap_or(u32::MAX),
                )]),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(be_err("stat", "config", e)),
            };
        }
        let dir = format!("{}/", tpe.dirname());
        let entries = self
            .op
            .list_options(
                &dir,
                ListOptions {
                    recursive: true,
                    ..Default::default()
                },
            )
            .map_err(|e| be_err("list", &dir, e))?;
        Ok(entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .filter_map(|e| {
                let id = Id::parse_some(e.name(), tpe)?;
                let len = u32::try_from(e.metadata().content_length()).ok()?;
                Some((id, len))
            })
            .collect())
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let path = Self::path(tpe, id);
        self.op
            .read(&path)
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
        let opts = ReadOptions {
            range: (start..start + u64::from(length)).into(),
            ..Default::default()
        };
        self.op
            .read_options(&path, opts)
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
        self.op
            .write(&path, buf.into_vec())
            .map(|_| ())
            .map_err(|e| be_err("write", &path, e))
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        let path = Self::path(tpe, id);
        self.op
            .delete(&path)
            .map_err(|e| be_err("delete", &path, e))
    }
}
