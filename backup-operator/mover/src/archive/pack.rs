//! Pack files in restic's format: encrypted blobs one after another, then
//! the encrypted header listing them, then the header's length (u32 LE).
//! A pack's id is the SHA-256 of the whole file.

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use rustic_core::Id;
use sha2::{Digest, Sha256};

use crate::crypto::seal_into;
use crate::error::{MResult, MoverError};
use crate::result::ErrorKind;

/// Data or tree blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Data,
    Tree,
}

/// A SHA-256 digest: blob ids, pack ids and file ids.
pub type Hash = [u8; 32];

pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

pub fn hex(h: &Hash) -> String {
    Id::new(*h).to_hex().to_string()
}

/// One blob's entry in a pack header and in the index.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    pub id: Hash,
    pub offset: u32,
    /// Encrypted length in the pack.
    pub length: u32,
    /// Set when the blob is stored zstd-compressed.
    pub uncompressed_length: Option<u32>,
}

/// A finished pack, ready to upload.
pub struct Pack {
    pub id: Hash,
    pub data: Vec<u8>,
    pub entries: Vec<Entry>,
}

/// Collects blobs into one pack.
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    /// Allocated at the first blob, so the buffer never grows by copying.
    capacity: usize,
}

impl PackBuilder {
    /// `capacity`: the expected pack size (blobs plus header).
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: Vec::new(),
            entries: Vec::new(),
            capacity,
        }
    }

    /// Bytes in the pack so far (without the header).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a blob; `stored` is the plaintext or its zstd compression (then
    /// `uncompressed_length` is the plaintext's length). Returns the
    /// encrypted length.
    pub fn add(
        &mut self,
        cipher: &Aes256CtrPoly1305Aes,
        kind: Kind,
        id: Hash,
        stored: &[u8],
        uncompressed_length: Option<u32>,
    ) -> MResult<u32> {
        if self.buf.capacity() == 0 {
            self.buf.reserve(self.capacity);
        }
        let offset = self.buf.len();
        seal_into(cipher, stored, &mut self.buf)?;
        let length = to_u32(self.buf.len() - offset)?;
        self.entries.push(Entry {
            kind,
            id,
            offset: to_u32(offset)?,
            length,
            uncompressed_length,
        });
        Ok(length)
    }

    /// Adds a blob exactly as another pack stores it (sealed, maybe
    /// compressed): repacking copies blobs without sealing them again.
    pub fn add_sealed(
        &mut self,
        kind: Kind,
        id: Hash,
        sealed: &[u8],
        uncompressed_length: Option<u32>,
    ) -> MResult<()> {
        if self.buf.capacity() == 0 {
            self.buf.reserve(self.capacity);
        }
        let offset = to_u32(self.buf.len())?;
        self.buf.extend_from_slice(sealed);
        self.entries.push(Entry {
            kind,
            id,
            offset,
            length: to_u32(sealed.len())?,
            uncompressed_length,
        });
        Ok(())
    }

    /// Appends the header and computes the pack id; the builder is empty after.
    pub fn finish(&mut self, cipher: &Aes256CtrPoly1305Aes) -> MResult<Pack> {
        let mut header = Vec::with_capacity(self.entries.len() * 41);
        for e in &self.entries {
            let tpe: u8 = match (e.kind, e.uncompressed_length.is_some()) {
                (Kind::Data, false) => 0,
                (Kind::Tree, false) => 1,
                (Kind::Data, true) => 2,
                (Kind::Tree, true) => 3,
            };
            header.push(tpe);
            header.extend_from_slice(&e.length.to_le_bytes());
            if let Some(u) = e.uncompressed_length {
                header.extend_from_slice(&u.to_le_bytes());
            }
            header.extend_from_slice(&e.id);
        }
        let mut data = std::mem::take(&mut self.buf);
        let before = data.len();
        seal_into(cipher, &header, &mut data)?;
        let header_len = to_u32(data.len() - before)?;
        data.extend_from_slice(&header_len.to_le_bytes());
        let id = sha256(&data);
        Ok(Pack {
            id,
            data,
            entries: std::mem::take(&mut self.entries),
        })
    }
}

