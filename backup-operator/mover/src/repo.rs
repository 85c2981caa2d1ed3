//! Repository location parsing, backend construction and open-or-init.

use std::path::PathBuf;
use std::sync::Arc;

use rustic_backend::local::LocalBackend;
use rustic_core::{
    ConfigOptions, Credentials, OpenStatus, Repository, RepositoryBackends, RepositoryOptions,
    WriteBackend,
};

use crate::crypto::{Crypto, random_u64};
use crate::error::{MResult, MoverError, RusticCtx};
use crate::fence::Fenced;
use crate::result::ErrorKind;
use crate::s3::{S3Backend, S3Settings};

/// Where the repository lives.
#[derive(Debug, Clone)]
pub enum RepoSpec {
    Local(PathBuf),
    S3(Box<S3Settings>),
}

/// `s3:<http(s)://endpoint>/<bucket>[/<prefix>]` or an absolute local path.
pub fn parse_repo(repo: &str) -> MResult<RepoSpec> {
    if let Some(rest) = repo.strip_prefix("s3:") {
        let (scheme, after) = rest.split_once("://").ok_or_else(|| {
            MoverError::new(
                ErrorKind::Other,
                format!(
                    "repository {repo:?}: expected s3:<http(s)://endpoint>/<bucket>[/<prefix>]"
                ),
            )
        })?;
        if scheme != "http" && scheme != "https" {
            return Err(MoverError::new(
                ErrorKind::Other,
                format!("repository {repo:?}: endpoint scheme must be http or https"),
            ));
        }
        let mut parts = after.splitn(3, '/');
        let host = parts.next().unwrap_or_default();
        let bucket = parts.next().unwrap_or_default();
        let prefix = parts.next().unwrap_or_default().trim_matches('/');
        if host.is_empty() || bucket.is_empty() {
            return Err(MoverError::new(
                ErrorKind::Other,
                format!("repository {repo:?}: endpoint host and bucket are required"),
            ));
        }
        if host.contains('@') {
            return Err(MoverError::new(
                ErrorKind::Other,
                "repository URL must not contain credentials; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            ));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let path_style = match env("MOVER_S3_PATH_STYLE").as_deref() {
            None | Some("true") | Some("1") | Some("yes") => true,
            Some("false") | Some("0") | Some("no") => false,
            Some(other) => {
                return Err(MoverError::new(
                    ErrorKind::Other,
                    format!("MOVER_S3_PATH_STYLE must be true or false, got {other:?}"),
                ));
            }
        };
        Ok(RepoSpec::S3(Box::new(S3Settings {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            region: env("AWS_DEFAULT_REGION")
                .or_else(|| env("AWS_REGION"))
                .unwrap_or_else(|| "us-east-1".to_string()),
            path_style,
            access_key: env("AWS_ACCESS_KEY_ID"),
            secret_key: env("AWS_SECRET_ACCESS_KEY"),
            retry: crate::retry::RetryPolicy::from_env(),
        })))
    } else if repo.starts_with('/') {
        Ok(RepoSpec::Local(PathBuf::from(repo)))
    } else {
        Err(MoverError::new(
            ErrorKind::Other,
            format!("repository {repo:?}: expected an absolute path or s3:<url>"),
        ))
    }
}

/// Printable location, never with credentials.
pub fn location(spec: &RepoSpec) -> String {
    match spec {
        RepoSpec::Local(p) => p.display().to_string(),
        RepoSpec::S3(s) => {
            let prefix = s.prefix.trim_matches('/');
            if prefix.is_empty() {
                format!("s3:{}/{}", s.endpoint, s.bucket)
            } else {
                format!("s3:{}/{}/{}", s.endpoint, s.bucket, prefix)
            }
        }
    }
}

/// What a create-if-absent write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Written,
    /// Something is there already; nothing was written.
    Exists,
    /// The storage cannot create conditionally (no hard links, no
    /// `If-None-Match`); nothing was written.
    Unsupported,
}

/// Raw object access below the repository root (for files rustic_core does
/// not know: `locks/`, `mover-owner` and the init claims in `mover-init/`).
#[derive(Clone)]
pub enum Raw {
    Local(PathBuf),
    S3(S3Backend),
}

impl Raw {
    pub fn put(&self, name: &str, data: &[u8]) -> MResult<()> {
        match self {
            Raw::S3(s3) => s3.put_raw(name, data.to_vec()),
            Raw::Local(root) => {
                let path = root.join(name);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).ctx(&format!("creating {}", dir.display()))?;
                }
                // Write to a temp name and rename so readers never see partial files.
                let tmp = root.join(format!("{name}.tmp-{:016x}", random_u64()));
                std::fs::write(&tmp, data).ctx(&format!("writing {}", tmp.display()))?;
                std::fs::rename(&tmp, &path).ctx(&format!("renaming to {}", path.display()))
            }
        }
    }

    /// Writes `name` only if it does not exist, atomically: a hard link of
    /// a complete temp file locally, `If-None-Match: *` on S3.
    pub fn create_new(&self, name: &str, data: &[u8]) -> MResult<Created> {
        match self {
            Raw::S3(s3) => s3.put_if_absent(name, data.to_vec()),
            Raw::Local(root) => {
                let path = root.join(name);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).ctx(&format!("creating {}", dir.display()))?;
                }
                let tmp = root.join(format!("{name}.tmp-{:016x}", random_u64()));
                std::fs::write(&tmp, data).ctx(&format!("writing {}", tmp.display()))?;
                let linked = std::fs::hard_link(&tmp, &path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => Ok(Created::Written),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Created::Exists),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::Unsupported
                            || matches!(
                                e.raw_os_error(),
                                Some(libc::EPERM | libc::EOPNOTSUPP | libc::EMLINK)
                            ) =>
                    {
                        Ok(Created::Unsupported)
                    }
                    Err(e) => Err(e).ctx(&format!("creating {}", path.display())),
                }
            }
        }
    }

    /// Whether [`Raw::create_new`] can be trusted: S3 servers that ignore
    /// `If-None-Match` are found by writing a probe twice.
    pub fn conditional_writes(&self) -> MResult<bool> {
        match self {
            Raw::Local(_) => Ok(true),
            Raw::S3(_) => {
                let probe = format!("mover-init/probe-{:016x}", random_u64());
                let first = self.create_new(&probe, b"probe")?;
                let second = if first == Created::Written {
                    self.create_new(&probe, b"probe")?
                } else {
                    first
                };
                let _ = self.delete(&probe);
                Ok(first == Created::Written && second == Created::Exists)
            }
        }
    }

    pub fn get(&self, name: &str) -> MResult<Option<Vec<u8>>> {
        match self {
            Raw::S3(s3) => s3.get_raw(name),
            Raw::Local(root) => match std::fs::read(root.join(name)) {
                Ok(d) => Ok(Some(d)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).ctx(&format!("reading {name}")),
            },
        }
    }

    pub fn delete(&self, name: &str) -> MResult<()> {
        match self {
            Raw::S3(s3) => s3.delete_raw(name),
            Raw::Local(root) => match std::fs::remove_file(root.join(name)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).ctx(&format!("deleting {name}")),
            },
        }
    }

    /// File names (not paths) directly in `dir`, sorted; temp files skipped.
    pub fn list(&self, dir: &str) -> MResult<Vec<String>> {
        let mut v = match self {
            Raw::S3(s3) => s3.list_raw(dir)?,
            Raw::Local(root) => {
                let d = root.join(dir);
                let rd = match std::fs::read_dir(&d) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(e).ctx(&format!("listing {}", d.display())),
                };
                let mut out = Vec::new();
                for e in rd {
                    let e = e.ctx(&format!("listing {}", d.display()))?;
                    if let Some(n) = e.file_name().to_str()
                        && !n.contains(".tmp-")
                    {
                        out.push(n.to_string());
                    }
                }
                out
            }
        };
        v.sort();
        Ok(v)
    }
}

