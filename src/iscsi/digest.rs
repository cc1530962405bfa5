//! CRC32C header and data digests (RFC 7143 §13.1, Appendix B).
//!
//! The digest travels least significant byte first, the order the CRC is computed in.

pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// The data digest covers the data segment and its padding.
pub fn crc32c_padded(bytes: &[u8], pad: usize) -> u32 {
    let c = crc32c::crc32c(bytes);
    crc32c::crc32c_append(c, &[0u8; 3][..pad])
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc_test_vectors() {
        // RFC 3720 Appendix B.4: 32 bytes of zeros, of ones, incrementing.
        assert_eq!(super::crc32c(&[0u8; 32]), 0x8a9136aa);
        assert_eq!(super::crc32c(&[0xffu8; 32]), 0x62a8ab43);
        let inc: Vec<u8> = (0..32).collect();
        assert_eq!(super::crc32c(&inc), 0x46dd794e);
    }
}
