//! restic's authenticated encryption (AES-256-CTR with a Poly1305-AES MAC):
//! every encrypted piece is `IV || ciphertext || MAC`. The one implementation
//! of sealing and opening, for lock and key files, repository files, pack
//! blobs and headers, and restore.

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use aes256ctr_poly1305aes::aead::AeadInPlace;
use rustic_core::repofile::MasterKey;

use crate::error::{MResult, MoverError, RusticCtx};
use crate::result::ErrorKind;

/// IV before and MAC after every encrypted piece.
pub const OVERHEAD: usize = 32;

/// The raw 64-byte key (encryption key, poly1305 k, poly1305 r).
#[derive(Clone)]
pub struct Crypto {
    key: [u8; 64],
}

impl Crypto {
    pub fn from_master(m: &MasterKey) -> MResult<Self> {
        if m.encrypt.len() != 32 || m.mac.k.len() != 16 || m.mac.r.len() != 16 {
            return Err(MoverError::new(
                ErrorKind::Other,
                "unexpected master key layout in repository key",
            ));
        }
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&m.encrypt);
        key[32..48].copy_from_slice(&m.mac.k);
        key[48..].copy_from_slice(&m.mac.r);
        Ok(Self { key })
    }

    pub fn from_raw(key: [u8; 64]) -> Self {
        Self { key }
    }

    /// The keyed cipher; build it once where many pieces are sealed or opened.
    pub fn cipher(&self) -> Aes256CtrPoly1305Aes {
        Aes256CtrPoly1305Aes::new(aes256ctr_poly1305aes::Key::from_slice(&self.key))
    }

    /// `data` sealed into a new buffer.
    pub fn encrypt(&self, data: &[u8]) -> MResult<Vec<u8>> {
        let mut out = Vec::with_capacity(data.len() + OVERHEAD);
        seal_into(&self.cipher(), data, &mut out)?;
        Ok(out)
    }

    /// The plaintext of a sealed piece, or `None` when the MAC does not verify.
    pub fn decrypt(&self, data: &[u8]) -> Option<Vec<u8>> {
        let mut buf = data.to_vec();
        let n = open_in_place(&self.cipher(), &mut buf)?.len();
        buf.drain(..16);
        buf.truncate(n);
        Some(buf)
    }
}

/// Appends `IV || AES-256-CTR(plain) || Poly1305-AES MAC` to `out`, with a
/// fresh random IV.
pub fn seal_into(cipher: &Aes256CtrPoly1305Aes, plain: &[u8], out: &mut Vec<u8>) -> MResult<()> {
    let mut iv = [0u8; 16];
    random_bytes(&mut iv)?;
    out.reserve(plain.len() + OVERHEAD);
    out.extend_from_slice(&iv);
    let start = out.len();
    out.extend_from_slice(plain);
    let tag = cipher
        .encrypt_in_place_detached((&iv).into(), &[], &mut out[start..])
        .map_err(|_| MoverError::new(ErrorKind::Other, "encryption failed"))?;
    out.extend_from_slice(&tag);
    Ok(())
}

/// Decrypts `IV || ciphertext || MAC` where it lies; returns the plaintext
/// (a sub-slice) or `None` when the MAC does not verify.
pub fn open_in_place<'a>(cipher: &Aes256CtrPoly1305Aes, sealed: &'a mut [u8]) -> Option<&'a [u8]> {
    if sealed.len() < OVERHEAD {
        return None;
    }
    let (nonce, rest) = sealed.split_at_mut(16);
    let n = rest.len() - 16;
    let (ct, tag) = rest.split_at_mut(n);
    cipher
        .decrypt_in_place_detached((&*nonce).into(), &[], ct, (&*tag).into())
        .ok()?;
    Some(ct)
}

pub fn random_bytes(buf: &mut [u8]) -> MResult<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .ctx("reading /dev/urandom")
}

/// Random u64 for jitter.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if random_bytes(&mut b).is_err() {
        return u64::from(std::process::id());
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_with_fresh_ivs() {
        let c = Crypto::from_raw([7u8; 64]);
        let (a, b) = (
            c.encrypt(b"same").expect("seal"),
            c.encrypt(b"same").expect("seal"),
        );
        assert_ne!(a, b, "every seal uses a new IV");
        assert_eq!(a.len(), 4 + OVERHEAD);
        assert_eq!(c.decrypt(&a).as_deref(), Some(&b"same"[..]));
        assert_eq!(c.decrypt(&b).as_deref(), Some(&b"same"[..]));
        let mut tampered = a.clone();
        tampered[20] ^= 1;
        assert_eq!(c.decrypt(&tampered), None, "MAC rejects changed bytes");
        assert_eq!(c.decrypt(&a[..OVERHEAD - 1]), None);
    }
}
