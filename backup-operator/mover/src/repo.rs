//! Repository location parsing, backend construction and race-free open-or-init.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustic_backend::local::LocalBackend;
use rustic_core::repofile::{KeyFile, MasterKey};
use rustic_core::{
    ConfigOptions, Credentials, FileType, Id, KeyOptions, OpenStatus, Repository,
    RepositoryBackends, RepositoryOptions, WriteBackend,
};

use sha2::{Digest, Sha256};

use crate::crypto::{Crypto, random_bytes, random_u64};
use crate::error::{MResult, MoverError, RusticCtx};
use crate::lock::hostname;
use crate::result::ErrorKind;
use crate::s3::{S3Backend, S3Settings};
use crate::verified::Verified;

/// Where the repository lives.
#[derive(Debug, Clone)]
pub enum RepoSpec {
    Local(PathBuf),
    S3(S3Settings),
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
        let retries = env("MOVER_S3_RETRIES")
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        Ok(RepoSpec::S3(S3Settings {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            region: env("AWS_DEFAULT_REGION")
                .or_else(|| env("AWS_REGION"))
                .unwrap_or_else(|| "us-east-1".to_string()),
            path_style,
            access_key: env("AWS_ACCESS_KEY_ID"),
            secret_key: env("AWS_SECRET_ACCESS_KEY"),
            retries,
        }))
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

/// Raw object access below the repository root (for files rustic_core does
/// not know: `locks/` and the init claims in `mover-init/`).
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
                    be: Arc::new(Verified(Arc::new(be))),
                    raw: Raw::Local(path.clone()),
                })
            }
            RepoSpec::S3(s) => {
                let be = S3Backend::new(s)?;
                be.preflight()?;
                Ok(Self {
                    spec: spec.clone(),
                    be: Arc::new(Verified(Arc::new(be.clone()))),
                    raw: Raw::S3(be),
                })
            }
        }
    }

    pub fn location(&self) -> String {
        location(&self.spec)
    }

    fn config_exists(&self) -> MResult<bool> {
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

fn repository(be: &Backend, o: &OpenOpts) -> MResult<Repository<()>> {
    let mut ro = RepositoryOptions::default();
    match &o.cache_dir {
        Some(dir) => ro = ro.cache_dir(dir.clone()),
        None => ro = ro.no_cache(true),
    }
    let backends = RepositoryBackends::new(be.be.clone(), None);
    Repository::new(&ro, &backends).ctx("setting up repository")
}

fn open(be: &Backend, o: &OpenOpts) -> MResult<Repository<OpenStatus>> {
    repository(be, o)?
        .open(&Credentials::password(&o.password))
        .ctx(&format!("opening repository {}", be.location()))
}

/// Opens the repository, or (if `create`) initialises it first.
///
/// Init is race-free: each would-be initialiser writes a claim
/// `mover-init/<millis>-<random>`, waits, and only the lexicographically
/// smallest (earliest) claim initialises; everyone else waits for `config`.
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
    let millis = jiff::Timestamp::now().as_millisecond();
    let claim = format!("{millis:015}-{:016x}", random_u64());
    be.raw
        .put(&format!("mover-init/{claim}"), claim.as_bytes())?;
    std::thread::sleep(Duration::from_millis(1500));
    // Claims older than 10 minutes belong to initialisers that died.
    let cutoff = format!("{:015}", millis - 600_000);
    let claims: Vec<String> = be
        .raw
        .list("mover-init")?
        .into_iter()
        .filter(|c| c.as_str() >= cutoff.as_str())
        .collect();
    let winner = claims.first().cloned().unwrap_or_else(|| claim.clone());
    if winner == claim && !be.config_exists()? {
        log::info!("initialising repository at {}", be.location());
        // Key first (racers wait for `config`, then open with the password).
        let master = write_key(be, &o.password)?;
        let repo = repository(be, o)?
            .init(
                &Credentials::Masterkey(master),
                &KeyOptions::default(),
                &config_options(),
            )
            .ctx(&format!("initialising repository {}", be.location()))?;
        return Ok(repo);
    }
    // Someone else initialises: wait for the config to appear.
    for _ in 0..120 {
        if be.config_exists()? {
            // Keys are written before the config, so open can find ours.
            return open(be, o);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(MoverError::new(
        ErrorKind::Other,
        format!(
            "repository at {} is being initialised by another process that did not finish within 60s",
            be.location()
        ),
    ))
}

/// scrypt cost of new keys: restic's calibrated choice (N=2^15, r=8, p=1:
/// 32 MiB, ~0.1 s) instead of rustic's OWASP default (N=2^17: 128 MiB), which
/// dominated the mover's peak memory.
const KEY_LOG_N: u8 = 15;

/// Writes a new restic key file for a fresh random master key.
fn write_key(be: &Backend, password: &str) -> MResult<MasterKey> {
    let master = MasterKey::new();
    let mut salt = vec![0u8; 64];
    random_bytes(&mut salt)?;
    let params = scrypt::Params::new(KEY_LOG_N, 8, 1)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("scrypt params: {e}")))?;
    let mut derived = [0u8; 64];
    scrypt::scrypt(password.as_bytes(), &salt, &params, &mut derived)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("scrypt: {e}")))?;
    let json = serde_json::to_vec(&master)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("encoding master key: {e}")))?;
    let data = Crypto::from_raw(derived).encrypt(&json)?;
    let kf = KeyFile {
        hostname: Some(hostname()),
        username: None,
        created: Some(jiff::Zoned::now()),
        kdf: "scrypt".to_string(),
        n: 1 << KEY_LOG_N,
        r: 8,
        p: 1,
        data,
        salt,
    };
    let bytes = serde_json::to_vec(&kf)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("encoding key file: {e}")))?;
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    be.be
        .write_bytes(FileType::Key, &Id::new(hash), false, bytes.into())
        .ctx("writing key file")?;
    Ok(master)
}

/// Data packs of 16 MiB (restic's default) instead of rustic's 32 MiB and up:
/// restores read whole pack sections in few requests with bounded buffers.
fn config_options() -> ConfigOptions {
    ConfigOptions::default()
        .set_datapack_size(bytesize::ByteSize::mib(16))
        .set_datapack_size_limit(bytesize::ByteSize::mib(64))
}

/// The raw key for restic-compatible lock files.
pub fn crypto(repo: &Repository<OpenStatus>) -> MResult<Crypto> {
    Crypto::from_master(&repo.key())
}
