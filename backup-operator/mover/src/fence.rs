//! The backend wrapper every repository access goes through. It refuses
//! every write and delete once the repository lock is lost
//! ([`crate::cancel::lock_is_lost`]), so that an operation whose lock may
//! already be stale (and ignored by a prune elsewhere) cannot add snapshots
//! referring to data that may be deleted, nor delete anything itself,
//! whatever loop it is in; and it checks every whole file it reads against
//! its name ([`crate::verified::check`]).

use std::sync::Arc;

use bytes::Bytes;
use rustic_core::{
    BytesList, ErrorKind as RErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult,
    WriteBackend,
};

use crate::{cancel, verified};

#[derive(Debug)]
pub struct Fenced(pub Arc<dyn WriteBackend>);

fn refuse(what: &str, tpe: FileType) -> RusticResult<()> {
    if cancel::lock_is_lost() {
        return Err(RusticError::new(
            RErrorKind::Backend,
            "refusing to {what} a {tpe} file: the repository lock was lost",
        )
        .attach_context("what", what.to_string())
        .attach_context("tpe", format!("{tpe:?}")));
    }
    Ok(())
}

impl ReadBackend for Fenced {
    fn location(&self) -> String {
        self.0.location()
    }
    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        self.0.list_with_size(tpe)
    }
    fn list(&self, tpe: FileType) -> RusticResult<Vec<Id>> {
        self.0.list(tpe)
    }
    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let data = self.0.read_full(tpe, id)?;
        verified::check(tpe, id, &data)
            .map_err(|msg| RusticError::new(RErrorKind::Repository, msg))?;
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

impl WriteBackend for Fenced {
    fn create(&self) -> RusticResult<()> {
        self.0.create()
    }
    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        buf: BytesList,
    ) -> RusticResult<()> {
        refuse("write", tpe)?;
        self.0.write_bytes(tpe, id, cacheable, buf)
    }
    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        refuse("delete", tpe)?;
        self.0.remove(tpe, id, cacheable)
    }
}
