//! Text keys: `key=value` pairs separated by NUL bytes (RFC 7143 §6.1), parsing and
//! encoding, and splitting of long texts across PDUs.
//!
//! Parsing is strict about what could confuse negotiation (a pair without `=`, a key
//! that is not a key, a value that is not UTF-8 or is absurdly long) and lenient about
//! what cannot (empty pairs, a missing final NUL).

use bytes::Bytes;

/// §6.1: "A key-name ... MUST NOT exceed 63 bytes."
pub const MAX_KEY_LEN: usize = 63;

/// The longest value string we accept. §6.1 caps simple values at 255 bytes, but
/// binary values (CHAP_C, CHAP_R in hex or base64) may carry up to 1024 bytes of
/// number, i.e. over 2 KiB of text; TargetAddress lists and names stay far below.
/// 8192 covers every legitimate value with room and still bounds memory per pair.
pub const MAX_VALUE_LEN: usize = 8192;

/// Cap on a whole text message (all PDUs of a C-bit sequence, and all login text of
/// one login). rustls caps a handshake message at 64 KiB; real logins are < 4 KiB.
pub const MAX_TEXT_LEN: usize = 64 * 1024;

/// Every key=value pair is valid UTF-8 (§6.1: "text ... encoded in UTF-8").
pub type Pair = (String, String);

/// Why a text segment could not be read. Every variant is the initiator's fault.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("text longer than {max} bytes")]
    TooLong { max: usize },
    #[error("a key=value pair has no '='")]
    MissingEquals,
    #[error("empty key")]
    EmptyKey,
    #[error("key longer than {MAX_KEY_LEN} bytes")]
    KeyTooLong,
    #[error("key contains a character outside the key-name set")]
    BadKeyChar,
    #[error("value longer than {MAX_VALUE_LEN} bytes")]
    ValueTooLong,
    #[error("text is not UTF-8")]
    NotUtf8,
}

impl TextError {
    /// Login status (§11.13.5): malformed text is an initiator error, 0x0200. (0x0207
    /// "missing parameter" is for absent required keys, not for garbage.)
    pub fn status(&self) -> (u8, u8) {
        (0x02, 0x00)
    }
}

/// §6.1 key-name characters: letters, digits, '.', '-', '+', '@', '_'. Extension
/// keys use '#' after X/Y/Z (§13.22: "X#..."), so '#' is allowed too.
fn key_char_ok(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_' | b'#')
}

/// Parse one text segment into pairs, in order. Duplicates are kept: whether a repeat
/// is an error depends on the key and the phase, which the caller knows.
pub fn parse(data: &[u8]) -> Result<Vec<Pair>, TextError> {
    if data.len() > MAX_TEXT_LEN {
        return Err(TextError::TooLong { max: MAX_TEXT_LEN });
    }
    let mut out = Vec::new();
    // §6.1: every pair "MUST be followed by one null (0x00) delimiter". A missing final
    // NUL is tolerated; empty strings between NULs (padding some initiators leave) are
    // skipped.
    for raw in data.split(|&b| b == 0) {
        if raw.is_empty() {
            continue;
        }
        let eq = raw
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TextError::MissingEquals)?;
        let (k, v) = (&raw[..eq], &raw[eq + 1..]);
        if k.is_empty() {
            return Err(TextError::EmptyKey);
        }
        if k.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong);
        }
        if !k.iter().all(|&c| key_char_ok(c)) {
            return Err(TextError::BadKeyChar);
        }
        if v.len() > MAX_VALUE_LEN {
            return Err(TextError::ValueTooLong);
        }
        let v = std::str::from_utf8(v).map_err(|_| TextError::NotUtf8)?;
        // The key was checked to be ASCII above.
        let k = String::from_utf8_lossy(k).into_owned();
        out.push((k, v.to_owned()));
    }
    Ok(out)
}

/// Builds an outgoing text segment, NUL after every pair (§6.1).
#[derive(Debug, Default, Clone)]
pub struct TextWriter {
    buf: Vec<u8>,
}

impl TextWriter {
    pub fn new() -> TextWriter {
        TextWriter::default()
    }
    pub fn push(&mut self, key: &str, value: &str) {
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.push(b'=');
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
    }
    pub fn extend<'a>(&mut self, pairs: impl IntoIterator<Item = &'a Pair>) {
        for (k, v) in pairs {
            self.push(k, v);
        }
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.buf)
    }
}

/// Encode pairs as one text segment.
pub fn encode(pairs: &[Pair]) -> Bytes {
    let mut w = TextWriter::new();
    w.extend(pairs);
    w.into_bytes()
}

