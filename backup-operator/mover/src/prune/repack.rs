//! Copies the needed blobs out of partly used packs into new packs, so the
//! old packs can be marked. Blobs are copied sealed as they are, after
//! checking that each still decrypts to its id (a repack never spreads a
//! damaged blob).

use rustic_core::{FileType, Id};

use super::plan::{PackInfo, Repack};
use crate::archive::PACK_SIZE;
use crate::archive::index::PackEntry;
use crate::archive::pack::{Kind, Pack, PackBuilder, hex};
use crate::crypto::Crypto;
use crate::error::{MResult, MoverError, RusticCtx};
use crate::repo::Backend;
use crate::result::ErrorKind;

/// Writes the new packs; returns their index entries (not yet indexed).
pub fn repack(
    be: &Backend,
    crypto: &Crypto,
    packs: &[PackInfo],
    jobs: &[Repack],
) -> MResult<Vec<PackEntry>> {
    let cipher = crypto.cipher();
    let mut out = Vec::new();
    let mut data = PackBuilder::new(PACK_SIZE + PACK_SIZE / 16);
    let mut trees = PackBuilder::new(PACK_SIZE + PACK_SIZE / 16);
    for job in jobs {
        let p = packs.get(job.pack).ok_or_else(|| {
            MoverError::new(ErrorKind::Other, "repack of a pack the index does not list")
        })?;
        let bytes = be.be.read_full(FileType::Pack, &p.id).ctx(&format!(
            "reading pack {} to repack it",
            p.id.to_hex().as_str()
        ))?;
        for &i in &job.blobs {
            let b = p.blobs.get(i).ok_or_else(|| {
                MoverError::new(ErrorKind::Other, "repack of a blob the index does not list")
            })?;
            let (start, end) = (b.offset as usize, b.offset as usize + b.length as usize);
            let sealed = bytes.get(start..end).ok_or_else(|| {
                MoverError::new(
                    ErrorKind::Other,
                    format!(
                        "blob {} lies outside pack {}",
                        b.id.to_hex().as_str(),
                        p.id.to_hex().as_str()
                    ),
                )
            })?;
            verify(crypto, &b.id, sealed, b.uncompressed_length).map_err(|why| {
                MoverError::new(
                    ErrorKind::Other,
                    format!(
                        "blob {} in pack {} {why}; nothing pruned",
                        b.id.to_hex().as_str(),
                        p.id.to_hex().as_str()
                    ),
                )
            })?;
            let (builder, kind) = if b.tree {
                (&mut trees, Kind::Tree)
            } else {
                (&mut data, Kind::Data)
            };
            if !builder.is_empty() && builder.len() + sealed.len() > PACK_SIZE {
                out.push(upload(be, builder.finish(&cipher)?)?);
            }
            builder.add_sealed(kind, id_bytes(&b.id)?, sealed, b.uncompressed_length)?;
        }
    }
    for builder in [&mut data, &mut trees] {
        if !builder.is_empty() {
            out.push(upload(be, builder.finish(&cipher)?)?);
        }
    }
    Ok(out)
}

fn upload(be: &Backend, p: Pack) -> MResult<PackEntry> {
    let tree = p.entries.first().is_some_and(|e| e.kind == Kind::Tree);
    be.be
        .write_bytes(FileType::Pack, &Id::new(p.id), tree, p.data.into())
        .ctx(&format!("writing repacked pack {}", hex(&p.id)))?;
    Ok(PackEntry::new(p.id, p.entries))
}

/// Whether a sealed blob opens and hashes to `id`.
fn verify(
    crypto: &Crypto,
    id: &Id,
    sealed: &[u8],
    uncompressed: Option<u32>,
) -> Result<(), &'static str> {
    crate::verified::open_blob(crypto, id, sealed, uncompressed).map(drop)
}

/// The 32 bytes of an id.
pub fn id_bytes(id: &Id) -> MResult<[u8; 32]> {
    let mut out = [0u8; 32];
    let hex = id.to_hex();
    let s = hex.as_str().as_bytes();
    for (i, o) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(s.get(2 * i..2 * i + 2).unwrap_or_default()).unwrap_or("");
        *o = u8::from_str_radix(pair, 16)
            .map_err(|_| MoverError::new(ErrorKind::Other, "malformed id"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::pack::sha256;

    #[test]
    fn id_bytes_round_trip() {
        let h = sha256(b"abc");
        assert_eq!(id_bytes(&Id::new(h)).expect("hex"), h);
    }

    #[test]
    fn verify_checks_the_content_against_the_id() {
        let key = Crypto::from_raw([5u8; 64]);
        let id = Id::new(sha256(b"hello"));
        let sealed = key.encrypt(b"hello").expect("seal");
        assert!(verify(&key, &id, &sealed, None).is_ok());
        assert_eq!(
            verify(&key, &Id::new(sha256(b"other")), &sealed, None),
            Err("does not match its id")
        );
        let z = zstd::bulk::compress(b"hello", 3).expect("zstd");
        let sealed = key.encrypt(&z).expect("seal");
        assert!(verify(&key, &id, &sealed, Some(5)).is_ok());
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert_eq!(verify(&key, &id, &bad, Some(5)), Err("does not decrypt"));
    }
}
