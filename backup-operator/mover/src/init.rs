//! Race-free repository creation.
//!
//! Every initialiser prepares a master key and a config (rustic's init,
//! with the config write captured), writes its key, then creates `config`
//! conditionally: a hard link of a complete file locally, `If-None-Match: *`
//! on S3. Exactly one wins; a loser deletes its key and opens the winner's
//! repository with the same password (the Secret is shared), looking for
//! the key that opens the winning config, so a loser's key that is not
//! deleted yet cannot mislead it.
//!
//! Only where conditional creation is not available (an S3 server that
//! ignores `If-None-Match`, a file system without hard links) the claim
//! protocol decides: claims `mover-init/<millis>-<random>`, the earliest
//! live claim initialises. Claims older than two minutes, and a winning
//! claim whose config has not appeared within 30 s, are dead and ignored.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustic_core::repofile::{KeyFile, MasterKey};
use rustic_core::{
    BytesList, Credentials, FileType, Id, KeyOptions, OpenStatus, ReadBackend, Repository,
    RepositoryBackends, RepositoryOptions, RusticResult, WriteBackend,
};
use sha2::{Digest, Sha256};

use crate::crypto::{Crypto, random_bytes, random_u64};
use crate::error::{MResult, MoverError, RusticCtx};
use crate::lock::hostname;
use crate::repo::{Backend, Created, OpenOpts, config_options, open, repository};
use crate::result::ErrorKind;

/// Claims older than this belong to initialisers that died.
const CLAIM_TTL_MS: i64 = 120_000;
/// How long a loser of the claim protocol waits for the winner's config.
const WINNER_WAIT: Duration = Duration::from_secs(30);

pub fn init(be: &Backend, o: &OpenOpts) -> MResult<Repository<OpenStatus>> {
    let master = MasterKey::new();
    let config = match prepare_config(be, &master) {
        Ok(c) => c,
        // rustic refuses when a config appeared meanwhile: someone was faster.
        Err(_) if be.config_exists()? => return open_raced(be, o),
        Err(e) => return Err(e),
    };
    if be.raw.conditional_writes()? {
        let key = write_key(be, &o.password, &master)?;
        match be.raw.create_new("config", &config)? {
            Created::Written => return open_with(be, o, master),
            // A retried request may report our own earlier success as a conflict.
            Created::Exists if be.raw.get("config")?.as_deref() == Some(&config[..]) => {
                return open_with(be, o, master);
            }
            Created::Exists => {
                remove_key(be, &key);
                log::info!("another process initialised {} first", be.location());
                return open_raced(be, o);
            }
            Created::Unsupported => remove_key(be, &key),
        }
    }
    log::info!(
        "{}: no conditional writes; using init claims",
        be.location()
    );
    init_by_claims(be, o, master, &config)
}

fn remove_key(be: &Backend, id: &Id) {
    if let Err(e) = be.be.remove(FileType::Key, id, false) {
        log::warn!("removing our unused key {id}: {e}");
    }
}

fn open_with(be: &Backend, o: &OpenOpts, master: MasterKey) -> MResult<Repository<OpenStatus>> {
    repository(be, o)?
        .open(&Credentials::Masterkey(master))
        .ctx(&format!("opening repository {}", be.location()))
}