/// Cut an outgoing text into segments of at most `max` bytes (the peer's
/// MaxRecvDataSegmentLength). A pair may straddle two PDUs: §6.1 allows a key=value
/// pair to span PDU boundaries when the C bit is used. Always at least one segment.
pub fn split(text: &Bytes, max: usize) -> Vec<Bytes> {
    let max = max.max(1);
    if text.len() <= max {
        return vec![text.clone()];
    }
    (0..text.len())
        .step_by(max)
        .map(|at| text.slice(at..(at + max).min(text.len())))
        .collect()
}

/// Accumulates the data of a C-bit sequence of PDUs (§11.10.2, §11.12.2), bounded by
/// [`MAX_TEXT_LEN`] before anything is copied.
#[derive(Debug, Default, Clone)]
pub struct Assembler {
    buf: Vec<u8>,
    /// Bytes accepted over the whole lifetime (a whole login, say), to bound
    /// conversations that never end as well as single messages.
    total: usize,
    limit: usize,
}

impl Assembler {
    /// `limit` bounds the total bytes this assembler will ever accept.
    pub fn new(limit: usize) -> Assembler {
        Assembler {
            buf: Vec::new(),
            total: 0,
            limit,
        }
    }
    pub fn push(&mut self, data: &[u8]) -> Result<(), TextError> {
        let total = self.total.saturating_add(data.len());
        if total > self.limit || self.buf.len() + data.len() > MAX_TEXT_LEN {
            return Err(TextError::TooLong {
                max: self.limit.min(MAX_TEXT_LEN),
            });
        }
        self.total = total;
        self.buf.extend_from_slice(data);
        Ok(())
    }
    /// Take the assembled message, leaving the assembler empty (the total stays).
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(k: &str, v: &str) -> Pair {
        (k.into(), v.into())
    }

    #[test]
    fn parses_pairs_in_order_with_empty_values_and_equals_in_value() {
        let t = b"InitiatorName=iqn.a:b\0X=\0CHAP_C=0b/w==\0";
        assert_eq!(
            parse(t).unwrap(),
            vec![
                p("InitiatorName", "iqn.a:b"),
                p("X", ""),
                p("CHAP_C", "0b/w==")
            ]
        );
    }

    #[test]
    fn tolerates_missing_final_nul_and_empty_pairs() {
        assert_eq!(
            parse(b"A=1\0\0B=2").unwrap(),
            vec![p("A", "1"), p("B", "2")]
        );
        assert_eq!(parse(b"").unwrap(), vec![]);
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(parse(b"novalue\0"), Err(TextError::MissingEquals));
        assert_eq!(parse(b"=v\0"), Err(TextError::EmptyKey));
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert_eq!(parse(long_key.as_bytes()), Err(TextError::KeyTooLong));
        let ok_key = format!("{}=1\0", "K".repeat(63));
        assert!(parse(ok_key.as_bytes()).is_ok());
        assert_eq!(parse(b"Ke y=1\0"), Err(TextError::BadKeyChar));
        assert_eq!(parse(b"K=\xff\xfe\0"), Err(TextError::NotUtf8));
        let long_val = format!("K={}\0", "v".repeat(MAX_VALUE_LEN + 1));
        assert_eq!(parse(long_val.as_bytes()), Err(TextError::ValueTooLong));
        assert_eq!(
            parse(&vec![b'a'; MAX_TEXT_LEN + 1]),
            Err(TextError::TooLong { max: MAX_TEXT_LEN })
        );
    }

    #[test]
    fn encode_roundtrip_and_split() {
        let pairs = vec![p("TargetName", "iqn.x"), p("TargetAddress", "[::1]:3260,1")];
        let b = encode(&pairs);
        assert_eq!(&b[..], b"TargetName=iqn.x\0TargetAddress=[::1]:3260,1\0");
        assert_eq!(parse(&b).unwrap(), pairs);
        let parts = split(&b, 10);
        assert!(parts.iter().all(|s| s.len() <= 10));
        assert_eq!(parts.concat(), b.to_vec());
        assert_eq!(split(&Bytes::new(), 10), vec![Bytes::new()]);
    }

    #[test]
    fn assembler_bounds_total() {
        let mut a = Assembler::new(10);
        a.push(b"12345").unwrap();
        assert_eq!(a.take(), b"12345");
        a.push(b"12345").unwrap();
        assert!(a.push(b"1").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(pairs) = parse(&data) {
                // What parses re-encodes to something that parses the same.
                prop_assert_eq!(parse(&encode(&pairs)).unwrap(), pairs);
            }
        }
    }
}
