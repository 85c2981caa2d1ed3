//! Content-defined chunking compatible with restic's chunker: a Rabin
//! fingerprint over a 64-byte window, cut where the fingerprint's low bits
//! are zero, never shorter than the minimum or longer than the maximum size.
//!
//! The rolling-hash tables depend only on the repository's polynomial, so
//! they are computed once per run and cloned per file (computing them per
//! file is what made small-file backups CPU-bound).

use std::io::{self, Read};

use rustic_cdc::{Polynom64, Rabin64, RollingHash64};

/// restic's window: 2^6 = 64 bytes.
const WINDOW_BITS: u32 = 6;
const WINDOW: usize = 1 << WINDOW_BITS;
/// Bytes read per refill while looking for a cut point.
const READ_STEP: usize = 256 * 1024;

/// Chunk size limits and the cut mask of one repository.
#[derive(Clone)]
pub struct Chunker {
    template: Rabin64,
    min: usize,
    max: usize,
    mask: u64,
}

impl Chunker {
    /// `avg` must be a power of two (restic: 1 MiB), `min` at least the window.
    pub fn new(poly: u64, avg: usize, min: usize, max: usize) -> Result<Self, String> {
        if !avg.is_power_of_two() || min < WINDOW || min > avg || avg > max {
            return Err(format!(
                "unsupported chunker sizes: min {min}, average {avg}, max {max}"
            ));
        }
        Ok(Self {
            template: Rabin64::new_with_polynom(WINDOW_BITS, &(poly as Polynom64)),
            min,
            max,
            mask: avg as u64 - 1,
        })
    }

    /// Splits everything `r` yields into chunks, in order. One buffer is
    /// reused for every chunk (no allocation per chunk); `size_hint` (the
    /// file size) only sizes it.
    pub fn for_each_chunk<R: Read, E: From<io::Error>>(
        &self,
        mut r: R,
        size_hint: u64,
        mut emit: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let first = usize::try_from(size_hint)
            .unwrap_or(self.max)
            .min(self.min)
            .saturating_add(1);
        let mut buf: Vec<u8> = Vec::with_capacity(first);
        let mut eof = false;
        loop {
            if !eof && buf.len() < self.min {
                eof = fill(&mut r, &mut buf, self.min)?;
            }
            if buf.len() < self.min {
                // Only at the end of the input.
                if !buf.is_empty() {
                    emit(&buf)?;
                }
                return Ok(());
            }
            let mut rabin = self.template.clone();
            rabin.reset_and_prefill_window(&mut buf[self.min - WINDOW..self.min].iter().copied());
            let mut pos = self.min;
            let cut = loop {
                if pos >= self.max || rabin.hash & self.mask == 0 {
                    break pos;
                }
                if pos == buf.len() {
                    if eof {
                        break pos;
                    }
                    let want = (buf.len() + READ_STEP).min(self.max);
                    eof = fill(&mut r, &mut buf, want)?;
                    continue;
                }
                let end = buf.len().min(self.max);
                // Slide until a cut point or the end of what is buffered.
                while pos < end {
                    rabin.slide(buf[pos]);
                    pos += 1;
                    if rabin.hash & self.mask == 0 {
                        break;
                    }
                }
            };
            emit(&buf[..cut])?;
            // What was read past the cut starts the next chunk.
            buf.copy_within(cut.., 0);
            buf.truncate(buf.len() - cut);
            if eof && buf.is_empty() {
                return Ok(());
            }
        }
    }
}

/// Reads until `buf` holds `want` bytes or the input ends; true at the end.
/// The buffer grows only as data arrives (doubling, at least 64 KiB), so a
/// small file never costs a buffer of the minimum chunk size.
fn fill<R: Read>(r: &mut R, buf: &mut Vec<u8>, want: usize) -> io::Result<bool> {
    while buf.len() < want {
        if buf.len() == buf.capacity() {
            let grow = buf.capacity().max(64 * 1024).min(want - buf.len());
            // One spare byte so the read that reports the end needs no growth.
            buf.reserve(grow.max(1));
        }
        let start = buf.len();
        let room = (buf.capacity() - start).min(want - start);
        buf.resize(start + room, 0);
        match r.read(&mut buf[start..]) {
            Ok(0) => {
                buf.truncate(start);
                return Ok(true);
            }
            Ok(n) => buf.truncate(start + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(start),
            Err(e) => {
                buf.truncate(start);
                return Err(e);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    // restic's test polynomial.
    const POLY: u64 = 0x3DA3358B4DC173;
    const KIB: usize = 1024;

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn split(c: &Chunker, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        c.for_each_chunk::<_, io::Error>(data, data.len() as u64, |ch| {
            out.push(ch.to_vec());
            Ok(())
        })
        .expect("in-memory reads cannot fail");
        out
    }

    /// A reader that hands out a few bytes at a time, like a slow pipe.
    struct Dribble<'a>(&'a [u8]);
    impl Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.0.len()).min(777);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn small_chunker() -> Chunker {
        // Scaled-down sizes so the tests see many cuts.
        Chunker::new(POLY, 16 * KIB, 4 * KIB, 64 * KIB).expect("valid sizes")
    }

    #[test]
    fn chunks_cover_the_input_within_limits() {
        let c = small_chunker();
        let data = random(1_000_000, 7);
        let chunks = split(&c, &data);
        assert!(
            chunks.len() > 20,
            "expected many chunks, got {}",
            chunks.len()
        );
        assert_eq!(chunks.concat(), data);
        for ch in &chunks[..chunks.len() - 1] {
            assert!(ch.len() >= 4 * KIB && ch.len() <= 64 * KIB, "{}", ch.len());
        }
    }

    #[test]
    fn boundaries_do_not_depend_on_read_sizes() {
        let c = small_chunker();
        let data = random(500_000, 9);
        let whole = split(&c, &data);
        let mut dribbled = Vec::new();
        c.for_each_chunk::<_, io::Error>(Dribble(&data), 0, |ch| {
            dribbled.push(ch.to_vec());
            Ok(())
        })
        .expect("in-memory reads cannot fail");
        assert_eq!(whole, dribbled);
    }

    #[test]
    fn an_insertion_only_changes_nearby_chunks() {
        let c = small_chunker();
        let data = random(800_000, 11);
        let mut changed = data.clone();
        changed.splice(400_000..400_000, b"inserted bytes".iter().copied());
        let a = split(&c, &data);
        let b = split(&c, &changed);
        let same = b.iter().filter(|ch| a.contains(ch)).count();
        assert!(
            same + 3 >= b.len(),
            "only {same} of {} chunks kept",
            b.len()
        );
    }

    #[test]
    fn small_and_empty_inputs() {
        let c = small_chunker();
        assert!(split(&c, &[]).is_empty());
        let data = random(4 * KIB - 1, 3);
        assert_eq!(split(&c, &data), vec![data.clone()]);
        let data = random(4 * KIB, 3);
        assert_eq!(split(&c, &data), vec![data.clone()]);
    }

    #[test]
    fn uniform_data_is_cut_at_the_minimum_size() {
        // The fingerprint of a zero window is zero: every chunk ends at the minimum.
        let c = small_chunker();
        let data = vec![0u8; 300 * KIB];
        let chunks = split(&c, &data);
        assert!(
            chunks[..chunks.len() - 1]
                .iter()
                .all(|ch| ch.len() == 4 * KIB)
        );
        assert_eq!(chunks.concat(), data);
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(Chunker::new(POLY, 3000, 512, 8192).is_err());
        assert!(Chunker::new(POLY, 1024, 16, 8192).is_err());
    }
}