/// A connected backend plus raw access.
pub struct Backend {
    pub spec: RepoSpec,
    pub be: Arc<dyn WriteBackend>,
    pub raw: Raw,
}

impl Backend {
    pub fn connect(spec: RepoSpec) -> MResult<Self> {
        match &spec {
            RepoSpec::Local(path) => {
                let path_str = path.to_str().ok_or_else(|| {
                    MoverError::new(ErrorKind::Other, "repository path is not valid UTF-8")
                })?;
                let be = LocalBackend::new(path_str, std::iter::empty())
                    .ctx(&format!("opening local repository {path_str}"))?;
                Ok(Self {
                    spec: spec.clone(),
                    be: Arc::new(Fenced(Arc::new(be))),
                    raw: Raw::Local(path.clone()),
                })
            }
            RepoSpec::S3(s) => {
                let be = S3Backend::new(s)?;
                be.preflight()?;
                Ok(Self {
                    spec: spec.clone(),
                    be: Arc::new(Fenced(Arc::new(be.clone()))),
                    raw: Raw::S3(be),
                })
            }
        }
    }

    pub fn location(&self) -> String {
        location(&self.spec)
    }

    pub fn config_exists(&self) -> MResult<bool> {
        let cfg = self
            .be
            .list_with_size(rustic_core::FileType::Config)
            .ctx("checking for repository config")?;
        Ok(!cfg.is_empty())
    }
}

