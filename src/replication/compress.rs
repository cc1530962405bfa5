//! Compression of data extents on the wire: zstd (fast level) or the LZ4 block format.
//!
//! Compressing gives up (the extent travels as read) when the result is not smaller.
//! Decompressing is bounded by the length the frame declares: the output buffer is
//! that length (at most [`MAX_EXTENT`], checked by the caller first), a payload that
//! would need more is an error, and so is one that fills less.

use std::cell::RefCell;

use crate::catalog::Compression;

use super::wire::MAX_EXTENT;

/// zstd level: 1 is the fastest standard level, and most of the gain on block data.
pub const ZSTD_LEVEL: i32 = 1;

thread_local! {
    // Contexts are reused per thread: a new one allocates its tables each time.
    static ZSTD_C: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static ZSTD_D: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `data` compressed with `how`, or `None` when that does not make it smaller (or
/// `how` is `none`, or the compressor fails: the extent then travels as read).
pub fn compress(how: Compression, data: &[u8]) -> Option<Vec<u8>> {
    let out = match how {
        Compression::None => return None,
        Compression::Lz4 => lz4_flex::block::compress(data),
        Compression::Zstd => ZSTD_C.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_none() {
                *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
            }
            c.as_mut()?.compress(data).ok()
        })?,
    };
    (out.len() < data.len()).then_some(out)
}

/// Why a compressed payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    #[error("the declared length {0} is larger than an extent may be")]
    TooLarge(u64),
    #[error("the payload is not valid {0} data of the declared length")]
    Corrupt(Compression),
    #[error("the payload decompresses to {got} bytes, not the declared {declared}")]
    Length { declared: u64, got: usize },
}

/// Decompresses `payload` (made by [`compress`] with `how`) that must give exactly
/// `declared` bytes. Never allocates more than `declared` (at most [`MAX_EXTENT`]).
pub fn decompress(
    how: Compression,
    payload: &[u8],
    declared: u64,
) -> Result<Vec<u8>, DecompressError> {
    if declared > MAX_EXTENT as u64 {
        return Err(DecompressError::TooLarge(declared));
    }
    let len = declared as usize;
    let out = match how {
        Compression::None => payload.to_vec(),
        Compression::Lz4 => {
            let mut out = vec![0u8; len];
            // safe-decode: a payload that would write past `out` is an error, not a
            // panic (the proptests below feed it garbage).
            let n = lz4_flex::block::decompress_into(payload, &mut out)
                .map_err(|_| DecompressError::Corrupt(how))?;
            out.truncate(n);
            out
        }
        Compression::Zstd => ZSTD_D.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = zstd::bulk::Decompressor::new().ok();
            }
            let d = d.as_mut().ok_or(DecompressError::Corrupt(how))?;
            // The capacity is the bound: a frame that needs more fails ("destination
            // buffer too small"); legacy formats are not built in.
            d.decompress(payload, len)
                .map_err(|_| DecompressError::Corrupt(how))
        })?,
    };
    if out.len() != len {
        return Err(DecompressError::Length {
            declared,
            got: out.len(),
        });
    }
    Ok(out)
}

/// `len` bytes of xorshift noise from `seed` (not 0): data that does not compress.
#[cfg(test)]
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Block-like data that compresses: repeated records with a counter.
    fn compressible(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                if i % 64 < 48 {
                    b'a' + (i / 4096) as u8 % 26
                } else {
                    (i % 7) as u8
                }
            })
            .collect()
    }

    #[test]
    fn both_codecs_round_trip_and_shrink_compressible_data() {
        let data = compressible(256 << 10);
        for how in [Compression::Zstd, Compression::Lz4] {
            let c = compress(how, &data).expect("compressible");
            assert!(c.len() * 4 < data.len(), "{how}: {} bytes", c.len());
            assert_eq!(
                decompress(how, &c, data.len() as u64).unwrap(),
                data,
                "{how}"
            );
        }
        assert_eq!(compress(Compression::None, &data), None);
    }

    #[test]
    fn incompressible_data_is_not_compressed() {
        let data = noise(65536, 0x9e37_79b9_7f4a_7c15);
        for how in [Compression::Zstd, Compression::Lz4] {
            assert_eq!(compress(how, &data), None, "{how}");
        }
    }

    #[test]
    fn wrong_lengths_and_corrupt_payloads_are_errors() {
        let data = compressible(64 << 10);
        for how in [Compression::Zstd, Compression::Lz4] {
            let c = compress(how, &data).unwrap();
            // Declared shorter: the output would not fit.
            assert!(decompress(how, &c, data.len() as u64 - 1).is_err(), "{how}");
            // Declared longer: it fills less.
            assert!(
                matches!(
                    decompress(how, &c, data.len() as u64 + 1),
                    Err(DecompressError::Length { .. } | DecompressError::Corrupt(_))
                ),
                "{how}"
            );
            assert_eq!(
                decompress(how, &c, MAX_EXTENT as u64 + 1),
                Err(DecompressError::TooLarge(MAX_EXTENT as u64 + 1))
            );
            // Cut short, and bytes flipped in the middle.
            assert!(decompress(how, &c[..c.len() / 2], data.len() as u64).is_err());
            let mut bad = c.clone();
            for b in &mut bad[4..] {
                *b ^= 0x5a;
            }
            assert!(decompress(how, &bad, data.len() as u64).is_err(), "{how}");
        }
    }

    #[test]
    fn a_payload_bigger_than_declared_is_refused() {
        // 64 MiB of zeros compresses to a few KiB; declared as 1 MiB (the buffer it gets)
        // it must fail.
        let zeros = vec![0u8; 64 << 20];
        for how in [Compression::Zstd, Compression::Lz4] {
            let c = compress(how, &zeros).unwrap();
            assert!(decompress(how, &c, MAX_EXTENT as u64).is_err(), "{how}");
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..512), declared in 0u64..70000) {
            for how in [Compression::Zstd, Compression::Lz4] {
                if let Ok(out) = decompress(how, &payload, declared) {
                    prop_assert_eq!(out.len() as u64, declared);
                }
            }
        }
    }
}