fn to_u32(n: usize) -> MResult<u32> {
    u32::try_from(n).map_err(|_| MoverError::new(ErrorKind::Other, "pack larger than 4 GiB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::crypto::Crypto;

    #[test]
    fn pack_layout_matches_the_format() {
        let key = Crypto::from_raw([7u8; 64]);
        let c = key.cipher();
        let open = |sealed: &[u8]| key.decrypt(sealed).expect("MAC must verify");
        let mut b = PackBuilder::new(1024);
        let id1 = sha256(b"one");
        let id2 = sha256(b"two");
        b.add(&c, Kind::Data, id1, b"one", None).expect("add");
        b.add(&c, Kind::Tree, id2, b"zz", Some(3)).expect("add");
        let p = b.finish(&c).expect("finish");
        assert!(b.is_empty());
        assert_eq!(b.len(), 0);
        assert_eq!(p.id, sha256(&p.data));

        let n = p.data.len();
        let hlen = u32::from_le_bytes(p.data[n - 4..].try_into().expect("4 bytes")) as usize;
        let header = open(&p.data[n - 4 - hlen..n - 4]);
        // type, length, [uncompressed length], id
        assert_eq!(header.len(), (1 + 4 + 32) + (1 + 4 + 4 + 32));
        assert_eq!(header[0], 0);
        assert_eq!(
            u32::from_le_bytes(header[1..5].try_into().expect("4")),
            3 + 32
        );
        assert_eq!(&header[5..37], &id1);
        assert_eq!(header[37], 3);
        assert_eq!(u32::from_le_bytes(header[42..46].try_into().expect("4")), 3);
        assert_eq!(&header[46..78], &id2);

        let e = &p.entries[1];
        let blob = &p.data[e.offset as usize..(e.offset + e.length) as usize];
        assert_eq!(open(blob), b"zz");
        let json = serde_json::to_string(&super::super::index::IndexPackJson::of(
            &p.id, &p.entries, None,
        ))
        .expect("json");
        assert!(json.contains("\"type\":\"tree\""), "{json}");
        assert!(json.contains("\"uncompressed_length\":3"), "{json}");
        assert_eq!(json.matches("uncompressed_length").count(), 1, "{json}");
    }

    #[test]
    fn sealed_blobs_are_copied_as_they_are() {
        let key = Crypto::from_raw([9u8; 64]);
        let c = key.cipher();
        let mut a = PackBuilder::new(1024);
        a.add(&c, Kind::Data, sha256(b"x"), b"first", None)
            .expect("add");
        a.add(&c, Kind::Data, sha256(b"y"), b"zz", Some(5))
            .expect("add");
        let src = a.finish(&c).expect("finish");
        let e = &src.entries[1];
        let sealed = &src.data[e.offset as usize..(e.offset + e.length) as usize];

        let mut b = PackBuilder::new(1024);
        b.add_sealed(Kind::Data, e.id, sealed, e.uncompressed_length)
            .expect("copy");
        let dst = b.finish(&c).expect("finish");
        let d = &dst.entries[0];
        assert_eq!(
            (d.offset, d.length, d.uncompressed_length),
            (0, e.length, Some(5))
        );
        let copied = &dst.data[..d.length as usize];
        assert_eq!(key.decrypt(copied).as_deref(), Some(&b"zz"[..]));
        let n = dst.data.len();
        let hlen = u32::from_le_bytes(dst.data[n - 4..].try_into().expect("4")) as usize;
        let header = key.decrypt(&dst.data[n - 4 - hlen..n - 4]).expect("header");
        assert_eq!(header.len(), 1 + 4 + 4 + 32);
        assert_eq!(header[0], 2, "compressed data blob");
    }
}