/// Options for opening.
pub struct OpenOpts {
    pub password: String,
    pub cache_dir: Option<PathBuf>,
    _tmp_cache: Option<TempCache>,
}

/// A per-run cache directory, removed when the run ends.
struct TempCache(PathBuf);

impl Drop for TempCache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn open_opts_from_env() -> MResult<OpenOpts> {
    let password = std::env::var("RESTIC_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let password = match password {
        Some(p) => p,
        None => match std::env::var("RESTIC_PASSWORD_FILE")
            .ok()
            .filter(|p| !p.is_empty())
        {
            Some(file) => std::fs::read_to_string(&file)
                .ctx(&format!("reading RESTIC_PASSWORD_FILE {file}"))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            None => {
                return Err(MoverError::new(
                    ErrorKind::WrongPassword,
                    "RESTIC_PASSWORD is not set",
                ));
            }
        },
    };
    // MOVER_CACHE_DIR=<dir>: persistent cache; "none": no cache; unset: a
    // throw-away cache under $TMPDIR for this run (tree packs are then read
    // once per run instead of once per tree walk).
    let (cache_dir, tmp) = match std::env::var("MOVER_CACHE_DIR")
        .ok()
        .filter(|p| !p.is_empty())
    {
        Some(v) if v == "none" => (None, None),
        Some(dir) => (Some(PathBuf::from(dir)), None),
        None => {
            let dir = std::env::temp_dir().join(format!(
                "backup-mover-cache-{}-{:08x}",
                std::process::id(),
                random_u64() as u32
            ));
            match std::fs::create_dir_all(&dir) {
                Ok(()) => (Some(dir.clone()), Some(TempCache(dir))),
                Err(e) => {
                    log::warn!("no cache: creating {}: {e}", dir.display());
                    (None, None)
                }
            }
        }
    };
    Ok(OpenOpts {
        password,
        cache_dir,
        _tmp_cache: tmp,
    })
}

pub fn repository(be: &Backend, o: &OpenOpts) -> MResult<Repository<()>> {
    let mut ro = RepositoryOptions::default();
    match &o.cache_dir {
        Some(dir) => ro = ro.cache_dir(dir.clone()),
        None => ro = ro.no_cache(true),
    }
    let backends = RepositoryBackends::new(be.be.clone(), None);
    Repository::new(&ro, &backends).ctx("setting up repository")
}

pub fn open(be: &Backend, o: &OpenOpts) -> MResult<Repository<OpenStatus>> {
    repository(be, o)?
        .open(&Credentials::password(&o.password))
        .ctx(&format!("opening repository {}", be.location()))
}

/// Opens the repository, or (if `create`) initialises it first (see `init.rs`).
pub fn open_or_init(be: &Backend, o: &OpenOpts, create: bool) -> MResult<Repository<OpenStatus>> {
    if be.config_exists()? {
        return open(be, o);
    }
    if !create {
        return Err(MoverError::new(
            ErrorKind::NotFound,
            format!("no repository at {}", be.location()),
        ));
    }
    crate::init::init(be, o)
}

/// Data packs of 16 MiB (restic's default) instead of rustic's 32 MiB and up:
/// restores read whole pack sections in few requests with bounded buffers.
pub fn config_options() -> ConfigOptions {
    ConfigOptions::default()
        .set_datapack_size(bytesize::ByteSize::mib(16))
        .set_datapack_size_limit(bytesize::ByteSize::mib(64))
}

/// The raw key for restic-compatible lock files.
pub fn crypto(repo: &Repository<OpenStatus>) -> MResult<Crypto> {
    Crypto::from_master(&repo.key())
}
