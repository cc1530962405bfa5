//! The tracking unit: a page, a power of two from 4 KiB to 1 MiB, fixed per volume at
//! creation.

use std::fmt;
use std::ops::Range;

use super::TrackingError;

/// Index of a page within a volume. A volume holds at most `u32::MAX` pages, so an
/// exclusive `Range<u32>` can name every page of it.
pub type PageIndex = u32;

/// Size of the tracking unit of one volume, validated at construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageSize(u32);

impl PageSize {
    pub const MIN: u32 = 4 * 1024;
    pub const MAX: u32 = 1024 * 1024;
    /// 4 KiB, the default the issue names.
    pub const DEFAULT: PageSize = PageSize(Self::MIN);

    /// A page size of `bytes`: a power of two from 4 KiB to 1 MiB.
    pub fn new(bytes: u32) -> Result<Self, TrackingError> {
        if (Self::MIN..=Self::MAX).contains(&bytes) && bytes.is_power_of_two() {
            Ok(PageSize(bytes))
        } else {
            Err(TrackingError::InvalidPageSize { bytes })
        }
    }

    pub fn bytes(self) -> u32 {
        self.0
    }

    pub fn shift(self) -> u32 {
        self.0.trailing_zeros()
    }

    /// Byte offset of the first byte of `page`.
    pub fn offset_of(self, page: PageIndex) -> u64 {
        u64::from(page) << self.shift()
    }

    /// Number of pages that cover `volume_size` bytes, or an error when a volume that
    /// large cannot be tracked with this page size.
    pub fn page_count(self, volume_size: u64) -> Result<u32, TrackingError> {
        let pages = volume_size.div_ceil(u64::from(self.0));
        u32::try_from(pages).map_err(|_| TrackingError::VolumeTooLarge {
            size: volume_size,
            page_size: self.0,
        })
    }

    /// The pages touched by `len` bytes at `offset`; empty when `len` is zero. The caller
    /// has checked the range against the volume size (whose page count fits a `u32`, see
    /// [`PageSize::page_count`]); beyond that the bounds saturate rather than wrap.
    pub fn pages_of(self, offset: u64, len: u64) -> Range<PageIndex> {
        if len == 0 {
            return 0..0;
        }
        let shift = self.shift();
        let first = offset >> shift;
        let end = offset.saturating_add(len - 1) >> shift;
        let clamp = |p: u64| u32::try_from(p).unwrap_or(u32::MAX);
        clamp(first)..clamp(end.saturating_add(1))
    }
}

impl Default for PageSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1024 * 1024) {
            write!(f, "{}MiB", self.0 >> 20)
        } else {
            write!(f, "{}KiB", self.0 >> 10)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_bounds_and_power_of_two() {
        for ok in [4096, 8192, 65536, 1 << 20] {
            assert_eq!(PageSize::new(ok).unwrap().bytes(), ok);
        }
        for bad in [0, 512, 2048, 4095, 6144, 12288, (1 << 20) + 4096, 2 << 20] {
            assert!(matches!(
                PageSize::new(bad),
                Err(TrackingError::InvalidPageSize { bytes }) if bytes == bad
            ));
        }
        assert_eq!(PageSize::default().bytes(), 4096);
        assert_eq!(PageSize::new(1 << 20).unwrap().to_string(), "1MiB");
        assert_eq!(PageSize::new(8192).unwrap().to_string(), "8KiB");
    }

    #[test]
    fn pages_of_covers_unaligned_ranges() {
        let p = PageSize::DEFAULT;
        assert_eq!(p.pages_of(0, 0), 0..0);
        assert_eq!(p.pages_of(12345, 0), 0..0);
        assert_eq!(p.pages_of(0, 1), 0..1);
        assert_eq!(p.pages_of(0, 4096), 0..1);
        assert_eq!(p.pages_of(0, 4097), 0..2);
        assert_eq!(p.pages_of(512, 4096), 0..2);
        assert_eq!(p.pages_of(4096, 512), 1..2);
        assert_eq!(p.pages_of(4095, 2), 0..2);
        assert_eq!(p.pages_of(3 * 4096 + 512, 3 * 4096), 3..7);
        assert_eq!(p.pages_of(u64::MAX - 10, 100), (u32::MAX)..(u32::MAX));
    }

    proptest::proptest! {
        #[test]
        fn pages_of_is_the_pages_of_every_byte(
            shift in 12u32..=20,
            offset in 0u64..(8 << 20),
            len in 0u64..(3 << 20),
        ) {
            let p = PageSize::new(1 << shift).unwrap();
            let got = p.pages_of(offset, len);
            if len == 0 {
                proptest::prop_assert!(got.is_empty());
            } else {
                let first = (offset >> shift) as u32;
                let last = ((offset + len - 1) >> shift) as u32;
                proptest::prop_assert_eq!(got, first..last + 1);
                // The range covers the bytes and no page beyond them.
                proptest::prop_assert!(p.offset_of(first) <= offset);
                proptest::prop_assert!(p.offset_of(last + 1) >= offset + len);
                proptest::prop_assert!(p.offset_of(last) < offset + len);
            }
        }
    }

    #[test]
    fn page_count_fits_u32() {
        let p = PageSize::DEFAULT;
        assert_eq!(p.page_count(0).unwrap(), 0);
        assert_eq!(p.page_count(1).unwrap(), 1);
        assert_eq!(p.page_count(8192).unwrap(), 2);
        assert_eq!(p.page_count(u64::from(u32::MAX) * 4096).unwrap(), u32::MAX);
        assert!(p.page_count(u64::from(u32::MAX) * 4096 + 1).is_err());
        assert_eq!(p.offset_of(3), 12288);
    }
}
