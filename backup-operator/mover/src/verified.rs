//! Whole repository files checked against their name: restic names index,
//! snapshot, key and pack files by the SHA-256 of their bytes, and verifies
//! that on read; rustic_core does not. The repository backend
//! ([`crate::fence::Fenced`]) applies this to every whole file it reads, so
//! a damaged or substituted snapshot or index file is an error naming the
//! file, never silently used. (Blobs read by range are verified by their own
//! id where they are used: the restore and the archiver's parent trees.)

use rustic_core::{FileType, Id};

use crate::crypto::Crypto;
use sha2::{Digest, Sha256};

/// True when `data` is what `id` names: its SHA-256. The one content
/// check for files, tree blobs and data blobs alike.
pub fn names(id: &Id, data: &[u8]) -> bool {
    Id::new(Sha256::digest(data).into()) == *id
}

/// The plaintext of a sealed blob (`IV || ciphertext || MAC`, zstd-compressed
/// when `uncompressed` gives its length), verified against `id`; the error
/// says which step failed.
pub fn open_blob(
    crypto: &Crypto,
    id: &Id,
    sealed: &[u8],
    uncompressed: Option<u32>,
) -> Result<Vec<u8>, &'static str> {
    let plain = crypto.decrypt(sealed).ok_or("does not decrypt")?;
    let plain = match uncompressed {
        Some(n) => zstd::bulk::decompress(&plain, n as usize).map_err(|_| "does not decompress")?,
        None => plain,
    };
    if names(id, &plain) {
        Ok(plain)
    } else {
        Err("does not match its id")
    }
}

/// `Ok` when `data` hashes to `id` (the config file has no such name).
pub fn check(tpe: FileType, id: &Id, data: &[u8]) -> Result<(), String> {
    if tpe == FileType::Config || names(id, data) {
        return Ok(());
    }
    Err(format!(
        "{tpe} file {id} does not match its name (sha256 {}): the repository is damaged",
        Id::new(Sha256::digest(data).into())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_must_hash_to_their_name() {
        let data = b"{\"snapshot\":1}";
        let id = Id::new(Sha256::digest(data).into());
        assert!(check(FileType::Snapshot, &id, data).is_ok());
        assert!(check(FileType::Index, &id, b"{\"snapshot\":2}").is_err());
        assert!(check(FileType::Config, &Id::default(), b"anything").is_ok());
    }
}