/// Opens a repository someone else just created: the master key is the
/// one that decrypts the config, from any key the password opens.
fn open_raced(be: &Backend, o: &OpenOpts) -> MResult<Repository<OpenStatus>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let config = be.raw.get("config")?.ok_or_else(|| {
            MoverError::new(ErrorKind::Other, "the repository config disappeared")
        })?;
        if let Some(master) = find_master(be, &o.password, &config)? {
            return open_with(be, o, master);
        }
        if Instant::now() >= deadline {
            return open(be, o);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn find_master(be: &Backend, password: &str, config: &[u8]) -> MResult<Option<MasterKey>> {
    for id in be.be.list(FileType::Key).ctx("listing keys")? {
        let Ok(data) = be.be.read_full(FileType::Key, &id) else {
            continue; // a loser's key, removed meanwhile
        };
        let Ok(kf) = serde_json::from_slice::<KeyFile>(&data) else {
            continue;
        };
        if kf.kdf != "scrypt" || !kf.n.is_power_of_two() {
            continue;
        }
        let Ok(log_n) = u8::try_from(kf.n.trailing_zeros()) else {
            continue;
        };
        let Ok(params) = scrypt::Params::new(log_n, kf.r, kf.p) else {
            continue;
        };
        let mut derived = [0u8; 64];
        if scrypt::scrypt(password.as_bytes(), &kf.salt, &params, &mut derived).is_err() {
            continue;
        }
        let Some(plain) = Crypto::from_raw(derived).decrypt(&kf.data) else {
            continue; // another password
        };
        let Ok(master) = serde_json::from_slice::<MasterKey>(&plain) else {
            continue;
        };
        if Crypto::from_master(&master)?.decrypt(config).is_some() {
            return Ok(Some(master));
        }
    }
    Ok(None)
}

/// The claim protocol, where conditional creation is not available.
fn init_by_claims(
    be: &Backend,
    o: &OpenOpts,
    master: MasterKey,
    config: &[u8],
) -> MResult<Repository<OpenStatus>> {
    for _round in 0..4 {
        if be.config_exists()? {
            return open_raced(be, o);
        }
        let millis = jiff::Timestamp::now().as_millisecond();
        let claim = format!("{millis:015}-{:016x}", random_u64());
        let path = |c: &str| format!("mover-init/{c}");
        be.raw.put(&path(&claim), claim.as_bytes())?;
        std::thread::sleep(Duration::from_millis(1500));
        let cutoff = format!("{:015}", millis - CLAIM_TTL_MS);
        let winner = be
            .raw
            .list("mover-init")?
            .into_iter()
            .filter(|c| c.len() > 15 && c.as_bytes()[..15].iter().all(u8::is_ascii_digit))
            .find(|c| c.as_str() >= cutoff.as_str())
            .unwrap_or_else(|| claim.clone());
        if winner == claim {
            let out = if be.config_exists()? {
                open_raced(be, o)
            } else {
                log::info!("initialising repository at {}", be.location());
                write_key(be, &o.password, &master)?;
                be.raw.put("config", config)?;
                open_with(be, o, master)
            };
            let _ = be.raw.delete(&path(&claim));
            return out;
        }
        let waited = Instant::now();
        while waited.elapsed() < WINNER_WAIT {
            if be.config_exists()? {
                let _ = be.raw.delete(&path(&claim));
                return open_raced(be, o);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        log::warn!("init claim {winner} made no progress in 30s; treating it as dead");
        let _ = be.raw.delete(&path(&winner));
        let _ = be.raw.delete(&path(&claim));
    }
    Err(MoverError::new(
        ErrorKind::Other,
        format!(
            "repository at {} could not be initialised: other initialisers kept claiming it",
            be.location()
        ),
    ))
}

/// Runs rustic's init against the real backend with the config write held
/// back; returns the encrypted config as it would have been written.
fn prepare_config(be: &Backend, master: &MasterKey) -> MResult<Vec<u8>> {
    let capture = Arc::new(CaptureConfig {
        inner: be.be.clone(),
        config: Mutex::new(None),
    });
    let backends = RepositoryBackends::new(capture.clone(), None);
    let repo = Repository::new(&RepositoryOptions::default().no_cache(true), &backends)
        .ctx("setting up repository")?;
    repo.init(
        &Credentials::Masterkey(master.clone()),
        &KeyOptions::default(),
        &config_options(),
    )
    .ctx(&format!("preparing repository {}", be.location()))?;
    let config = capture
        .config
        .lock()
        .map_err(|_| MoverError::new(ErrorKind::Other, "config capture poisoned"))?
        .take();
    config
        .map(|b| b.to_vec())
        .ok_or_else(|| MoverError::new(ErrorKind::Other, "rustic's init did not produce a config"))
}

/// Passes everything through except the `config` write, which it keeps.
#[derive(Debug)]
struct CaptureConfig {
    inner: Arc<dyn WriteBackend>,
    config: Mutex<Option<Bytes>>,
}

impl ReadBackend for CaptureConfig {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        self.inner.list_with_size(tpe)
    }
    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        self.inner.read_full(tpe, id)
    }
    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        self.inner.read_partial(tpe, id, cacheable, offset, length)
    }
    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.inner.warmup_path(tpe, id)
    }
}

impl WriteBackend for CaptureConfig {
    fn create(&self) -> RusticResult<()> {
        self.inner.create()
    }
    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        buf: BytesList,
    ) -> RusticResult<()> {
        if tpe != FileType::Config {
            return self.inner.write_bytes(tpe, id, cacheable, buf);
        }
        let mut all = Vec::with_capacity(buf.size());
        for b in buf.into_vec() {
            all.extend_from_slice(&b);
        }
        if let Ok(mut slot) = self.config.lock() {
            *slot = Some(Bytes::from(all));
        }
        Ok(())
    }
    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        self.inner.remove(tpe, id, cacheable)
    }
}

/// scrypt cost of new keys: restic's calibrated choice (N=2^15, r=8, p=1:
/// 32 MiB, ~0.1 s) instead of rustic's OWASP default (N=2^17: 128 MiB), which
/// dominated the mover's peak memory.
const KEY_LOG_N: u8 = 15;

/// Writes a restic key file for `master`; returns its id.
fn write_key(be: &Backend, password: &str, master: &MasterKey) -> MResult<Id> {
    let mut salt = vec![0u8; 64];
    random_bytes(&mut salt)?;
    let params = scrypt::Params::new(KEY_LOG_N, 8, 1)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("scrypt params: {e}")))?;
    let mut derived = [0u8; 64];
    scrypt::scrypt(password.as_bytes(), &salt, &params, &mut derived)
        .map_err(|e| MoverError::new(ErrorKind::Other, format!("scrypt: {e}")))?;
    let json = serde_json::to_vec(master)
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
    let id = Id::new(Sha256::digest(&bytes).into());
    be.be
        .write_bytes(FileType::Key, &id, false, bytes.into())
        .ctx("writing key file")?;
    Ok(id)
}
