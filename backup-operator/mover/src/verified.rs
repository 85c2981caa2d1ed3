//! A backend wrapper that checks every whole file it reads against its name:
//! restic names index, snapshot, key and pack files by the SHA-256 of their
//! bytes, and verifies that on read; rustic_core does not. A damaged or
//! substituted snapshot or index file is then an error naming the file,
//! never silently used. (Blobs read by range are verified by their own id
//! where they are used: the restore and the archiver's parent trees.)

use std::sync::Arc;

use bytes::Bytes;
use rustic_core::{
    BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend,
};
use sha2::{Digest, Sha256};

#[derive(Clone)]
pub struct Verified(pub Arc<dyn WriteBackend>);

/// `Ok` when `data` hashes to `id` (the config file has no such name).
pub fn check(tpe: FileType, id: &Id, data: &[u8]) -> Result<(), String> {
    if tpe == FileType::Config {
        return Ok(());
    }
    let hash: [u8; 32] = Sha256::digest(data).into();
    if Id::new(hash) == *id {
        Ok(())
    } else {
        Err(format!(
            "{tpe} file {id} does not match its name (sha256 {}): the repository is damaged",
            Id::new(hash)
        ))
    }
}

impl ReadBackend for Verified {
    fn location(&self) -> String {
        self.0.location()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        self.0.list_with_size(tpe)
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let data = self.0.read_full(tpe, id)?;
        check(tpe, id, &data).map_err(|msg| RusticError::new(ErrorKind::Repository, msg))?;
        Ok(data)
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        self.0.read_partial(tpe, id, cacheable, offset, length)
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.0.warmup_path(tpe, id)
    }

    fn needs_warm_up(&self) -> bool {
        self.0.needs_warm_up()
    }

    fn warm_up(&self, tpe: FileType, id: &Id) -> RusticResult<()> {
        self.0.warm_up(tpe, id)
    }
}

impl WriteBackend for Verified {
    fn create(&self) -> RusticResult<()> {
        self.0.create()
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        self.0.write_bytes(tpe, id, cacheable, content)
    }

    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        self.0.remove(tpe, id, cacheable)
    }
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
